"""Runs on a local Dask cluster (127.0.0.1) give the serial run's store, even when a worker dies."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import xarray as xr

import shutil

import typer

from workbench import cluster, plans, store
from workbench.architectures import component_map
from workbench.cluster import PlanRun, batches, connect, run_batch, run_plan_cluster, task_size
from workbench.cluster_options import Target, target
from workbench.loading import load_model
from workbench.runner import prepare_inputs, run_plan


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    loaded = load_model("random:qwen2")
    cmap = component_map(loaded.model)
    plan = plans.resolve(plans.auto_spec(cmap, "study", seeds=2), cmap)  # 9 conditions, 2 of them twins
    corpora, ref, protocol = prepare_inputs(loaded, ["news"], max_tokens=4000, context=32, stride=16,
                                            batch_size=8)
    kw = dict(protocol=protocol, reference=ref, progress=False)
    serial = run_plan(loaded, plan, corpora, tmp_path_factory.mktemp("serial") / "s.zarr", **kw)
    return loaded, plan, corpora, kw, serial.load()


@pytest.fixture(scope="module")
def client():
    with connect(n_workers=2, threads_per_worker=1, dashboard_address=":0") as c:
        yield c


def assert_same_results(ds: xr.Dataset, serial: xr.Dataset) -> None:
    assert bool(ds["complete"].all())
    xr.testing.assert_equal(ds.drop_vars("elapsed_s").load(), serial.drop_vars("elapsed_s"))
    # computed where the serial run computed, copied (elapsed 0) where it copied a twin
    np.testing.assert_array_equal(ds["elapsed_s"].values > 0, serial["elapsed_s"].values > 0)


def test_batches_keep_twins_together_and_check_size():
    loaded = load_model("random:qwen2")
    cmap = component_map(loaded.model)
    plan = plans.resolve(plans.auto_spec(cmap, "study", seeds=2), cmap)
    parts = batches(plan, list(range(len(plan.conditions))), 2)
    assert sorted(i for p in parts for i in p) == list(range(len(plan.conditions)))
    assert parts[0] == [0] and plan.conditions[0].kind == "baseline"  # alone, first
    joined = batches(plan, list(range(len(plan.conditions))), 2, baseline_alone=False)
    assert 0 in joined[0] and len(joined) == len(parts) - 1
    sweep = [i for i, c in enumerate(plan.conditions) if c.kind == "sweep"]
    halves = batches(plan, sweep, len(sweep) // 2)
    assert [[plan.conditions[i].targets[0].layer for i in p] for p in halves] == [[0, 2], [1, 3]]  # dealt out
    for part in parts:
        effects = {plan.conditions[i].effect_id for i in part}
        twins = [j for j, c in enumerate(plan.conditions) if c.effect_id in effects]
        assert sorted(twins) == sorted(part)  # no edit split across tasks
    assert max(len(p) for p in parts) <= 3
    with pytest.raises(ValueError, match="at least 1"):
        batches(plan, [0], 0)
    # the fast path shares a clean pass within a task: a worker's share, up to one runner group,
    # as many tasks for each worker
    assert [task_size(8, 2, True), task_size(33, 2, True), task_size(100, 2, True)] == [4, 9, 13]
    assert task_size(8, 2, False) == 1


def test_connect_needs_one_target():
    with pytest.raises(ValueError, match="exactly one"):
        with connect():
            pass
    with pytest.raises(ValueError, match="exactly one"):
        with connect("tcp://127.0.0.1:1", 2):
            pass


@pytest.mark.slow
def test_two_workers_give_the_serial_store(setup, client, tmp_path):
    loaded, plan, corpora, kw, serial = setup
    results, messages = [], []
    ds = run_plan_cluster(loaded, plan, corpora, tmp_path / "c.zarr", client=client, batch=2,
                          on_batch=results.append, log=messages.append, **kw)
    assert_same_results(ds, serial)
    n = len(plan.conditions)
    # every condition computed (or copied from its twin) exactly once across the cluster
    assert sum(r["computed"] + r["copied"] for r in results) == n
    assert all(r["done_before"] == 0 for r in results)
    assert len({r["pid"] for r in results}) == 2  # both workers took tasks
    assert not (tmp_path / ".c.zarr.claims").exists()
    assert any("dashboard" in m for m in messages)
    # a rerun finds everything complete and submits nothing
    again = []
    run_plan_cluster(loaded, plan, corpora, tmp_path / "c.zarr", client=client, on_batch=again.append, **kw)
    assert again == []


@pytest.mark.slow
def test_a_killed_worker_loses_nothing(setup, client, tmp_path):
    loaded, plan, corpora, kw, serial = setup
    out, n = tmp_path / "k.zarr", len(plan.conditions)
    results, failure = [], []

    def go():
        try:
            run_plan_cluster(loaded, plan, corpora, out, client=client, batch=1, on_batch=results.append, **kw)
        except Exception as exc:  # reported below
            failure.append(exc)

    runner = threading.Thread(target=go, daemon=True)
    runner.start()
    pids = client.run(os.getpid)
    killed, deadline = None, time.time() + 60
    while killed is None and time.time() < deadline and runner.is_alive():
        busy = [addr for addr, keys in client.processing().items() if keys]
        done = int(store.open_store(out)["complete"].sum()) if out.exists() else 0
        if busy and 1 <= done <= n - 3:
            killed = (pids[busy[0]], done)
            os.kill(pids[busy[0]], signal.SIGKILL)
        time.sleep(0.05)
    runner.join(90)
    assert killed is not None, "the run ended before a worker could be killed mid-run"
    assert not runner.is_alive() and not failure, failure
    assert_same_results(store.open_store(out), serial)
    assert len(results) == len(batches(plan, list(range(n)), 1))  # every task finished, one rerun
    # nothing computed twice: what finished tasks computed, plus what the dead one wrote first
    finished = sum(r["computed"] + r["copied"] for r in results)
    assert finished <= n
    assert finished + sum(r["done_before"] for r in results) >= n - 1  # -1: the baseline, if the dead one did it
    assert killed[0] not in set(client.run(os.getpid).values())  # the nanny started a new process


def test_cluster_options_are_checked_in_one_place():
    assert target(None, None) is None
    assert target("tcp://h:8786", None, 2) == Target(address="tcp://h:8786", threads_per_worker=2)
    assert target(None, 3) == Target(n_workers=3)
    with pytest.raises(typer.BadParameter, match="at most one of --cluster ADDRESS or --workers N"):
        target("tcp://h:8786", 2)
    with pytest.raises(typer.BadParameter, match="goes with --workers N or --cluster ADDRESS"):
        target(None, None, 2)
    with pytest.raises(typer.BadParameter, match="address is empty"):
        target(" ", None)


def _plan_run(loaded, plan, corpora, out, kw, topic="t") -> PlanRun:
    return PlanRun(spec=loaded.spec, revision=loaded.revision, seed=int(loaded.info.get("seed", 0)), plan=plan,
                   corpora=corpora, out=str(out), reference=kw["reference"], protocol=kw["protocol"], device="cpu",
                   dtype="float32", donor_seed=None, tasks=None, task_items=None, context=512, stride=256,
                   batch_size=8, threads={"*": 1}, topic=topic)


def test_a_workers_later_tasks_reuse_the_checks_but_still_check_the_store(setup, tmp_path):
    loaded, plan, corpora, kw, serial = setup
    out = tmp_path / "w.zarr"
    run_plan(loaded, plan, corpora, out, only=(), **kw)  # the client's layout
    run = _plan_run(loaded, plan, corpora, out, kw)
    first, second = run_batch(run, [0, 1]), run_batch(run, [2, 3])  # outside a worker: called here
    assert (first["checked"], second["checked"]) == (True, False)
    assert (first["computed"], second["computed"]) == (2, 2)
    ds = store.open_store(out).load()
    for var in ("loss", "window_nll", "qc_changed", "qc_fired"):
        np.testing.assert_array_equal(ds[var].values[:4], serial[var].values[:4])
    # another run's store laid out at that path: a later task (checks reused) still refuses it
    shutil.rmtree(out)
    other = prepare_inputs(loaded, ["news"], max_tokens=3000, context=32, stride=16, batch_size=8)
    run_plan(loaded, plan, other[0], out, protocol=other[2], reference=other[1], progress=False, only=())
    refused = run_batch(run, [4])
    assert "checked" not in refused and "different setup" in str(refused["error"])
    assert run_batch(_plan_run(loaded, plan, corpora, out, kw, topic="u"), [4])["error"]  # a new run checks anew
    cluster._PREPARED.clear()


def _same_study(a, b) -> None:
    for name in sorted(p.name for p in a.glob("*.zarr")):
        got, want = store.open_store(b / name).load(), store.open_store(a / name).load()
        assert bool(got["complete"].all())
        xr.testing.assert_equal(got.drop_vars("elapsed_s"), want.drop_vars("elapsed_s"))


@pytest.mark.slow
def test_a_study_on_two_workers_gives_the_serial_stores(client, tmp_path):
    from workbench.study import StudySettings, run_study

    corpus = tmp_path / "tale.txt"
    corpus.write_text("It was the best of times, it was the worst of times, it was the age of wisdom. " * 12)
    settings = StudySettings(models=["random:qwen2"], corpora=[str(corpus)], context=32, stride=16, tasks=[],
                             seeds=2, grid=[1])
    run_study(settings, tmp_path / "serial", log=lambda m: None, progress=False)
    messages = []
    address = client.scheduler.address
    run_study(settings, tmp_path / "cluster", log=messages.append, progress=False,
              cluster=Target(address=address, threads_per_worker=1))
    assert sorted(p.name for p in (tmp_path / "cluster").glob("*.zarr")) == \
        ["random_qwen2.compression.zarr", "random_qwen2.zarr"]
    _same_study(tmp_path / "serial", tmp_path / "cluster")
    assert sum(f"at {address}" in m for m in messages) == 2  # both stores through the one scheduler


@pytest.mark.slow
def test_diagnose_on_the_cluster_gives_the_serial_diagnostics(setup, client, tmp_path):
    from workbench.cluster import diagnose_cluster
    from workbench.diagnose import diagnose, open_activations, open_diagnostics

    loaded, plan, corpora, kw, serial = setup
    made = tmp_path / "made.zarr"
    run_plan(loaded, plan, corpora, made, **kw)
    paths = [tmp_path / f"{name}.zarr" for name in ("serial", "a", "b")]
    for p in paths:
        shutil.copytree(made, p)
    options = dict(tokens=64, batch_size=3, map_methods=("pca",))
    diagnose(paths[0], progress=False, **options)
    done = diagnose_cluster(paths[1:], client=client, threads_per_worker=1, progress=False, **options)
    assert sorted(r["store"] for r in done) == sorted(str(p) for p in paths[1:])
    want_act, want = open_activations(paths[0]).load(), open_diagnostics(paths[0]).load()
    for p in paths[1:]:
        xr.testing.assert_equal(open_activations(p).load(), want_act)
        xr.testing.assert_allclose(open_diagnostics(p).load().drop_attrs(), want.drop_attrs())


@pytest.mark.parametrize("argv", [["run", "-m", "random:qwen2", "-c", "news", "--preset", "smoke", "-o", "x.zarr"],
                                  ["study", "-o", "x", "--dry-run"], ["diagnose", "x.zarr"]],
                         ids=["run", "study", "diagnose"])
def test_run_study_and_diagnose_share_the_options(argv, capsys, monkeypatch, tmp_path):
    from workbench import cli

    monkeypatch.chdir(tmp_path)
    for extra, message in ((["--workers", "2", "--cluster", "tcp://h:1"], "at most one of --cluster"),
                           (["--threads-per-worker", "2"], "goes with --workers N or --cluster"),
                           (["--workers", "0"], "--workers")):
        monkeypatch.setattr("sys.argv", ["workbench", *argv, *extra])
        with pytest.raises(SystemExit) as exc:
            cli.main()
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("address, message", [
    ("tcp//h:8786", "is not a scheduler address"), ("tcp://h", "is not a scheduler address"),
    ("tcp://h:abc", "is not a scheduler address"), ("http://h:8786", "unknown scheme 'http'"),
    ("tcp://h:99999", "port 99999 is out of range"), ("tcp://a b:8786", "is not a scheduler address"),
])
def test_a_malformed_scheduler_address_is_refused_at_once(address, message):
    with pytest.raises(typer.BadParameter, match=message):
        target(address, None)


def test_no_scheduler_or_no_workers_fails_fast_with_one_line(monkeypatch):
    from distributed import LocalCluster

    from workbench.cluster_options import ClusterError

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2)
    monkeypatch.setattr(cluster, "WORKER_WAIT_S", 2)
    start = time.perf_counter()
    with pytest.raises(ClusterError, match=r"cannot reach a Dask scheduler at tcp://127.0.0.1:9 within 2 s"):
        with connect("tcp://127.0.0.1:9"):  # the discard port: nothing listens there
            pass
    assert time.perf_counter() - start < 20
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty:
        start = time.perf_counter()
        with pytest.raises(ClusterError, match=r"has no workers \(waited 2 s\); start some with `dask worker"):
            with connect(empty.scheduler_address):
                pass
        assert time.perf_counter() - start < 20
