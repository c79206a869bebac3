"""lm-eval adapter: same numbers as the workbench's own scorers, under any condition."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lm_eval.api.instance import Instance
from workbench.evaluate.multiple_choice import plain_forward, score_tasks
from workbench.evaluate.perplexity import perplexity, rolling_windows
from workbench.lm_eval_adapter import WorkbenchLM, parse_condition
from workbench.loading import load_model
from workbench.plans import PlanError
from workbench.tasks import Item, Task

ITEMS = [
    {"id": "a", "context": "The cat sat on the", "choices": ["mat", "dog", "moon"], "gold": 0},
    {"id": "b", "context": "Water boils at one hundred", "choices": ["degrees", "cats"], "gold": 0},
    {"id": "c", "context": "Question: two plus two?\nAnswer:", "choices": ["four", "five", "six", "ten"], "gold": 2},
    {"id": "d", "context": "A long sentence about rivers and their banks, seen from", "choices": ["above", "below"],
     "gold": 1},
]
TEXT = ("Rivers carry water from the hills to the sea; along the way they cut valleys, "
        "move stones and feed the fields. ")


@pytest.fixture(scope="module")
def loaded():
    torch.set_num_threads(1)
    return load_model("random:qwen3_5")


def ll(cond, ctx, cont):
    return Instance("loglikelihood", {}, (ctx, cont), 0)


def task_dir(tmp_path: Path) -> Path:
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(it) + "\n" for it in ITEMS))
    (tmp_path / "wb_toy.yaml").write_text(
        "task: wb_toy\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: context\n"
        "doc_to_choice: choices\n"
        "doc_to_target: gold\n"
        "target_delimiter: ' '\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    return tmp_path


def internal_scores(loaded, forward):
    task = Task(name="wb_toy", description="", source="", licence="", items_path=Path("unused"))
    items = [Item(it["id"], it["context"], tuple(it["choices"]), it["gold"]) for it in ITEMS]
    return score_tasks(forward, loaded.tokenizer, [task], [items], batch_size=3)


def test_parse_condition_forms_and_errors(loaded):
    cmap = WorkbenchLM(model=loaded, max_length=16).iv.cmap
    c = parse_condition("zero:attention@3+attention@7", cmap)
    assert c.mode == "zero" and [(t.layer, t.role) for t in c.targets] == [(3, "attention"), (7, "attention")]
    assert parse_condition("zero:attention@*", cmap).key == c.key
    assert parse_condition("zero:attention@0-5", cmap).layers == [3]
    assert [(t.layer, t.role) for t in parse_condition("skip_layer:layer@2", cmap).targets] == [(2, "layer")]
    assert parse_condition("skip_layer:attention@*", cmap).layers == [3, 7]
    assert parse_condition("baseline", cmap).kind == "baseline" and parse_condition("", cmap).kind == "baseline"
    for bad, why in [("drop:attention@3", "unknown mode"), ("zero:ssm@1", "absent"),
                     ("zero:attention@2", "no 'attention'"), ("zero:attention", "ROLE@LAYER"),
                     ("zero:attention@0-2", "no attention layer"), ("zero:layer@1", "only valid with mode skip_layer"),
                     ("skip_layer:layer@99", "out of range"), ("attention@3", "expected 'baseline'")]:
        with pytest.raises(PlanError, match=why):
            parse_condition(bad, cmap)


def test_registered_with_lm_eval():
    from lm_eval.api.registry import get_model, model_registry

    assert get_model("workbench") is WorkbenchLM
    assert "hf" in model_registry  # the built-in names are still there


@pytest.mark.slow
def test_simple_evaluate_matches_internal_scorer(loaded, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(task_dir(tmp_path)))
    for condition in ("baseline", "zero:attention@3+attention@7"):
        lm = WorkbenchLM(model=loaded, condition=condition, batch_size=3)
        res = lm_eval.simple_evaluate(model=lm, tasks=["wb_toy"], task_manager=tm, log_samples=True,
                                      bootstrap_iters=0)
        got = np.full((len(ITEMS), 4), np.nan)
        for s in res["samples"]["wb_toy"]:
            got[s["doc_id"], :len(s["resps"])] = [r[0][0] for r in s["resps"]]
        forward = plain_forward(loaded.model) if condition == "baseline" else \
            (lambda ids, _r, c=lm.condition: lm.iv.run(ids, c).logits)
        want = internal_scores(loaded, forward)
        np.testing.assert_allclose(got, want.loglik.values[0], rtol=1e-5, equal_nan=True)
        assert res["results"]["wb_toy"]["acc,none"] == pytest.approx(float(want.accuracy.sel(metric="acc")[0]))
        if condition == "baseline":
            base = got
    assert np.nanmax(np.abs(got - base)) > 1e-3  # the ablation changes the log-likelihoods


def test_loglikelihood_under_a_condition_equals_intervener(loaded):
    lm = WorkbenchLM(model=loaded, condition="zero:attention@3+attention@7", prefix="none", batch_size=2)
    base = WorkbenchLM(model=loaded, condition="baseline", prefix="none", batch_size=2)
    pairs = [("The cat sat on the", " mat"), ("Rivers", " carry water"), ("", "hello world")]
    got = lm.loglikelihood([ll(None, c, x) for c, x in pairs], disable_tqdm=True)
    ref = base.loglikelihood([ll(None, c, x) for c, x in pairs], disable_tqdm=True)
    for (c, x), (value, _), (b, _) in zip(pairs, got, ref):
        if c:
            ctx, cont = lm._encode_pair(c, x)
        else:
            ctx, cont = [lm.eot_token_id], lm.tok_encode(x)
        ids = torch.tensor([ctx + cont[:-1]])
        logits = lm.iv.run(ids, lm.condition).logits[0, -len(cont):]
        direct = F.log_softmax(logits.double(), -1)[torch.arange(len(cont)), torch.tensor(cont)].sum().item()
        assert value == pytest.approx(direct, rel=1e-5)
        assert abs(value - b) > 1e-3


def test_rolling_equals_workbench_perplexity_windows(loaded):
    L = 16
    lm = WorkbenchLM(model=loaded, max_length=L, batch_size=4)
    tokens = lm.tok_encode(TEXT)
    assert len(tokens) > 3 * L and len(tokens) % L  # several windows and a partial last one
    got = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (TEXT,), 0)], disable_tqdm=True)[0]
    # lm-eval's windows = the workbench's rolling windows over [prefix] + text, context L + 1, stride L
    stream = torch.tensor([lm.prefix_token_id] + tokens)
    res = perplexity(loaded.model, stream, context=L + 1, stride=L, batch_size=4)
    assert res.n_tokens == len(tokens)
    assert got == pytest.approx(-res.window_nll.sum(), rel=1e-5)
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
    theirs = [len(p) for _, p in map(make_disjoint_window, get_rolling_token_windows(tokens, 0, L, 1))]
    assert theirs == [w.n_scored for w in rolling_windows(len(tokens) + 1, L + 1, L)]

    # a text that fits one window: the study protocol's prefixed perplexity is the same number
    short = "A short text."
    n = len(lm.tok_encode(short))
    one = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (short,), 0)], disable_tqdm=True)[0]
    res = perplexity(loaded.model, lm.tok_encode(short), context=n + 1, stride=n + 1, prefix=lm.prefix_token_id)
    assert len(res.window_nll) == 1 and one == pytest.approx(-res.window_nll.sum(), rel=1e-5)


def test_generate_until_is_greedy_under_the_condition(loaded):
    lm = WorkbenchLM(model=loaded, condition="skip_layer:layer@2", batch_size=2)
    req = lambda kw: Instance("generate_until", {}, ("Rivers carry", kw), 0)  # noqa: E731
    text = lm.generate_until([req({"until": [], "max_gen_toks": 12})], disable_tqdm=True)[0]
    seq = [lm.eot_token_id] + lm.tok_encode("Rivers carry")
    new = []
    for _ in range(12):
        nxt = int(lm.iv.run(torch.tensor([seq]), lm.condition).logits[0, -1].argmax())
        if nxt == lm.eot_token_id:
            break
        seq.append(nxt)
        new.append(nxt)
    assert text == lm.tok_decode(new) and len(new) == 12
    assert lm.generate_until([req({"until": [], "max_gen_toks": 2})], disable_tqdm=True)[0] == lm.tok_decode(new[:2])
    # stop at a plain ASCII character (a random model emits bytes that may not decode on their own)
    stop = next(c for c in (lm.tok_decode([t]) for t in new[1:]) if c.isascii() and c.isprintable() and c)
    cut = lm.generate_until([req({"until": ["\x00never", stop], "max_gen_toks": 12})], disable_tqdm=True)[0]
    assert cut == text.split(stop)[0] and len(cut) < len(text)
    base = WorkbenchLM(model=loaded, condition="baseline").generate_until(
        [req({"until": [], "max_gen_toks": 12})], disable_tqdm=True)[0]
    assert base != text
    with pytest.raises(ValueError, match="greedily"):
        lm.generate_until([req({"do_sample": True})], disable_tqdm=True)


def test_mean_and_resample_conditions(loaded, tmp_path):
    ref = tmp_path / "ref.txt"
    ref.write_text(TEXT * 12)
    pairs = [("The cat sat on the", " mat"), ("Rivers", " carry water to the sea"), ("A", " b")]
    reqs = [ll(None, c, x) for c, x in pairs]
    with pytest.raises(ValueError, match="reference=CORPUS"):
        WorkbenchLM(model=loaded, condition="mean:attention@3")
    mean = WorkbenchLM(model=loaded, condition="mean:attention@3", reference=str(ref), max_length=32)
    base = WorkbenchLM(model=loaded, max_length=32).loglikelihood(reqs, disable_tqdm=True)
    got = mean.loglikelihood(reqs, disable_tqdm=True)
    ctx, cont = mean._encode_pair(*pairs[1])
    logits = mean.iv.run(torch.tensor([ctx + cont[:-1]]), mean.condition, means=mean._means).logits[0, -len(cont):]
    direct = F.log_softmax(logits.double(), -1)[torch.arange(len(cont)), torch.tensor(cont)].sum().item()
    assert got[1][0] == pytest.approx(direct, rel=1e-5) and abs(got[1][0] - base[1][0]) > 1e-4

    one = WorkbenchLM(model=loaded, condition="resample:attention@3+attention@7", reference=str(ref),
                      max_length=32, batch_size=1, donor_seed=1)
    many = WorkbenchLM(model=loaded, condition="resample:attention@3+attention@7", reference=str(ref),
                       max_length=32, batch_size=3, donor_seed=1)
    a, b = one.loglikelihood(reqs, disable_tqdm=True), many.loglikelihood(reqs, disable_tqdm=True)
    np.testing.assert_allclose([x for x, _ in a], [x for x, _ in b], rtol=1e-5)  # batching does not matter
    assert one.condition.donor_seed == 1 and "donor seed 1" in one.condition.label
    assert max(abs(x - y) for (x, _), (y, _) in zip(a, base)) > 1e-4
    with pytest.raises(ValueError, match="max_length"):
        WorkbenchLM(model=loaded, condition="resample:attention@3", reference=str(ref), max_length=4096)


def test_condition_from_a_plan_file(loaded, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: p\ngenerators:\n  - kind: group\n    role: attention\n")
    from workbench.plans import group
    want = group(WorkbenchLM(model=loaded).iv.cmap, "attention")[0]
    lm = WorkbenchLM(model=loaded, plan=str(plan), condition_id=want.id)
    assert lm.condition == want
    with pytest.raises(PlanError, match="no condition 'nope'"):
        WorkbenchLM(model=loaded, plan=str(plan), condition_id="nope")
    with pytest.raises(ValueError, match="unknown WorkbenchLM argument"):
        WorkbenchLM(model=loaded, pretrained="gpt2")


@pytest.mark.slow
def test_command_line(tmp_path):
    folder = task_dir(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "workbench.lm_eval_adapter", "--model", "workbench",
                          "--model_args", "model=random:qwen3_5,condition=zero:attention@3+attention@7,max_length=64",
                          "--tasks", "wb_toy", "--include_path", str(folder), "--batch_size", "2"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "wb_toy" in out.stdout and "acc" in out.stdout


def test_whitespace_only_context_without_prefix_is_a_clear_error(loaded):
    plain = WorkbenchLM(model=loaded, max_length=16, prefix="none")
    with pytest.raises(ValueError, match=r"context '   ' has no tokens .* use prefix=eot"):
        plain.loglikelihood([ll(None, "   ", " cat")])
    eot = WorkbenchLM(model=loaded, max_length=16)  # the default prefix gives it a token to start from
    assert np.isfinite(eot.loglikelihood([ll(None, "   ", " cat")])[0][0])
