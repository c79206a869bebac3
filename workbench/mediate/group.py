"""The store's ``mediation`` group: laid out once, one region per condition, ``complete`` last."""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr

from workbench import store as run_store
from workbench.interventions import Intervener
from workbench.mediate.patching import MediationError, condition_nll, fractions, name, patchable
from workbench.plans import Condition, Plan

GROUP = "mediation"
FORMAT = "workbench.mediation/1"
ZARR = run_store.ZARR
DEFAULT_TOKENS = 1024


def ablated_conditions(plan: Plan) -> list[Condition]:
    """Conditions of a plan mediation can take (zero, mean and resample ablations)."""
    return [c for c in plan.conditions if c.kind != "baseline" and c.mode != "skip_layer"]


def _layout(path: Path, conds: list[Condition], comps: list, tokens: np.ndarray, key: dict) -> None:
    """``comps``: components and (with heads) heads, one entry each along ``component``."""
    whole = [getattr(c, "component", c) for c in comps]
    n_c, n_k, n_w = len(conds), len(comps), len(tokens)
    full = lambda *shape: np.full(shape, np.nan)  # noqa: E731
    ds = xr.Dataset(
        {"recovery": (("condition", "component"), full(n_c, n_k),
                      {"description": "(L_ablated - L_restored) / (L_ablated - L_clean); NaN: not downstream"}),
         "recovery_low": (("condition", "component"), full(n_c, n_k)),
         "recovery_high": (("condition", "component"), full(n_c, n_k)),
         "transfer": (("condition", "component"), full(n_c, n_k),
                      {"description": "(L_corrupted - L_clean) / (L_ablated - L_clean); NaN: not downstream"}),
         "transfer_low": (("condition", "component"), full(n_c, n_k)),
         "transfer_high": (("condition", "component"), full(n_c, n_k)),
         "nll_clean": (("condition", "window"), full(n_c, n_w), {"description": "summed NLL (nats) per window"}),
         "nll_ablated": (("condition", "window"), full(n_c, n_w)),
         "nll_restored": (("condition", "component", "window"), full(n_c, n_k, n_w)),
         "nll_corrupted": (("condition", "component", "window"), full(n_c, n_k, n_w)),
         "store_nll_diff": ("condition", full(n_c), {
             "description": "largest |ablated window NLL here - the main store's| (same windows): "
                            "the ablation reproduced"}),
         "complete": ("condition", np.zeros(n_c, dtype=bool)),
         "window_tokens": ("window", tokens.astype(np.int64))},
        coords={"condition": [c.id for c in conds], "label": ("condition", [c.label for c in conds]),
                "component": [name(c) for c in comps],
                "component_layer": ("component", [c.layer for c in whole]),
                "component_role": ("component", ["resid" if c.role == "layer" else c.role for c in whole]),
                "component_head": ("component", [getattr(c, "index", -1) for c in comps]),
                "window": np.arange(n_w)},
        attrs={"format": FORMAT, "key": json.dumps(key, sort_keys=True)},
    )
    enc = {v: {"chunks": tuple(1 if d == "condition" else ds.sizes[d] for d in ds[v].dims)}
           for v in ds.data_vars if "condition" in ds[v].dims}
    final = path / GROUP
    tmp = path / f".{GROUP}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        ds.to_zarr(str(tmp), mode="w-", consolidated=False, encoding=enc, **ZARR)
        os.rename(tmp, final)  # atomic: the group is absent or fully laid out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_mediation(store_path: str | Path) -> xr.Dataset | None:
    """The store's mediation group (lazily), or None when it has none."""
    path = Path(store_path) / GROUP
    if not (path / ".zgroup").exists():
        return None
    return xr.open_zarr(str(Path(store_path)), group=GROUP, consolidated=False, **ZARR)


def _write(path: Path, index: int, body: dict) -> None:
    xr.Dataset(body).to_zarr(str(path), group=GROUP, region={"condition": slice(index, index + 1)},
                             mode="r+", consolidated=False, **ZARR)


def _windows(protocol, n_tokens: int, max_tokens: int) -> list:
    """The store's first windows of a corpus that score at least ``max_tokens`` tokens."""
    if protocol.scoring != "rolling":
        raise MediationError(f"this store was scored with protocol {protocol.scoring!r}; mediation "
                             "supports rolling windows only")
    out, total = [], 0
    for w in protocol.layout(n_tokens):
        if total >= max_tokens:
            break
        out.append(w)
        total += w.n_scored
    return out


def pick_conditions(plan: Plan, wanted: list[str] | None) -> list[Condition]:
    """``wanted`` condition ids (default: the group conditions, else every ablated condition)."""
    able = ablated_conditions(plan)
    if not able:
        raise MediationError("this store's plan has no zero, mean or resample conditions to mediate")
    if not wanted:
        groups = [c for c in able if c.kind == "group"]
        return groups or able
    by_id = {c.id: c for c in able}
    unknown = [w for w in wanted if w not in by_id]
    if unknown:
        valid = ", ".join(f"{c.id} ({c.label})" for c in able[:12]) + (" ..." if len(able) > 12 else "")
        raise MediationError(f"unknown or unsupported condition id(s) {', '.join(unknown)}; valid: {valid}")
    return [by_id[w] for w in wanted]


def mediate(store_path: str | Path, *, conditions: list[str] | None = None, max_tokens: int = DEFAULT_TOKENS,
            corpus: str | None = None, batch_size: int = 8, device: str | None = None, overwrite: bool = False,
            heads: bool = False, n_boot: int = 2000, seed: int = 0,
            log: Callable[[str], None] | None = None) -> xr.Dataset:
    """Restoration and corruption of every downstream component (and, with ``heads``, every head
    of one: ``component_head`` >= 0) for ``conditions`` of a store (see the module docstring);
    returns the mediation group."""
    from workbench.mediate.heads import all_heads
    from workbench.diagnose import Inputs, check_model, rebuild_inputs
    from workbench.loading import load_model
    from workbench.runner import Protocol

    say = log or (lambda m: None)
    if max_tokens < 1 or batch_size < 1:
        raise MediationError(f"--max-tokens ({max_tokens}) and --batch-size ({batch_size}) must be at least 1")
    path = Path(store_path)
    ds = run_store.open_store(path)
    plan = Plan.model_validate_json(ds.attrs["plan"])
    todo = pick_conditions(plan, conditions)
    proto = json.loads(ds.attrs["protocol"])
    protocol = Protocol(**proto)
    loaded = load_model(ds.attrs["model"], device=device or ds.attrs.get("device", "cpu"),
                        dtype=ds.attrs.get("dtype", "float32"))
    check_model(loaded, ds.attrs)
    iv = Intervener(loaded.model)
    scored, reference, avoid = rebuild_inputs(ds, loaded.tokenizer, corpus)
    windows = _windows(protocol, scored.n_tokens, max_tokens)
    tokens = np.array([w.n_scored for w in windows], dtype=np.int64)
    if tokens.sum() < max_tokens:
        say(f"mediate: the store scored {int(tokens.sum()):,} tokens of corpus {scored.name!r}, fewer than "
            f"--max-tokens {max_tokens:,}; using all of them")
    key = {"corpus": scored.name, "max_tokens": max_tokens, "windows": len(windows),
           "plan_hash": ds.attrs.get("plan_hash"), "weights_hash": ds.attrs.get("weights_hash"), "heads": heads,
           "format": FORMAT}
    everything = ablated_conditions(plan)
    have = open_mediation(path)
    if have is not None and (overwrite or json.loads(have.attrs.get("key", "{}")) != key):
        if not overwrite:
            raise MediationError(f"{path} already holds mediation results computed with "
                                 f"{have.attrs.get('key')}; this run asks for {json.dumps(key, sort_keys=True)}. "
                                 "Rerun with those settings, or add --overwrite to replace them")
        shutil.rmtree(path / GROUP)
        have = None
    if have is None:
        every = patchable(iv)
        _layout(path, everything, every + (all_heads(iv.model, iv.cmap, every) if heads else []), tokens, key)
        have = open_mediation(path)
    ids = list(have.condition.values)
    done = have["complete"].values
    comp_names = list(have.component.values)
    inputs = Inputs(iv, reference, proto, plan, avoid)
    j_corpus = [str(x) for x in ds.corpus.values].index(scored.name)
    for cond in todo:
        i = ids.index(cond.id)
        if done[i]:
            say(f"mediate: {cond.label}: complete, skipped")
            continue
        say(f"mediate: {cond.label} ...")
        comps, nll, _ = condition_nll(
            iv, cond, scored.ids, windows, batch_size=batch_size, prefix=protocol.prefix_id,
            inputs=lambda c, x, batch: inputs(c, x, [w.begin for w in batch]), heads=heads)
        if heads:
            for what in ("restored", "corrupted"):
                nll[what] = np.concatenate([nll[what], nll.pop(f"head_{what}")])
        stats = fractions(nll, tokens, n_boot=n_boot, seed=seed)
        cols = [comp_names.index(name(c)) for c in comps]
        body = {}
        for what, (point, low, high) in stats.items():
            for suffix, value in (("", point), ("_low", low), ("_high", high)):
                row = np.full(len(comp_names), np.nan)
                row[cols] = value
                body[what + suffix] = (("condition", "component"), row[None])
        for what in ("restored", "corrupted"):
            grid = np.full((len(comp_names), len(windows)), np.nan)
            grid[cols] = nll[what]
            body[f"nll_{what}"] = (("condition", "component", "window"), grid[None])
        body["nll_clean"] = (("condition", "window"), nll["clean"][None])
        body["nll_ablated"] = (("condition", "window"), nll["ablated"][None])
        main = ds["window_nll"].sel(condition=cond.id).values[j_corpus, :len(windows)]
        diff = np.abs(main - nll["ablated"])  # NaN where the main store has not computed the condition
        body["store_nll_diff"] = (("condition",), np.array([np.nanmax(diff) if np.isfinite(diff).any() else np.nan]))
        _write(path, i, body)
        _write(path, i, {"complete": (("condition",), np.array([True]))})
    return open_mediation(path)


def top(med: xr.Dataset, condition: str, k: int = 5, what: str = "recovery", heads: bool = False,
        resid: bool = False) -> list[tuple[str, float, float, float]]:
    """The ``k`` mixers and MLPs (or heads, or residual streams) with the largest ``what`` for a
    condition: (name, value, low, high)."""
    row = med[what].sel(condition=condition).values.copy()
    is_resid = med["component_role"].values == "resid"
    row[((med["component_head"].values >= 0) != heads) | (is_resid != resid)] = np.nan
    low, high = med[f"{what}_low"].sel(condition=condition).values, med[f"{what}_high"].sel(condition=condition).values
    order = [j for j in np.argsort(-np.nan_to_num(row, nan=-np.inf)) if np.isfinite(row[j])][:k]
    return [(str(med.component.values[j]), float(row[j]), float(low[j]), float(high[j])) for j in order]
