"""Add-k smoothed bigram model: the floor every trained mini model must clear.

p(b | a) = (c(a, b) + k) / (c(a) + k * V), with c(a) the number of times a is followed by
anything. It is fitted on the token pairs the neural models were trained on, k is chosen on a
validation slice of the training stream (never on held-out sets), and it is scored like the
neural models: every token after the first of a text, given the token before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from workbench.metrics import bits_per_byte, safe_exp

# Candidate smoothing constants; the chosen one is refined around the best of these.
K_GRID = tuple(float(k) for k in np.logspace(-4, 1, 11))


@dataclass
class BigramScore:
    loss: float  # mean NLL (nats) per scored token
    n_tokens: int
    n_bytes: int | None = None

    @property
    def perplexity(self) -> float:
        return safe_exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.loss * self.n_tokens, self.n_bytes)

    def as_dict(self) -> dict:
        return {"loss": self.loss, "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte,
                "n_tokens": self.n_tokens}


class AddKBigram:
    """Counts of (previous, next) token pairs; `fit` accumulates, `score` needs `k` set."""

    def __init__(self, vocab_size: int, k: float | None = None):
        self.vocab_size = vocab_size
        self.k = k
        self.counts = np.zeros((vocab_size, vocab_size), dtype=np.int64)
        self.n_pairs = 0
        self._row = self.counts.sum(axis=1)  # c(a): pairs starting with a

    def fit(self, sequences) -> "AddKBigram":
        """Add the adjacent pairs of each 1-D sequence (pairs never cross sequence borders)."""
        flat = []
        for seq in sequences:
            seq = np.asarray(seq, dtype=np.int64)
            if len(seq) >= 2:
                flat.append(seq[:-1] * self.vocab_size + seq[1:])
        if flat:
            flat = np.concatenate(flat)
            self.counts += np.bincount(flat, minlength=self.vocab_size ** 2).reshape(self.vocab_size, -1)
            self.n_pairs += len(flat)
        self._row = self.counts.sum(axis=1)
        return self

    def _nll(self, ids: np.ndarray, k: float) -> np.ndarray:
        prev, nxt = ids[:-1], ids[1:]
        pair = self.counts[prev, nxt].astype(np.float64)
        row = self._row[prev].astype(np.float64)
        return -(np.log(pair + k) - np.log(row + k * self.vocab_size))

    def score(self, ids, n_bytes: int | None = None) -> BigramScore:
        """Mean NLL of every token after the first of `ids`, given its predecessor."""
        if self.k is None:
            raise ValueError("choose k first (select_k) or pass k to the constructor")
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if len(ids) < 2:
            raise ValueError("need at least 2 tokens to score")
        nll = self._nll(ids, self.k)
        return BigramScore(loss=float(nll.sum(dtype=np.float64) / len(nll)), n_tokens=len(nll), n_bytes=n_bytes)

    def select_k(self, validation_ids, grid=K_GRID) -> float:
        """The k with the lowest validation NLL: the best of `grid`, refined by golden search in log k."""
        ids = np.asarray(validation_ids, dtype=np.int64).ravel()

        def loss(log_k: float) -> float:
            return float(self._nll(ids, math.exp(log_k)).mean())

        logs = [math.log(k) for k in grid]
        losses = [loss(x) for x in logs]
        i = int(np.argmin(losses))
        lo, hi = logs[max(i - 1, 0)], logs[min(i + 1, len(logs) - 1)]
        g = (math.sqrt(5) - 1) / 2
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        fa, fb = loss(a), loss(b)
        for _ in range(25):
            if fa < fb:
                hi, b, fb = b, a, fa
                a = hi - g * (hi - lo)
                fa = loss(a)
            else:
                lo, a, fa = a, b, fb
                b = lo + g * (hi - lo)
                fb = loss(b)
        best = min([(losses[i], logs[i]), (fa, a), (fb, b)])[1]
        self.k = math.exp(best)
        return self.k
