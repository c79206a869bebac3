"""Diagnostics time of ``workbench diagnose``: the old default, the new default and ``--full``.

Not a test: run it by hand. Caches one store's activations once, then computes the
diagnostics on copies of that cache under each setting, in one process one after another (so
the ratios share the machine's load), and checks that the diagnostics both defaults keep are
equal. Settings:

- ``before``: the old default (PCA and UMAP maps, ablated runs probed at the middle layer) with
  the probes fitted on scikit-learn's default threads (the thread limit patched out);
- ``after``: the new default (PCA maps only, probes on one thread);
- ``full``: ``--full`` (UMAP too, ablated runs probed at every layer), probes on one thread.

    PYTHONPATH=$PWD python benchmarks/bench_diagnose.py [--model mini-qwen3.5] [--tokens 2048]
        [--settings before,after,full] [--store STORE]

Prints one JSON line per setting (wall and CPU seconds of the diagnostics, the per-part seconds
``diagnose`` records) and, last, the largest difference between kept diagnostics.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

SETTINGS = {"before": dict(map_methods=("pca", "umap"), probe_layers="middle"),
            "after": dict(),
            "full": dict(full=True)}


def make_store(model: str, out: Path, max_tokens: int) -> None:
    from workbench.architectures import component_map
    from workbench.corpora import load_corpus
    from workbench.loading import load_model
    from workbench.plans import Plan, auto_spec, resolve

    from workbench.runner import run_plan

    loaded = load_model(model)
    plan: Plan = resolve(auto_spec(component_map(loaded.model), "groups"), component_map(loaded.model))
    corpus = load_corpus("encyclopedic", loaded.tokenizer, max_tokens=max_tokens)
    run_plan(loaded, plan, [corpus], out, context=512, stride=256, batch_size=8, progress=False)


def timed(store: Path, tokens: int, name: str) -> dict:
    import probes.linear_probe as lp
    from workbench.diagnose import diagnose

    patched = contextlib.nullcontext() if name != "before" else _default_threads(lp)
    with patched:
        wall, cpu = time.perf_counter(), time.process_time()
        ds = diagnose(store, tokens=tokens, progress=False, log=lambda m: None, **SETTINGS[name])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"setting": name, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "parts_s": json.loads(ds.attrs["seconds"]), "load_avg": os.getloadavg()[0]}


@contextlib.contextmanager
def _default_threads(lp):
    keep = lp.threadpool_limits
    lp.threadpool_limits = lambda *a, **k: contextlib.nullcontext()
    try:
        yield
    finally:
        lp.threadpool_limits = keep


def max_difference(a: Path, b: Path) -> dict:
    """Largest absolute difference per variable both diagnostics groups hold (maps: PCA only)."""
    from workbench.diagnose import open_diagnostics

    x, y = open_diagnostics(a), open_diagnostics(b)
    out = {}
    for name in sorted(set(x.data_vars) & set(y.data_vars)):
        u, v = x[name], y[name]
        if name == "map_xy":
            u, v = u.sel(method="pca"), v.sel(method="pca")
        if u.dtype.kind in "UO":
            out[name] = int((u.values != v.values).sum())
            continue
        if u.shape != v.shape:  # probes at every layer (full) against the middle layer only
            u, v = u.where(np.isfinite(v)), v.where(np.isfinite(u))
        d = np.abs(u.values.astype(float) - v.values.astype(float))
        both_nan = np.isnan(u.values.astype(float)) & np.isnan(v.values.astype(float))
        out[name] = float(np.nanmax(np.where(both_nan, 0, d))) if d.size else 0.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mini-qwen3.5")
    ap.add_argument("--tokens", type=int, default=2048, help="diagnose --tokens")
    ap.add_argument("--max-tokens", type=int, default=8192, help="tokens of the store's corpus")
    ap.add_argument("--settings", default="before,after,full")
    ap.add_argument("--store", type=Path, help="an existing run store (default: make one, groups preset)")
    args = ap.parse_args()
    names = [s for s in args.settings.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache.zarr"
        if args.store:
            shutil.copytree(args.store, cache)
        else:
            make_store(args.model, cache, args.max_tokens)
        from workbench.diagnose import diagnose

        t = time.perf_counter()
        diagnose(cache, tokens=args.tokens, diagnostics=(), progress=False, log=lambda m: None)
        print(json.dumps({"capture_s": round(time.perf_counter() - t, 1)}), flush=True)
        done = {}
        for name in names:
            done[name] = tmp / f"{name}.zarr"
            shutil.copytree(cache, done[name])
            print(json.dumps(timed(done[name], args.tokens, name)), flush=True)
        if "before" in done and "after" in done:
            print(json.dumps({"max_abs_difference_before_after": max_difference(done["before"], done["after"])}))


if __name__ == "__main__":
    main()
