"""What a component is, and the generic scan most families share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

ROLES = ("attention", "linear_attention", "ssm", "conv", "mlp", "layer")
MIXER_ROLES = ("attention", "linear_attention", "ssm", "conv")

# The plain decoder layer of Transformer controls: attention, then MLP.
TRANSFORMER_CHILDREN = {"self_attn": ("attention", "o_proj"), "mlp": ("mlp", "down_proj")}


def transformer_counts(config) -> dict[str, int]:
    n = config.num_hidden_layers
    return {"attention": n, "mlp": n, "layer": n}


@dataclass(frozen=True, order=True)
class Component:
    layer: int
    role: str
    path: str  # module path from the causal-LM root, e.g. "model.layers.3.self_attn"
    topology: str  # "parallel" for mixers summed inside one block, else "sequential"
    out_proj: str | None = None  # linear whose zeroed weight equals zero-ablating this component

    @property
    def key(self) -> str:
        return f"{self.role}@{self.layer}"

    def as_dict(self) -> dict:
        return {"layer": self.layer, "role": self.role, "path": self.path,
                "topology": self.topology, "out_proj": self.out_proj}


@dataclass(frozen=True)
class Readout:
    """Where a family's residual stream enters and leaves, and what the model applies on the way.

    Paths are module paths from the causal-LM root; ``*_attr`` name attributes of
    ``model.config`` (None: the family applies nothing there). The model computes
    ``embed(ids) * embed_multiplier`` as the residual entering layer 0 and
    ``softcap(unembed(final_norm(h)) * logit_multiplier / logit_divisor)`` as logits, where
    ``softcap(x) = c * tanh(x / c)`` when the config sets ``c``.
    """

    final_norm: str = "model.norm"
    unembed: str = "lm_head"
    embed: str = "model.embed_tokens"
    embed_multiplier_attr: str | None = None
    logit_multiplier_attr: str | None = None
    logit_divisor_attr: str | None = None
    softcap_attr: str | None = None


@dataclass
class Family:
    """One architecture family: how to find its components and how to build a tiny one."""

    name: str
    model_types: tuple[str, ...]
    tiny_config: Callable[[], object]  # a small random-weight config for tests and random:<type>
    # child attribute of a decoder layer -> (role, attribute of its output projection)
    children: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    layers_path: str = "model.layers"
    parallel_roles: tuple[str, ...] = ()  # roles that run side by side in one block
    components: Callable[["Family", torch.nn.Module], list[Component]] | None = None
    expected_counts: Callable[[object], dict[str, int]] | None = None  # from config, for tests
    readout: Readout = field(default_factory=Readout)  # final norm, unembedding, logit transform
    # role -> config attribute giving the heads whose outputs are concatenated into the role's
    # out_proj input (head h: columns h*d..(h+1)*d); roles left out have no per-head edits
    heads: dict[str, str] = field(default_factory=dict)

    def head_count(self, config, role: str) -> int | None:
        attr = self.heads.get(role)
        return None if attr is None else int(getattr(config.get_text_config(), attr))

    def find(self, model: torch.nn.Module) -> list[Component]:
        if self.components is not None:
            return self.components(self, model)
        return scan_layers(self, model)


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    return root.get_submodule(path)


def scan_layers(family: Family, model: torch.nn.Module) -> list[Component]:
    """Walk ``family.layers_path`` and map each layer's known children to roles."""
    layers = get_module(model, family.layers_path)
    found = []
    for i, layer in enumerate(layers):
        base = f"{family.layers_path}.{i}"
        found.append(Component(i, "layer", base, "sequential"))
        for attr, (role, out_proj) in family.children.items():
            child = getattr(layer, attr, None)
            if child is None or not isinstance(child, torch.nn.Module):
                continue
            proj = f"{base}.{attr}.{out_proj}" if out_proj and hasattr(child, out_proj) else None
            topo = "parallel" if role in family.parallel_roles else "sequential"
            found.append(Component(i, role, f"{base}.{attr}", topo, proj))
    return found
