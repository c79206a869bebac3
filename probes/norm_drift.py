"""Norm drift: how far an ablation moves the residual stream, layer by layer.

Inputs are residual streams ``(layer, token, d_model)`` (numpy, torch or xarray with those
dims), the residual *after* each layer (before the final norm: transformers'
``output_hidden_states[-1]`` is already normed). Reductions are in float64, one layer at a time.
Where a norm is zero a ratio or cosine is undefined: that token is NaN and left out of the
mean over tokens; a layer with no defined token is NaN.

- ``resid_norm(layer)``: mean over tokens of ||h||.
- ``norm_ratio(layer)``: ablated resid_norm / clean resid_norm.
- ``cos_to_clean(layer)``: mean over tokens of cos(h_ablated, h_clean).
- ``write_norm(component)``: mean over tokens of ||component output|| / ||residual entering
  its layer|| (the study's "mixer output norm / layer input norm").
- ``update_ratio(layer)``, ``update_cos(layer)``: mean over tokens of ||h_out - h_in|| / ||h_in||
  and cos(h_in, h_out) across each layer (the study's "norm change" and "cosine").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from ._arrays import as_float64, by_condition, coord, stack_conditions, to_numpy


def _mean_defined(v: np.ndarray) -> float:
    ok = np.isfinite(v)
    return float(v[ok].mean()) if ok.any() else float("nan")


def _norms(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x, axis=-1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-token cosine, NaN where either vector is zero."""
    return _ratio(np.einsum("td,td->t", a, b), _norms(a) * _norms(b))


def _check_resid(x, name: str):
    dims = ("layer", "token", "d_model")
    if isinstance(x, xr.DataArray):
        if set(x.dims) != set(dims):
            raise ValueError(f"{name} must have dims {dims}, has {x.dims}")
        x = x.transpose(*dims)
    shape = tuple(getattr(x, "shape", np.shape(x)))
    if len(shape) != 3:
        raise ValueError(f"{name} must be (layer, token, d_model), got shape {shape}")
    return x, shape


def _layer(x, i: int) -> np.ndarray:
    return as_float64(x[i], "layer slice")


def _pair(ablated, clean):
    ablated, sa = _check_resid(ablated, "ablated")
    clean, sc = _check_resid(clean, "clean")
    if sa != sc:
        raise ValueError(f"ablated and clean residuals need the same shape, got {sa} and {sc}")
    return ablated, clean, sa


def _per_layer(values, x, name: str, n: int) -> xr.DataArray:
    return xr.DataArray(np.asarray(values, dtype=np.float64), dims="layer",
                        coords={"layer": coord(x, "layer", n)}, name=name)


def resid_norm(resid) -> xr.DataArray:
    """Mean L2 norm of the residual over tokens, per layer."""
    resid, shape = _check_resid(resid, "resid")
    return _per_layer([_norms(_layer(resid, i)).mean() for i in range(shape[0])], resid, "resid_norm", shape[0])


def norm_ratio(ablated, clean) -> xr.DataArray:
    """Ablated mean residual norm over the clean one, per layer (NaN where clean is zero)."""
    ablated, clean, shape = _pair(ablated, clean)
    num = resid_norm(ablated).values
    den = resid_norm(clean).values
    return _per_layer(_ratio(num, den), clean, "norm_ratio", shape[0])


def cos_to_clean(ablated, clean) -> xr.DataArray:
    """Mean over tokens of the cosine between ablated and clean residuals, per layer."""
    ablated, clean, shape = _pair(ablated, clean)
    vals = [_mean_defined(_cos(_layer(ablated, i), _layer(clean, i))) for i in range(shape[0])]
    return _per_layer(vals, clean, "cos_to_clean", shape[0])


def layer_inputs(resid, embed) -> xr.DataArray:
    """The residual entering each layer: ``embed`` (token, d_model) for the first layer, then
    the previous layer's output. Needs consecutive layers."""
    resid, shape = _check_resid(resid, "resid")
    layers = coord(resid, "layer", shape[0])
    if shape[0] > 1 and not np.all(np.diff(layers) == 1):
        raise ValueError(f"layer_inputs needs consecutive layers, got {list(layers)}")
    emb = as_float64(embed, "embed", 2)
    if emb.shape != shape[1:]:
        raise ValueError(f"embed must be (token, d_model) = {shape[1:]}, got {emb.shape}")
    prev = to_numpy(resid[: shape[0] - 1])
    data = np.concatenate([emb[None].astype(prev.dtype, copy=False), prev], axis=0)
    return xr.DataArray(data, dims=("layer", "token", "d_model"), coords={"layer": layers})


def layer_update(resid, embed) -> xr.Dataset:
    """``update_ratio`` ||h_out - h_in|| / ||h_in|| and ``update_cos`` cos(h_in, h_out) per layer."""
    resid, shape = _check_resid(resid, "resid")
    inputs = layer_inputs(resid, embed)
    ratio, cos = [], []
    for i in range(shape[0]):
        h_in, h_out = _layer(inputs, i), _layer(resid, i)
        ratio.append(_mean_defined(_ratio(_norms(h_out - h_in), _norms(h_in))))
        cos.append(_mean_defined(_cos(h_in, h_out)))
    return xr.Dataset({"update_ratio": _per_layer(ratio, resid, "update_ratio", shape[0]),
                       "update_cos": _per_layer(cos, resid, "update_cos", shape[0])})


def write_norm(outputs, inputs, layers: Sequence[int] | None = None,
               components: Sequence[str] | None = None) -> xr.DataArray:
    """Mean over tokens of ||output|| / ||input|| for each component.

    ``outputs`` is (component, token, d_model); ``inputs`` is (layer, token, d_model), the
    residual entering each layer (see ``layer_inputs``), with a ``layer`` coordinate or
    0..n-1. ``layers`` gives each component's layer (default: the outputs' ``layer``
    coordinate); ``components`` its name (default: the ``component`` coordinate or 0..n-1).
    """
    out_shape = tuple(getattr(outputs, "shape", np.shape(outputs)))
    if len(out_shape) != 3:
        raise ValueError(f"outputs must be (component, token, d_model), got shape {out_shape}")
    if isinstance(outputs, xr.DataArray):
        outputs = outputs.transpose("component", "token", "d_model")
    inputs, in_shape = _check_resid(inputs, "inputs")
    if in_shape[1:] != out_shape[1:]:
        raise ValueError(f"outputs and inputs need the same (token, d_model), got {out_shape[1:]} and {in_shape[1:]}")
    if layers is None:
        if not (isinstance(outputs, xr.DataArray) and "layer" in outputs.coords):
            raise ValueError("pass layers= (each component's layer) or a 'layer' coordinate on outputs")
        layers = outputs["layer"].values
    layers = [int(v) for v in layers]
    if len(layers) != out_shape[0]:
        raise ValueError(f"layers has {len(layers)} entries for {out_shape[0]} components")
    names = list(components) if components is not None else list(coord(outputs, "component", out_shape[0]))
    in_layers = [int(v) for v in coord(inputs, "layer", in_shape[0])]
    missing = sorted(set(layers) - set(in_layers))
    if missing:
        raise ValueError(f"inputs have no residual for layers {missing}; they have {in_layers}")
    cache: dict[int, np.ndarray] = {}
    vals = []
    for i, layer in enumerate(layers):
        if layer not in cache:
            cache = {layer: _norms(_layer(inputs, in_layers.index(layer)))}
        vals.append(_mean_defined(_ratio(_norms(_layer(outputs, i)), cache[layer])))
    return xr.DataArray(np.asarray(vals), dims="component",
                        coords={"component": names, "layer": ("component", layers)}, name="write_norm")


def norm_drift(resid, baseline: str = "baseline", *, embed=None, outputs=None,
               component_layers: Sequence[int] | None = None) -> xr.Dataset:
    """All norm diagnostics for a set of conditions.

    ``resid`` maps condition -> (layer, token, d_model), or is a DataArray
    (condition, layer, token, d_model); it must hold the clean run under ``baseline``.
    Optional, per condition as well: ``embed`` (token, d_model), the residual entering the
    first layer, adds ``update_ratio`` / ``update_cos``; ``outputs`` (component, token,
    d_model) with ``embed`` adds ``write_norm(condition, component)``, each component's input
    being that condition's own residual entering the layer.

    Returns ``resid_norm``, ``norm_ratio``, ``cos_to_clean`` over (condition, layer).
    """
    runs = by_condition(resid, "resid")
    if baseline not in runs:
        raise ValueError(f"no {baseline!r} condition among {list(runs)}: the clean run is needed")
    embeds = by_condition(embed, "embed") if embed is not None else {}
    outs = by_condition(outputs, "outputs") if outputs is not None else {}
    if outs and not embeds:
        raise ValueError("write_norm needs embed= as well (the input of the first layer)")
    clean = runs[baseline]
    per = {}
    for name, run in runs.items():
        ds = xr.Dataset({"resid_norm": resid_norm(run), "norm_ratio": norm_ratio(run, clean),
                         "cos_to_clean": cos_to_clean(run, clean)})
        if embeds:
            if name not in embeds:
                raise ValueError(f"embed has no condition {name!r}")
            ds = ds.merge(layer_update(run, embeds[name]))
            if outs:
                if name not in outs:
                    raise ValueError(f"outputs has no condition {name!r}")
                wn = write_norm(outs[name], layer_inputs(run, embeds[name]), component_layers)
                ds["write_norm"] = wn.drop_vars("layer").rename("write_norm")
                ds = ds.assign_coords(component_layer=("component", wn["layer"].values))
        per[name] = ds
    out = stack_conditions(per)
    out.attrs = {"baseline": baseline, "reduction": "float64, mean over tokens; NaN tokens (zero norms) left out"}
    return out
