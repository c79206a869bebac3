"""Perplexity against the model's own loss and an independent NumPy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.evaluate.perplexity import perplexity, rolling_windows, safe_exp
from workbench.loading import load_model


@pytest.fixture(scope="module")
def model():
    return load_model("random:qwen2").model


def _stream(n, seed=0):
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed))


def test_single_window_equals_labels_loss(model):
    ids = _stream(40)
    res = perplexity(model, ids, context=64, stride=32)
    with torch.no_grad():
        ref = model(input_ids=ids[None], labels=ids[None]).loss.item()
    assert res.n_tokens == 39
    assert res.loss == pytest.approx(ref, abs=1e-5)
    assert res.perplexity == pytest.approx(math.exp(ref), rel=1e-5)


def _numpy_rolling(model, ids, context, stride):
    """Direct re-implementation of the documented protocol, log-softmax in NumPy.

    Token p (p >= 1) is predicted from the tokens of its window before p: for p < context the
    window is [0, context); later tokens belong to chunks of ``stride`` tokens, each predicted
    from the ``context`` tokens ending at the chunk's end (at least one token before the chunk).
    """
    ids = ids.numpy()
    n = len(ids)
    total, count = 0.0, 0
    chunks = [(1, min(context, n), 0)]
    while chunks[-1][1] < n:
        s = chunks[-1][1]
        e = min(s + stride, n)
        b = max(0, e - context)
        if b > s - 1:
            b, e = s - 1, min(s - 1 + context, n)
        chunks.append((s, e, b))
    for s, e, b in chunks:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(ids[None, b:e])).logits[0].double().numpy()
        logp = logits - logits.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        for pos in range(s, e):
            total -= logp[pos - b - 1, ids[pos]]
            count += 1
    return total / count, count


@pytest.mark.parametrize("context,stride,batch", [(16, 8, 3), (16, 16, 1), (20, 7, 4)])
def test_rolling_matches_numpy(model, context, stride, batch):
    ids = _stream(101, seed=context + stride)
    res = perplexity(model, ids, context=context, stride=stride, batch_size=batch)
    ref, count = _numpy_rolling(model, ids, context, stride)
    assert res.n_tokens == count == 100
    assert res.loss == pytest.approx(ref, abs=1e-5)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 400), context=st.integers(2, 64), data=st.data())
def test_every_token_after_the_first_scored_once(n, context, data):
    stride = data.draw(st.integers(1, context))
    seen = np.zeros(n, dtype=int)
    for w in rolling_windows(n, context, stride):
        assert w.end - w.begin <= context and w.begin < w.score_from <= w.end
        seen[w.score_from:w.end] += 1
    assert seen[0] == 0 and (seen[1:] == 1).all()


def test_bad_protocol_is_rejected():
    with pytest.raises(ValueError, match="stride"):
        rolling_windows(100, 16, 0)
    with pytest.raises(ValueError, match="stride"):
        rolling_windows(100, 16, 17)
    with pytest.raises(ValueError, match="at least 2"):
        rolling_windows(1, 16, 8)


def test_overflow_is_inf_not_clipped():
    assert safe_exp(800.0) == math.inf
    assert safe_exp(20.5) == pytest.approx(math.exp(20.5))


def test_bits_per_byte_identity(model):
    ids = _stream(60)
    res = perplexity(model, ids, context=32, stride=16, n_bytes=120)
    assert res.bits_per_byte == pytest.approx(res.loss * res.n_tokens / (math.log(2) * 120))
