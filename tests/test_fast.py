"""Prefix reuse and batched conditions give the naive loop's logits, for every family and mode."""

import json

import pytest
import torch

from conftest import family_names
from workbench.fast import SharedPrefix
from workbench.interventions import Intervener
from workbench.plans import Condition, Target


def _conditions(cmap) -> list[Condition]:
    """The baseline and, per mode, a single component late in depth, one early, and a group
    spanning depth (mixed roles), so conditions start at different layers and share stacks."""
    mixers = [r for r in cmap.roles() if r not in ("layer",)]
    late, early = cmap.n_layers - 1, 0
    out = [Condition(kind="baseline")]
    for mode in ("zero", "mean", "resample"):
        seed = 3 if mode == "resample" else None
        for role in mixers:
            layers = cmap.layers_of(role)
            out.append(Condition(targets=(Target(layer=layers[-1], role=role),), mode=mode, donor_seed=seed))
        role = max(mixers, key=lambda r: len(cmap.layers_of(r)))
        layers = cmap.layers_of(role)
        out.append(Condition(targets=tuple(Target(layer=i, role=role) for i in layers[1:] or layers), mode=mode,
                             donor_seed=seed))
        out.append(Condition(targets=(Target(layer=layers[0], role=role), Target(layer=late, role="mlp")),
                             mode=mode, donor_seed=seed) if "mlp" in cmap.roles() and late in cmap.layers_of("mlp")
                   else Condition(targets=(Target(layer=layers[0], role=role),), mode=mode, donor_seed=seed))
    for layer in (early, cmap.n_layers // 2, late):
        out.append(Condition(targets=(Target(layer=layer, role="layer"),), mode="skip_layer"))
    out.append(Condition(targets=(Target(layer=1, role="layer"), Target(layer=late, role="layer")),
                         mode="skip_layer"))
    return list({c.id: c for c in out}.values())


def _inputs(iv: Intervener, cond: Condition, means: dict, ids: torch.Tensor) -> dict:
    if cond.kind == "baseline" or cond.mode in ("zero", "skip_layer"):
        return {}
    if cond.mode == "mean":
        return {"means": means}
    g = torch.Generator().manual_seed(cond.donor_seed)
    donor_ids = torch.randint(0, 200, ids.shape, generator=g)
    return {"donor": iv.outputs(donor_ids, iv.components(cond))}


@pytest.mark.parametrize("family", family_names())
@pytest.mark.parametrize("max_rows", [0, 64])
def test_shared_prefix_equals_naive(tiny, family, max_rows):
    loaded = tiny
    iv = Intervener(loaded.model)
    conds = _conditions(iv.cmap)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 200, (2, 12), generator=g)
    comps = [c for c in iv.cmap.components if c.role != "layer"]
    means = iv.component_means([torch.randint(0, 200, (2, 12), generator=g)], comps)
    inputs = [_inputs(iv, c, means, ids) for c in conds]
    fast = SharedPrefix(iv, conds, max_rows=max_rows)
    assert any(s > 0 for s in fast.start), "some condition should resume after clean layers"
    if max_rows:
        assert any(len(s.members) > 1 for s in fast.stacks(2)), "some conditions should share a forward"
    got = fast.run(ids, inputs, keep=5)
    for cond, inp, logits in zip(conds, inputs, got):
        want = iv.run(ids, cond, keep=5, **inp).logits
        torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{cond.label}: {m}")
    assert all(fast.ok), [c.label for c, ok in zip(conds, fast.ok) if not ok]


def test_stacks_respect_row_cap(tiny_qwen35):
    iv = Intervener(tiny_qwen35.model)
    conds = [Condition(targets=(Target(layer=i, role="mlp"),)) for i in range(iv.cmap.n_layers)]
    conds += [Condition(targets=(Target(layer=i, role="layer"),), mode="skip_layer") for i in range(iv.cmap.n_layers)]
    fast = SharedPrefix(iv, conds, max_rows=12)
    for rows in (1, 3, 4, 5, 12, 13):
        stacks = fast.stacks(rows)
        assert sorted(k for s in stacks for k in s.members) == list(range(len(conds)))
        for s in stacks:
            assert len(s.members) * rows <= max(12, rows)
            assert s.start == min(fast.start[k] for k in s.members)


def test_unfired_edit_is_reported(tiny_qwen35):
    iv = Intervener(tiny_qwen35.model)
    cond = Condition(targets=(Target(layer=2, role="mlp"),))
    fast = SharedPrefix(iv, [cond])
    fast.start[0] = 3  # wrongly resuming after the edited layer: its module never runs
    try:
        fast.run(torch.zeros(1, 6, dtype=torch.long), [{}])
    except Exception:  # nnsight may refuse the missing module outright
        return
    assert fast.ok == [False]


@pytest.fixture
def tiny_qwen35():
    from workbench.loading import load_model

    return load_model("random:qwen3_5_text")


def test_skipped_layers_do_not_run(tiny_qwen35):
    """Layers before a condition's first edit run once per batch (the clean pass), not per condition."""
    iv = Intervener(tiny_qwen35.model)
    last = iv.cmap.n_layers - 1
    conds = [Condition(targets=(Target(layer=last, role="mlp"),)),
             Condition(targets=(Target(layer=last, role="layer"),), mode="skip_layer")]
    fast = SharedPrefix(iv, conds)
    assert fast.start == [last, last]
    calls = {}
    mlps = {c.layer: iv.model.get_submodule(c.path) for c in iv.cmap.by_role("mlp")}
    for layer, module in mlps.items():
        module.register_forward_hook(lambda m, a, o, layer=layer: calls.__setitem__(layer, calls.get(layer, 0) + 1))
    fast.run(torch.zeros(2, 6, dtype=torch.long), [{}, {}])
    assert calls[0] == 1  # the clean pass only
    assert calls[last] == 2  # not in the clean pass (it stops after layer last-1); once per condition
    assert fast.bound() == pytest.approx((iv.cmap.n_layers + 2) / (2 * iv.cmap.n_layers))


@pytest.mark.slow
@pytest.mark.parametrize("family,scoring", [("qwen3_5_text", "rolling"), ("falcon_h1", "rolling"),
                                            ("qwen3_5_text", "carry"), ("falcon_h1", "carry"), ("qwen2", "carry")])
def test_run_plan_fast_equals_naive_store(tmp_path, family, scoring):
    """The runner's fast path (groups, prefix reuse, stacking) writes the naive loop's numbers:
    perplexity windows (or carried chunks) and task log-likelihoods, every mode, resample
    donors included."""
    import numpy as np

    from workbench import plans
    from workbench.corpora import load_corpus
    from workbench.loading import load_model
    from workbench.runner import Protocol, run_plan
    from workbench.tasks import get_tasks

    loaded = load_model(f"random:{family}")
    cmap = Intervener(loaded.model).cmap
    conds = [c for mode in ("zero", "mean", "resample", "skip_layer")
             for c in plans.resolve(plans.auto_spec(cmap, "sweep", mode=mode), cmap).conditions]
    conds = list({c.id: c for c in conds}.values())  # each mode's plan starts with the baseline
    conds = conds[:1] + conds[1::4]  # every mode, components at several depths
    plan = plans.Plan(name="all modes", conditions=tuple(conds))
    path = tmp_path / "t.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    corpus = load_corpus(str(path), loaded.tokenizer)
    protocol = Protocol(context=48, stride=24, batch_size=3, scoring=scoring, streams=2, reference=corpus.source,
                        reference_tokens=corpus.n_tokens, reference_sha256=corpus.sha256)
    kw = dict(protocol=protocol, progress=False, tasks=get_tasks(["agreement"]), task_items=3)
    naive = run_plan(loaded, plan, [corpus], tmp_path / "naive.zarr", fast=False, **kw)
    fast = run_plan(loaded, plan, [corpus], tmp_path / "fast.zarr", group_size=7, max_rows=9, **kw)
    for name in ("window_nll", "loglik"):
        np.testing.assert_allclose(fast[name].values, naive[name].values, rtol=1e-5, atol=1e-6, err_msg=name)
    for name in ("qc_fired", "qc_changed", "correct", "complete"):
        np.testing.assert_array_equal(fast[name].values, naive[name].values, err_msg=name)
    assert fast["qc_fired"].values.all()
    if scoring == "carry":  # chunks of 24 after a first of 48, in 2 streams: every token once
        assert int(fast["window_tokens"].sum()) == corpus.n_tokens - 1
        assert json.loads(fast.attrs["protocol"])["scoring"] == "carry"
