"""Retrieval accuracy and induction scores on hand-built models and attention patterns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes.retrieval import induction_scores, repeated_sequences, retrieval_accuracy


def test_repeated_sequences():
    ids = repeated_sequences(50, n_seq=4, length=10, seed=1, exclude=[0, 1, 2])
    assert ids.shape == (4, 20) and ids.dtype == np.int64
    np.testing.assert_array_equal(ids[:, :10], ids[:, 10:])
    assert ids.min() >= 3 and ids.max() < 50
    assert all(len(set(row[:10])) == 10 for row in ids)
    np.testing.assert_array_equal(ids, repeated_sequences(50, 4, 10, seed=1, exclude=[0, 1, 2]))
    assert not np.array_equal(ids, repeated_sequences(50, 4, 10, seed=2, exclude=[0, 1, 2]))
    with pytest.raises(ValueError, match="exceeds"):
        repeated_sequences(10, 1, 9, exclude=[0, 1])


def copying_logits(ids, vocab, prefix=0):
    """A "model" that predicts at position p the token after p's earlier occurrence."""
    n, t = ids.shape
    length = t // 2
    logits = np.random.default_rng(0).normal(size=(n, prefix + t, vocab))
    for p in range(length, t - 1):
        logits[np.arange(n), prefix + p, ids[:, p - length + 1]] += 100.0
    return logits


def test_retrieval_accuracy():
    vocab = 40
    ids = repeated_sequences(vocab, 8, 12, seed=0)
    assert retrieval_accuracy(copying_logits(ids, vocab), ids) == 1.0
    bos = copying_logits(ids, vocab, prefix=1)
    assert retrieval_accuracy(torch.from_numpy(bos).bfloat16(), ids, prefix=1) == 1.0
    many = repeated_sequences(vocab, 400, 12, seed=1)
    rand = np.random.default_rng(1).normal(size=(400, 24, vocab))
    assert retrieval_accuracy(rand, many) == pytest.approx(1 / vocab, abs=0.01)
    with pytest.raises(ValueError, match="repeated twice"):
        retrieval_accuracy(rand, np.random.default_rng(0).integers(0, vocab, size=(400, 24)))
    with pytest.raises(ValueError, match="logits must be"):
        retrieval_accuracy(rand[:, :-1], many)


def induction_pattern(batch, heads, length, prefix=0):
    t = prefix + 2 * length
    a = np.zeros((batch, heads, t, t))
    a[..., np.arange(t), 0] = 1.0  # default: attend to the first position
    for i in range(length):
        q = prefix + length + i
        a[:, 0, q, :] = 0.0
        a[:, 0, q, prefix + i + 1] = 1.0  # head 0 is a perfect induction head
    return a


def test_induction_scores():
    a = induction_pattern(2, 3, 6)
    s = induction_scores(a)
    assert s.dims == ("head",) and s.name == "induction_score"
    np.testing.assert_allclose(s.values, [1.0, 0.0, 0.0])
    k = 12
    uniform = np.full((2, 3, 12, k), 1.0 / k)
    np.testing.assert_allclose(induction_scores(uniform).values, 1.0 / k)
    pb = induction_pattern(2, 2, 5, prefix=1)
    np.testing.assert_allclose(induction_scores(torch.from_numpy(pb), prefix=1).values, [1.0, 0.0])
    layers = induction_scores({3: a, 7: uniform})
    assert layers.dims == ("layer", "head") and list(layers.layer.values) == [3, 7]
    np.testing.assert_allclose(layers.sel(layer=3).values, [1.0, 0.0, 0.0])
    stacked = induction_scores(np.stack([a, uniform]))
    np.testing.assert_allclose(stacked.values, layers.values)
    with pytest.raises(ValueError, match="not two copies"):
        induction_scores(a[:, :, :-1, :-1])
    with pytest.raises(ValueError, match=r"\(batch, head, q, k\)"):
        induction_scores(a[0, 0])
