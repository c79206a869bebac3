"""In-context retrieval on random token sequences repeated twice.

A sequence of ``length`` random tokens followed by the same tokens again: from the second
copy on, a model that can look back predicts every next token exactly. Two readouts:

- ``retrieval_accuracy``: top-1 accuracy on the second copy, positions length .. 2*length-2
  each predicting the next token (the first token of the copy cannot be retrieved).
- ``induction_scores``: per head, the mean attention from each second-copy token to the token
  right after its earlier occurrence (query length+i -> key i+1), the standard induction score
  (Olsson et al. 2022). Uniform attention over k keys scores 1/k; a perfect induction head 1.

``prefix`` counts positions placed before the sequences (e.g. a BOS token) in logits and
attention maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from ._arrays import to_numpy


def repeated_sequences(vocab_size: int, n_seq: int, length: int, seed: int = 0,
                       exclude: Sequence[int] = ()) -> np.ndarray:
    """Token ids (n_seq, 2*length): ``length`` distinct random ids, then the same ids again.

    Ids in ``exclude`` (special tokens) are never drawn; distinct ids within a sequence make
    every earlier occurrence unique.
    """
    allowed = np.setdiff1d(np.arange(vocab_size), np.asarray(list(exclude), dtype=np.int64))
    if length < 2 or n_seq < 1:
        raise ValueError(f"need length >= 2 and n_seq >= 1, got length={length}, n_seq={n_seq}")
    if length > allowed.size:
        raise ValueError(f"length {length} exceeds the {allowed.size} drawable ids (vocab_size minus exclude)")
    rng = np.random.default_rng(seed)
    first = np.stack([rng.choice(allowed, size=length, replace=False) for _ in range(n_seq)])
    return np.concatenate([first, first], axis=1).astype(np.int64)


def _length(ids: np.ndarray) -> int:
    if ids.ndim != 2 or ids.shape[1] % 2 or ids.shape[1] < 4:
        raise ValueError(f"ids must be (n_seq, 2*length) with length >= 2, got shape {ids.shape}")
    half = ids.shape[1] // 2
    if not np.array_equal(ids[:, :half], ids[:, half:]):
        raise ValueError("ids are not sequences repeated twice (the two halves differ)")
    return half


def retrieval_accuracy(logits, ids, *, prefix: int = 0) -> float:
    """Top-1 accuracy of predicting the second copy's next tokens.

    ``logits``: (n_seq, prefix + 2*length, vocab), numpy or torch; ``ids`` from ``repeated_sequences``.
    """
    ids = to_numpy(ids).astype(np.int64)
    length = _length(ids)
    shape = tuple(getattr(logits, "shape", np.shape(logits)))
    if len(shape) != 3 or shape[0] != ids.shape[0] or shape[1] != prefix + ids.shape[1]:
        raise ValueError(f"logits must be (n_seq, prefix + 2*length, vocab) = ({ids.shape[0]}, "
                         f"{prefix + ids.shape[1]}, vocab), got {shape}")
    pred = to_numpy(logits[:, prefix + length: prefix + 2 * length - 1], np.float32).argmax(-1)
    return float((pred == ids[:, length + 1:]).mean())


def _one_layer(attn, length: int | None, prefix: int) -> np.ndarray:
    a = to_numpy(attn, np.float64)
    if a.ndim != 4:
        raise ValueError(f"attention must be (batch, head, q, k), got shape {a.shape}")
    n_q, n_k = a.shape[2:]
    if length is None:
        if (n_q - prefix) % 2:
            raise ValueError(f"{n_q - prefix} query positions after the prefix: not two copies; pass length=")
        length = (n_q - prefix) // 2
    if prefix + 2 * length > min(n_q, n_k):
        raise ValueError(f"attention {a.shape} is too short for prefix {prefix} + 2 * length {length}")
    i = np.arange(length)
    return a[:, :, prefix + length + i, prefix + i + 1].mean(axis=(0, 2))  # (head,)


def induction_scores(attn, *, length: int | None = None, prefix: int = 0) -> xr.DataArray:
    """``induction_score(head)`` from one layer's (batch, head, q, k) attention, or
    ``induction_score(layer, head)`` from a mapping layer -> (batch, head, q, k) or an array
    (layer, batch, head, q, k)."""
    if isinstance(attn, Mapping):
        layers = list(attn)
        scores = np.stack([_one_layer(attn[k], length, prefix) for k in layers])
    else:
        ndim = len(getattr(attn, "shape", np.shape(attn)))
        if ndim == 4:
            s = _one_layer(attn, length, prefix)
            return xr.DataArray(s, dims="head", coords={"head": np.arange(s.size)}, name="induction_score")
        if ndim != 5:
            raise ValueError(f"attention must be (batch, head, q, k) or (layer, batch, head, q, k), got {ndim}-D")
        layers = list(range(len(attn)))
        scores = np.stack([_one_layer(attn[k], length, prefix) for k in layers])
    return xr.DataArray(scores, dims=("layer", "head"),
                        coords={"layer": layers, "head": np.arange(scores.shape[1])}, name="induction_score")
