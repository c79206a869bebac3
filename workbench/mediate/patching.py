"""Activation patching for ablated conditions: through which later components the damage travels.

For an ablated condition A of a run store and each component X downstream of A's first edit
(every mixer and MLP whose output is computed after that edit, and the residual stream after
each layer from the first edited one on, named ``resid@i``):

- restoration: A with X's output set to its clean output;
  ``recovery = (L_A - L_restored) / (L_A - L_clean)`` (1: X carries all of the damage);
- corruption: the clean model with X's output set to its output under A;
  ``transfer = (L_corrupted - L_clean) / (L_A - L_clean)`` (1: X's change alone does all of it).

This is TransformerLens' ``generic_activation_patch`` (one activation patched per run) over the
roles of the component maps, so hybrids' mixers are patched like attention. Every patched run
is an ``Intervener.run`` resample edit whose donor values are the patches (its edits fire in
measured forward order and are checked): A's own targets are set to the outputs A gives them,
which is exact for zero, mean and resample ablations (those outputs do not depend on the rest
of the run); skip_layer conditions are refused.

Losses are summed NLLs per rolling window of the store's protocol, over the windows that cover
the first ``max_tokens`` tokens of one corpus, so the paired block bootstrap of ``probes.stats``
gives intervals (blocks of windows resampled, the same blocks for every run of a condition).
Results go to the store's ``mediation`` zarr group (the main group is left as it is), laid out
once for all ablated conditions, one region per condition, ``complete`` written last; a rerun
skips complete conditions.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import xarray as xr

from probes.stats import block_indices, block_resample, block_size
from workbench import store as run_store
from workbench.architectures import Component
from workbench.evaluate.perplexity import score_windows_multi
from workbench.interventions import Intervener
from workbench.plans import BASELINE, Condition, Plan, Target

GROUP = "mediation"
FORMAT = "workbench.mediation/1"
ZARR = run_store.ZARR
DEFAULT_TOKENS = 1024


class MediationError(run_store.StoreError):
    """(A StoreError, so the CLI reports it as one line, exit status 2.)"""


def name(c: Component) -> str:
    """A component's name in the results: ``role@layer``, the residual stream as ``resid@layer``."""
    return f"resid@{c.layer}" if c.role == "layer" else c.key


def patchable(iv: Intervener) -> list[Component]:
    """Every component whose output can be patched, in forward order (layers: the residual stream)."""
    order = iv.execution_order()
    return sorted(iv.cmap.components, key=lambda c: order[(c.path, "out")])


def downstream(iv: Intervener, cond: Condition) -> list[Component]:
    """Components (not A's targets) whose output is computed after A's first edit, in forward order."""
    if cond.mode == "skip_layer":
        raise MediationError(f"condition {cond.label!r} is skip_layer: mediation supports zero, mean and "
                             "resample conditions (a skipped layer's output depends on the rest of the run)")
    order = iv.execution_order()
    targets = iv.components(cond)
    first = min(order[(c.path, "out")] for c in targets)
    return [c for c in patchable(iv) if c not in targets and order[(c.path, "out")] > first]


@dataclass(frozen=True)
class _Patch:
    """Duck-typed condition for ``Intervener.run``: a resample edit of ``targets`` whose donor
    values are the patches (``Target`` is not used: the residual stream, role ``layer``, is
    patchable too)."""

    targets: tuple
    mode: str = "resample"
    kind: str = "custom"


def patched_logits(iv: Intervener, ids: torch.Tensor, patches: dict[Component, torch.Tensor], keep: int = 0):
    """Logits of the clean model on ``ids`` with each patched component's output replaced."""
    if not patches:
        return iv.run(ids, BASELINE, keep=keep).logits
    cond = _Patch(tuple(Target.model_construct(layer=c.layer, role=c.role) for c in patches))
    return iv.run(ids, cond, donor={c.key: v for c, v in patches.items()}, keep=keep).logits


def _runs(comps: list[Component]) -> list[tuple[str, Component | None]]:
    return ([("clean", None), ("ablated", None)] + [("restored", c) for c in comps]
            + [("corrupted", c) for c in comps])


def condition_nll(iv: Intervener, cond: Condition, ids: torch.Tensor, windows: list, *, batch_size: int = 8,
                  prefix: int | None = None, inputs: Callable | None = None,
                  progress: Callable[[int], None] | None = None) -> tuple[list[Component], dict, np.ndarray]:
    """(downstream components, NLL arrays, tokens per window) of one condition on ``windows``.

    NLL arrays (summed nats per window): ``clean`` and ``ablated`` (windows,), ``restored`` and
    ``corrupted`` (components, windows). ``inputs(cond, ids, windows)``: the ``means``/``donor``
    arguments of ``Intervener.run`` for A (mean and resample conditions).
    """
    comps = downstream(iv, cond)
    targets = iv.components(cond)
    runs = _runs(comps)

    def forward(batch_ids, batch, keep):
        extra = inputs(cond, batch_ids, batch) if inputs else {}
        clean = iv.run(batch_ids, BASELINE, save=targets + comps, keep=keep)
        yield clean.logits
        ablated = iv.run(batch_ids, cond, save=targets + comps, keep=keep, **extra)
        yield ablated.logits
        edits = {c: ablated.saved[c.key] for c in targets}  # A's edit as values (zero/mean/donor)
        for c in comps:
            yield patched_logits(iv, batch_ids, {**edits, c: clean.saved[c.key]}, keep)
        for c in comps:
            yield patched_logits(iv, batch_ids, {c: ablated.saved[c.key]}, keep)

    nll, tokens = score_windows_multi(forward, len(runs), ids, windows, batch_size, iv.device,
                                      progress=progress, prefix=prefix)
    k = len(comps)
    return comps, {"clean": nll[0], "ablated": nll[1], "restored": nll[2:2 + k],
                   "corrupted": nll[2 + k:]}, tokens


def fractions(nll: dict, tokens: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
              block: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """recovery and transfer per component: (point, low, high), from a paired percentile block
    bootstrap (``probes.stats`` blocks; the same draws for clean, ablated and every patched run).
    With a single block there is no interval (NaN)."""
    n = len(tokens)
    blocks = block_indices(n, block or block_size(n))
    sums = lambda x: np.stack([x[..., b].sum(axis=-1) for b in blocks], axis=-1)  # noqa: E731
    c, a = sums(nll["clean"]), sums(nll["ablated"])
    r, k = sums(nll["restored"]), sums(nll["corrupted"])

    def ratios(pick):
        ca, aa = c[..., pick].sum(-1), a[..., pick].sum(-1)
        gap = aa - ca
        with np.errstate(divide="ignore", invalid="ignore"):
            return (aa - r[..., pick].sum(-1)) / gap, (k[..., pick].sum(-1) - ca) / gap

    point = ratios(np.arange(len(blocks)))
    out = {}
    if len(blocks) > 1:
        rng = np.random.default_rng(seed)
        bidx = [np.arange(len(blocks))[i:i + 1] for i in range(len(blocks))]
        draws = [ratios(block_resample(bidx, rng)) for _ in range(n_boot)]
        q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
        for j, what in enumerate(("recovery", "transfer")):
            stack = np.stack([d[j] for d in draws])
            lo, hi = np.nanpercentile(stack, q, axis=0) if np.isfinite(stack).any() else (stack[0] * np.nan,) * 2
            out[what] = (point[j], lo, hi)
    else:
        out = {w: (point[j], point[j] * np.nan, point[j] * np.nan) for j, w in enumerate(("recovery", "transfer"))}
    return out


# -- the store's mediation group ---------------------------------------------------------------

def ablated_conditions(plan: Plan) -> list[Condition]:
    """Conditions of a plan mediation can take (zero, mean and resample ablations)."""
    return [c for c in plan.conditions if c.kind != "baseline" and c.mode != "skip_layer"]


def _layout(path: Path, conds: list[Condition], comps: list[Component], tokens: np.ndarray, key: dict) -> None:
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
                "component_layer": ("component", [c.layer for c in comps]),
                "component_role": ("component", ["resid" if c.role == "layer" else c.role for c in comps]),
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
            n_boot: int = 2000, seed: int = 0, log: Callable[[str], None] | None = None) -> xr.Dataset:
    """Restoration and corruption of every downstream component for ``conditions`` of a store
    (see the module docstring); returns the mediation group."""
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
    key = {"corpus": scored.name, "max_tokens": max_tokens, "windows": len(windows),
           "plan_hash": ds.attrs.get("plan_hash"), "weights_hash": ds.attrs.get("weights_hash")}
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
        _layout(path, everything, patchable(iv), tokens, key)
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
            inputs=lambda c, x, batch: inputs(c, x, [w.begin for w in batch]))
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
        body["store_nll_diff"] = (("condition",), np.array([np.nanmax(np.abs(main - nll["ablated"]))]))
        _write(path, i, body)
        _write(path, i, {"complete": (("condition",), np.array([True]))})
    return open_mediation(path)


def top(med: xr.Dataset, condition: str, k: int = 5, what: str = "recovery") -> list[tuple[str, float, float, float]]:
    """The ``k`` components with the largest ``what`` for a condition: (name, value, low, high)."""
    row = med[what].sel(condition=condition).values
    low, high = med[f"{what}_low"].sel(condition=condition).values, med[f"{what}_high"].sel(condition=condition).values
    order = [j for j in np.argsort(-np.nan_to_num(row, nan=-np.inf)) if np.isfinite(row[j])][:k]
    return [(str(med.component.values[j]), float(row[j]), float(low[j]), float(high[j])) for j in order]
