"""Runs on a local Dask cluster (127.0.0.1) give the serial run's store, even when a worker dies."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import xarray as xr

from workbench import plans, store
from workbench.architectures import component_map
from workbench.cluster import batches, connect, run_plan_cluster
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
    for part in parts:
        effects = {plan.conditions[i].effect_id for i in part}
        twins = [j for j, c in enumerate(plan.conditions) if c.effect_id in effects]
        assert sorted(twins) == sorted(part)  # no edit split across tasks
    assert max(len(p) for p in parts) <= 3
    with pytest.raises(ValueError, match="at least 1"):
        batches(plan, [0], 0)


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
