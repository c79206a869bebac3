"""How long a plan will take on this machine, said before it runs (``workbench study --dry-run``).

The estimate is the run's layer work divided by a measured speed: one plain forward of the
model, timed at the run's window shape, gives tokens per second; the plan gives the tokens each
condition pushes through the model and, with the fast path, the share of layers each group of
conditions really runs (one clean pass, then each condition from its first edited layer on).
Identical edits under another label are copied, not computed. It leaves out what the forward
does not time: the unembedding every condition pays in full, per-forward costs of the carry
protocol's one-row chunks, and other processes on the machine; on the minis it ran 15-20% below
the measured main stores (benchmarks/results/study.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from workbench.fast import SharedPrefix
from workbench.interventions import Intervener
from workbench.plans import Plan


@dataclass(frozen=True)
class Estimate:
    computed: int  # conditions computed (the rest are copies of an identical edit)
    work: float  # their layer forwards, in whole-model passes over one condition's tokens
    tokens_per_s: float  # the plain forward's speed at the run's window shape

    def seconds(self, tokens_per_condition: int) -> float:
        return self.work * tokens_per_condition / self.tokens_per_s


def plain_rate(model: torch.nn.Module, rows: int, length: int, device, repeats: int = 2) -> float:
    """Tokens per second of the plain forward on a (rows, length) batch (best of ``repeats``,
    after a short warm-up)."""
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(0)).to(device)
    on_gpu = torch.device(device).type == "cuda"
    best = float("inf")
    with torch.no_grad():
        model(input_ids=ids[:1, :8], use_cache=False)
        for _ in range(repeats):
            start = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            if on_gpu:  # kernels run asynchronously: wait for them before reading the clock
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return rows * length / best


def layer_work(iv: Intervener, plan: Plan, *, fast: bool, group_size: int, rows: int = 1,
               max_rows: int = 0) -> tuple[int, float]:
    """(conditions computed, layer forwards in whole-model passes) for running ``plan`` from
    scratch, grouped as the runner groups it; ``max_rows`` as the runner's (0: no stacking)."""
    seen, todo = set(), []
    for cond in plan.conditions:
        if cond.effect_id not in seen:
            seen.add(cond.effect_id)
            todo.append(cond)
    todo.sort(key=lambda c: c.kind != "baseline")  # the runner computes the baseline first
    if not fast:
        return len(todo), float(len(todo))
    n = len(iv.cmap.layers_of("layer")) or 1
    work = sum(SharedPrefix(iv, todo[k:k + group_size], max_rows=max_rows).layers_run(rows) / n
               for k in range(0, len(todo), group_size))
    return len(todo), work


def estimate(model: torch.nn.Module, plan: Plan, *, rows: int, length: int, fast: bool,
             group_size: int) -> Estimate:
    iv = Intervener(model)
    computed, work = layer_work(iv, plan, fast=fast, group_size=group_size)
    return Estimate(computed, work, plain_rate(model, rows, length, iv.device))


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3.4 h', '5.2 days'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
