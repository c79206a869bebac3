"""Several conditions on the same inputs, sharing the clean computation (prefix reuse) and,
memory allowing, one forward (batched conditions).

An ablation leaves every layer before its first edit clean. Per batch of inputs one clean
trace saves the residual stream after each layer a condition starts from; each condition then
runs a trace in which the layers before its first edit are skipped (``Envoy.skip``, their clean
output supplied) and its edits are applied as usual. Conditions that start at the same layer
are stacked along the batch (rows = conditions x inputs), each editing only its rows.

Skipping is only a saving: a skip that did not happen would recompute the same clean values.
The edits are checked as in ``Intervener.run``: each condition records the components whose
edit ran on its rows, and the caller compares them with its targets.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from workbench.architectures import Component
from workbench.interventions import InterventionError, Intervener, _layer_input, _main, _replace
from workbench.plans import Condition


@dataclass
class Stack:
    """Conditions run in one forward, all resuming after the same clean layers."""

    start: int  # leading layers skipped (their clean output supplied)
    members: list[int] = field(default_factory=list)  # indices into the conditions


def _cache(kwargs: dict):
    return kwargs.get("cache", kwargs.get("past_key_values"))


def layer_arity(iv: Intervener) -> dict[str, int]:
    """How each layer module returns its output: 0 = a tensor, n = a tuple of n whose elements
    after the first are None (measured once with hooks; a layer returning anything else cannot
    be skipped and is left out)."""
    arity: dict[str, int] = {}
    layers = [c for c in iv.cmap.components if c.role == "layer"]

    def note(path, out):
        if isinstance(out, torch.Tensor):
            arity.setdefault(path, 0)
        elif isinstance(out, tuple) and all(x is None for x in out[1:]):
            arity.setdefault(path, len(out))
        else:
            arity.setdefault(path, -1)

    handles = [iv.model.get_submodule(c.path).register_forward_hook(
        lambda m, a, o, path=c.path: note(path, o)) for c in layers]
    try:
        with torch.no_grad():
            iv.model(input_ids=torch.zeros(1, 4, dtype=torch.long, device=iv.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {p: n for p, n in arity.items() if n >= 0}


class SharedPrefix:
    """Runs ``conditions`` on one batch of inputs at a time; see the module docstring.

    ``max_rows``: most rows in one forward (1 x the batch: no stacking).
    """

    def __init__(self, iv: Intervener, conditions: list[Condition], *, max_rows: int = 0):
        self.iv, self.conditions, self.max_rows = iv, list(conditions), max_rows
        order = iv.execution_order()
        arity = layer_arity(iv)
        layers = sorted((c for c in iv.cmap.components if c.role == "layer"), key=lambda c: order[(c.path, "out")])
        # a run can resume after the leading layers that all return a skippable output
        skippable = []
        for c in layers:
            if c.path not in arity:
                break
            skippable.append(c)
        self.layers, self.arity = skippable, arity
        self.comps = [iv.components(c) for c in self.conditions]
        self.expected = [[c.key for c in comps] for comps in self.comps]  # what must fire, per condition
        self.start = []
        for cond, comps in zip(self.conditions, self.comps):
            if cond.kind == "baseline":
                self.start.append(-1)  # read from the clean trace itself
                continue
            first = min(iv._when(c, cond.mode) for c in comps)
            self.start.append(sum(order[(c.path, "out")] < first for c in skippable))
        self.ok = [True] * len(self.conditions)  # every edit fired in every batch so far

    def bound(self) -> float:
        """Layer forwards of these conditions with reuse, as a fraction of the naive loop's
        (plus one clean pass; a baseline costs nothing beyond it)."""
        n = len(self.iv.cmap.layers_of("layer")) or 1
        naive = n * len(self.conditions)
        ran = n + sum(n - s for s in self.start if s >= 0)
        return ran / naive if naive else 1.0

    def layers_run(self, rows: int) -> int:
        """Layer forwards of ``run`` on a batch of ``rows`` rows, counted per batch of rows (a
        stack of k conditions counts k): the clean pass up to the last layer a stack resumes
        after (the whole model when a baseline wants its logits), then each stack from its start."""
        n = len(self.iv.cmap.layers_of("layer"))
        stacks = self.stacks(rows)
        if any(s < 0 for s in self.start):
            clean = n
        else:
            clean = max((s.start for s in stacks), default=0)
        return clean + sum((n - s.start) * len(s.members) for s in stacks)

    def stacks(self, rows: int) -> list[Stack]:
        """Conditions in forwards of at most ``max_rows`` rows of ``rows``, ordered by start layer;
        a stack resumes at its earliest member's start (a later member recomputes a few clean
        layers: fewer, larger forwards pay where a forward's fixed cost dominates, on a GPU)."""
        per = max(1, (self.max_rows or rows) // rows)
        order = sorted((k for k, s in enumerate(self.start) if s >= 0), key=lambda k: (self.start[k], k))
        return [Stack(self.start[order[i]], order[i:i + per]) for i in range(0, len(order), per)]

    @torch.no_grad()
    def run(self, ids: torch.Tensor, inputs: list[dict], keep: int = 0,
            lanes: list[dict] | None = None) -> list[torch.Tensor]:
        """Logits (last ``keep`` positions) of each condition on ``ids``; ``inputs[k]``: the
        ``means`` / ``donor`` arguments of condition k, as for ``Intervener.run``.

        ``lanes`` (chunks with carried state): the forward arguments of the clean pass, then of
        each condition, each with a cache of its own. A condition's cache takes the clean cache's
        layers before its first edit (as they were before this chunk), which its run skips; a
        cache is per condition, so conditions are not stacked then."""
        ids = ids.to(self.iv.device)
        rows = ids.shape[0]
        stacks = self.stacks(rows) if lanes is None else [Stack(self.start[k], [k]) for k in range(len(self.start))
                                                          if self.start[k] >= 0]
        need = sorted({s.start - 1 for s in stacks if s.start > 0})
        want_logits = any(s < 0 for s in self.start)
        before = None
        if lanes is not None:
            before = [copy.copy(layer) for layer in _cache(lanes[0]).layers]  # the clean state before this chunk
        clean, base = {}, None
        if need or want_logits:
            clean, base = self._clean(ids, need, keep, want_logits, lanes[0] if lanes else {})
        out: list[torch.Tensor | None] = [base if s < 0 else None for s in self.start]
        for stack in stacks:
            kwargs = {}
            if lanes is not None:
                (m,) = stack.members
                kwargs = lanes[1 + m]
                cache = _cache(kwargs)
                for layer in self.layers[:stack.start]:
                    cache.layers[layer.layer] = before[layer.layer]
            logits = self._stacked(ids, stack, clean, inputs, keep, kwargs)
            for j, k in enumerate(stack.members):
                out[k] = logits[j * rows:(j + 1) * rows]
        return out

    def _clean(self, ids, need: list[int], keep: int, want_logits: bool, kwargs: dict):
        saved: dict[int, torch.Tensor] = {}
        logits = None
        kwargs = {"use_cache": False, **kwargs}
        with self.iv.traced.trace(input_ids=ids, logits_to_keep=keep, **kwargs) as tracer:
            for j in need:
                saved[j] = _main(self.iv._envoy(self.layers[j].path).output).save()
            if want_logits:
                logits = self.iv.traced.output.logits.save()
            elif need:
                tracer.stop()  # later layers are not needed (nor, with a cache, their state)
        return {j: v.detach() for j, v in saved.items()}, logits

    def _skip_value(self, path: str, hidden: torch.Tensor):
        n = self.arity[path]
        return hidden if n == 0 else (hidden,) + (None,) * (n - 1)

    def _stacked(self, ids, stack: Stack, clean: dict, inputs: list[dict], keep: int, kwargs: dict) -> torch.Tensor:
        rows, k = ids.shape[0], len(stack.members)
        big = ids.repeat(k, 1)
        events = []  # (order, path, kind, member j, component)
        for j, m in enumerate(stack.members):
            cond = self.conditions[m]
            for comp in self.comps[m]:
                kind = "in" if cond.mode == "skip_layer" else "out"
                events.append((self.iv._when(comp, cond.mode), comp.path, kind, j, comp))
                if cond.mode == "skip_layer":
                    events.append((self.iv.execution_order()[(comp.path, "out")], comp.path, "out", j, comp))
        events.sort(key=lambda e: (e[0], e[3]))
        fired: list[list[str]] = [[] for _ in stack.members]
        with self.iv.traced.trace(input_ids=big, logits_to_keep=keep, **{"use_cache": False, **kwargs}):
            if stack.start:
                hidden = clean[stack.start - 1]
                hidden = hidden.repeat(k, *([1] * (hidden.dim() - 1))) if k > 1 else hidden
                for layer in self.layers[:stack.start]:
                    self.iv._envoy(layer.path).skip(self._skip_value(layer.path, hidden))
            i = 0
            held: dict[tuple[str, int], torch.Tensor] = {}  # skip_layer inputs, by (path, member)
            while i < len(events):
                order, path, kind = events[i][:3]
                group = []
                while i < len(events) and events[i][:3] == (order, path, kind):
                    group.append(events[i])
                    i += 1
                env = self.iv._envoy(path)
                if kind == "in":
                    hidden_in = _layer_input(env.inputs)
                    for _, _, _, j, _ in group:
                        held[(path, j)] = hidden_in[j * rows:(j + 1) * rows]
                    continue
                out = env.output
                main = _main(out)
                new = main.clone()
                for _, _, _, j, comp in group:
                    m = stack.members[j]
                    sl = slice(j * rows, (j + 1) * rows)
                    new[sl] = self._value(self.conditions[m], comp, main[sl], inputs[m], held.get((path, j)))
                    fired[j].append(comp.key)
                env.output = _replace(out, new)
            logits = self.iv.traced.output.logits.save()
        for j, m in enumerate(stack.members):
            self.ok[m] &= fired[j] == self.expected[m]
        return logits

    @staticmethod
    def _value(cond: Condition, comp: Component, main: torch.Tensor, inputs: dict, held) -> torch.Tensor:
        if cond.mode == "skip_layer":
            return held
        if cond.mode == "zero":
            return torch.zeros_like(main)
        if cond.mode == "mean":
            return inputs["means"][comp.key].to(main.dtype).expand_as(main)
        donor = inputs["donor"][comp.key].to(main.dtype)
        if donor.shape != main.shape:
            raise InterventionError(f"donor output for {comp.key} has shape {tuple(donor.shape)}, "
                                    f"expected {tuple(main.shape)}")
        return donor


def row_bytes(model: torch.nn.Module, length: int, keep: int) -> int:
    """A generous estimate of the memory one row of ``length`` tokens takes in a forward:
    the residual stream and a layer's intermediate activations, attention scores, and the
    logits of ``keep`` positions (float32)."""
    cfg = model.config.get_text_config()
    hidden = cfg.hidden_size
    inner = getattr(cfg, "intermediate_size", None) or 4 * hidden
    heads = getattr(cfg, "num_attention_heads", None) or 1
    per_token = 16 * hidden + 4 * inner + heads * length
    return 4 * (length * per_token + 2 * keep * cfg.vocab_size)


def auto_rows(model: torch.nn.Module, length: int, keep: int, batch: int, device: torch.device,
              cap_bytes: int | None = None) -> int:
    """Rows per forward for stacked conditions: as many as ``cap_bytes`` holds (default: a
    quarter of the free accelerator memory, or of the available RAM on a CPU), at least one
    batch. On a CPU stacking does not pay (the forward is already compute-bound; see
    benchmarks/results), so the default there is one batch."""
    if cap_bytes is None:
        if device.type != "cuda":
            return batch
        free, _ = torch.cuda.mem_get_info(device)
        cap_bytes = free // 4
    rows = cap_bytes // max(row_bytes(model, length, keep), 1)
    return max(batch, int(rows) // batch * batch)
