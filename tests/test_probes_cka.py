"""Linear CKA against a direct formula and its known invariances."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from probes.cka import cka_by_layer, linear_cka, linear_cka_debiased


def direct_cka(x, y):
    """||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) after centring, as written in Kornblith et al."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(y.T @ x, "fro") ** 2 / (np.linalg.norm(x.T @ x, "fro") * np.linalg.norm(y.T @ y, "fro"))


def gram_debiased_cka(x, y):
    """Song et al.'s unbiased HSIC on n x n Gram matrices (the textbook form)."""
    def hsic(k, l):
        n = k.shape[0]
        k, l = k.copy(), l.copy()
        np.fill_diagonal(k, 0)
        np.fill_diagonal(l, 0)
        one = np.ones(n)
        return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))
    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def pair(seed, n=40, d1=6, d2=9, noise=1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d1))
    y = x @ rng.normal(size=(d1, d2)) + noise * rng.normal(size=(n, d2)) + 2.0
    return x, y


def orthogonal(d, seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("seed", range(3))
def test_matches_direct_formulas(seed):
    x, y = pair(seed)
    assert linear_cka(x, y) == pytest.approx(direct_cka(x, y), rel=1e-12)
    assert linear_cka_debiased(x, y) == pytest.approx(gram_debiased_cka(x, y), rel=1e-10)


def test_float64_even_for_float16_input():
    x, y = pair(0)
    x16, y16 = x.astype(np.float16), y.astype(np.float16)
    ref = direct_cka(x16.astype(np.float64), y16.astype(np.float64))
    assert linear_cka(x16, y16) == pytest.approx(ref, rel=1e-12)


def test_identical_and_unrelated():
    x, _ = pair(1)
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka_debiased(x, x) == pytest.approx(1.0)
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(4000, 5)), rng.normal(size=(4000, 5))
    assert linear_cka_debiased(a, b) == pytest.approx(0.0, abs=0.01)


def test_debiased_close_to_biased_for_many_samples():
    x, y = pair(2, n=20000, d1=4, d2=4)
    assert linear_cka_debiased(x, y) == pytest.approx(linear_cka(x, y), abs=2e-3)


def test_debiased_removes_few_sample_bias():
    """Independent wide activations on few tokens: biased CKA is far from 0, debiased is not."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(30, 200)), rng.normal(size=(30, 200))
    assert linear_cka(a, b) > 0.5
    assert abs(linear_cka_debiased(a, b)) < 0.1


def test_degenerate_inputs():
    x, _ = pair(0)
    assert np.isnan(linear_cka(x, np.ones((40, 3))))
    assert np.isnan(linear_cka_debiased(x, np.ones((40, 3))))
    with pytest.raises(ValueError, match="same number of samples"):
        linear_cka(x, x[:-1])
    with pytest.raises(ValueError, match="at least 4 samples"):
        linear_cka_debiased(x[:3], x[:3])
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(x[0], x[0])


matrices = st.tuples(st.integers(0, 2**32 - 1), st.integers(6, 30), st.integers(1, 8), st.integers(1, 8))


@settings(max_examples=30, deadline=None)
@given(matrices, st.floats(1e-3, 1e3), st.sampled_from([linear_cka, linear_cka_debiased]))
def test_invariances(params, scale, fn):
    seed, n, d1, d2 = params
    x, y = pair(seed, n, d1, d2)
    value = fn(x, y)
    assert fn(x @ orthogonal(d1, seed + 1), y) == pytest.approx(value, abs=1e-9)
    assert fn(x, y @ orthogonal(d2, seed + 2)) == pytest.approx(value, abs=1e-9)
    assert fn(scale * x, y) == pytest.approx(value, abs=1e-9)
    assert fn(x, y / scale) == pytest.approx(value, abs=1e-9)
    assert fn(y, x) == pytest.approx(value, abs=1e-12)
    assert fn(x @ orthogonal(d1, seed + 3), x) == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(matrices, st.floats(0.0, 10.0))
def test_bounds(params, noise):
    seed, n, d1, d2 = params
    x, y = pair(seed, n, d1, d2, noise)
    assert -1e-12 <= linear_cka(x, y) <= 1 + 1e-12
    assert -1 - 1e-9 <= linear_cka_debiased(x, y) <= 1 + 1e-9


def test_cka_by_layer_labels_and_broadcast():
    rng = np.random.default_rng(0)
    base = xr.DataArray(rng.normal(size=(3, 50, 8)), dims=("layer", "token", "d_model"),
                        coords={"layer": [0, 1, 2]})
    scale = xr.DataArray([0.0, 0.5, 5.0], dims="noise", coords={"noise": ["none", "some", "lots"]})
    noise = xr.DataArray(rng.normal(size=(3, 3, 50, 8)), dims=("noise", "layer", "token", "d_model"))
    noisy = (base + scale * noise).transpose("noise", "layer", "token", "d_model")
    out = cka_by_layer(noisy, base)
    assert out.dims == ("noise", "layer") and out.name == "cka"
    assert list(out.layer.values) == [0, 1, 2]
    np.testing.assert_allclose(out.sel(noise="none").values, 1.0)
    assert (out.sel(noise="some") > out.sel(noise="lots")).all()
    for layer in range(3):
        assert float(out.sel(noise="lots", layer=layer)) == pytest.approx(
            linear_cka(noisy.sel(noise="lots", layer=layer).values, base.sel(layer=layer).values))
    deb = cka_by_layer(noisy, base, debiased=True)
    assert "debiased" in deb.attrs["estimator"]


def test_cka_by_layer_different_widths_and_shared_layers():
    rng = np.random.default_rng(1)
    a = xr.DataArray(rng.normal(size=(4, 30, 6)), dims=("layer", "token", "d_model"), coords={"layer": [0, 1, 2, 3]})
    b = xr.DataArray(rng.normal(size=(2, 30, 11)), dims=("layer", "token", "d_model"), coords={"layer": [1, 3]})
    out = cka_by_layer(a, b)
    assert list(out.layer.values) == [1, 3]
    assert float(out.sel(layer=3)) == pytest.approx(linear_cka(a.sel(layer=3).values, b.sel(layer=3).values))
    with pytest.raises(ValueError, match="same number of samples"):
        cka_by_layer(a, b.isel(token=slice(0, 10)))
    with pytest.raises(ValueError, match="needs dims"):
        cka_by_layer(a.isel(layer=0), b)


def test_cka_to_clean_over_conditions():
    from probes.cka import cka_to_clean

    rng = np.random.default_rng(4)
    clean = rng.normal(size=(3, 40, 8))
    runs = {"baseline": clean, "rotated": clean @ orthogonal(8, 1), "noise": rng.normal(size=(3, 40, 8))}
    ds = cka_to_clean(runs)
    assert ds["cka_linear"].dims == ("condition", "layer") and ds["cka_debiased"].dims == ("condition", "layer")
    assert list(ds.condition.values) == ["baseline", "rotated", "noise"]
    np.testing.assert_allclose(ds["cka_linear"].sel(condition=["baseline", "rotated"]), 1.0)
    np.testing.assert_allclose(ds["cka_debiased"].sel(condition="rotated"), 1.0)
    for layer in range(3):
        assert float(ds["cka_debiased"].sel(condition="noise", layer=layer)) == pytest.approx(
            linear_cka_debiased(runs["noise"][layer], clean[layer]))
    stacked = xr.DataArray(np.stack(list(runs.values())), dims=("condition", "layer", "token", "d_model"),
                           coords={"condition": list(runs), "layer": [2, 5, 9]})
    other = cka_to_clean(stacked)
    assert list(other.layer.values) == [2, 5, 9]
    np.testing.assert_allclose(other["cka_linear"].values, ds["cka_linear"].values)
    with pytest.raises(ValueError, match="no 'baseline' condition"):
        cka_to_clean({"noise": clean})


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_matches_pairwise(debiased):
    from probes.cka import cka_matrix

    rng = np.random.default_rng(6)
    a = rng.normal(size=(3, 30, 7))
    a[1] = a[0] @ rng.normal(size=(7, 7)) + 0.3 * rng.normal(size=(30, 7))
    b = rng.normal(size=(2, 30, 11))
    fn = linear_cka_debiased if debiased else linear_cka
    m = cka_matrix(a, b, debiased=debiased)
    assert m.dims == ("layer_a", "layer_b") and m.shape == (3, 2) and m.name == "cka"
    for i in range(3):
        for j in range(2):
            assert float(m[i, j]) == pytest.approx(fn(a[i], b[j]), rel=1e-9, abs=1e-12)
    self_m = cka_matrix(a, debiased=debiased)
    np.testing.assert_allclose(np.diag(self_m), 1.0)
    np.testing.assert_allclose(self_m.values, self_m.values.T, atol=1e-12)
    assert float(self_m[0, 1]) == pytest.approx(fn(a[0], a[1]), rel=1e-9)
    a[2] = 0.0  # a layer without variance: NaN, not a crash
    assert np.isnan(cka_matrix(a, debiased=debiased)[2, 0])
