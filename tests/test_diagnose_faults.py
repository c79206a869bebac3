"""diagnose on short stores, and its guarantees under faults: kill -9 at named moments, damaged
groups, a claimed row, two processes at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from workbench.claims import Claims
from workbench.corpora import load_corpus
from workbench.diagnose import (DEFAULT_TOKENS, FAST, FULL, diagnose, open_activations, open_diagnostics,
                                sample_capacity)
from workbench.loading import load_model
from workbench.plans import BASELINE, Condition, Plan, Target
from workbench.runner import run_plan

from test_store_cli import invoke

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness. ") * 6
PLAN = Plan(name="faults", conditions=(BASELINE, Condition(targets=(Target(layer=0, role="attention"),)),
                                       Condition(targets=(Target(layer=1, role="mlp"),))))
OPTIONS = dict(tokens=64, batch_size=3, diagnostics=("cka", "norms", "probes", "maps"))
# a diagnose subprocess that SIGKILLs itself when zarr is about to write a key matching WHEN
KILLER = """
import os, signal, sys
from zarr.storage import LocalStore
from workbench.diagnose import diagnose
when, seen = sys.argv[2], []
set_ = LocalStore.set

async def killing_set(self, key, value, *args, **kwargs):
    if key.endswith(when):
        seen.append(key)
        if len(seen) == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
    return await set_(self, key, value, *args, **kwargs)

LocalStore.set = killing_set
diagnose(sys.argv[1], progress=False, tokens=64, batch_size=3, diagnostics=("cka", "norms", "probes", "maps"))
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    (folder / "tale.txt").write_text(TEXT)
    loaded = load_model("random:qwen2")
    out = folder / "run.zarr"
    run_plan(loaded, PLAN, [load_corpus(str(folder / "tale.txt"), loaded.tokenizer)], out, context=32,
             stride=16, batch_size=4, progress=False)
    return out


@pytest.fixture(scope="module")
def reference(made, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "run.zarr"
    shutil.copytree(made, path)
    diagnose(path, progress=False, **OPTIONS)
    return path


def _copy(made, tmp_path) -> Path:
    path = tmp_path / "run.zarr"
    shutil.copytree(made, path)
    return path


def _same(path: Path, reference: Path) -> None:
    got, want = open_activations(path), open_activations(reference)
    assert got["complete"].values.all()
    for name in ("hidden", "component_out", "final_hidden", "nll", "top1_id"):
        np.testing.assert_array_equal(got[name].values, want[name].values)
    got, want = open_diagnostics(path), open_diagnostics(reference)
    assert sorted(got.data_vars) == sorted(want.data_vars)
    for name in want.data_vars:
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)


# --- short stores: the default sample adapts ----------------------------------------------------

def test_default_sample_adapts_to_a_short_store(made, tmp_path):
    path = _copy(made, tmp_path)
    said = []
    diagnose(path, progress=False, diagnostics=(), log=said.append)
    act = open_activations(path)
    assert act.sizes["token"] < DEFAULT_TOKENS and act["complete"].values.all()
    assert len(said) == 1 and f"sampling all {act.sizes['token']}" in said[0]
    diagnose(path, progress=False, diagnostics=(), log=said.append)  # the same sample again: resumed
    assert len(said) == 2


def test_sample_capacity():
    assert sample_capacity(100, 32, None) == 96  # 3 windows of 32
    assert sample_capacity(100, 32, 7) == 93  # 3 windows of 31 text tokens after the prefix
    assert sample_capacity(40, 32, None) == 0  # one window: too few for a sample


def test_run_diagnose_on_a_short_run(tmp_path, capsys):
    corpus = tmp_path / "tale.txt"
    corpus.write_text(TEXT)
    run = ["run", "--model", "random:qwen2", "--preset", "smoke", "--context", "32", "--stride", "16",
           "--reference-tokens", "64", "--corpus", corpus, "--out", tmp_path / "a.zarr"]
    code, _, err = invoke([*run, "--diagnose"], capsys)
    assert code == 0, err
    assert "sampling all" in err and open_diagnostics(tmp_path / "a.zarr") is not None


@pytest.mark.parametrize("extra, message", [
    (["--diagnose", "--diagnose-tokens", "100000"], "is more than corpus"),
    (["--diagnose-tokens", "64"], "go with --diagnose"),
    (["--diagnose-full"], "go with --diagnose"),
    (["--diagnose", "--diagnose-tokens", "3"], "give at least 8"),
])
def test_run_refuses_bad_diagnose_options_before_running(tmp_path, capsys, extra, message):
    corpus = tmp_path / "tale.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "a.zarr"
    code, _, err = invoke(["run", "--model", "random:qwen2", "--preset", "smoke", "--context", "32", "--stride",
                           "16", "--reference-tokens", "64", "--corpus", corpus, "--out", out, *extra], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_full_is_the_slow_set():
    assert FAST["map_methods"] == ("pca",) and set(FULL["map_methods"]) == {"pca", "umap"}
    assert FULL["probe_layers"] == "all"


# --- kill -9 at named moments -------------------------------------------------------------------

def _killed(path: Path, when: str, nth: int = 1) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(path), when, str(nth)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == -9, proc.stderr[-2000:]


@pytest.mark.slow
def test_kill_while_laying_out_activations(made, reference, tmp_path):
    """Killed after the small variables, before ``hidden`` exists: a rerun lays it out again
    (it used to crash on every rerun with KeyError: 'hidden')."""
    path = _copy(made, tmp_path)
    _killed(path, "hidden/.zarray")
    diagnose(path, progress=False, **OPTIONS)
    _same(path, reference)
    assert not list(path.glob(".*.tmp"))  # the killed process's folder is gone


@pytest.mark.slow
def test_kill_while_writing_diagnostics(made, reference, tmp_path):
    """Killed with part of the diagnostics written: a rerun must not accept that part."""
    path = _copy(made, tmp_path)
    _killed(path, "norm_ratio/.zarray")
    assert open_activations(path)["complete"].values.all()
    diagnose(path, progress=False, **OPTIONS)
    _same(path, reference)


@pytest.mark.slow
def test_kill_mid_condition_recomputes_it(made, reference, tmp_path):
    path = _copy(made, tmp_path)
    _killed(path, "/2.0.0.0", nth=1)  # the third row's first hidden chunk... or any array's
    done = open_activations(path)["complete"].values
    assert not done.all()
    diagnose(path, progress=False, **OPTIONS)
    _same(path, reference)


# --- damage found on resume ---------------------------------------------------------------------

def test_lost_activation_chunk_is_recomputed(reference, tmp_path):
    path = _copy(reference, tmp_path)
    (path / "activations" / "hidden" / "1.0.0.0").unlink()
    said = []
    diagnose(path, progress=False, log=said.append, **OPTIONS)
    assert any("failed verification" in s and "hidden/1.0.0.0" in s for s in said), said
    _same(path, reference)


def test_lost_diagnostics_chunk_is_recomputed(reference, tmp_path):
    path = _copy(reference, tmp_path)
    chunk = next(p for p in (path / "diagnostics" / "cka_linear").iterdir() if not p.name.startswith("."))
    chunk.unlink()
    said = []
    diagnose(path, progress=False, log=said.append, **OPTIONS)
    assert any("diagnostics group failed verification" in s for s in said), said
    _same(path, reference)


# --- claims -------------------------------------------------------------------------------------

def test_a_claimed_row_is_left_to_its_holder(made, reference, tmp_path):
    """Another process holds row 1: diagnose does the other rows, then waits for it."""
    path = _copy(made, tmp_path)
    group_rows = len(PLAN.conditions)  # every edit distinct: one row each
    other = Claims(path.with_name(f"{path.name}.diagnose"))
    assert other.try_claim(1)
    worker = threading.Thread(target=diagnose, args=(path,), kwargs=dict(progress=False, **OPTIONS))
    worker.start()
    deadline = time.time() + 120
    while time.time() < deadline:
        act = open_activations(path)
        if act is not None and act["complete"].values.sum() == group_rows - 1:
            break
        time.sleep(0.2)
    time.sleep(0.5)
    done = open_activations(path)["complete"].values
    assert done.tolist() == [i != 1 for i in range(group_rows)] and worker.is_alive()
    other.release(1)  # as if its holder died: the waiting process takes the row over
    worker.join(timeout=120)
    assert not worker.is_alive()
    _same(path, reference)
    assert not path.with_name(f".{path.name}.diagnose.claims").exists()


@pytest.mark.slow
def test_two_processes_diagnose_one_store(made, reference, tmp_path):
    path = _copy(made, tmp_path)
    code = ("import sys; from workbench.diagnose import diagnose; diagnose(sys.argv[1], progress=False, tokens=64, "
            "batch_size=3, diagnostics=('cka', 'norms', 'probes', 'maps'))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    _same(path, reference)
