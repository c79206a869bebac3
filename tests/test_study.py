"""The study: its conditions per family, the compression curve (re-measured), the report."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import numpy as np
import pytest

from workbench.architectures import MIXER_ROLES, component_map
from workbench.loading import load_model
from workbench.store import open_store
from workbench.study import GRID, StudySettings, group_sizes, removable, run_study, study_plan

from conftest import family_names

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness. ") * 12


def expected_count(cmap, sizes, seeds=3, grid=GRID) -> int:
    """The study's conditions, counted from the component counts alone."""
    counts = {r: len(cmap.layers_of(r)) for r in (*MIXER_ROLES, "mlp") if r in cmap.roles()}
    n_comp, n_layers = sum(counts.values()), cmap.n_layers
    total = 1 + 2 * len(counts)  # baseline; groups in both modes
    total += n_comp + n_layers  # sweeps
    total += 2 * 3 * sum(n >= 3 for n in counts.values())  # thirds in both modes
    total += sum(3 * len([g for g in grid if 1 <= g < n]) for n in counts.values())  # progressive
    for pool in (n_comp, n_layers):
        total += sum(min(seeds, comb(pool, s)) for s in sizes if 1 <= s < pool)
    return total


@pytest.mark.parametrize("family", family_names())
def test_study_enumerates_the_expected_conditions(family, tiny):
    cmap = component_map(tiny.model)
    sizes = group_sizes(cmap) | {2}
    plan = study_plan(cmap, sizes, seeds=3)
    assert len(plan.conditions) == expected_count(cmap, sizes)
    kinds = {c.kind for c in plan.conditions}
    assert {"baseline", "group", "sweep", "progressive"} <= kinds
    groups = [c.group for c in plan.conditions]
    assert len([g for g in groups if g.startswith("group:")]) == 2 * len(
        [r for r in (*MIXER_ROLES, "mlp") if r in cmap.roles()])
    # component-only and whole-layer versions never share a family name
    assert not {c.group for c in plan.conditions if c.mode == "zero"} & \
        {c.group for c in plan.conditions if c.mode == "skip_layer"}


def test_random_draw_equal_to_a_group_is_marked(tmp_path):
    from workbench import plans
    from workbench.corpora import load_corpus
    from workbench.runner import run_plan

    lm = load_model("random:qwen2")
    cmap = component_map(lm.model)
    n = len(cmap.layers_of("attention"))
    spec = plans.PlanSpec(generators=[plans.GroupSpec(kind="group", role="attention"),
                                      plans.RandomSpec(kind="random_matched", size=n, pool=["attention", "mlp"],
                                                       seeds=list(range(40)))])
    plan = plans.resolve(spec, cmap)
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    corpus = load_corpus(str(path), lm.tokenizer, max_tokens=64)
    from workbench.store import template

    meta = [{"name": "t", "source": "t", "n_tokens": 64, "n_bytes": 64, "window_tokens": [63]}]
    ds = template(plan, meta, {})
    marked = [c for c, m in zip(plan.conditions, ds["same_as_group"].values) if m]
    group = next(c for c in plan.conditions if c.kind == "group")
    assert marked and all(set(c.targets) == set(group.targets) for c in marked)
    del corpus, run_plan


def test_removable_counts_steps_before_the_threshold():
    assert removable(np.array([1.01, 1.04, 1.06, 1.2]), 0.05) == 2
    assert removable(np.array([1.01, 1.02]), 0.05) == 2
    assert removable(np.array([1.3]), 0.05) == 0


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    corpus = folder / "tale.txt"
    corpus.write_text(TEXT)
    settings = StudySettings(models=["random:qwen3_5", "random:qwen2"], corpora=[str(corpus)], context=32,
                             stride=16, batch_size=8, tasks=["agreement", "last_word"], task_items=2, seeds=2,
                             grid=[1])
    import workbench.loading

    loads = []
    with pytest.MonkeyPatch.context() as mp:  # count loads: each model once per study
        mp.setattr(workbench.loading, "load_model", lambda spec, **kw: loads.append(spec) or load_model(spec, **kw))
        run_study(settings, folder / "out", log=lambda m: None, progress=False)
    (folder / "loads.json").write_text(json.dumps(loads))
    return folder / "out"


@pytest.mark.slow  # the tiny study takes about a minute
def test_study_loads_each_model_once(tiny_study):
    assert json.loads((tiny_study.parent / "loads.json").read_text()) == ["random:qwen3_5", "random:qwen2"]


def test_model_cache_reloads_what_does_not_fit():
    from workbench.study import ModelCache

    kept = ModelCache("cpu", "float32")
    assert kept.get("random:qwen2") is kept.get("random:qwen2") and kept.loads == 1
    kept.drop("random:qwen2")
    assert kept.get("random:qwen2") is not None and kept.loads == 2
    tight = ModelCache("cpu", "float32", budget=0)
    assert tight.get("random:qwen2") is not tight.get("random:qwen2") and tight.loads == 2


@pytest.mark.slow  # the tiny study takes about a minute
def test_study_stores_hold_every_condition_and_tasks(tiny_study):
    ds = open_store(tiny_study / "random_qwen3_5.zarr")
    assert bool(ds["complete"].all())
    assert set(ds.task.values) == {"agreement", "last_word"} and ds.sizes["item"] == 2
    assert np.isfinite(ds["accuracy"].values).all()
    assert json.loads((tiny_study / "study.json").read_text())["models"] == ["random:qwen3_5", "random:qwen2"]


@pytest.mark.slow  # the tiny study takes about a minute
def test_compression_steps_are_re_measured_not_summed(tiny_study):
    from workbench.corpora import load_with_reference
    from workbench.evaluate.perplexity import perplexity
    from workbench.interventions import Intervener
    from workbench.plans import Plan

    comp = open_store(tiny_study / "random_qwen3_5.compression.zarr")
    main = open_store(tiny_study / "random_qwen3_5.zarr").load()
    plan = Plan.model_validate_json(comp.attrs["plan"])
    steps = [c for c in plan.conditions if c.group == "compression:mixers:importance"]
    assert len(steps) == 8 and [len(c.targets) for c in steps] == list(range(1, 9))
    # each step removes one more component, least important (by the sweep) first
    sweep = main.where(main["group"].isin(["sweep:attention", "sweep:linear_attention"]), drop=True)
    effect = {(int(str(l)), str(r)): float(v) for l, r, v in
              zip(sweep["layers"].values, sweep["roles"].values,
                  (sweep["loss"] - main["loss"].sel(condition="baseline")).mean("corpus").values)}
    order = [next(iter(set((t.layer, t.role) for t in b.targets) - set((t.layer, t.role) for t in a.targets)))
             for a, b in zip([type(steps[0])(kind="baseline")] + steps[:-1], steps)]
    assert [effect[k] for k in order] == sorted(effect.values())
    # step 3 equals a direct perplexity of the model with those three components zeroed
    lm = load_model("random:qwen3_5")
    corpus, _ = load_with_reference(str(Path(tiny_study).parent / "tale.txt"), lm.tokenizer, 16 * 32)
    iv = Intervener(lm.model)
    direct = perplexity(lm.model, corpus.ids, context=32, stride=16,
                        forward=lambda ids, w, keep: iv.run(ids, steps[2], keep=keep).logits)
    got = float(comp["loss"].isel(condition=plan.conditions.index(steps[2]))[0])
    assert got == pytest.approx(direct.loss, abs=1e-6)
    additive = float(main["loss"].sel(condition="baseline")[0]) + sum(sorted(effect.values())[:3])
    assert got != pytest.approx(additive, abs=1e-9)  # a measured curve, not a sum of single effects


@pytest.mark.slow  # the tiny study takes about a minute
def test_report_is_written_with_figures(tiny_study, capsys):
    from workbench.report import write_report

    path = write_report(tiny_study)
    text = path.read_text()
    for heading in ("## Summary", "### 1-2. Is each component type used", "### 3. Where in depth",
                    "## 4. Resilience against the Transformer control", "### 5. How much could be removed?",
                    "## Published values", "## Which published findings hold here",
                    "### Random controls", "### Progressive removal", "### Why"):
        assert heading in text, heading
    for png in ("random_qwen3_5-groups.png", "random_qwen3_5-sweep.png", "random_qwen3_5-compression.png",
                "random-layers.png"):
        assert (tiny_study / "figures" / png).stat().st_size > 5000
    assert "| random:qwen3_5 | random:qwen2 |" in text  # resilience against the Transformer control
    summary = json.loads((tiny_study / "summary.json").read_text())
    assert summary["findings"] and summary["resilience"] and not summary["partial"]
    assert "underpowered: 2 items" in text  # two items per task carry no claim


def test_study_cli_dry_run_and_bad_input(tmp_path, capsys):
    from test_store_cli import invoke

    code, _, err = invoke(["study", "--models", "random:qwen2", "--corpus", "books", "--max-tokens", "256",
                           "--tasks", "agreement", "--task-items", "2", "--dry-run", "--out", tmp_path / "s"],
                          capsys)
    assert code == 0 and "random:qwen2:" in err and "forward tokens" in err and not (tmp_path / "s").exists()
    assert "estimate here:" in err and "plain forward" in err and "prefix reuse runs" in err
    code, _, err = invoke(["study", "--tasks", "nope", "--out", tmp_path / "s"], capsys)
    assert code == 2 and "unknown task(s) ['nope']" in err
    code, _, err = invoke(["study", "--grid", "1,x", "--out", tmp_path / "s"], capsys)
    assert code == 2 and "--grid" in err


def test_early_late_finding_uses_the_perplexity_ratio_when_the_late_third_has_no_effect():
    """A late third with no effect makes the excess-loss ratio meaningless (here negative): the
    finding is judged on perplexity early/late, and the excess ratio is not shown."""
    import math

    from workbench.report import HOLDS, NOT, _summary_json, findings

    def thirds(late, log_diff, gradient):
        return {"early": (1.08, 1.06, 1.10), "middle": (1.03, 1.02, 1.03), "late": late,
                "gradient": gradient, "gradient_low": -1019.0, "gradient_high": 1530.0,
                "log_difference": log_diff[0], "log_difference_low": log_diff[1], "log_difference_high": log_diff[2]}

    flat = thirds((0.999, 0.998, 1.0), (math.log(1.08), math.log(1.06), math.log(1.10)), -194.7)
    results = {"hybrid": {"transformer": False, "groups": [], "baseline_ppl": 100.0, "tasks": {}, "compression": {},
                          "thirds": {"attention": flat}, "power": None, "pairs": {}, "windows": 80, "vocab": None}}
    (f,) = findings(results, [])
    assert f.verdict == HOLDS and f.evidence.startswith(
        "perplexity early/late x1.08 [1.06, 1.10] (early third x1.08 [1.06, 1.10], late x1.00 [1.00, 1.00]); "
        "the late third has no clear effect")
    assert "-194" not in f.evidence
    assert _summary_json(results, [f], [], [])["models"]["hybrid"]["thirds"]["attention"]["gradient"] is None
    same = thirds((1.05, 1.04, 1.06), (0.0, -0.01, 0.01), 1.0)  # early and late alike: does not hold
    results["hybrid"]["thirds"]["attention"] = same
    (f,) = findings(results, [])
    assert f.verdict == NOT and "perplexity early/late x1.00" in f.evidence and "excess-loss ratio x1.00" in f.evidence
    assert "no difference beyond 2%" in f.evidence
