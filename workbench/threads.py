"""Torch intra-op threads: the cores that are free, not all of them.

With other processes busy on the cores, OpenMP threads wait for each other at every operation,
so one descheduled thread stalls them all: on 2 shared cores, 2 threads ran 0.03-0.57x as fast
as 1 (benchmarks/results/cpu.md). So the default is the cores this process may use less the
1-minute load average (at least 1).
"""

from __future__ import annotations

import os

import torch


def free_cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return max(1, min(cores, round(cores - load)))


def set_threads(requested: int | None) -> int:
    """Set torch's intra-op threads to ``requested`` (default: the free cores); returns the number."""
    n = requested or free_cores()
    torch.set_num_threads(n)
    return n
