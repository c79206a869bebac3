"""Run a plan's conditions on a Dask cluster, into one shared store.

The client lays the store out (``run_plan(..., only=())``), splits the pending conditions into
batches and submits one task per batch. A worker process loads its model once and keeps it; a
task runs ``run_plan`` on the same store restricted to its batch, so every condition is written
into its own region, and the claims (flocks beside the store) keep two processes off one
condition. A worker that dies drops its claims with its process; the scheduler reruns its task
on another worker, and the rerun skips what the dead one had already written.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import dask
import torch
from distributed import Client, KilledWorker, LocalCluster, as_completed, get_worker
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from workbench import store
from workbench.claims import Claims
from workbench.corpora import Corpus
from workbench.loading import LoadedModel, load_model
from workbench.plans import Plan
from workbench.runner import Protocol, RunError, run_plan

BATCHES_PER_WORKER = 4  # small enough to balance uneven conditions, large enough to amortise setup


class ClusterError(RuntimeError):
    """The cluster could not finish the run (workers kept dying, or none could take the work)."""


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to run batches of one plan (the model is loaded by name)."""

    spec: str
    revision: str | None
    seed: int
    plan: Plan
    corpora: list[Corpus]
    out: str
    reference: Corpus | None
    protocol: Protocol | None
    device: str
    dtype: str
    donor_seed: int | None
    tasks: list | None
    task_items: int | None
    context: int
    stride: int
    batch_size: int
    threads: dict  # host -> torch threads per worker process; "*" for every host
    topic: str  # Dask event topic the workers report finished conditions on


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _host_cpus() -> tuple[str, int]:
    return socket.gethostname(), _cpus()


# The worker process's model, kept across tasks; one at a time (a new spec replaces it).
_MODEL: dict[tuple, LoadedModel] = {}
# One task at a time per process: tasks share the model, and torch uses the cores itself.
_RUN_LOCK = threading.Lock()
_SUMMARY = re.compile(r"computed (\d+) condition\(s\) here, copied (\d+)")


def _model(job: Job) -> LoadedModel:
    key = (job.spec, job.revision, job.seed, job.device, job.dtype)
    if key not in _MODEL:
        _MODEL.clear()
        _MODEL[key] = load_model(job.spec, device=job.device, dtype=job.dtype, revision=job.revision,
                                 seed=job.seed)
    return _MODEL[key]


def run_batch(job: Job, batch: list[int]) -> dict:
    """Worker task: compute the conditions ``batch`` of ``job`` into its store.

    Returns what happened (``computed``/``copied`` here, ``done_before``: batch conditions already
    complete when the task started, e.g. written by an earlier attempt whose worker died). Errors
    that a rerun would repeat (a bad store, a non-finite baseline) come back as ``error`` instead
    of being raised, so Dask's retries are spent only on the unexpected."""
    start = time.perf_counter()
    host = socket.gethostname()
    torch.set_num_threads(int(job.threads.get("*") or job.threads.get(host) or _cpus()))
    try:
        worker = get_worker()
    except ValueError:  # called outside a worker (tests, debugging)
        worker = None

    def report(index, condition):
        if worker is not None:
            worker.log_event(job.topic, {"index": int(index), "host": host, "pid": os.getpid()})

    messages: list[str] = []
    # the store's lazy (dask) reads run here: the cluster's own scheduler would queue them
    # behind this very task
    with _RUN_LOCK, dask.config.set(scheduler="synchronous"):
        loaded = _model(job)
        done = store.open_store(job.out)["complete"].values
        base = [i for i, c in enumerate(job.plan.conditions) if c.kind == "baseline"]
        done_before = sum(bool(done[i]) for i in batch if i not in base)
        try:
            run_plan(loaded, job.plan, job.corpora, job.out, protocol=job.protocol, reference=job.reference,
                     device=job.device, dtype=job.dtype, donor_seed=job.donor_seed, progress=False,
                     on_condition=report, log=messages.append, context=job.context, stride=job.stride,
                     batch_size=job.batch_size, tasks=job.tasks, task_items=job.task_items, only=batch)
        except (RunError, store.StoreError) as exc:
            return {"batch": batch, "error": exc, "host": host, "pid": os.getpid()}
    found = [_SUMMARY.search(m) for m in messages]
    counts = next((m for m in found if m), None)
    return {"batch": batch, "computed": int(counts[1]) if counts else None,
            "copied": int(counts[2]) if counts else None, "done_before": done_before,
            "messages": [m for m in messages if not _SUMMARY.search(m)], "host": host, "pid": os.getpid(),
            "seconds": time.perf_counter() - start}


def batches(plan: Plan, pending: list[int], size: int) -> list[list[int]]:
    """``pending`` in batches of about ``size`` conditions, in plan order; conditions with the
    same edit (one effect under two labels) share a batch, so the runner copies instead of
    recomputing them."""
    if size < 1:
        raise ValueError(f"batch size {size} is invalid: give at least 1 condition per task")
    groups: dict[str, list[int]] = {}
    for i in pending:
        groups.setdefault(plan.conditions[i].effect_id, []).append(i)
    out: list[list[int]] = []
    for group in groups.values():
        if not out or len(out[-1]) >= size:
            out.append([])
        out[-1].extend(group)
    return out


def _threads(client: Client, threads_per_worker: int | None) -> dict:
    """Torch threads per worker process: given, or each host's cores shared by its workers."""
    if threads_per_worker is not None:
        return {"*": threads_per_worker}
    hosts = list(client.run(_host_cpus).values())
    count: dict[str, int] = {}
    for host, _ in hosts:
        count[host] = count.get(host, 0) + 1
    return {host: max(1, cpus // count[host]) for host, cpus in hosts}


def _has_bokeh() -> bool:
    return importlib.util.find_spec("bokeh") is not None


def dashboard(client: Client) -> str:
    """Where the scheduler's dashboard is, or why there is none (it needs bokeh beside the
    scheduler; without it the scheduler serves only its health and metrics pages)."""
    if not client.run_on_scheduler(_has_bokeh):
        return "no dashboard: bokeh is not installed beside the scheduler (pip install bokeh to get one)"
    if client.scheduler_info().get("services", {}).get("dashboard"):
        return f"dashboard: {client.dashboard_link}"
    return "no dashboard: the scheduler runs none"


def local_cluster(n_workers: int, *, threads_per_worker: int | None = None, device: str = "cpu",
                  dashboard_address: str | None = ":8787") -> LocalCluster:
    """``n_workers`` worker processes on this machine, one task at a time each; with
    ``device="cuda"`` and GPUs present, worker k sees only GPU k mod (number of GPUs)."""
    if n_workers < 1:
        raise ValueError(f"--workers {n_workers} is invalid: give at least 1")
    threads = threads_per_worker or max(1, _cpus() // n_workers)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    n_gpus = torch.cuda.device_count() if device == "cuda" else 0
    cluster = LocalCluster(n_workers=0 if n_gpus else n_workers, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=dashboard_address, env=env)
    if n_gpus:
        from distributed import Nanny

        cluster.worker_spec.update({
            k: {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1},
                                          "env": {**env, "CUDA_VISIBLE_DEVICES": str(k % n_gpus)}}}
            for k in range(n_workers)})
        cluster.scale(n_workers)
    return cluster


@contextmanager
def connect(address: str | None = None, n_workers: int | None = None, *, threads_per_worker: int | None = None,
            device: str = "cpu", dashboard_address: str | None = ":8787"):
    """A client of the scheduler at ``address``, or of a new local cluster of ``n_workers``."""
    if (address is None) == (n_workers is None):
        raise ValueError("give exactly one of a scheduler address (--cluster) or a number of local workers (--workers)")
    if address is not None:
        with Client(address, timeout="30s", set_as_default=False) as client:
            yield client
        return
    with local_cluster(n_workers, threads_per_worker=threads_per_worker, device=device,
                       dashboard_address=dashboard_address) as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(n_workers, timeout=120)
        yield client


def run_plan_cluster(loaded: LoadedModel, plan: Plan, corpora: list[Corpus], out: str | Path, *,
                     address: str | None = None, n_workers: int | None = None, client: Client | None = None,
                     threads_per_worker: int | None = None, batch: int | None = None, retries: int = 1,
                     protocol: Protocol | None = None, reference: Corpus | None = None, device: str = "cpu",
                     dtype: str = "float32", donor_seed: int | None = None, tasks: list | None = None,
                     task_items: int | None = None, context: int = 512, stride: int = 256, batch_size: int = 8,
                     progress: bool = True, log: Callable[[str], None] | None = None,
                     on_batch: Callable[[dict], None] | None = None):
    """``run_plan`` on a Dask cluster: the scheduler at ``address``, a local cluster of
    ``n_workers`` processes, or an open ``client``; returns the store.

    Workers load ``loaded.spec`` themselves (a local path must exist on every host) and must see
    ``out`` at the same path (shared storage with POSIX locks). ``batch``: conditions per task
    (default: about 4 tasks per worker). ``threads_per_worker``: torch threads of each worker
    process (default: its host's cores divided among the workers there). ``on_batch`` gets each
    finished task's record."""
    if sum(x is not None for x in (address, n_workers, client)) != 1:
        raise ValueError("give exactly one of address, n_workers or client")
    with dask.config.set(scheduler="synchronous"):  # store reads stay in this process
        return _run_plan_cluster(loaded, plan, corpora, out, address, n_workers, client, threads_per_worker,
                                 batch, retries, progress, log, on_batch,
                                 dict(protocol=protocol, reference=reference, device=device, dtype=dtype,
                                      donor_seed=donor_seed, tasks=tasks, task_items=task_items,
                                      context=context, stride=stride, batch_size=batch_size))


def _run_plan_cluster(loaded, plan, corpora, out, address, n_workers, client, threads_per_worker, batch,
                      retries, progress, log, on_batch, run_kw):
    say = log or (lambda msg: None)
    out = Path(out).absolute()
    quiet = lambda m: None if _SUMMARY.search(m) else say(m)  # noqa: E731 (it computed nothing)
    ds = run_plan(loaded, plan, corpora, out, progress=False, log=quiet, only=(), **run_kw)  # lay out, check
    pending = store.pending(ds)
    if not pending:
        say("every condition is already complete")
        return ds
    if client is None:
        with connect(address, n_workers, threads_per_worker=threads_per_worker, device=run_kw["device"]) as own:
            return _run(own, loaded, plan, corpora, out, pending, run_kw, threads_per_worker, batch, retries,
                        progress, say, on_batch)
    return _run(client, loaded, plan, corpora, out, pending, run_kw, threads_per_worker, batch, retries,
                progress, say, on_batch)


def _run(client, loaded, plan, corpora, out, pending, run_kw, threads_per_worker, batch, retries, progress,
         say, on_batch):
    workers = client.scheduler_info()["workers"]
    if not workers:
        client.wait_for_workers(1, timeout=120)
        workers = client.scheduler_info()["workers"]
    gpu = run_kw["device"].startswith("cuda") and any("GPU" in w.get("resources", {}) for w in workers.values())
    size = batch or max(1, math.ceil(len(pending) / (BATCHES_PER_WORKER * len(workers))))
    parts = batches(plan, pending, size)
    job = Job(spec=loaded.spec, revision=loaded.revision, seed=int(loaded.info.get("seed", 0)), plan=plan,
              corpora=corpora, out=str(out), threads=_threads(client, threads_per_worker),
              topic=f"workbench-{uuid.uuid4().hex[:12]}", **run_kw)
    say(f"{len(pending)} condition(s) in {len(parts)} task(s) on {len(workers)} worker(s) at "
        f"{client.scheduler.address}; {dashboard(client)}")
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   disable=not progress, console=Console(stderr=True))
    task = bar.add_task("conditions (cluster)", total=len(pending))
    seen: set[int] = set()
    wanted = set(pending)
    lock = threading.Lock()

    def mark(indices):
        with lock:
            fresh = (set(indices) & wanted) - seen
            seen.update(fresh)
        if fresh:
            bar.advance(task, len(fresh))

    client.subscribe_topic(job.topic, lambda event: mark([event[1]["index"]]))
    started = time.perf_counter()
    futures = [client.submit(run_batch, job, part, key=f"workbench-batch-{k}-{job.topic}", pure=False,
                             retries=retries, resources={"GPU": 1} if gpu else None)
               for k, part in enumerate(parts)]
    computed = copied = 0
    try:
        with bar:
            for future in as_completed(futures, loop=client.loop):
                try:
                    result = future.result()
                except KilledWorker as exc:
                    raise ClusterError(f"workers kept dying while running a task ({exc}); what was written "
                                       f"stays in {out}: rerun the same command to resume") from None
                if "error" in result:
                    raise result["error"]
                mark(result["batch"])
                computed += result["computed"] or 0
                copied += result["copied"] or 0
                for message in result["messages"]:
                    say(message)
                if on_batch:
                    on_batch(result)
    finally:
        for future in futures:
            future.cancel()
        client.unsubscribe_topic(job.topic)
    final = store.open_store(out)
    if bool(final["complete"].all()):
        Claims(out).remove()
    say(f"computed {computed} condition(s) on the cluster, copied {copied} identical edit(s), "
        f"in {time.perf_counter() - started:.1f} s")
    return final
