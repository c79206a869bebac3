"""Wall time of `workbench study` on the embedded default, measured, and the full study's estimated.

    python benchmarks/bench_study.py [--models mini-qwen3.5,...] [--max-tokens 2048] [--task-items 20]
                                     [--corpus encyclopedic --corpus books] [--no-fast] [--out FOLDER]

Runs the study (fresh folder) at the given size and times each model (main store and compression
curve), then asks the study for the forward tokens of the full-size study (every built-in corpus,
every task item, the default grid) and extrapolates each model's wall time from the throughput it
just measured. Appends a Markdown table to benchmarks/results/study.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "study.md"


def _compute_seconds(folder: Path, main_store: Path, main_only: bool = False) -> float:
    """Seconds the conditions of a model's main (and compression) store took (elapsed_s; a copied
    twin records none)."""
    import xarray as xr

    total = 0.0
    paths = [main_store] if main_only else [main_store, folder / main_store.name.replace(".zarr", ".compression.zarr")]
    for path in paths:
        if path.exists():
            ds = xr.open_zarr(path)
            total += float(ds["elapsed_s"].where(ds["complete"]).sum())
    return total


def main() -> None:
    from workbench.corpora import builtin_corpora
    from workbench.study import StudySettings, run_study

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mini-qwen3.5,mini-falcon-h1,mini-qwen2.5")
    ap.add_argument("--corpus", action="append")
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--task-items", type=int, default=20)
    ap.add_argument("--grid", default="1,2,4,8")
    ap.add_argument("--no-fast", action="store_true")
    ap.add_argument("--full-max-tokens", type=int, default=50_000, help="tokens per corpus of the full study")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--existing", type=Path, default=None,
                    help="a finished study folder made with these settings: read each model's compute time "
                         "from its stores (the conditions' elapsed_s) instead of running it again")
    args = ap.parse_args()

    models = [m for m in args.models.split(",") if m]
    small = StudySettings(models=models, corpora=args.corpus or ["encyclopedic", "books"],
                          max_tokens=args.max_tokens, task_items=args.task_items,
                          grid=[int(x) for x in args.grid.split(",")])
    if args.no_fast:
        small.fast = False
    if args.existing:
        out = args.existing
        plans = run_study(small, out, dry_run=True, log=lambda m: None)
        walls = [_compute_seconds(out, p.store) for p in plans]
        total = sum(walls)
        source = f"the conditions' recorded compute time in {out}"
    else:
        out = args.out or Path(tempfile.mkdtemp(prefix="bench-study-"))
        shutil.rmtree(out, ignore_errors=True)
        marks: list[tuple[float, str]] = []

        def log(message: str) -> None:
            marks.append((time.perf_counter(), message))

        start = time.perf_counter()
        plans = run_study(small, out, log=log, progress=False)
        total = time.perf_counter() - start
        starts = [next(t for t, m in marks if m.startswith(f"{p.model}: ")) for p in plans] + [start + total]
        walls = [t1 - t0 for t0, t1 in zip(starts, starts[1:])]
        source = "wall time of this run"
    full = StudySettings(models=models, corpora=list(builtin_corpora()), max_tokens=args.full_max_tokens)
    full_plans = run_study(full, Path(tempfile.mkdtemp(prefix="bench-study-dry-")), dry_run=True, log=lambda m: None)
    rows = []
    for p, f, wall in zip(plans, full_plans, walls):
        n_main = len(p.plan.conditions)
        work = n_main * p.n_forward_tokens
        rate = work / _compute_seconds(out, p.store, main_only=True)
        est = len(f.plan.conditions) * f.n_forward_tokens / rate
        rows.append((p.model, n_main, p.n_forward_tokens, wall, rate, len(f.plan.conditions),
                     f.n_forward_tokens, est))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines = [
        f"\n## {dt.date.today()} · commit {commit} · {cpu}, "
        f"{'threads as the study ran them' if args.existing else f'{torch.get_num_threads()} torch threads'} · "
        f"{'naive loop' if args.no_fast else 'fast path'}",
        f"Measured: `workbench study` with {', '.join(small.corpora)} x {args.max_tokens} tokens, "
        f"{args.task_items} items per task, grid {args.grid}: **{total / 60:.1f} min** in all "
        f"(main stores and compression curves; {source}).",
        "Full size: every built-in corpus at "
        f"{args.full_max_tokens:,} tokens, every task item, the default grid; estimated from the "
        "forward tokens per second each model reached on its main store (the conditions' recorded "
        "compute time), for the main store only; the compression curve adds up to about half again.",
        "",
        "| model | conditions | forward tokens / condition | measured (main + compression) | forward tok/s | "
        "full: conditions | full: tokens / condition | full: estimated wall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, n, tok, wall, rate, fn, ftok, est in rows:
        lines.append(f"| {model} | {n} | {tok:,} | {wall / 60:.1f} min | {rate:,.0f} | {fn} | {ftok:,} | "
                     f"{est / 3600:.1f} h |")
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if not RESULTS.exists():
        RESULTS.write_text("# `workbench study` wall time (benchmarks/bench_study.py)\n")
    with RESULTS.open("a") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
