"""Carried-state perplexity against one forward of the same tokens.

Within the context, carrying the cache over chunks must equal a single long forward. Beyond it,
it must equal one forward with an explicit band mask: attention rows see what the trimmed cache
holds, recurrent mixers see the whole stream. The models are tiny random ones made sensitive on
purpose (larger weights, slowly decaying recurrent states, Falcon-H1's logits unscaled), so that
a lost state or a wrong trim shows; the negative controls check that it does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from workbench.architectures import family_for, random_model
from workbench.evaluate import carry
from workbench.evaluate.carry import (SUPPORTED, Carrier, CarryError, carry_chunks, carry_perplexity,
                                      max_streams, plain_forward, score_carried)
from workbench.interventions import Intervener
from workbench.plans import Condition, Target

# one model_type per supported family
FAMILIES = ["bamba", "falcon_h1", "granitemoehybrid", "lfm2", "llama", "nemotron_h", "qwen2", "qwen3_5",
            "qwen3_next", "zamba2"]
RECURRENT = [f for f in FAMILIES if f not in ("llama", "qwen2")]
_models: dict[str, torch.nn.Module] = {}


def sensitive(model_type: str) -> torch.nn.Module:
    """A tiny random model whose recurrent states and attention matter to its predictions."""
    if model_type not in _models:
        from transformers import AutoModelForCausalLM

        config = family_for(model_type).tiny_config()
        config.initializer_range = 0.1
        if model_type == "falcon_h1":
            config.lm_head_multiplier = 1.0
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("A_log"):  # decay exp(-exp(A_log) * dt) per token: slow
                    p.fill_(-3.0)
                elif name.endswith("dt_bias"):
                    p.fill_(-1.0)
        _models[model_type] = model
    return _models[model_type]


def _ids(n, seed=0):
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed))


def token_nll(model, ids, chunks, prefix=None, forward=None):
    """Per-target NLL from score_carried's forward calls (targets never scored stay NaN), and
    score_carried's own per-chunk sums."""
    out = np.full(len(ids), np.nan)
    inner = forward or plain_forward(model)

    def fwd(x, batch, keep, kwargs):
        logits = inner(x, batch, keep, kwargs)
        for row, c in enumerate(batch):
            t = slice(c.score_from, c.end + 1)
            out[t] = F.cross_entropy(logits[row, -c.n_scored:].float(), ids[t], reduction="none").numpy()
        return logits

    nll, count = score_carried(fwd, ids, chunks, model, prefix=prefix)
    return out, nll, count


def slots_of(ids, chunks, prefix):
    """Each stream's input slots (prefix token, then text), in order."""
    slots: dict[int, list[int]] = {}
    for c in chunks:
        slots.setdefault(c.stream, []).extend(([prefix] if c.prefixed else []) + ids[c.begin:c.end].tolist())
    return slots


def band_mask(chunks, stream, length):
    """Additive 4-D mask: slot j of a chunk sees the ``cached`` slots before the chunk and the
    chunk's own slots up to j."""
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for c in chunks:
        if c.stream == stream:
            for j in range(c.position, c.position + c.n_inputs):
                allowed[j, c.position - c.cached:j + 1] = True
    return torch.zeros(1, 1, length, length).masked_fill(~allowed, torch.finfo(torch.float32).min)


def band_nll(model, ids, chunks, prefix=None, run=None):
    """Per-target NLL of one banded forward per stream (``run(ids, mask)`` -> logits)."""
    run = run or (lambda x, mask: model(input_ids=x, attention_mask=mask, use_cache=False).logits)
    out = np.full(len(ids), np.nan)
    for s, slots in slots_of(ids, chunks, prefix).items():
        with torch.no_grad():
            logits = run(torch.tensor([slots]), band_mask(chunks, s, len(slots)))[0]
        for c in (c for c in chunks if c.stream == s):
            last = c.position + c.n_inputs
            t = slice(c.score_from, c.end + 1)
            out[t] = F.cross_entropy(logits[last - c.n_scored:last], ids[t], reduction="none").numpy()
    return out


def long_nll(model, ids, prefix=None):
    x = ids if prefix is None else torch.cat([torch.tensor([prefix]), ids])
    with torch.no_grad():
        logits = model(input_ids=x[None], use_cache=False).logits[0]
    out = np.full(len(ids), np.nan)
    if prefix is None:
        out[1:] = F.cross_entropy(logits[:-1], ids[1:], reduction="none").numpy()
    else:
        out[:] = F.cross_entropy(logits[:-1], ids, reduction="none").numpy()
    return out


def close(a, b):
    assert np.array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-5, atol=1e-6)


# -- layout ------------------------------------------------------------------------------------
def test_layout_is_pinned():
    got = [(c.stream, c.step, c.begin, c.end, c.score_from, c.prefixed, c.position, c.cached)
           for c in carry_chunks(20, context=4, chunk=2, streams=3)]
    assert got == [(0, 0, 0, 4, 1, False, 0, 0), (0, 1, 4, 6, 5, False, 4, 2), (0, 2, 6, 8, 7, False, 6, 2),
                   (1, 0, 6, 10, 9, False, 0, 0), (1, 1, 10, 12, 11, False, 4, 2),
                   (1, 2, 12, 14, 13, False, 6, 2),
                   (2, 0, 12, 16, 15, False, 0, 0), (2, 1, 16, 18, 17, False, 4, 2),
                   (2, 2, 18, 19, 19, False, 6, 2)]
    got = [(c.begin, c.end, c.score_from, c.prefixed) for c in carry_chunks(10, 4, 2, prefix=True)]
    assert got == [(0, 3, 0, True), (3, 5, 4, False), (5, 7, 6, False), (7, 9, 8, False)]


@settings(max_examples=300, deadline=None)
@given(n=st.integers(2, 300), context=st.integers(2, 40), prefix=st.booleans(), data=st.data())
def test_layout_scores_every_token_once(n, context, prefix, data):
    chunk = data.draw(st.integers(1, context))
    streams = data.draw(st.integers(1, 4))
    first = data.draw(st.one_of(st.none(), st.integers(1 + prefix, context)))
    if streams > 1:
        first = None
    assume(streams <= max_streams(n, context, chunk, prefix))
    chunks = carry_chunks(n, context, chunk, prefix=prefix, streams=streams, first=first)
    seen = np.zeros(n, dtype=int)
    for k, c in enumerate(chunks):
        seen[c.score_from:c.end + 1] += 1
        assert c.n_scored >= 1 and c.cached + c.n_inputs <= context
        assert c.n_inputs <= ((first or context) if c.step == 0 else chunk)
        assert c.prefixed == (prefix and c.step == 0)
        if c.step:
            prev = chunks[k - 1]
            assert (prev.stream, prev.end, prev.position + prev.n_inputs) == (c.stream, c.begin, c.position)
            assert c.cached == min(context - chunk, prev.cached + prev.n_inputs)
        for t in range(c.score_from, c.end + 1):  # left context of each target
            slot = c.position + c.n_inputs - (c.end + 1 - t)
            seen_tokens = c.cached + slot - c.position + 1
            assert min(context - chunk + 1, slot + 1) <= seen_tokens <= context
    assert (seen[:1 - prefix] == 0).all() and (seen[1 - prefix:] == 1).all()
    assert len({c.stream for c in chunks}) == streams
    # streams run in lockstep: at each step their inputs differ by at most one slot
    for step in {c.step for c in chunks}:
        sizes = [c.n_inputs for c in chunks if c.step == step]
        assert max(sizes) - min(sizes) <= 1


def test_max_streams_is_the_limit():
    for n, context, chunk, prefix in [(20, 4, 2, False), (20, 4, 2, True), (300, 16, 6, False)]:
        m = max_streams(n, context, chunk, prefix)
        carry_chunks(n, context, chunk, prefix=prefix, streams=m)
        with pytest.raises(CarryError, match=f"at most {m} fit"):
            carry_chunks(n, context, chunk, prefix=prefix, streams=m + 1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_tokens=100, context=16, chunk=0), "chunk must be between"),
    (dict(n_tokens=100, context=16, chunk=17), "chunk must be between"),
    (dict(n_tokens=100, context=1, chunk=1), "context must be at least 2"),
    (dict(n_tokens=1, context=16, chunk=8), "at least 2 tokens"),
    (dict(n_tokens=100, context=16, chunk=8, streams=0), "streams must be at least 1"),
    (dict(n_tokens=100, context=16, chunk=8, first=17), "first must be between"),
    (dict(n_tokens=100, context=16, chunk=8, streams=2, first=4), "first chunk must hold the warm-up"),
])
def test_bad_layout_is_rejected(kwargs, match):
    with pytest.raises(CarryError, match=match):
        carry_chunks(**kwargs)


# -- against one forward -----------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_carry_equals_one_forward_within_context(family):
    """Every chunking of a text that fits the context gives the long forward's NLLs (so the
    chunk sizes give identical results), whether inputs come one at a time or several."""
    model, ids = sensitive(family), _ids(40)
    ref = long_nll(model, ids)
    for chunk, first in [(8, 8), (5, 3), (1, 1), (16, 40)]:
        got, nll, count = token_nll(model, ids, carry_chunks(40, 64, chunk, first=first))
        close(got, ref)
        assert count.sum() == 39
        np.testing.assert_allclose(nll.sum(), np.nansum(ref), rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_carry_equals_band_mask_beyond_context(family):
    model, ids = sensitive(family), _ids(90, seed=1)
    for streams, prefix in [(1, None), (3, None), (2, 1)]:
        chunks = carry_chunks(90, 16, 6, prefix=prefix is not None, streams=streams)
        got, _, _ = token_nll(model, ids, chunks, prefix)
        close(got, band_nll(model, ids, chunks, prefix))
    if family in ("qwen2", "falcon_h1"):  # chunk == context: attention keeps nothing between chunks
        chunks = carry_chunks(90, 8, 8, streams=3)
        close(token_nll(model, ids, chunks)[0], band_nll(model, ids, chunks))
    # the trim matters: the full-attention forward is measurably different
    chunks = carry_chunks(90, 16, 6)
    got, _, _ = token_nll(model, ids, chunks)
    assert np.nanmax(np.abs(got - long_nll(model, ids))) > 1e-3


@pytest.mark.parametrize("family", RECURRENT)
def test_a_lost_state_is_detected(family, monkeypatch):
    """Negative control: zeroing the carried conv and recurrent states between chunks changes the
    NLLs, so the equalities above do test the carried state."""
    model, ids = sensitive(family), _ids(40)
    chunks = carry_chunks(40, 64, 8, first=8)
    kept, _, _ = token_nll(model, ids, chunks)
    trim = Carrier.trim

    def forgetful(cache, keep):
        trim(cache, keep)
        for layer in cache.layers:
            for states in (getattr(layer, "conv_states", {}), getattr(layer, "recurrent_states", {})):
                for t in states.values():
                    if t is not None:
                        t.zero_()

    monkeypatch.setattr(Carrier, "trim", staticmethod(forgetful))
    lost, _, _ = token_nll(model, ids, chunks)
    assert np.nanmax(np.abs(kept - lost)) > 1e-3


def test_prefix_token_starts_the_first_chunk():
    model, ids = sensitive("qwen3_5"), _ids(40)
    chunks = carry_chunks(40, 64, 8, prefix=True, first=8)
    assert chunks[0].prefixed and not any(c.prefixed for c in chunks[1:])
    assert chunks[0].score_from == 0  # the first text token is predicted from the prefix
    got, _, count = token_nll(model, ids, chunks, prefix=7)
    close(got, long_nll(model, ids, prefix=7))
    assert count.sum() == 40
    with pytest.raises(CarryError, match="prefix"):
        score_carried(plain_forward(model), ids, chunks, model)
    with pytest.raises(CarryError, match="prefix"):
        score_carried(plain_forward(model), ids, carry_chunks(40, 64, 8), model, prefix=7)


@pytest.mark.parametrize("prefix", [None, 3])
def test_streams_equal_scoring_each_segment_alone(prefix):
    model, ids = sensitive("falcon_h1"), _ids(100, seed=2)
    chunks = carry_chunks(100, 16, 6, prefix=prefix is not None, streams=3)
    assert len({c.n_inputs for c in chunks if c.stream == 2}) > 1  # ragged ends are covered
    _, together, count = token_nll(model, ids, chunks, prefix)
    for s in range(3):
        idx = [i for i, c in enumerate(chunks) if c.stream == s]
        alone, _ = score_carried(plain_forward(model), ids, [chunks[i] for i in idx], model, prefix=prefix)
        np.testing.assert_allclose(together[idx], alone, rtol=1e-5)
    assert count.sum() == 100 - (prefix is None)
    with pytest.raises(CarryError, match="streams=2 but the chunks hold 3"):
        score_carried(plain_forward(model), ids, chunks, model, prefix=prefix, streams=2)


def test_carry_perplexity_result():
    model, ids = sensitive("qwen2"), _ids(90)
    res = carry_perplexity(model, ids, context=16, chunk=6)
    chunks = carry_chunks(90, 16, 6)
    assert res.n_tokens == 89 and len(res.window_nll) == len(chunks)
    assert res.loss == pytest.approx(np.nanmean(band_nll(model, ids, chunks)), rel=1e-5)


# -- families ----------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type,why", [("gemma3_text", "sliding-window"), ("jamba", "zero state")])
def test_unsupported_family_is_refused(model_type, why):
    model, _ = random_model(model_type)
    with pytest.raises(CarryError, match=why) as err:
        score_carried(plain_forward(model), _ids(20), carry_chunks(20, 8, 4), model)
    assert "--protocol rolling" in str(err.value)
    assert ", ".join(sorted(SUPPORTED)) in str(err.value)


def test_model_outside_the_workbench_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64))
    with pytest.raises(CarryError, match="model_type 'gpt2'.*--protocol rolling"):
        Carrier(model)


def test_length_dependent_rope_is_refused():
    from transformers import AutoModelForCausalLM

    config = family_for("qwen2").tiny_config()
    config.rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(CarryError, match="dynamic"):
        Carrier(AutoModelForCausalLM.from_config(config))


def test_every_supported_family_exists():
    from workbench.architectures import families

    names = {f.name for f in families().values()}
    assert set(SUPPORTED) <= names and set(carry.REFUSED) <= names
    assert {family_for(f).name for f in FAMILIES} == set(SUPPORTED)


# -- ablations through the Intervener ----------------------------------------------------------
def _intervened(iv, condition, fired, **run_kw):
    def forward(ids, _chunks, keep, kwargs):
        out = iv.run(ids, condition, keep=keep, forward_kwargs=kwargs, **run_kw)
        fired.append(out.fired)
        return out.logits
    return forward


@pytest.mark.parametrize("family,role,layer,mode", [
    ("qwen3_5", "linear_attention", 1, "zero"), ("qwen3_5", "attention", 3, "zero"),
    ("qwen3_5", "layer", 2, "skip_layer"), ("qwen3_5", "linear_attention", 2, "mean"),
    ("falcon_h1", "ssm", 2, "zero"), ("falcon_h1", "attention", 1, "zero"), ("qwen2", "mlp", 0, "zero"),
])
def test_ablation_with_a_cache_equals_one_ablated_forward(family, role, layer, mode):
    model, ids = sensitive(family), _ids(40)
    iv = Intervener(model)
    cond = Condition(targets=(Target(layer=layer, role=role),), mode=mode)
    kw = {"means": {f"{role}@{layer}": torch.randn(model.config.hidden_size)}} if mode == "mean" else {}
    fired: list = []
    chunks = carry_chunks(40, 64, 8, first=8)
    got, _, _ = token_nll(model, ids, chunks, forward=_intervened(iv, cond, fired, **kw))
    assert fired == [[f"{role}@{layer}"]] * len(chunks)  # the edit fired in every chunk
    logits = iv.run(ids[None], cond, **kw).logits[0]
    ref = np.full(40, np.nan)
    ref[1:] = F.cross_entropy(logits[:-1], ids[1:], reduction="none").numpy()
    close(got, ref)
    assert np.nanmax(np.abs(ref - long_nll(model, ids))) > 1e-3  # the ablation changed something


def test_ablation_with_a_cache_beyond_context_equals_banded_ablation():
    model, ids = sensitive("qwen3_5"), _ids(90, seed=3)
    iv = Intervener(model)
    cond = Condition(targets=(Target(layer=0, role="linear_attention"), Target(layer=3, role="attention")),
                     mode="zero")
    chunks = carry_chunks(90, 16, 6, streams=2)
    got, _, _ = token_nll(model, ids, chunks, forward=_intervened(iv, cond, []))
    ref = band_nll(model, ids, chunks, run=lambda x, mask: iv.run(
        x, cond, forward_kwargs={"attention_mask": mask, "use_cache": False}).logits)
    close(got, ref)
