"""One zarr store per run, written through xarray.

The store is laid out in full when a run starts (every condition, NaN until done), so each
condition is then written into its own region: atomic per condition (its ``complete`` flag is
written last), resumable (a rerun skips complete conditions), and open to several writers
working on different conditions.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import xarray as xr

from workbench.labels import layer_ranges
from workbench.plans import Plan

FORMAT = "workbench.run/1"
ZARR = {"zarr_format": 2}  # v2 keeps string coordinates portable across zarr readers


class StoreError(ValueError):
    pass


def _condition_coords(plan: Plan) -> dict:
    cs = plan.conditions
    return {
        "condition": ("condition", [c.id for c in cs]),
        "label": ("condition", [c.label for c in cs]),
        "mode": ("condition", [c.mode if c.kind != "baseline" else "none" for c in cs]),
        "kind": ("condition", [c.kind for c in cs]),
        "group": ("condition", [c.group for c in cs]),
        "roles": ("condition", ["+".join(c.roles) for c in cs]),
        "layers": ("condition", [layer_ranges(c.layers) if c.targets else "" for c in cs]),
        "n_targets": ("condition", np.array([len(c.targets) for c in cs], dtype=np.int32)),
        "seed": ("condition", np.array([-1 if c.seed is None else c.seed for c in cs], dtype=np.int64)),
    }


def template(plan: Plan, corpora, attrs: dict) -> xr.Dataset:
    """The empty store for ``plan`` x ``corpora`` (windows padded to the longest corpus)."""
    n_c, n_k = len(plan.conditions), len(corpora)
    n_w = max(len(k["window_tokens"]) for k in corpora)
    wt = np.zeros((n_k, n_w), dtype=np.int64)
    for j, k in enumerate(corpora):
        wt[j, :len(k["window_tokens"])] = k["window_tokens"]
    nan2 = np.full((n_c, n_k), np.nan)
    ds = xr.Dataset(
        {
            "loss": (("condition", "corpus"), nan2.copy(), {"units": "nats/token"}),
            "perplexity": (("condition", "corpus"), nan2.copy()),
            "bits_per_byte": (("condition", "corpus"), nan2.copy()),
            "window_nll": (("condition", "corpus", "window"), np.full((n_c, n_k, n_w), np.nan),
                           {"description": "summed NLL (nats) of the tokens each window scores"}),
            "qc_changed": (("condition", "corpus"), np.full((n_c, n_k), -1, dtype=np.int8),
                           {"description": "1: output differs from baseline, 0: identical, -1: not checked"}),
            "qc_fired": ("condition", np.zeros(n_c, dtype=bool)),
            "n_edits": ("condition", np.zeros(n_c, dtype=np.int32)),
            "elapsed_s": ("condition", np.full(n_c, np.nan)),
            "complete": ("condition", np.zeros(n_c, dtype=bool)),
            "n_tokens": ("corpus", np.array([k["n_tokens"] for k in corpora], dtype=np.int64)),
            "n_bytes": ("corpus", np.array([k["n_bytes"] for k in corpora], dtype=np.int64)),
            "window_tokens": (("corpus", "window"), wt),
        },
        coords={**_condition_coords(plan),
                "corpus": ("corpus", [k["name"] for k in corpora]),
                "corpus_source": ("corpus", [k["source"] for k in corpora])},
        attrs={**attrs, "format": FORMAT, "plan_hash": plan.hash, "plan": plan.to_json()},
    )
    return ds


def _encoding(ds: xr.Dataset) -> dict:
    """One chunk per condition, so each condition is written into files of its own."""
    return {name: {"chunks": tuple(1 if d == "condition" else ds.sizes[d] for d in var.dims)}
            for name, var in ds.variables.items() if "condition" in var.dims and name in ds.data_vars}


def _read(path: Path) -> xr.Dataset:
    try:
        ds = xr.open_zarr(path, **ZARR, consolidated=True)
    except Exception as exc:
        raise StoreError(f"{path} is not a readable workbench store ({type(exc).__name__}: {exc}); "
                         "it may be corrupted or not a zarr store") from None
    if ds.attrs.get("format") != FORMAT:
        raise StoreError(f"{path} is a zarr store but not a workbench run store "
                         f"(format {ds.attrs.get('format')!r}, expected {FORMAT!r}); not touching it")
    return ds


def open_store(path: str | Path) -> xr.Dataset:
    """Open a finished or partial run store lazily (for reading)."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"store {path} does not exist")
    return _read(path)


def _check_matches(ds: xr.Dataset, expected: xr.Dataset, path: Path) -> None:
    problems = []
    for key in ("plan_hash", "model", "protocol"):
        if ds.attrs.get(key) != expected.attrs.get(key):
            problems.append(f"{key} {ds.attrs.get(key)!r} != {expected.attrs.get(key)!r}")
    if list(ds.corpus.values) != list(expected.corpus.values):
        problems.append(f"corpora {list(ds.corpus.values)} != {list(expected.corpus.values)}")
    elif not np.array_equal(ds.n_tokens.values, expected.n_tokens.values):
        problems.append("corpus token counts differ")
    if problems:
        raise StoreError(f"{path} holds a different run ({'; '.join(problems)}); "
                         "choose another --out, or delete that store yourself to start over")


def create_or_resume(path: str | Path, plan: Plan, corpora, attrs: dict) -> xr.Dataset:
    """Lay the store out atomically, or reopen it when it holds this very run."""
    path = Path(path)
    expected = template(plan, corpora, attrs)
    if path.exists():
        ds = _read(path)
        _check_matches(ds, expected, path)
        return ds
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        expected.to_zarr(tmp, mode="w-", consolidated=True, encoding=_encoding(expected), **ZARR)
        os.rename(tmp, path)  # atomic: a store is either absent or fully laid out
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _read(path)


def pending(ds: xr.Dataset) -> list[int]:
    done = ds["complete"].values
    return [i for i, ok in enumerate(done) if not ok]


def write_condition(path: str | Path, index: int, values: dict[str, np.ndarray]) -> None:
    """Write one condition's results into its region, then mark it complete."""
    region = {"condition": slice(index, index + 1)}
    body = {}
    for name, value in values.items():
        value = np.asarray(value)[None]
        dims = {1: ("condition",), 2: ("condition", "corpus"), 3: ("condition", "corpus", "window")}[value.ndim]
        body[name] = (dims, value)
    xr.Dataset(body).to_zarr(path, region=region, mode="r+", **ZARR)
    xr.Dataset({"complete": (("condition",), np.array([True]))}).to_zarr(
        path, region=region, mode="r+", **ZARR)


RESULT_VARS = ("loss", "perplexity", "bits_per_byte", "window_nll", "qc_changed", "qc_fired",
               "n_edits", "elapsed_s")


def copy_condition(path: str | Path, source: int, index: int) -> None:
    """Give condition ``index`` the results of ``source`` (the same edit under another label)."""
    ds = xr.open_zarr(path, **ZARR, consolidated=True)
    values = {name: ds[name].isel(condition=source).values for name in RESULT_VARS}
    values["elapsed_s"] = np.array(0.0)
    write_condition(path, index, values)


def provenance_json(ds: xr.Dataset) -> dict:
    out = {}
    for key, value in ds.attrs.items():
        try:
            out[key] = json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value
        except json.JSONDecodeError:
            out[key] = value
    return out
