"""Run a plan's conditions, or diagnose stores, on a Dask cluster, into shared stores.

Plans: the client lays the store out (``run_plan(..., only=())``), splits the pending conditions
into batches and submits one task per batch. A worker process loads its model once and keeps it;
a task runs ``run_plan`` on the same store restricted to its batch, so every condition is written
into its own region, and the claims (flocks beside the store) keep two processes off one
condition. A worker that dies drops its claims with its process; the scheduler reruns its task
on another worker, and the rerun skips what the dead one had already written.

Per-task setup is paid once per worker and run: the first task of a run on a worker runs every
check a serial run makes (load-time model check, provenance with the weights hash, resume check,
store verification); its later tasks reuse that provenance (``run_plan(prepared=...)``), and the
store is still checked against it.

Diagnostics: one task per store (``diagnose_cluster``). The captures are a small part of
``diagnose``; probe fits and the maps dominate, and they read the clean run's activations and
every condition's points together, so a store is diagnosed whole, on one worker.
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
from distributed.comm.core import CommClosedError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from workbench import store
from workbench.claims import Claims
from workbench.cluster_options import ClusterError, fifo_priority
from workbench.corpora import Corpus
from workbench.loading import LoadedModel, load_model
from workbench.plans import Plan
from workbench.runner import GROUP_SIZE, Protocol, RunError, run_plan

BATCHES_PER_WORKER = 4  # without the fast path: small enough to balance uneven conditions
# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also freezes glibc's mmap
# threshold: every large torch buffer is then mapped and unmapped afresh (CPU forwards ran 1.4x
# slower here, more on a busy machine). Local clusters start without it; remote workers are
# told about it.
MALLOC_TRIM = "MALLOC_TRIM_THRESHOLD_"
CONNECT_TIMEOUT_S = 10  # to reach a scheduler (Dask's own default waits 30 s, then retries)
WORKER_WAIT_S = 15  # for a scheduler's first worker (a worker joins a running scheduler in seconds)


@dataclass(frozen=True)
class PlanRun:
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
    topic: str  # Dask event topic the workers report finished conditions on; unique per run
    fast: bool = True  # run_plan's fast path (prefix reuse, stacking) within each task
    max_rows: int | None = None

    @property
    def model_key(self) -> tuple:
        return (self.spec, self.revision, self.seed, self.device, self.dtype)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _host_cpus() -> tuple[str, int]:
    return socket.gethostname(), _cpus()


# The worker process's model, kept across tasks; one at a time (a new spec replaces it).
_MODEL: dict[tuple, LoadedModel] = {}
# The provenance a run's first task on this worker established: (model key, topic) -> attrs.
_PREPARED: dict[tuple, dict] = {}
# One task at a time per process: tasks share the model, and torch uses the cores itself.
_RUN_LOCK = threading.Lock()
_SUMMARY = re.compile(r"computed (\d+) condition\(s\) here, copied (\d+)")


def _model(run: PlanRun) -> LoadedModel:
    if run.model_key not in _MODEL:
        _MODEL.clear()
        _PREPARED.clear()
        _MODEL[run.model_key] = load_model(run.spec, device=run.device, dtype=run.dtype, revision=run.revision,
                                           seed=run.seed)
    return _MODEL[run.model_key]


def _worker_threads(threads: dict) -> int:
    return int(threads.get("*") or threads.get(socket.gethostname()) or _cpus())


def _reporter(topic: str):
    """on_condition for a task: a Dask event per finished condition (the client's progress bar)."""
    try:
        worker = get_worker()
    except ValueError:  # called outside a worker (tests, debugging)
        return lambda index, condition: None
    host, pid = socket.gethostname(), os.getpid()
    return lambda index, condition: worker.log_event(topic, {"index": int(index), "host": host, "pid": pid})


def run_batch(run: PlanRun, batch: list[int]) -> dict:
    """Worker task: compute the conditions ``batch`` of ``run`` into its store.

    Returns what happened (``computed``/``copied`` here, ``done_before``: batch conditions already
    complete when the task started, e.g. written by an earlier attempt whose worker died;
    ``checked``: whether this task ran the run's checks or reused them). Errors that a rerun
    would repeat (a bad store, a non-finite baseline) come back as ``error`` instead of being
    raised, so Dask's retries are spent only on the unexpected."""
    start = time.perf_counter()
    host = socket.gethostname()
    torch.set_num_threads(_worker_threads(run.threads))
    messages: list[str] = []
    # the store's lazy (dask) reads run here: the cluster's own scheduler would queue them
    # behind this very task
    with _RUN_LOCK, dask.config.set(scheduler="synchronous"):
        loaded = _model(run)
        done = store.open_store(run.out)["complete"].values
        base = [i for i, c in enumerate(run.plan.conditions) if c.kind == "baseline"]
        done_before = sum(bool(done[i]) for i in batch if i not in base)
        key = (run.model_key, run.topic)
        prepared = _PREPARED.get(key)
        try:
            run_plan(loaded, run.plan, run.corpora, run.out, protocol=run.protocol, reference=run.reference,
                     device=run.device, dtype=run.dtype, donor_seed=run.donor_seed, progress=False,
                     on_condition=_reporter(run.topic), log=messages.append, context=run.context,
                     stride=run.stride, batch_size=run.batch_size, tasks=run.tasks, task_items=run.task_items,
                     only=batch, prepared=prepared, fast=run.fast, max_rows=run.max_rows)
        except (RunError, store.StoreError) as exc:
            return {"batch": batch, "error": exc, "host": host, "pid": os.getpid()}
        if prepared is None:  # every check passed for this model and store: later tasks reuse them
            _PREPARED.clear()  # one run's at a time (another run's tasks just check again)
            _PREPARED[key] = dict(store.open_store(run.out).attrs)
    found = [_SUMMARY.search(m) for m in messages]
    counts = next((m for m in found if m), None)
    return {"batch": batch, "computed": int(counts[1]) if counts else None,
            "copied": int(counts[2]) if counts else None, "done_before": done_before,
            "checked": prepared is None, "messages": [m for m in messages if not _SUMMARY.search(m)],
            "host": host, "pid": os.getpid(), "seconds": time.perf_counter() - start}


def batches(plan: Plan, pending: list[int], size: int, *, baseline_alone: bool = True) -> list[list[int]]:
    """``pending`` in batches of at most about ``size`` conditions (one task each).

    The baseline is a batch of its own, first (``baseline_alone``; else it joins the first
    batch): every other condition's QC waits for it, and in a larger batch computed together it
    would be written only when the whole batch is. Conditions with the same edit (one effect
    under two labels) share a batch, so the runner copies instead of recomputing them. Edits go
    to the batch with the fewest conditions so far, in plan order, so each batch gets a share of
    early and late layers (a sweep's costs differ along the layers); plan order within a batch."""
    if size < 1:
        raise ValueError(f"batch size {size} is invalid: give at least 1 condition per task")
    base = [i for i in pending if plan.conditions[i].kind == "baseline"]
    groups: dict[str, list[int]] = {}
    for i in pending:
        if i not in base:
            groups.setdefault(plan.conditions[i].effect_id, []).append(i)
    n = math.ceil(sum(map(len, groups.values())) / size)
    parts: list[list[int]] = [[] for _ in range(n)]
    for group in groups.values():
        min(parts, key=len).extend(group)
    parts = [sorted(p) for p in parts if p]
    if base and (baseline_alone or not parts):
        return [base] + parts
    if base:
        parts[0] = sorted(base + parts[0])
    return parts


def task_size(n_conditions: int, n_workers: int, fast: bool) -> int:
    """Conditions per task. With the fast path, as few tasks as keep every task within one
    runner group, in a whole number per worker (conditions share a clean pass only within a
    task); without it, about ``BATCHES_PER_WORKER`` tasks per worker (balance; the per-task setup
    is small once a worker's checks are reused)."""
    if fast:
        n_tasks = n_workers * math.ceil(n_conditions / (n_workers * GROUP_SIZE))
    else:
        n_tasks = BATCHES_PER_WORKER * n_workers
    return max(1, math.ceil(n_conditions / n_tasks))


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
    n_gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{MALLOC_TRIM}": None}):
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
        try:
            client = Client(address, timeout=f"{CONNECT_TIMEOUT_S}s", set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            why = " ".join(str(exc).split())[:200]
            raise ClusterError(f"cannot reach a Dask scheduler at {address} within {CONNECT_TIMEOUT_S} s ({why}); "
                               "start one with `dask scheduler` (see docs/cluster.md) or check the address") from None
        with client:
            _workers(client)  # a scheduler without workers fails now, not after the store is laid out
            yield client
        return
    with local_cluster(n_workers, threads_per_worker=threads_per_worker, device=device,
                       dashboard_address=dashboard_address) as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(n_workers, timeout=120)
        yield client


@contextmanager
def _client(address, n_workers, client, threads_per_worker, device):
    """The given client, or one of the scheduler at ``address`` / a local cluster (closed after)."""
    if sum(x is not None for x in (address, n_workers, client)) != 1:
        raise ValueError("give exactly one of address, n_workers or client")
    if client is not None:
        yield client
        return
    with connect(address, n_workers, threads_per_worker=threads_per_worker, device=device) as own:
        yield own


def _workers(client: Client) -> dict:
    workers = client.scheduler_info()["workers"]
    if not workers:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError:
            raise ClusterError(f"the Dask scheduler at {client.scheduler.address} has no workers (waited "
                               f"{WORKER_WAIT_S} s); start some with `dask worker {client.scheduler.address}` "
                               "(see docs/cluster.md)") from None
        workers = client.scheduler_info()["workers"]
    return workers


def _malloc_trim() -> str | None:
    return os.environ.get(MALLOC_TRIM)


def slow_worker_note(client: Client) -> str | None:
    """A line about workers started with Dask's malloc setting (slow torch on CPU), or None."""
    slow = [addr for addr, value in client.run(_malloc_trim).items() if value is not None]
    if not slow:
        return None
    return (f"{len(slow)} worker(s) run with {MALLOC_TRIM} set (Dask's nanny default), which slows torch on the "
            "CPU; start them with it unset (docs/cluster.md, 'Worker settings')")


def _gpu_resources(client: Client, device: str) -> dict | None:
    """``GPU=1`` for CUDA work when some worker advertises GPUs (then only those take it)."""
    gpu = device.startswith("cuda") and any("GPU" in w.get("resources", {}) for w in _workers(client).values())
    return {"GPU": 1} if gpu else None


def _results(futures, out) -> list:
    """Each task's record as it finishes; a task's error (a record with ``error``) is raised."""
    try:
        for future in as_completed(futures, loop=futures[0].client.loop if futures else None):
            try:
                result = future.result()
            except KilledWorker as exc:
                raise ClusterError(f"workers kept dying while running a task ({exc}); what was written "
                                   f"stays in {out}: rerun the same command to resume") from None
            except CommClosedError as exc:
                raise ClusterError(f"lost the connection to the scheduler ({exc}); what was written stays "
                                   f"in {out}: rerun the same command to resume") from None
            if "error" in result:
                raise result["error"]
            yield result
    finally:
        for future in futures:
            future.cancel()


def _bar(progress: bool, label: str, total: int):
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   disable=not progress, console=Console(stderr=True))
    return bar, bar.add_task(label, total=total)


def run_plan_cluster(loaded: LoadedModel, plan: Plan, corpora: list[Corpus], out: str | Path, *,
                     address: str | None = None, n_workers: int | None = None, client: Client | None = None,
                     threads_per_worker: int | None = None, batch: int | None = None, retries: int = 1,
                     protocol: Protocol | None = None, reference: Corpus | None = None, device: str = "cpu",
                     dtype: str = "float32", donor_seed: int | None = None, tasks: list | None = None,
                     task_items: int | None = None, context: int = 512, stride: int = 256, batch_size: int = 8,
                     progress: bool = True, log: Callable[[str], None] | None = None,
                     on_batch: Callable[[dict], None] | None = None, fast: bool = True,
                     max_rows: int | None = None):
    """``run_plan`` on a Dask cluster: the scheduler at ``address``, a local cluster of
    ``n_workers`` processes, or an open ``client``; returns the store.

    Workers load ``loaded.spec`` themselves (a local path must exist on every host) and must see
    ``out`` at the same path (shared storage with POSIX locks). ``batch``: conditions per task
    (default: ``task_size``). ``threads_per_worker``: torch threads of each worker
    process (default: its host's cores divided among the workers there). ``on_batch`` gets each
    finished task's record."""
    if sum(x is not None for x in (address, n_workers, client)) != 1:
        raise ValueError("give exactly one of address, n_workers or client")
    say = log or (lambda msg: None)
    out = Path(out).absolute()
    run_kw = dict(protocol=protocol, reference=reference, device=device, dtype=dtype, donor_seed=donor_seed,
                  tasks=tasks, task_items=task_items, context=context, stride=stride, batch_size=batch_size,
                  fast=fast, max_rows=max_rows)
    with dask.config.set(scheduler="synchronous"):  # store reads stay in this process
        quiet = lambda m: None if _SUMMARY.search(m) else say(m)  # noqa: E731 (it computed nothing)
        ds = run_plan(loaded, plan, corpora, out, progress=False, log=quiet, only=(), **run_kw)  # lay out, check
        pending = store.pending(ds)
        if not pending:
            say("every condition is already complete")
            return ds
        with _client(address, n_workers, client, threads_per_worker, device) as cl:
            return _run(cl, loaded, plan, corpora, out, pending, run_kw, threads_per_worker, batch, retries,
                        progress, say, on_batch)


def _run(client, loaded, plan, corpora, out, pending, run_kw, threads_per_worker, batch, retries, progress,
         say, on_batch):
    workers = _workers(client)
    base = [i for i in pending if plan.conditions[i].kind == "baseline"]
    size = batch or task_size(len(pending) - len(base), len(workers), run_kw["fast"])
    parts = batches(plan, pending, size, baseline_alone=len(workers) > 1)
    run = PlanRun(spec=loaded.spec, revision=loaded.revision, seed=int(loaded.info.get("seed", 0)), plan=plan,
                  corpora=corpora, out=str(out), threads=_threads(client, threads_per_worker),
                  topic=f"workbench-{uuid.uuid4().hex[:12]}", **run_kw)
    say(f"{len(pending)} condition(s) in {len(parts)} task(s) on {len(workers)} worker(s) at "
        f"{client.scheduler.address}; {dashboard(client)}")
    if note := slow_worker_note(client):
        say(note)
    bar, task = _bar(progress, "conditions (cluster)", len(pending))
    seen: set[int] = set()
    wanted = set(pending)
    lock = threading.Lock()

    def mark(indices):
        with lock:
            fresh = (set(indices) & wanted) - seen
            seen.update(fresh)
        if fresh:
            bar.advance(task, len(fresh))

    client.subscribe_topic(run.topic, lambda event: mark([event[1]["index"]]))
    started = time.perf_counter()
    resources, priority = _gpu_resources(client, run_kw["device"]), fifo_priority(time.time())

    def submit(k: int):
        return client.submit(run_batch, run, parts[k], key=f"workbench-batch-{k}-{run.topic}", pure=False,
                             retries=retries, resources=resources, priority=priority)

    futures = [submit(0)]
    computed = copied = 0
    try:
        with bar:
            if parts[0] == base:
                # a batch holding the pending baseline computes it too: the others go out once its
                # own task has written it (else they race for it), to whichever workers are free
                futures[0].exception()  # waits; a failure is raised below
            futures += [submit(k) for k in range(1, len(parts))]
            for result in _results(futures, out):
                mark(result["batch"])
                computed += result["computed"] or 0
                copied += result["copied"] or 0
                for message in result["messages"]:
                    say(message)
                if on_batch:
                    on_batch(result)
    finally:
        client.unsubscribe_topic(run.topic)
    final = store.open_store(out)
    if bool(final["complete"].all()):
        Claims(out).remove()
    say(f"computed {computed} condition(s) on the cluster, copied {copied} identical edit(s), "
        f"in {time.perf_counter() - started:.1f} s")
    return final


# -- diagnostics: one task per store ------------------------------------------------------------

def diagnose_store(path: str, options: dict, threads: dict) -> dict:
    """Worker task: ``diagnose(path, **options)``; a store that cannot be diagnosed comes back
    as ``error`` (a rerun would repeat it)."""
    from workbench.diagnose import diagnose

    start = time.perf_counter()
    torch.set_num_threads(_worker_threads(threads))
    with _RUN_LOCK, dask.config.set(scheduler="synchronous"):
        _MODEL.clear()  # diagnose loads the store's own model; do not hold two
        _PREPARED.clear()
        try:
            diagnose(path, progress=False, **options)
        except store.StoreError as exc:  # DiagnoseError included
            return {"store": path, "error": exc}
    return {"store": path, "host": socket.gethostname(), "pid": os.getpid(), "seconds": time.perf_counter() - start}


def diagnose_cluster(stores: list[str | Path], *, address: str | None = None, n_workers: int | None = None,
                     client: Client | None = None, threads_per_worker: int | None = None, retries: int = 1,
                     progress: bool = True, log: Callable[[str], None] | None = None, **options) -> list[dict]:
    """``diagnose`` of each store on a Dask cluster, one task per store (see the module
    docstring for why a store is not split); ``options`` are ``diagnose``'s. Workers must see
    the stores at the same paths. Returns each task's record."""
    say = log or (lambda msg: None)
    paths = list(dict.fromkeys(str(Path(s).absolute()) for s in stores))
    devices = {}
    for p in paths:  # a missing or foreign store fails here, before anything is submitted
        devices[p] = options.get("device") or store.open_store(p).attrs.get("device", "cpu")
    device = next(iter(devices.values()), "cpu")
    with _client(address, n_workers, client, threads_per_worker, device) as cl:
        workers = _workers(cl)
        threads = _threads(cl, threads_per_worker)
        say(f"{len(paths)} store(s) to diagnose, one task each, on {len(workers)} worker(s) at "
            f"{cl.scheduler.address}; {dashboard(cl)}")
        if note := slow_worker_note(cl):
            say(note)
        tag, priority = uuid.uuid4().hex[:12], fifo_priority(time.time())
        futures = [cl.submit(diagnose_store, p, options, threads, key=f"workbench-diagnose-{k}-{tag}", pure=False,
                             retries=retries, resources=_gpu_resources(cl, devices[p]), priority=priority)
                   for k, p in enumerate(paths)]
        bar, task = _bar(progress, "stores diagnosed (cluster)", len(paths))
        done = []
        with bar:
            for result in _results(futures, ", ".join(paths)):
                bar.advance(task)
                say(f"diagnosed {result['store']} on {result['host']} in {result['seconds']:.0f} s")
                done.append(result)
    return done
