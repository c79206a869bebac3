"""The model's own readout as a lens: residual-stream tensors -> logits, the way the model does it.

What a family applies (final norm, unembedding, logit multiplier / divisor / soft-cap, embedding
multiplier) is data on its ``Family.readout``; this module only applies it. The residual after
layer ``i`` is element 0 of the output of decoder layer ``i`` (``residual_paths``); the residual
entering layer 0 is ``embed_residual``.
"""

from __future__ import annotations

from typing import Callable

import torch

from workbench.architectures import ComponentMap, Family, Readout, family_for

Source = Family | ComponentMap | Readout | str | None


def readout_for(model: torch.nn.Module, source: Source = None) -> Readout:
    """The ``Readout`` of a Family, ComponentMap, model_type string, or (None) of ``model``."""
    if isinstance(source, Readout):
        return source
    if isinstance(source, Family):
        return source.readout
    if isinstance(source, ComponentMap):
        return family_for(source.model_type).readout
    if source is None:
        source = getattr(getattr(model, "config", None), "model_type", None)
    if not isinstance(source, str):
        raise TypeError("expected a Family, ComponentMap, Readout or model_type, "
                        f"got {type(source).__name__}")
    return family_for(source).readout


def residual_paths(cmap: ComponentMap) -> list[str]:
    """Module path of decoder layer ``i`` at index ``i``: its output is the residual after layer i."""
    paths = {c.layer: c.path for c in cmap.by_role("layer")}
    missing = [i for i in range(cmap.n_layers) if i not in paths]
    if missing:
        raise ValueError(f"this {cmap.model_type} map has no 'layer' component for layers {missing}")
    return [paths[i] for i in range(cmap.n_layers)]


def _config_value(model: torch.nn.Module, attr: str | None) -> float | None:
    if attr is None:
        return None
    value = getattr(model.config, attr, None)
    return None if value is None else float(value)


@torch.no_grad()
def embed_residual(model: torch.nn.Module, ids: torch.Tensor, source: Source = None) -> torch.Tensor:
    """The residual entering layer 0: embedding output times any embedding multiplier, float32."""
    ro = readout_for(model, source)
    device = next(model.parameters()).device
    hidden = model.get_submodule(ro.embed)(ids.to(device))
    mult = _config_value(model, ro.embed_multiplier_attr)
    if mult is not None:
        hidden = hidden * mult  # in the model's dtype, as the model does
    return hidden.float()


def transform_logits(model: torch.nn.Module, logits: torch.Tensor, source: Source = None) -> torch.Tensor:
    """What the model applies after the unembedding (multiplier, divisor, soft-cap), in float32."""
    ro = readout_for(model, source)
    logits = logits.float()
    mult = _config_value(model, ro.logit_multiplier_attr)
    if mult is not None:
        logits = logits * mult
    div = _config_value(model, ro.logit_divisor_attr)
    if div is not None:
        logits = logits / div
    cap = _config_value(model, ro.softcap_attr)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.no_grad()
def lens_logits(model: torch.nn.Module, hidden: torch.Tensor, source: Source = None, *,
                chunk: int = 1024,
                reduce: Callable[[torch.Tensor, slice], torch.Tensor] | None = None) -> torch.Tensor:
    """Logits of residual-stream vectors ``hidden`` (..., d_model) through the model's own readout.

    Runs ``chunk`` tokens at a time: final norm and unembedding in the model's dtype (so the last
    layer's residual gives exactly the model's logits), the logit transform in float32. Returns
    float32 ``(..., vocab)`` on ``hidden``'s device, or, with ``reduce``, the concatenation of
    ``reduce(logits_chunk, rows)`` over chunks (``rows`` slices the flattened tokens), so the
    full (tokens x vocab) array need never exist: e.g. a per-token KL against reference logits.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of tokens, got {chunk}")
    ro = readout_for(model, source)
    norm = model.get_submodule(ro.final_norm)
    unembed = model.get_submodule(ro.unembed)
    param = getattr(unembed, "weight", None)
    param = param if isinstance(param, torch.Tensor) else next(model.parameters())
    flat = hidden.reshape(-1, hidden.shape[-1])
    parts = []
    for start in range(0, flat.shape[0], chunk):
        rows = slice(start, min(start + chunk, flat.shape[0]))
        x = flat[rows].to(device=param.device, dtype=param.dtype)
        logits = transform_logits(model, unembed(norm(x)), ro)
        parts.append((reduce(logits, rows) if reduce is not None else logits).to(hidden.device))
    if not parts:
        raise ValueError("hidden holds no tokens")
    out = torch.cat(parts)
    return out.reshape(*hidden.shape[:-1], *out.shape[1:])
