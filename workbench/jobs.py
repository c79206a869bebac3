"""Background jobs: `workbench run`, `study` and `diagnose` launched from the app, queued on disk.

The queue is a folder of JSON files, ``RUNS/.jobs/<id>.json``, one per job: the command line,
owner, state (queued, running, done, failed, cancelled), pid, log path and timestamps. Everyone
using one runs folder sees one queue. One runner process per runs folder and device takes the
queue in order, one job at a time: it is started (in a session of its own, so it outlives the
browser tab and the app) by the first launch or by the app, and exits when the queue is empty.

Each job runs as ``python -m workbench.jobs exec RUNS ID``: a small wrapper that starts
``python -m workbench.cli ...`` in the job's own process group with output to its log file and
records the exit status in the job file, whoever is watching. Cancelling a running job sends
SIGINT to that process group: the workbench exits 130 and its store stays resumable.

Two jobs never write the same store: a job whose output is already the output of a queued or
running job is refused.

Only the workbench's own commands run, with checked options (``workbench/job_argv.py``: an
allow-list, every path inside the runs folder), checked when a job is submitted and again before
it runs. Each job file is signed (HMAC-SHA256) with a secret of the runs folder,
``RUNS/.jobs/.secret`` (mode 0600, owned by the queue's user): a file the queue did not write
(no valid signature) is neither listed nor run, so write access to ``RUNS/.jobs/`` runs no code.

Through a Dask scheduler (``submit(..., scheduler=ADDRESS)``; the app started with ``--cluster``):
each job is one task ``run_job(RUNS, ID)``, kept by the scheduler with ``fire_and_forget`` (it
runs whether or not the app is open), needing the resource ``GPU=1`` (a CUDA job) or ``CPU=1``
(any other), so a worker that advertises ``GPU=1`` never runs two GPU jobs at once. The
scheduler takes tasks in submission order (older first, whoever submitted them). The task runs
the same command on the worker's host and writes state, log and exit status into the job file,
so the queue folder must be on storage every worker sees at the same path. Cancelling a queued
job cancels its task; a running one is interrupted by the task itself, which watches the job
file for the cancel request (the job may run on another host).

    python -m workbench.jobs runner RUNS [--device cpu]   (what ensure_runner starts)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from workbench import job_argv
from workbench.claims import pid_alive
from workbench.cluster_options import fifo_priority

JOBS = ".jobs"
COMMANDS = ("run", "study", "diagnose")
ACTIVE = ("queued", "running")
STATES = ("queued", "running", "done", "failed", "cancelled")
PROGRAM = ("-m", "workbench.cli")  # what `python` runs with a job's argv
POLL_S = 0.25
CLUSTER_ENV = "WORKBENCH_CLUSTER"  # the scheduler the app sends jobs to (set by `workbench app --cluster`)
FAN_OUT = ("--workers", "--cluster")  # options a job sent to a scheduler may not carry


class JobError(ValueError):
    """A job that cannot be submitted or changed; the message says why."""


@dataclasses.dataclass
class Job:
    id: str
    argv: list[str]  # after `workbench`, e.g. ["run", "--model", ...]
    out: str  # the store (or study folder) the job writes, resolved
    device: str
    owner: str = ""
    state: str = "queued"
    created: float = 0.0
    started: float | None = None
    ended: float | None = None
    pid: int | None = None  # the wrapper's pid, also the job's process group
    returncode: int | None = None
    cancel_requested: bool = False
    log: str = ""
    note: str = ""
    program: list[str] = dataclasses.field(default_factory=lambda: list(PROGRAM))
    scheduler: str = ""  # the Dask scheduler that runs it; "" for this machine's runner
    host: str = ""  # where it runs (jobs sent to a scheduler)
    sig: str = ""  # HMAC of every other field with the runs folder's secret

    @property
    def command(self) -> str:
        return "workbench " + shlex.join(self.argv)

    @property
    def task_key(self) -> str:
        """Its task's key on the scheduler: submitting it twice runs it once."""
        return f"workbench-job-{self.id}"

    @property
    def resources(self) -> dict:
        """What its task holds on a worker: one GPU, or one CPU job slot."""
        return {"GPU": 1} if self.device.startswith("cuda") else {"CPU": 1}


# -- the folder and its lock ---------------------------------------------------------------

def jobs_dir(runs: str | Path) -> Path:
    return Path(runs).expanduser().resolve() / JOBS


@contextlib.contextmanager
def _locked(runs):
    """The queue's lock: submitting, taking and cancelling are read-check-write steps."""
    folder = jobs_dir(runs)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


SECRET = ".secret"


def _secret(runs, create: bool = False) -> bytes | None:
    """The runs folder's signing key (made on first use, 0600); None when absent and not made.

    One owned by another user or readable by others is refused: whoever could replace or read
    it could sign job files."""
    path = jobs_dir(runs) / SECRET
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{SECRET}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # atomic and never replaces: two first writers agree on one key
        tmp.unlink()
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise JobError(f"{path} must belong to this user and be readable by no one else (chmod 600); "
                       "job files are not trusted until it is")
    return path.read_bytes()


def _signature(key: bytes, data: dict) -> str:
    body = json.dumps({k: v for k, v in data.items() if k != "sig"}, sort_keys=True).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def _write(runs, job: Job) -> None:
    path = jobs_dir(runs) / f"{job.id}.json"
    job.sig = _signature(_secret(runs, create=True), dataclasses.asdict(job))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(job), indent=1))
    os.replace(tmp, path)  # readers never see half a file


def _load(path: Path, key: bytes | None) -> Job:
    """A job file the queue wrote; JobError for any other (unsigned, edited, malformed)."""
    try:
        data = json.loads(path.read_text())
        job = Job(**data)
    except (ValueError, TypeError):
        raise JobError(f"{path} is not a job file") from None
    if key is None or not hmac.compare_digest(str(data.get("sig", "")), _signature(key, data)):
        raise JobError(f"{path} was not written by this queue (its signature does not match); it is ignored")
    return job


def read_job(runs, job_id: str) -> Job:
    path = jobs_dir(runs) / f"{job_id}.json"
    try:
        return _load(path, _secret(runs))
    except FileNotFoundError:
        raise JobError(f"no job {job_id!r} in {jobs_dir(runs)}") from None


def list_jobs(runs) -> list[Job]:
    """Every job of the runs folder, oldest first (the queue order); files the queue did not
    write are left out."""
    folder = jobs_dir(runs)
    if not folder.is_dir():
        return []
    try:
        key = _secret(runs)
    except JobError:
        return []
    out = []
    for p in folder.glob("*.json"):
        with contextlib.suppress(OSError, JobError):
            out.append(_load(p, key))
    return sorted(out, key=lambda j: (j.created, j.id))


# -- submitting --------------------------------------------------------------------------------

def _option(argv: list[str], *names: str) -> str | None:
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def checked(argv: list[str], runs) -> tuple[list[str], Path]:
    """``argv`` checked against the allow-list (job_argv.check): one spelling, resolved paths,
    and the output it writes; JobError otherwise."""
    try:
        return job_argv.check(argv, jobs_dir(runs).parent)
    except job_argv.ArgvError as exc:
        raise JobError(str(exc)) from None


def output_of(argv: list[str], runs) -> Path:
    """The store or folder a command writes (its ``--out``, or diagnose's STORE), resolved
    inside the runs folder; the command is checked whole (a repeated --out, an option that is
    not one of the command's, a path outside the runs folder: JobError)."""
    return checked(argv, runs)[1]


def _device(argv: list[str], out: Path) -> str:
    """The job's device: its ``--device``, else (diagnose) the device its store was run on."""
    given = _option(argv, "--device")
    if given or argv[0] != "diagnose":
        return given or "cpu"
    with contextlib.suppress(OSError, ValueError):
        return str(json.loads((out / ".zattrs").read_text()).get("device") or "cpu")
    return "cpu"


def submit(runs, argv: list[str], owner: str = "", *, start: bool = True, program=None,
           scheduler: str | None = None) -> Job:
    """Queue ``workbench ARGV`` in the runs folder; start the device's runner unless one runs,
    or, with ``scheduler`` (a Dask scheduler's address), send it there as a task.

    Refused: a command other than run/study/diagnose, and an output that a queued or running
    job already writes (two processes would write one store); with a scheduler also a command
    that would fan out itself (``--workers``/``--cluster``), any option or path job_argv refuses,
    and an owner name that is not plain words. ``program``: what ``python`` runs with ARGV (the
    workbench CLI; tests put a stand-in script there). It is signed with the job, so only a
    caller of this function sets it, never a file dropped in the queue."""
    argv, out = checked(argv, runs)
    try:
        owner = job_argv.check_owner(owner)
    except job_argv.ArgvError as exc:
        raise JobError(str(exc)) from None
    device = _device(argv, out)
    if scheduler and any(a in FAN_OUT or a.split("=", 1)[0] in FAN_OUT for a in argv):
        raise JobError("a job sent to the scheduler runs as one task on one worker; drop --workers/--cluster "
                       "(run such a command from a shell instead)")
    with _locked(runs) as folder:
        for other in list_jobs(runs):
            if other.state in ACTIVE and Path(other.out) == out:
                raise JobError(f"{out} is already the output of job {other.id} ({other.state}, "
                               f"{other.owner or 'no owner'}); wait for it or cancel it first")
            if other.state in ACTIVE and (out in Path(other.out).parents or Path(other.out) in out.parents):
                raise JobError(f"{out} overlaps the output {other.out} of job {other.id} ({other.state})")
        job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        job = Job(id=job_id, argv=argv, out=str(out), device=device, owner=owner, created=time.time(),
                  log=str(folder / f"{job_id}.log"), program=list(program or PROGRAM), scheduler=scheduler or "")
        _write(runs, job)
    if scheduler:
        send(runs, job)
    elif start:
        ensure_runner(runs, device)
    return job


def scheduler_client(address: str):
    """A client of the Dask scheduler at ``address`` (a JobError when out of reach)."""
    from distributed import Client

    try:
        return Client(address, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise JobError(f"cannot reach the Dask scheduler at {address} ({exc}); is it running?") from None


def _send(runs, client, job: Job) -> None:
    from distributed import fire_and_forget

    fire_and_forget(client.submit(run_job, str(jobs_dir(runs).parent), job.id, key=job.task_key, pure=False,
                                  resources=job.resources, priority=fifo_priority(job.created)))
    kind = next(iter(job.resources))
    if not any(w.get("resources", {}).get(kind) for w in client.scheduler_info()["workers"].values()):
        with _locked(runs):
            now = read_job(runs, job.id)
            if now.state == "queued":
                now.note = f"waiting for a worker that advertises {kind}=1 (none has joined yet)"
                _write(runs, now)


def send(runs, job: Job) -> None:
    """Give a queued job to its scheduler as a task; a scheduler out of reach fails the job."""
    try:
        with scheduler_client(job.scheduler) as client:
            _send(runs, client, job)
    except JobError as exc:
        with _locked(runs):
            now = read_job(runs, job.id)
            if now.state == "queued":
                now.state, now.ended, now.note = "failed", time.time(), str(exc)
                _write(runs, now)
        raise


def send_queued(runs) -> list[str]:
    """On app start: send every queued job to its scheduler again (one that restarted lost them;
    a task the scheduler still has is not doubled); the ids sent. A scheduler out of reach
    leaves its jobs queued."""
    waiting: dict[str, list[Job]] = {}
    for job in list_jobs(runs):
        if job.scheduler and job.state == "queued":
            waiting.setdefault(job.scheduler, []).append(job)
    sent = []
    for address, queued in waiting.items():
        with contextlib.suppress(JobError), scheduler_client(address) as client:
            for job in queued:
                _send(runs, client, job)
                sent.append(job.id)
    return sent


def cancel(runs, job_id: str, by: str = "") -> Job:
    """A queued job is dropped; a running one gets SIGINT (it exits 130, its store resumable).
    ``by``: who asked, kept in the job's note."""
    by = f" by {by}" if by else ""
    with _locked(runs):
        job = read_job(runs, job_id)
        if job.state == "queued":
            job.state, job.ended, job.note = "cancelled", time.time(), f"cancelled{by} before it started"
            _write(runs, job)
        elif job.state == "running":
            job.cancel_requested = True
            job.note = f"cancel requested{by}"
            _write(runs, job)
            if job.pid and not job.scheduler:  # a scheduler's job: its task sees the request
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job.pid, signal.SIGINT)
        else:
            raise JobError(f"job {job_id} is {job.state}; only queued or running jobs can be cancelled")
    if job.scheduler and job.state == "cancelled":  # drop its task (if it starts first, it sees the state)
        with contextlib.suppress(JobError, OSError, TimeoutError):
            from distributed import Future

            with scheduler_client(job.scheduler) as client:
                client.cancel([Future(job.task_key, client)], force=True)
    return job


def run_job(runs, job_id: str) -> int | None:
    """Dask task: run a queued job on this worker; its exit status (None: cancelled before).

    A job found running is a rerun after its worker died: its command starts again (stores
    resume)."""
    with _locked(runs):
        job = read_job(runs, job_id)
        if job.state not in ACTIVE:
            return None
        if job.cancel_requested:  # cancelled while its first worker ran it
            job.state, job.ended, job.note = "cancelled", time.time(), "cancelled; rerun the same command to resume"
            _write(runs, job)
            return None
        job.note = f"started again: the worker on {job.host} stopped" if job.state == "running" else ""
        job.state, job.started, job.host = "running", time.time(), socket.gethostname()
        _write(runs, job)
    return exec_job(runs, job_id, watch=True)


# -- the runner ---------------------------------------------------------------------------------

def _runner_lock(runs, device: str) -> Path:
    folder = jobs_dir(runs)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"runner-{device.replace('/', '_').replace(':', '_')}.lock"


def runner_alive(runs, device: str = "cpu") -> bool:
    """Whether a runner holds this device's lock now (the kernel drops it when the runner dies)."""
    path = _runner_lock(runs, device)
    if not path.exists():
        return False
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def _env() -> dict:
    """The environment of runner and jobs: this checkout's code first on the path, without the
    malloc setting a Dask worker may have been started with (it slows torch on the CPU)."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    # nor the app's launch token: a job has no use for it
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_TRIM_THRESHOLD_", "WORKBENCH_LAUNCH_TOKEN")}
    return {**env, "PYTHONPATH": root + (os.pathsep + path if path else ""), "PYTHONUNBUFFERED": "1"}


def _local(job: Job, device: str) -> bool:
    """A job of this machine's runner for ``device`` (not one sent to a scheduler)."""
    return job.device == device and not job.scheduler


def ensure_runner(runs, device: str = "cpu") -> int | None:
    """Start the device's runner when jobs wait and none runs; its pid, or None when not needed.

    The device's lock is taken here and handed to the runner (an inherited descriptor), so two
    callers at once never start two runners."""
    waiting = [j for j in list_jobs(runs) if _local(j, device) and j.state in ACTIVE]
    if not waiting:
        return None
    path = _runner_lock(runs, device)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # a runner has it
        with open(path.with_suffix(".log"), "a") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "workbench.jobs", "runner", str(jobs_dir(runs).parent), "--device", device,
                 "--lock-fd", str(fd)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                pass_fds=(fd,), start_new_session=True, env=_env(), cwd=str(Path(__file__).resolve().parents[1]))
        return proc.pid
    finally:
        os.close(fd)  # the runner holds the lock now (or nobody, if it failed to start)


def ensure_runners(runs) -> list[int]:
    """On app start: a runner for each device with waiting jobs (one that died is restarted)."""
    devices = sorted({j.device for j in list_jobs(runs) if j.state in ACTIVE and not j.scheduler})
    return [pid for d in devices if (pid := ensure_runner(runs, d))]


def _take_next(runs, device: str) -> Job | None:
    with _locked(runs):
        for job in list_jobs(runs):
            if _local(job, device) and job.state == "queued":
                job.state, job.started = "running", time.time()
                _write(runs, job)
                return job
    return None


def _finish_orphans(runs, device: str) -> None:
    """Jobs marked running that no live process holds (the machine rebooted, say) are failed."""
    with _locked(runs):
        for job in list_jobs(runs):
            if _local(job, device) and job.state == "running" and not pid_alive(job.pid):
                job.state, job.ended = "failed", time.time()
                job.note = "ended while no runner watched it; rerun the same command to resume its store"
                _write(runs, job)


def run_queue(runs, device: str = "cpu", idle_s: float = 2.0, lock_fd: int | None = None) -> None:
    """The runner: hold the device's lock and run queued jobs in order until the queue is empty.

    ``lock_fd``: the lock already taken by ``ensure_runner`` (inherited descriptor)."""
    path = _runner_lock(runs, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (os.fdopen(lock_fd, "a") if lock_fd is not None else open(path, "a")) as lock:
        if lock_fd is None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another runner has this device
        # a job still running from an earlier runner (its own session) is waited for, not doubled
        for job in list_jobs(runs):
            if _local(job, device) and job.state == "running":
                while pid_alive(job.pid):
                    time.sleep(POLL_S)
        _finish_orphans(runs, device)
        idle_since = time.monotonic()
        while True:
            job = _take_next(runs, device)
            if job is None:
                if time.monotonic() - idle_since > idle_s:
                    with _locked(runs):  # decide and let go under the queue lock: no job is left behind
                        if not any(_local(j, device) and j.state == "queued" for j in list_jobs(runs)):
                            fcntl.flock(lock, fcntl.LOCK_UN)
                            return
                time.sleep(POLL_S)
                continue
            proc = subprocess.Popen([sys.executable, "-m", "workbench.jobs", "exec", str(jobs_dir(runs).parent),
                                     job.id], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True, env=_env())
            with _locked(runs):
                now = read_job(runs, job.id)
                now.pid = proc.pid
                _write(runs, now)
                cancelled = now.cancel_requested
            if cancelled:  # cancelled between being taken and getting its pid
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
            rc = proc.wait()
            with _locked(runs):
                now = read_job(runs, job.id)
                if now.state == "running":  # the wrapper died before recording the status
                    now.returncode, now.ended = rc, time.time()
                    if now.cancel_requested:  # the SIGINT came while the wrapper was starting
                        now.state, now.note = "cancelled", "cancelled as it started; rerun the same command to resume"
                    else:
                        now.state, now.note = "failed", f"the job wrapper ended with status {rc}"
                    _write(runs, now)
            idle_since = time.monotonic()


def _wait(child: subprocess.Popen, runs, job_id: str, watch: bool) -> int:
    """The child's exit status; with ``watch``, a cancel request in the job file interrupts it."""
    interrupted = False
    while True:
        try:
            return child.wait(timeout=POLL_S if watch else None)
        except subprocess.TimeoutExpired:
            if not interrupted and read_job(runs, job_id).cancel_requested:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGINT)
                interrupted = True
        except InterruptedError:
            continue


def exec_job(runs, job_id: str, *, watch: bool = False) -> int:
    """Run one job's command, log its output, record how it ended.

    By default the command runs in this process group (the runner's wrapper, which cancel()
    signals). ``watch`` (a scheduler's task): in a group of its own, recorded as the job's pid,
    interrupted when the job file asks for a cancel."""
    job = read_job(runs, job_id)  # a file the queue signed
    try:  # and a command the allow-list still takes (it may have changed since the job was queued)
        argv, _ = checked(job.argv, runs)
        if Path(job.log).parent != jobs_dir(runs):
            raise JobError(f"its log {job.log} is not in {jobs_dir(runs)}")
    except JobError as exc:
        with _locked(runs):
            now = read_job(runs, job_id)
            now.state, now.ended, now.returncode, now.note = "failed", time.time(), 2, f"refused: {exc}"
            _write(runs, now)
        return 2
    with open(job.log, "ab") as log:
        log.write(f"$ {job.command}\n".encode())
        log.flush()
        child = subprocess.Popen([sys.executable, *job.program, *argv], stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT, env=_env(),
                                 cwd=str(jobs_dir(runs).parent), start_new_session=watch)
        if watch:
            with _locked(runs):
                now = read_job(runs, job_id)
                now.pid = child.pid
                _write(runs, now)
        rc = _wait(child, runs, job_id, watch)
        log.write(f"\n[exit status {rc}]\n".encode())
    with _locked(runs):
        now = read_job(runs, job_id)
        now.returncode, now.ended = rc, time.time()
        now.state = "done" if rc == 0 else "cancelled" if (rc == 130 or now.cancel_requested) else "failed"
        if now.state == "cancelled":  # keeps who asked ("cancel requested by ana")
            asked = now.note.replace("cancel requested", "cancelled") if now.note.startswith("cancel requested") else ""
            now.note = f"{asked or 'cancelled'}; rerun the same command to resume its store"
        _write(runs, now)
    return rc


# -- live progress ---------------------------------------------------------------------------

def log_tail(job: Job, lines: int = 20, max_bytes: int = 64_000) -> str:
    """The last lines of the job's log (progress bars' carriage returns kept as line breaks)."""
    try:
        with open(job.log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    rows = [r.rstrip() for r in text.replace("\r", "\n").splitlines() if r.strip()]
    return "\n".join(rows[-lines:])


def progress(job: Job) -> tuple[int, int] | None:
    """(conditions complete, conditions) of the job's store, or None when not readable yet."""
    import numpy as np
    import zarr

    out = Path(job.out)
    stores = [out] if out.suffix == ".zarr" else sorted(out.glob("*.zarr"))
    done = total = 0
    for s in stores:
        name = "activations/complete" if job.argv[0] == "diagnose" else "complete"
        try:
            arr = zarr.open_array(str(s / name), mode="r", zarr_format=2)
            values = np.asarray(arr[:])
        except Exception:  # not laid out yet, or being laid out
            continue
        done, total = done + int(values.sum()), total + int(values.size)
    return (done, total) if total else None


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m workbench.jobs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("runner", help="run the queue of RUNS for one device until it is empty")
    r.add_argument("runs")
    r.add_argument("--device", default="cpu")
    r.add_argument("--lock-fd", type=int, default=None, help=argparse.SUPPRESS)
    e = sub.add_parser("exec", help="run one job (used by the runner)")
    e.add_argument("runs")
    e.add_argument("job")
    args = parser.parse_args(argv)
    if args.what == "runner":
        run_queue(args.runs, args.device, lock_fd=args.lock_fd)
        return 0
    # SIGINT is meant for the workbench child (a cancel); a handler (not SIG_IGN, which the child
    # would inherit) keeps this wrapper alive to record the child's status.
    signal.signal(signal.SIGINT, lambda *_: None)
    return exec_job(args.runs, args.job)


if __name__ == "__main__":
    sys.exit(main())
