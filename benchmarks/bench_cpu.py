"""CPU settings for scoring: intra-op threads, bfloat16 and torch.compile, measured on the minis.

    python -m benchmarks.bench_cpu [--models mini-qwen3.5,...] [--batch 4] [--context 512]
        [--tokens 4096] [--repeats 5] [--no-compile] [--out benchmarks/results/cpu.md]

For each model, tokens per second of the plain forward and of a traced forward zeroing one
mid-depth mixer (``Intervener.run``), each a median of interleaved repeats after a warm-up:
  * threads: 1 against every core this process may use (float32);
  * precision: float32 against bfloat16 (1 thread), and the largest relative difference of the
    per-window loss (rolling windows over ``--tokens`` of ``--corpus``) from float32's, clean and
    under the edit: the tolerance bfloat16 would be held to;
  * torch.compile (default mode, 1 thread): the first call's time (the compile), the steady
    speed against eager, and whether an nnsight trace with the edit still runs on the compiled
    model, fires, and gives eager's logits.
Appends the tables and the conclusions they support to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.sweep import MINIS, environment, medians, mid_component, vocab_size
from workbench.corpora import load_corpus
from workbench.evaluate.perplexity import rolling_windows, score_windows
from workbench.interventions import Intervener
from workbench.loading import load_model
from workbench.plans import BASELINE, Condition, Target

SPEED_MARGIN = 1.10  # a setting must be this much faster to be recommended over the default


def forwards(model, ids, keep):
    """The plain forward and the one-edit traced forward of ``model`` on ``ids``."""
    iv = Intervener(model)
    comp = mid_component(iv.cmap)
    cond = Condition(targets=(Target(layer=comp.layer, role=comp.role),), mode="zero")

    @torch.no_grad()
    def plain():
        return model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits

    return plain, (lambda: iv.run(ids, cond, keep=keep).logits), iv, cond


def with_threads(n: int, fn):
    def run():
        torch.set_num_threads(n)
        return fn()
    return run


def window_losses(iv: Intervener, cond, corpus, context: int, stride: int, batch: int) -> np.ndarray:
    """Mean NLL of each rolling window under ``cond``."""
    windows = rolling_windows(corpus.n_tokens, context, stride)

    def forward(ids, _windows, keep):
        return iv.run(ids, cond, keep=keep).logits

    nll, count = score_windows(forward, corpus.ids, windows, batch, iv.device)
    return nll / count


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


def bench_model(spec: str, args, cores: int, log) -> dict:
    rec: dict = {"model": spec}
    gen = torch.Generator().manual_seed(1)
    models = {d: load_model(spec, dtype=d) for d in ("float32", "bfloat16")}
    ids = torch.randint(0, vocab_size(models["float32"]), (args.batch, args.context), generator=gen)
    keep = args.stride + 1
    fns, ivs = {}, {}
    for dtype, lm in models.items():
        plain, edit, iv, cond = forwards(lm.model, ids, keep)
        fns[dtype] = (plain, edit)
        ivs[dtype] = (iv, cond)
    rec["component"] = mid_component(ivs["float32"][0].cmap).key

    log(f"{spec}: threads 1 vs {cores}, float32 vs bfloat16")
    timed = {}
    for dtype, (plain, edit) in fns.items():
        for n in sorted({1, cores}):
            if dtype == "bfloat16" and n != 1:
                continue
            timed[f"{dtype} plain {n}"] = with_threads(n, plain)
            timed[f"{dtype} edit {n}"] = with_threads(n, edit)
    seconds = medians(timed, args.repeats, "cpu")
    torch.set_num_threads(1)
    tokens = args.batch * args.context
    rec["tok_s"] = {k: tokens / v for k, v in seconds.items()}

    log(f"{spec}: bfloat16 loss against float32")
    corpus = load_corpus(args.corpus, models["float32"].tokenizer, args.tokens)
    rec["tokens"] = corpus.n_tokens
    loss = {}
    for dtype in models:
        iv, cond = ivs[dtype]
        loss[dtype] = {"clean": window_losses(iv, BASELINE, corpus, args.context, args.stride, args.batch),
                       "edit": window_losses(iv, cond, corpus, args.context, args.stride, args.batch)}
    rec["bf16_window_rel"] = {k: max_rel(loss["bfloat16"][k], loss["float32"][k]) for k in ("clean", "edit")}
    rec["bf16_loss_rel"] = {k: abs(loss["bfloat16"][k].mean() / loss["float32"][k].mean() - 1) for k in ("clean", "edit")}
    rec["bf16_edit_effect"] = {d: float(loss[d]["edit"].mean() - loss[d]["clean"].mean()) for d in models}
    rec["n_windows"] = len(loss["float32"]["clean"])
    del models["bfloat16"], fns["bfloat16"], ivs["bfloat16"]
    if not args.no_compile:
        rec["compile"] = compile_study(spec, ids, keep, fns["float32"], args, log)
    return rec


def compile_study(spec: str, ids, keep, eager, args, log) -> dict:
    """torch.compile (default mode) of a fresh copy: compile time, steady speed, nnsight on it."""
    torch.set_num_threads(1)
    out: dict = {}
    with torch.no_grad():
        want_plain = eager[0]()
        want_edit = eager[1]()
    log(f"{spec}: torch.compile (first call compiles)")
    model = load_model(spec).model
    compiled = torch.compile(model)

    @torch.no_grad()
    def plain_compiled():
        return compiled(input_ids=ids, use_cache=False, logits_to_keep=keep).logits

    start = time.perf_counter()
    got = plain_compiled()
    out["compile_s"] = time.perf_counter() - start
    out["plain_max_abs"] = float((got - want_plain).abs().max())
    seconds = medians({"eager": eager[0], "compiled": plain_compiled}, args.repeats, "cpu")
    out["tok_s"] = {k: ids.numel() / v for k, v in seconds.items()}

    log(f"{spec}: nnsight trace on the compiled model")
    # in place (Module.compile keeps the module tree nnsight walks), a fresh copy again
    target = load_model(spec).model
    target.compile()
    try:
        plain, edit, iv, cond = forwards(target, ids, keep)
        start = time.perf_counter()
        res = iv.run(ids, cond, keep=keep, strict=False)
        out["trace_first_s"] = time.perf_counter() - start
        out["trace_fired"] = res.fired == [c.key for c in iv.components(cond)]
        out["trace_max_abs"] = float((res.logits - want_edit).abs().max())
        out["trace_edit_changes"] = float((res.logits - want_plain).abs().max()) > 0
        seconds = medians({"eager edit": eager[1], "compiled edit": edit}, args.repeats, "cpu")
        out["trace_tok_s"] = {k: ids.numel() / v for k, v in seconds.items()}
    except Exception as exc:  # the question is whether it works: an error is the answer
        out["trace_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    torch._dynamo.reset()
    return out


def _r(x: float) -> str:
    return f"{x:.2f}x"


def ceil1(x: float) -> float:
    """``x`` rounded up to one significant digit (a tolerance that covers what was measured)."""
    exp = np.floor(np.log10(x)) if x > 0 else 0
    return float(np.ceil(x / 10 ** exp) * 10 ** exp)


def span(values, spec=".2f") -> str:
    lo, hi = format(min(values), spec), format(max(values), spec)
    return lo if lo == hi else f"{lo}-{hi}"


def render(env: dict, recs: list[dict], args, cores: int) -> str:
    yes = {True: "yes", False: "no"}
    lines = [
        f"## CPU threads, precision and compile, {env['date']}",
        "",
        f"Commit `{env['commit']}`; CPU {env['cpu']} ({cores} cores available; avx2 {yes[env['avx2']]}, avx512f "
        f"{yes[env['avx512f']]}, avx512_bf16 {yes[env['avx512_bf16']]}, amx_bf16 {yes[env['amx_bf16']]}); torch "
        f"{env['torch']}, transformers {env['transformers']}, nnsight {env['nnsight']}; load average (1 min) "
        f"{env['load_average']:.2f} at start, {os.getloadavg()[0]:.2f} at end (the cores are shared: other "
        "processes were running).",
        f"Batch {args.batch} x {args.context} tokens, logits kept for the last {args.stride + 1} positions (as the "
        f"runner does); median of {args.repeats} interleaved repeats after a warm-up. Edit: zero of the mid-depth "
        "mixer, in an nnsight trace.",
        "",
        "### Threads (float32): tokens per second",
        "",
        f"| model | edited | plain, 1 thread | plain, {cores} threads | speed-up | one edit, 1 thread "
        f"| one edit, {cores} threads | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in recs:
        t = r["tok_s"]
        n = cores
        lines.append(f"| {r['model']} | {r['component']} | {t['float32 plain 1']:,.0f} | {t[f'float32 plain {n}']:,.0f} "
                     f"| {_r(t[f'float32 plain {n}'] / t['float32 plain 1'])} | {t['float32 edit 1']:,.0f} "
                     f"| {t[f'float32 edit {n}']:,.0f} | {_r(t[f'float32 edit {n}'] / t['float32 edit 1'])} |")
    lines += [
        "",
        "### bfloat16 against float32 (1 thread)",
        "",
        f"Loss: rolling windows ({args.context}/{args.stride}) over the first tokens of `{args.corpus}`; max rel. "
        "diff of the per-window mean NLL from float32's, and of the whole loss; edit effect: loss under the "
        "edit minus the clean loss.",
        "",
        "| model | plain fp32 tok/s | plain bf16 tok/s | bf16 / fp32 | one edit fp32 | one edit bf16 | bf16 / fp32 "
        "| windows | max rel. diff per window, clean / edit | rel. diff of loss, clean / edit "
        "| edit effect fp32 / bf16 (nats) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in recs:
        t, w, a, e = r["tok_s"], r["bf16_window_rel"], r["bf16_loss_rel"], r["bf16_edit_effect"]
        lines.append(f"| {r['model']} | {t['float32 plain 1']:,.0f} | {t['bfloat16 plain 1']:,.0f} "
                     f"| {_r(t['bfloat16 plain 1'] / t['float32 plain 1'])} | {t['float32 edit 1']:,.0f} "
                     f"| {t['bfloat16 edit 1']:,.0f} | {_r(t['bfloat16 edit 1'] / t['float32 edit 1'])} "
                     f"| {r['n_windows']} | {w['clean']:.1e} / {w['edit']:.1e} | {a['clean']:.1e} / {a['edit']:.1e} "
                     f"| {e['float32']:.4f} / {e['bfloat16']:.4f} |")
    comp = [r for r in recs if "compile" in r]
    if comp:
        lines += [
            "",
            f"### torch.compile (default mode, float32, 1 thread, {args.cache})",
            "",
            "Plain: `torch.compile(model)`. Trace: `model.compile()` in place (the module tree nnsight walks is "
            "kept), then `Intervener.run` with the edit; checked against eager's edited logits.",
            "",
            "| model | compile s (first call) | plain eager tok/s | plain compiled tok/s | speed-up | max abs diff "
            "| trace runs | first trace s | edit fired | max abs diff to eager edit | one edit eager tok/s "
            "| one edit compiled tok/s | speed-up |",
            "|---|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|",
        ]
        for r in comp:
            c = r["compile"]
            t = c["tok_s"]
            row = (f"| {r['model']} | {c['compile_s']:.1f} | {t['eager']:,.0f} | {t['compiled']:,.0f} "
                   f"| {_r(t['compiled'] / t['eager'])} | {c['plain_max_abs']:.1e} ")
            if "trace_error" in c:
                row += f"| no: {c['trace_error']} | | | | | | |"
            else:
                tt = c["trace_tok_s"]
                row += (f"| yes | {c['trace_first_s']:.1f} | {yes[c['trace_fired']]} | {c['trace_max_abs']:.1e} | {tt['eager edit']:,.0f} "
                        f"| {tt['compiled edit']:,.0f} | {_r(tt['compiled edit'] / tt['eager edit'])} |")
            lines.append(row)
    lines += ["", "### Conclusions for the runner", ""] + conclusions(recs, cores, env["load_average"])
    return "\n".join(lines) + "\n"


def conclusions(recs: list[dict], cores: int, load: float) -> list[str]:
    """The settings the numbers support (a setting must beat the default by ``SPEED_MARGIN``)."""
    out = []
    threads = [r["tok_s"][f"float32 edit {cores}"] / r["tok_s"]["float32 edit 1"] for r in recs]
    if cores > 1:
        if min(threads) >= SPEED_MARGIN:
            verdict = "set intra-op threads to the cores available"
        elif max(threads) < 1:
            verdict = (f"other processes held the cores (load average {load:.1f}), and OpenMP threads wait for "
                       "each other at every operation, so one descheduled thread stalls them all; set threads to "
                       "the cores that are free (the cores less the load average, at least 1), not to all cores, "
                       "and let the user override it")
        else:
            verdict = "little gain here; set threads to the cores that are free"
        out.append(f"- Threads: {cores} threads ran the edited forward at {span(threads)}x the speed of 1: {verdict}.")
    bf = [r["tok_s"]["bfloat16 edit 1"] / r["tok_s"]["float32 edit 1"] for r in recs]
    tol = ceil1(max(max(r["bf16_window_rel"].values()) for r in recs))
    effect = [abs(r["bf16_edit_effect"]["bfloat16"] / r["bf16_edit_effect"]["float32"] - 1) for r in recs]
    if min(bf) >= SPEED_MARGIN:
        verdict = (f"offer it (opt-in, recorded in the store) where a per-window tolerance of {tol:.0e} relative "
                   "is acceptable; keep float32 the default, since the edit effects it measures moved by up to "
                   f"{max(effect):.0%}")
    else:
        verdict = "keep float32 on this CPU"
    out.append(f"- bfloat16: {span(bf)}x the speed of float32 on the edited forward; per-window "
               f"losses within {tol:.0e} relative of float32's, the edit's effect on the loss within "
               f"{max(effect):.1%} of float32's: {verdict}.")
    comp = [r["compile"] for r in recs if "compile" in r]
    if comp:
        speed = [c["tok_s"]["compiled"] / c["tok_s"]["eager"] for c in comp]
        secs = [c["compile_s"] for c in comp]
        traced = [c for c in comp if "trace_error" not in c]
        works = traced and all(c["trace_fired"] and c["trace_max_abs"] < 1e-3 for c in traced) and len(traced) == len(comp)
        tspeed = [c["trace_tok_s"]["compiled edit"] / c["trace_tok_s"]["eager edit"] for c in traced]
        line = (f"- torch.compile: {span(secs, '.0f')} s to compile; plain forward {span(speed)}x eager; nnsight trace with the edit on the compiled model: "
                + ("runs, fires and matches eager" if works else "does not work as-is" if not traced
                   else "runs but does not fire or match everywhere"))
        if tspeed:
            line += f", at {span(tspeed)}x eager's edited speed"
        pays = works and tspeed and min(tspeed) >= SPEED_MARGIN
        line += (": compile pays for long runs (amortise the compile over the conditions)." if pays else
                 ": compile does not pay for traced ablations here; keep eager.")
        out.append(line)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MINIS))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens of --corpus for the bfloat16 loss check")
    parser.add_argument("--corpus", default="encyclopedic")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--warm-cache", action="store_true",
                        help="let torch.compile reuse the on-disk inductor cache (default: a fresh one, so the "
                             "compile time is what a new machine pays)")
    parser.add_argument("--out", default=None, help="Markdown file to append to (default: stdout only)")
    parser.add_argument("--json", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(1)
    env = environment("cpu", "float32 and bfloat16")
    fresh = None if args.warm_cache else tempfile.mkdtemp(prefix="bench-inductor-")
    if fresh:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = fresh  # read by inductor when it compiles
    try:
        recs = [bench_model(m.strip(), args, cores, lambda msg: print(msg, flush=True))
                for m in args.models.split(",") if m.strip()]
    finally:
        if fresh:
            shutil.rmtree(fresh, ignore_errors=True)
    args.cache = "warm cache: the inductor cache reused" if args.warm_cache else "cold: a fresh inductor cache"
    text = render(env, recs, args, cores)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "models": recs}, indent=1, default=str))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        before = out.read_text() if out.exists() else ""
        out.write_text(before + ("\n" if before else "") + text)


if __name__ == "__main__":
    main()
