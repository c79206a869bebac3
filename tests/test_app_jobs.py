"""The job queue on disk: order, one job at a time, refusals, cancel, runner restart, detachment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench import jobs

ROOT = Path(__file__).resolve().parents[1]
# A stand-in for the workbench CLI: records when it starts and ends, exits 130 on SIGINT. Its
# controls ride on options the queue's allow-list takes: --max-tokens MS sleeps MS milliseconds,
# --dry-run fails (status 3); the trace goes beside the runs folder.
FAKE = '''
import json, sys, time
from pathlib import Path
args = sys.argv[1:]
out = args[args.index("--out") + 1]
secs = int(args[args.index("--max-tokens") + 1]) / 1000 if "--max-tokens" in args else 0.2
trace = Path(out).parent.parent / "trace.jsonl"
def mark(what):
    with open(trace, "a") as fh:
        fh.write(json.dumps({"out": out, "what": what, "t": time.time()}) + "\\n")
mark("start")
print("working on", out, flush=True)
try:
    time.sleep(secs)
except KeyboardInterrupt:
    mark("interrupted")
    sys.exit(130)
mark("end")
sys.exit(3 if "--dry-run" in args else 0)
'''


@pytest.fixture
def runs(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    (tmp_path / "fake.py").write_text(FAKE)
    return folder


def _submit(runs, out, *extra, start=True, owner="ana"):
    return jobs.submit(runs, ["run", "--out", out, *extra], owner=owner, start=start,
                       program=[str(runs.parent / "fake.py")])


def _trace(runs) -> list[dict]:
    path = runs.parent / "trace.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _wait(runs, job_id, states=("done", "failed", "cancelled"), timeout=30.0) -> jobs.Job:
    end = time.time() + timeout
    while time.time() < end:
        job = jobs.read_job(runs, job_id)
        if job.state in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {jobs.read_job(runs, job_id).state} after {timeout} s")


def _wait_runner_gone(runs, device="cpu", timeout=20.0):
    end = time.time() + timeout
    while jobs.runner_alive(runs, device) and time.time() < end:
        time.sleep(0.1)
    assert not jobs.runner_alive(runs, device)


def test_queue_runs_in_order_one_at_a_time(runs):
    ids = [_submit(runs, f"s{i}.zarr", "--max-tokens", "400", start=False).id for i in range(3)]
    assert [j.state for j in jobs.list_jobs(runs)] == ["queued"] * 3
    pid = jobs.ensure_runner(runs, "cpu")
    assert pid and jobs.ensure_runner(runs, "cpu") is None  # one runner per device
    for i in ids:
        assert _wait(runs, i).state == "done"
    trace = _trace(runs)
    starts = [t for t in trace if t["what"] == "start"]
    assert [Path(t["out"]).name for t in starts] == ["s0.zarr", "s1.zarr", "s2.zarr"]
    ends = {t["out"]: t["t"] for t in trace if t["what"] == "end"}
    for a, b in zip(starts, starts[1:]):
        assert ends[a["out"]] <= b["t"], "two jobs overlapped"
    job = jobs.read_job(runs, ids[0])
    assert job.returncode == 0 and job.owner == "ana" and job.out == str((runs / "s0.zarr").resolve())
    assert "working on" in jobs.log_tail(job) and "[exit status 0]" in jobs.log_tail(job)
    _wait_runner_gone(runs)  # the runner leaves when the queue is empty


def test_duplicate_output_is_refused_until_the_first_job_ends(runs):
    first = _submit(runs, "same.zarr", "--max-tokens", "500")
    with pytest.raises(jobs.JobError, match="already the output of job"):
        _submit(runs, str(runs / "same.zarr"), owner="ben")  # the same store, spelled absolutely
    with pytest.raises(jobs.JobError, match="overlaps"):
        jobs.submit(runs, ["study", "--out", "same.zarr/inner"], program=[str(runs.parent / "fake.py")], start=False)
    with pytest.raises(jobs.JobError, match="one of: run, study, diagnose"):
        jobs.submit(runs, ["train", "--out", "x"], start=False)
    with pytest.raises(jobs.JobError, match="needs --out"):
        jobs.submit(runs, ["run", "--model", "m"], start=False)
    with pytest.raises(jobs.JobError, match="takes one STORE"):
        jobs.submit(runs, ["diagnose", "--tokens", "64"], start=False)
    assert jobs.output_of(["diagnose", "--tokens", "64", "a.zarr"], runs) == (runs / "a.zarr").resolve()
    assert jobs.output_of(["diagnose", "--workers", "2", "a.zarr"], runs) == (runs / "a.zarr").resolve()
    with pytest.raises(jobs.JobError, match="one STORE"):
        jobs.submit(runs, ["diagnose", "a.zarr", "b.zarr"], start=False)
    _wait(runs, first.id)
    again = _submit(runs, "same.zarr")
    assert _wait(runs, again.id).state == "done"


def test_failed_job_is_failed(runs):
    job = _submit(runs, "bad.zarr", "--dry-run")
    done = _wait(runs, job.id)
    assert done.state == "failed" and done.returncode == 3


def test_cancel_running_gives_130_and_queued_never_starts(runs):
    running = _submit(runs, "long.zarr", "--max-tokens", "30000")
    queued = _submit(runs, "next.zarr")
    _wait(runs, running.id, states=("running",))
    end = time.time() + 20
    while not any(t["what"] == "start" for t in _trace(runs)) and time.time() < end:
        time.sleep(0.1)
    assert jobs.cancel(runs, queued.id).state == "cancelled"
    jobs.cancel(runs, running.id)
    job = _wait(runs, running.id)
    assert (job.state, job.returncode) == ("cancelled", 130)
    assert [t["what"] for t in _trace(runs)] == ["start", "interrupted"]  # next.zarr never ran
    with pytest.raises(jobs.JobError, match="only queued or running"):
        jobs.cancel(runs, running.id)


def test_dead_runner_is_restarted_and_picks_up_queued_jobs(runs):
    first = _submit(runs, "a.zarr", "--max-tokens", "1500")
    second = _submit(runs, "b.zarr")
    _wait(runs, first.id, states=("running",))
    lock = jobs._runner_lock(runs, "cpu")
    assert jobs.runner_alive(runs, "cpu")
    # kill the runner we started (its pid is the holder of the lock: find it by the job's parent)
    wrapper = jobs.read_job(runs, first.id).pid
    end = time.time() + 10
    while not wrapper and time.time() < end:
        time.sleep(0.05)
        wrapper = jobs.read_job(runs, first.id).pid
    parent = int(Path(f"/proc/{wrapper}/stat").read_text().split(")")[-1].split()[1])
    os.kill(parent, signal.SIGKILL)
    _wait_runner_gone(runs)
    assert lock.exists()
    # the running job lives on in its own session and records its own end
    assert _wait(runs, first.id).state == "done"
    assert jobs.read_job(runs, second.id).state == "queued"
    assert jobs.ensure_runners(runs)  # what the app does on start
    assert _wait(runs, second.id).state == "done"


def test_job_outlives_the_process_that_submitted_it(runs):
    code = (f"from workbench import jobs; j = jobs.submit({str(runs)!r}, ['run', '--out', 'x.zarr', "
            f"'--max-tokens', '1000'], program=[{str(runs.parent / 'fake.py')!r}]); "
            "print(j.id)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    job_id = out.stdout.strip()
    assert _wait(runs, job_id).state == "done"  # the submitter exited long before
    assert jobs.progress(jobs.read_job(runs, job_id)) is None  # the stand-in writes no store


@pytest.mark.slow
def test_cancelling_a_real_run_exits_130_and_leaves_a_partial_store(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    corpus = runs / "long.txt"  # a launched corpus is a built-in name or a file in the runs folder
    corpus.write_text("It was the best of times, it was the worst of times. " * 60)
    # --no-fast: conditions complete one at a time (the fast path writes a group at once)
    argv = ["run", "--model", "random:qwen2", "--preset", "sweep", "--corpus", str(corpus), "--context", "32",
            "--stride", "16", "--batch-size", "1", "--out", "r.zarr", "--no-fast", "--threads", "1"]
    job = jobs.submit(runs, argv, owner="test")
    end = time.time() + 180
    while time.time() < end:
        got = jobs.progress(jobs.read_job(runs, job.id))
        if got and got[0] >= 1:
            break
        time.sleep(0.2)
    assert got and got[0] >= 1, jobs.log_tail(jobs.read_job(runs, job.id))
    jobs.cancel(runs, job.id)
    done = _wait(runs, job.id, timeout=60)
    assert (done.state, done.returncode) == ("cancelled", 130), jobs.log_tail(done)
    done_n, total = jobs.progress(done)
    assert 1 <= done_n < total  # partial: the same command resumes it (the runner's resume is tested there)
    assert "[exit status 130]" in jobs.log_tail(done)


# -- the queue through a Dask scheduler ---------------------------------------------------------

@pytest.fixture(scope="module")
def scheduler():
    """Two in-process workers of two threads each, one advertising a GPU and one a CPU job slot
    (as docs/cluster.md starts them): only the resources keep their jobs apart."""
    from distributed import LocalCluster, Worker

    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        cluster.worker_spec.update({name: {"cls": Worker, "options": {"nthreads": 2, "resources": {name: 1}}}
                                    for name in ("GPU", "CPU")})
        cluster.scale(2)
        from distributed import Client

        with Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        yield cluster.scheduler_address


def _send(runs, scheduler, out, *extra, owner="ana"):
    return jobs.submit(runs, ["run", "--out", out, *extra], owner=owner,
                       program=[str(runs.parent / "fake.py")], scheduler=scheduler)


def _spans(runs) -> dict[str, tuple[float, float]]:
    trace = _trace(runs)
    start = {t["out"]: t["t"] for t in trace if t["what"] == "start"}
    return {Path(o).name: (t, next(x["t"] for x in trace if x["out"] == o and x["what"] != "start"))
            for o, t in start.items()}


def test_scheduler_runs_cpu_jobs_in_order_one_at_a_time(runs, scheduler):
    ids = [_send(runs, scheduler, f"s{i}.zarr", "--max-tokens", "400", owner=f"user{i}").id for i in range(3)]
    for i in ids:
        done = _wait(runs, i)
        assert (done.state, done.returncode, done.scheduler) == ("done", 0, scheduler)
        assert done.host and "working on" in jobs.log_tail(done)
    spans = _spans(runs)
    order = sorted(spans, key=lambda o: spans[o][0])
    assert order == ["s0.zarr", "s1.zarr", "s2.zarr"]  # submission order, whoever submitted
    for a, b in zip(order, order[1:]):
        assert spans[a][1] <= spans[b][0], "two CPU jobs shared the one CPU slot"
    assert not jobs.runner_alive(runs, "cpu")  # this machine's runner never started


def test_one_gpu_never_runs_two_jobs(runs, scheduler):
    gpu = [_send(runs, scheduler, f"g{i}.zarr", "--max-tokens", "1000", "--device", "cuda") for i in range(2)]
    cpu = _send(runs, scheduler, "c.zarr", "--max-tokens", "200")
    assert [j.resources for j in gpu + [cpu]] == [{"GPU": 1}, {"GPU": 1}, {"CPU": 1}]
    for j in gpu + [cpu]:
        assert _wait(runs, j.id).state == "done"
    spans = _spans(runs)
    assert spans["g0.zarr"][1] <= spans["g1.zarr"][0] or spans["g1.zarr"][1] <= spans["g0.zarr"][0]
    # the CPU job did not wait for the GPU: it ran beside the first GPU job
    first = min(("g0.zarr", "g1.zarr"), key=lambda o: spans[o][0])
    assert spans["c.zarr"][0] < spans[first][1]


def test_scheduler_cancel_running_and_queued(runs, scheduler):
    running = _send(runs, scheduler, "long.zarr", "--max-tokens", "30000")
    queued = _send(runs, scheduler, "next.zarr")
    _wait(runs, running.id, states=("running",))
    end = time.time() + 20
    while not any(t["what"] == "start" for t in _trace(runs)) and time.time() < end:
        time.sleep(0.1)
    assert jobs.cancel(runs, queued.id).state == "cancelled"
    jobs.cancel(runs, running.id)  # the task sees the request in the job file
    job = _wait(runs, running.id)
    assert (job.state, job.returncode) == ("cancelled", 130)
    time.sleep(0.5)
    assert [t["what"] for t in _trace(runs)] == ["start", "interrupted"]  # next.zarr never ran
    assert jobs.read_job(runs, queued.id).state == "cancelled"


def test_sending_again_runs_a_job_once_and_fan_out_is_refused(runs, scheduler):
    job = _send(runs, scheduler, "once.zarr", "--max-tokens", "500")
    jobs.send_queued(runs)  # what the app does on start: the scheduler has it already
    assert _wait(runs, job.id).state == "done"
    time.sleep(0.5)
    assert [t["what"] for t in _trace(runs)] == ["start", "end"]
    with pytest.raises(jobs.JobError, match="one task on one worker"):
        _send(runs, scheduler, "fan.zarr", "--workers", "2")
    with pytest.raises(jobs.JobError, match="'--cluster' is not allowed here"):
        _send(runs, scheduler, "fan.zarr", "--cluster=tcp://x:1")


@pytest.mark.slow
def test_a_real_run_through_the_scheduler(tmp_path, scheduler):
    runs = tmp_path / "runs"
    runs.mkdir()
    corpus = runs / "text.txt"
    corpus.write_text("It was the best of times, it was the worst of times. " * 20)
    argv = ["run", "--model", "random:qwen2", "--preset", "smoke", "--corpus", str(corpus), "--context", "32",
            "--stride", "16", "--max-tokens", "200", "--out", "r.zarr"]
    job = jobs.submit(runs, argv, owner="test", scheduler=scheduler)
    done = _wait(runs, job.id, timeout=180)
    assert done.state == "done", jobs.log_tail(done)
    got = jobs.progress(done)
    assert got and got[0] == got[1]


def test_app_names_the_scheduler_and_where_jobs_ran(runs, scheduler, monkeypatch):
    from workbench.app_cli import describe_scheduler

    assert "2 worker(s) now, 1 GPU and 1 CPU job slot(s)" in describe_scheduler(scheduler)
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    job = _wait(runs, _send(runs, scheduler, "p.zarr", "--max-tokens", "100").id)
    monkeypatch.setenv(jobs.CLUSTER_ENV, scheduler)
    monkeypatch.setattr(sys, "argv", ["streamlit_app.py", "--runs", str(runs)])
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    at.switch_page("app_pages/launch.py").run()
    assert not at.exception, at.exception
    assert f"Dask scheduler at `{scheduler}`" in " ".join(str(c.value) for c in at.caption)
    table = at.dataframe[0].value
    assert table.loc[table["job"] == job.id, "host"].item() == job.host


def test_a_diagnose_job_takes_its_stores_device(runs):
    store = runs / "gpu.zarr"
    store.mkdir()
    (store / ".zattrs").write_text(json.dumps({"device": "cuda:0"}))
    job = jobs.submit(runs, ["diagnose", "--tokens", "64", "gpu.zarr"], start=False)
    assert (job.device, job.resources) == ("cuda:0", {"GPU": 1})
    given = jobs.submit(runs, ["run", "--out", "c.zarr", "--model", "m", "--device", "cpu"], start=False)
    assert (given.device, given.resources) == ("cpu", {"CPU": 1})
