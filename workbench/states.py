"""Recurrent state of linear-attention and SSM mixers at the end of each sequence.

Read from the cache the Hugging Face model returns with ``use_cache=True``: in transformers 5
every recurrent mixer (Gated DeltaNet in Qwen3.5 / Qwen3-Next; Mamba-2 in Falcon-H1, Bamba,
Granite 4.0 hybrid, Nemotron-H, Zamba2; Mamba in Jamba) writes its final state to
``cache.layers[i].recurrent_states[0]``, ``i`` the decoder layer (block) index. LFM2's short
convolutions keep only a conv window, not a recurrent state, so role ``conv`` is not read.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from workbench.architectures import ComponentMap
from workbench.interventions import Intervener
from workbench.plans import BASELINE, Condition

STATE_ROLES = ("linear_attention", "ssm")


class StateError(ValueError):
    pass


def _recurrent_state(cache, layer: int, key: str, model_type: str) -> torch.Tensor:
    layers = getattr(cache, "layers", None)
    state = None
    if layers is not None and layer < len(layers):
        states = getattr(layers[layer], "recurrent_states", None) or {}
        state = states.get(0)
    if state is None:
        raise StateError(f"{model_type}: the cache holds no recurrent state for {key} (cache "
                         f"{type(cache).__name__}); recurrent states are read from transformers 5 "
                         f"caches whose layers have recurrent_states")
    return state


def removed_keys(cmap: ComponentMap, condition: Condition) -> set[str]:
    """Keys of components whose output does not reach the network under ``condition``."""
    targets = [cmap.get(t.layer, t.role) for t in condition.targets]
    if condition.mode != "skip_layer":
        return {c.key for c in targets}
    skipped = {c.path for c in targets}
    return {c.key for c in cmap.components if any(c.path.startswith(p + ".") for p in skipped)}


@torch.no_grad()
def state_norms(model: torch.nn.Module, ids: torch.Tensor, cmap: ComponentMap | None = None,
                condition: Condition | None = None, *, intervener: Intervener | None = None,
                means: dict | None = None, donor: dict | None = None) -> xr.DataArray:
    """Frobenius norm of each linear-attention / SSM layer's state after the last token of each row.

    Runs ``ids`` (unpadded rows) under ``condition`` (None: clean; ``means`` / ``donor`` as for
    ``Intervener.run``) in one trace with ``use_cache=True``. Returns float64
    ``(component, row)`` with ``layer`` and ``role`` coordinates. A mixer the condition removes
    (a target, or inside a skipped layer) still ran, but its state never reached the network:
    its norms are NaN.
    """
    iv = intervener or Intervener(model, cmap)
    cmap = iv.cmap
    comps = [c for c in cmap.components if c.role in STATE_ROLES]
    if not comps:
        raise StateError(f"{cmap.model_type} has no recurrent mixers (roles {', '.join(STATE_ROLES)}); "
                         f"its roles: {', '.join(cmap.roles())}")
    condition = BASELINE if condition is None else condition
    got = {}

    def want_cache(_module, args, kwargs):
        return args, {**kwargs, "use_cache": True}

    def keep_cache(_module, _args, out):
        got["cache"] = out.cache if hasattr(out, "cache") else out.past_key_values

    # Intervener.run takes no forward kwargs and returns only logits: ask for, and keep, the
    # cache with plain hooks on the root module, which nnsight calls like any caller.
    handles = [iv.model.register_forward_pre_hook(want_cache, with_kwargs=True),
               iv.model.register_forward_hook(keep_cache)]
    try:
        iv.run(ids, condition, means=means, donor=donor)
    finally:
        for h in handles:
            h.remove()
    cache = got.get("cache")
    removed = removed_keys(cmap, condition)
    rows = []
    for c in comps:
        state = _recurrent_state(cache, c.layer, c.key, cmap.model_type)
        norms = state.detach().float().cpu().double().flatten(1).norm(dim=1).numpy()
        rows.append(np.full_like(norms, np.nan) if c.key in removed else norms)
    return xr.DataArray(
        np.stack(rows), dims=("component", "row"),
        coords={"component": [c.key for c in comps], "layer": ("component", [c.layer for c in comps]),
                "role": ("component", [c.role for c in comps]), "row": np.arange(ids.shape[0])},
        name="state_norm", attrs={"model_type": cmap.model_type},
    )
