"""Linear centered kernel alignment (CKA) between two sets of activations.

Both estimators work in feature space (d x d products, never the n x n Gram matrix), in
float64: low precision and few tokens are where CKA goes wrong.

- ``linear_cka``: the standard estimator (biased HSIC; Kornblith et al. 2019),
  ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred X and Y. In [0, 1].
- ``linear_cka_debiased``: HSIC replaced by the unbiased estimator of Song et al. (2012), as
  used by Nguyen et al. (2021). Biased CKA drifts towards 1 when samples are few relative to
  features; the debiased one does not. It lies in [-1, 1] and can be slightly negative.
"""

from __future__ import annotations

import numpy as np
import xarray as xr


def _as_matrix(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {x.shape}")
    return x


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same number of samples, got {x.shape[0]} and {y.shape[0]}")
    return x, y


def _ratio(num: float, den: float) -> float:
    """num / den, NaN when a side has no variance (CKA is undefined there, not 0 or 1)."""
    return float(num / den) if den > 0 else float("nan")


def linear_cka(x, y) -> float:
    """Standard linear CKA of x (n, d1) and y (n, d2)."""
    x, y = _pair(x, y)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return _ratio(cross, den)


def _hsic_unbiased_terms(x: np.ndarray, y: np.ndarray) -> float:
    """Song et al.'s unbiased HSIC (times n(n-3)) for linear kernels K = XX^T, L = YY^T.

    With K~, L~ the Gram matrices with zeroed diagonals:
        tr(K~ L~) + (1'K~1)(1'L~1) / ((n-1)(n-2)) - 2/(n-2) * 1'K~L~1
    each term written with d x d products so no n x n matrix is formed.
    """
    n = x.shape[0]
    kd = np.einsum("ij,ij->i", x, x)  # diag(K)
    ld = np.einsum("ij,ij->i", y, y)
    tr_kl = np.linalg.norm(y.T @ x) ** 2 - kd @ ld  # tr(K L) minus the diagonal's share
    k_row = x @ x.sum(axis=0) - kd  # K~ 1
    l_row = y @ y.sum(axis=0) - ld  # L~ 1
    k_sum, l_sum = k_row.sum(), l_row.sum()
    return tr_kl + k_sum * l_sum / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (k_row @ l_row)


def linear_cka_debiased(x, y) -> float:
    """Debiased linear CKA of x (n, d1) and y (n, d2); needs n >= 4."""
    x, y = _pair(x, y)
    if x.shape[0] < 4:
        raise ValueError(f"debiased CKA needs at least 4 samples, got {x.shape[0]}")
    # Centring does not change the unbiased HSIC; it keeps the sums small and accurate.
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    xy = _hsic_unbiased_terms(x, y)
    xx = _hsic_unbiased_terms(x, x)
    yy = _hsic_unbiased_terms(y, y)
    if xx <= 0 or yy <= 0:
        return float("nan")
    return float(xy / np.sqrt(xx * yy))


def _feature_dim(da: xr.DataArray, dim: str) -> str:
    rest = [d for d in da.dims if d not in (dim, "layer")]
    if not rest:
        raise ValueError(f"{da.name or 'array'} has no feature dim besides {dim!r} and 'layer': {da.dims}")
    return rest[-1]  # activations are laid out (..., layer, token, d_model)


def cka_by_layer(a: xr.DataArray, b: xr.DataArray, dim: str = "token", *, debiased: bool = False) -> xr.DataArray:
    """CKA between ``a`` and ``b`` at each shared ``layer``, with samples along ``dim``.

    Each array's feature dim is its last dim other than ``dim`` and ``layer``. Other dims
    (e.g. ``condition``) broadcast, so hidden(condition, layer, token, d_model) against the
    baseline's hidden(layer, token, d_model) gives cka(condition, layer).
    """
    for name, da in (("a", a), ("b", b)):
        if "layer" not in da.dims or dim not in da.dims:
            raise ValueError(f"{name} needs dims 'layer' and {dim!r}, has {da.dims}")
    if a.sizes[dim] != b.sizes[dim]:
        raise ValueError(f"a and b need the same number of samples along {dim!r}: "
                         f"{a.sizes[dim]} != {b.sizes[dim]}")
    fa, fb = _feature_dim(a, dim), _feature_dim(b, dim)
    if fb == fa:  # the same name may hold different widths; keep them apart
        b = b.rename({fb: f"{fb}__b"})
        fb = f"{fb}__b"
    a, b = xr.align(a, b, join="inner", exclude=[dim, fa, fb])
    if a.sizes["layer"] == 0:
        raise ValueError("a and b share no layer")
    # samples are paired by position along dim, not by coordinate label
    a = a.drop_vars(dim, errors="ignore")
    b = b.drop_vars(dim, errors="ignore")
    fn = linear_cka_debiased if debiased else linear_cka
    out = xr.apply_ufunc(fn, a, b, input_core_dims=[[dim, fa], [dim, fb]], vectorize=True,
                         output_dtypes=[np.float64])
    out.name = "cka"
    out.attrs = {"estimator": "linear CKA, " + ("debiased (unbiased HSIC)" if debiased else "standard (biased HSIC)"),
                 "samples_dim": dim}
    return out


def _resid_da(x, name: str) -> xr.DataArray:
    if isinstance(x, xr.DataArray):
        return x
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"{name} must be (layer, token, d_model), got shape {x.shape}")
    return xr.DataArray(x, dims=("layer", "token", "d_model"), coords={"layer": np.arange(x.shape[0])})


def cka_to_clean(resid, clean=None, *, baseline: str = "baseline") -> xr.Dataset:
    """``cka_linear(condition, layer)`` and ``cka_debiased(condition, layer)`` of each condition's
    residuals against the clean run's at the same layer.

    ``resid``: a DataArray (condition, layer, token, d_model) or a mapping condition ->
    (layer, token, d_model). ``clean``: the clean residuals (layer, token, d_model); by default
    the ``baseline`` condition of ``resid``.
    """
    if isinstance(resid, xr.DataArray):
        if "condition" not in resid.dims:
            raise ValueError(f"resid needs a 'condition' dim, has {resid.dims}")
        runs = {str(c): resid.isel(condition=i, drop=True) for i, c in enumerate(resid["condition"].values)}
    else:
        runs = {str(k): _resid_da(v, f"resid[{k!r}]") for k, v in resid.items()}
    if clean is None:
        if baseline not in runs:
            raise ValueError(f"no {baseline!r} condition among {list(runs)}; pass clean=")
        clean = runs[baseline]
    clean = _resid_da(clean, "clean")
    names = list(runs)
    lin = [cka_by_layer(runs[c], clean) for c in names]
    deb = [cka_by_layer(runs[c], clean, debiased=True) for c in names]
    cond = xr.DataArray(names, dims="condition", name="condition")
    return xr.Dataset({"cka_linear": xr.concat(lin, dim=cond), "cka_debiased": xr.concat(deb, dim=cond)},
                      attrs={"reference": "clean run at the same layer", "samples_dim": "token",
                             "estimators": "linear CKA, standard (biased HSIC) and debiased (unbiased HSIC)"})


def _centred_grams(x, n_layers: int) -> tuple[list[np.ndarray], np.ndarray]:
    grams = []
    for i in range(n_layers):
        m = _as_matrix(x[i], "layer activations")
        m = m - m.mean(axis=0)
        grams.append(m @ m.T)
    return grams, np.array([np.linalg.norm(g) for g in grams])


def _hsic_gram(k: np.ndarray, l: np.ndarray) -> float:
    """Unbiased HSIC (times n(n-3)) from Gram matrices with zeroed diagonals."""
    n = k.shape[0]
    rk, rl = k.sum(axis=1), l.sum(axis=1)
    return float((k * l).sum() + rk.sum() * rl.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (rk @ rl))


def cka_matrix(a, b=None, *, debiased: bool = False) -> xr.DataArray:
    """``cka(layer_a, layer_b)`` between every layer of ``a`` and every layer of ``b``
    (both (layer, token, d), the same tokens; ``b`` defaults to ``a``).

    Uses token x token Gram matrices (one per layer, float64), cheap when tokens are few
    relative to width, as for a few hundred tokens of a 1k-wide model; the values equal
    ``linear_cka`` / ``linear_cka_debiased`` pair by pair.
    """
    a = _resid_da(a, "a").transpose("layer", "token", ...)
    b = a if b is None else _resid_da(b, "b").transpose("layer", "token", ...)
    if a.sizes["token"] != b.sizes["token"]:
        raise ValueError(f"a and b need the same number of tokens: {a.sizes['token']} != {b.sizes['token']}")
    n = a.sizes["token"]
    if debiased and n < 4:
        raise ValueError(f"debiased CKA needs at least 4 samples, got {n}")
    ga, na = _centred_grams(a.values, a.sizes["layer"])
    gb, nb = (ga, na) if b is a else _centred_grams(b.values, b.sizes["layer"])
    out = np.full((len(ga), len(gb)), np.nan)
    if debiased:
        for g in (*ga, *([] if b is a else gb)):
            np.fill_diagonal(g, 0.0)  # unbiased HSIC uses Grams without their diagonals
        sa = np.array([_hsic_gram(g, g) for g in ga])
        sb = sa if b is a else np.array([_hsic_gram(g, g) for g in gb])
        for i, gi in enumerate(ga):
            for j, gj in enumerate(gb):
                if sa[i] > 0 and sb[j] > 0:
                    out[i, j] = _hsic_gram(gi, gj) / np.sqrt(sa[i] * sb[j])
    else:
        for i, gi in enumerate(ga):
            for j, gj in enumerate(gb):
                out[i, j] = _ratio(float((gi * gj).sum()), na[i] * nb[j])
    la = a["layer"].values if "layer" in a.coords else np.arange(a.sizes["layer"])
    lb = b["layer"].values if "layer" in b.coords else np.arange(b.sizes["layer"])
    return xr.DataArray(out, dims=("layer_a", "layer_b"), coords={"layer_a": la, "layer_b": lb}, name="cka",
                        attrs={"estimator": "linear CKA, " + ("debiased (unbiased HSIC)" if debiased
                                                              else "standard (biased HSIC)")})
