"""Cost of an ablated forward, measured in one run against the plain forward and plain hooks.

    python benchmarks/bench_interventions.py [--model mini-qwen3.5] [--batch 8] [--context 512]

Prints seconds per forward (median of --repeats) and ratios:
  * plain forward (no instrumentation)            -> 1.00 by definition
  * nnsight trace, no edits                       -> tracing overhead
  * nnsight trace, zero every attention output    -> what `workbench run` pays per batch
  * torch forward hooks doing the same edit       -> the naive hand-written alternative
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from workbench.interventions import Intervener
from workbench.loading import load_model
from workbench.plans import BASELINE, Condition, Target


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="mini-qwen3.5")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lm = load_model(args.model)
    model = lm.model
    iv = Intervener(model)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.context),
                        generator=torch.Generator().manual_seed(0))
    role = "attention"
    comps = iv.cmap.by_role(role)
    cond = Condition(targets=tuple(Target(layer=c.layer, role=role) for c in comps), mode="zero")

    def plain():
        with torch.no_grad():
            return model(input_ids=ids).logits

    def hooked():
        def zero(_m, _a, out):
            return (torch.zeros_like(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else torch.zeros_like(out)
        handles = [model.get_submodule(c.path).register_forward_hook(zero) for c in comps]
        try:
            return plain()
        finally:
            for h in handles:
                h.remove()

    torch.testing.assert_close(iv.run(ids, cond).logits, hooked())  # same edit, checked
    results = {
        "plain forward": timed(plain, args.repeats),
        "nnsight, no edits": timed(lambda: iv.run(ids, BASELINE), args.repeats),
        f"nnsight, zero {len(comps)} x {role}": timed(lambda: iv.run(ids, cond), args.repeats),
        f"torch hooks, zero {len(comps)} x {role}": timed(hooked, args.repeats),
    }
    base = results["plain forward"]
    tokens = args.batch * args.context
    print(f"{args.model} ({lm.model_type}), batch {args.batch} x {args.context} tokens, "
          f"{args.threads} threads, median of {args.repeats}")
    for name, sec in results.items():
        print(f"  {name:<34} {sec * 1e3:9.1f} ms  {tokens / sec:9,.0f} tok/s  x{sec / base:5.2f}")


if __name__ == "__main__":
    main()
