"""Run a plan: every condition over every corpus, into one resumable store."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import subprocess
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Collection

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from workbench import store
from workbench.claims import Claims
from workbench.corpora import Corpus
from workbench.evaluate.multiple_choice import assemble, score_tasks, score_tasks_multi
from workbench.evaluate.shared_context import Cached
from workbench.evaluate.perplexity import (bits_per_byte, rolling_windows, safe_exp,
                                           score_windows, score_windows_multi)
from workbench.estimate import duration
from workbench.evaluate.carry import Carrier, CarryError, Chunk, carry_chunks, max_streams, score_carried_multi
from workbench.fast import SharedPrefix, auto_rows
from workbench.architectures import component_map
from workbench.app.components import component_records
from workbench.interventions import Intervener, check_reference, donor_windows
from workbench.loading import LoadedModel, config_hash, tokenizer_hash, weights_hash
from workbench.paths import REPO_ROOT
from workbench.plans import Condition, Plan
from workbench.validate import check_model, require_ok

SCORINGS = ("rolling", "carry")
PACKAGES = ("workbench", "torch", "transformers", "nnsight", "xarray", "zarr", "numpy")
DONOR_CACHE_BYTES = 2 * 2**30  # resample donor outputs kept across conditions (recomputed beyond)
GROUP_SIZE = 16  # conditions computed together (sharing a clean pass); a crash loses at most one group


class RunError(RuntimeError):
    """A run that cannot give trustworthy numbers (e.g. a non-finite baseline)."""


@dataclass(frozen=True)
class Protocol:
    """How every condition is scored; recorded in the store and checked on resume.

    ``batch_size`` is recorded but not checked: windows are batched without padding, so it
    changes results only at float rounding (about 1e-6 relative in float32).
    """

    context: int = 512
    stride: int = 256
    prefix_token: str = "none"  # resolved policy: none | bos
    prefix_id: int | None = None
    reference: str = ""  # where mean/resample inputs come from
    reference_tokens: int = 0
    reference_sha256: str = ""
    reference_windows: int = 16  # windows of the reference that mean ablations average over
    reference_skip: int = 16  # first positions of each reference window left out of the means
    batch_size: int = 8
    scoring: str = "rolling"  # rolling windows, or carry: chunks of ``stride`` with the state carried
    streams: int = 1  # carry: contiguous segments scored side by side (results depend on it, slightly)

    def __post_init__(self):
        if self.scoring not in SCORINGS:
            raise ValueError(f"unknown protocol {self.scoring!r}; valid: {', '.join(SCORINGS)}")
        if self.streams < 1:
            raise ValueError(f"streams must be at least 1, got {self.streams}")

    def checked(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "batch_size"}
        if self.scoring == "rolling":  # as recorded before carry existed
            out.pop("scoring"), out.pop("streams")
        return out

    def layout(self, n_tokens: int) -> list:
        """The windows (rolling) or chunks (carry) every condition scores a corpus in."""
        prefix = self.prefix_id is not None
        if self.scoring == "rolling":
            return rolling_windows(n_tokens, self.context, self.stride, prefix)
        streams = min(self.streams, max_streams(n_tokens, self.context, self.stride, prefix))
        return carry_chunks(n_tokens, self.context, self.stride, prefix, streams=streams)

    def forward_tokens(self, n_tokens: int) -> int:
        """Tokens one condition pushes through the model for a corpus (overlaps and warm-ups included)."""
        shift = int(self.prefix_id is not None)
        return sum(w.n_inputs if isinstance(w, Chunk) else w.end - w.begin + shift for w in self.layout(n_tokens))


def resolve_prefix(policy: str, tokenizer, model) -> tuple[str, int | None]:
    """The prefix token a model is scored with: ``auto`` follows the tokenizer (it adds a BOS
    when encoding with special tokens) or, failing that, a family that expects one (Gemma)."""
    if policy not in ("auto", "none", "bos"):
        raise ValueError(f"unknown prefix token policy {policy!r}; valid: auto, none, bos")
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        bos = getattr(model.config.get_text_config(), "bos_token_id", None)
    if policy == "none":
        return "none", None
    if policy == "bos":
        if bos is None:
            raise ValueError("--prefix-token bos: this tokenizer and config define no BOS token")
        return "bos", int(bos)
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    adds_bos = bos is not None and len(probe) > 0 and probe[0] == bos
    expects_bos = model.config.model_type.startswith("gemma")
    return ("bos", int(bos)) if bos is not None and (adds_bos or expects_bos) else ("none", None)


def prepare_inputs(loaded: LoadedModel, corpus_specs: list[str], texts: list | None = None, *,
                   max_tokens: int | None = None, reference: str | None = None, reference_text=None,
                   reference_tokens: int | None = None, prefix_token: str = "auto", context: int = 512,
                   stride: int = 256, batch_size: int = 8, scoring: str = "rolling",
                   streams: int = 1) -> tuple[list[Corpus], Corpus, Protocol]:
    """Tokenised corpora, the reference and the protocol of a run (the CLI and the study share it).

    Without ``reference`` the last ``reference_tokens`` (default 16 x context) tokens of the first
    corpus are set aside as the reference and never scored."""
    from workbench.corpora import CorpusError, load_corpus, load_with_reference, read_text

    texts = texts or [read_text(c) for c in corpus_specs]
    if reference_text is None and reference:
        reference_text = read_text(reference)
    policy, prefix_id = resolve_prefix(prefix_token, loaded.tokenizer, loaded.model)
    if reference:
        corpora = [load_corpus(c, loaded.tokenizer, max_tokens, text=t) for c, t in zip(corpus_specs, texts)]
        ref = load_corpus(reference, loaded.tokenizer, text=reference_text)
        where = ref.source
    else:
        first, ref = load_with_reference(corpus_specs[0], loaded.tokenizer, reference_tokens or 16 * context,
                                         max_tokens, text=texts[0])
        corpora = [first] + [load_corpus(c, loaded.tokenizer, max_tokens, text=t)
                             for c, t in zip(corpus_specs[1:], texts[1:])]
        where = f"{ref.source} (last {ref.n_tokens} tokens)"
    names = [k.name for k in corpora]
    if len(set(names)) != len(names):
        raise CorpusError(f"corpus names repeat: {names}")
    protocol = Protocol(context=context, stride=stride, prefix_token=policy, prefix_id=prefix_id, reference=where,
                        reference_tokens=ref.n_tokens, reference_sha256=ref.sha256, batch_size=batch_size,
                        scoring=scoring, streams=streams)
    return corpora, ref, protocol


def _versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version("hybrid-ablation-workbench" if name == "workbench" else name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


KERNEL_PACKAGES = {"fla": "flash-linear-attention", "causal_conv1d": "causal-conv1d", "mamba_ssm": "mamba-ssm"}


def kernel_paths() -> dict[str, str]:
    """Which fused-kernel packages transformers' mixers use (it falls back to its torch code
    for each one that is absent): package -> version, or "torch fallback"."""
    import importlib.util

    out = {}
    for module, dist in KERNEL_PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            out[dist] = "torch fallback"
        else:
            try:
                out[dist] = version(dist)
            except PackageNotFoundError:
                out[dist] = "installed"
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def component_layers(model) -> list[int]:
    return sorted({c.layer for c in component_map(model).components})


def provenance(loaded: LoadedModel, *, device: str, dtype: str, protocol: Protocol, corpora: list[Corpus],
               donor_seed: int | None, model_check: dict | None = None, tasks: dict | None = None) -> dict:
    versions = _versions()
    key = {
        "model": loaded.spec, "dtype": dtype, "device_type": torch.device(device).type,
        "config_hash": config_hash(loaded.model),
        "weights_hash": weights_hash(loaded.model), "model_revision": loaded.revision or "",
        "tokenizer_hash": tokenizer_hash(loaded.tokenizer), "protocol": protocol.checked(),
        "reference": {"source": protocol.reference, "sha256": protocol.reference_sha256,
                      "tokens": protocol.reference_tokens},
        "corpora": {k.name: {"sha256": k.sha256, "n_tokens": k.n_tokens} for k in corpora},
        "donor_seed": donor_seed, "tasks": tasks or {}, "torch": versions["torch"],
        "transformers": versions["transformers"],
    }
    return {
        "model": loaded.spec,
        "model_type": loaded.model_type,
        "model_source": loaded.source,
        "n_layers": len(component_layers(loaded.model)),
        "vocab_size": int(loaded.model.config.get_text_config().vocab_size),  # uniform guessing's perplexity
        "model_revision": loaded.revision or "",
        "config_hash": key["config_hash"],
        "weights_hash": key["weights_hash"],
        "tokenizer_hash": key["tokenizer_hash"],
        "protocol": json.dumps(asdict(protocol), sort_keys=True),
        "reference_corpus": protocol.reference,
        "donor_seed": -1 if donor_seed is None else donor_seed,
        "device": device,
        "dtype": dtype,
        "versions": json.dumps(versions),
        "kernels": json.dumps(kernel_paths()),
        "model_check": json.dumps(model_check or {}),
        "component_map": json.dumps(component_records(loaded.model)),
        "resume_key": json.dumps(key, sort_keys=True),
        "git_commit": _git_commit(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


class DonorCache:
    """Clean outputs of the resampled components on each window's donor, computed once per
    (corpus, window, donor seed) and shared by every resample condition, up to a memory budget."""

    def __init__(self, iv: Intervener, comps, budget_bytes: int = DONOR_CACHE_BYTES):
        self.iv, self.comps, self.budget = iv, list(comps), budget_bytes
        self.used = 0
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}

    def outputs(self, keys: list[tuple], donors: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        missing = [k for k, key in enumerate(keys) if key not in self._cache]
        fresh = {}
        if missing:
            outs = self.iv.outputs(donors[missing], self.comps)
            for row, k in enumerate(missing):
                fresh[keys[k]] = {name: value[row] for name, value in outs.items()}
        for key, value in fresh.items():
            size = sum(v.numel() * v.element_size() for v in value.values())
            if self.used + size <= self.budget:
                self._cache[key] = {n: v.clone() for n, v in value.items()}
                self.used += size
        return [self._cache.get(key) or fresh[key] for key in keys]


class ConditionForwards:
    """Builds the forward function that scores one condition on one corpus (mean and resample
    inputs are prepared here, once per run)."""

    def __init__(self, iv: Intervener, reference: Corpus, protocol: Protocol, plan: Plan,
                 reference_is_scored: set[str]):
        self.iv, self.reference, self.protocol = iv, reference, protocol
        self.reference_is_scored = reference_is_scored  # corpora whose text the reference is
        self._means: dict | None = None
        resampled = {t for c in plan.conditions if c.mode == "resample" for t in c.targets}
        comps = [iv.cmap.get(t.layer, t.role) for t in sorted(resampled, key=lambda t: (t.layer, t.role))]
        self.donors = DonorCache(iv, comps)
        self.fired_ok = True
        self.shared_context = True  # tasks: each item's context run once, choices from its cache

    def means(self) -> dict:
        """Mean output of every component over the reference windows, computed once per run."""
        if self._means is None:
            comps = [c for c in self.iv.cmap.components if c.role != "layer"]
            self._means = self.iv.component_means(self.reference_batches(), comps,
                                                  skip=self.protocol.reference_skip)
        return self._means

    def reference_batches(self):
        p = self.protocol
        ids, L = self.reference.ids, min(p.context, len(self.reference.ids))
        chunks = [ids[s:s + L] for s in range(0, len(ids) - L + 1, L)][:p.reference_windows]
        for k in range(0, len(chunks), p.batch_size):
            yield torch.stack(chunks[k:k + p.batch_size])

    def _run(self, ids, condition, keep, **kw):
        out = self.iv.run(ids, condition, keep=keep, strict=False, **kw)
        self.fired_ok &= out.fired == [c.key for c in self.iv.components(condition)]
        return out.logits

    def inputs_for(self, condition: Condition, ids: torch.Tensor, salts: list[int], key: str, avoid: bool,
                   ends: list[int] | None = None, prefixed: bool | None = None) -> dict:
        """The ``means`` or ``donor`` argument of ``Intervener.run`` for a batch under ``condition``.

        Resample donors: one window of the reference per row, drawn from the donor seed salted by
        the row's ``salts`` (its start in the scored text: when ``avoid``, the donor never overlaps
        it); a prefix token stays in place (``prefixed``: whether the rows start with it; default:
        the protocol has one). Donor outputs are shared through the cache, keyed by ``key`` (e.g.
        the corpus) with the salt, end and seed."""
        if condition.kind == "baseline" or condition.mode not in ("mean", "resample"):
            return {}
        if condition.mode == "mean":
            return {"means": self.means()}
        seed = condition.donor_seed or 0
        shift = int(self.protocol.prefix_id is not None if prefixed is None else prefixed)
        donors = torch.cat([donor_windows(self.reference.ids, ids.shape[1] - shift, 1, seed,
                                          avoid=[s] if avoid else None, salt=s) for s in salts])
        if shift:
            donors = torch.cat([ids[:, :1].cpu(), donors], dim=1)
        ends = ends or [ids.shape[1]] * len(salts)
        rows = self.donors.outputs([(key, s, e, seed) for s, e in zip(salts, ends)], donors)
        return {"donor": {c.key: torch.stack([r[c.key] for r in rows]) for c in self.iv.components(condition)}}

    def task_inputs(self, condition: Condition, ids: torch.Tensor, requests) -> dict:
        """The ``means`` or ``donor`` argument for a multiple-choice batch under ``condition``.

        Resample donors are drawn from the reference for each request (salted by its position
        among the task's requests), never from the task's own text."""
        if condition.kind == "baseline" or condition.mode not in ("mean", "resample"):
            return {}
        if condition.mode == "mean":
            return {"means": self.means()}
        seed = condition.donor_seed or 0
        donors = torch.cat([donor_windows(self.reference.ids, ids.shape[1], 1, seed,
                                          salt=(r.task * 1_000_003 + r.item) * 101 + r.choice)
                            for r in requests])
        return {"donor": self.iv.outputs(donors, self.iv.components(condition))}

    def task_forward(self, condition: Condition):
        """forward(ids, requests) -> logits of a multiple-choice batch under ``condition``."""
        return lambda ids, requests: self._run(ids, condition, 0, **self.task_inputs(condition, ids, requests))

    def window_inputs(self, condition: Condition, corpus: Corpus, ids: torch.Tensor, windows: list) -> dict:
        """Mean or donor inputs for a batch of windows or carried chunks (a resample donor of a
        chunk is the component's clean output on a reference segment as long as the chunk,
        run from an empty state)."""
        prefixed = windows[0].prefixed if isinstance(windows[0], Chunk) else None
        return self.inputs_for(condition, ids, [w.begin for w in windows], corpus.name,
                               corpus.name in self.reference_is_scored, ends=[w.end for w in windows],
                               prefixed=prefixed)

    def forward_for(self, condition: Condition, corpus: Corpus):
        """forward(ids, windows, keep) -> logits of one condition (the naive path)."""
        return lambda ids, windows, keep: self._run(ids, condition, keep,
                                                    **self.window_inputs(condition, corpus, ids, windows))

    def carried_for(self, condition: Condition, corpus: Corpus):
        """forward(ids, chunks, keep, [kwargs]) -> [logits] of one condition on carried chunks."""
        return lambda ids, chunks, keep, kws: [self._run(ids, condition, keep, forward_kwargs=kws[0],
                                                         **self.window_inputs(condition, corpus, ids, chunks))]

    def shared(self, conditions: list[Condition], max_rows: int) -> SharedPrefix:
        return SharedPrefix(self.iv, conditions, max_rows=max_rows)

    def windows_multi(self, fast: SharedPrefix, corpus: Corpus):
        """forward(ids, windows, keep[, lanes]) -> logits of every condition of ``fast`` (prefix
        reuse); ``lanes``: forward arguments of the clean pass and each condition (carried chunks)."""
        return lambda ids, windows, keep, lanes=None: fast.run(
            ids, [self.window_inputs(c, corpus, ids, windows) for c in fast.conditions], keep, lanes)

    def tasks_multi(self, fast: SharedPrefix):
        return lambda ids, requests: fast.run(ids, [self.task_inputs(c, ids, requests) for c in fast.conditions])

    def task_cached(self, conditions: list[Condition], fast: SharedPrefix | None = None) -> Cached | None:
        """The runs of ``conditions`` taking a cache, to score each task context once (through
        ``fast``, one lane per condition after the clean pass's, when given); None where that
        would not equal per-choice scoring: resample donors are drawn per choice."""
        if not self.shared_context or any(c.kind != "baseline" and c.mode == "resample" for c in conditions):
            return None
        if fast is not None:
            return Cached(self.iv.model, lambda ids, keep, kws: fast.run(
                ids, [self.task_inputs(c, ids, ()) for c in fast.conditions], keep, kws), lanes=1 + len(conditions))
        (cond,) = conditions
        return Cached(self.iv.model, lambda ids, keep, kws: [self._run(ids, cond, keep, forward_kwargs=kws[0],
                                                                       **self.task_inputs(cond, ids, ()))])


def _prepare_tasks(tasks, task_items):
    """Items, the empty per-item layout for the store, and what the resume check compares."""
    if not tasks:
        return None, None, {}
    items = [t.items()[:task_items] if task_items else t.items() for t in tasks]
    layout = assemble(tasks, items, [], np.array([]))
    key = {t.name: {"sha256": hashlib.sha256(Path(t.items_path).read_bytes()).hexdigest()[:16],
                    "n_items": len(x)} for t, x in zip(tasks, items)}
    return items, layout, key


def _completed_twin(out: Path, plan: Plan, index: int) -> int | None:
    effect = plan.conditions[index].effect_id
    twins = [j for j, c in enumerate(plan.conditions) if j != index and c.effect_id == effect]
    if not twins:
        return None
    done = store.open_store(out)["complete"].values
    return next((j for j in twins if done[j]), None)


def _task_values(res) -> dict:
    return {"correct": res["correct"].values, "loglik": res["loglik"].values, "accuracy": res["accuracy"].values}


def _groups(todo: list[int], plan: Plan, base_idx: int | None, size: int) -> list[list[int]]:
    """Pending conditions in groups computed together: the baseline in the first (it comes with
    the clean pass, and every other condition's QC compares with it), and a condition whose
    identical twin is in the same group held back to a later one (it is then copied)."""
    out: list[list[int]] = []
    rest = list(todo)
    if base_idx is not None and base_idx in rest:
        rest = [base_idx] + [i for i in rest if i != base_idx]
    while rest:
        group, effects, later = [], set(), []
        for i in rest:
            effect = plan.conditions[i].effect_id
            if len(group) < size and effect not in effects:
                group.append(i)
                effects.add(effect)
            else:
                later.append(i)
        out.append(group)
        rest = later
    return out


def check_run(plan: Plan, corpora: list[Corpus], protocol: Protocol, reference: Corpus,
              reference_is_scored: set[str]) -> None:
    """Everything that can be refused before a model runs."""
    if any(c.mode == "resample" for c in plan.conditions):
        longest = min(protocol.context, max(k.n_tokens for k in corpora))
        check_reference(reference.n_tokens, longest, overlapping=bool(reference_is_scored))
    if any(c.mode == "mean" for c in plan.conditions):
        if min(protocol.context, reference.n_tokens) <= protocol.reference_skip:
            raise RunError(f"mean ablation needs reference windows longer than the {protocol.reference_skip} "
                           f"positions skipped at the start of each; the reference has "
                           f"{reference.n_tokens} tokens and the context is {protocol.context}")


def run_plan(loaded: LoadedModel, plan: Plan, corpora: list[Corpus], out: str | Path, *,
             protocol: Protocol | None = None, reference: Corpus | None = None, device: str = "cpu",
             dtype: str = "float32", donor_seed: int | None = None, progress: bool = True,
             on_condition: Callable[[int, Condition], None] | None = None,
             log: Callable[[str], None] | None = None, context: int = 512, stride: int = 256,
             batch_size: int = 8, tasks: list | None = None, task_items: int | None = None,
             only: Collection[int] | None = None, prepared: dict | None = None, fast: bool = True,
             max_rows: int | None = None, group_size: int = GROUP_SIZE, shared_context: bool = True,
             check_only: bool = False):
    """Compute every pending condition of ``plan`` into the store at ``out``; returns the store.

    ``reference`` feeds mean and resample ablations (default: the first corpus itself, in which
    case resample donors never overlap their window). ``protocol`` defaults to ``context``,
    ``stride``, ``batch_size`` without a prefix token. ``tasks``: multiple-choice tasks
    (``workbench.tasks.Task``) scored under every condition, on their first ``task_items`` items
    (all by default). Several processes may run the same plan into one store: they share the
    conditions. ``only``: compute just these condition indices (and the baseline while it is
    pending, since every other condition's QC compares with it); ``only=()`` lays the store out
    and computes nothing. ``prepared``: the store's provenance from a caller that has already run
    every check of this run on ``loaded`` (load-time model check, provenance, resume check, store
    verification), e.g. a cluster worker's later tasks; the model check and verification are skipped
    and the store is checked against it.

    ``check_only``: run every check (inputs, model, an existing store's setup) and return None,
    writing nothing (a study checks every model before it starts any).

    ``fast`` (default) computes up to ``group_size`` conditions together: one clean pass per
    batch, each condition resuming after the clean layers before its first edit, conditions
    stacked up to ``max_rows`` rows per forward (default: from the memory available; see
    ``auto_rows``). ``fast=False`` runs each condition alone from the embeddings (the naive
    loop, kept for checks and benchmarks); both give the same numbers up to float rounding.

    ``shared_context`` (default) runs each task item's context once and scores its choices from
    the model's cache (``evaluate/shared_context.py``; the fast path then runs one condition per
    forward, unstacked); resample conditions (and a fast group holding one) and families whose
    cache cannot be continued are scored per choice, as ``shared_context=False`` scores all.
    """
    out = Path(out)
    reference = reference or corpora[0]
    protocol = protocol or Protocol(context=context, stride=stride, batch_size=batch_size,
                                    reference=reference.source, reference_tokens=reference.n_tokens,
                                    reference_sha256=reference.sha256)
    say = log or (lambda msg: None)
    prefix = protocol.prefix_id
    reference_is_scored = {k.name for k in corpora if k.source == reference.source
                           and k.sha256 == reference.sha256 and reference.name == k.name}
    check_run(plan, corpora, protocol, reference, reference_is_scored)
    if protocol.scoring == "carry":
        try:
            Carrier(loaded.model)  # an unsupported model is refused before anything is written
        except CarryError as exc:
            raise RunError(str(exc)) from None
    windows = {k.name: protocol.layout(k.n_tokens) for k in corpora}
    first_scored = 0 if prefix is not None else 1
    meta = [{"name": k.name, "source": k.source, "n_tokens": k.n_tokens, "n_bytes": k.scored_bytes(first_scored),
             "sha256": k.sha256, "window_tokens": [w.n_scored for w in windows[k.name]]} for k in corpora]
    task_items_list, task_template, task_key = _prepare_tasks(tasks, task_items)
    iv = Intervener(loaded.model)
    attrs = prepared
    if attrs is None:
        model_check = check_model(iv)
        require_ok(model_check, loaded.spec)
        attrs = provenance(loaded, device=device, dtype=dtype, protocol=protocol, corpora=corpora,
                           donor_seed=donor_seed, model_check=model_check, tasks=task_key)
    if check_only:
        store.check_resume(out, plan, meta, attrs, task_template)
        return None
    ds = store.create_or_resume(out, plan, meta, attrs, task_template)
    damaged = store.verify(ds) if prepared is None else {}
    if damaged:
        names = [str(ds.condition.values[i]) for i in damaged if i >= 0]
        say(f"{len(damaged)} complete condition(s) failed verification and will be recomputed: "
            + ", ".join(f"{n} ({why})" for n, why in zip(names, damaged.values())))
        store.mark_incomplete(out, [i for i in damaged if i >= 0])
        ds = store.open_store(out)
    claims = Claims(out)
    todo = store.pending(ds)
    ids = list(ds.condition.values)
    base_idx = ids.index("baseline") if "baseline" in ids else None
    if only is not None:
        keep = set(only)
        if base_idx is not None and keep - {base_idx} and base_idx in todo:
            keep.add(base_idx)
        todo = [i for i in todo if i in keep]
    if base_idx is not None and base_idx in todo:  # QC compares every condition with the baseline
        todo = [base_idx] + [i for i in todo if i != base_idx]

    forwards = ConditionForwards(iv, reference, protocol, plan, reference_is_scored)
    forwards.shared_context = shared_context
    total_tokens = sum(int(sum(m["window_tokens"])) for m in meta)
    scored = ds["window_tokens"].values > 0  # the windows store.verify checks
    rows = max_rows or auto_rows(loaded.model, protocol.context, protocol.stride + 1, protocol.batch_size, iv.device)
    baseline_nll = None

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), disable=not progress,
                   console=Console(stderr=True))
    computed = copied = 0
    deferred: list[int] = []
    try:
        with bar if progress else nullcontext():
            t_cond = bar.add_task("conditions", total=len(plan.conditions), rate="",
                                  completed=len(plan.conditions) - len(todo))
            t_tok = bar.add_task("tokens", total=total_tokens, rate="")

            def scores(group: list[int], tick) -> list[tuple[np.ndarray, np.ndarray, dict, bool]]:
                """(window NLL (corpus, window), loss per corpus, task values, fired) per condition."""
                conds = [plan.conditions[i] for i in group]
                n_w = ds.sizes["window"]
                nll = np.full((len(group), len(corpora), n_w), np.nan)
                loss = np.full((len(group), len(corpora)), np.nan)
                tasks_out: list[dict] = [{} for _ in group]
                if fast:
                    shared = forwards.shared(conds, rows)
                    for j, corpus in enumerate(corpora):
                        w = windows[corpus.name]
                        if protocol.scoring == "carry":  # lane 0: the clean pass, with its own cache
                            multi = forwards.windows_multi(shared, corpus)
                            sums, counts = score_carried_multi(
                                lambda ids, chunks, keep, kws: [None] + multi(ids, chunks, keep, kws),
                                1 + len(conds), corpus.ids, w, iv.model, iv.device, progress=tick, prefix=prefix)
                            sums = sums[1:]
                        else:
                            sums, counts = score_windows_multi(forwards.windows_multi(shared, corpus), len(conds),
                                                               corpus.ids, w, protocol.batch_size, iv.device,
                                                               progress=tick, prefix=prefix)
                        nll[:, j, :len(w)] = sums
                        loss[:, j] = sums.sum(axis=1) / counts.sum()
                    if tasks:
                        res = score_tasks_multi(forwards.tasks_multi(shared), len(conds), loaded.tokenizer, tasks,
                                                task_items_list, batch_size=protocol.batch_size * 2,
                                                device=iv.device, prefix=(prefix,) if prefix is not None else None,
                                                cached=forwards.task_cached(conds, shared))
                        tasks_out = [_task_values(r) for r in res]
                    return [(nll[k], loss[k], tasks_out[k], shared.ok[k]) for k in range(len(group))]
                out = []
                for k, cond in enumerate(conds):
                    forwards.fired_ok = True
                    for j, corpus in enumerate(corpora):
                        w = windows[corpus.name]
                        if protocol.scoring == "carry":
                            sums, counts = score_carried_multi(forwards.carried_for(cond, corpus), 1, corpus.ids, w,
                                                               iv.model, iv.device, progress=tick, prefix=prefix)
                            sums = sums[0]
                        else:
                            sums, counts = score_windows(forwards.forward_for(cond, corpus), corpus.ids, w,
                                                         protocol.batch_size, iv.device, progress=tick, prefix=prefix)
                        nll[k, j, :len(w)] = sums
                        loss[k, j] = sums.sum() / counts.sum()
                    if tasks:
                        tasks_out[k] = _task_values(score_tasks(
                            forwards.task_forward(cond), loaded.tokenizer, tasks, task_items_list,
                            batch_size=protocol.batch_size * 2, device=iv.device,
                            prefix=(prefix,) if prefix is not None else None, cached=forwards.task_cached([cond])))
                    out.append((nll[k], loss[k], tasks_out[k], forwards.fired_ok))
                return out

            def evaluate(group: list[int]) -> None:
                nonlocal baseline_nll, computed, copied
                if base_idx is not None and baseline_nll is None and base_idx not in group:
                    claims.wait_claim(base_idx)  # another process may be computing the baseline
                    if store.is_complete(out, base_idx):
                        claims.release(base_idx)
                        baseline_nll = store.open_store(out)["window_nll"].isel(condition=base_idx).values
                    else:  # its holder died or refused it: compute it here first (its claim is ours now)
                        group = [base_idx] + list(group)
                fresh = []
                for i in group:
                    twin = _completed_twin(out, plan, i)
                    if twin is not None:  # the same edit under another family label: copy, don't recompute
                        store.copy_condition(out, twin, i)
                        copied += 1
                    else:
                        fresh.append(i)
                if not fresh:
                    return
                first = plan.conditions[fresh[0]].label
                what = first if len(fresh) == 1 else f"{len(fresh)} conditions: {first}, ..."
                bar.update(t_cond, description=f"{what[:48]:<48}")
                bar.reset(t_tok, total=total_tokens * len(fresh))
                start, done_tokens = time.perf_counter(), [0]

                def tick(n):
                    done_tokens[0] += n
                    rate = done_tokens[0] / max(time.perf_counter() - start, 1e-9)
                    bar.update(t_tok, advance=n, rate=f"{rate:,.0f} tok/s")

                results = scores(fresh, tick)
                elapsed = (time.perf_counter() - start) / len(fresh)
                for i, (nll, loss, task_values, fired_ok) in sorted(
                        zip(fresh, results), key=lambda r: r[0] != base_idx):  # the baseline first
                    cond = plan.conditions[i]
                    ppl = np.array([safe_exp(x) if not math.isnan(x) else math.nan for x in loss])
                    bpb = np.array([bits_per_byte(x * sum(m["window_tokens"]), m["n_bytes"])
                                    for x, m in zip(loss, meta)])
                    if cond.kind == "baseline":
                        changed = np.full(len(corpora), -1, dtype=np.int8)
                    elif baseline_nll is not None:
                        diff = np.abs(nll - baseline_nll)
                        same = np.where(np.isnan(nll) & np.isnan(baseline_nll), 0.0, diff)
                        changed = np.where(np.isnan(same).any(axis=1), 1,
                                           np.nanmax(same, axis=1) > 1e-6).astype(np.int8)
                    else:
                        changed = np.full(len(corpora), -1, dtype=np.int8)
                    if cond.kind == "baseline":  # refused before it is written: a rerun refuses again
                        bad = [k.name for k, x in zip(corpora, loss) if not np.isfinite(x)]
                        if bad:
                            raise RunError(f"the baseline loss is not finite on {', '.join(bad)} "
                                           f"({', '.join(str(x) for x in loss)}): the model's weights or "
                                           "logits are not finite; no condition was run")
                    store.write_condition(out, i, {
                        "loss": loss, "perplexity": ppl, "bits_per_byte": bpb, "window_nll": nll,
                        "n_nonfinite": (~np.isfinite(np.where(scored, nll, 0.0))).sum(axis=1).astype(np.int32),
                        "qc_changed": changed, "qc_fired": np.array(fired_ok),
                        "n_edits": np.array(len(cond.targets), dtype=np.int32),
                        "elapsed_s": np.array(elapsed), **task_values,
                    })
                    computed += 1
                    if cond.kind == "baseline":
                        baseline_nll = nll

            def claimed(group: list[int]) -> None:
                """Compute the conditions of ``group`` (claimed by this process) not yet done."""
                try:
                    evaluate([i for i in group if not store.is_complete(out, i)])
                finally:
                    for i in group:
                        claims.release(i)
                for i in group:
                    bar.advance(t_cond)
                    if on_condition:
                        on_condition(i, plan.conditions[i])
                if progress and not bar.console.is_terminal:  # a log file gets a line per group
                    left = int((~store.open_store(out)["complete"].values.astype(bool)).sum())
                    done_here[0] += len(group)
                    spent = time.perf_counter() - run_start
                    eta = f"; about {duration(spent / done_here[0] * left)} left" if left else ""
                    bar.console.print(f"{out.name}: {len(plan.conditions) - left}/{len(plan.conditions)} conditions "
                                      f"done, {duration(spent)} so far{eta}", markup=False, highlight=False)

            run_start, done_here = time.perf_counter(), [0]
            for group in _groups(todo, plan, base_idx, group_size if fast else 1):
                mine = [i for i in group if claims.try_claim(i)]
                deferred += [i for i in group if i not in mine]  # another process is on them: look again at the end
                if mine:
                    claimed(mine)
            for i in deferred:
                claims.wait_claim(i)  # returns when its holder finished, or died
                claimed([i])
    finally:
        claims.release_all()
    final = store.open_store(out)
    if bool(final["complete"].all()):
        claims.remove()
    say(f"computed {computed} condition(s) here, copied {copied} identical edit(s)")
    return final
