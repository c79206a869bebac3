"""Bootstrap intervals of perplexity ratios and random-control summaries."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from probes.stats import (bootstrap_ratio, bootstrap_ratios, random_matched_summary, ratio_intervals,
                          ratio_to_baseline, trial_summary)
from workbench.summary import summary_frame


def fake_store(seed=0, n_windows=(40, 25)):
    """A store-shaped dataset: baseline, two groups, three random trials; padded windows."""
    rng = np.random.default_rng(seed)
    n_w = max(n_windows)
    tokens = np.zeros((len(n_windows), n_w), dtype=np.int64)
    for j, n in enumerate(n_windows):
        tokens[j, :n] = 64
        tokens[j, 0] = 63
    base = rng.gamma(5.0, 20.0, size=tokens.shape) * (tokens > 0)
    shifts = [0.0, 0.05, 0.3, 0.1, 0.2, 0.15]
    nll = np.stack([base + s * tokens * (1 + 0.5 * rng.normal(size=tokens.shape)) for s in shifts])
    nll[0] = base
    nll[:, tokens == 0] = np.nan
    loss = np.nansum(nll, axis=2) / tokens.sum(1)
    kinds = ["baseline", "group", "group", "random_matched", "random_matched", "random_matched"]
    groups = ["", "group:attention", "group:ssm"] + ["random:2ofattention+ssm"] * 3
    cond = ["baseline", "a", "s", "r0", "r1", "r2"]
    n_c = len(cond)
    return xr.Dataset(
        {"loss": (("condition", "corpus"), loss), "perplexity": (("condition", "corpus"), np.exp(loss)),
         "bits_per_byte": (("condition", "corpus"), loss), "window_nll": (("condition", "corpus", "window"), nll),
         "window_tokens": (("corpus", "window"), tokens), "qc_fired": ("condition", np.ones(n_c, bool)),
         "qc_changed": (("condition", "corpus"), np.ones((n_c, 2), np.int8)),
         "complete": ("condition", np.ones(n_c, bool))},
        coords={"condition": cond, "corpus": ["news", "books"], "kind": ("condition", kinds),
                "group": ("condition", groups), "label": ("condition", cond), "mode": ("condition", ["zero"] * n_c),
                "roles": ("condition", [""] * n_c), "layers": ("condition", [""] * n_c),
                "draw_seed": ("condition", [-1, -1, -1, 0, 1, 2]),
                "donor_seed": ("condition", [-1] * n_c)})


def test_baseline_against_itself_is_exactly_one():
    ds = fake_store()
    nll, tok = ds.window_nll.sel(condition="baseline", corpus="news").values, ds.window_tokens[0].values
    r = bootstrap_ratio(nll, nll, tok, n_boot=500)
    assert (r.ratio, r.low, r.high) == (1.0, 1.0, 1.0)
    out = ratio_intervals(ds, n_boot=300)
    for v in ("ratio", "low", "high"):
        assert (out[v].sel(condition="baseline").values == 1.0).all()


def test_point_estimate_is_the_store_ratio():
    ds = fake_store()
    out = ratio_intervals(ds, n_boot=200)
    frame = summary_frame(ds)
    for corpus in ("news", "books"):
        np.testing.assert_allclose(out.ratio.sel(corpus=corpus).values, frame[f"ratio:{corpus}"].values, rtol=1e-12)
    np.testing.assert_allclose(ratio_to_baseline(ds).values, out.ratio.values, rtol=1e-12)


def test_interval_brackets_point_and_is_deterministic():
    ds = fake_store()
    a, b = ratio_intervals(ds, seed=3, n_boot=400), ratio_intervals(ds, seed=3, n_boot=400)
    for v in ("ratio", "low", "high"):
        np.testing.assert_array_equal(a[v].values, b[v].values)
    assert (a.low <= a.ratio).all() and (a.ratio <= a.high).all()
    assert (a.high.isel(condition=slice(1, None)) > a.low.isel(condition=slice(1, None))).all()
    c = ratio_intervals(ds, seed=4, n_boot=400)
    assert not np.array_equal(a.low.values, c.low.values)
    wider = ratio_intervals(ds, seed=3, n_boot=400, level=0.99)
    assert (wider.high >= a.high).all() and (wider.low <= a.low).all()


def test_padding_ignored_and_pending_conditions_nan():
    ds = fake_store()
    nll = ds.window_nll.sel(corpus="books").values  # 25 real windows, 15 padding (NaN nll, 0 tokens)
    tok = ds.window_tokens.sel(corpus="books").values
    full = bootstrap_ratios(nll, nll[0], tok, n_boot=100)
    trimmed = bootstrap_ratios(nll[:, :25], nll[0, :25], tok[:25], n_boot=100)
    for f, t in zip(full, trimmed):
        np.testing.assert_array_equal(f, t)
    nll = nll.copy()
    nll[2, 3] = np.nan  # a condition not computed yet
    point, low, high = bootstrap_ratios(nll, nll[0], tok, n_boot=100)
    assert np.isnan([point[2], low[2], high[2]]).all() and np.isfinite(point[1])


def test_overflow_reported_as_inf():
    tok = np.full(5, 10)
    nll_b = np.full(5, 10.0)
    r = bootstrap_ratio(nll_b + 1e5, nll_b, tok, n_boot=50)
    assert r.ratio == np.inf and r.low == np.inf


def test_bad_arguments():
    ds = fake_store()
    with pytest.raises(ValueError, match="level"):
        ratio_intervals(ds, level=95)
    with pytest.raises(ValueError, match="no baseline"):
        ratio_intervals(ds.drop_sel(condition="baseline"))


def test_trial_summaries():
    s = trial_summary([1.0, 2.0, np.nan, 3.0, 4.0, 100.0])
    assert s["n"] == 5 and s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 100.0
    assert s["q25"] == 2.0 and s["q75"] == 4.0 and s["iqr"] == 2.0
    assert trial_summary([np.nan])["n"] == 0

    ds = fake_store()
    ratio = ratio_to_baseline(ds)
    out = random_matched_summary(ratio)
    assert list(out.group.values) == ["random:2ofattention+ssm"]
    trials = ratio.sel(condition=["r0", "r1", "r2"]).values
    np.testing.assert_allclose(out["median"].values[0], np.median(trials, axis=0))
    np.testing.assert_allclose(out["min"].values[0], trials.min(0))
    assert (out["n"].values == 3).all()
    assert random_matched_summary(ratio.sel(condition=["baseline", "a"])).sizes["group"] == 0


def test_auto_blocks_follow_the_reports_rule():
    from probes.stats import block_bootstrap_ratios, block_size

    assert [block_size(n) for n in (1, 9, 19, 40, 79, 80, 500)] == [1, 1, 1, 4, 7, 8, 8]
    ds = fake_store(n_windows=(40, 12))
    out = ratio_intervals(ds, n_boot=300, block="auto")
    for j, (corpus, n) in enumerate((("news", 40), ("books", 12))):
        want = block_bootstrap_ratios(ds.window_nll.isel(corpus=j).values, ds.window_nll.isel(corpus=j).values[0],
                                      ds.window_tokens[j].values, block=block_size(n), n_boot=300)
        np.testing.assert_allclose(out.low.sel(corpus=corpus).values, want[1])
    assert not np.isnan(out.low.sel(corpus="books").values).any()  # 12 windows: blocks of 8 gave none
    with pytest.raises(ValueError, match="'auto'"):
        ratio_intervals(ds, block="big")


def test_accuracy_intervals_and_paired_ratio():
    from probes.stats import accuracy_intervals, block_bootstrap_ratios, paired_ratio

    rng = np.random.default_rng(1)
    correct = rng.integers(0, 2, (3, 2, 30)).astype(float)
    correct[:, 1, 20:] = np.nan  # task 1 has 20 items
    da = xr.DataArray(correct, dims=("condition", "task", "item"), coords={"condition": ["baseline", "a", "b"]})
    out = accuracy_intervals(da, n_boot=400, seed=3)
    np.testing.assert_allclose(out.accuracy.values, np.nanmean(correct, axis=2))
    # the same item draws for every condition: scipy's scheme on the 20 real items of task 1
    idx = np.random.default_rng(3).integers(0, 20, (400, 20))
    boots = correct[:, 1, :20][:, idx].mean(axis=2)
    np.testing.assert_allclose(out.low.isel(task=1).values, np.percentile(boots, 2.5, axis=1), atol=1e-12)
    ds = fake_store()
    nll, tok = ds.window_nll.isel(corpus=0).values, ds.window_tokens[0].values
    r = paired_ratio(nll[2], nll[1], tok, n_boot=300)
    want = block_bootstrap_ratios(nll[2][None], nll[1], tok, block=4, n_boot=300)
    assert (r.ratio, r.low, r.high) == pytest.approx(tuple(float(w[0]) for w in want))
