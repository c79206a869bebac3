"""Component maps: from a loaded model, the list of components that can be ablated.

One module per family in this package, each defining ``FAMILY``; they are found automatically,
so adding an architecture means adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import lru_cache

import torch

from workbench.architectures.base import MIXER_ROLES, ROLES, Component, Family, Readout

__all__ = ["Component", "ComponentMap", "Family", "Readout", "ROLES", "MIXER_ROLES", "UnsupportedArchitecture",
           "component_map", "families", "family_for", "random_model"]


class UnsupportedArchitecture(ValueError):
    pass


@lru_cache(maxsize=1)
def families() -> dict[str, Family]:
    """model_type -> Family, from every module in this package that defines FAMILY."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        family = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FAMILY", None)
        if family is not None:
            for model_type in family.model_types:
                found[model_type] = family
    return found


def family_for(model_type: str) -> Family:
    try:
        return families()[model_type]
    except KeyError:
        raise UnsupportedArchitecture(
            f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(families()))}"
        ) from None


@dataclass(frozen=True)
class ComponentMap:
    model_type: str
    family: str
    n_layers: int
    components: tuple[Component, ...]

    @property
    def topology(self) -> str:
        return "parallel" if any(c.topology == "parallel" for c in self.components) else "sequential"

    @property
    def kind(self) -> str:
        mixers = {c.role for c in self.components if c.role in MIXER_ROLES}
        return "hybrid" if len(mixers) > 1 else "transformer" if mixers == {"attention"} else "other"

    def roles(self) -> list[str]:
        present = {c.role for c in self.components}
        return [r for r in ROLES if r in present]

    def by_role(self, role: str) -> list[Component]:
        return [c for c in self.components if c.role == role]

    def layers_of(self, role: str) -> list[int]:
        return sorted({c.layer for c in self.by_role(role)})

    def get(self, layer: int, role: str) -> Component:
        for c in self.components:
            if c.layer == layer and c.role == role:
                return c
        if role not in self.roles():
            raise KeyError(f"role {role!r} is absent from this {self.model_type} model; "
                           f"roles present: {', '.join(self.roles())}")
        if not 0 <= layer < self.n_layers:
            raise KeyError(f"layer {layer} is out of range; this model has layers 0-{self.n_layers - 1}")
        raise KeyError(f"layer {layer} has no {role!r} component; {role} layers: "
                       f"{_ranges(self.layers_of(role))}")

    def counts(self) -> dict[str, int]:
        return {r: len(self.by_role(r)) for r in self.roles()}

    def as_records(self) -> list[dict]:
        return [c.as_dict() for c in self.components]


def _ranges(layers) -> str:
    from workbench.labels import layer_ranges

    return layer_ranges(layers)


def _module_summary(model: torch.nn.Module, depth: int = 4) -> str:
    names = [n for n, _ in model.named_modules() if n and n.count(".") < depth]
    return ", ".join(names[:25]) + (" ..." if len(names) > 25 else "")


def component_map(model: torch.nn.Module) -> ComponentMap:
    """Find every component of ``model`` (a causal LM) from its modules."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in families():
        raise UnsupportedArchitecture(
            f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(families()))}. "
            f"Modules found: {_module_summary(model)}"
        )
    family = families()[model_type]
    try:
        found = family.find(model)
    except (AttributeError, KeyError, IndexError) as exc:
        raise UnsupportedArchitecture(
            f"model_type {model_type!r} does not have the layout the {family.name} map expects "
            f"({exc}); modules found: {_module_summary(model)}"
        ) from exc
    if not found:
        raise UnsupportedArchitecture(f"no components found in this {model_type!r} model; "
                                      f"modules found: {_module_summary(model)}")
    n_layers = 1 + max(c.layer for c in found)
    return ComponentMap(model_type, family.name, n_layers, tuple(sorted(found)))


def random_model(model_type: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A tiny random-weight causal LM of a supported family, with a byte-level tokenizer
    (built in ``dtype`` so Hugging Face's float32 exceptions hold)."""
    from transformers import AutoModelForCausalLM

    from workbench.tokenization import byte_tokenizer

    family = family_for(model_type)
    config = family.tiny_config()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval(), byte_tokenizer()
