"""Multiple choice scored from each context's cache against per-choice scoring.

Tiny random models made sensitive (as in test_carry.py: larger weights, slowly decaying
recurrent states), so that a choice continuing from a lost or wrong state scores differently;
the negative control checks that it does. Sums agree to 1e-5 plus 1e-6 relative: float32
rounding (summed over a long choice's tokens, e.g. 2.3e-5 on -37 nats) differs between a scan
split at the context's end and one that is not, as per-choice scoring's own sums move with
the batch they share (benchmarks/results/tasks.md).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from workbench.architectures import family_for
from workbench.evaluate import multiple_choice as mc
from workbench.evaluate import shared_context
from workbench.evaluate.carry import SUPPORTED
from workbench.evaluate.multiple_choice import Request
from workbench.interventions import Intervener
from workbench.plans import Condition, Target

# one model_type per family the carry protocol supports
FAMILIES = ["bamba", "falcon_h1", "granitemoehybrid", "lfm2", "llama", "nemotron_h", "qwen2", "qwen3_5",
            "qwen3_next", "zamba2"]
_models: dict[str, torch.nn.Module] = {}


def sensitive(model_type: str) -> torch.nn.Module:
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
                if name.endswith("A_log"):
                    p.fill_(-3.0)
                elif name.endswith("dt_bias"):
                    p.fill_(-1.0)
        _models[model_type] = model
    return _models[model_type]


def requests(seed: int = 0) -> list[Request]:
    """Items with contexts of several lengths (two of the same length, one shared by two items),
    2-4 choices of 1-6 tokens each."""
    g = np.random.default_rng(seed)
    lengths = [9, 5, 5, 12, 3]
    contexts = [tuple(int(x) for x in g.integers(1, 250, n)) for n in lengths]
    contexts.append(contexts[1])  # another item with the same context
    out = []
    for item, ctx in enumerate(contexts):
        for c in range(int(g.integers(2, 5))):
            cont = tuple(int(x) for x in g.integers(1, 250, 1 if c == 0 else int(g.integers(1, 7))))
            out.append(Request(0, item, c, ctx, cont))
    return out


def per_choice(forward, reqs, **kw):
    return mc.score_requests_multi(lambda ids, r: [forward(ids, r)], 1, reqs, **kw)[0]


def shared(cached, reqs, **kw):
    return mc.score_requests_multi(lambda ids, r: pytest.fail("scored per choice"), 1, reqs, cached=cached, **kw)[0]


def test_every_carry_family_is_covered():
    assert sorted({family_for(f).name for f in FAMILIES}) == sorted(SUPPORTED)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_context_equals_per_choice(family):
    model, reqs = sensitive(family), requests()
    ref = per_choice(mc.plain_forward(model), reqs, batch_size=4)
    seen = []
    inner = mc.plain_cached(model)

    def forward(ids, keep, kwargs):
        seen.append((tuple(ids.shape), keep))
        return inner.forward(ids, keep, kwargs)

    got = shared(shared_context.Cached(model, forward), reqs, batch_size=2)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)
    assert np.isfinite(got).all()
    # batches of contexts 12 and 9 long, 5 and 5, then 3: their common prefixes once per context,
    # then their choices, at most 2 a forward
    assert [s for s, keep in seen if keep == 1] == [(2, 8), (2, 4), (1, 2)]
    assert [s[0] for s, keep in seen if keep == 0] == [2, 2, 2, 2, 2, 2, 2, 1, 2, 1]
    assert sum(s[0] * s[1] for s, _ in seen) < sum(len(r.input_ids) for r in reqs)


@pytest.mark.parametrize("family", ["qwen3_5", "falcon_h1", "lfm2"])
def test_a_lost_recurrent_state_is_detected(family, monkeypatch):
    """The negative control: choices continuing from a cache whose recurrent states were reset."""
    model, reqs = sensitive(family), requests()
    ref = per_choice(mc.plain_forward(model), reqs, batch_size=4)
    def forgetful(cache):
        out = copy.deepcopy(cache)
        for layer in out.layers:
            for states in (getattr(layer, "conv_states", {}), getattr(layer, "recurrent_states", {})):
                for t in states.values():
                    if isinstance(t, torch.Tensor):
                        t.zero_()
        return out

    monkeypatch.setattr(shared_context, "own_copy", forgetful)
    got = shared(mc.plain_cached(model), reqs, batch_size=2)
    assert np.nanmax(np.abs(got - ref)) > 1e-3


def _intervened(iv, cond, fired, **kw):
    def forward(ids, keep, kwargs):
        out = iv.run(ids, cond, keep=keep, forward_kwargs=kwargs[0], **kw)
        fired.append(out.fired)
        return [out.logits]
    return shared_context.Cached(iv.model, forward)


@pytest.mark.parametrize("family,role,layer,mode", [
    ("qwen3_5", "linear_attention", 0, "zero"), ("qwen3_5", "attention", 3, "mean"),
    ("qwen3_5", "layer", 1, "skip_layer"), ("falcon_h1", "ssm", 1, "mean"), ("falcon_h1", "layer", 0, "skip_layer"),
    ("falcon_h1", "attention", 1, "zero"), ("qwen2", "mlp", 0, "zero"), ("lfm2", "conv", 0, "zero"),
])
def test_ablated_shared_context_equals_ablated_per_choice(family, role, layer, mode):
    model, reqs = sensitive(family), requests(1)
    iv = Intervener(model)
    cond = Condition(targets=(Target(layer=layer, role=role),), mode=mode)
    kw = {"means": {f"{role}@{layer}": torch.randn(model.config.hidden_size)}} if mode == "mean" else {}
    ref = per_choice(lambda ids, _r: iv.run(ids, cond, **kw).logits, reqs, batch_size=4)
    fired: list = []
    got = shared(_intervened(iv, cond, fired, **kw), reqs, batch_size=3)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)
    assert fired and all(f == [f"{role}@{layer}"] for f in fired)  # the edit fired in every forward
    clean = per_choice(mc.plain_forward(model), reqs, batch_size=4)
    assert np.abs(ref - clean).max() > 1e-3  # the ablation changed something


def test_refused_family_falls_back_to_per_choice():
    """Jamba's Mamba path restarts multi-token inputs from a zero state: scored per choice."""
    model = sensitive("jamba")
    reqs = requests()
    assert "jamba" in shared_context.refusal(model)
    calls = []
    fwd = mc.plain_forward(model)

    def counted(ids, r):
        calls.append(ids.shape)
        return fwd(ids, r)

    got = mc.score_requests_multi(lambda ids, r: [counted(ids, r)], 1, reqs, batch_size=4,
                                  cached=mc.plain_cached(model))[0]
    assert sum(s[0] for s in calls) == len(reqs)  # every choice with its context
    np.testing.assert_allclose(got, per_choice(fwd, reqs, batch_size=4), rtol=0, atol=1e-6)


def test_truncated_items_fall_back_to_per_choice():
    """An item one of whose choices max_length would cut is scored per choice, whole; the rest shared."""
    model, reqs = sensitive("qwen2"), requests()
    longest = max(reqs, key=lambda r: len(r.input_ids))
    limit = len(longest.input_ids) - 1
    fwd = mc.plain_forward(model)
    ref = per_choice(fwd, reqs, batch_size=4, max_length=limit)
    per_rows = []
    got = mc.score_requests_multi(lambda ids, r: (per_rows.extend(r), [fwd(ids, r)])[1], 1, reqs, batch_size=4,
                                  max_length=limit, cached=mc.plain_cached(model))[0]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-5)
    assert {r.context for r in per_rows} == {longest.context}
    assert sorted(per_rows, key=lambda r: r.choice) == [r for r in reqs if r.context == longest.context]


def test_forward_tokens_and_batches():
    reqs = requests()
    contexts = {r.context for r in reqs}
    batches = shared_context.context_batches(reqs, 2)
    assert [[len(c) for c in b] for b in batches] == [[12, 9], [5, 5], [3]]  # lengths within 8, 2 a batch
    assert sorted(c for b in batches for c in b) == sorted(contexts)
    assert [[len(c) for c in b] for b in shared_context.context_batches(reqs, 4)] == [[12, 9, 5, 5], [3]]
    # a batch's shortest length but one runs once per context, the rest with each choice
    common = {c: len(b[-1]) - 1 for b in batches for c in b}
    n_shared = shared_context.forward_tokens(reqs, 2)
    assert n_shared == (sum(common.values())
                        + sum(len(r.context) - common[r.context] + len(r.continuation) - 1 for r in reqs))
    assert n_shared < sum(len(r.input_ids) for r in reqs)


def test_score_tasks_shared_equals_per_choice():
    """Through score_tasks: lm-eval tokenisation, the prefix token, padding across tasks."""
    from workbench.architectures import random_model
    from workbench.tasks import get_tasks

    _, tok = random_model("qwen2")
    model = sensitive("qwen2")
    tasks = get_tasks()[:2]
    items = [t.items()[:4] for t in tasks]
    fwd = mc.plain_forward(model)
    ref = mc.score_tasks(fwd, tok, tasks, items, batch_size=8)
    got = mc.score_tasks(lambda ids, r: pytest.fail("scored per choice"), tok, tasks, items, batch_size=8,
                         cached=mc.plain_cached(model))
    np.testing.assert_allclose(got.loglik.values, ref.loglik.values, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(got.correct.values, ref.correct.values)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen3_5_text", "falcon_h1"])
def test_run_plan_shared_context_equals_per_choice(tmp_path, family, monkeypatch):
    """The runner scores tasks from shared contexts by default (naive loop and fast path, resample
    groups per choice) and writes what per-choice scoring (``shared_context=False``) writes."""
    from workbench import plans
    from workbench.corpora import load_corpus
    from workbench.loading import load_model
    from workbench.runner import Protocol, run_plan
    from workbench.tasks import get_tasks

    loaded = load_model(f"random:{family}")
    cmap = Intervener(loaded.model).cmap
    conds = [c for mode in ("zero", "mean", "skip_layer", "resample")
             for c in plans.resolve(plans.auto_spec(cmap, "sweep", mode=mode), cmap).conditions]
    conds = list({c.id: c for c in conds}.values())
    conds = conds[:1] + conds[1::9]  # every mode, several depths
    assert {c.mode for c in conds[1:]} == {"zero", "mean", "skip_layer", "resample"}
    plan = plans.Plan(name="all modes", conditions=tuple(conds))
    path = tmp_path / "t.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 12)
    corpus = load_corpus(str(path), loaded.tokenizer)
    protocol = Protocol(context=48, stride=24, batch_size=3, reference=corpus.source,
                        reference_tokens=corpus.n_tokens, reference_sha256=corpus.sha256)
    kw = dict(protocol=protocol, progress=False, tasks=get_tasks(["agreement", "last_word"]), task_items=3)
    calls = []
    real = shared_context.score_shared
    monkeypatch.setattr(shared_context, "score_shared", lambda cached, n, *a, **k: (calls.append(n), real(cached, n, *a, **k))[1])
    old = run_plan(loaded, plan, [corpus], tmp_path / "old.zarr", shared_context=False, group_size=4, **kw)
    assert calls == []
    naive = run_plan(loaded, plan, [corpus], tmp_path / "naive.zarr", fast=False, **kw)
    assert len(calls) == sum(c.mode != "resample" or c.kind == "baseline" for c in conds)
    calls.clear()
    fast = run_plan(loaded, plan, [corpus], tmp_path / "fast.zarr", group_size=2, **kw)
    assert calls and len(calls) < -(-len(conds) // 2)  # groups shared but those holding a resample
    for got in (naive, fast):
        np.testing.assert_allclose(got["loglik"].values, old["loglik"].values, rtol=1e-6, atol=1e-5)
        np.testing.assert_array_equal(got["correct"].values, old["correct"].values)
        assert got["qc_fired"].values.all()
