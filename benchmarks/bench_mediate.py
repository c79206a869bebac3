"""Restoration sweep with prefix reuse against the naive loop, in one process on the same inputs.

    python -m benchmarks.bench_mediate --model mini-qwen3.5 --role linear_attention --tokens 512

Times ``workbench.mediate.condition_nll`` for the group ablation of ``--role`` (every downstream
component restored and corrupted) with ``reuse=True`` and ``reuse=False``, alternating, and checks
that both give the same NLLs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from workbench.corpora import load_corpus
from workbench.evaluate.perplexity import rolling_windows
from workbench.interventions import Intervener
from workbench.loading import load_model
from workbench.mediate import condition_nll
from workbench.plans import group


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mini-qwen3.5")
    ap.add_argument("--role", default="linear_attention")
    ap.add_argument("--corpus", default="books")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    loaded = load_model(args.model)
    iv = Intervener(loaded.model)
    (cond,) = group(iv.cmap, args.role)
    ids = load_corpus(args.corpus, loaded.tokenizer, args.tokens).ids
    windows = rolling_windows(len(ids), args.context, args.context // 2)
    times: dict[bool, list[float]] = {True: [], False: []}
    out = {}
    for _ in range(args.repeats):
        for reuse in (False, True):
            start = time.perf_counter()
            comps, out[reuse], _ = condition_nll(iv, cond, ids, windows, reuse=reuse)
            times[reuse].append(time.perf_counter() - start)
    same = all(np.allclose(out[True][k], out[False][k], atol=1e-3) for k in out[False])
    naive, fast = np.median(times[False]), np.median(times[True])
    print(f"{args.model} {cond.label}: {len(comps)} components x 2 patched runs, {len(ids)} tokens; "
          f"naive {naive:.1f} s, prefix reuse {fast:.1f} s, x{naive / fast:.2f}; same NLLs: {same}")


if __name__ == "__main__":
    main()
