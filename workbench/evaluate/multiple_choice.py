"""Zero-shot multiple choice by log-likelihood, in lm-evaluation-harness conventions.

Each choice is the continuation ``task.target_delimiter + choice`` of the item's context.
Tokenisation follows lm-eval's ``_encode_pair``: trailing whitespace of the context moves to
the front of the continuation, the context and context+continuation are encoded separately and
the continuation's tokens are those of the whole string beyond the context's tokens.
``acc`` takes the argmax of the summed log-likelihood; ``acc_norm`` the argmax of the
log-likelihood divided by the continuation's UTF-8 byte length (lm-eval divides by its
character length; the two agree on ASCII). Ties go to the first choice, as with ``np.argmax``.

Requests are sorted by length and right-padded: every model here is causal (attention, linear
attention and SSM mixers alike), so padding after a sequence cannot change the logits before
it and no attention mask is needed; ``forward`` can be any ablated run. Given ``cached`` (runs
that take a cache), each item's context is run once and its choices scored from its cache
(``shared_context``), where that is exact; the rest per choice as above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from ..tasks import METRICS, Item, Task
from . import shared_context
from .shared_context import Cached

Forward = Callable[[torch.Tensor, list], torch.Tensor]  # (ids (B, L), requests) -> logits (B, L, V)
Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class Request:
    task: int
    item: int
    choice: int
    context: tuple[int, ...]  # prefix + context tokens
    continuation: tuple[int, ...]

    @property
    def input_ids(self) -> tuple[int, ...]:
        return (self.context + self.continuation)[:-1]


def encode_pair(encode: Encode, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids, lm-eval style (``HFLM._encode_pair``)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(context + continuation)
    ctx = encode(context)
    return ctx, whole[len(ctx):]


def build_requests(tasks: list[Task], items: list[list[Item]], encode: Encode,
                   prefix: tuple[int, ...] = ()) -> list[Request]:
    """One request per (task, item, choice); ``prefix`` (e.g. the end-of-text id) starts each context."""
    out = []
    for t, (task, task_items) in enumerate(zip(tasks, items)):
        for i, it in enumerate(task_items):
            for c, choice in enumerate(it.choices):
                ctx, cont = encode_pair(encode, it.context, task.target_delimiter + choice)
                if not cont:
                    raise ValueError(f"task {task.name!r} item {it.id!r} choice {c}: continuation has no tokens")
                if not prefix and not ctx:
                    raise ValueError(f"task {task.name!r} item {it.id!r}: empty context needs a prefix token")
                out.append(Request(t, i, c, tuple(prefix) + tuple(ctx), tuple(cont)))
    return out


def score_requests(forward: Forward, requests: list[Request], batch_size: int = 16, pad_id: int = 0,
                   max_length: int | None = None, device: torch.device | str = "cpu",
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Summed log-likelihood (float64) of each request's continuation, in request order.

    Longest first (as lm-eval), right-padded with ``pad_id``; inputs longer than ``max_length``
    lose tokens from the left.
    """
    return score_requests_multi(lambda ids, reqs: [forward(ids, reqs)], 1, requests, batch_size, pad_id,
                                max_length, device, progress)[0]


def score_requests_multi(forward, n: int, requests: list[Request], batch_size: int = 16, pad_id: int = 0,
                         max_length: int | None = None, device: torch.device | str = "cpu",
                         progress: Callable[[int], None] | None = None, cached: Cached | None = None) -> np.ndarray:
    """``score_requests`` for ``n`` runs at once (``forward`` returns a list of ``n`` logits):
    log-likelihoods (n, requests). With ``cached`` (the same runs taking a cache) each context is
    run once and its choices scored from its cache, unless the model's cache cannot carry it
    (``shared_context.refusal``) or ``max_length`` would truncate one of its choices."""
    if cached is None or shared_context.refusal(cached.model) is not None:
        return _per_choice(forward, n, requests, batch_size, pad_id, max_length, device, progress)
    shared, rest = shared_context.split(requests, max_length)
    out = np.full((n, len(requests)), np.nan)
    out[:, shared] = shared_context.score_shared(cached, n, [requests[i] for i in shared], batch_size, pad_id,
                                                 device, progress)
    if rest:
        out[:, rest] = _per_choice(forward, n, [requests[i] for i in rest], batch_size, pad_id, max_length,
                                   device, progress)
    return out


@torch.no_grad()
def _per_choice(forward, n: int, requests: list[Request], batch_size: int, pad_id: int, max_length: int | None,
                device, progress) -> np.ndarray:
    out = np.full((n, len(requests)), np.nan)
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].input_ids))
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        inputs = []
        for i in idx:
            ids = requests[i].input_ids
            if max_length is not None and len(ids) > max_length:
                if len(requests[i].continuation) > max_length:
                    raise ValueError(f"a continuation of {len(requests[i].continuation)} tokens exceeds max_length")
                ids = ids[-max_length:]
            inputs.append(ids)
        width = max(len(x) for x in inputs)
        batch = torch.full((len(idx), width), pad_id, dtype=torch.long)
        for row, ids in enumerate(inputs):
            batch[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        for c, logits in enumerate(forward(batch.to(device), [requests[i] for i in idx])):
            for row, (i, ids) in enumerate(zip(idx, inputs)):
                cont = requests[i].continuation
                n_ids = len(ids)
                logp = F.log_softmax(logits[row, n_ids - len(cont):n_ids].float(), dim=-1)
                target = torch.tensor(cont, dtype=torch.long, device=logp.device)
                out[c, i] = logp.gather(-1, target[:, None]).cpu().double().sum().item()
        if progress:
            progress(len(idx) * n)
    return out


def metrics(loglik: np.ndarray, gold: np.ndarray, n_bytes: np.ndarray) -> xr.DataArray:
    """correct(item, metric) from loglik(item, choice) (NaN where an item has fewer choices).

    ``n_bytes``: UTF-8 byte length of each continuation (delimiter included), as ``loglik``.
    """
    loglik, n_bytes, gold = np.asarray(loglik, float), np.asarray(n_bytes, float), np.asarray(gold)
    valid = ~np.isnan(loglik)
    if np.any(valid & (n_bytes <= 0)):
        raise ValueError("every scored continuation needs a positive byte length")
    raw = np.where(valid, loglik, -np.inf)
    norm = np.where(valid, loglik / np.where(valid, n_bytes, 1.0), -np.inf)
    correct = np.stack([raw.argmax(-1) == gold, norm.argmax(-1) == gold], axis=-1).astype(float)
    correct[gold < 0] = np.nan  # padding items
    return xr.DataArray(correct, dims=("item", "metric"), coords={"metric": list(METRICS)})


def score_tasks(forward: Forward, tokenizer, tasks: list[Task], items: list[list[Item]] | None = None,
                batch_size: int = 16, max_length: int | None = None, device: torch.device | str = "cpu",
                prefix: tuple[int, ...] | None = None, progress: Callable[[int], None] | None = None,
                cached: Cached | None = None) -> xr.Dataset:
    """Per-item results of every task as one Dataset with dims (task, item, choice, metric).

    Variables: ``loglik``, ``n_bytes`` per choice; ``gold``, ``item_id``, ``correct`` per item
    (padding: NaN, -1, ''); ``accuracy``, ``n_items``, ``chance`` per task. ``prefix`` defaults
    to the tokenizer's end-of-text id, the document boundary the minis were trained with.
    ``cached``: the same run taking a cache (one lane), to score each context once.
    """
    return score_tasks_multi(lambda ids, reqs: [forward(ids, reqs)], 1, tokenizer, tasks, items, batch_size,
                             max_length, device, prefix, progress, cached)[0]


def score_tasks_multi(forward, n: int, tokenizer, tasks: list[Task], items: list[list[Item]] | None = None,
                      batch_size: int = 16, max_length: int | None = None, device: torch.device | str = "cpu",
                      prefix: tuple[int, ...] | None = None,
                      progress: Callable[[int], None] | None = None, cached: Cached | None = None) -> list[xr.Dataset]:
    """``score_tasks`` for ``n`` runs at once (``forward`` returns a list of ``n`` logits)."""
    items = items if items is not None else [t.items() for t in tasks]
    if prefix is None:
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
        prefix = () if eos is None else (eos,)

    def encode(s: str) -> list[int]:
        return tokenizer(s, add_special_tokens=False)["input_ids"]

    requests = build_requests(tasks, items, encode, tuple(prefix))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ll = score_requests_multi(forward, n, requests, batch_size, pad_id, max_length, device, progress, cached)
    return [assemble(tasks, items, requests, row) for row in ll]


def assemble(tasks: list[Task], items: list[list[Item]], requests: list[Request], loglik: np.ndarray) -> xr.Dataset:
    n_item = max(len(x) for x in items)
    n_choice = max(len(it.choices) for x in items for it in x)
    shape = (len(tasks), n_item, n_choice)
    ll = np.full(shape, np.nan)
    for r, v in zip(requests, loglik):
        ll[r.task, r.item, r.choice] = v
    n_bytes = np.full(shape, -1, dtype=np.int64)
    gold = np.full(shape[:2], -1, dtype=np.int64)
    ids = np.full(shape[:2], "", dtype=object)
    for t, (task, task_items) in enumerate(zip(tasks, items)):
        for i, it in enumerate(task_items):
            gold[t, i] = it.gold
            ids[t, i] = it.id
            for c, choice in enumerate(it.choices):
                n_bytes[t, i, c] = len((task.target_delimiter + choice).encode("utf-8"))
    correct = np.stack([metrics(ll[t], gold[t], n_bytes[t]).values for t in range(len(tasks))])
    n_items = np.array([len(x) for x in items], dtype=np.int64)
    ds = xr.Dataset(
        {
            "loglik": (("task", "item", "choice"), ll),
            "n_bytes": (("task", "item", "choice"), n_bytes),
            "gold": (("task", "item"), gold),
            "item_id": (("task", "item"), ids.astype(str)),
            "correct": (("task", "item", "metric"), correct),
            "accuracy": (("task", "metric"), np.nansum(correct, axis=1) / n_items[:, None]),
            "n_items": ("task", n_items),
            "chance": ("task", np.array([sum(1 / len(it.choices) for it in x) / len(x) for x in items])),
        },
        coords={"task": [t.name for t in tasks], "item": np.arange(n_item), "choice": np.arange(n_choice),
                "metric": list(METRICS)},
        attrs={"acc_norm": "log-likelihood divided by the continuation's UTF-8 byte length",
               "tokenisation": "lm-eval _encode_pair; continuation = target_delimiter + choice"},
    )
    return ds


def bootstrap_accuracy(correct: xr.DataArray, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> xr.Dataset:
    """Percentile bootstrap interval of mean accuracy over items (NaN padding ignored).

    ``correct`` has an ``item`` dim; the result has the other dims and ``low`` / ``high``.
    """
    if "item" not in correct.dims:
        raise ValueError(f"correct needs an 'item' dim, has {correct.dims}")
    from scipy.stats import bootstrap

    def one(x: np.ndarray) -> np.ndarray:
        x = x[~np.isnan(x)]
        if len(x) < 2:
            return np.array([np.nan, np.nan])
        if np.all(x == x[0]):
            return np.array([x[0], x[0]])
        res = bootstrap((x,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile",
                        random_state=np.random.default_rng(seed))
        return np.array([res.confidence_interval.low, res.confidence_interval.high])

    bounds = xr.apply_ufunc(one, correct, input_core_dims=[["item"]], output_core_dims=[["bound"]],
                            vectorize=True)
    return xr.Dataset({"low": bounds.isel(bound=0, drop=True), "high": bounds.isel(bound=1, drop=True)})


def plain_forward(model: torch.nn.Module) -> Forward:
    def forward(ids, _requests):
        return model(input_ids=ids).logits
    return forward


def plain_cached(model: torch.nn.Module) -> Cached:
    """``plain_forward``'s model taking a cache, for scoring each context once."""
    return Cached(model, lambda ids, keep, kwargs: [model(input_ids=ids, logits_to_keep=keep, **kwargs[0]).logits])
