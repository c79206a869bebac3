"""Context-blind baselines as `forward` callables, scored by the same multiple-choice code.

A unigram model ignores the context entirely; an add-k bigram sees only the previous token.
A task that either solves is testing token statistics, not the context.
"""

from __future__ import annotations

import numpy as np
import torch

from ..training.bigram import AddKBigram


def unigram_log_probs(tokens: np.ndarray, vocab_size: int, k: float = 1.0) -> torch.Tensor:
    """Add-k smoothed log p(token) from a 1-D token stream."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    return torch.from_numpy(np.log(counts + k) - np.log(counts.sum() + k * vocab_size)).float()


def unigram_forward(log_probs: torch.Tensor):
    def forward(ids: torch.Tensor, _requests) -> torch.Tensor:
        return log_probs.expand(*ids.shape, -1)
    return forward


def bigram_forward(bigram: AddKBigram):
    """Logits at position t = log p(. | ids[t]) of the fitted add-k bigram (its `k` must be set)."""
    if bigram.k is None:
        raise ValueError("set the bigram's k first (select_k)")
    counts = torch.from_numpy(bigram.counts.astype(np.float64))
    table = (torch.log(counts + bigram.k) - torch.log(counts.sum(1, keepdim=True) + bigram.k * bigram.vocab_size)).float()

    def forward(ids: torch.Tensor, _requests) -> torch.Tensor:
        return table[ids]
    return forward
