"""Per-head edits: a head's contribution before its component's output projection.

Attention, Gated DeltaNet and Mamba-2 concatenate their heads' outputs into the input of one
linear output projection (``Component.out_proj``); head h is the slice h*d..(h+1)*d of that
input, and the component's output is out_proj of the sum of the slices (none of these families
has an out_proj bias, so zeroing every head equals zeroing the component). Which config
attribute counts a role's heads is the family's ``heads`` map (``workbench/architectures``).

Edits are forward pre-hooks on out_proj: they run inside nnsight traces as in plain forwards,
so they compose with ``Intervener.run``; each records that it fired.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.architectures import Component, ComponentMap, family_for
from workbench.interventions import InterventionError


@dataclass(frozen=True)
class Head:
    component: Component
    index: int
    size: int  # columns of the out_proj input this head writes

    @property
    def name(self) -> str:
        return f"{self.component.key}.h{self.index}"

    @property
    def columns(self) -> slice:
        return slice(self.index * self.size, (self.index + 1) * self.size)


def heads_of(model: torch.nn.Module, comp: Component) -> list[Head]:
    """The heads of ``comp`` (empty where its family maps no heads for the role)."""
    n = family_for(model.config.model_type).head_count(model.config, comp.role)
    if n is None or comp.out_proj is None:
        return []
    width = model.get_submodule(comp.out_proj).in_features
    if width % n:
        raise InterventionError(f"{comp.key}: out_proj takes {width} features, not a multiple of its {n} heads")
    return [Head(comp, h, width // n) for h in range(n)]


def all_heads(model: torch.nn.Module, cmap: ComponentMap, comps=None) -> list[Head]:
    return [h for c in (comps if comps is not None else cmap.components) for h in heads_of(model, c)]


class HeadEdits:
    """``with HeadEdits(model, {head: value})``: each head's slice of its out_proj input set to
    ``value`` (None: zero; else a tensor (batch, positions, size)) in every forward inside."""

    def __init__(self, model: torch.nn.Module, edits: dict[Head, torch.Tensor | None]):
        self.model, self.edits = model, edits
        self.fired: dict[str, int] = {}
        self._handles = []

    def __enter__(self):
        by_proj: dict[str, list[Head]] = {}
        for head in self.edits:
            by_proj.setdefault(head.component.out_proj, []).append(head)
        for path, heads in by_proj.items():
            def hook(_module, args, heads=heads, path=path):
                x = args[0].clone()
                for head in heads:
                    value = self.edits[head]
                    x[..., head.columns] = 0 if value is None else value.to(x.dtype)
                self.fired[path] = self.fired.get(path, 0) + 1
                return (x,) + tuple(args[1:])
            self._handles.append(self.model.get_submodule(path).register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        missing = sorted({h.component.out_proj for h in self.edits} - set(self.fired))
        if missing and exc[0] is None:
            raise InterventionError(f"head edits on {missing} never fired")
        return False


class HeadInputs:
    """``with HeadInputs(model, heads) as seen``: ``seen.values[head]``, each head's slice of its
    out_proj input in the last forward inside (under whatever edits that forward ran with)."""

    def __init__(self, model: torch.nn.Module, heads: list[Head]):
        self.model, self.heads = model, heads
        self.values: dict[Head, torch.Tensor] = {}
        self._handles = []

    def __enter__(self):
        for path in {h.component.out_proj for h in self.heads}:
            mine = [h for h in self.heads if h.component.out_proj == path]

            def hook(_module, args, mine=mine):
                for head in mine:
                    self.values[head] = args[0][..., head.columns].detach().clone()
            self._handles.append(self.model.get_submodule(path).register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        return False
