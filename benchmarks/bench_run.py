"""`workbench run` before and after a change, measured in one run: tokens per second, peak memory.

    python benchmarks/bench_run.py --before c651312 [--model mini-qwen3.5] [--max-tokens 4096]

Checks the `--before` commit out into a temporary git worktree and runs the same plan (each mixer
group under `zero` and under `resample`, plus the baseline) with that code and with this tree's,
one after the other, each in a fresh process with one thread. Both score the same tokens:
`--max-tokens` of the `--corpus`, with a separate `--reference` corpus (so neither sets text
aside). Prints a table: wall seconds, scored tokens per second (conditions x tokens / wall),
peak resident memory of the process, and the ratios after / before.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs one CLI invocation and reports its own peak RSS (kB on Linux) and wall time as JSON.
PROBE = r"""
import json, resource, runpy, sys, time
sys.argv = ["workbench"] + sys.argv[1:]
start = time.perf_counter()
code = 0
try:
    runpy.run_module("workbench.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
print(json.dumps({"wall_s": time.perf_counter() - start, "code": code,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), file=sys.stderr)
"""

PLAN = """name: bench
generators:
  - {kind: group, role: attention, mode: zero}
  - {kind: group, role: %(mixer)s, mode: zero}
  - {kind: group, role: attention, mode: resample}
  - {kind: group, role: %(mixer)s, mode: resample}
"""


def measure(code_dir: Path, args: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_dir), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBE, *args, "--out", str(out)], cwd=code_dir, env=env,
                          capture_output=True, text=True)
    record = json.loads(proc.stderr.strip().splitlines()[-1])
    if record["code"] != 0:
        raise SystemExit(f"run failed in {code_dir}:\n{proc.stderr[-2000:]}")
    return record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="git commit to compare against")
    parser.add_argument("--model", default="mini-qwen3.5")
    parser.add_argument("--corpus", default="encyclopedic")
    parser.add_argument("--reference", default="books")
    parser.add_argument("--max-tokens", type=int, default=4096)
    args = parser.parse_args()
    mixer = {"mini-qwen3.5": "linear_attention", "mini-falcon-h1": "ssm"}.get(args.model, "mlp")
    n_conditions = 5
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plan = tmp / "plan.yaml"
        plan.write_text(PLAN % {"mixer": mixer})
        before = tmp / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), args.before],
                       check=True, capture_output=True)
        try:
            cli = ["run", "--model", args.model, "--plan", str(plan), "--corpus", args.corpus,
                   "--reference", args.reference, "--max-tokens", str(args.max_tokens), "--batch-size", "8"]
            results = {"before": measure(before, cli, tmp / "before.zarr"),
                       "after": measure(ROOT, cli + ["--prefix-token", "none"], tmp / "after.zarr")}
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)],
                           capture_output=True)
    tokens = n_conditions * (args.max_tokens - 1)
    print(f"{args.model}, {n_conditions} conditions x {args.max_tokens} tokens of {args.corpus} "
          f"(reference {args.reference}), 1 thread, before = {args.before}")
    print("| code | wall s | scored tok/s | peak RSS MB |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['wall_s']:.1f} | {tokens / r['wall_s']:.0f} | {r['peak_rss_mb']:.0f} |")
    b, a = results["before"], results["after"]
    print(f"| after / before | {a['wall_s'] / b['wall_s']:.2f} | {b['wall_s'] / a['wall_s']:.2f} | "
          f"{a['peak_rss_mb'] / b['peak_rss_mb']:.2f} |")


if __name__ == "__main__":
    main()
