"""A shared 2-D map of token representations from several conditions at one layer.

The map is fitted once on the stacked points of all conditions, so a clean point and its
ablated counterpart live in the same coordinates and can be compared directly. Methods:
``pca`` (scikit-learn, centred, no scaling) and ``umap`` (umap-learn; n_neighbors, min_dist
and random_state fixed; with a seed it runs single-threaded, which keeps it deterministic).
At most ``max_points`` points are embedded: one seeded subsample of token positions shared
by every condition, so pairs stay paired.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr
from sklearn.decomposition import PCA

from ._arrays import as_float64, by_condition

METHODS = ("pca", "umap")


def _fit(x: np.ndarray, method: str, seed: int, n_neighbors: int, min_dist: float) -> tuple[np.ndarray, dict]:
    if method == "pca":
        pca = PCA(n_components=2, random_state=seed).fit(x)
        return pca.transform(x), {"explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_]}
    with warnings.catch_warnings():  # umap announces that its TensorFlow extra is absent
        warnings.simplefilter("ignore", ImportWarning)
        import umap  # heavy import (numba): only when asked for

    k = max(2, min(n_neighbors, x.shape[0] - 1))
    reducer = umap.UMAP(n_components=2, n_neighbors=k, min_dist=min_dist, random_state=seed, n_jobs=1)
    return reducer.fit_transform(x), {"n_neighbors": k, "min_dist": min_dist}


def shared_map(points, method: str = "pca", *, max_points: int = 5_000, seed: int = 0,
               n_neighbors: int = 15, min_dist: float = 0.1) -> xr.Dataset:
    """``map_xy(condition, token, axis)`` from ``points``: a mapping condition -> (token, d) or
    a DataArray (condition, token, d), the same tokens in every condition."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    runs = by_condition(points, "points")
    arrays = {k: as_float64(v, f"points[{k!r}]", 2) for k, v in runs.items()}
    shapes = {v.shape for v in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"every condition needs the same (token, d) shape, got {sorted(shapes)}")
    n_tok = next(iter(shapes))[0]
    per = max(1, max_points // len(arrays))
    keep = np.arange(n_tok)
    if n_tok > per:
        keep = np.sort(np.random.default_rng(seed).choice(n_tok, size=per, replace=False))
    stacked = np.concatenate([v[keep] for v in arrays.values()])
    if stacked.shape[0] < 3:
        raise ValueError(f"a map needs at least 3 points, got {stacked.shape[0]}")
    xy, info = _fit(stacked, method, seed, n_neighbors, min_dist)
    xy = np.asarray(xy, dtype=np.float64).reshape(len(arrays), keep.size, 2)
    return xr.Dataset({"map_xy": (("condition", "token", "axis"), xy)},
                      coords={"condition": list(arrays), "token": keep, "axis": ["x", "y"]},
                      attrs={"method": method, "seed": seed, "fitted_on": "all conditions stacked", **info})
