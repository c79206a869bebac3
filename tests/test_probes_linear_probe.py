"""Linear probes: planted labels, control tasks, the split by window, transfer."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from probes.linear_probe import LinearProbe, control_labels, probe_layers, transfer


def setup(seed=0, layers=2, windows=20, per_window=30, d=8, vocab=50):
    rng = np.random.default_rng(seed)
    n = windows * per_window
    acts = rng.normal(size=(layers, n, d))
    groups = np.repeat(np.arange(windows), per_window)
    ids = rng.integers(0, vocab, size=n)
    return rng, acts, groups, ids


def test_linear_probe_is_an_estimator():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    y = np.argmax(X[:, :3], axis=1)
    probe = LinearProbe(seed=1).fit(X, y)
    assert probe.score(X, y) > 0.95
    assert list(probe.classes_) == [0, 1, 2]
    assert probe.predict_proba(X).shape == (300, 3)
    assert probe.get_params()["seed"] == 1
    with pytest.raises(ValueError, match="at least 2 classes"):
        LinearProbe().fit(X, np.zeros(300))


def test_control_labels():
    ids = np.array([5, 3, 5, 9, 3, 5, 9, 1] * 50)
    labels = np.array([0, 1, 2, 1, 1, 0, 2, -1] * 50)
    ctl = control_labels(ids, labels, seed=3)
    for t in np.unique(ids[labels >= 0]):
        assert len(set(ctl[(ids == t) & (labels >= 0)])) == 1  # fixed per type
    assert (ctl[labels < 0] == -1).all()
    assert set(ctl[labels >= 0]) <= {0, 1, 2}
    np.testing.assert_array_equal(ctl, control_labels(ids, labels, seed=3))
    # many types: the control labels follow the empirical distribution (here 80% / 20%)
    many = np.arange(5000)
    y = (np.arange(5000) % 5 == 0).astype(int)
    assert control_labels(many, y, seed=0).mean() == pytest.approx(0.2, abs=0.03)


def test_planted_label_and_random_label():
    rng, acts, groups, ids = setup()
    planted = np.argmax(acts[1, :, :3], axis=1)  # linearly readable at layer 1 only
    random = rng.integers(0, 3, size=acts.shape[1])
    labels = xr.Dataset({"planted": ("token", planted), "random": ("token", random)})
    ds = probe_layers(acts, labels, groups, token_ids=ids)
    assert ds["probe_acc"].dims == ("layer", "probe")
    assert float(ds["probe_acc"].sel(layer=1, probe="planted")) > 0.95
    assert float(ds["probe_acc"].sel(layer=0, probe="planted")) < 0.6
    assert float(ds["probe_selectivity"].sel(layer=1, probe="planted")) > 0.5
    assert abs(float(ds["probe_selectivity"].sel(layer=1, probe="random"))) < 0.12
    np.testing.assert_allclose(ds["probe_selectivity"], ds["probe_acc"] - ds["probe_control_acc"])


def test_split_is_by_window_and_capped():
    _, acts, groups, ids = setup(1)
    y = np.argmax(acts[0, :, :2], axis=1)
    ds, fitted = probe_layers(acts, {"y": y}, groups, token_ids=ids, max_tokens=400, seed=2, return_probes=True)
    assert not set(groups[fitted.train]) & set(groups[fitted.test])
    assert len(fitted.train) + len(fitted.test) == 400 == ds.attrs["tokens_used"]
    assert len(set(fitted.train) | set(fitted.test)) == 400


def test_unlabelled_tokens_are_left_out_and_transfer():
    _, acts, groups, ids = setup(2)
    y = np.argmax(acts[0, :, :2], axis=1)
    y[::7] = -1
    ds, fitted = probe_layers(acts, {"y": y}, groups, token_ids=ids, return_probes=True)
    runs = {"baseline": acts, "noisy": acts + 3.0 * np.random.default_rng(9).normal(size=acts.shape)}
    tr = transfer(fitted, runs, {"y": y})
    assert tr["probe_transfer_acc"].dims == ("condition", "layer", "probe")
    np.testing.assert_allclose(tr["probe_transfer_acc"].sel(condition="baseline"), ds["probe_acc"])
    assert float(tr["probe_transfer_acc"].sel(condition="noisy", layer=0, probe="y")) < \
        float(ds["probe_acc"].sel(layer=0, probe="y")) - 0.2


def test_errors():
    _, acts, groups, ids = setup(3)
    y = np.zeros(acts.shape[1], dtype=int)
    with pytest.raises(ValueError, match="one entry per token"):
        probe_layers(acts, {"y": y[:-1]}, groups, token_ids=ids)
    with pytest.raises(ValueError, match="at least 2 distinct windows"):
        probe_layers(acts, {"y": y}, np.zeros_like(groups), token_ids=ids)
    ds = probe_layers(acts, {"y": y}, groups, token_ids=ids)  # one class only: NaN, not a crash
    assert np.isnan(ds["probe_acc"]).all()
