"""Stores and the CLI: resume after interruption, clear errors, no damage to existing stores."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from workbench import cli, plans
from workbench.architectures import component_map
from workbench.corpora import load_corpus
from workbench.loading import load_model
from workbench.runner import run_plan
from workbench.store import open_store

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness. ") * 6


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpora") / "tale.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def qwen2():
    return load_model("random:qwen2")


def invoke(argv, capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["workbench", *map(str, argv)]
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


RUN = ["--model", "random:qwen2", "--preset", "smoke", "--context", "32", "--stride", "16"]


@pytest.fixture(scope="module")
def made_store(tmp_path_factory, corpus_file):
    """A finished store made through the CLI (module-scoped: several tests reuse it)."""
    out = tmp_path_factory.mktemp("stores") / "run.zarr"
    sys.argv = ["workbench", "run", *RUN, "--corpus", str(corpus_file), "--out", str(out)]
    cli.main()
    return out


def test_components_json(capsys):
    code, stdout, _ = invoke(["components", "random:falcon_h1", "--json"], capsys)
    assert code == 0
    records = json.loads(stdout)
    assert {"layer", "role", "path", "topology"} <= set(records[0])
    assert sum(r["role"] == "ssm" for r in records) == 6
    assert {r["topology"] for r in records if r["role"] in ("ssm", "attention")} == {"parallel"}


def test_run_then_show(made_store, capsys):
    ds = open_store(made_store)
    assert bool(ds["complete"].all())
    assert ds.attrs["model"] == "random:qwen2"
    for key in ("plan", "plan_hash", "versions", "git_commit", "config_hash", "device", "dtype", "created"):
        assert key in ds.attrs
    assert set(ds["mode"].values) == {"none", "zero"}
    assert (ds["qc_changed"].values[1:] == 1).all() and bool(ds["qc_fired"].all())
    assert ds.attrs["vocab_size"] == load_model("random:qwen2").model.config.vocab_size
    code, stdout, _ = invoke(["show", made_store], capsys)
    assert code == 0 and "attention off, layers 0-3, zero" in stdout
    n = int((ds["window_tokens"].values > 0).sum())
    assert n < 20 and f"no interval: {n} windows, needs 20" in stdout  # too few windows for blocks
    code, stdout, _ = invoke(["show", made_store, "--json"], capsys)
    rows = json.loads(stdout)
    assert rows[0]["label"] == "baseline (no ablation)" and rows[0]["ratio:tale"] == pytest.approx(1.0)


def test_store_losses_match_direct_perplexity(made_store, corpus_file):
    """The store's baseline loss equals the plain perplexity function on the same tokens."""
    from workbench.evaluate.perplexity import perplexity

    loaded = load_model("random:qwen2")
    corpus = load_corpus(str(corpus_file), loaded.tokenizer)
    scored = corpus.ids[:-16 * 32]  # the default reference: the last 16 x context tokens, not scored
    ref = perplexity(loaded.model, scored, context=32, stride=16)
    ds = open_store(made_store)
    assert float(ds["loss"].sel(condition="baseline", corpus="tale")) == pytest.approx(ref.loss, abs=1e-6)


@pytest.mark.parametrize("case", ["unknown model", "layer out of range", "role absent", "empty corpus",
                                  "missing corpus", "malformed plan", "different plan", "bad mode"])
def test_bad_input_clear_error_and_store_untouched(case, made_store, corpus_file, tmp_path, capsys):
    before = digest(made_store)
    plan = tmp_path / "plan.yaml"
    args = RUN + ["--corpus", corpus_file, "--out", made_store]
    expect = {"unknown model": "unknown model 'no-such-model'", "layer out of range": "out of range",
              "role absent": "role 'ssm' is absent", "empty corpus": "is empty",
              "missing corpus": "not found", "malformed plan": "malformed plan",
              "different plan": "was written with a different setup (plan: store", "bad mode": "unknown mode"}[case]
    if case == "unknown model":
        args[1] = "no-such-model"
    elif case in ("layer out of range", "role absent", "malformed plan"):
        plan.write_text({
            "layer out of range": "conditions:\n  - {targets: [{layer: 99, role: layer}], mode: skip_layer}\n",
            "role absent": "generators:\n  - {kind: group, role: ssm}\n",
            "malformed plan": "generators:\n  - {kind: group, rol: attention}\n"}[case])
        args[2:4] = ["--plan", plan]
    elif case == "empty corpus":
        (tmp_path / "empty.txt").write_text("  \n")
        args[args.index(corpus_file)] = tmp_path / "empty.txt"
    elif case == "missing corpus":
        args[args.index(corpus_file)] = tmp_path / "nope.txt"
    elif case == "different plan":
        args[3] = "groups"
        args += ["--mode", "mean"]
    elif case == "bad mode":
        args += ["--mode", "zap"]
    code, _, stderr = invoke(["run", *args], capsys)
    assert code == 2
    assert expect in stderr and stderr.strip().splitlines()[-1].startswith("error:")
    assert digest(made_store) == before


def test_foreign_and_corrupt_stores_are_refused(tmp_path, corpus_file, capsys):
    foreign = tmp_path / "foreign.zarr"
    xr.Dataset({"x": ("a", np.arange(3))}).to_zarr(foreign, zarr_format=2)
    junk = tmp_path / "junk.zarr"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a store")
    for path, message in ((foreign, "not a workbench run store"), (junk, "not a readable workbench store")):
        before = digest(path)
        code, _, stderr = invoke(["run", *RUN, "--corpus", corpus_file, "--out", path], capsys)
        assert code == 2 and message in stderr
        assert digest(path) == before
        code, _, stderr = invoke(["show", path], capsys)
        assert code == 2 and message in stderr


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_and_matches_uninterrupted(tmp_path, qwen2, corpus_file):
    cmap = component_map(qwen2.model)
    plan = plans.resolve(plans.auto_spec(cmap, "study", seeds=2), cmap)
    corpus = load_corpus(str(corpus_file), qwen2.tokenizer)
    kw = dict(context=32, stride=16, batch_size=4, progress=False)

    full = run_plan(qwen2, plan, [corpus], tmp_path / "full.zarr", **kw)

    seen = []

    def die_after_three(i, cond):
        seen.append(i)
        if len(seen) == 3:
            raise Interrupt

    with pytest.raises(Interrupt):  # conditions are written a group (here 2) at a time
        run_plan(qwen2, plan, [corpus], tmp_path / "part.zarr", on_condition=die_after_three, group_size=2, **kw)
    done = set(np.flatnonzero(open_store(tmp_path / "part.zarr")["complete"].values))
    assert set(seen) <= done and len(done) == 4
    resumed = []
    part = run_plan(qwen2, plan, [corpus], tmp_path / "part.zarr",
                    on_condition=lambda i, c: resumed.append(i), **kw)
    assert sorted(resumed) == sorted(set(range(len(plan.conditions))) - done)
    for name in ("loss", "perplexity", "bits_per_byte", "window_nll", "qc_changed", "qc_fired", "complete"):
        np.testing.assert_array_equal(part[name].values, full[name].values)
    assert list(part.label.values) == list(full.label.values)


@pytest.mark.parametrize("mode", ["mean", "resample", "skip_layer"])
def test_other_modes_run_end_to_end(mode, tmp_path, qwen2, corpus_file):
    cmap = component_map(qwen2.model)
    plan = plans.resolve(plans.auto_spec(cmap, "groups", mode=mode), cmap)
    corpus = load_corpus(str(corpus_file), qwen2.tokenizer)
    ds = run_plan(qwen2, plan, [corpus], tmp_path / f"{mode}.zarr", context=32, stride=16, progress=False)
    assert bool(ds["complete"].all()) and (ds["qc_changed"].values[1:] == 1).all()
    assert np.isfinite(ds["loss"].values).all()


def test_same_edit_in_two_families_is_kept_and_computed_once(tmp_path, qwen2, corpus_file):
    """On a 4-layer model a one-layer third is also a sweep entry: both rows, one computation."""
    cmap = component_map(qwen2.model)
    spec = plans.auto_spec(cmap, "study")
    spec = spec.model_copy(update={"generators": [
        *spec.generators, plans.RandomSpec(kind="random_matched", size=2, pool=["attention"], seeds=2)]})
    plan = plans.resolve(spec, cmap)
    corpus = load_corpus(str(corpus_file), qwen2.tokenizer)
    ds = run_plan(qwen2, plan, [corpus], tmp_path / "s.zarr", context=32, stride=16, progress=False)
    third = [i for i, c in enumerate(plan.conditions) if c.kind == "thirds" and c.layers == [2]][0]
    sweep = [i for i, c in enumerate(plan.conditions) if c.kind == "sweep" and c.layers == [2]][0]
    assert plan.conditions[third].effect_id == plan.conditions[sweep].effect_id
    np.testing.assert_array_equal(ds["window_nll"].values[third], ds["window_nll"].values[sweep])
    assert float(ds["elapsed_s"].values[third]) == 0.0 < float(ds["elapsed_s"].values[sweep])
    assert (ds["kind"].values == "random_matched").sum() == 2  # each trial its own row


# Bad arguments of every command: one line, exit 2, the good store byte-identical. Placeholders:
# {file} a regular file, {dir} an empty folder, {garbled} a folder whose study.json is not JSON,
# {jsondir} a folder whose study.json is a folder, {tasks} a folder with a toy lm-eval task.
LM_EVAL = ["workbench-lm-eval", "--model", "workbench", "--tasks", "wb_toy", "--include_path", "{tasks}",
           "--model_args"]
BAD_ARGV = [
    (LM_EVAL + ["model=no-such-model"], "unknown model 'no-such-model'"),
    (LM_EVAL + ["model=random:qwen2,condition=zap:attention@1"], "unknown mode 'zap'"),
    (LM_EVAL + ["model=random:qwen2,bogus=1"], "unknown WorkbenchLM argument(s) ['bogus']"),
    (LM_EVAL + ["model=random:qwen2,prefix=bos"], "unknown prefix policy 'bos'; valid: eot, none"),
    (LM_EVAL + ["model=random:qwen2,max_length=abc"], "max_length='abc' is invalid"),
    (LM_EVAL + ["model=random:qwen2,batch_size=x"], "batch_size='x' is invalid"),
    (LM_EVAL + ["model=random:qwen2,dtype=float8"], "unknown dtype 'float8'"),
    (LM_EVAL + ["model=random:qwen2,device=tpu"], "unknown device 'tpu'"),
    (LM_EVAL + ["model=random:qwen2,plan={dir}/nope.yaml,condition_id=x"], "nope.yaml' does not exist"),
    (LM_EVAL + ["model=random:qwen2,condition=mean:attention@*"], "needs reference=CORPUS"),
    (LM_EVAL + ["model=random:qwen2,condition=zero:attention@1,donor_seed=1"], "donor_seed applies to resample"),
    (LM_EVAL[:4] + ["no_such_task"] + LM_EVAL[5:] + ["model=random:qwen2"], "Tasks not found: no_such_task"),
    (["data", "tasks", "--data-dir", "{dir}/none"], "lacks the held-out sets encyclopedic.txt"),
    (["data", "tasks", "--build-dir", "{file}", "--data-dir", "data"], "is a file, not a folder"),
    (["data", "tasks", "--build-dir", "/proc/wb-build", "--data-dir", "data"], "not a folder this process can write"),
    (["report", "{dir}/none"], "does not exist; give a study folder"),
    (["report", "{file}"], "is a file; give a study folder"),
    (["report", "{dir}"], "has no study.json"),
    (["report", "{garbled}"], "is not a study settings file"),
    (["report", "{jsondir}"], "cannot write the report in"),
    (["run", *RUN, "--corpus", "{file}", "--out", "{file}/run.zarr"], "which is a file; give a path under a folder"),
    (["run", *RUN, "--corpus", "{file}", "--out", "/proc/run.zarr"], "nothing can be created in /proc"),
    (["run", *RUN, "--corpus", "{file}", "--out", "{file}"], "is a file; give a folder path"),
    (["run", *RUN, "--corpus", "{file}", "--out", "{dir}/r.zarr", "--cluster", "tcp//h:8786"],
     "is not a scheduler address"),
    (["study", "--models", "random:qwen2", "--out", "{file}/s"], "which is a file; give a path under a folder"),
]


@pytest.fixture
def bad_argv_paths(tmp_path):
    from test_lm_eval_adapter import task_dir

    (tmp_path / "file.txt").write_text(TEXT)
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "study.json").write_text("{not json")
    (tmp_path / "jsondir" / "study.json").mkdir(parents=True)
    (tmp_path / "tasks").mkdir()
    return {"file": tmp_path / "file.txt", "dir": tmp_path / "empty", "garbled": tmp_path / "garbled",
            "jsondir": tmp_path / "jsondir", "tasks": task_dir(tmp_path / "tasks")}


@pytest.mark.parametrize("argv, message", BAD_ARGV, ids=[" ".join(a[:2] + a[-2:]) for a, _ in BAD_ARGV])
def test_bad_arguments_one_line_exit_2(argv, message, bad_argv_paths, made_store, capsys, monkeypatch):
    before = digest(made_store)
    argv = [a.format(**bad_argv_paths) for a in argv]
    if argv[0] == "workbench-lm-eval":
        from lm_eval.tasks import TaskManager

        from workbench import lm_eval_adapter

        class LocalTasks(TaskManager):  # the toy task only: indexing lm-eval's own takes ~10 s
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **{**kwargs, "include_defaults": False})

        monkeypatch.setattr("lm_eval.tasks.TaskManager", LocalTasks)
        monkeypatch.setattr("lm_eval.__main__.setup_logging", lambda *a, **k: None)  # a handler on capsys' stream
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exit_:
            lm_eval_adapter.main()
        code, err = exit_.value.code, capsys.readouterr().err
    else:
        code, _, err = invoke(argv, capsys)
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, err[-2000:]
    assert digest(made_store) == before
