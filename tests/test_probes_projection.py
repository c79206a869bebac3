"""Shared PCA / UMAP maps: known low-rank data, one fit for all conditions, determinism."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from probes.projection import shared_map


def low_rank(seed=0, n=200, d=10):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2)) * [5.0, 1.0]  # two directions, the first dominant
    basis, _ = np.linalg.qr(rng.normal(size=(d, 2)))
    return z, z @ basis.T + 3.0


def test_pca_recovers_low_rank_coordinates():
    z, x = low_rank()
    ds = shared_map({"baseline": x}, "pca")
    xy = ds["map_xy"].sel(condition="baseline").values
    zc = z - z.mean(0)
    # rank-2 data: the PCA coordinates are the centred latents, rotated (an exact isometry)
    rot, *_ = np.linalg.lstsq(zc, xy, rcond=None)
    np.testing.assert_allclose(zc @ rot, xy, atol=1e-9)
    np.testing.assert_allclose(rot.T @ rot, np.eye(2), atol=1e-9)
    # axes ordered by variance: the eigenvalues of the latents' covariance
    np.testing.assert_allclose(xy.var(0, ddof=1), np.linalg.eigvalsh(np.cov(zc.T))[::-1], rtol=1e-9)
    assert sum(ds.attrs["explained_variance_ratio"]) == pytest.approx(1.0)
    assert ds.attrs["method"] == "pca" and ds["map_xy"].dims == ("condition", "token", "axis")


def test_shared_fit_and_cap():
    _, x = low_rank(1)
    moved = x.copy()
    moved[100:] += 4.0  # the ablation moves half of the tokens
    ds = shared_map(xr.DataArray(np.stack([x, moved]), dims=("condition", "token", "d"),
                                 coords={"condition": ["baseline", "ablated"]}), "pca")
    a, b = ds["map_xy"].sel(condition="baseline").values, ds["map_xy"].sel(condition="ablated").values
    np.testing.assert_allclose(a[:100], b[:100], atol=1e-9)  # the same point, the same coordinate
    assert np.linalg.norm(a[100:] - b[100:], axis=1).min() > 1.0
    capped = shared_map({"baseline": x, "ablated": moved}, "pca", max_points=50, seed=3)
    assert capped.sizes["token"] == 25
    assert len(set(capped.token.values)) == 25 and capped.token.values.max() < 200
    np.testing.assert_array_equal(capped.token, shared_map({"baseline": x, "ablated": moved}, "pca",
                                                           max_points=50, seed=3).token)


def test_errors():
    _, x = low_rank()
    with pytest.raises(ValueError, match="unknown method"):
        shared_map({"a": x}, "tsne")
    with pytest.raises(ValueError, match="same \\(token, d\\) shape"):
        shared_map({"a": x, "b": x[:-1]})


@pytest.mark.slow  # umap's numba JIT takes ~10 s on first use in a process
def test_umap_deterministic_and_warning_free():
    _, x = low_rank(2, n=60)
    pts = {"baseline": x, "ablated": x + 0.1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = shared_map(pts, "umap", n_neighbors=10, seed=0)
    second = shared_map(pts, "umap", n_neighbors=10, seed=0)
    np.testing.assert_array_equal(first["map_xy"].values, second["map_xy"].values)
    assert first.attrs["method"] == "umap" and np.isfinite(first["map_xy"]).all()
