"""Plans: generators, validation, serialisation, hashing."""

from __future__ import annotations

import pytest

from workbench.architectures import component_map
from workbench.loading import load_model
from workbench.plans import (BASELINE, Condition, Plan, PlanError, PlanSpec, Target, auto_spec, group,
                             load_spec, random_matched, resolve, sweep, thirds, validate_condition)


@pytest.fixture(scope="module")
def qwen35():
    return component_map(load_model("random:qwen3_5_text").model)


@pytest.fixture(scope="module")
def falcon():
    return component_map(load_model("random:falcon_h1").model)


def test_group_sweep_thirds(qwen35):
    (g,) = group(qwen35, "attention")
    assert g.layers == [3, 7] and g.label == "attention off, layers 3,7, zero"
    assert len(sweep(qwen35, ["attention", "linear_attention"])) == 8
    assert len(sweep(qwen35, [], mode="skip_layer")) == qwen35.n_layers
    parts = thirds(qwen35, "linear_attention")
    assert [p.layers for p in parts] == [[0, 1], [2, 4], [5, 6]]
    assert "early third" in parts[0].label


def test_skip_layer_group_targets_whole_layers(qwen35):
    (g,) = group(qwen35, "attention", mode="skip_layer")
    assert {t.role for t in g.targets} == {"layer"} and g.layers == [3, 7]
    assert "skipped" in g.label


def test_random_matched_is_reproducible_and_sized(falcon):
    a = random_matched(falcon, "attention", ["attention", "ssm"], 5)
    b = random_matched(falcon, "attention", ["attention", "ssm"], 5)
    assert [c.targets for c in a] == [c.targets for c in b]
    assert all(len(c.targets) == 6 for c in a)
    assert len({c.targets for c in a}) == 5
    assert [c.draw_seed for c in random_matched(falcon, 2, ["ssm"], [7, 9])] == [7, 9]
    with pytest.raises(PlanError, match="pool size"):
        random_matched(falcon, 99, ["ssm"], 1)


def test_random_matched_draws_are_distinct(falcon):
    """Pool of 6 SSMs, 5 of them: only 6 distinct sets. Ten independent draws would repeat; the
    generator redraws repeats, so six seeds give all six sets, and seven are refused."""
    draws = random_matched(falcon, 5, ["ssm"], 6)
    assert len({c.targets for c in draws}) == 6
    assert draws[0].targets == random_matched(falcon, 5, ["ssm"], [0])[0].targets  # first draw unchanged
    with pytest.raises(PlanError, match="only 6 distinct set"):
        random_matched(falcon, 5, ["ssm"], 7)
    with pytest.raises(PlanError, match="repeat a seed"):
        random_matched(falcon, 2, ["ssm"], [3, 3])


def test_study_preset_has_no_forced_random_controls():
    """A Transformer's only mixer pool is its attention group: a 'random' set of that size is the
    group itself, so the study preset leaves that control out."""
    qwen2 = component_map(load_model("random:qwen2").model)
    kinds = {c.kind for c in resolve(auto_spec(qwen2, "study"), qwen2).conditions}
    assert "random_matched" not in kinds and "group" in kinds


def test_plan_round_trip_and_hash(falcon):
    plan = resolve(auto_spec(falcon, "study", seeds=3), falcon)
    again = Plan.model_validate_json(plan.to_json())
    assert again == plan and again.hash == plan.hash
    assert plan.conditions[0] == BASELINE
    assert len({c.id for c in plan.conditions}) == len(plan.conditions)
    kinds = {c.kind for c in plan.conditions}
    assert kinds == {"baseline", "group", "sweep", "thirds", "random_matched"}


def test_condition_id_ignores_label_but_not_targets():
    a = Condition(targets=(Target(layer=1, role="attention"),), label="x")
    b = Condition(targets=(Target(layer=1, role="attention"),), label="y")
    c = Condition(targets=(Target(layer=2, role="attention"),))
    assert a.id == b.id != c.id


def test_validation_messages(qwen35):
    with pytest.raises(PlanError, match="out of range; this model has layers 0-7"):
        validate_condition(Condition(targets=(Target(layer=30, role="layer"),), mode="skip_layer"), qwen35)
    with pytest.raises(PlanError, match="role 'ssm' is absent.*roles present: attention, linear_attention"):
        group(qwen35, "ssm")
    with pytest.raises(PlanError, match="no 'attention' component"):
        validate_condition(Condition(targets=(Target(layer=0, role="attention"),)), qwen35)
    with pytest.raises(ValueError, match="skip_layer"):
        Condition(targets=(Target(layer=0, role="attention"),), mode="skip_layer")
    with pytest.raises(ValueError, match="unknown role"):
        Target(layer=0, role="attn")


def test_spec_file(tmp_path, qwen35):
    path = tmp_path / "plan.yaml"
    path.write_text("name: mine\nmode: zero\ngenerators:\n  - {kind: group, role: attention}\n"
                    "  - {kind: thirds, role: linear_attention, mode: mean}\n"
                    "conditions:\n  - {targets: [{layer: 3, role: attention}], mode: resample, donor_seed: 4}\n")
    plan = resolve(load_spec(path), qwen35)
    assert [c.kind for c in plan.conditions] == ["baseline", "group", "thirds", "thirds", "thirds", "custom"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("generators:\n  - {kind: groups, role: attention}\n")
    with pytest.raises(PlanError, match="malformed plan"):
        load_spec(bad)
    with pytest.raises(PlanError, match="no ablation conditions"):  # the baseline alone is no plan
        resolve(PlanSpec(), qwen35)
