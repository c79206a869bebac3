"""One zarr store per run, written through xarray.

The store is laid out in full when a run starts (every condition, NaN until done), so each
condition is then written into its own region: atomic per condition (its ``complete`` flag is
written last), resumable (a rerun skips complete conditions and re-verifies them), and shared
by several writers, which claim conditions before computing them (``workbench.claims``).

This module imports no torch: the app reads stores through it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from workbench.claims import pid_alive
from workbench.labels import layer_ranges

if TYPE_CHECKING:
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
        "draw_seed": ("condition", np.array([-1 if c.draw_seed is None else c.draw_seed for c in cs],
                                            dtype=np.int64)),
        "donor_seed": ("condition", np.array([-1 if c.donor_seed is None else c.donor_seed for c in cs],
                                             dtype=np.int64)),
    }


def _same_as_group(plan: "Plan") -> np.ndarray:
    """Random draws whose set equals a targeted group's (kept, but marked)."""
    targeted = {(frozenset(c.targets), c.mode) for c in plan.conditions if c.kind in ("group", "thirds")}
    return np.array([c.kind == "random_matched" and (frozenset(c.targets), c.mode) in targeted
                     for c in plan.conditions])


def _task_part(n_c: int, tasks: dict) -> tuple[dict, dict]:
    """Variables and coordinates for multiple-choice tasks (``tasks``: an empty score_tasks Dataset
    giving names, items, gold answers and chance levels)."""
    n_t, n_i, n_ch = tasks.sizes["task"], tasks.sizes["item"], tasks.sizes["choice"]
    metrics = list(tasks.metric.values)
    data = {
        "correct": (("condition", "task", "item", "metric"), np.full((n_c, n_t, n_i, len(metrics)), np.nan),
                    {"description": "1 if the item was answered correctly (NaN: padding)"}),
        "loglik": (("condition", "task", "item", "choice"), np.full((n_c, n_t, n_i, n_ch), np.nan),
                   {"description": "summed log-likelihood of each choice's continuation"}),
        "accuracy": (("condition", "task", "metric"), np.full((n_c, n_t, len(metrics)), np.nan)),
        "gold": (("task", "item"), tasks["gold"].values),
        "choice_bytes": (("task", "item", "choice"), tasks["n_bytes"].values),
        "n_items": ("task", tasks["n_items"].values),
        "chance": ("task", tasks["chance"].values),
    }
    coords = {"task": ("task", list(tasks.task.values)), "item": ("item", np.arange(n_i)),
              "choice": ("choice", np.arange(n_ch)), "metric": ("metric", metrics),
              "item_id": (("task", "item"), tasks["item_id"].values.astype(str))}
    return data, coords


def template(plan: "Plan", corpora, attrs: dict, tasks: xr.Dataset | None = None) -> xr.Dataset:
    """The empty store for ``plan`` x ``corpora`` (windows padded to the longest corpus), with
    multiple-choice results when ``tasks`` is given."""
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
            "n_nonfinite": (("condition", "corpus"), np.full((n_c, n_k), -1, dtype=np.int32),
                            {"description": "scored windows whose NLL is not finite (-1: not computed); "
                                            "tells a genuine non-finite result from lost chunks"}),
            "qc_changed": (("condition", "corpus"), np.full((n_c, n_k), -1, dtype=np.int8),
                           {"description": "1: output differs from baseline, 0: identical, -1: not checked"}),
            "qc_fired": ("condition", np.zeros(n_c, dtype=bool),
                         {"description": "every planned edit fired in every batch of every corpus"}),
            "n_edits": ("condition", np.zeros(n_c, dtype=np.int32)),
            "elapsed_s": ("condition", np.full(n_c, np.nan)),
            "complete": ("condition", np.zeros(n_c, dtype=bool)),
            "n_tokens": ("corpus", np.array([k["n_tokens"] for k in corpora], dtype=np.int64)),
            "n_bytes": ("corpus", np.array([k["n_bytes"] for k in corpora], dtype=np.int64)),
            "window_tokens": (("corpus", "window"), wt),
        },
        coords={**_condition_coords(plan),
                "same_as_group": ("condition", _same_as_group(plan)),
                "corpus": ("corpus", [k["name"] for k in corpora]),
                "corpus_source": ("corpus", [k["source"] for k in corpora]),
                "corpus_sha256": ("corpus", [k.get("sha256", "") for k in corpora])},
        attrs={**attrs, "format": FORMAT, "plan_hash": plan.hash, "plan": plan.to_json()},
    )
    if tasks is not None:
        data, coords = _task_part(n_c, tasks)
        ds = ds.assign(data).assign_coords(coords)
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


RESUME_FIELDS = {
    "model": "model", "dtype": "dtype", "device_type": "device type", "config_hash": "config hash",
    "weights_hash": "weights", "model_revision": "model revision", "tokenizer_hash": "tokenizer",
    "protocol": "protocol", "reference": "reference", "corpora": "corpora", "plan_hash": "plan",
    "donor_seed": "donor seed", "tasks": "tasks", "torch": "torch version",
    "transformers": "transformers version",
}


def resume_key(ds: xr.Dataset) -> dict:
    key = json.loads(ds.attrs.get("resume_key", "{}"))
    key["plan_hash"] = ds.attrs.get("plan_hash")
    return key


UNRECORDED = {"scoring": "rolling", "streams": 1}  # protocol fields a rolling run leaves out of its key


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 120 else text[:117] + "..."


def _check_matches(ds: xr.Dataset, expected: xr.Dataset, path: Path) -> None:
    """Refuse to resume a store written with anything that changes a number."""
    have, want = resume_key(ds), resume_key(expected)
    problems = []
    for key, name in RESUME_FIELDS.items():
        if have.get(key) != want.get(key):
            if isinstance(have.get(key), dict) and isinstance(want.get(key), dict):
                inner = sorted(k for k in set(have[key]) | set(want[key]) if have[key].get(k) != want[key].get(k))
                problems.append("; ".join(f"{name} {k}: store {_short(have[key].get(k, UNRECORDED.get(k)))}, "
                                          f"this run {_short(want[key].get(k, UNRECORDED.get(k)))}"
                                          for k in inner))
            else:
                problems.append(f"{name}: store {_short(have.get(key))}, this run {_short(want.get(key))}")
    if problems:
        raise StoreError(f"{path} was written with a different setup ({'; '.join(problems)}); "
                         "rerun with the store's settings, choose another --out, or delete that store "
                         "yourself to start over")


def _clean_stale_layouts(path: Path) -> None:
    """Remove half-laid-out stores left by a process that died while creating ``path``."""
    host = socket.gethostname()
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        parts = tmp.name[len(path.name) + 2:-len(".tmp")].split(".")
        if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and not pid_alive(int(parts[1])):
            shutil.rmtree(tmp, ignore_errors=True)
        elif time.time() - tmp.stat().st_mtime > 24 * 3600:  # another host's, a day old
            shutil.rmtree(tmp, ignore_errors=True)


def create_or_resume(path: str | Path, plan: "Plan", corpora, attrs: dict,
                     tasks: xr.Dataset | None = None) -> xr.Dataset:
    """Lay the store out atomically, or reopen it when it holds this very run (and setup)."""
    path = Path(path)
    expected = template(plan, corpora, attrs, tasks)
    if not path.exists():
        check_out(path, "the store")
        try:
            _lay_out(path, expected)
        except OSError as exc:  # a file where a folder belongs, /proc, read-only, full disk
            raise StoreError(f"cannot create the store {path}: {_os_reason(exc)}; give an --out in a folder "
                             "you can write to, with free space") from None
    ds = _read(path)
    _check_matches(ds, expected, path)
    return ds


def check_out(path: str | Path, what: str = "--out") -> None:
    """Refuse, before any work, an output path that cannot become a folder: below a regular
    file, or where nothing can be created (/proc, a read-only or full file system)."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise StoreError(f"{what} {path} is a file; give a folder path (a new one, or the one to resume)")
        return
    ancestor = next(p for p in path.absolute().parents if p.exists())
    if not ancestor.is_dir():
        raise StoreError(f"{what} {path} lies below {ancestor}, which is a file; give a path under a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".workbench-probe-", dir=ancestor))
    except OSError as exc:
        raise StoreError(f"{what} {path}: nothing can be created in {ancestor} ({exc.strerror}); give a path "
                         "in a folder you can write to") from None


def _lay_out(path: Path, expected: xr.Dataset) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_layouts(path)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        expected.to_zarr(tmp, mode="w-", consolidated=True, encoding=_encoding(expected), **ZARR)
        try:
            os.rename(tmp, path)  # atomic: a store is either absent or fully laid out
        except OSError:
            if not path.is_dir():  # not a concurrent creator's store: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _os_reason(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def check_resume(path: str | Path, plan: "Plan", corpora, attrs: dict, tasks: xr.Dataset | None = None) -> None:
    """``create_or_resume``'s refusals without writing anything: a store at ``path`` must hold
    this run's setup; a missing one must be creatable there."""
    path = Path(path)
    if not path.exists():
        check_out(path, "the store")
        return
    _check_matches(_read(path), template(plan, corpora, attrs, tasks), path)


def pending(ds: xr.Dataset) -> list[int]:
    done = ds["complete"].values
    return [i for i, ok in enumerate(done) if not ok]


def _write_region(path, index: int, body: dict) -> None:
    # consolidated=False: region writes leave the metadata alone, so concurrent writers never
    # rewrite the shared .zmetadata file
    try:
        xr.Dataset(body).to_zarr(path, region={"condition": slice(index, index + 1)}, mode="r+",
                                 consolidated=False, **ZARR)
    except OSError as exc:  # full disk, read-only folder: the condition stays incomplete
        raise StoreError(f"cannot write condition {index} into {path}: {_os_reason(exc)}; conditions "
                         "written before it are kept: free space or fix permissions, then rerun the same "
                         "command to resume") from None


def write_condition(path: str | Path, index: int, values: dict[str, np.ndarray]) -> None:
    """Write one condition's results into its region, then mark it complete."""
    dims = {name: var.dims for name, var in xr.open_zarr(path, **ZARR, consolidated=True).data_vars.items()}
    body = {name: (dims[name], np.asarray(value)[None]) for name, value in values.items()
            if name in dims or name not in OPTIONAL_VARS}  # stores laid out before a variable existed
    _write_region(path, index, body)
    _write_region(path, index, {"complete": (("condition",), np.array([True]))})


def mark_incomplete(path: str | Path, indices) -> None:
    for index in indices:
        _write_region(path, index, {"complete": (("condition",), np.array([False]))})


def is_complete(path: str | Path, index: int) -> bool:
    """Read one condition's flag from disk now (another process may have just written it)."""
    ds = xr.open_zarr(path, **ZARR, consolidated=True)
    return bool(ds["complete"].isel(condition=index).values)


def verify(ds: xr.Dataset) -> dict[int, str]:
    """Conditions marked complete whose data are unreadable or missing: index -> what is wrong.

    A deleted chunk reads as its fill value (NaN), so every complete condition must have a
    finite elapsed time and, where its loss is finite, finite window NLLs at every scored window
    that sum to that loss. A non-finite loss is a result (NaN logits), not damage, when the
    window NLLs agree with it and with the count of non-finite windows recorded beside them
    (``n_nonfinite``: deleted ``loss`` and ``window_nll`` chunks read as all-NaN, which that
    count contradicts). A complete baseline with a non-finite loss is a result the runner refuses
    (stores written before it stopped marking one complete): it is recomputed, and refused again.
    """
    problems: dict[int, str] = {}
    try:
        done = np.flatnonzero(ds["complete"].values)
        tokens = ds["window_tokens"].values
        kinds = ds["kind"].values
    except Exception as exc:
        return {-1: f"store index unreadable ({type(exc).__name__}: {exc})"}
    scored = tokens > 0
    for i in done:
        try:
            row = {name: ds[name].isel(condition=int(i)).values for name in RESULT_VARS if name in ds}
        except Exception as exc:  # a truncated chunk fails to decompress
            problems[int(i)] = f"unreadable ({type(exc).__name__})"
            continue
        if not np.isfinite(row["elapsed_s"]):
            problems[int(i)] = "missing data (elapsed_s)"
            continue
        nll = row["window_nll"]
        for j in range(nll.shape[0]):
            loss = row["loss"][j]
            w = nll[j][scored[j]]
            if np.isfinite(loss):
                total = tokens[j][scored[j]].sum()
                if not np.isfinite(w).all() or not np.isclose(w.sum() / total, loss, rtol=1e-9, atol=0):
                    problems[int(i)] = f"missing or inconsistent data (window_nll, corpus {j})"
                    break
            elif np.isnan(loss) and np.isfinite(w).all():
                problems[int(i)] = f"missing data (loss, corpus {j})"
                break
            if "n_nonfinite" in row and row["n_nonfinite"][j] != (~np.isfinite(w)).sum():
                problems[int(i)] = f"missing data (loss, window_nll or their non-finite count, corpus {j})"
                break
        if int(i) not in problems and kinds[i] == "baseline" and not np.isfinite(row["loss"]).all():
            problems[int(i)] = "non-finite baseline loss (refused, not a result)"
        if "accuracy" in ds and int(i) not in problems:
            try:
                correct = ds["correct"].isel(condition=int(i)).values
                acc = ds["accuracy"].isel(condition=int(i)).values
            except Exception as exc:
                problems[int(i)] = f"unreadable ({type(exc).__name__}, tasks)"
                continue
            n = ds["n_items"].values[:, None]
            if not np.allclose(np.nansum(correct, axis=1) / n, acc, rtol=0, atol=1e-9) or \
                    (np.isnan(correct).sum(axis=1) != (correct.shape[1] - n)).any():
                problems[int(i)] = "missing or inconsistent data (tasks)"
    return problems


RESULT_VARS = ("loss", "perplexity", "bits_per_byte", "window_nll", "n_nonfinite", "qc_changed", "qc_fired",
               "n_edits", "elapsed_s")
OPTIONAL_VARS = ("n_nonfinite",)  # absent from stores laid out before it existed
TASK_VARS = ("correct", "loglik", "accuracy")


def copy_condition(path: str | Path, source: int, index: int) -> None:
    """Give condition ``index`` the results of ``source`` (the same edit under another label)."""
    ds = xr.open_zarr(path, **ZARR, consolidated=True)  # fresh: another process may have written it
    values = {name: ds[name].isel(condition=source).values for name in RESULT_VARS + TASK_VARS if name in ds}
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
