"""Score the shipped minis (clean) and context-blind n-gram baselines on every task.

    PYTHONPATH=$PWD python benchmarks/bench_tasks.py [--train build/corpus/train.txt]

Prints acc / acc_norm with 95% bootstrap intervals over items, and the wall time per model.
The baselines are fitted on the training corpus tokens (needs build/corpus/train.txt).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from workbench.evaluate.multiple_choice import bootstrap_accuracy, plain_forward, score_tasks
from workbench.tasks import get_tasks

MODELS = ("mini-qwen3.5", "mini-falcon-h1", "mini-qwen2.5")


def table(name, ds, seconds=None):
    ci = bootstrap_accuracy(ds.correct)
    for t in ds.task.values:
        row = [f"{name:16s} {t:20s} n={int(ds.n_items.sel(task=t)):3d} chance={float(ds.chance.sel(task=t)):.3f}"]
        for m in ("acc", "acc_norm"):
            a = float(ds.accuracy.sel(task=t, metric=m))
            lo, hi = float(ci.low.sel(task=t, metric=m)), float(ci.high.sel(task=t, metric=m))
            row.append(f"{m}={a:.3f} [{lo:.3f}, {hi:.3f}]")
        print("  ".join(row), flush=True)
    if seconds is not None:
        print(f"{name}: {seconds:.1f} s for all tasks", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=Path, default=Path("build/corpus/train.txt"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--skip-baselines", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from workbench.loading import load_model

    tasks = get_tasks()
    items = [t.items() for t in tasks]
    tok = None
    for spec in MODELS:
        lm = load_model(spec)
        tok = lm.tokenizer
        t0 = time.time()
        ds = score_tasks(plain_forward(lm.model), tok, tasks, items, batch_size=args.batch_size)
        table(spec, ds, time.time() - t0)
    if args.skip_baselines or not args.train.exists():
        return
    from workbench.evaluate.ngram import bigram_forward, unigram_forward, unigram_log_probs
    from workbench.paths import data_dir
    from workbench.training.bigram import AddKBigram
    from workbench.training.data import load_tokens

    ids = np.asarray(load_tokens(args.train, data_dir() / "tokenizer", Path("build/tokens")), dtype=np.int64)
    V = len(tok)
    table("unigram", score_tasks(unigram_forward(unigram_log_probs(ids, V)), tok, tasks, items, batch_size=64))
    val = 65_536
    bigram = AddKBigram(V).fit([ids[:-val]])
    bigram.select_k(ids[-val:])
    table("bigram", score_tasks(bigram_forward(bigram), tok, tasks, items, batch_size=64))


if __name__ == "__main__":
    main()
