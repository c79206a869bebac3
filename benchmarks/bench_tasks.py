"""Score the shipped minis (clean) and context-blind n-gram baselines on every task.

    PYTHONPATH=$PWD python benchmarks/bench_tasks.py [--train build/corpus/train.txt]

Prints acc / acc_norm with 95% bootstrap intervals over items, and the wall time per model.
The baselines are fitted on the training corpus tokens (needs build/corpus/train.txt).

    PYTHONPATH=$PWD python benchmarks/bench_tasks.py --compare [--items N] [--repeats R]

instead measures per-choice scoring against shared-context scoring (each item's context run
once, its choices scored from the cache) on every task: forward tokens (real and padded) and
wall time of each, on the same model in one run, the two alternated ``R`` times (the best time
of each kept), and the largest log-likelihood difference between them.
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


def counted(fn, tally: dict):
    """``fn`` (ids first) counting the token positions it forwards and its calls."""
    def wrapped(ids, *rest):
        tally["padded"] += ids.numel()
        tally["calls"] += 1
        return fn(ids, *rest)
    return wrapped


def compare(spec: str, tasks, items, batch_size: int, repeats: int) -> dict:
    """Per-choice against shared-context scoring of every task on ``spec`` (clean model)."""
    from workbench.evaluate import shared_context
    from workbench.evaluate.multiple_choice import build_requests, plain_cached
    from workbench.loading import load_model

    lm = load_model(spec)
    tok = lm.tokenizer
    prefix = (tok.eos_token_id,) if tok.eos_token_id is not None else ()
    requests = build_requests(tasks, items, lambda s: tok(s, add_special_tokens=False)["input_ids"], prefix)
    row = {"model": spec, "items": sum(map(len, items)), "choices": len(requests),
           "per_choice_tokens": sum(len(r.input_ids) for r in requests),
           "shared_tokens": shared_context.forward_tokens(requests)}
    best = {"per_choice": np.inf, "shared": np.inf}
    for _ in range(repeats):
        for how in best:
            tally = {"padded": 0, "calls": 0}
            if how == "per_choice":
                forward, cached = counted(plain_forward(lm.model), tally), None
            else:
                inner = plain_cached(lm.model)
                forward = None
                cached = shared_context.Cached(lm.model, counted(inner.forward, tally))
            t0 = time.perf_counter()
            ds = score_tasks(forward, tok, tasks, items, batch_size=batch_size, cached=cached)
            best[how] = min(best[how], time.perf_counter() - t0)
            row[f"{how}_padded"], row[f"{how}_forwards"], row[f"{how}_ds"] = tally["padded"], tally["calls"], ds
    a, b = row.pop("per_choice_ds"), row.pop("shared_ds")
    diff = np.abs(a.loglik.values - b.loglik.values)
    row["max_abs_diff"] = float(np.nanmax(diff))
    row["max_rel_diff"] = float(np.nanmax(diff / np.abs(a.loglik.values)))
    row["max_abs_loglik"] = float(np.nanmax(np.abs(a.loglik.values)))
    row["same_correct"] = bool(np.array_equal(a.correct.values, b.correct.values, equal_nan=True))
    row["per_choice_s"], row["shared_s"] = best["per_choice"], best["shared"]
    return row


def compare_table(rows: list[dict]) -> str:
    head = ("| model | items | choices | forward tokens per-choice | shared | ratio | padded per-choice | shared "
            "| ratio | wall s per-choice | shared | speed-up | max abs diff (largest abs loglik) | max rel diff "
            "| same correct |")
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['items']} | {r['choices']} | {r['per_choice_tokens']:,} | {r['shared_tokens']:,} "
            f"| {r['per_choice_tokens'] / r['shared_tokens']:.2f}x | {r['per_choice_padded']:,} "
            f"| {r['shared_padded']:,} | {r['per_choice_padded'] / r['shared_padded']:.2f}x "
            f"| {r['per_choice_s']:.1f} | {r['shared_s']:.1f} | {r['per_choice_s'] / r['shared_s']:.2f}x "
            f"| {r['max_abs_diff']:.1e} ({r['max_abs_loglik']:.0f}) | {r['max_rel_diff']:.1e} "
            f"| {'yes' if r['same_correct'] else 'no'} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=Path, default=Path("build/corpus/train.txt"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--compare", action="store_true", help="per-choice against shared-context scoring")
    ap.add_argument("--items", type=int, default=None, help="first N items of each task (default: all)")
    ap.add_argument("--repeats", type=int, default=1, help="--compare: alternate the two this many times")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from workbench.loading import load_model

    tasks = get_tasks()
    items = [t.items()[:args.items] for t in tasks]
    if args.compare:
        rows = []
        for spec in MODELS:
            rows.append(compare(spec, tasks, items, args.batch_size, args.repeats))
            print(compare_table(rows[-1:]).splitlines()[-1], flush=True)
        print(compare_table(rows))
        return
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
