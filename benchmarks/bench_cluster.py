"""The cluster path against the serial one: overhead with one worker, speed-up with two.

    python benchmarks/bench_cluster.py [--model mini-qwen2.5] [--preset sweep] [--max-tokens 4096]
                                       [--repeats 3]

Runs the same plan into fresh stores, every process on one torch thread: serially (``run_plan``
in this process), on a local cluster of one worker process and on one of two. Both clusters
are started once (their start is timed apart) and the three paths take turns, ``--repeats``
times, so a change in the machine's load falls on all of them alike; the table gives the median
wall time of each path (store layout by the client and the workers' tasks included) and its
first run (the workers load the model then; later runs find it loaded). A second table gives the
per-task setup of ``run_plan`` on a complete store: every check (what a worker's first task of a
run does) against the checks reused (its later tasks). Speed-ups need as many free cores as
workers: the load average before and after is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import torch


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def setup_seconds(loaded, plan, corpora, out, kw, repeats: int) -> tuple[float, float]:
    """Median seconds of ``run_plan`` computing nothing on a complete store: all checks, reused."""
    import dask

    from workbench import store
    from workbench.runner import run_plan

    prepared = dict(store.open_store(out).attrs)
    times = {False: [], True: []}
    with dask.config.set(scheduler="synchronous"):  # as on a worker
        for _ in range(repeats):
            for reuse in (False, True):
                start = time.perf_counter()
                run_plan(loaded, plan, corpora, out, only=[1], prepared=prepared if reuse else None, **kw)
                times[reuse].append(time.perf_counter() - start)
    return statistics.median(times[False]), statistics.median(times[True])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mini-qwen2.5")
    ap.add_argument("--preset", default="sweep")
    ap.add_argument("--corpus", default="news")
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--stride", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2, help="random-control draws of the preset")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from workbench import plans
    from workbench.architectures import component_map
    from workbench.cluster import connect, run_plan_cluster
    from workbench.loading import load_model
    from workbench.runner import prepare_inputs, run_plan

    load_before = os.getloadavg()
    loaded = load_model(args.model)
    cmap = component_map(loaded.model)
    plan = plans.resolve(plans.auto_spec(cmap, args.preset, seeds=args.seeds), cmap)
    corpora, ref, protocol = prepare_inputs(loaded, [args.corpus], max_tokens=args.max_tokens,
                                            context=args.context, stride=args.stride)
    kw = dict(protocol=protocol, reference=ref, progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    paths = ["serial", "cluster, 1 worker", "cluster, 2 workers"]
    walls: dict[str, list[float]] = {p: [] for p in paths}
    starts: dict[str, float] = {"serial": 0.0}
    try:
        with ExitStack() as stack:
            clients = {}
            for n, name in ((1, paths[1]), (2, paths[2])):
                start = time.perf_counter()
                clients[name] = stack.enter_context(connect(n_workers=n, threads_per_worker=1, dashboard_address=":0"))
                starts[name] = time.perf_counter() - start

            def go(name, out):
                if name == "serial":
                    return run_plan(loaded, plan, corpora, out, **kw)
                return run_plan_cluster(loaded, plan, corpora, out, client=clients[name], threads_per_worker=1, **kw)

            for r in range(args.repeats):
                for k in range(len(paths)):
                    name = paths[(k + r) % len(paths)]  # each path takes each slot in turn
                    out = tmp / f"{len(walls[name])}-{name.replace(' ', '').replace(',', '')}.zarr"
                    walls[name].append(_timed(lambda: go(name, out)))
        full, reused = setup_seconds(loaded, plan, corpora, tmp / "0-serial.zarr", kw, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    n_c, serial = len(plan.conditions), statistics.median(walls["serial"])
    print(f"{time.strftime('%Y-%m-%d')}, commit {_commit()}, {_cpu()}, {os.cpu_count()} cores; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"{args.model}, {args.preset} preset: {n_c} conditions x {corpora[0].n_tokens} tokens ({args.corpus}), "
          f"context {args.context}, stride {args.stride}; one torch thread per process; {args.repeats} repeats\n")
    print("| path | start s | first run s | median run s | conditions/s | x serial |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in paths:
        med = statistics.median(walls[name])
        print(f"| {name} | {starts[name]:.1f} | {walls[name][0]:.2f} | {med:.2f} | {n_c / med:.2f} | "
              f"{serial / med:.2f} |")
    one_w, two_w = (statistics.median(walls[p]) for p in paths[1:])
    print(f"\nspeed-up of 2 workers over 1: {one_w / two_w:.2f}x; overhead of the 1-worker cluster path over "
          f"serial: {100 * (one_w / serial - 1):+.0f}% ({one_w - serial:+.2f} s)")
    print(f"per-task setup of run_plan on the complete {n_c}-condition store: {full:.3f} s with every check, "
          f"{reused:.3f} s with a worker's checks reused")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
