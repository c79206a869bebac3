"""The cluster path against the serial one: overhead with one worker, speed-up with two.

    python benchmarks/bench_cluster.py [--model mini-qwen2.5] [--preset sweep] [--max-tokens 2048]

Runs the same plan three times into fresh stores, every process on one torch thread: serially
(``run_plan`` in this process), on a local cluster of one worker process, and on one of two. The
cluster's start (worker processes importing torch) is timed apart from the run, which includes
the client laying the store out and each worker loading the model once. Prints a table: wall
seconds, conditions per second, ratios to serial. Speed-ups need as many free cores as workers.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mini-qwen2.5")
    ap.add_argument("--preset", default="sweep")
    ap.add_argument("--corpus", default="news")
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--stride", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from workbench import plans
    from workbench.architectures import component_map
    from workbench.cluster import connect, run_plan_cluster
    from workbench.loading import load_model
    from workbench.runner import prepare_inputs, run_plan

    loaded = load_model(args.model)
    cmap = component_map(loaded.model)
    plan = plans.resolve(plans.auto_spec(cmap, args.preset, seeds=2), cmap)
    corpora, ref, protocol = prepare_inputs(loaded, [args.corpus], max_tokens=args.max_tokens,
                                            context=args.context, stride=args.stride)
    kw = dict(protocol=protocol, reference=ref, progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    rows = []
    try:
        start = time.perf_counter()
        run_plan(loaded, plan, corpora, tmp / "serial.zarr", **kw)
        rows.append(("serial", 0.0, time.perf_counter() - start))
        for n in (1, 2):
            start = time.perf_counter()
            with connect(n_workers=n, threads_per_worker=1, dashboard_address=":0") as client:
                up = time.perf_counter() - start
                start = time.perf_counter()
                run_plan_cluster(loaded, plan, corpora, tmp / f"cluster{n}.zarr", client=client, **kw)
                rows.append((f"cluster, {n} worker(s)", up, time.perf_counter() - start))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n_c = len(plan.conditions)
    print(f"{args.model}, {n_c} conditions ({args.preset}), {corpora[0].n_tokens} tokens, context "
          f"{args.context}, stride {args.stride}, one torch thread per process")
    print(f"{'path':<22}{'start s':>9}{'run s':>9}{'cond/s':>9}{'x serial':>10}")
    for name, up, wall in rows:
        print(f"{name:<22}{up:>9.1f}{wall:>9.1f}{n_c / wall:>9.2f}{rows[0][2] / wall:>10.2f}")


if __name__ == "__main__":
    main()
