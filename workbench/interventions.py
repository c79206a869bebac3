"""Conditions as edits inside one nnsight trace on the unmodified Hugging Face model.

Edits are issued in the order the modules run (nnsight requires it); the order is measured once
per model with forward hooks, not assumed. Every edit records that it fired, and a run whose
edits did not all fire raises.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from nnsight import NNsight

from workbench.architectures import Component, ComponentMap, component_map
from workbench.plans import Condition


class InterventionError(RuntimeError):
    pass


@dataclass
class RunOutput:
    logits: torch.Tensor
    fired: list[str]  # component keys whose edit ran, in order
    saved: dict[str, torch.Tensor]


def _main(out):
    """The tensor a component contributes (element 0 when a module returns a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def _replace(out, value):
    return (value,) + tuple(out[1:]) if isinstance(out, tuple) else value


def _layer_input(inputs):
    args, kwargs = inputs
    return args[0] if args else kwargs["hidden_states"]


class Intervener:
    """Runs a model under ablation conditions."""

    def __init__(self, model: torch.nn.Module, cmap: ComponentMap | None = None):
        self.model = model
        self.cmap = cmap or component_map(model)
        self.traced = NNsight(model)
        self._order: dict[str, int] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- structure -------------------------------------------------------------------------
    def execution_order(self) -> dict[tuple[str, str], int]:
        """When each component's input and output first appear in a real forward.

        Keys are (path, "in") and (path, "out"); measured once with hooks on a 4-token input.
        """
        if self._order is None:
            events: dict[tuple[str, str], int] = {}

            def note(key):
                events.setdefault(key, len(events))

            handles = []
            for c in self.cmap.components:
                module = self.model.get_submodule(c.path)
                handles.append(module.register_forward_pre_hook(
                    lambda m, a, path=c.path: note((path, "in"))))
                handles.append(module.register_forward_hook(
                    lambda m, a, o, path=c.path: note((path, "out"))))
            try:
                with torch.no_grad():
                    self.model(input_ids=torch.zeros(1, 4, dtype=torch.long, device=self.device),
                               use_cache=False)
            finally:
                for h in handles:
                    h.remove()
            self._order = events
        return self._order

    def _when(self, comp: Component, mode: str) -> int:
        """The trace step at which an edit or save of ``comp`` first touches the forward."""
        order = self.execution_order()
        key = (comp.path, "in" if mode == "skip_layer" else "out")
        if key not in order:
            raise InterventionError(f"module {comp.path} is never called in a forward pass")
        return order[key]

    def components(self, condition: Condition) -> list[Component]:
        """The condition's components, in forward order."""
        comps = [self.cmap.get(t.layer, t.role) for t in condition.targets]
        return sorted(comps, key=lambda c: self._when(c, condition.mode))

    def _envoy(self, path: str):
        env = self.traced
        for part in path.split("."):
            env = env[int(part)] if part.isdigit() else getattr(env, part)
        return env

    # -- runs ------------------------------------------------------------------------------
    @torch.no_grad()
    def outputs(self, ids: torch.Tensor, comps: list[Component]) -> dict[str, torch.Tensor]:
        """Clean outputs of ``comps`` on ``ids`` (one trace, nothing edited)."""
        comps = sorted(comps, key=lambda c: self._when(c, "save"))
        saved: dict[str, torch.Tensor] = {}  # filled inside the trace (its body runs elsewhere)
        with self.traced.trace(input_ids=ids.to(self.device), use_cache=False) as tracer:
            for c in comps:
                saved[c.key] = _main(self._envoy(c.path).output).save()
            tracer.stop()  # nothing after the last saved module is needed
        return {k: v.detach() for k, v in saved.items()}

    @torch.no_grad()
    def component_means(self, batches, comps: list[Component], skip: int = 0) -> dict[str, torch.Tensor]:
        """Mean output vector of each component over the positions of ``batches`` from ``skip`` on
        (the first positions of a window carry attention-sink outliers)."""
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for ids in batches:
            outs = self.outputs(ids, comps)
            for key, value in outs.items():
                # float64 on the CPU: not every device has it (mps), and means need the precision
                total = value[:, skip:].float().cpu().double().sum(dim=(0, 1))
                sums[key] = sums[key] + total if key in sums else total
            count += ids.shape[0] * max(ids.shape[1] - skip, 0)
        if not count:
            raise InterventionError("mean ablation needs a non-empty reference set")
        return {k: (v / count).to(self.device) for k, v in sums.items()}

    @torch.no_grad()
    def run(self, ids: torch.Tensor, condition: Condition, *, means: dict | None = None,
            donor: dict | None = None, save: list[Component] | None = None, keep: int = 0,
            strict: bool = True, forward_kwargs: dict | None = None) -> RunOutput:
        """Logits of ``ids`` under ``condition``.

        ``means`` (mode mean): component key -> mean vector; ``donor`` (mode resample):
        component key -> that component's clean output on the donor input (same shape).
        ``save``: components whose (possibly edited) output to return. ``keep``: logits of the
        last ``keep`` positions only (0: all). ``strict``: raise when an edit did not fire
        (otherwise the caller reads ``fired``). ``forward_kwargs``: more arguments of the model's
        forward (a cache and positions, for scoring in carried chunks); default ``use_cache=False``.
        """
        comps = self.components(condition)
        mode = condition.mode
        if mode == "mean" and (means is None or any(c.key not in means for c in comps)):
            raise InterventionError("mode 'mean' needs the reference means of every target")
        if mode == "resample" and (donor is None or any(c.key not in donor for c in comps)):
            raise InterventionError("mode 'resample' needs donor outputs for every target")
        if mode == "skip_layer" and save:
            skipped = {c.path for c in comps}
            inside = [s.key for s in save if any(s.path.startswith(p + ".") for p in skipped)]
            if inside:
                raise InterventionError(f"cannot save {inside}: inside a skipped layer")
        edits = [(c, "edit", self._when(c, mode)) for c in comps]
        edits += [(c, "save", self._when(c, "save")) for c in save or []]
        edits.sort(key=lambda e: (e[2], e[1] == "save"))
        fired: list[str] = []
        saved = {}
        kwargs = {"use_cache": False, **(forward_kwargs or {})}
        with self.traced.trace(input_ids=ids.to(self.device), logits_to_keep=keep, **kwargs):
            for comp, what, _ in edits:
                env = self._envoy(comp.path)
                if what == "save":
                    saved[comp.key] = _main(env.output).save()
                    continue
                if mode == "skip_layer":
                    hidden = _layer_input(env.inputs)
                    env.output = _replace(env.output, hidden)
                else:
                    out = env.output
                    main = _main(out)
                    if mode == "zero":
                        new = torch.zeros_like(main)
                    elif mode == "mean":
                        new = means[comp.key].to(main.dtype).expand_as(main).clone()
                    else:
                        new = donor[comp.key].to(main.dtype)
                        if new.shape != main.shape:
                            raise InterventionError(
                                f"donor output for {comp.key} has shape {tuple(new.shape)}, "
                                f"expected {tuple(main.shape)}")
                    env.output = _replace(out, new)
                fired.append(comp.key)
            logits = self.traced.output.logits.save()
        expected = [c.key for c in comps]
        if fired != expected and strict:
            raise InterventionError(f"edits planned {expected} but fired {fired}")
        return RunOutput(logits=logits, fired=fired, saved=dict(saved))


def donor_windows(reference: torch.Tensor, length: int, n: int, seed: int, avoid: list[int] | None = None,
                  salt: int = 0) -> torch.Tensor:
    """``n`` donor sequences of ``length`` tokens from ``reference``, reproducible from seed + salt.

    ``avoid`` (the start of each window being replaced, when the reference is the scored text
    itself): donors never overlap it. ``check_reference`` says beforehand whether that is possible.
    """
    check_reference(len(reference), length, overlapping=avoid is not None)
    span = len(reference) - length
    rng = np.random.default_rng([seed, salt])
    starts = []
    for k in range(n):
        start = int(rng.integers(0, span + 1))
        while avoid is not None and abs(start - avoid[k]) < length:
            start = int(rng.integers(0, span + 1))
        starts.append(start)
    return torch.stack([reference[s:s + length] for s in starts])


def check_reference(n_reference: int, length: int, overlapping: bool) -> None:
    """Refuse a reference too short for donors of ``length`` tokens. When the reference is the
    text being scored (``overlapping``), a donor that never overlaps its window needs room on one
    side of any window: at least 3 x length tokens."""
    need = 3 * length if overlapping else length
    if n_reference < need:
        why = (" so that no window is its own donor (the reference is the scored text itself)"
               if overlapping else "")
        raise InterventionError(f"resample needs a reference of at least {need} tokens for windows of "
                                f"{length}{why}; it has {n_reference}. Use a longer --reference corpus "
                                "or a shorter --context")
