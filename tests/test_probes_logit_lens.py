"""Logit-lens metrics against direct formulas (scipy softmax / rel_entr), chunking and inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from scipy.special import log_softmax, rel_entr, softmax

from probes.logit_lens import lens_kl_to_clean, lens_metrics


def data(seed=0, layers=3, tokens=11, vocab=17):
    rng = np.random.default_rng(seed)
    lens = rng.normal(scale=2.0, size=(layers, tokens, vocab))
    final = rng.normal(scale=2.0, size=(tokens, vocab))
    targets = rng.integers(0, vocab, size=tokens)
    targets[-1] = -1  # no next token at the end
    return lens, final, targets


def direct(lens, final, targets):
    pf = softmax(final, axis=-1)
    out = {"lens_kl": [], "lens_top1": [], "lens_ce": [], "lens_entropy": []}
    for lay in lens:
        pl = softmax(lay, axis=-1)
        out["lens_kl"].append(rel_entr(pf, pl).sum(-1).mean())
        out["lens_top1"].append((pl.argmax(-1) == pf.argmax(-1)).mean())
        ok = targets >= 0
        out["lens_ce"].append(-np.log(pl[np.flatnonzero(ok), targets[ok]]).mean())
        out["lens_entropy"].append(-(pl * np.log(pl)).sum(-1).mean())
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("chunk", [None, 1, 4])
def test_matches_direct_formulas(chunk):
    lens, final, targets = data()
    ds = lens_metrics(lens, final, targets, chunk_tokens=chunk)
    ref = direct(lens, final, targets)
    for k, v in ref.items():
        np.testing.assert_allclose(ds[k].values, v, rtol=1e-10, err_msg=k)
    assert ds["lens_kl"].dims == ("layer",)
    assert "KL(final || lens)" in ds.attrs["kl_direction"]


def test_final_layer_lens_equals_final():
    lens, final, targets = data(1)
    lens[-1] = final + 3.0  # logits shifted by a constant: the same distribution
    ds = lens_metrics(lens, final, targets)
    assert float(ds["lens_kl"][-1]) == pytest.approx(0.0, abs=1e-12)
    assert float(ds["lens_top1"][-1]) == 1.0
    assert (ds["lens_kl"][:-1] > 0).all()


def test_log_probs_torch_float16_and_xarray_inputs():
    lens, final, targets = data(2)
    ref = lens_metrics(lens, final, targets)
    logp = log_softmax(lens, axis=-1)
    np.testing.assert_allclose(lens_metrics(logp, final, targets)["lens_kl"], ref["lens_kl"], rtol=1e-10)
    t = lens_metrics(torch.from_numpy(lens).half(), torch.from_numpy(final).bfloat16(), torch.from_numpy(targets))
    np.testing.assert_allclose(t["lens_kl"], ref["lens_kl"], rtol=0.05, atol=0.05)
    xa = xr.DataArray(lens.transpose(1, 0, 2), dims=("token", "layer", "vocab"), coords={"layer": [3, 7, 11]})
    xds = lens_metrics(xa, final, targets)
    assert list(xds.layer.values) == [3, 7, 11]
    np.testing.assert_allclose(xds["lens_ce"], ref["lens_ce"], rtol=1e-12)
    dds = lens_metrics({5: lens[0], 9: lens[2]}, final, targets)
    assert list(dds.layer.values) == [5, 9]
    np.testing.assert_allclose(dds["lens_entropy"], ref["lens_entropy"][[0, 2]], rtol=1e-12)


def test_kl_to_clean_and_last_token_only():
    lens, final, _ = data(3)
    clean = np.random.default_rng(9).normal(size=final.shape)
    pc = softmax(clean, axis=-1)
    kl_all = np.array([rel_entr(pc, softmax(lay, axis=-1)).sum(-1) for lay in lens])
    full = lens_metrics(lens, final, clean_final=clean, per_token=True)
    assert full["lens_kl_to_clean"].dims == ("layer", "token")
    np.testing.assert_allclose(full["lens_kl_to_clean"].values, kl_all, rtol=1e-10)
    last = lens_kl_to_clean(lens, clean, last_token_only=True)
    np.testing.assert_allclose(last.values, kl_all[:, -1], rtol=1e-10)
    window = np.repeat([0, 1], [5, 6])
    per_window = lens_kl_to_clean(lens, clean, last_token_only=True, window=window)
    np.testing.assert_allclose(per_window.values, kl_all[:, [4, 10]].mean(1), rtol=1e-10)
    assert "each window" in per_window.attrs["kl_to_clean_tokens"]


def test_zero_probabilities_and_errors():
    lens, final, targets = data(4)
    final[:, 0] = -np.inf  # the final model never predicts token 0
    ds = lens_metrics(lens, final, targets)
    assert np.isfinite(ds["lens_kl"]).all()
    with pytest.raises(ValueError, match="one id per token"):
        lens_metrics(lens, final, targets[:-1])
    with pytest.raises(ValueError, match=r"\(layer, token, vocab\)"):
        lens_metrics(lens[0], final)
    with pytest.raises(ValueError, match="lens layer 0 has shape"):
        lens_metrics(lens[:, :-1], final)
