"""Peak memory of caching activations into a run store, against the number of tokens cached.

Not a test: run it by hand. For each sample size it starts a fresh process that caches every
layer and component output of a mini model's clean run and one ablation (no diagnostics), and
reports that process's peak RSS. Caching writes one batch of windows at a time, so the peak is
the model, one batch's capture (batch x context x (layers + components) x d_model floats, plus
logits) and one chunk buffer, whatever the sample size; only the per-token metadata (a few
int64 and a string per token) grows with it.

    PYTHONPATH=$PWD python benchmarks/bench_activations.py [--model mini-qwen3.5] [--sizes 10000,30000,100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(store: str, tokens: int) -> None:
    import torch

    torch.set_num_threads(1)
    from workbench.diagnose import diagnose

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    diagnose(store, tokens=tokens, diagnostics=(), progress=False, overwrite=True)
    print(json.dumps({"tokens": tokens, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_before_mib": base / 1024, "seconds": time.perf_counter() - t}))


def _make_store(model: str, out: Path, n_tokens: int) -> None:
    """A store over all built-in corpora joined (enough windows for 100k positions)."""
    import torch

    torch.set_num_threads(1)
    from workbench.architectures import component_map
    from workbench.corpora import builtin_corpora, load_corpus
    from workbench.loading import load_model
    from workbench.paths import data_dir
    from workbench.plans import BASELINE, Plan, group
    from workbench.runner import run_plan

    text = "\n\n".join((data_dir() / "corpora" / f"{n}.txt").read_text() for n in builtin_corpora())
    src = out.parent / "joined.txt"
    src.write_text(text)
    loaded = load_model(model)
    cmap = component_map(loaded.model)
    role = "attention" if cmap.by_role("attention") else cmap.roles()[0]
    plan = Plan(name="bench", conditions=(BASELINE, *group(cmap, role)))
    corpus = load_corpus(str(src), loaded.tokenizer, max_tokens=n_tokens)
    run_plan(loaded, plan, [corpus], out, context=512, stride=512, batch_size=8, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mini-qwen3.5")
    ap.add_argument("--sizes", default="10000,30000,100000")
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "bench.zarr"
        t = time.perf_counter()
        _make_store(args.model, store, max(sizes) + 4096)
        print(f"store made in {time.perf_counter() - t:.0f} s", flush=True)
        for n in sizes:
            res = subprocess.run([sys.executable, __file__, "--child", str(store), str(n)], capture_output=True,
                                 text=True, check=True)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            size = sum(f.stat().st_size for f in (store / "activations").rglob("*") if f.is_file())
            row["cache_mib_on_disk"] = size / 2**20
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
