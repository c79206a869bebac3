"""Stores that cannot hold wrong or mixed numbers silently: resume checks, seeds, prefix token,
precision, donors, bytes, reference slice, QC, concurrent writers, the load-time model check."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench import plans
from workbench.architectures import component_map
from workbench.corpora import load_corpus, load_with_reference
from workbench.interventions import Intervener, InterventionError
from workbench.loading import load_model
from workbench.plans import Condition, PlanError, Target
from workbench.runner import Protocol, resolve_prefix, run_plan
from workbench.store import open_store
from workbench.validate import ModelCheckError, check_model

from test_store_cli import digest, invoke

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness. ") * 12
RUN = ["--model", "random:qwen2", "--preset", "smoke", "--context", "32", "--stride", "16",
       "--reference-tokens", "128"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpora") / "tale.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, corpus_file):
    out = tmp_path_factory.mktemp("stores") / "run.zarr"
    code = subprocess.run([sys.executable, "-m", "workbench.cli", "run", *RUN, "--corpus", str(corpus_file),
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT).returncode
    assert code == 0
    return out


@pytest.fixture(scope="module")
def qwen2():
    return load_model("random:qwen2")


# --- 1. resume refuses a different setup ------------------------------------------------------

@pytest.mark.parametrize("change, field", [
    (["--dtype", "bfloat16"], "dtype: store float32, this run bfloat16"),
    (["--prefix-token", "bos"], "protocol prefix_token: store none, this run bos"),
    (["--reference-tokens", "160"], "reference tokens: store 128, this run 160"),
    (["--seed", "3"], "donor seed: store 0, this run 3"),
])
def test_resume_with_another_setup_is_refused_and_store_untouched(change, field, store, corpus_file, capsys):
    before = digest(store)
    code, _, err = invoke(["run", *RUN, "--corpus", corpus_file, "--out", store, *change], capsys)
    assert code == 2 and field in err and "different setup" in err
    assert len(err.strip().splitlines()[-1]) > 0 and err.strip().splitlines()[-1].startswith("error:")
    assert digest(store) == before


def test_resume_refuses_changed_weights_and_changed_corpus(tmp_path, corpus_file, capsys):
    model_dir = tmp_path / "model"
    lm = load_model("random:qwen2")
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    text = tmp_path / "tale.txt"
    text.write_text(TEXT)
    args = ["run", *RUN, "--corpus", text, "--out", tmp_path / "s.zarr"]
    args[2] = str(model_dir)
    assert invoke(args, capsys)[0] == 0
    before = digest(tmp_path / "s.zarr")
    with torch.no_grad():
        lm.model.lm_head.weight[0, 0] += 1.0
    lm.model.save_pretrained(model_dir)
    code, _, err = invoke(args, capsys)
    assert code == 2 and "weights: store" in err
    lm.model.lm_head.weight.data[0, 0] -= 1.0
    lm.model.save_pretrained(model_dir)
    text.write_text(TEXT.replace("wisdom", "wisdoM"))  # same name, same token count, other text
    code, _, err = invoke(args, capsys)
    assert code == 2 and "corpora tale" in err
    assert digest(tmp_path / "s.zarr") == before


# --- 2. the baseline cannot be faked ----------------------------------------------------------

def test_baseline_cannot_be_faked(tmp_path):
    with pytest.raises(ValueError, match="the baseline has no targets"):
        Condition(kind="baseline", targets=(Target(layer=0, role="attention"),))
    with pytest.raises(ValueError, match="reserved for the baseline"):
        Condition(targets=(Target(layer=0, role="attention"),), label="baseline (no ablation)")
    with pytest.raises(ValueError, match="kind"):
        Condition(targets=(Target(layer=0, role="attention"),), kind="baselines")
    path = tmp_path / "plan.yaml"
    path.write_text("conditions:\n  - {kind: baseline, targets: [{layer: 0, role: attention}]}\n")
    with pytest.raises(PlanError, match="the baseline has no targets"):
        plans.load_spec(path)
    cmap = component_map(load_model("random:qwen2").model)
    spec = plans.PlanSpec(conditions=[Condition(kind="baseline")])
    with pytest.raises(PlanError, match="cannot be the baseline"):
        plans.resolve(spec, cmap)


# --- 3. one seed, one job ---------------------------------------------------------------------

def test_draw_and_donor_seeds_are_separate(qwen2):
    cmap = component_map(qwen2.model)
    spec = plans.PlanSpec(mode="resample", donor_seed=5, generators=[
        plans.GroupSpec(kind="group", role="attention"),
        plans.RandomSpec(kind="random_matched", size=2, pool=["attention"], seeds=[3, 4])])
    plan = plans.resolve(spec, cmap)
    random = [c for c in plan.conditions if c.kind == "random_matched"]
    assert [c.draw_seed for c in random] == [3, 4]
    assert {c.donor_seed for c in plan.conditions if c.kind != "baseline"} == {5}  # same donors as the group
    with pytest.raises(ValueError, match="'seed' is ambiguous"):
        Condition.model_validate({"targets": [{"layer": 0, "role": "attention"}], "seed": 1})
    with pytest.raises(ValueError, match="donor_seed applies to mode resample only"):
        Condition(targets=(Target(layer=0, role="attention"),), donor_seed=1)


def test_seed_option_applies_to_plan_files_and_is_recorded(tmp_path, corpus_file, capsys):
    plan = tmp_path / "p.yaml"
    plan.write_text("mode: resample\ngenerators:\n  - {kind: group, role: attention}\n")
    args = ["run", "--model", "random:qwen2", "--plan", plan, "--context", "32", "--stride", "16",
            "--reference-tokens", "128", "--corpus", corpus_file, "--out", tmp_path / "p.zarr", "--seed", "7"]
    assert invoke(args, capsys)[0] == 0
    ds = open_store(tmp_path / "p.zarr")
    assert ds.attrs["donor_seed"] == 7
    assert list(ds["donor_seed"].values) == [-1, 7]


# --- 4. prefix token --------------------------------------------------------------------------

def test_gemma_scores_with_bos_and_protocol_says_so(tmp_path, corpus_file):
    gemma = load_model("random:gemma3_text")
    policy, bos = resolve_prefix("auto", gemma.tokenizer, gemma.model)
    assert policy == "bos" and bos == gemma.tokenizer.bos_token_id
    assert resolve_prefix("auto", *(lambda m: (m.tokenizer, m.model))(load_model("random:qwen2")))[0] == "none"
    corpus = load_corpus(str(corpus_file), gemma.tokenizer, max_tokens=31)
    cmap = component_map(gemma.model)
    plan = plans.resolve(plans.auto_spec(cmap, "groups"), cmap)
    proto = Protocol(context=32, stride=32, prefix_token=policy, prefix_id=bos, reference="tale",
                     reference_tokens=corpus.n_tokens, reference_sha256=corpus.sha256)
    ds = run_plan(gemma, plan, [corpus], tmp_path / "g.zarr", protocol=proto, reference=corpus, progress=False)
    assert json.loads(ds.attrs["protocol"])["prefix_token"] == "bos"
    # one window: BOS + 31 tokens, every text token scored (the first one predicted from BOS)
    ids = torch.cat([torch.tensor([bos]), corpus.ids])[None]
    with torch.no_grad():
        logits = gemma.model(input_ids=ids).logits[0, :-1]
    expected = F.cross_entropy(logits.float(), corpus.ids).item()
    assert float(ds["loss"].sel(condition="baseline")[0]) == pytest.approx(expected, abs=1e-5)
    assert int(ds["window_tokens"].sum()) == 31


# --- 5. precision as Hugging Face loads it ----------------------------------------------------

def test_nemotron_router_stays_float32_under_bfloat16(tmp_path):
    lm = load_model("random:nemotron_h", dtype="bfloat16")
    gate = lm.model.model.layers[3].mixer.gate
    assert gate.weight.dtype == torch.float32 and lm.model.lm_head.weight.dtype == torch.bfloat16
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path), dtype="bfloat16")
    assert again.model.model.layers[3].mixer.gate.weight.dtype == torch.float32


# --- 6. a donor is never the window it replaces ----------------------------------------------

def test_too_short_reference_is_refused_before_anything_runs(tmp_path, qwen2, corpus_file):
    cmap = component_map(qwen2.model)
    plan = plans.resolve(plans.auto_spec(cmap, "groups", mode="resample"), cmap)
    corpus = load_corpus(str(corpus_file), qwen2.tokenizer, max_tokens=80)
    with pytest.raises(InterventionError, match="at least 96 tokens .* its own donor"):
        run_plan(qwen2, plan, [corpus], tmp_path / "r.zarr", context=32, stride=16, progress=False)
    assert not (tmp_path / "r.zarr").exists()
    from workbench.interventions import donor_windows
    ref = torch.arange(96)
    for start in range(0, 65, 8):
        donors = donor_windows(ref, 32, 1, seed=0, avoid=[start], salt=start)
        assert abs(int(donors[0, 0]) - start) >= 32  # never overlaps its window


# --- 7. bits per byte that add up -------------------------------------------------------------

def test_bits_per_byte_counts_bytes_of_scored_tokens(tmp_path, qwen2):
    text = "naïve café, € and 😀 " * 20
    path = tmp_path / "utf8.txt"
    path.write_text(text)
    raw = text.encode()
    cut = next(k for k in range(40, 80) if raw[k] & 0xC0 == 0x80)  # inside a multi-byte character
    corpus = load_corpus(str(path), qwen2.tokenizer, max_tokens=cut)
    whole_chars = raw[:cut].decode("utf-8", errors="ignore").encode()
    assert corpus.scored_bytes() == len(whole_chars) - 1  # the first byte is context, not scored
    cmap = component_map(qwen2.model)
    plan = plans.resolve(plans.auto_spec(cmap, "groups"), cmap)
    ds = run_plan(qwen2, plan, [corpus], tmp_path / "b.zarr", context=32, stride=16, progress=False)
    nll = np.nansum(ds["window_nll"].sel(condition="baseline").values)
    assert float(ds["bits_per_byte"].sel(condition="baseline")[0]) == pytest.approx(
        nll / (math.log(2) * (len(whole_chars) - 1)), rel=1e-12)


# --- 8. mean-ablation reference ---------------------------------------------------------------

def test_default_reference_is_a_held_out_tail_and_means_skip_first_positions(store, qwen2, corpus_file):
    ds = open_store(store)
    proto = json.loads(ds.attrs["protocol"])
    assert "last 128 tokens" in proto["reference"] and proto["reference_skip"] == 16
    whole = load_corpus(str(corpus_file), qwen2.tokenizer)
    scored, ref = load_with_reference(str(corpus_file), qwen2.tokenizer, 128)
    assert int(ds["n_tokens"].values[0]) == whole.n_tokens - 128 == scored.n_tokens
    assert torch.equal(torch.cat([scored.ids, ref.ids]), whole.ids)
    iv = Intervener(qwen2.model)
    comp = iv.cmap.by_role("attention")[0]
    batch = ref.ids[:64].reshape(2, 32)
    means = iv.component_means([batch], [comp], skip=16)
    out = iv.outputs(batch, [comp])[comp.key]
    torch.testing.assert_close(means[comp.key].float(), out[:, 16:].double().mean((0, 1)).float())


# --- 9. honest QC -----------------------------------------------------------------------------

@pytest.mark.parametrize("fast", [False, True])
def test_an_edit_that_did_not_fire_is_flagged(tmp_path, qwen2, corpus_file, monkeypatch, capsys, fast):
    from workbench.fast import SharedPrefix

    cmap = component_map(qwen2.model)
    plan = plans.resolve(plans.auto_spec(cmap, "groups"), cmap)
    corpus = load_corpus(str(corpus_file), qwen2.tokenizer)
    real, real_init = Intervener.run, SharedPrefix.__init__

    def drop_edits(self, ids, condition, **kw):
        out = real(self, ids, condition, **kw)
        if condition.kind != "baseline" and ids.shape[1] > 8:  # not the load-time check
            out.fired = out.fired[:-1]
        return out

    def expect_more(self, iv, conditions, **kw):  # an edit that never ran
        real_init(self, iv, conditions, **kw)
        self.expected = [e + ["unissued"] if e else e for e in self.expected]

    monkeypatch.setattr(Intervener, "run", drop_edits)
    monkeypatch.setattr(SharedPrefix, "__init__", expect_more)
    ds = run_plan(qwen2, plan, [corpus], tmp_path / "q.zarr", context=32, stride=16, progress=False, fast=fast)
    assert list(ds["qc_fired"].values) == [True, False]
    monkeypatch.undo()
    code, out, err = invoke(["show", tmp_path / "q.zarr"], capsys)
    assert code == 0 and "NOT FIRED" in out and "QC NOT FIRED: attention off" in err


# --- 10. concurrent runs into one store -------------------------------------------------------

@pytest.mark.slow
def test_two_processes_share_one_new_store(tmp_path, corpus_file):
    out = tmp_path / "shared.zarr"
    args = [sys.executable, "-m", "workbench.cli", "run", "--model", "random:qwen2", "--preset", "sweep",
            "--context", "32", "--stride", "16", "--reference-tokens", "128", "--corpus", str(corpus_file),
            "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    counts = [int(e.split("computed ")[1].split(" ")[0]) for e in errs]
    ds = open_store(out)
    assert sum(counts) == ds.sizes["condition"] and bool(ds["complete"].all())  # each exactly once
    serial = tmp_path / "serial.zarr"
    subprocess.run(args[:-1] + [str(serial)], cwd=ROOT, env=env, check=True, capture_output=True)
    np.testing.assert_allclose(ds["window_nll"].values, open_store(serial)["window_nll"].values, rtol=1e-6)
    assert not (tmp_path / ".shared.zarr.claims").exists()


# --- 12. load-time check on the real model ----------------------------------------------------

def test_model_check_passes_and_names_a_wrong_component(qwen2, tmp_path, corpus_file):
    iv = Intervener(qwen2.model)
    record = check_model(iv)
    assert record["ok"] and record["components_checked"] == len(iv.cmap.components)
    from dataclasses import replace

    from workbench.architectures import ComponentMap

    wrong = [replace(c, path=c.path + ".k_proj") if c.key == "attention@0" else c for c in iv.cmap.components]
    bad = Intervener(qwen2.model, ComponentMap(iv.cmap.model_type, iv.cmap.family, iv.cmap.n_layers, tuple(wrong)))
    record = check_model(bad)
    assert not record["ok"] and "attention@0" in record["problems"][0]
    import workbench.runner as runner

    cmap = component_map(qwen2.model)
    plan = plans.resolve(plans.auto_spec(cmap, "groups"), cmap)
    corpus = load_corpus(str(corpus_file), qwen2.tokenizer)
    real = runner.Intervener
    try:
        runner.Intervener = lambda model: bad
        with pytest.raises(ModelCheckError, match="attention@0"):
            run_plan(qwen2, plan, [corpus], tmp_path / "m.zarr", context=32, stride=16, progress=False)
    finally:
        runner.Intervener = real
    assert not (tmp_path / "m.zarr").exists()


def test_store_records_the_model_check(store):
    check = json.loads(open_store(store).attrs["model_check"])
    assert check["ok"] and check["tokens"] == 8 and set(check["max_logit_change"]) >= {"attention@0", "layer@0"}


# --- 14. bad input: one line, exit 2, stores untouched ----------------------------------------

BAD_NUMBERS = [
    (["--batch-size", "-1"], "--batch-size -1 is invalid"), (["--batch-size", "0"], "--batch-size 0 is invalid"),
    (["--max-tokens", "-49000"], "--max-tokens -49000 is invalid"), (["--max-tokens", "0"], "is invalid"),
    (["--max-tokens", "1"], "is invalid"), (["--context", "1"], "--context 1 is invalid"),
    (["--stride", "0"], "--stride 0 is invalid"), (["--stride", "64"], "--stride 64 is invalid"),
    (["--seeds", "0"], "--seeds 0 is invalid"), (["--batch-size", "x"], "Invalid value for '--batch-size'"),
    (["--bogus"], "No such option: --bogus"), (["--prefix-token", "eos"], "unknown --prefix-token 'eos'"),
    (["--dtype", "float8"], "unknown dtype 'float8'"), (["--device", "tpu"], "unknown device 'tpu'"),
]


@pytest.mark.parametrize("extra, message", BAD_NUMBERS, ids=[" ".join(a) for a, _ in BAD_NUMBERS])
def test_bad_options_one_line_exit_2_store_untouched(extra, message, store, corpus_file, capsys):
    before = digest(store)
    code, out, err = invoke(["run", *RUN, "--corpus", corpus_file, "--out", store, *extra], capsys)
    assert code == 2, err
    lines = [x for x in err.strip().splitlines() if x]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert digest(store) == before


def test_bad_option_on_a_new_store_creates_nothing(tmp_path, corpus_file, capsys):
    code, _, _ = invoke(["run", *RUN, "--corpus", corpus_file, "--out", tmp_path / "new.zarr", "--batch-size", "0"],
                        capsys)
    assert code == 2 and not (tmp_path / "new.zarr").exists()


def test_usage_errors_are_one_line(capsys):
    for argv, message in ((["nope"], "No such command 'nope'"), (["run"], "Missing option"),
                          (["show"], "Missing argument")):
        code, _, err = invoke(argv, capsys)
        lines = [x for x in err.strip().splitlines() if x]
        assert code == 2 and len(lines) == 1 and message in lines[0], err


def test_broken_model_files_and_specs(tmp_path, corpus_file, capsys):
    lm = load_model("random:qwen2")
    good = tmp_path / "good"
    lm.model.save_pretrained(good)
    lm.tokenizer.save_pretrained(good)
    cases = {}
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + os.urandom(64))
    cases[str(garbage)] = "cannot load GGUF file"
    (tmp_path / "dir.gguf").mkdir()
    cases[str(tmp_path / "dir.gguf")] = "is a folder, not a .gguf file"
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((good / "config.json").read_text())
    cases[str(no_weights)] = "has a config.json but no weights"
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    cases[str(bad_json)] = "is not valid JSON"
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tok / f).write_bytes((good / f).read_bytes())
    cases[str(no_tok)] = "has no tokenizer files"
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for f in good.iterdir():
        (truncated / f.name).write_bytes(f.read_bytes())
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    cases[str(truncated)] = "cannot load model folder"
    cases[str(tmp_path / "missing" / "model")] = "model folder"
    for spec, message in cases.items():
        code, _, err = invoke(["run", "--model", spec, "--preset", "smoke", "--corpus", corpus_file,
                               "--out", tmp_path / "o.zarr"], capsys)
        lines = [x for x in err.strip().splitlines() if x and not x.startswith(("loading", "Loading"))]
        assert code == 2 and lines[-1].startswith("error:") and message in lines[-1], (spec, err)
    assert "does not exist" in invoke(["run", "--model", str(tmp_path / "missing" / "model"), "--preset", "smoke",
                                       "--corpus", corpus_file, "--out", tmp_path / "o.zarr"], capsys)[2]
    code, _, err = invoke(["run", *RUN, "--plan", tmp_path, "--corpus", corpus_file, "--out", tmp_path / "o.zarr"],
                          capsys)
    assert code == 2 and "give exactly one of" in err
    code, _, err = invoke(["run", "--model", "random:qwen2", "--plan", tmp_path, "--corpus", corpus_file,
                           "--out", tmp_path / "o.zarr"], capsys)
    assert code == 2 and "is a folder; give a YAML or JSON plan file" in err


def test_brackets_in_messages_survive(tmp_path, capsys):
    code, _, err = invoke(["show", tmp_path / "[draft]" / "run.zarr"], capsys)
    assert code == 2 and "[draft]" in err


def test_plan_without_conditions_is_refused(tmp_path, corpus_file, capsys):
    plan = tmp_path / "empty.yaml"
    plan.write_text("name: nothing\ngenerators: []\n")
    code, _, err = invoke(["run", "--model", "random:qwen2", "--plan", plan, "--corpus", corpus_file,
                           "--out", tmp_path / "e.zarr"], capsys)
    assert code == 2 and "has no ablation conditions" in err and not (tmp_path / "e.zarr").exists()


def test_non_finite_model_is_reported_not_hidden(tmp_path, corpus_file, capsys):
    lm = load_model("random:qwen2")
    with torch.no_grad():
        lm.model.lm_head.weight[3] = float("nan")
    folder = tmp_path / "nan-model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    args = ["run", *RUN, "--corpus", corpus_file, "--out", tmp_path / "n.zarr"]
    args[2] = str(folder)
    code, _, err = invoke(args, capsys)
    assert code == 2 and "baseline loss is not finite" in err
    ds = open_store(tmp_path / "n.zarr")
    assert not ds["complete"].any()  # a refused baseline is not a result
    code, _, err = invoke(args, capsys)  # so the same command refuses again, not "done: 4/4"
    assert code == 2 and "baseline loss is not finite" in err and "done:" not in err
    code, out, _ = invoke(["show", tmp_path / "n.zarr"], capsys)
    assert code == 0 and "0/4 conditions complete" in " ".join(out.split()) and "NON-FINITE" not in out


def test_a_complete_non_finite_baseline_from_an_older_store_is_refused_again(tmp_path, corpus_file, capsys):
    """Stores written before the fix hold a refused baseline marked complete: show refuses it and
    a rerun recomputes it (and refuses the model again)."""
    from workbench import store as store_mod

    lm = load_model("random:qwen2")
    with torch.no_grad():
        lm.model.lm_head.weight[3] = float("nan")
    folder = tmp_path / "nan-model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    args = ["run", *RUN, "--corpus", corpus_file, "--out", tmp_path / "n.zarr"]
    args[2] = str(folder)
    assert invoke(args, capsys)[0] == 2
    n_w = open_store(tmp_path / "n.zarr").sizes["window"]
    store_mod.write_condition(tmp_path / "n.zarr", 0, {  # what the older runner wrote
        "loss": np.array([np.nan]), "window_nll": np.full((1, n_w), np.nan), "elapsed_s": np.array(1.0),
        "n_nonfinite": np.array([int((open_store(tmp_path / "n.zarr")["window_tokens"].values > 0).sum())])})
    code, _, err = invoke(["show", tmp_path / "n.zarr"], capsys)
    assert code == 2 and "non-finite baseline" in err and len(err.strip().splitlines()) == 1
    code, _, err = invoke(args, capsys)
    assert code == 2 and "failed verification and will be recomputed" in err and "baseline loss is not finite" in err
    assert not open_store(tmp_path / "n.zarr")["complete"].any()


def test_damaged_store_is_recomputed_on_resume_and_refused_by_show(tmp_path, store, corpus_file, capsys):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    good = open_store(copy)["window_nll"].values.copy()
    chunk = next((copy / "window_nll").glob("1.*"))
    chunk.unlink()  # a deleted chunk reads as NaN: must not pass for "done"
    code, _, err = invoke(["show", copy], capsys)
    assert code == 2 and "missing" in err and "rerun the same" in err
    lost = next((copy / "loss").glob("2.*"))
    lost.write_bytes(lost.read_bytes()[:3])  # truncated: fails to decompress
    code, _, err = invoke(["run", *RUN, "--corpus", corpus_file, "--out", copy], capsys)
    assert code == 0 and "failed verification and will be recomputed" in err
    np.testing.assert_allclose(open_store(copy)["window_nll"].values, good, rtol=1e-6)
    assert invoke(["show", copy], capsys)[0] == 0


def test_deleted_loss_and_window_nll_chunks_are_damage_not_a_nan_result(tmp_path, store, corpus_file, capsys):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    good = open_store(copy)["window_nll"].values.copy()
    for name in ("loss", "window_nll"):  # both chunks of condition 1: every value reads as NaN
        next((copy / name).glob("1.*")).unlink()
    code, _, err = invoke(["show", copy], capsys)
    lines = [x for x in err.strip().splitlines() if x]
    assert code == 2 and len(lines) == 1 and "missing data (loss, window_nll" in lines[0], err
    code, _, err = invoke(["run", *RUN, "--corpus", corpus_file, "--out", copy], capsys)
    assert code == 0 and "failed verification and will be recomputed" in err and "computed 1 condition" in err
    np.testing.assert_allclose(open_store(copy)["window_nll"].values, good, rtol=1e-6)
    assert invoke(["show", copy], capsys)[0] == 0


def test_a_genuine_non_finite_ablation_still_reads_as_a_result(tmp_path, store, capsys):
    import shutil

    from workbench import store as store_mod

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    ds = open_store(copy)
    scored = ds["window_tokens"].values > 0
    nll = ds["window_nll"].values[1].copy()
    nll[scored] = np.nan  # NaN logits from the edit: a result, every scored window non-finite
    store_mod.write_condition(copy, 1, {"loss": np.array([np.nan]), "window_nll": nll,
                                        "n_nonfinite": scored.sum(axis=1).astype(np.int32)})
    code, out, err = invoke(["show", copy], capsys)
    assert code == 0 and "NON-FINITE" in out and "QC NON-FINITE" in err


def test_stale_layout_folders_are_cleaned(tmp_path, corpus_file, capsys):
    import socket

    stale = tmp_path / f".s.zarr.{socket.gethostname()}.999999999.deadbeef.tmp"
    stale.mkdir()
    assert invoke(["run", *RUN, "--corpus", corpus_file, "--out", tmp_path / "s.zarr"], capsys)[0] == 0
    assert not stale.exists()


@pytest.mark.slow
def test_ctrl_c_exits_130_and_resume_finishes(tmp_path, corpus_file):
    out = tmp_path / "c.zarr"
    long = tmp_path / "long.txt"  # long enough that the interrupt lands mid-run
    long.write_text(corpus_file.read_text() * 20)
    args = [sys.executable, "-m", "workbench.cli", "run", "--model", "random:qwen2", "--preset", "sweep",
            "--mode", "resample", "--context", "32", "--stride", "4", "--reference-tokens", "128",
            "--corpus", str(long), "--out", str(out), "--threads", "1"]
    proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "complete").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted; rerun the same command to resume" in err
    assert not bool(open_store(out)["complete"].all())
    assert subprocess.run(args, cwd=ROOT, capture_output=True).returncode == 0
    assert bool(open_store(out)["complete"].all())


def test_config_hash_ignores_where_the_model_was_read_from(tmp_path):
    from workbench.loading import config_hash

    lm = load_model("random:qwen2")
    for name in ("a", "b"):
        lm.model.save_pretrained(tmp_path / name)
        lm.tokenizer.save_pretrained(tmp_path / name)
    a, b = load_model(str(tmp_path / "a")), load_model(str(tmp_path / "b"))
    assert a.model.config._name_or_path != b.model.config._name_or_path
    assert config_hash(a.model) == config_hash(b.model)
    b.model.config.rms_norm_eps *= 2
    assert config_hash(a.model) != config_hash(b.model)


# --- 15. a study folder is checked before its settings are written -----------------------------

@pytest.mark.slow
def test_a_study_folder_is_checked_before_study_json_is_written(tmp_path, corpus_file, capsys):
    out = tmp_path / "s"
    args = ["study", "--models", "random:qwen2", "--corpus", corpus_file, "--tasks", "none", "--seeds", "1",
            "--grid", "1", "--context", "32", "--stride", "16", "--out", out]
    code, _, err = invoke(args, capsys)
    assert code == 0, err
    settings, stores = (out / "study.json").read_bytes(), digest(out)
    code, _, err = invoke(args + ["--max-tokens", "200"], capsys)  # other settings, same folder
    assert code == 2 and "holds another study (max_tokens: folder None, this study 200)" in err
    assert err.strip().splitlines()[-1].startswith("error:") and "Traceback" not in err
    code, _, err = invoke(["study", "--models", "random:qwen3_5", *args[3:]], capsys)  # another model set
    assert code == 2 and "models: folder ['random:qwen2'], this study ['random:qwen3_5']" in err
    code, _, err = invoke(args + ["--max-tokens", "200", "--replace-settings"], capsys)
    assert code == 2 and "different setup" in err  # the store refuses it, before study.json is written
    assert (out / "study.json").read_bytes() == settings and digest(out) == stores
    code, _, err = invoke(args + ["--no-fast", "--batch-size", "4"], capsys)  # speed settings: the same study
    assert code == 0, err


# --- 16. a full disk or a read-only folder: one line, nothing reads as complete, resume works --
# (simulated in-process with OSError(ENOSPC / EROFS) at the named moment: a real small tmpfs needs
# mount rights, and root ignores read-only permissions)

def _os_error(code):
    return OSError(code, os.strerror(code))


def test_disk_full_while_laying_out_leaves_no_store(tmp_path, corpus_file, capsys, monkeypatch):
    import errno

    import xarray as xr

    real = xr.Dataset.to_zarr

    def full(self, store=None, *args, mode=None, **kw):
        if mode == "w-":  # the layout of a new store
            raise _os_error(errno.ENOSPC)
        return real(self, store, *args, mode=mode, **kw)

    monkeypatch.setattr(xr.Dataset, "to_zarr", full)
    code, _, err = invoke(["run", *RUN, "--corpus", corpus_file, "--out", tmp_path / "f.zarr"], capsys)
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no store, no half-laid-out folder


def test_disk_full_mid_run_keeps_what_was_written_and_resumes(tmp_path, store, corpus_file, capsys, monkeypatch):
    import errno

    import xarray as xr

    real = xr.Dataset.to_zarr

    def fill_up(self, store=None, *args, region=None, **kw):
        if region and region["condition"].start == 1:  # the disk fills as the second condition is written
            raise _os_error(errno.ENOSPC)
        return real(self, store, *args, region=region, **kw)

    monkeypatch.setattr(xr.Dataset, "to_zarr", fill_up)
    out = tmp_path / "d.zarr"
    code, _, err = invoke(["run", *RUN, "--corpus", corpus_file, "--out", out], capsys)
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert "cannot write condition 1" in errors[0] and "No space left on device" in errors[0]
    assert list(open_store(out)["complete"].values) == [True, False, False, False]
    monkeypatch.undo()
    code, _, err = invoke(["run", *RUN, "--corpus", corpus_file, "--out", out], capsys)
    assert code == 0 and "computed 3 condition(s)" in err
    np.testing.assert_allclose(open_store(out)["window_nll"].values, open_store(store)["window_nll"].values,
                               rtol=1e-6)


def test_read_only_output_folder_is_one_line_and_the_store_untouched(tmp_path, store, corpus_file, capsys,
                                                                       monkeypatch):
    import errno
    import shutil
    import tempfile

    from workbench import claims, store as store_mod

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    store_mod.mark_incomplete(copy, [3])  # something left to compute
    before = digest(copy)

    def read_only(*args, **kwargs):
        raise _os_error(errno.EROFS)

    monkeypatch.setattr(claims.os, "open", read_only)  # the claims beside the store cannot be written
    code, _, err = invoke(["run", *RUN, "--corpus", corpus_file, "--out", copy], capsys)
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Read-only file system" in errors[0] and "Traceback" not in err
    assert digest(copy) == before
    monkeypatch.setattr(tempfile, "mkdtemp", read_only)  # a new store in that folder
    code, _, err = invoke(["run", *RUN, "--corpus", corpus_file, "--out", tmp_path / "new.zarr"], capsys)
    assert code == 2 and "nothing can be created in" in err and "Read-only file system" in err
    assert not (tmp_path / "new.zarr").exists()


def test_a_baseline_its_holder_left_unwritten_is_computed_before_the_ablations(tmp_path, qwen2, corpus_file,
                                                                               monkeypatch):
    """Another process held the baseline's claim and let go without writing it (it refused a
    non-finite baseline, or died): the ablations wait for it, then this process computes it first,
    so their QC compares with it (not 'not checked')."""
    from workbench.claims import Claims

    cmap = component_map(qwen2.model)
    plan = plans.resolve(plans.auto_spec(cmap, "smoke"), cmap)
    corpus = load_corpus(str(corpus_file), qwen2.tokenizer)
    out = tmp_path / "b.zarr"
    kw = dict(context=32, stride=16, progress=False)
    run_plan(qwen2, plan, [corpus], out, only=(), **kw)
    other = Claims(out)
    assert other.try_claim(0)  # the other process holds the baseline
    real = Claims.wait_claim

    def other_lets_go(self, index):
        if index == 0 and self is not other:
            other.release(0)  # ... and lets go without writing it
        return real(self, index)

    monkeypatch.setattr(Claims, "wait_claim", other_lets_go)
    ds = run_plan(qwen2, plan, [corpus], out, **kw)
    assert bool(ds["complete"].all()) and (ds["qc_changed"].values[1:] == 1).all()


def test_a_full_disk_while_writing_study_json_keeps_the_old_settings(tmp_path, monkeypatch):
    import errno

    from workbench import study

    settings = study.StudySettings(models=["random:qwen2"], corpora=["books"])
    (tmp_path / "study.json").write_text("old")

    def full(*args):
        raise _os_error(errno.ENOSPC)

    monkeypatch.setattr(study.os, "replace", full)
    with pytest.raises(study.StudyError, match=r"cannot write .*study.json \(No space left on device\)"):
        study._write_settings(tmp_path, settings)
    assert [p.name for p in tmp_path.iterdir()] == ["study.json"] and (tmp_path / "study.json").read_text() == "old"
