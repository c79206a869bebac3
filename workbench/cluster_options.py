"""The ``--workers N`` / ``--cluster ADDRESS`` / ``--threads-per-worker T`` options that `workbench
run`, `study` and `diagnose` share, checked in one place.

Light on purpose (no torch, no dask): the CLI builds its commands from these at import time;
``workbench.cluster`` is imported only when a command is given a cluster.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import typer


class ClusterError(RuntimeError):
    """The cluster could not finish the work (no scheduler there, workers kept dying, none could
    take the work); the message says what to do."""


@dataclass(frozen=True)
class Target:
    """Where work goes: the scheduler at ``address``, or a local cluster of ``n_workers``."""

    address: str | None = None
    n_workers: int | None = None
    threads_per_worker: int | None = None  # torch threads of each worker (None: cores / workers)

    def connect_kwargs(self) -> dict:
        return {"address": self.address, "n_workers": self.n_workers, "threads_per_worker": self.threads_per_worker}


WORKERS = typer.Option(
    None, "--workers", min=1, help="run on N local worker processes (a Dask LocalCluster; see docs/cluster.md)")
CLUSTER = typer.Option(
    None, "--cluster", help="run on the workers of the Dask scheduler at this address (tcp://host:8786)")
THREADS_PER_WORKER = typer.Option(
    None, "--threads-per-worker", min=1, help="torch threads of each cluster worker (default: its host's cores "
    "divided among its workers)")


SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")  # Dask's network protocols (tcp when none is given)
_ADDRESS = re.compile(r"^(?:(?P<scheme>[A-Za-z]+)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(?P<port>\d{1,5})/?$")


def check_address(address: str) -> None:
    """A scheduler address as Dask reads it (``tcp://HOST:PORT``), refused here when malformed:
    Dask itself raises from a background thread and then waits out its connect timeout."""
    m = _ADDRESS.match(address)
    valid = "give SCHEME://HOST:PORT, e.g. tcp://10.0.0.5:8786 (schemes: " + ", ".join(SCHEMES) + ")"
    if not m:
        raise typer.BadParameter(f"{address!r} is not a scheduler address; {valid}", param_hint="--cluster")
    if m["scheme"] and m["scheme"].lower() not in SCHEMES:
        raise typer.BadParameter(f"{address!r}: unknown scheme {m['scheme']!r}; {valid}", param_hint="--cluster")
    if not 1 <= int(m["port"]) <= 65535:
        raise typer.BadParameter(f"{address!r}: port {m['port']} is out of range (1-65535)", param_hint="--cluster")


def target(cluster: str | None, workers: int | None, threads_per_worker: int | None = None) -> Target | None:
    """The three options as a ``Target`` (None: run here, serially); a bad mix is a usage error."""
    if cluster is not None and workers is not None:
        raise typer.BadParameter("give at most one of --cluster ADDRESS or --workers N", param_hint="--cluster")
    if cluster is not None and not cluster.strip():
        raise typer.BadParameter("the scheduler address is empty; give tcp://HOST:PORT", param_hint="--cluster")
    if threads_per_worker is not None and cluster is None and workers is None:
        raise typer.BadParameter("goes with --workers N or --cluster ADDRESS", param_hint="--threads-per-worker")
    if cluster is None and workers is None:
        return None
    if cluster is not None:
        check_address(cluster.strip())
    return Target(address=cluster.strip() if cluster else None, n_workers=workers,
                  threads_per_worker=threads_per_worker)


def fifo_priority(submitted: float) -> int:
    """Dask task priority (higher runs first) that orders work by submission time (seconds since
    the epoch), whichever client submitted it: app jobs and cluster runs alike. The scheduler's
    own order only separates submissions more than 100 ms apart."""
    return -int(submitted * 1000)


@contextmanager
def plan_runner(where: Target | None, device: str = "cpu"):
    """A function called like ``run_plan``: ``run_plan`` itself without a target, else
    ``run_plan_cluster`` on one client kept open for every store the caller runs."""
    from workbench.runner import run_plan

    if where is None:
        yield run_plan
        return
    from workbench.cluster import connect, run_plan_cluster

    with connect(**where.connect_kwargs(), device=device) as client:
        yield partial(run_plan_cluster, client=client, threads_per_worker=where.threads_per_worker)
