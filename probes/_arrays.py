"""Small shared helpers: inputs as float64 numpy, conditions as a mapping, results stacked.

Torch tensors are accepted without importing torch (pages and the store must not need it).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import xarray as xr


def to_numpy(x, dtype=None) -> np.ndarray:
    """numpy view of a numpy array, xarray object or torch tensor (moved to the CPU)."""
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()  # numpy has no bfloat16
        x = x.cpu().numpy()
    elif isinstance(x, xr.DataArray):
        x = x.values
    return np.asarray(x, dtype=dtype)


def as_float64(x, name: str, ndim: int | None = None) -> np.ndarray:
    x = to_numpy(x, np.float64)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    return x


def coord(x, dim: str, n: int) -> np.ndarray:
    """The ``dim`` coordinate of an xarray input, else 0..n-1."""
    if isinstance(x, xr.DataArray) and dim in x.coords:
        return np.asarray(x[dim].values)
    return np.arange(n)


def by_condition(x, name: str) -> dict[str, object]:
    """A mapping condition -> array, or a DataArray with a ``condition`` dim, as a dict."""
    if isinstance(x, Mapping):
        return {str(k): v for k, v in x.items()}
    if isinstance(x, xr.DataArray) and "condition" in x.dims:
        return {str(c): x.isel(condition=i, drop=True) for i, c in enumerate(x["condition"].values)}
    raise ValueError(f"{name} must be a mapping condition -> array or a DataArray with a "
                     f"'condition' dim, got {type(x).__name__}")


def stack_conditions(results: Mapping[str, xr.Dataset]) -> xr.Dataset:
    """Per-condition datasets concatenated along a new ``condition`` dim (in mapping order)."""
    if not results:
        raise ValueError("no conditions given")
    names = list(results)
    out = xr.concat([results[n] for n in names], dim=pd.Index(names, name="condition"),
                    combine_attrs="override")
    return out
