"""Carried-state perplexity: the corpus in consecutive chunks, each token computed once.

The model's state goes from chunk to chunk through the Hugging Face cache. Recurrent mixers
(Gated DeltaNet, Mamba-2, short convolutions) carry their whole state (conv and recurrent), so
they see the whole stream before a chunk. Attention layers keep only the last ``context - chunk``
positions of their KV cache between chunks, so attention sees at most ``context`` tokens (never
more than a rolling window) and the cost stays linear in the corpus length.

Layout (``carry_chunks``). A stream is a run of chunks sharing one cache. Its first chunk holds
``first`` input slots (default ``context``), later chunks ``chunk`` slots. Each chunk scores the
targets of its inputs (input ``t`` predicts token ``t + 1``), so the last input of a chunk
predicts the first input of the next; every token after the first is scored exactly once, and a
token scored in a later chunk sees at least ``context - chunk + 1`` input slots through attention
(a rolling window with ``stride = chunk`` guarantees ``context - chunk``). With a prefix token
(BOS) a stream's first slot is the prefix, which predicts its first text token, as every rolling
window starts with it (``perplexity.rolling_windows``).

Streams (for batching): the corpus is cut into ``streams`` contiguous segments scored side by
side, one batch row each. Every segment after the first starts its stream with a warm-up of
``context - chunk`` unscored slots (the prefix token counts as one), so its first scored token
sees ``context - chunk + 1`` slots too: no token gets less left context than a rolling window
with ``stride = chunk`` gives. Recurrent mixers then start the segment from that warm-up rather
than from the whole text before it, so results depend (a little) on ``streams``: record it.

Positions: RoPE is relative, so each stream's positions count up from 0 at its first slot, while
attention masks are sized against the trimmed cache. In transformers 5.x the mask offsets come
from the cache itself (``cache.get_seq_length()``: the kept positions), so only ``position_ids``
are passed (and ``cache_position``, relative to the kept cache, where a version still takes it).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from workbench.architectures import UnsupportedArchitecture, family_for
from workbench.evaluate.perplexity import PerplexityResult

# (ids (B, L), chunks, keep, forward_kwargs) -> logits of the last ``keep`` positions (B, keep, V)
CarriedForward = Callable[[torch.Tensor, list, int, dict], torch.Tensor]

# Families whose cache continuation is checked against one forward with a band mask
# (tests/test_carry.py), with what each one carries from chunk to chunk.
SUPPORTED = {
    "llama": "attention KV (trimmed)",
    "qwen2": "attention KV (trimmed)",
    "qwen3_5": "Gated DeltaNet conv + recurrent states; attention KV (trimmed)",
    "qwen3_next": "Gated DeltaNet conv + recurrent states; attention KV (trimmed)",
    "falcon_h1": "Mamba-2 conv + SSM states; attention KV (trimmed)",
    "bamba": "Mamba-2 conv + SSM states; attention KV (trimmed)",
    "granitemoehybrid": "Mamba-2 conv + SSM states; attention KV (trimmed)",
    "nemotron_h": "Mamba-2 conv + SSM states; attention KV (trimmed)",
    "zamba2": "Mamba-2 conv + SSM states; shared attention blocks' KV (trimmed)",
    "lfm2": "short-convolution states; attention KV (trimmed)",
}
# Families refused, and why (transformers 5.24).
REFUSED = {
    "jamba": "its Mamba (selective scan) path starts multi-token inputs from a zero state, "
             "ignoring the carried one",
    "gemma3": "its sliding-window attention layers keep a cache of their own",
    "gemma3_multimodal": "its sliding-window attention layers keep a cache of their own",
}
# RoPE variants whose frequencies depend on the sequence length seen: positions past a window
# would change them, so carried chunks would not compute what a window computes.
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


class CarryError(ValueError):
    pass


@dataclass(frozen=True)
class Chunk:
    stream: int  # which stream (batch row) carries it
    step: int  # its index in the stream; step 0 starts from an empty cache
    begin: int  # first text input position (absolute)
    end: int  # one past the last text input position
    score_from: int  # first scored target (absolute); targets run to ``end`` inclusive
    prefixed: bool  # the input starts with the prefix token (a stream's first chunk)
    position: int  # position id of the first input slot (counted from the stream's start)
    cached: int  # attention positions in the cache when the chunk starts

    @property
    def n_scored(self) -> int:
        return self.end + 1 - self.score_from

    @property
    def n_inputs(self) -> int:
        return self.end - self.begin + int(self.prefixed)


def _stream_spans(n_tokens: int, context: int, chunk: int, prefix: int,
                  streams: int) -> list[tuple[int, int, int]] | None:
    """(first text input, first scored target, one past the last target) of each stream, or
    None when a stream would score nothing.

    Streams get input slots as equal as they can (the longer ones first), so they run in
    lockstep up to their last chunk; a later stream spends ``context - chunk`` of its slots on
    the prefix and the warm-up."""
    unscored = context - chunk  # a later stream's unscored slots (the prefix counts as one)
    warm = unscored + 1 - prefix  # its text inputs up to the one predicting its first target
    start = 1 - prefix
    base, extra = divmod(n_tokens - start + (streams - 1) * unscored, streams)
    if streams > 1 and base <= unscored:
        return None
    spans, seg = [], start
    for s in range(streams):
        scored = base + (s < extra) - (unscored if s else 0)
        spans.append((0 if s == 0 else seg - warm, seg, seg + scored))
        seg += scored
    return spans


def carry_chunks(n_tokens: int, context: int, chunk: int, prefix: bool = False, streams: int = 1,
                 first: int | None = None) -> list[Chunk]:
    """Chunks over a stream of ``n_tokens`` (``prefix``: each stream starts with the prefix
    token), in corpus order (stream by stream)."""
    if context < 2:
        raise CarryError(f"context must be at least 2 tokens, got {context}")
    if not 1 <= chunk <= context:
        raise CarryError(f"chunk must be between 1 and context ({context}), got {chunk}")
    first = context if first is None else first
    p = int(prefix)
    if not 1 + p <= first <= context:
        raise CarryError(f"first must be between {1 + p} and context ({context}), got {first}")
    if n_tokens < 2:
        raise CarryError(f"need at least 2 tokens to score, got {n_tokens}")
    if streams < 1:
        raise CarryError(f"streams must be at least 1, got {streams}")
    if streams > 1 and first < context - chunk + 1:
        raise CarryError(f"with several streams the first chunk must hold the warm-up: first >= "
                         f"{context - chunk + 1}, got {first}")
    spans = _stream_spans(n_tokens, context, chunk, p, streams)
    if spans is None:
        raise CarryError(f"{n_tokens} tokens are too few for {streams} streams with context {context} "
                         f"and chunk {chunk}: at most {max_streams(n_tokens, context, chunk, prefix)} "
                         f"fit (each later stream starts with {context - chunk} unscored warm-up slots)")
    keep = context - chunk
    chunks = []
    for s, (a, score_from, stop) in enumerate(spans):
        total = p + (stop - 1) - a  # input slots: the prefix, then text up to the last target's predecessor
        u, step, cached = 0, 0, 0
        while u < total:
            v = min(u + (first if step == 0 else chunk), total)
            begin, end = a + max(u - p, 0), a + v - p
            prefixed = bool(p) and u == 0
            chunks.append(Chunk(s, step, begin, end, max(begin + 1 - int(prefixed), score_from),
                                prefixed, u, cached))
            cached = min(keep, cached + v - u)
            u, step = v, step + 1
    return chunks


def max_streams(n_tokens: int, context: int, chunk: int, prefix: bool = False) -> int:
    """The most streams ``carry_chunks`` can cut ``n_tokens`` into: each later stream needs its
    warm-up and at least one scored token."""
    return max(1, n_tokens - 1 + int(prefix) - (context - chunk))


# -- the model's cache ------------------------------------------------------------------------
def _rope_types(config) -> set[str]:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    found = set()
    for value in [params, *params.values()] if isinstance(params, dict) else []:
        if isinstance(value, dict) and "rope_type" in value:
            found.add(value["rope_type"])
    return found


class Carrier:
    """Creates, trims and passes a model's cache for carried chunks."""

    def __init__(self, model: torch.nn.Module):
        config = model.config.get_text_config()
        model_type = getattr(model.config, "model_type", None)
        try:
            family = family_for(model_type).name
        except UnsupportedArchitecture:
            family = None
        if family not in SUPPORTED:
            why = f" ({REFUSED[family]})" if family in REFUSED else ""
            raise CarryError(f"the carry protocol does not support model_type {model_type!r}{why}; "
                             f"supported families: {', '.join(sorted(SUPPORTED))}. "
                             "Use --protocol rolling for this model")
        bad_rope = _rope_types(config) & set(LENGTH_DEPENDENT_ROPE)
        if bad_rope:
            raise CarryError(f"the carry protocol needs RoPE frequencies that do not depend on the "
                             f"sequence length; this model uses {', '.join(sorted(bad_rope))}. "
                             f"Use --protocol rolling for this model")
        self.model, self.family = model, family
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.takes_cache_position = "cache_position" in params
        self.new_cache()  # refuse a cache layout the trim does not handle before anything runs

    def new_cache(self):
        from transformers import DynamicCache, cache_utils

        # the layer types this trim handles (older transformers lack some of them)
        kinds = tuple(getattr(cache_utils, n) for n in ("DynamicLayer", "LinearAttentionCacheLayerMixin", "DummyLayer")
                      if hasattr(cache_utils, n))
        cache = DynamicCache(config=self.model.config)
        for i, layer in enumerate(cache.layers):
            ok = isinstance(layer, kinds)
            if not ok or getattr(layer, "is_sliding", False):
                raise CarryError(f"the carry protocol cannot trim cache layer {i} ({type(layer).__name__}: "
                                 "sliding-window or other special attention). Use --protocol rolling")
        return cache

    @staticmethod
    def trim(cache, keep: int) -> None:
        """Keep the last ``keep`` positions of every attention layer's KV cache; recurrent
        states are kept whole."""
        from transformers.cache_utils import DynamicLayer

        for layer in cache.layers:
            if isinstance(layer, DynamicLayer) and layer.is_initialized and layer.keys is not None:
                length = layer.keys.shape[-2]
                if keep == 0:  # empty again: an empty tensor keeps its batch size through a row selection
                    layer.keys = layer.values = None
                    layer.is_initialized = False
                elif length > keep:
                    layer.keys = layer.keys[..., length - keep:, :]
                    layer.values = layer.values[..., length - keep:, :]

    def forward_kwargs(self, cache, position: int, cached: int, batch: int, length: int,
                       device) -> dict:
        """Arguments of the model's forward for a chunk of ``length`` slots starting at stream
        position ``position``, with ``cached`` attention positions in the cache."""
        pos = torch.arange(position, position + length, device=device)
        kwargs = {self.cache_arg: cache, "position_ids": pos[None].expand(batch, -1), "use_cache": True}
        if self.takes_cache_position:
            kwargs["cache_position"] = torch.arange(cached, cached + length, device=device)
        return kwargs


def _select_rows(cache, rows: list[int], copy_first: bool):
    out = copy.deepcopy(cache) if copy_first else cache
    out.reorder_cache(torch.tensor(rows, device=_cache_device(cache)))
    return out


def _cache_device(cache):
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), *getattr(layer, "conv_states", {}).values()):
            if isinstance(t, torch.Tensor):
                return t.device
    return "cpu"


def score_carried(forward: CarriedForward, input_ids: torch.Tensor, chunks: list[Chunk],
                  model: torch.nn.Module, device: torch.device | str | None = None,
                  progress: Callable[[int], None] | None = None, prefix: int | None = None,
                  streams: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL (float64) and scored-token count for each chunk (as ``score_windows``).

    The streams of ``chunks`` run side by side, one batch row each, all sharing a step's
    forward while their inputs have the same length (a shorter last stream runs apart).
    ``streams``, when given, must match the layout. Only the logits of positions that predict a
    scored token are kept, reduced to NLLs before the next step runs.
    """
    nll, count = score_carried_multi(lambda ids, batch, keep, kws: [forward(ids, batch, keep, kws[0])], 1,
                                     input_ids, chunks, model, device, progress, prefix, streams)
    return nll[0], count


@torch.no_grad()
def score_carried_multi(forward, n: int, input_ids: torch.Tensor, chunks: list[Chunk],
                        model: torch.nn.Module, device: torch.device | str | None = None,
                        progress: Callable[[int], None] | None = None, prefix: int | None = None,
                        streams: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``score_carried`` for ``n`` lanes at once, each with a cache of its own (e.g. conditions):
    ``forward(ids, chunks, keep, kwargs)`` gets one forward-kwargs dict per lane and returns one
    logits tensor per lane (None: not scored). Summed NLL (n, chunks), NaN where not scored."""
    carrier = Carrier(model)
    device = device if device is not None else next(model.parameters()).device
    input_ids = torch.as_tensor(input_ids, dtype=torch.long).flatten()
    if any(c.prefixed for c in chunks) != (prefix is not None):
        raise CarryError("the chunks were laid out " + ("with" if prefix is None else "without")
                         + " a prefix token but prefix is " + ("None" if prefix is None else str(prefix)))
    by_stream: dict[int, list[int]] = {}
    for i, c in enumerate(chunks):
        by_stream.setdefault(c.stream, []).append(i)
    order = sorted(by_stream)
    if streams is not None and streams != len(order):
        raise CarryError(f"streams={streams} but the chunks hold {len(order)} stream(s)")
    nll = np.full((n, len(chunks)), np.nan, dtype=np.float64)
    count = np.array([c.n_scored for c in chunks], dtype=np.int64)
    groups = [(order, [carrier.new_cache() for _ in range(n)])]  # streams sharing caches, with them
    step = 0
    while groups:
        next_groups = []
        for rows, caches in groups:
            live = [s for s in rows if step < len(by_stream[s])]
            parts: dict[tuple, list[int]] = {}
            for s in live:
                c = chunks[by_stream[s][step]]
                parts.setdefault((c.n_inputs, c.position, c.cached), []).append(s)
            for part in parts.values():
                if part != rows:  # rows leave or split: their own caches from here on
                    caches_part = [_select_rows(cache, [rows.index(s) for s in part], len(parts) > 1)
                                   for cache in caches]
                else:
                    caches_part = caches
                idx = [by_stream[s][step] for s in part]
                _run_step(forward, carrier, caches_part, input_ids, chunks, idx, device, prefix, nll)
                following = [chunks[by_stream[s][step + 1]].cached for s in part
                             if step + 1 < len(by_stream[s])]
                if following:
                    for cache in caches_part:
                        carrier.trim(cache, max(following))
                    next_groups.append((part, caches_part))
                if progress:
                    progress(int(count[idx].sum()) * n)
        groups, step = next_groups, step + 1
    return nll, count


def _run_step(forward, carrier, caches, input_ids, chunks, idx, device, prefix, nll) -> None:
    batch = [chunks[i] for i in idx]
    head = batch[0]
    ids = torch.stack([input_ids[c.begin:c.end] for c in batch])
    if head.prefixed:
        ids = torch.cat([torch.full((len(batch), 1), prefix, dtype=ids.dtype), ids], dim=1)
    ids = ids.to(device)
    keep = max(c.n_scored for c in batch)
    kwargs = [carrier.forward_kwargs(cache, head.position, head.cached, len(batch), ids.shape[1], ids.device)
              for cache in caches]
    for lane, logits in enumerate(forward(ids, batch, keep, kwargs)):
        if logits is None:
            continue
        offset = logits.shape[1] - keep  # forward may return more positions than asked
        for row, (i, c) in enumerate(zip(idx, batch)):
            pred = logits[row, offset + keep - c.n_scored:].float()
            target = input_ids[c.score_from:c.end + 1].to(pred.device)
            # per-token NLL in float32, summed in float64 on the CPU (float64 is not on every device)
            nll[lane, i] = F.cross_entropy(pred, target, reduction="none").cpu().double().sum().item()


def plain_forward(model: torch.nn.Module) -> CarriedForward:
    def forward(ids, _chunks, keep, kwargs):
        return model(input_ids=ids, logits_to_keep=keep, **kwargs).logits
    return forward


def carry_perplexity(model: torch.nn.Module, input_ids: torch.Tensor, context: int = 512,
                     chunk: int = 256, streams: int = 1, forward: CarriedForward | None = None,
                     prefix: int | None = None, n_bytes: int | None = None) -> PerplexityResult:
    """Perplexity of ``model`` (or of ``forward``) over a 1-D token stream with carried state."""
    input_ids = torch.as_tensor(input_ids, dtype=torch.long).flatten()
    chunks = carry_chunks(len(input_ids), context, chunk, prefix=prefix is not None, streams=streams)
    nll, count = score_carried(forward or plain_forward(model), input_ids, chunks, model, prefix=prefix)
    return PerplexityResult(loss=float(nll.sum() / count.sum()), n_tokens=int(count.sum()),
                            n_bytes=n_bytes, window_nll=nll, window_tokens=count)
