"""Run a plan: every condition over every corpus, into one resumable store."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import time
from contextlib import nullcontext
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from workbench import store
from workbench.corpora import Corpus
from workbench.evaluate.perplexity import Window, rolling_windows, safe_exp, score_windows
from workbench.architectures import component_map
from workbench.interventions import Intervener, donor_windows
from workbench.loading import LoadedModel
from workbench.paths import REPO_ROOT
from workbench.plans import Condition, Plan

N_REFERENCE_WINDOWS = 16  # windows of the reference corpus that mean ablations average over
PACKAGES = ("workbench", "torch", "transformers", "nnsight", "xarray", "zarr", "numpy")


def _versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version("hybrid-ablation-workbench" if name == "workbench" else name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def component_layers(model) -> list[int]:
    return sorted({c.layer for c in component_map(model).components})


def provenance(loaded: LoadedModel, *, device: str, dtype: str, seed: int, protocol: dict,
               reference: str) -> dict:
    config = loaded.model.config.to_json_string(use_diff=False)
    return {
        "model": loaded.spec,
        "model_type": loaded.model_type,
        "model_source": loaded.source,
        "n_layers": len(component_layers(loaded.model)),
        "model_revision": loaded.revision or "",
        "config_hash": hashlib.sha256(config.encode()).hexdigest()[:16],
        "protocol": json.dumps(protocol, sort_keys=True),
        "reference_corpus": reference,
        "seed": seed,
        "device": device,
        "dtype": dtype,
        "versions": json.dumps(_versions()),
        "git_commit": _git_commit(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


class ConditionRunner:
    """Evaluates one condition on one corpus: mean/resample inputs are prepared here."""

    def __init__(self, iv: Intervener, reference: Corpus, context: int, batch_size: int,
                 n_reference_windows: int = 16):
        self.iv, self.reference = iv, reference
        self.context, self.batch_size = context, batch_size
        self.n_reference_windows = n_reference_windows
        self._means: dict | None = None

    def means(self) -> dict:
        """Mean output of every component over the reference windows, computed once per run."""
        if self._means is None:
            comps = [c for c in self.iv.cmap.components if c.role != "layer"]
            self._means = self.iv.component_means(self.reference_batches(), comps)
        return self._means

    def reference_batches(self):
        ids, L = self.reference.ids, min(self.context, len(self.reference.ids))
        chunks = [ids[s:s + L] for s in range(0, len(ids) - L + 1, L)][:self.n_reference_windows]
        for k in range(0, len(chunks), self.batch_size):
            yield torch.stack(chunks[k:k + self.batch_size])

    def forward_for(self, condition: Condition, corpus: Corpus):
        iv = self.iv
        if condition.kind == "baseline":
            return lambda ids, windows: iv.run(ids, condition).logits
        comps = iv.components(condition)
        if condition.mode == "mean":
            means = self.means()
            return lambda ids, windows: iv.run(ids, condition, means=means).logits
        if condition.mode == "resample":
            same = corpus.source == self.reference.source

            def forward(ids, windows: list[Window]):
                donors = torch.cat([
                    donor_windows(self.reference.ids, ids.shape[1], 1, condition.seed or 0,
                                  avoid=[w.begin] if same else None, salt=w.begin) for w in windows])
                return iv.run(ids, condition, donor=iv.outputs(donors, comps)).logits
            return forward
        return lambda ids, windows: iv.run(ids, condition).logits


def _completed_twin(out: Path, plan: Plan, index: int) -> int | None:
    effect = plan.conditions[index].effect_id
    twins = [j for j, c in enumerate(plan.conditions) if j != index and c.effect_id == effect]
    if not twins:
        return None
    done = store.open_store(out)["complete"].values
    return next((j for j in twins if done[j]), None)


def run_plan(loaded: LoadedModel, plan: Plan, corpora: list[Corpus], out: str | Path, *,
             context: int = 512, stride: int = 256, batch_size: int = 8, reference: Corpus | None = None,
             device: str = "cpu", dtype: str = "float32", seed: int = 0, progress: bool = True,
             on_condition: Callable[[int, Condition], None] | None = None):
    """Compute every pending condition of ``plan`` into the store at ``out``; returns the store."""
    out = Path(out)
    reference = reference or corpora[0]
    windows = {k.name: rolling_windows(k.n_tokens, context, stride) for k in corpora}
    meta = [{"name": k.name, "source": k.source, "n_tokens": k.n_tokens, "n_bytes": k.n_bytes,
             "window_tokens": [w.n_scored for w in windows[k.name]]} for k in corpora]
    protocol = {"context": context, "stride": stride, "scored": "every token after the first, once",
                "reference": reference.source, "reference_windows": N_REFERENCE_WINDOWS}
    attrs = provenance(loaded, device=device, dtype=dtype, seed=seed, protocol=protocol,
                       reference=reference.source)
    ds = store.create_or_resume(out, plan, meta, attrs)
    todo = store.pending(ds)
    ids = list(ds.condition.values)
    base_idx = ids.index("baseline") if "baseline" in ids else None
    if base_idx is not None and base_idx in todo:  # QC compares every condition with the baseline
        todo = [base_idx] + [i for i in todo if i != base_idx]

    iv = Intervener(loaded.model)
    runner = ConditionRunner(iv, reference, context, batch_size, N_REFERENCE_WINDOWS)
    total_tokens = sum(k.n_tokens - 1 for k in corpora)
    baseline_nll = None
    if base_idx is not None and base_idx not in todo:
        baseline_nll = store.open_store(out)["window_nll"].isel(condition=base_idx).values

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), disable=not progress,
                   console=Console(stderr=True))
    with bar if progress else nullcontext():
        t_cond = bar.add_task("conditions", total=len(plan.conditions), rate="",
                              completed=len(plan.conditions) - len(todo))
        t_tok = bar.add_task("tokens", total=total_tokens, rate="")
        for i in todo:
            cond = plan.conditions[i]
            twin = _completed_twin(out, plan, i)
            if twin is not None:  # the same edit under another family label: copy, don't recompute
                store.copy_condition(out, twin, i)
                bar.advance(t_cond)
                if on_condition:
                    on_condition(i, cond)
                continue
            bar.update(t_cond, description=f"{cond.label[:48]:<48}")
            bar.reset(t_tok, total=total_tokens)
            start, done_tokens = time.perf_counter(), [0]

            def tick(n):
                done_tokens[0] += n
                rate = done_tokens[0] / max(time.perf_counter() - start, 1e-9)
                bar.update(t_tok, advance=n, rate=f"{rate:,.0f} tok/s")

            n_w = ds.sizes["window"]
            nll = np.full((len(corpora), n_w), np.nan)
            loss = np.full(len(corpora), np.nan)
            for j, corpus in enumerate(corpora):
                forward = runner.forward_for(cond, corpus)
                w = windows[corpus.name]
                sums, counts = score_windows(forward, corpus.ids, w, batch_size, iv.device, progress=tick)
                nll[j, :len(w)] = sums
                loss[j] = sums.sum() / counts.sum()
            ppl = np.array([safe_exp(x) for x in loss])
            bpb = loss * np.array([m["n_tokens"] - 1 for m in meta]) / (
                np.log(2) * np.array([m["n_bytes"] for m in meta]))
            if cond.kind == "baseline":
                baseline_nll = nll
                changed = np.full(len(corpora), -1, dtype=np.int8)
            elif baseline_nll is not None:
                diff = np.nanmax(np.abs(nll - baseline_nll), axis=1)
                changed = (diff > 1e-6).astype(np.int8)
            else:
                changed = np.full(len(corpora), -1, dtype=np.int8)
            store.write_condition(out, i, {
                "loss": loss, "perplexity": ppl, "bits_per_byte": bpb, "window_nll": nll,
                "qc_changed": changed, "qc_fired": np.array(True),
                "n_edits": np.array(len(cond.targets), dtype=np.int32),
                "elapsed_s": np.array(time.perf_counter() - start),
            })
            bar.advance(t_cond)
            if on_condition:
                on_condition(i, cond)
    return store.open_store(out)
