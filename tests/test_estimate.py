"""The dry run's time estimate: its layer work is what the runner really runs."""

import pytest
import torch

from workbench.estimate import Estimate, duration, layer_work, plain_rate
from workbench.interventions import Intervener
from workbench.plans import Condition, Plan, Target


def _plan(cmap) -> Plan:
    """The baseline, one component per layer, and the last one again under another label (a
    twin: copied, not computed)."""
    conds = [Condition(kind="baseline")]
    for layer in range(cmap.n_layers):
        conds.append(Condition(targets=(Target(layer=layer, role="mlp"),), group="sweep:mlp"))
    conds.append(Condition(targets=(Target(layer=cmap.n_layers - 1, role="mlp"),), kind="thirds",
                           group="thirds:mlp"))
    return Plan(name="t", conditions=tuple(conds))


@pytest.fixture(scope="module")
def tiny():
    from workbench.loading import load_model

    return load_model("random:qwen2")


def test_layer_work_counts_the_layers_the_runner_runs(tmp_path, tiny):
    """Every layer call the fast runner makes, over every condition, against the estimate's
    work in whole-model passes; and the naive loop's, against one pass per computed condition."""
    from workbench.corpora import load_corpus
    from workbench.runner import Protocol, run_plan

    iv = Intervener(tiny.model)
    plan = _plan(iv.cmap)
    n = iv.cmap.n_layers
    path = tmp_path / "t.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 30)
    corpus = load_corpus(str(path), tiny.tokenizer)
    protocol = Protocol(context=32, stride=16, batch_size=4, reference=corpus.source,
                        reference_tokens=corpus.n_tokens, reference_sha256=corpus.sha256)
    tokens = protocol.forward_tokens(corpus.n_tokens)
    seen = [0]
    # a skipped layer is still called (its output supplied), so count what runs inside each layer;
    # the runner's checks (model check, execution order) run inputs of at most 8 tokens
    mlps = [iv.model.get_submodule(c.path) for c in iv.cmap.by_role("mlp")]
    assert len(mlps) == n

    def count(module, args, output):
        if args[0].shape[1] > 8:
            seen[0] += args[0].shape[0] * args[0].shape[1]

    for module in mlps:
        module.register_forward_hook(count)
    for fast, group_size in ((True, 3), (True, 16), (False, 16)):
        seen[0] = 0
        run_plan(tiny, plan, [corpus], tmp_path / f"{fast}{group_size}.zarr", protocol=protocol, progress=False,
                 fast=fast, group_size=group_size)
        computed, work = layer_work(iv, plan, fast=fast, group_size=group_size)
        assert computed == len(plan.conditions) - 1  # the twin is copied
        assert seen[0] == pytest.approx(work * n * tokens), (fast, group_size)
    # one group: a clean pass and each mlp from its layer on
    assert layer_work(iv, plan, fast=True, group_size=16)[1] == pytest.approx((n + sum(n - k for k in range(n))) / n)
    for module in mlps:
        module._forward_hooks.clear()


def test_estimate_seconds_and_rate(tiny):
    est = Estimate(computed=10, work=4.0, tokens_per_s=2000.0)
    assert est.seconds(1000) == pytest.approx(2.0)
    assert plain_rate(tiny.model, 2, 16, torch.device("cpu"), repeats=1) > 0


@pytest.mark.parametrize("seconds,text", [(12, "12 s"), (600, "10 min"), (3 * 3600, "3.0 h"),
                                          (5 * 86400, "5.0 days")])
def test_duration(seconds, text):
    assert duration(seconds) == text
