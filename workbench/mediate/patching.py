"""Patched runs and the recovery / transfer fractions (see ``workbench.mediate``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from probes.stats import block_indices, block_resample, block_size
from workbench import store as run_store
from workbench.architectures import Component
from workbench.evaluate.perplexity import score_windows_multi
from workbench.fast import layer_arity
from workbench.interventions import Intervener, InterventionError, _main, _replace
from workbench.plans import BASELINE, Condition, Target


class MediationError(run_store.StoreError):
    """(A StoreError, so the CLI reports it as one line, exit status 2.)"""


def name(c) -> str:
    """A component's name in the results: ``role@layer``, the residual stream as ``resid@layer``,
    a head ``role@layer.hN``."""
    if not isinstance(c, Component):
        return c.name
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
    values are the patches (``Condition`` allows role ``layer`` only with skip_layer, and the
    residual stream, a layer's output, is patched here)."""

    targets: tuple
    mode: str = "resample"
    kind: str = "custom"


class Prefix:
    """Reuse of a run's leading layers (as ``workbench.fast`` reuses the clean run's): a patched
    run agrees with the clean or the ablated run up to the layer of its first patch, so those
    layers are skipped (``Envoy.skip``) and that run's residual stream after them supplied."""

    def __init__(self, iv: Intervener):
        order, arity = iv.execution_order(), layer_arity(iv)
        layers = sorted(iv.cmap.by_role("layer"), key=lambda c: order[(c.path, "out")])
        self.layers = []
        for c in layers:  # only a leading run of layers with a skippable output
            if c.path not in arity:
                break
            self.layers.append(c)
        self.arity = arity

    def start(self, layer: int) -> int:
        """Leading layers a run whose first patch is in ``layer`` can skip."""
        return sum(c.layer < layer for c in self.layers)

    def value(self, path: str, hidden: torch.Tensor):
        n = self.arity[path]
        return hidden if n == 0 else (hidden,) + (None,) * (n - 1)


def patched_logits(iv: Intervener, ids: torch.Tensor, patches: dict[Component, torch.Tensor], keep: int = 0,
                   resume: tuple[Prefix, int, torch.Tensor] | None = None):
    """Logits of the clean model on ``ids`` with each patched component's output replaced.

    ``resume`` (prefix, k, hidden): skip the first k layers of ``prefix`` with ``hidden`` as
    their output (the residual of a run that agrees with this one there); patches inside them
    are already in ``hidden`` and left out."""
    if resume is not None and resume[1] > 0:
        return _resumed(iv, ids, patches, keep, *resume)
    if not patches:
        return iv.run(ids, BASELINE, keep=keep).logits
    cond = _Patch(tuple(Target(layer=c.layer, role=c.role) for c in patches))
    return iv.run(ids, cond, donor={c.key: v for c, v in patches.items()}, keep=keep).logits


def _resumed(iv: Intervener, ids, patches, keep, prefix: Prefix, k: int, hidden):
    order = iv.execution_order()
    skipped = prefix.layers[:k]
    after = order[(skipped[-1].path, "out")]
    live = sorted((c for c in patches if order[(c.path, "out")] > after), key=lambda c: order[(c.path, "out")])
    fired = []
    with iv.traced.trace(input_ids=ids.to(iv.device), logits_to_keep=keep, use_cache=False):
        for layer in skipped:
            iv._envoy(layer.path).skip(prefix.value(layer.path, hidden))
        for c in live:
            env = iv._envoy(c.path)
            out = env.output
            env.output = _replace(out, patches[c].to(_main(out).dtype))
            fired.append(c.key)
        logits = iv.traced.output.logits.save()
    if fired != [c.key for c in live]:
        raise InterventionError(f"patches planned {[c.key for c in live]} but fired {fired}")
    return logits


def condition_nll(iv: Intervener, cond: Condition, ids: torch.Tensor, windows: list, *, batch_size: int = 8,
                  prefix: int | None = None, inputs: Callable | None = None, heads: bool = False,
                  reuse: bool = True, progress: Callable[[int], None] | None = None) -> tuple[list, dict, np.ndarray]:
    """(downstream components and heads, NLL arrays, tokens per window) of one condition on ``windows``.

    NLL arrays (summed nats per window): ``clean`` and ``ablated`` (windows,), ``restored`` and
    ``corrupted`` (components, windows) and, with ``heads``, ``head_restored`` and
    ``head_corrupted`` (heads of the downstream components, windows): one head's slice of its
    out_proj input restored or corrupted. ``inputs(cond, ids, windows)``: the ``means``/``donor``
    arguments of ``Intervener.run`` for A (mean and resample conditions). ``reuse``: each patched
    run skips the layers before its patch (``Prefix``); False runs every layer (the naive loop).
    """
    from workbench.mediate.heads import HeadEdits, HeadInputs, all_heads

    comps = downstream(iv, cond)
    targets = iv.components(cond)
    hs = all_heads(iv.model, iv.cmap, comps) if heads else []
    layers = Prefix(iv) if reuse else None
    save = list(dict.fromkeys(targets + comps + (layers.layers if reuse else [])))

    def resume(run, layer: int):
        """Skip what ``run`` (the clean or the ablated run) shares with a run patched from ``layer`` on."""
        k = layers.start(layer) if reuse else 0
        return (layers, k, run.saved[layers.layers[k - 1].key]) if k else None

    def forward(batch_ids, batch, keep):
        extra = inputs(cond, batch_ids, batch) if inputs else {}
        with HeadInputs(iv.model, hs) as clean_in:
            clean = iv.run(batch_ids, BASELINE, save=save, keep=keep)
        yield clean.logits
        with HeadInputs(iv.model, hs) as ablated_in:
            ablated = iv.run(batch_ids, cond, save=save, keep=keep, **extra)
        yield ablated.logits
        edits = {c: ablated.saved[c.key] for c in targets}  # A's edit as values (zero/mean/donor)
        for c in comps:
            yield patched_logits(iv, batch_ids, {**edits, c: clean.saved[c.key]}, keep, resume(ablated, c.layer))
        for c in comps:
            yield patched_logits(iv, batch_ids, {c: ablated.saved[c.key]}, keep, resume(clean, c.layer))
        for h in hs:
            with HeadEdits(iv.model, {h: clean_in.values[h]}):
                yield patched_logits(iv, batch_ids, edits, keep, resume(ablated, h.component.layer))
        for h in hs:
            with HeadEdits(iv.model, {h: ablated_in.values[h]}):
                yield patched_logits(iv, batch_ids, {}, keep, resume(clean, h.component.layer))

    k, n = len(comps), len(hs)
    nll, tokens = score_windows_multi(forward, 2 + 2 * k + 2 * n, ids, windows, batch_size, iv.device,
                                      progress=progress, prefix=prefix)
    out = {"clean": nll[0], "ablated": nll[1], "restored": nll[2:2 + k], "corrupted": nll[2 + k:2 + 2 * k]}
    if heads:
        out.update(head_restored=nll[2 + 2 * k:2 + 2 * k + n], head_corrupted=nll[2 + 2 * k + n:])
    return comps + hs, out, tokens


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
