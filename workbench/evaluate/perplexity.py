"""Rolling-window perplexity: every token after the first is scored exactly once.

The first window is the first ``context`` tokens and scores all but its first token. Each
later window ends ``stride`` tokens after the previous one (or at the end of the text), holds
the ``context`` tokens before its end, and scores only its last ``stride`` tokens, so each of
them sees at least ``context - stride`` tokens of left context. With ``stride >= context`` a
window keeps one token of left context and scores ``context - 1`` tokens.

With a prefix token (BOS, for models trained to see one first) every window's input starts
with it, windows hold ``context - 1`` text tokens (the model still sees ``context``), and the
first token of the text is scored too, predicted from the prefix (lm-evaluation-harness's
rolling log-likelihood does the same).

Bits per byte divide the summed NLL (nats) of the scored tokens by ln 2 times the UTF-8 bytes
those tokens cover (``workbench.corpora.Corpus.scored_bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from workbench.metrics import bits_per_byte, safe_exp  # noqa: F401  (re-exported)

# (ids (B, L), windows, keep) -> logits of the last ``keep`` positions (B, keep, V)
Forward = Callable[[torch.Tensor, list, int], torch.Tensor]


@dataclass(frozen=True)
class Window:
    begin: int  # first input position (absolute)
    end: int  # one past the last input position
    score_from: int  # first scored target position (absolute)

    @property
    def n_scored(self) -> int:
        return self.end - self.score_from


def rolling_windows(n_tokens: int, context: int, stride: int, prefix: bool = False) -> list[Window]:
    """Windows over a stream of ``n_tokens`` (``prefix``: one input slot is the prefix token)."""
    if context < 2:
        raise ValueError(f"context must be at least 2 tokens, got {context}")
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be between 1 and context ({context}), got {stride}")
    if n_tokens < 2:
        raise ValueError(f"need at least 2 tokens to score, got {n_tokens}")
    if prefix:
        context -= 1
        stride = min(stride, context)
    first_end = min(context, n_tokens)
    windows = [Window(0, first_end, 0 if prefix else 1)]
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
        return bits_per_byte(self.loss * self.n_tokens, self.n_bytes)


def _batches(windows: list[Window], batch_size: int):
    """Group windows of equal length (all but the last are usually full) into batches."""
    by_len: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        by_len.setdefault(w.end - w.begin, []).append(i)
    for idx in by_len.values():
        for k in range(0, len(idx), batch_size):
            yield idx[k:k + batch_size]


def keep_for(batch: list[Window]) -> int:
    """Logit positions a batch needs: from the one before its earliest scored token to the end
    (a prefix token shifts both ends alike)."""
    return max(w.end - w.score_from + 1 for w in batch)


def score_windows(forward: Forward, input_ids: torch.Tensor, windows: list[Window],
                  batch_size: int = 8, device: torch.device | str = "cpu",
                  progress: Callable[[int], None] | None = None,
                  prefix: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL (float64) and scored-token count for each window.

    Only the logits of positions that predict a scored token are computed (``keep``), and each
    batch's logits are reduced to NLLs before the next batch runs.
    """
    nll, count = score_windows_multi(lambda ids, batch, keep: [forward(ids, batch, keep)], 1, input_ids,
                                     windows, batch_size, device, progress, prefix)
    return nll[0], count


@torch.no_grad()
def score_windows_multi(forward, n: int, input_ids: torch.Tensor, windows: list[Window],
                        batch_size: int = 8, device: torch.device | str = "cpu",
                        progress: Callable[[int], None] | None = None,
                        prefix: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``score_windows`` for ``n`` runs at once: ``forward(ids, windows, keep)`` returns a list
    of ``n`` logits tensors; the result is the summed NLL (n, windows) and the counts."""
    nll = np.zeros((n, len(windows)), dtype=np.float64)
    count = np.array([w.n_scored for w in windows], dtype=np.int64)
    shift = int(prefix is not None)
    for idx in _batches(windows, batch_size):
        batch = [windows[i] for i in idx]
        ids = torch.stack([input_ids[w.begin:w.end] for w in batch])
        if prefix is not None:
            ids = torch.cat([torch.full((len(batch), 1), prefix, dtype=ids.dtype), ids], dim=1)
        ids = ids.to(device)
        keep = min(keep_for(batch), ids.shape[1])
        for k, logits in enumerate(forward(ids, batch, keep)):
            offset = ids.shape[1] - logits.shape[1]  # absolute input position of logits[:, 0]
            for row, (i, w) in enumerate(zip(idx, batch)):
                first = w.score_from - w.begin + shift  # input index of the first scored target
                pred = logits[row, first - 1 - offset:ids.shape[1] - 1 - offset].float()
                target = ids[row, first:].to(pred.device)
                # per-token NLL in float32, summed in float64 on the CPU (not every device has float64)
                nll[k, i] = F.cross_entropy(pred, target, reduction="none").cpu().double().sum().item()
        if progress:
            progress(int(count[idx].sum()) * n)
    return nll, count


def plain_forward(model: torch.nn.Module) -> Forward:
    def forward(ids, _windows, keep=0):
        return model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits
    return forward


def perplexity(model: torch.nn.Module, input_ids: torch.Tensor, context: int = 512,
               stride: int = 256, batch_size: int = 8, n_bytes: int | None = None,
               forward: Forward | None = None, prefix: int | None = None) -> PerplexityResult:
    """Perplexity of ``model`` (or of ``forward``, e.g. an ablated run) over a 1-D token stream.

    ``n_bytes``: the bytes the scored tokens cover, for bits per byte.
    """
    input_ids = torch.as_tensor(input_ids, dtype=torch.long).flatten()
    windows = rolling_windows(len(input_ids), context, stride, prefix=prefix is not None)
    device = next(model.parameters()).device if model is not None else "cpu"
    nll, count = score_windows(forward or plain_forward(model), input_ids, windows, batch_size, device,
                               prefix=prefix)
    return PerplexityResult(loss=float(nll.sum() / count.sum()), n_tokens=int(count.sum()),
                            n_bytes=n_bytes, window_nll=nll, window_tokens=count)
