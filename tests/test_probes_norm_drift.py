"""Norm drift against direct per-token formulas, zero norms, and the condition set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from probes.norm_drift import (cos_to_clean, layer_inputs, layer_update, norm_drift, norm_ratio,
                               resid_norm, write_norm)


def resid(seed, layers=3, tokens=20, d=6):
    return np.random.default_rng(seed).normal(size=(layers, tokens, d)).astype(np.float32)


def test_direct_formulas():
    clean, abl = resid(0), resid(1)
    n_clean = np.linalg.norm(clean.astype(np.float64), axis=-1).mean(-1)
    n_abl = np.linalg.norm(abl.astype(np.float64), axis=-1).mean(-1)
    np.testing.assert_allclose(resid_norm(clean).values, n_clean, rtol=1e-12)
    np.testing.assert_allclose(norm_ratio(abl, clean).values, n_abl / n_clean, rtol=1e-12)
    a, c = abl.astype(np.float64), clean.astype(np.float64)
    cos = (a * c).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(c, axis=-1))
    np.testing.assert_allclose(cos_to_clean(abl, clean).values, cos.mean(-1), rtol=1e-12)
    np.testing.assert_allclose(cos_to_clean(clean, clean).values, 1.0)
    np.testing.assert_allclose(cos_to_clean(-clean, clean).values, -1.0)
    np.testing.assert_allclose(norm_ratio(3 * clean, clean).values, 3.0, rtol=1e-6)


def test_torch_and_xarray_inputs_keep_layer_labels():
    clean, abl = resid(0), resid(1)
    xa = xr.DataArray(clean, dims=("layer", "token", "d_model"), coords={"layer": [4, 5, 6]})
    out = resid_norm(xa)
    assert out.dims == ("layer",) and list(out.layer.values) == [4, 5, 6]
    np.testing.assert_allclose(norm_ratio(torch.from_numpy(abl), torch.from_numpy(clean)).values,
                               norm_ratio(abl, clean).values)
    # a transposed DataArray is read by dim name, not position
    np.testing.assert_allclose(resid_norm(xa.transpose("token", "layer", "d_model")).values, out.values)


def test_zero_norms_give_nan_not_crash():
    clean, abl = resid(0), resid(1)
    clean[1] = 0.0  # a whole layer at zero
    abl[0, :5] = 0.0  # some tokens at zero
    ratio = norm_ratio(abl, clean).values
    assert np.isnan(ratio[1]) and np.isfinite(ratio[[0, 2]]).all()
    cos = cos_to_clean(abl, clean).values
    assert np.isnan(cos[1])
    a, c = abl[0, 5:].astype(np.float64), clean[0, 5:].astype(np.float64)
    ref = ((a * c).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(c, axis=-1))).mean()
    assert cos[0] == pytest.approx(ref, rel=1e-12)  # zero tokens left out of the mean


def test_write_norm_and_layer_update():
    rng = np.random.default_rng(2)
    h = resid(3)
    embed = rng.normal(size=(20, 6))
    inputs = layer_inputs(h, embed)
    np.testing.assert_array_equal(inputs.values[0], embed.astype(np.float32))
    np.testing.assert_array_equal(inputs.values[2], h[1])
    outs = np.stack([2.0 * inputs.values[0], 0.5 * inputs.values[2], np.zeros((20, 6))])
    wn = write_norm(outs, inputs, layers=[0, 2, 2], components=["attention@0", "mlp@2", "ssm@2"])
    np.testing.assert_allclose(wn.values, [2.0, 0.5, 0.0], rtol=1e-6)
    assert list(wn.component.values) == ["attention@0", "mlp@2", "ssm@2"]
    assert list(wn.layer.values) == [0, 2, 2]
    upd = layer_update(h, embed)
    hin, hout = inputs.values.astype(np.float64), h.astype(np.float64)
    ref = (np.linalg.norm(hout - hin, axis=-1) / np.linalg.norm(hin, axis=-1)).mean(-1)
    np.testing.assert_allclose(upd["update_ratio"].values, ref, rtol=1e-10)
    with pytest.raises(ValueError, match="no residual for layers"):
        write_norm(outs, inputs.isel(layer=[0, 1]), layers=[0, 2, 2])
    with pytest.raises(ValueError, match="layers="):
        write_norm(outs, inputs)


def test_condition_set():
    clean = resid(0)
    runs = {"baseline": clean, "scaled": 2 * clean, "noisy": clean + resid(5)}
    embed = {k: np.ones((20, 6)) for k in runs}
    outs = {k: np.stack([v[0], v[2]]) for k, v in runs.items()}
    ds = norm_drift(runs, embed=embed, outputs=outs, component_layers=[1, 2])
    assert ds["norm_ratio"].dims == ("condition", "layer")
    assert ds["write_norm"].dims == ("condition", "component")
    assert list(ds.condition.values) == ["baseline", "scaled", "noisy"]
    np.testing.assert_allclose(ds["norm_ratio"].sel(condition="baseline"), 1.0)
    np.testing.assert_allclose(ds["norm_ratio"].sel(condition="scaled"), 2.0, rtol=1e-6)
    np.testing.assert_allclose(ds["cos_to_clean"].sel(condition="scaled"), 1.0, rtol=1e-6)
    assert (ds["cos_to_clean"].sel(condition="noisy") < 0.95).all()
    # the input of layer 1 is layer 0's output, so component 0 writes with norm ratio 1
    np.testing.assert_allclose(ds["write_norm"].isel(component=0), 1.0, rtol=1e-6)
    stacked = xr.DataArray(np.stack(list(runs.values())), dims=("condition", "layer", "token", "d_model"),
                           coords={"condition": list(runs)})
    np.testing.assert_allclose(norm_drift(stacked)["cos_to_clean"].values, ds["cos_to_clean"].values)
    with pytest.raises(ValueError, match="no 'baseline' condition"):
        norm_drift({"scaled": clean})
    with pytest.raises(ValueError, match="same shape"):
        norm_ratio(clean[:2], clean)
