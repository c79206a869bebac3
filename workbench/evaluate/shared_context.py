"""Multiple choice with each item's context run once, every choice scored from its cache.

Per-choice scoring (``multiple_choice.score_requests``) forwards context + choice for every
choice, so a 4-choice item reads its context 4 times. Here each distinct context is forwarded
once, batched with contexts of the same length (so no padding ever enters a recurrent state);
its last logits score every choice's first token. Its cache (attention KV, and the conv /
SSM / delta-rule states of recurrent mixers) is then copied once per choice, and the choices'
remaining tokens continue from it, right-padded (every model here is causal, so padding after a
choice cannot change its logits). The sums equal per-choice scoring up to float rounding
(``tests/test_shared_context.py``: every family the carry protocol supports, every mode but
resample, under the naive loop and the fast path).

Ablations carry over unchanged: ``zero``, ``mean`` (a mean vector at every position) and
``skip_layer`` edit each position alike, so the context run under a condition is the prefix of
every choice's run under it. Not so ``resample``: each choice's donor is drawn apart (salted by
the choice), so its context is ablated differently from its siblings'; callers score resample
per choice. Families whose cache cannot be continued exactly (``carry.Carrier`` refuses them:
Jamba's Mamba, sliding-window attention, length-dependent RoPE) and items a ``max_length``
would truncate are scored per choice too (``multiple_choice.score_requests_multi`` routes them).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from workbench.evaluate.carry import Carrier, CarryError

# (ids (B, L), keep, one forward-kwargs dict per lane) -> logits of each run (None: not scored)
CachedForward = Callable[[torch.Tensor, int, list[dict]], list]


@dataclass(frozen=True)
class Cached:
    """A model's runs that take a cache: ``forward`` gets one cache per lane (``lanes``: e.g. the
    fast path's clean pass and each condition) and returns the logits of each run."""

    model: torch.nn.Module
    forward: CachedForward
    lanes: int = 1


def refusal(model: torch.nn.Module) -> str | None:
    """Why ``model``'s cache cannot carry a context to its choices exactly (None: it can)."""
    try:
        Carrier(model)
    except CarryError as exc:
        return str(exc)
    return None


def split(requests: list, max_length: int | None) -> tuple[list[int], list[int]]:
    """Indices of the requests scored from a shared context, and of those scored per choice (every
    choice of a context of which one choice would lose tokens to ``max_length``)."""
    long = {r.context for r in requests if max_length is not None and len(r.input_ids) > max_length}
    shared = [i for i, r in enumerate(requests) if r.context not in long]
    return shared, [i for i, r in enumerate(requests) if r.context in long]


def context_batches(requests: list, batch_size: int) -> list[list[tuple]]:
    """Distinct contexts in batches of at most ``batch_size``, each batch of one length, longest first."""
    contexts = sorted({r.context for r in requests}, key=lambda c: (-len(c), c))
    out: list[list[tuple]] = []
    for ctx in contexts:
        if out and len(out[-1]) < batch_size and len(out[-1][0]) == len(ctx):
            out[-1].append(ctx)
        else:
            out.append([ctx])
    return out


def forward_tokens(requests: list) -> int:
    """Token positions a shared-context pass forwards (each context once, each choice's tokens
    after the first), padding not counted."""
    return (sum(len(c) for c in {r.context for r in requests})
            + sum(len(r.continuation) - 1 for r in requests))


def own_copy(cache):
    """A cache sharing no state with another: lanes may share cache layers' state (the fast path
    hands a condition the clean pass's layers it skips), which each lane's row selection must
    not select twice."""
    return copy.deepcopy(cache)


@torch.no_grad()
def score_shared(cached: Cached, n: int, requests: list, batch_size: int = 16, pad_id: int = 0,
                 device: torch.device | str = "cpu",
                 progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Summed log-likelihood (float64) of each request's continuation under each of the ``n``
    runs: (n, requests), as ``multiple_choice.score_requests_multi`` gives it."""
    carrier = Carrier(cached.model)
    out = np.full((n, len(requests)), np.nan)
    by_context: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        by_context.setdefault(r.context, []).append(i)
    for batch in context_batches(requests, batch_size):
        length = len(batch[0])
        ids = torch.tensor(batch, dtype=torch.long, device=device)
        caches = [carrier.new_cache() for _ in range(cached.lanes)]
        kwargs = [carrier.forward_kwargs(c, 0, 0, len(batch), length, ids.device) for c in caches]
        last = [None if x is None else x[:, -1].float() for x in cached.forward(ids, 1, kwargs)]
        rows = [i for ctx in batch for i in by_context[ctx]]
        parent = [b for b, ctx in enumerate(batch) for _ in by_context[ctx]]
        conts = [requests[i].continuation for i in rows]
        width = max(len(c) for c in conts) - 1
        rest: list = [None] * n
        if width:  # choices of more than one token continue from their context's cache
            index = torch.tensor(parent, dtype=torch.long)
            caches = [own_copy(cache) for cache in caches]
            for cache in caches:
                cache.reorder_cache(index)  # row r: its context's state
            tail = torch.full((len(rows), width), pad_id, dtype=torch.long)
            for row, cont in enumerate(conts):
                tail[row, :len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long)
            tail = tail.to(device)
            kwargs = [carrier.forward_kwargs(c, length, length, len(rows), width, tail.device) for c in caches]
            rest = cached.forward(tail, 0, kwargs)
        for lane in range(n):
            if last[lane] is None:
                continue
            for row, (i, cont) in enumerate(zip(rows, conts)):
                pred = last[lane][parent[row]][None]
                if len(cont) > 1:
                    pred = torch.cat([pred, rest[lane][row, :len(cont) - 1].float()])
                logp = F.log_softmax(pred, dim=-1)
                target = torch.tensor(cont, dtype=torch.long, device=logp.device)
                out[lane, i] = logp.gather(-1, target[:, None]).cpu().double().sum().item()
        if progress:
            progress(len(rows) * n)
    return out
