"""Fast sweeps against the plain forward and the naive per-condition loop, measured in one run.

    python -m benchmarks.sweep [--models mini-qwen3.5,shape:falcon-h1-0.5b] [--tokens N]
        [--device cpu|cuda] [--dtype float32|bfloat16] [--out benchmarks/results/sweep-cpu.md]

For each model, on the same tokens:
  (a) overhead: a traced forward with one edit (``Intervener.run``, zero of one mid-depth
      mixer) against the plain Hugging Face forward on the same batch (throughput ratio,
      medians of interleaved repeats after a warm-up);
  (b) the ``sweep`` preset (the baseline and every mixer alone, zero) with
      ``run_plan(fast=True)`` against ``run_plan(fast=False)`` (the naive loop), and the same
      under ``Protocol(scoring="carry")`` when the runner has it: wall time, speed-up, and the
      largest relative difference of per-window NLL from the naive loop;
  (c) tokens per second of each;
and the prefix-reuse bound of the plan (``prefix_bound``). Whatever the runner does not offer
yet (``fast=``, ``scoring=``) is detected and reported as n/a; without ``fast=`` the runner's
one path is the naive loop and is measured as such.

Models: built-in names (the trained minis) or ``shape:NAME`` for a random-weight model with a
published shape, built from ``NAME.json`` in ``--shapes`` (default ../shared/model-shapes) and fed
random token ids (its tokenizer is only a stand-in for provenance).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import inspect
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from workbench.architectures import MIXER_ROLES, ComponentMap
from workbench.corpora import Corpus, load_corpus
from workbench.evaluate.perplexity import rolling_windows
from workbench.interventions import Intervener
from workbench.loading import DTYPES, LoadedModel, load_model
from workbench.plans import BASELINE, Condition, Plan, Target, auto_spec, resolve
from workbench.runner import Protocol, kernel_paths, run_plan

ROOT = Path(__file__).resolve().parents[1]
MINIS = ("mini-qwen3.5", "mini-falcon-h1", "mini-qwen2.5")
SHAPES = ("shape:qwen3.5-0.8b", "shape:falcon-h1-0.5b", "shape:qwen2.5-0.5b")


# -- environment --------------------------------------------------------------------------

def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("BENCH_COMMIT", "unknown")  # a copy of the tree without .git


def cpu_info() -> dict:
    name, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": name, "cores": cores, "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def environment(device: str, dtype: str) -> dict:
    env = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
           **cpu_info(), "torch_threads": torch.get_num_threads(), "device": device, "dtype": dtype,
           "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else "none",
           "torch": torch.__version__, "transformers": _version("transformers"), "nnsight": _version("nnsight"),
           "kernels": kernel_paths(),
           "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
           "run_plan_fast": has_fast(), "protocol_carry": has_carry()}
    return env


class Fallbacks(logging.Handler):
    """Kernels that Hugging Face replaced by their reference PyTorch code in this process (it logs
    each once): what ran, as opposed to what is installed."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.names: set[str] = set()
        logging.getLogger("transformers").addHandler(self)

    def emit(self, record):
        found = re.search(r"`(\w+)` is falling back to its reference", record.getMessage())
        if found:
            self.names.add(found.group(1))


FALLBACKS = Fallbacks()


def has_fast() -> bool:
    return "fast" in inspect.signature(run_plan).parameters


def has_carry() -> bool:
    return "scoring" in {f.name for f in dataclasses.fields(Protocol)}


# -- models and tokens --------------------------------------------------------------------

def shapes_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("WORKBENCH_MODEL_SHAPES") or ROOT.parent / "shared" / "model-shapes")


def shape_model(path: Path, spec: str, device: str, dtype: str, seed: int = 0) -> LoadedModel:
    """A random-weight model with the published shape in ``path`` (a config.json's fields)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from workbench.tokenization import byte_tokenizer

    fields = json.loads(path.read_text())
    fields.pop("_provenance", None)
    # Qwen3.5 is a vision-language config: its text model is what the workbench runs
    config = AutoConfig.for_model(fields.pop("model_type"), **fields).get_text_config()
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    model.eval().requires_grad_(False)
    return LoadedModel(model, byte_tokenizer(), spec, "random", info={"seed": seed, "shape": path.name})


def check_shapes(models: list[str], shapes: Path) -> None:
    """Refuse a ``shape:NAME`` without its file before anything runs."""
    missing = [m for m in models if m.startswith("shape:") and not (shapes / f"{m[len('shape:'):]}.json").is_file()]
    if missing:
        found = sorted(f"shape:{p.stem}" for p in shapes.glob("*.json"))
        raise SystemExit(f"no published shape for {', '.join(missing)} in {shapes}; found: "
                         f"{', '.join(found) or 'none'} (set --shapes or WORKBENCH_MODEL_SHAPES)")


def load(spec: str, device: str, dtype: str, shapes: Path) -> LoadedModel:
    if spec.startswith("shape:"):
        return shape_model(shapes / f"{spec[len('shape:'):]}.json", spec, device, dtype)
    return load_model(spec, device=device, dtype=dtype)


def vocab_size(loaded: LoadedModel) -> int:
    return loaded.model.config.get_text_config().vocab_size


def random_corpus(n_tokens: int, vocab: int, seed: int = 0) -> Corpus:
    ids = torch.randint(0, vocab, (n_tokens,), generator=torch.Generator().manual_seed(seed))
    return Corpus(name="random", source=f"random token ids (seed {seed})", ids=ids,
                  byte_ends=np.arange(1, n_tokens + 1), sha256=hashlib.sha256(ids.numpy().tobytes()).hexdigest())


def corpora_for(loaded: LoadedModel, n_tokens: int, corpus: str) -> list[Corpus]:
    if loaded.source == "random":
        return [random_corpus(n_tokens, vocab_size(loaded))]
    return [load_corpus(corpus, loaded.tokenizer, n_tokens)]


def sweep_plan(cmap: ComponentMap, max_conditions: int | None = None) -> Plan:
    """The ``sweep`` preset; ``max_conditions`` keeps that many, spread evenly over depth."""
    plan = resolve(auto_spec(cmap, "sweep"), cmap)
    edits = [c for c in plan.conditions if c.kind != "baseline"]
    if max_conditions and len(edits) > max_conditions:
        pick = np.unique(np.linspace(0, len(edits) - 1, max_conditions).round().astype(int))
        edits = [edits[i] for i in pick]
        plan = Plan(name=f"{plan.name}-subset", conditions=(BASELINE, *edits))
    return plan


# -- the bound ----------------------------------------------------------------------------

def prefix_bound(plan: Plan, cmap: ComponentMap, model: torch.nn.Module, keep_fraction: float) -> dict:
    """What prefix reuse can save on ``plan``: a condition first edited at layer f runs layers
    f..L-1 only; the baseline runs all L and supplies the clean prefixes.

    ``layers``: layer forwards of the fast path over the naive loop's (baseline included);
    ``conditions``: the mean over ablated conditions of (L - f) / L, which approaches
    (L + 1) / (2L) for a one-component-per-layer sweep; ``compute``: the same weighted by each
    layer's parameters, with the unembedding (run on ``keep_fraction`` of the positions) paid by
    every condition. Speed-ups are the inverses.
    """
    L = cmap.n_layers
    firsts = [min(t.layer for t in c.targets) for c in plan.conditions if c.kind != "baseline"]
    n_base = sum(c.kind == "baseline" for c in plan.conditions)
    layer_params = np.zeros(L)
    for c in cmap.by_role("layer"):
        layer_params[c.layer] = sum(p.numel() for p in model.get_submodule(c.path).parameters())
    head = model.get_output_embeddings().weight.numel() * keep_fraction
    after = np.cumsum(layer_params[::-1])[::-1]  # parameters of layers f..L-1
    naive_layers = (len(firsts) + n_base) * L
    fast_layers = n_base * L + sum(L - f for f in firsts)
    naive_compute = (len(firsts) + n_base) * (after[0] + head)
    fast_compute = n_base * (after[0] + head) + sum(after[f] + head for f in firsts)
    return {"n_layers": L, "n_conditions": len(plan.conditions),
            "conditions": float(np.mean([(L - f) / L for f in firsts])),
            "layers": fast_layers / naive_layers, "compute": fast_compute / naive_compute,
            "head_share": head / (after[0] + head)}


# -- timing -------------------------------------------------------------------------------

def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def medians(fns: dict, repeats: int, device: str) -> dict[str, float]:
    """Median seconds per call of each function: one warm-up each, then ``repeats`` rounds that
    call them in turn (interleaved, so a change of machine load hits all alike)."""
    for fn in fns.values():
        fn()
        synchronize(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def mid_component(cmap: ComponentMap):
    """The mixer nearest the middle of the stack."""
    mixers = [c for c in cmap.components if c.role in MIXER_ROLES]
    return min(mixers, key=lambda c: (abs(c.layer - cmap.n_layers // 2), c.layer, MIXER_ROLES.index(c.role)))


@torch.no_grad()
def overhead(loaded: LoadedModel, batch: int, context: int, keep: int, repeats: int, device: str) -> dict:
    """(a): the plain forward, a trace with no edit, and a trace zeroing one mid-depth mixer."""
    model = loaded.model
    iv = Intervener(model)
    comp = mid_component(iv.cmap)
    cond = Condition(targets=(Target(layer=comp.layer, role=comp.role),), mode="zero")
    ids = torch.randint(0, vocab_size(loaded), (batch, context), generator=torch.Generator().manual_seed(1))
    ids = ids.to(iv.device)

    def plain():
        return model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits

    fns = {"plain": plain, "trace": lambda: iv.run(ids, BASELINE, keep=keep).logits,
           "edit": lambda: iv.run(ids, cond, keep=keep).logits}
    reference = plain().float()
    same = float((fns["trace"]().float() - reference).abs().max())
    changed = float((fns["edit"]().float() - reference).abs().max())
    seconds = medians(fns, repeats, device)
    tokens = batch * context
    return {"component": comp.key, "batch": batch, "context": context, "keep": keep,
            "seconds": seconds, "tok_s": {k: tokens / v for k, v in seconds.items()},
            "trace_vs_plain_max_abs": same, "edit_changes_logits": changed > 0}


def run_sweep(loaded: LoadedModel, plan: Plan, corpora: list[Corpus], protocol: Protocol, device: str,
              dtype: str, **kwargs) -> dict:
    """One ``run_plan`` into a fresh store: wall time, per-window NLL, baseline loss, QC."""
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        start = time.perf_counter()
        ds = run_plan(loaded, plan, corpora, Path(tmp) / "run.zarr", protocol=protocol, device=device,
                      dtype=dtype, progress=False, **kwargs)
        wall = time.perf_counter() - start
        ids = list(ds.condition.values)
        out = {"wall_s": wall, "complete": bool(ds["complete"].values.all())}
        if kwargs.get("only") is None:
            out.update(nll=ds["window_nll"].values.astype(float),
                       scored=int(ds["window_tokens"].values.sum()),
                       fired=bool(ds["qc_fired"].values.all()),
                       baseline_loss=float(ds["loss"].values[ids.index("baseline")].mean()))
    return out


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| / |b| over the entries finite in both (padding windows are NaN in both)."""
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return float("nan")
    return float((np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]), 1e-12)).max())


def carry_protocol(protocol: Protocol, streams: int) -> Protocol:
    """The carry protocol beside ``protocol`` (chunks of its stride), in ``streams`` streams."""
    fields = {f.name for f in dataclasses.fields(Protocol)}
    return dataclasses.replace(protocol, scoring="carry", **({"streams": streams} if "streams" in fields else {}))


def sweeps(loaded: LoadedModel, plan: Plan, corpora: list[Corpus], protocol: Protocol, device: str, dtype: str,
           variants: list[str], log, streams: int = 1) -> dict:
    """(b) and (c): the runner's paths on one plan; a path the runner lacks is ``None``."""
    fast_ok, carry_ok = has_fast(), has_carry()
    carry = carry_protocol(protocol, streams) if carry_ok else None
    todo = {"setup": (protocol, {"only": ()}),
            "naive rolling": (protocol, {"fast": False} if fast_ok else {}),
            "fast rolling": (protocol, {"fast": True}) if fast_ok else None,
            "naive carry": (carry, {"fast": False} if fast_ok else {}) if carry_ok else None,
            "fast carry": (carry, {"fast": True}) if carry_ok and fast_ok else None}
    results = {}
    for name, job in todo.items():
        if name != "setup" and name not in variants:
            continue
        if job is None:
            results[name] = None
            continue
        log(f"  {name} ...")
        try:
            results[name] = run_sweep(loaded, plan, corpora, job[0], device, dtype, **job[1])
        except Exception as exc:  # a path that refuses this model is reported, the rest still run
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        if results[name] and "wall_s" in results[name]:
            log(f"    {results[name]['wall_s']:.1f} s")
    for fast, naive in (("fast rolling", "naive rolling"), ("fast carry", "naive carry")):
        f, n = results.get(fast), results.get(naive)
        if f and n and "nll" in f and "nll" in n:
            f["rel_diff"] = relative_difference(f["nll"], n["nll"])
    return results


# -- one model ----------------------------------------------------------------------------

def bench_model(spec: str, args, shapes: Path, log) -> dict:
    start = time.perf_counter()
    loaded = load(spec, args.device, args.dtype, shapes)
    log(f"{spec}: loaded in {time.perf_counter() - start:.1f} s")
    model = loaded.model
    cmap = Intervener(model).cmap
    n_tokens = args.tokens or (args.context if spec.startswith("shape:") else 4 * args.context)
    corpora = corpora_for(loaded, n_tokens, args.corpus)
    c = corpora[0]
    protocol = Protocol(context=args.context, stride=args.stride, batch_size=args.batch_size, reference=c.source,
                        reference_tokens=c.n_tokens, reference_sha256=c.sha256)
    windows = rolling_windows(c.n_tokens, args.context, args.stride)
    keep = min(args.stride + 1, args.context)
    scored = sum(w.n_scored for w in windows)
    record = {"model": spec, "model_type": loaded.model_type, "params": sum(p.numel() for p in model.parameters()),
              "n_tokens": c.n_tokens, "n_windows": len(windows),
              "rolling_factor": sum(w.end - w.begin for w in windows) / scored}
    if has_carry() and hasattr(Protocol, "forward_tokens"):
        record["carry_factor"] = carry_protocol(protocol, args.streams).forward_tokens(c.n_tokens) / scored
    plan = sweep_plan(cmap, args.max_conditions)
    record["bound"] = prefix_bound(plan, cmap, model, keep / args.context)
    log(f"  overhead (batch {args.overhead_batch or args.batch_size} x {args.context}) ...")
    record["overhead"] = overhead(loaded, args.overhead_batch or args.batch_size, args.context, keep,
                                  args.repeats, args.device)
    record["sweeps"] = sweeps(loaded, plan, corpora, protocol, args.device, args.dtype, args.variants, log,
                              args.streams)
    del loaded, model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return record


# -- the report ---------------------------------------------------------------------------

def _f(x, spec=".2f", na="n/a") -> str:
    return na if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def _tok(x) -> str:
    return _f(x, ",.0f")


def render(env: dict, records: list[dict], args) -> str:
    yes = {True: "yes", False: "no"}
    kern = ", ".join(f"{k} {v}" for k, v in env["kernels"].items())
    lines = [
        f"## Sweep benchmark, {env['date']}",
        "",
        f"Commit `{env['commit']}`; CPU {env['cpu']} ({env['cores']} cores available; avx512_bf16 "
        f"{yes[env['avx512_bf16']]}, amx_bf16 {yes[env['amx_bf16']]}); torch threads {env['torch_threads']}; "
        f"GPU {env['gpu']}; device {env['device']}, {env['dtype']}; torch {env['torch']}, transformers "
        f"{env['transformers']}, nnsight {env['nnsight']}; kernel packages: {kern}; load average "
        f"(1 min) {env['load_average']:.2f} at start, {env.get('load_average_end', float('nan')):.2f} at end; "
        f"reference PyTorch code ran for: {', '.join(env.get('fallbacks', [])) or 'nothing (fused kernels throughout)'}.",
        f"Runner: `run_plan(fast=)` {'present' if env['run_plan_fast'] else 'absent (its one path is the naive loop)'}; "
        f"`Protocol(scoring=\"carry\")` {'present' if env['protocol_carry'] else 'absent'}.",
        f"Protocol: rolling windows of {args.context} tokens, stride {args.stride}, batch {args.batch_size} "
        f"(carry: chunks of {args.stride}, {args.streams} stream{'s' if args.streams > 1 else ''}); "
        "plan: the `sweep` preset (baseline + every mixer alone, zero)"
        + (f", at most {args.max_conditions} conditions spread over depth" if args.max_conditions else "")
        + "; minis score `" + args.corpus + "`, published shapes (random weights) score random token ids.",
        "",
        "### (a) Overhead: one traced edit against the plain forward (same batch, median of "
        f"{args.repeats} interleaved repeats)",
        "",
        "| model | params | edited | batch x tokens | plain tok/s | trace, no edit tok/s | trace, one edit tok/s "
        "| one edit / plain |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error']} |||||||")
            continue
        o = r["overhead"]
        t = o["tok_s"]
        lines.append(f"| {r['model']} | {r['params'] / 1e6:,.1f} M | {o['component']} | {o['batch']} x {o['context']} "
                     f"| {_tok(t['plain'])} | {_tok(t['trace'])} | {_tok(t['edit'])} | {t['edit'] / t['plain']:.3f} |")
    lines += [
        "",
        "### Prefix-reuse bound of the plan",
        "",
        "Fast / naive layer forwards: a condition first edited at layer f runs layers f..L-1, the baseline all L. "
        "Compute-weighted: layers weighted by their parameters, the unembedding (on the kept logit positions) paid "
        "by every condition. Rolling and carry factors: tokens through the model per scored token under each "
        "protocol; carry + reuse: the layer bound times their ratio, the most the fast carry path can gain over "
        "the naive rolling loop.",
        "",
        "| model | conditions | L | mean (L-f)/L | layer forwards fast/naive | speed-up bound (layers) "
        "| unembedding share | speed-up bound (compute) | rolling factor | carry factor | bound, carry + reuse |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        if "error" in r:
            continue
        b = r["bound"]
        lines.append(f"| {r['model']} | {b['n_conditions']} | {b['n_layers']} | {b['conditions']:.3f} | {b['layers']:.3f} "
                     f"| {1 / b['layers']:.2f}x | {b['head_share']:.2f} | {1 / b['compute']:.2f}x "
                     f"| {r['rolling_factor']:.2f} | {_f(r.get('carry_factor'))} "
                     f"| {_f(r['rolling_factor'] / r['carry_factor'] / b['layers'] if 'carry_factor' in r else None)}x |")
    lines += [
        "",
        "### (b, c) The sweep: fast paths against the naive loop",
        "",
        "Wall time of `run_plan` into a fresh store (setup: the same call computing nothing: model check, hashes, "
        "store layout). Scored tok/s = conditions x scored tokens / wall. Speed-ups against the naive rolling "
        "loop, whole and with the setup taken out of both, and against the naive loop of the same protocol; "
        "of bound: the fast rolling speed-up over the layer-forward bound's. Max rel. diff: per-window NLL "
        "against the naive loop of the same protocol.",
        "",
        "| model | tokens | path | wall s | scored tok/s | speed-up | speed-up w/o setup | vs same protocol "
        "| of bound | max rel. diff | baseline ppl | edits fired |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in records:
        if "error" in r:
            continue
        s = r["sweeps"]
        setup = (s.get("setup") or {}).get("wall_s")
        naive = s.get("naive rolling") or {}
        bound = 1 / r["bound"]["layers"]
        lines.append(f"| {r['model']} | {r['n_tokens']:,} | setup | {_f(setup, '.1f')} | | | | | | | | |")
        for name in ("naive rolling", "fast rolling", "naive carry", "fast carry"):
            if name not in s:
                continue
            x = s[name]
            if x is None:
                lines.append(f"| {r['model']} | {r['n_tokens']:,} | {name} | n/a (runner lacks it) | | | | | | | | |")
                continue
            if "error" in x:
                lines.append(f"| {r['model']} | {r['n_tokens']:,} | {name} | failed: {x['error']} | | | | | | | | |")
                continue
            n_cond = r["bound"]["n_conditions"]
            tok_s = n_cond * x["scored"] / x["wall_s"]
            speed = naive["wall_s"] / x["wall_s"] if "wall_s" in naive else None
            net = ((naive["wall_s"] - setup) / (x["wall_s"] - setup)
                   if speed is not None and setup is not None and x["wall_s"] > setup else None)
            of_bound = f"{speed / bound:.2f}" if speed and name == "fast rolling" else ""
            twin = s.get(name.replace("fast", "naive")) or {}
            same = f"{twin['wall_s'] / x['wall_s']:.2f}x" if name.startswith("fast") and "wall_s" in twin else ""
            lines.append(f"| {r['model']} | {r['n_tokens']:,} | {name} | {x['wall_s']:.1f} | {_tok(tok_s)} "
                         f"| {_f(speed)}x | {_f(net)}x | {same} | {of_bound} | {_f(x.get('rel_diff'), '.1e', '')} "
                         f"| {np.exp(x['baseline_loss']):.2f} | {yes[x['fired']]} |")
    return "\n".join(lines) + "\n"


def to_json(records: list[dict]) -> list[dict]:
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if k != "nll"}
        if isinstance(v, (np.floating, np.integer)):
            return v.item()
        return v
    return [clean(r) for r in records]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MINIS),
                        help=f"comma-separated: built-in names or shape:NAME (default: the minis; shapes: "
                             f"{','.join(SHAPES)}; 'all' for both)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="tokens scored per model (default: 4 x context for the minis, 1 x context for shapes)")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--overhead-batch", type=int, default=None, help="windows in the overhead batch "
                        "(default: --batch-size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--corpus", default="encyclopedic", help="corpus the minis score")
    parser.add_argument("--max-conditions", type=int, default=None,
                        help="run at most this many sweep conditions, spread over depth (the bound follows)")
    parser.add_argument("--streams", type=int, default=1, help="carry protocol: segments scored side by side")
    parser.add_argument("--variants", default="naive rolling,fast rolling,naive carry,fast carry",
                        help="comma-separated sweep paths to time")
    parser.add_argument("--shapes", default=None, help="folder of published shapes (NAME.json)")
    parser.add_argument("--out", default=None, help="Markdown file to append the tables to (default: stdout only)")
    parser.add_argument("--json", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if models == ["all"]:
        models = list(MINIS + SHAPES)
    shapes = shapes_dir(args.shapes)
    check_shapes(models, shapes)

    def log(msg):
        print(msg, flush=True)

    env = environment(args.device, args.dtype)
    out = Path(args.out) if args.out else None
    before = out.read_text() if out and out.exists() else ""
    records = []
    for spec in models:
        try:
            records.append(bench_model(spec, args, shapes, log))
        except Exception as exc:  # one model's failure is reported; the others still run
            traceback.print_exc()
            records.append({"model": spec, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
        env["load_average_end"] = os.getloadavg()[0]
        env["fallbacks"] = sorted(FALLBACKS.names)
        # written after every model, so a run cut short keeps what it measured
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(before + ("\n" if before else "") + render(env, records, args))
        if args.json:
            Path(args.json).write_text(json.dumps({"environment": env, "models": to_json(records)}, indent=1,
                                                  default=str))
    print(render(env, records, args))


if __name__ == "__main__":
    main()
