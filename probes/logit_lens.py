"""Logit-lens diagnostics from lens logits: how close each layer's readout is to the model's.

The readout itself (final norm, unembedding, any family's logit multipliers) is done by the
caller; this module takes its outputs. Mind that transformers' ``output_hidden_states[-1]``
already has the final norm applied (lm_head of it gives the logits, checked on mini-qwen2.5):
normalising it again corrupts the last layer's lens; capture the last layer's own output. Inputs may be logits or log-probabilities (both go
through log_softmax), as numpy, torch (any device: only one chunk at a time is moved to the
CPU) or xarray. Work proceeds in chunks of tokens in float64, so a (layer, token, vocab)
input with a 150k vocabulary never needs more than a few chunks in memory.

Per layer, means over tokens:
- ``lens_kl``: KL(final || lens) = sum_v p_final (log p_final - log p_lens), in nats. The
  model's own final distribution is the reference; the lens is the approximation.
- ``lens_top1``: fraction of tokens whose lens argmax equals the final argmax.
- ``lens_ce``: cross-entropy -log p_lens(next token), over tokens with a target (>= 0).
- ``lens_entropy``: entropy of the lens distribution, in nats.
- ``lens_kl_to_clean``: KL(clean final || lens), the lens of an ablated run against the
  CLEAN model's final distribution; ``last_token_only=True`` keeps only the last token (of
  each window, given ``window``), the published study's variant.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import xarray as xr
from scipy.special import log_softmax

from ._arrays import as_float64, to_numpy

CHUNK_VALUES = 1 << 22  # float64 values per (token chunk x vocab) array: 32 MB


def _layers(lens):
    """(layer labels, accessor layer index -> (token, vocab) array-like)."""
    if isinstance(lens, Mapping):
        keys = list(lens)
        return np.asarray(keys), [lens[k] for k in keys]
    if isinstance(lens, xr.DataArray):
        if set(lens.dims) != {"layer", "token", "vocab"}:
            raise ValueError(f"lens logits need dims ('layer', 'token', 'vocab'), have {lens.dims}")
        lens = lens.transpose("layer", "token", "vocab")
        labels = lens["layer"].values if "layer" in lens.coords else np.arange(lens.sizes["layer"])
        return labels, [lens.variable[i] for i in range(lens.sizes["layer"])]
    shape = tuple(getattr(lens, "shape", np.shape(lens)))
    if len(shape) != 3:
        raise ValueError(f"lens logits must be (layer, token, vocab), got shape {shape}")
    return np.arange(shape[0]), [lens[i] for i in range(shape[0])]


def _shape2(x, name: str) -> tuple[int, int]:
    shape = tuple(getattr(x, "shape", np.shape(x)))
    if len(shape) != 2:
        raise ValueError(f"{name} must be (token, vocab), got shape {shape}")
    return shape


def _logp(x, a: int, b: int) -> np.ndarray:
    return log_softmax(as_float64(x[a:b], "logits chunk"), axis=-1)


def _kl(logp_ref: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """KL(ref || q) per row; zero-probability reference entries contribute 0."""
    p = np.exp(logp_ref)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (logp_ref - logp), 0.0)
    return terms.sum(-1)


def _entropy(logp: np.ndarray) -> np.ndarray:
    p = np.exp(logp)
    with np.errstate(invalid="ignore"):
        return -np.where(p > 0, p * logp, 0.0).sum(-1)


def _last_tokens(n: int, window) -> np.ndarray:
    if window is None:
        return np.array([n - 1])
    w = to_numpy(window).ravel()
    if w.shape[0] != n:
        raise ValueError(f"window must have one id per token ({n}), got {w.shape[0]}")
    return np.flatnonzero(np.r_[w[1:] != w[:-1], True])


def lens_metrics(lens, final, targets=None, *, clean_final=None, last_token_only: bool = False,
                 window=None, per_token: bool = False, chunk_tokens: int | None = None) -> xr.Dataset:
    """Logit-lens metrics per layer (see the module docstring).

    ``lens``: (layer, token, vocab), a DataArray with those dims, or a mapping
    layer -> (token, vocab). ``final``: the model's final logits (token, vocab).
    ``targets``: next-token ids (token,), negative where there is none; adds ``lens_ce``.
    ``clean_final``: the clean model's final logits (token, vocab); adds ``lens_kl_to_clean``,
    over the last token(s) only when ``last_token_only``. ``per_token=True`` keeps the
    token dim (layer, token) instead of averaging.
    """
    labels, layers = _layers(lens)
    n_tok, vocab = _shape2(final, "final")
    for i, lay in enumerate(layers):
        if _shape2(lay, f"lens layer {labels[i]}") != (n_tok, vocab):
            raise ValueError(f"lens layer {labels[i]} has shape {_shape2(lay, 'lens')}, final has {(n_tok, vocab)}")
    if clean_final is not None and _shape2(clean_final, "clean_final") != (n_tok, vocab):
        raise ValueError(f"clean_final must be {(n_tok, vocab)}, got {_shape2(clean_final, 'clean_final')}")
    tgt = None
    if targets is not None:
        tgt = to_numpy(targets).astype(np.int64).ravel()
        if tgt.shape[0] != n_tok:
            raise ValueError(f"targets must have one id per token ({n_tok}), got {tgt.shape[0]}")
        if (tgt >= vocab).any():
            raise ValueError(f"targets hold ids >= the vocabulary size {vocab}")
    step = chunk_tokens or max(1, CHUNK_VALUES // max(vocab, 1))
    n_lay = len(layers)
    kl, top1, ent = (np.full((n_lay, n_tok), np.nan) for _ in range(3))
    ce = np.full((n_lay, n_tok), np.nan) if tgt is not None else None
    kl_clean = np.full((n_lay, n_tok), np.nan) if clean_final is not None else None
    for a in range(0, n_tok, step):
        b = min(a + step, n_tok)
        lp_final = _logp(final, a, b)
        arg_final = lp_final.argmax(-1)
        lp_clean = _logp(clean_final, a, b) if clean_final is not None else None
        for i, lay in enumerate(layers):
            lp = _logp(lay, a, b)
            kl[i, a:b] = _kl(lp_final, lp)
            top1[i, a:b] = lp.argmax(-1) == arg_final
            ent[i, a:b] = _entropy(lp)
            if tgt is not None:
                t = tgt[a:b]
                ok = t >= 0
                ce[i, a:b][ok] = -lp[np.flatnonzero(ok), t[ok]]
            if lp_clean is not None:
                kl_clean[i, a:b] = _kl(lp_clean, lp)
    if kl_clean is not None and last_token_only:
        keep = np.zeros(n_tok, dtype=bool)
        keep[_last_tokens(n_tok, window)] = True
        kl_clean[:, ~keep] = np.nan
    out = {"lens_kl": kl, "lens_top1": top1, "lens_entropy": ent}
    if ce is not None:
        out["lens_ce"] = ce
    if kl_clean is not None:
        out["lens_kl_to_clean"] = kl_clean
    coords = {"layer": labels}
    if per_token:
        ds = xr.Dataset({k: (("layer", "token"), v) for k, v in out.items()}, coords=coords)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a layer without any defined token is NaN
            ds = xr.Dataset({k: ("layer", np.nanmean(v, axis=1)) for k, v in out.items()}, coords=coords)
    ds.attrs = {"kl_direction": "KL(final || lens), nats", "precision": "float64 log_softmax",
                "kl_to_clean_tokens": "last token" + (" of each window" if window is not None else "")
                if last_token_only else "all tokens"}
    return ds


def lens_kl_to_clean(lens, clean_final, *, last_token_only: bool = False, window=None) -> xr.DataArray:
    """KL(clean final || lens) per layer: an ablated run's lens against the clean model's output."""
    ds = lens_metrics(lens, clean_final, clean_final=clean_final, last_token_only=last_token_only, window=window)
    return ds["lens_kl_to_clean"].assign_attrs(ds.attrs)
