"""Multiple choice with each item's context run once, every choice scored from its cache.

Per-choice scoring (``multiple_choice.score_requests``) forwards context + choice for every
choice, so a 4-choice item reads its context 4 times. Here contexts of similar lengths are
batched (``context_batches``) and their first ``common`` tokens (the batch's shortest length
but one) forwarded once per context, without padding, so no pad ever enters a recurrent state.
That cache (attention KV, and the conv / SSM / delta-rule states of recurrent mixers) is then
copied once per choice, and each choice continues from it with the rest of its context and its
own tokens, right-padded (every model here is causal, so padding after a row cannot change its
logits). The sums equal per-choice scoring up to float rounding
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


def slack(length: int) -> int:
    """Most tokens a batch's shortest context may lack against its longest: those tail tokens are
    run again with each choice, a cost traded for fewer, fuller forwards (each has a fixed cost)."""
    return max(8, length // 4)


def context_batches(requests: list, batch_size: int) -> list[list[tuple]]:
    """Distinct contexts, longest first, in batches of at most ``batch_size`` whose lengths differ
    by at most ``slack`` of the longest."""
    contexts = sorted({r.context for r in requests}, key=lambda c: (-len(c), c))
    out: list[list[tuple]] = []
    for ctx in contexts:
        if out and len(out[-1]) < batch_size and len(out[-1][0]) - len(ctx) <= slack(len(out[-1][0])):
            out[-1].append(ctx)
        else:
            out.append([ctx])
    return out


def forward_tokens(requests: list, batch_size: int = 16) -> int:
    """Token positions a shared-context pass forwards (padding not counted): each batch's common
    prefix once per context, then each choice with its context's tail and its tokens but the last."""
    by_context: dict[tuple, list] = {}
    for r in requests:
        by_context.setdefault(r.context, []).append(r)
    total = 0
    for batch in context_batches(requests, batch_size):
        common = len(batch[-1]) - 1
        total += common * len(batch)
        total += sum(len(ctx) - common + len(r.continuation) - 1 for ctx in batch for r in by_context[ctx])
    return total


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
        # the batch's common length but one token runs once per context; the rest of each context
        # runs with each of its choices, so each choice's predictions all come from its own row
        common = len(batch[-1]) - 1
        caches = [carrier.new_cache() for _ in range(cached.lanes)]
        if common:
            ids = torch.tensor([c[:common] for c in batch], dtype=torch.long, device=device)
            kwargs = [carrier.forward_kwargs(c, 0, 0, len(batch), common, ids.device) for c in caches]
            cached.forward(ids, 1, kwargs)  # only the caches are wanted
        rows = [i for ctx in batch for i in by_context[ctx]]
        parent = {i: b for b, ctx in enumerate(batch) for i in by_context[ctx]}
        tails = {i: requests[i].context[common:] + requests[i].continuation[:-1] for i in rows}
        # the choices longest first, in forwards of at most batch_size rows (as per-choice scoring
        # batches its requests): little padding, each forward with its own copy of the caches
        rows.sort(key=lambda i: -len(tails[i]))
        for k in range(0, len(rows), batch_size):
            part = rows[k:k + batch_size]
            _score_tails(cached, carrier, caches, part, parent, tails, requests, common, pad_id, device, out)
        if progress:
            progress(len(rows) * n)
    return out


def _score_tails(cached, carrier, caches, rows, parent, tails, requests, common, pad_id, device, out) -> None:
    """One forward of ``rows`` (request indices) from their contexts' cached states."""
    index = torch.tensor([parent[i] for i in rows], dtype=torch.long, device=device)
    caches = [own_copy(cache) for cache in caches]
    for cache in caches:
        cache.reorder_cache(index)  # row r: its context's state
    width = max(len(tails[i]) for i in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for row, i in enumerate(rows):
        ids[row, :len(tails[i])] = torch.tensor(tails[i], dtype=torch.long)
    ids = ids.to(device)
    kwargs = [carrier.forward_kwargs(c, common, common, len(rows), width, ids.device) for c in caches]
    for lane, logits in enumerate(cached.forward(ids, 0, kwargs)):
        if logits is None:
            continue
        for row, i in enumerate(rows):
            cont, n_ids = requests[i].continuation, len(tails[i])
            logp = F.log_softmax(logits[row, n_ids - len(cont):n_ids].float(), dim=-1)
            target = torch.tensor(cont, dtype=torch.long, device=logp.device)
            out[lane, i] = logp.gather(-1, target[:, None]).cpu().double().sum().item()
