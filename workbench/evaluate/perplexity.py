"""Rolling-window perplexity: every token after the first is scored exactly once.

The first window is the first ``context`` tokens and scores all but its first token. Each
later window ends ``stride`` tokens after the previous one (or at the end of the text), holds
the ``context`` tokens before its end, and scores only its last ``stride`` tokens, so each of
them sees at least ``context - stride`` tokens of left context. With ``stride >= context`` a
window keeps one token of left context and scores ``context - 1`` tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

Forward = Callable[[torch.Tensor, list], torch.Tensor]  # (ids (B, L), windows) -> logits (B, L, V)


@dataclass(frozen=True)
class Window:
    begin: int  # first input position (absolute)
    end: int  # one past the last input position
    score_from: int  # first scored target position (absolute)

    @property
    def n_scored(self) -> int:
        return self.end - self.score_from


def rolling_windows(n_tokens: int, context: int, stride: int) -> list[Window]:
    if context < 2:
        raise ValueError(f"context must be at least 2 tokens, got {context}")
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be between 1 and context ({context}), got {stride}")
    if n_tokens < 2:
        raise ValueError(f"need at least 2 tokens to score, got {n_tokens}")
    first_end = min(context, n_tokens)
    windows = [Window(0, first_end, 1)]
    prev_end = first_end
    while prev_end < n_tokens:
        end = min(prev_end + stride, n_tokens)
        begin = max(0, end - context)
        if begin >= prev_end:  # stride >= context: keep one token of left context
            begin = prev_end - 1
            end = min(begin + context, n_tokens)
        windows.append(Window(begin, end, prev_end))
        prev_end = end
    return windows


def safe_exp(x: float) -> float:
    """exp that reports overflow as inf instead of raising (perplexity is never clipped)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


@dataclass
class PerplexityResult:
    loss: float  # mean NLL (nats) per scored token
    n_tokens: int  # scored tokens
    n_bytes: int | None = None
    window_nll: np.ndarray = field(default_factory=lambda: np.zeros(0))  # summed NLL per window
    window_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def perplexity(self) -> float:
        return safe_exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        if not self.n_bytes:
            return math.nan
        return self.loss * self.n_tokens / (math.log(2) * self.n_bytes)


def _batches(windows: list[Window], batch_size: int):
    """Group windows of equal length (all but the last are usually full) into batches."""
    by_len: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        by_len.setdefault(w.end - w.begin, []).append(i)
    for idx in by_len.values():
        for k in range(0, len(idx), batch_size):
            yield idx[k:k + batch_size]


@torch.no_grad()
def score_windows(forward: Forward, input_ids: torch.Tensor, windows: list[Window],
                  batch_size: int = 8, device: torch.device | str = "cpu",
                  progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL (float64) and scored-token count for each window."""
    nll = np.zeros(len(windows), dtype=np.float64)
    count = np.array([w.n_scored for w in windows], dtype=np.int64)
    for idx in _batches(windows, batch_size):
        batch = [windows[i] for i in idx]
        ids = torch.stack([input_ids[w.begin:w.end] for w in batch]).to(device)
        logits = forward(ids, batch)
        for row, (i, w) in enumerate(zip(idx, batch)):
            first = w.score_from - w.begin  # local index of first scored target
            pred = logits[row, first - 1:w.end - w.begin - 1].float()
            target = ids[row, first:].to(pred.device)
            # per-token NLL in float32, summed in float64
            nll[i] = F.cross_entropy(pred, target, reduction="none").double().sum().item()
        if progress:
            progress(int(count[idx].sum()))
    return nll, count


def plain_forward(model: torch.nn.Module) -> Forward:
    def forward(ids, _windows):
        return model(input_ids=ids).logits
    return forward


def perplexity(model: torch.nn.Module, input_ids: torch.Tensor, context: int = 512,
               stride: int = 256, batch_size: int = 8, n_bytes: int | None = None,
               forward: Forward | None = None) -> PerplexityResult:
    """Perplexity of ``model`` (or of ``forward``, e.g. an ablated run) over a 1-D token stream."""
    input_ids = torch.as_tensor(input_ids, dtype=torch.long).flatten()
    windows = rolling_windows(len(input_ids), context, stride)
    device = next(model.parameters()).device if model is not None else "cpu"
    nll, count = score_windows(forward or plain_forward(model), input_ids, windows, batch_size, device)
    return PerplexityResult(loss=float(nll.sum() / count.sum()), n_tokens=int(count.sum()),
                            n_bytes=n_bytes, window_nll=nll, window_tokens=count)
