"""The study's statistics: block bootstrap, paired accuracy drops, random controls, resilience,
positional gradient; each checked against a direct computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from scipy import stats as sps

from probes.stats import (accuracy_drops, block_bootstrap_ratios, block_indices, block_resample,
                          bootstrap_ratios, check_same_protocol, paired_drops, positional_gradient,
                          random_matched_summary, ratio_intervals, ratio_to_baseline, resilience,
                          resilience_from_stores, thirds_gradient, trial_summary)

PROTOCOL = {"context": 512, "stride": 256, "prefix_token": "none", "prefix_id": None, "reference": "builtin:news",
            "reference_tokens": 50000, "reference_sha256": "ab", "reference_windows": 16, "reference_skip": 16,
            "batch_size": 8}


def direct_block_interval(diff, tokens, blocks, n_boot, level, seed):
    """The block bootstrap written out: draw blocks, concatenate their windows, take the ratio."""
    picks = np.random.default_rng(seed).integers(0, len(blocks), (n_boot, len(blocks)))
    logs = np.empty((diff.shape[0], n_boot))
    for b in range(n_boot):
        idx = np.concatenate([blocks[k] for k in picks[b]])
        logs[:, b] = diff[:, idx].sum(axis=1) / tokens[idx].sum()
    a = (1 - level) / 2
    return np.exp(np.quantile(logs, a, axis=1)), np.exp(np.quantile(logs, 1 - a, axis=1))


def windows(seed=0, n=45, n_pad=5, n_cond=3):
    rng = np.random.default_rng(seed)
    tokens = np.r_[np.full(n, 256), np.zeros(n_pad, int)]
    tokens[0] = 255
    base = rng.gamma(5.0, 100.0, size=n + n_pad)
    nll = base + np.arange(n_cond)[:, None] * 0.1 * tokens * (1 + rng.normal(size=(n_cond, n + n_pad)))
    nll[:, n:] = np.nan
    base[n:] = np.nan
    return nll, base, tokens


def test_block_indices_and_resampling_keep_blocks_contiguous():
    blocks = block_indices(50, 8)
    assert [len(b) for b in blocks] == [8] * 6 + [2]
    assert all((np.diff(b) == 1).all() for b in blocks)
    docs = block_indices(10, boundaries=[0, 3, 7])
    assert [b.tolist() for b in docs] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    rng = np.random.default_rng(1)
    for _ in range(20):
        idx = block_resample(blocks, rng)
        assert len(idx) in range(7 * 2, 7 * 8 + 1)
        k = 0
        while k < len(idx):  # every run starts at a block's start and covers that whole block
            b = blocks[idx[k] // 8]
            assert idx[k] == b[0] and idx[k:k + len(b)].tolist() == b.tolist()
            k += len(b)
    with pytest.raises(ValueError, match="boundaries"):
        block_indices(10, boundaries=[0, 12])
    with pytest.raises(ValueError, match="block"):
        block_indices(10, 0)


def test_block_bootstrap_matches_direct_numpy():
    nll, base, tokens = windows()
    ratio, low, high = block_bootstrap_ratios(nll, base, tokens, block=8, n_boot=300, level=0.9, seed=7)
    real = tokens > 0
    blocks = block_indices(int(real.sum()), 8)
    lo, hi = direct_block_interval(nll[:, real] - base[real], tokens[real].astype(float), blocks, 300, 0.9, 7)
    np.testing.assert_allclose(low, lo, rtol=1e-12)
    np.testing.assert_allclose(high, hi, rtol=1e-12)
    np.testing.assert_allclose(ratio, np.exp((nll[:, real] - base[real]).sum(1) / tokens.sum()), rtol=1e-12)
    assert ratio[0] == low[0] == high[0] == 1.0  # the baseline against itself
    # documents as blocks
    r2, l2, h2 = block_bootstrap_ratios(nll, base, tokens, boundaries=[0, 10, 30], n_boot=200, seed=2)
    docs = block_indices(45, boundaries=[0, 10, 30])
    lo, hi = direct_block_interval(nll[:, real] - base[real], tokens[real].astype(float), docs, 200, 0.95, 2)
    np.testing.assert_allclose(l2, lo, rtol=1e-12)
    np.testing.assert_allclose(h2, hi, rtol=1e-12)


def test_blocks_widen_intervals_when_windows_are_correlated():
    rng = np.random.default_rng(0)
    n = 160
    tokens = np.full(n, 256)
    base = rng.gamma(5.0, 100.0, n)
    drift = np.repeat(rng.normal(size=n // 16), 16) * 40  # the effect changes slowly along the text
    nll = np.stack([base, base + 20 + drift + rng.normal(size=n)])
    _, lw, hw = bootstrap_ratios(nll, base, tokens, n_boot=1000, seed=0)
    _, lb, hb = block_bootstrap_ratios(nll, base, tokens, block=16, n_boot=1000, seed=0)
    assert np.log(hb[1] / lb[1]) > 2 * np.log(hw[1] / lw[1])


def test_paired_drops_match_scipy_and_numpy():
    rng = np.random.default_rng(3)
    base = (rng.random(40) < 0.7).astype(float)
    cond = np.stack([base, (rng.random(40) < 0.4).astype(float), (rng.random(40) < 0.6).astype(float)])
    drop, low, high = paired_drops(base, cond, n_boot=500, level=0.95, seed=11)
    np.testing.assert_allclose(drop, base.mean() - cond.mean(1))
    for k in (1, 2):  # scipy directly, one condition at a time
        res = sps.bootstrap((base - cond[k],), np.mean, n_resamples=500, method="percentile",
                            confidence_level=0.95, rng=np.random.default_rng(11))
        assert (low[k], high[k]) == pytest.approx((res.confidence_interval.low, res.confidence_interval.high),
                                                  rel=1e-12)
    picks = np.random.default_rng(11).integers(0, 40, (500, 40))  # and by hand: the same items for both
    boots = np.array([(base[p] - cond[:, p]).mean(1) for p in picks]).T
    np.testing.assert_allclose(low, np.quantile(boots, 0.025, axis=1), rtol=1e-12)
    np.testing.assert_allclose(high, np.quantile(boots, 0.975, axis=1), rtol=1e-12)
    assert drop[0] == low[0] == high[0] == 0.0


def test_accuracy_drops_toy_example_by_hand():
    nan = np.nan
    correct = np.array([  # condition, task, item; task "b" has 3 items (one padding)
        [[1, 1, 1, 0], [1, 0, 1, nan]],   # baseline
        [[0, 1, 0, 0], [1, 0, 0, nan]],   # ablated
        [[1, 1, 1, 1], [nan, 0, 1, nan]],  # not computed on task b yet
    ])
    da = xr.DataArray(correct, dims=("condition", "task", "item"),
                      coords={"condition": ["baseline", "x", "y"], "task": ["a", "b"],
                              "label": ("condition", ["base", "X", "Y"])})
    out = accuracy_drops(da, n_boot=400, seed=0)
    assert out.acc_drop.sel(condition="x", task="a") == pytest.approx(0.5)  # 3/4 - 1/4
    assert out.acc_drop.sel(condition="x", task="b") == pytest.approx(1 / 3)  # 2/3 - 1/3
    assert out.acc_drop.sel(condition="y", task="a") == pytest.approx(-0.25)
    assert np.isnan(out.acc_drop.sel(condition="y", task="b"))
    assert (out.acc_drop.sel(condition="baseline") == 0).all()
    x = out.sel(condition="x", task="a")
    assert x.low <= x.acc_drop <= x.high and x.high > x.low
    assert list(out.label.values) == ["base", "X", "Y"]
    with pytest.raises(ValueError, match="no 'baseline'"):
        accuracy_drops(da.sel(condition=["x", "y"]))


def test_random_controls_as_distributions():
    s = trial_summary([1.0, 2.0, np.nan, 3.0, 4.0, 100.0], targeted=3.5)
    assert s["mean"] == pytest.approx(22.0) and s["median"] == 3.0 and s["frac_below"] == pytest.approx(3 / 5)
    assert "frac_below" not in trial_summary([1.0])
    ratio = xr.DataArray(
        np.array([[1.0], [5.0], [2.0], [4.0], [6.0], [9.0]]), dims=("condition", "corpus"),
        coords={"condition": ["baseline", "att", "r0", "r1", "r2", "r3"], "corpus": ["news"],
                "kind": ("condition", ["baseline", "group"] + ["random_matched"] * 4),
                "group": ("condition", ["", "group:attention"] + ["random:2ofattention+ssm"] * 4)})
    out = random_matched_summary(ratio, targeted={"random:2ofattention+ssm": "att"})
    g = out.sel(group="random:2ofattention+ssm", corpus="news")
    assert g["n"] == 4 and g["median"] == 5.0 and g["mean"] == pytest.approx(5.25)
    assert g["iqr"] == pytest.approx(np.quantile([2, 4, 6, 9], 0.75) - np.quantile([2, 4, 6, 9], 0.25))
    assert g["targeted"] == 5.0 and g["frac_below"] == 0.5 and g["min"] == 2.0 and g["max"] == 9.0
    with pytest.raises(ValueError, match="not random_matched groups"):
        random_matched_summary(ratio, targeted={"group:attention": "att"})


def test_resilience_from_medians_and_means():
    t = np.array([2.0, 4.0, 100.0, 6.0, 8.0])   # Transformer trials / its baseline
    h = np.array([1.5, 2.0, 3.0, 2.5, 50.0])    # hybrid trials / its baseline
    r = resilience(t, h, n_boot=400, seed=5)
    assert r.from_medians == pytest.approx(6.0 / 2.5)
    assert r.from_means == pytest.approx(24.0 / 11.8)
    rng = np.random.default_rng(5)  # unpaired: scipy draws each model's trials in turn
    it, ih = rng.integers(0, 5, (400, 5)), rng.integers(0, 5, (400, 5))
    boots = np.median(t[it], axis=1) / np.median(h[ih], axis=1)
    assert (r.medians_low, r.medians_high) == pytest.approx(tuple(np.quantile(boots, [0.025, 0.975])), rel=1e-12)
    p = resilience(t, h, paired=True, n_boot=400, seed=5)
    idx = np.random.default_rng(5).integers(0, 5, (400, 5))
    boots = np.mean(t[idx], axis=1) / np.mean(h[idx], axis=1)
    assert (p.means_low, p.means_high) == pytest.approx(tuple(np.quantile(boots, [0.025, 0.975])), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 trials"):
        resilience([2.0], h)


def store(model, ratios, protocol, seeds=None):
    n = len(ratios)
    seeds = list(range(n)) if seeds is None else seeds
    loss = np.log(np.r_[1.0, ratios])[:, None] + 2.0
    return xr.Dataset(
        {"loss": (("condition", "corpus"), loss)},
        coords={"condition": ["baseline"] + [f"r{k}" for k in range(n)], "corpus": ["wiki"],
                "kind": ("condition", ["baseline"] + ["random_matched"] * n),
                "group": ("condition", [""] + ["random:6oflayer"] * n),
                "draw_seed": ("condition", [-1] + seeds)},
        attrs={"model": model, "protocol": json.dumps(protocol)})


def test_protocol_mismatch_refused():
    t = store("qwen2.5", [2.0, 4.0, 100.0, 6.0], PROTOCOL)
    h = store("qwen3.5", [1.5, 2.0, 3.0, 2.5], {**PROTOCOL, "prefix_id": 7, "batch_size": 2,
                                                "reference_tokens": 48000})
    r = resilience_from_stores(t, h, "wiki", n_boot=200)  # token ids, counts and batch size may differ
    assert r.paired and r.from_medians == pytest.approx(5.0 / 2.25)
    check_same_protocol(t, h)
    other = store("qwen3.5", [1.5, 2.0, 3.0, 2.5], {**PROTOCOL, "context": 2048})
    with pytest.raises(ValueError, match="different protocols.*context: 512 vs 2048"):
        resilience_from_stores(t, other, "wiki")
    with pytest.raises(ValueError, match="'protocol' attribute"):
        check_same_protocol(t, other.drop_attrs())
    shuffled = store("qwen3.5", [1.5, 2.0, 3.0, 2.5], PROTOCOL, seeds=[10, 11, 12, 13])
    assert not resilience_from_stores(t, shuffled, "wiki", n_boot=100).paired


def test_positional_gradient_by_hand_and_direct_bootstrap():
    nll, base, tokens = windows(seed=4, n=40, n_pad=0)
    early, late = base + 0.5 * tokens, base + 0.1 * tokens + np.random.default_rng(0).normal(size=40) * 5
    g = positional_gradient(early, late, base, tokens, block=8, n_boot=300, seed=9)
    assert g["gradient"] == pytest.approx((early - base).sum() / (late - base).sum())
    assert g["log_difference"] == pytest.approx((early - late).sum() / tokens.sum())
    assert g["ratio_early"] == pytest.approx(np.exp((early - base).sum() / tokens.sum()))
    blocks = block_indices(40, 8)
    picks = np.random.default_rng(9).integers(0, 5, (300, 5))
    boots = []
    for p in picks:
        idx = np.concatenate([blocks[k] for k in p])
        boots.append((early - base)[idx].sum() / (late - base)[idx].sum())
    assert (g["gradient_low"], g["gradient_high"]) == pytest.approx(tuple(np.quantile(boots, [0.025, 0.975])),
                                                                    rel=1e-12)
    assert g["gradient_low"] < 5 < g["gradient_high"]

    ds = xr.Dataset(
        {"window_nll": (("condition", "corpus", "window"), np.stack([base, early, (early + late) / 2, late])[:, None]),
         "window_tokens": (("corpus", "window"), tokens[None])},
        coords={"condition": ["baseline", "e", "m", "l"], "corpus": ["news"],
                "group": ("condition", ["", "thirds:ssm", "thirds:ssm", "thirds:ssm"])})
    assert thirds_gradient(ds, "ssm", "news", n_boot=300, seed=9) == g
    with pytest.raises(ValueError, match="expected 3"):
        thirds_gradient(ds, "attention", "news")


def test_store_intervals_use_blocks_by_default():
    nll, base, tokens = windows(seed=1, n=48, n_pad=0)
    ds = xr.Dataset({"window_nll": (("condition", "corpus", "window"), nll[:, None]),
                     "window_tokens": (("corpus", "window"), tokens[None]),
                     "loss": (("condition", "corpus"), (nll.sum(1) / tokens.sum())[:, None])},
                    coords={"condition": ["baseline", "a", "b"], "corpus": ["news"]})
    out = ratio_intervals(ds, n_boot=200, seed=3)
    _, lo, hi = block_bootstrap_ratios(nll, nll[0], tokens, block=8, n_boot=200, seed=3)
    np.testing.assert_array_equal(out.low.values[:, 0], lo)
    np.testing.assert_array_equal(out.high.values[:, 0], hi)
    assert "block" in out.attrs["method"] and out.attrs["block"] == 8
    old = ratio_intervals(ds, n_boot=200, seed=3, block=None)
    np.testing.assert_array_equal(old.low.values[:, 0], bootstrap_ratios(nll, nll[0], tokens, n_boot=200, seed=3)[1])
    np.testing.assert_allclose(out.ratio.values, ratio_to_baseline(ds).values, rtol=1e-12)
