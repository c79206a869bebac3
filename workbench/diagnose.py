"""Representation diagnostics of a run store: activations cached into the store, then probes.

``diagnose(store)`` reloads the store's model (refusing one whose config or weights changed),
draws a seeded sample of token positions from one of the store's corpora, runs the clean model
and every distinct edit of the store's plan on it, and writes two zarr groups into the store:

- ``activations``: ``hidden(condition, layer, token, d_model)`` (float16; layer -1 is the
  embedding output, layer i the output of decoder layer i, a skipped layer holding what the
  network carried on), ``component_out(condition, component, token, d_model)`` (float16, NaN
  for components inside a skipped layer), ``final_hidden(condition, token, d_model)`` (float32:
  the last layer's output at full precision, so the model's own logits can be rebuilt from it
  exactly), ``nll`` and ``top1_id`` from the run's logits, token metadata as coordinates, and
  ``complete(condition)``, written after a condition's last batch. Written batch by batch, one
  condition x one block of tokens per chunk, so memory does not grow with the sample; a rerun
  resumes at the first incomplete condition. Conditions that make the same edit (twins in the
  plan) are captured once: the group's ``twins`` attribute maps each store condition to the row
  holding its activations.
- ``diagnostics``: per store condition (twins share values), the variables listed in
  ``VARIABLES``; computed from the cache (at most ``max_diag_tokens`` tokens, one seeded subset
  shared by every condition) plus a retrieval pass on repeated random sequences.

The sample: ``tokens`` positions from non-overlapping windows of the store's context (the prefix
token policy of the store included) over the corpus as the store scored it. Windows are a seeded
draw from the window grid; each window contributes an equal share of positions (drawn without
replacement, never the prefix slot), always including its last position (the last-token lens).
The mean and resample inputs are rebuilt the way the run built them (the reference is
reconstructed from the store's protocol and checked against its sha256 and token count).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import shutil
import socket
import sys
import time
import uuid
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
import zarr

from workbench import store as run_store
from workbench.architectures import ComponentMap
from workbench.capture import capture
from workbench.claims import Claims
from workbench.corpora import Corpus, load_corpus
from workbench.interventions import Intervener
from workbench.loading import config_hash, load_model, weights_hash
from workbench.plans import BASELINE, Condition, Plan
from workbench.readout import lens_logits
from workbench.states import STATE_ROLES, StateError, removed_keys, state_norms

DIAGNOSTICS = ("cka", "probes", "lens", "norms", "retrieval", "state", "maps")
ACTIVATIONS, DIAG = "activations", "diagnostics"
ZARR = run_store.ZARR
STATE_WINDOWS = 4  # sample windows whose final recurrent state is measured (a forward per condition)
LENS_VALUES = 1 << 22  # (layer x token x vocab) float32 values of lens logits held at once
VARIABLES = {
    "cka": ("cka_linear", "cka_debiased"),
    "probes": ("probe_acc", "probe_selectivity", "probe_transfer_acc"),
    "lens": ("lens_kl", "lens_top1", "lens_ce", "lens_entropy", "lens_kl_last_token"),
    "norms": ("resid_norm", "norm_ratio", "cos_to_clean", "write_norm"),
    "retrieval": ("retrieval_acc", "induction_score", "retrieval_text_acc", "retrieval_text_first_acc"),
    "state": ("state_norm",),
    "maps": ("map_xy",),
}


class DiagnoseError(run_store.StoreError):
    """(A StoreError, so the CLI reports it as a one-line usage error.) A store that cannot be diagnosed as asked; the message says why and what to do."""


# -- the store, its model and its inputs -------------------------------------------------------

def check_model(loaded, attrs: dict) -> None:
    """Refuse a model whose config or weights differ from the ones the store was run with."""
    problems = []
    got = {"config_hash": config_hash(loaded.model), "weights_hash": weights_hash(loaded.model)}
    for key, what in (("config_hash", "config"), ("weights_hash", "weights")):
        if attrs.get(key) and attrs[key] != got[key]:
            problems.append(f"{what} hash: store {attrs[key]}, loaded model {got[key]}")
    if problems:
        raise DiagnoseError(f"model {attrs.get('model')!r} is not the model this store was run with "
                            f"({'; '.join(problems)}); diagnose needs the very model of the run")


def _spec(source: str) -> str:
    return source[len("builtin:"):] if source.startswith("builtin:") else source


def _checked(corpus: Corpus, sha256: str, n_tokens: int, what: str) -> Corpus:
    if sha256 and corpus.sha256 != sha256:
        raise DiagnoseError(f"{what} ({corpus.source}) changed since the run: sha256 {corpus.sha256[:12]}..., "
                            f"the store recorded {sha256[:12]}...")
    if corpus.n_tokens != n_tokens:
        raise DiagnoseError(f"{what} ({corpus.source}) has {corpus.n_tokens} tokens now, the store "
                            f"recorded {n_tokens}; was the tokenizer changed?")
    return corpus


def rebuild_inputs(ds: xr.Dataset, tokenizer, corpus: str | None = None):
    """(sample corpus, reference corpus, whether resample donors avoid their window).

    The corpus is re-read from its recorded source and cut to the tokens the run scored; the
    reference is the last N tokens of the first corpus when the protocol says so (the CLI's
    default), else the first ``reference_tokens`` tokens of its source. Both are checked against
    the store's sha256 and token counts.
    """
    names = [str(n) for n in ds["corpus"].values]
    name = corpus or names[0]
    if name not in names:
        raise DiagnoseError(f"corpus {name!r} is not in this store; its corpora: {', '.join(names)}")
    j = names.index(name)
    source, sha = str(ds["corpus_source"].values[j]), str(ds["corpus_sha256"].values[j])
    n_tokens = int(ds["n_tokens"].values[j])
    proto = json.loads(ds.attrs["protocol"])
    ref_source, n_ref = proto.get("reference", ""), int(proto.get("reference_tokens", 0))
    tail = re.fullmatch(r"(.*) \(last (\d+) tokens\)", ref_source)
    ref_spec = _spec(tail.group(1) if tail else ref_source)
    whole_ref = load_corpus(ref_spec, tokenizer)
    if tail:
        reference = whole_ref.slice(whole_ref.n_tokens - n_ref, whole_ref.n_tokens, name=f"{whole_ref.name}:tail")
    else:
        reference = whole_ref.slice(0, n_ref)
    _checked(reference, proto.get("reference_sha256", ""), n_ref, "the reference corpus")
    same = source == (tail.group(1) if tail else ref_source)
    whole = whole_ref if same else load_corpus(_spec(source), tokenizer)
    scored = whole.slice(0, n_tokens, name=name)  # the run cut its reference off the end first
    _checked(scored, sha, n_tokens, f"corpus {name!r}")
    avoid = same and not tail  # the reference is the scored text itself (runner's rule)
    return scored, reference, avoid


@dataclass
class Sample:
    """Token positions to capture: ``ids`` (window, context) and, per sampled token, its window
    row, position in the window, corpus offset and next-token target (-1 at the corpus end)."""

    corpus: str
    ids: torch.Tensor
    begins: np.ndarray  # corpus offset of each window's first text token
    window: np.ndarray
    position: np.ndarray
    offset: np.ndarray
    target: np.ndarray
    key: dict

    @property
    def n_tokens(self) -> int:
        return int(self.window.size)

    def rows(self, w0: int, w1: int) -> np.ndarray:
        """Sample tokens of windows w0..w1-1 (they are contiguous: tokens sorted by window)."""
        return np.flatnonzero((self.window >= w0) & (self.window < w1))


def make_sample(corpus: Corpus, context: int, prefix_id: int | None, tokens: int, *, seed: int = 0,
                windows: int | None = None) -> Sample:
    """A seeded sample of ``tokens`` positions (see the module docstring)."""
    shift = int(prefix_id is not None)
    span = context - shift
    grid = corpus.n_tokens // span
    if grid < 2 or tokens < 2:
        raise DiagnoseError(f"corpus {corpus.name!r} has {corpus.n_tokens} tokens: fewer than 2 windows of "
                            f"{span} text tokens; diagnose needs at least 2 windows")
    n_win = min(grid, windows or max(2, math.ceil(tokens / max(1, span // 4))))
    if n_win * (span) < tokens:
        n_win = grid
    if n_win * span < tokens:
        raise DiagnoseError(f"--tokens {tokens} is more than corpus {corpus.name!r} holds in {grid} windows of "
                            f"{span} text tokens ({grid * span}); ask for at most {grid * span}")
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(grid, size=n_win, replace=False))
    begins = picks * span
    text = torch.stack([corpus.ids[b:b + span] for b in begins])
    ids = torch.cat([torch.full((n_win, 1), prefix_id, dtype=text.dtype), text], 1) if shift else text
    share = np.full(n_win, tokens // n_win)
    share[:tokens % n_win] += 1
    window, position = [], []
    for w, k in enumerate(share):
        last = context - 1
        rest = rng.choice(np.arange(shift, last), size=k - 1, replace=False) if k > 1 else np.zeros(0, int)
        pos = np.sort(np.r_[rest, last])
        window.append(np.full(k, w))
        position.append(pos)
    window, position = np.concatenate(window), np.concatenate(position).astype(np.int64)
    offset = begins[window] + position - shift
    nxt = offset + 1
    all_ids = corpus.ids.numpy()
    target = np.where(nxt < corpus.n_tokens, all_ids[np.minimum(nxt, corpus.n_tokens - 1)], -1)
    key = {"corpus": corpus.name, "corpus_sha256": corpus.sha256, "tokens": tokens, "seed": seed,
           "windows": int(n_win), "context": context, "prefix_id": prefix_id,
           "begins": hashlib.sha256(begins.tobytes() + position.tobytes()).hexdigest()[:16]}
    return Sample(corpus.name, ids, begins, window, position, offset, target.astype(np.int64), key)


@dataclass
class Rows:
    """Activation rows: the clean run, then one row per distinct edit of the plan."""

    conditions: list[Condition]  # one per row
    ids: list[str]  # the store condition id of each row ("baseline" for the clean run)
    twins: dict[str, str]  # store condition id -> the row id holding its activations


def activation_rows(plan: Plan) -> Rows:
    conds, ids, by_effect, twins = [BASELINE], ["baseline"], {"baseline": "baseline"}, {}
    for c in plan.conditions:
        if c.effect_id not in by_effect:
            by_effect[c.effect_id] = c.id
            conds.append(c)
            ids.append(c.id)
        twins[c.id] = by_effect[c.effect_id]
    twins.setdefault("baseline", "baseline")
    return Rows(conds, ids, twins)


class Inputs:
    """Mean and resample inputs for a condition, built as the runner builds them."""

    def __init__(self, iv: Intervener, reference: Corpus, protocol: dict, plan: Plan, avoid: bool):
        from workbench.runner import ConditionForwards, Protocol

        self.iv, self.reference, self.avoid = iv, reference, avoid
        self.prefix = protocol.get("prefix_id")
        self.forwards = ConditionForwards(iv, reference, Protocol(**protocol), plan, set())

    def __call__(self, cond: Condition, ids: torch.Tensor, salts) -> dict:
        return self.forwards.inputs_for(cond, ids, [int(s) for s in salts], "diagnose", self.avoid)


# -- the activations group ---------------------------------------------------------------------

def _group(path: Path, name: str):
    return zarr.open_group(str(path), path=name, mode="r+", use_consolidated=False, **ZARR)


def _has_group(path: Path, name: str) -> bool:
    return (Path(path) / name / ".zgroup").exists()


def _publish(path: Path, name: str, write) -> None:
    """Write group ``name`` of the store into a temporary folder beside it (``write(folder)``),
    then rename it into place: a kill leaves the old group or the new one, never half of one.
    Folders left by killed processes are removed first (``store._clean_stale_layouts``)."""
    final = Path(path) / name
    run_store._clean_stale_layouts(final)

    def temporary() -> Path:
        return final.with_name(f".{name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")

    tmp, old = temporary(), temporary()
    try:
        write(tmp)
        if final.exists():
            os.rename(final, old)  # a kill from here to the next rename leaves no group: recomputed
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


ROW_ARRAYS = ("hidden", "component_out", "final_hidden", "nll", "top1_id")


def _layout(path: Path, sample: Sample, rows: Rows, cmap: ComponentMap, token_text: list[str],
            d_model: int, chunk_tokens: int, labels: dict[str, str]) -> None:
    n_r, n_t, n_l = len(rows.ids), sample.n_tokens, cmap.n_layers + 1
    comps = [c for c in cmap.components if c.role != "layer"]
    small = xr.Dataset(
        {"complete": ("condition", np.zeros(n_r, dtype=bool)),
         "nll": (("condition", "token"), np.full((n_r, n_t), np.nan, dtype=np.float32),
                 {"description": "next-token NLL (nats) from the run's own logits; NaN without a target"}),
         "top1_id": (("condition", "token"), np.full((n_r, n_t), -1, dtype=np.int32),
                     {"description": "argmax of the run's own logits"})},
        coords={"condition": rows.ids, "label": ("condition", [labels.get(i, i) for i in rows.ids]),
                "layer": np.arange(-1, cmap.n_layers), "component": [c.key for c in comps],
                "component_layer": ("component", [c.layer for c in comps]),
                "component_role": ("component", [c.role for c in comps]),
                "token": np.arange(n_t), "window": ("token", sample.window),
                "position": ("token", sample.position), "corpus_offset": ("token", sample.offset),
                "token_id": ("token", sample.ids[sample.window, sample.position].numpy()),
                "token_text": ("token", token_text), "target_id": ("token", sample.target)},
        attrs={"sample": json.dumps(sample.key, sort_keys=True), "twins": json.dumps(rows.twins, sort_keys=True),
               "window_begins": json.dumps([int(b) for b in sample.begins]),
               "layer_note": "layer -1: embedding output (times any embedding multiplier); layer i: output of "
                             "decoder layer i (before the final norm); a skipped layer holds its input"},
    )
    tok = min(chunk_tokens, n_t)
    # one chunk per condition (and block of tokens): processes filling different rows never
    # rewrite each other's chunks
    encoding = {"complete": {"chunks": (1,)}, "nll": {"chunks": (1, tok)}, "top1_id": {"chunks": (1, tok)}}
    big = {"hidden": (("condition", "layer", "token", "d_model"), (n_r, n_l, n_t, d_model), np.float16),
           "component_out": (("condition", "component", "token", "d_model"), (n_r, len(comps), n_t, d_model),
                             np.float16),
           "final_hidden": (("condition", "token", "d_model"), (n_r, n_t, d_model), np.float32)}

    def write(folder: Path) -> None:
        small.to_zarr(str(folder), mode="w-", consolidated=False, encoding=encoding, **ZARR)
        group = zarr.open_group(str(folder), mode="r+", use_consolidated=False, **ZARR)
        for name, (dims, shape, dtype) in big.items():
            chunks = tuple(1 if d == "condition" else tok if d == "token" else s for d, s in zip(dims, shape))
            group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=np.nan,
                               attributes={"_ARRAY_DIMENSIONS": list(dims)})

    _publish(path, ACTIVATIONS, write)


def _lost_rows(path: Path) -> dict[int, str]:
    """Rows of the activations group marked complete with a chunk file missing: row -> which.

    Every chunk of a complete row is written (empty chunks included, see ``capture_condition``),
    so a missing file is damage; a missing chunk would otherwise read back as its fill value."""
    group = _group(path, ACTIVATIONS)
    done = np.flatnonzero(group["complete"][:])
    lost: dict[int, str] = {}
    for name in ROW_ARRAYS:
        arr = group[name]
        sep = getattr(arr.metadata, "dimension_separator", ".") or "."
        grid = [range(math.ceil(s / c)) for s, c in zip(arr.shape[1:], arr.chunks[1:])]
        folder = Path(path) / ACTIVATIONS / name
        for r in done:
            if int(r) in lost:
                continue
            for idx in itertools.product(*grid):
                key = sep.join(map(str, (int(r) // arr.chunks[0], *idx)))  # caches of older versions: one chunk
                if not (folder / key).exists():
                    lost[int(r)] = f"chunk {name}/{key} missing"
                    break
    return lost


def _logit_stats(logits: torch.Tensor, targets: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(nll, argmax) of (n, vocab) logits against targets (-1: none), ``chunk`` rows at a time
    (a float64 copy of every row at once would be the largest allocation of a batch)."""
    n = logits.shape[0]
    nll = np.full(n, np.nan, dtype=np.float32)
    top1 = np.empty(n, dtype=np.int32)
    t = torch.as_tensor(targets)
    for a in range(0, n, chunk):
        x = logits[a:a + chunk].float().cpu().double()  # float64 on the CPU (not every device has it)
        tt = t[a:a + chunk]
        ok = tt >= 0
        picked = x[torch.arange(x.shape[0]), tt.clamp(min=0)]
        val = (torch.logsumexp(x, -1) - picked).float().numpy()
        nll[a:a + chunk] = np.where(ok.numpy(), val, np.nan)
        top1[a:a + chunk] = x.argmax(-1).int().numpy()
    return nll, top1


def capture_condition(iv: Intervener, path: Path, row: int, cond: Condition, sample: Sample, inputs: Inputs,
                      batch_size: int, on_batch=None) -> None:
    """Capture one condition over the sample, batch by batch, into its region of the group.
    The caller holds the row's claim; ``complete`` is written last."""
    with zarr.config.set({"array.write_empty_chunks": True}):  # every chunk on disk: a missing one is damage
        _capture_rows(iv, _group(path, ACTIVATIONS), row, cond, sample, inputs, batch_size, on_batch)


def _capture_rows(iv, group, row, cond, sample, inputs, batch_size, on_batch) -> None:
    comps = [c.key for c in iv.cmap.components if c.role != "layer"]
    n_win = sample.ids.shape[0]
    for w0 in range(0, n_win, batch_size):
        w1 = min(w0 + batch_size, n_win)
        ids = sample.ids[w0:w1]
        cap = capture(iv, ids, cond, **inputs(cond, ids, sample.begins[w0:w1]))
        sel = sample.rows(w0, w1)
        a, b = int(sel[0]), int(sel[-1]) + 1
        w = torch.as_tensor(sample.window[sel] - w0)
        p = torch.as_tensor(sample.position[sel])
        stream = cap.stream()[:, w, p].cpu()  # (layer, token, d)
        group["hidden"][row, :, a:b, :] = stream.numpy().astype(np.float16)
        block = np.full((len(comps), b - a, stream.shape[-1]), np.nan, dtype=np.float16)
        for k, key in enumerate(comps):
            if key in cap.components:
                block[k] = cap.components[key][w, p].cpu().numpy().astype(np.float16)
        group["component_out"][row, :, a:b, :] = block
        group["final_hidden"][row, a:b, :] = cap.residual[-1][w, p].cpu().numpy()
        nll, top1 = _logit_stats(cap.logits[w, p].cpu(), sample.target[sel])
        group["nll"][row, a:b] = nll
        group["top1_id"][row, a:b] = top1
        del cap, stream, block
        if on_batch:
            on_batch(w1 - w0)
    group["complete"][row] = True  # last: a condition interrupted before here is recomputed


def open_activations(store_path: str | Path) -> xr.Dataset | None:
    """The cached activations of a store (lazy), or None when it has none."""
    path = Path(store_path)
    if not _has_group(path, ACTIVATIONS):
        return None
    return xr.open_zarr(str(path), group=ACTIVATIONS, consolidated=False, **ZARR)


def open_diagnostics(store_path: str | Path) -> xr.Dataset | None:
    """The representation diagnostics of a store (lazy), or None when it has none."""
    path = Path(store_path)
    if not _has_group(path, DIAG):
        return None
    return xr.open_zarr(str(path), group=DIAG, consolidated=False, **ZARR)


# -- diagnostics from the cache ----------------------------------------------------------------

@contextmanager
def eager_attention(model: torch.nn.Module):
    """Attention weights are only returned by the eager implementation (sdpa returns None)."""
    before = getattr(model.config, "_attn_implementation", None)
    changed = before not in (None, "eager")
    if changed:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if changed:
            model.set_attn_implementation(before)


def _copy_accuracy(logits: torch.Tensor, ids: np.ndarray, shift: int) -> tuple[float, float]:
    """Top-1 accuracy of next-token predictions inside the first and the second copy."""
    half = ids.shape[1] // 2
    pred = logits.float().cpu().argmax(-1).numpy()[:, shift:]
    hit = pred[:, :-1] == ids[:, 1:]
    return float(hit[:, :half - 1].mean()), float(hit[:, half:].mean())


def retrieval(iv: Intervener, cond: Condition, inputs: Inputs, vocab: int, prefix_id: int | None, *,
              n_seq: int = 16, length: int = 32, seed: int = 0, exclude=(), text=None) -> xr.Dataset:
    """``retrieval_acc`` and ``induction_score(layer, head)`` on repeated random sequences
    (probes.retrieval), the attention pattern read from each attention module's eager output.

    ``text`` (n, length) token ids of real text: adds ``retrieval_text_acc`` (next-token
    accuracy inside the second copy of the text repeated) and ``retrieval_text_first_acc``
    (inside the first copy: what the model predicts without anything to retrieve). Small
    models trained briefly often retrieve nothing from random tokens yet copy real text."""
    from probes.retrieval import induction_scores, repeated_sequences, retrieval_accuracy

    seqs = repeated_sequences(vocab, n_seq, length, seed=seed, exclude=exclude)
    ids = torch.as_tensor(seqs)
    shift = int(prefix_id is not None)
    if shift:
        ids = torch.cat([torch.full((n_seq, 1), prefix_id, dtype=ids.dtype), ids], 1)
    attn = [c for c in iv.cmap.by_role("attention")]
    got: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(_m, _a, out):
            if isinstance(out, tuple) and len(out) > 1 and isinstance(out[1], torch.Tensor):
                got[layer] = out[1].detach().float().cpu()
        return hook

    handles = [iv.model.get_submodule(c.path).register_forward_hook(keep(c.layer)) for c in attn]
    try:
        with eager_attention(iv.model):
            out = iv.run(ids, cond, **inputs(cond, ids, np.arange(n_seq) + 10**6))
    finally:
        for h in handles:
            h.remove()
    acc = retrieval_accuracy(out.logits.float().cpu(), seqs, prefix=shift)
    ds = xr.Dataset({"retrieval_acc": acc})
    if got:
        scores = induction_scores(got, length=length, prefix=shift)
        removed = removed_keys(iv.cmap, cond)
        for i, layer in enumerate(scores["layer"].values):
            if iv.cmap.get(int(layer), "attention").key in removed:
                scores[i] = np.nan  # its attention never reached the network
        ds["induction_score"] = scores
    if text is not None:
        rep = np.concatenate([text, text], axis=1)
        ids = torch.as_tensor(rep)
        if shift:
            ids = torch.cat([torch.full((rep.shape[0], 1), prefix_id, dtype=ids.dtype), ids], 1)
        out = iv.run(ids, cond, **inputs(cond, ids, np.arange(rep.shape[0]) + 2 * 10**6))
        first, second = _copy_accuracy(out.logits, rep, shift)
        ds["retrieval_text_acc"], ds["retrieval_text_first_acc"] = second, first
    return ds


LENS_GRID_WINDOWS = 4
DIAGNOSTICS_FORMAT = 2  # 2: the lens grid (lens_top_id/prob/text); older groups are recomputed


def _lens(model, cmap, hidden: np.ndarray, final: np.ndarray, clean_final: np.ndarray, targets: np.ndarray,
          last: np.ndarray, layers: np.ndarray, grid: np.ndarray | None = None) -> xr.Dataset:
    """Lens metrics of one condition, ``LENS_VALUES`` logits at a time (never layer x token x vocab).

    ``grid``: positions (indices into ``hidden``'s tokens) whose lens top token and its
    probability are kept per layer (``lens_top_id``, ``lens_top_prob``: the app's lens grid)."""
    from probes.logit_lens import lens_metrics

    vocab = model.get_output_embeddings().weight.shape[0]
    n_l, n_t, _ = hidden.shape
    step = max(1, LENS_VALUES // (vocab * (n_l + 2)))
    parts, kl_last = [], []
    grid = np.array([], dtype=int) if grid is None else np.asarray(grid)
    top_id = np.full((n_l, grid.size), -1, dtype=np.int32)
    top_prob = np.full((n_l, grid.size), np.nan, dtype=np.float32)
    for a in range(0, n_t, step):
        b = min(a + step, n_t)
        lens = lens_logits(model, torch.as_tensor(hidden[:, a:b], dtype=torch.float32), cmap).numpy()
        here = np.flatnonzero((grid >= a) & (grid < b))
        if here.size:
            sel = torch.as_tensor(lens[:, grid[here] - a])
            prob, idx = torch.softmax(sel.double(), dim=-1).max(dim=-1)
            top_id[:, here], top_prob[:, here] = idx.numpy(), prob.float().numpy()
        fin = lens_logits(model, torch.as_tensor(final[a:b]), cmap).numpy()
        keep = last[a:b]
        cf = lens_logits(model, torch.as_tensor(clean_final[a:b][keep]), cmap).numpy() if keep.any() else None
        parts.append(lens_metrics({int(l): lens[i] for i, l in enumerate(layers)}, fin, targets[a:b],
                                  per_token=True))
        if cf is not None:
            m = lens_metrics({int(l): lens[i][keep] for i, l in enumerate(layers)}, cf, clean_final=cf,
                             per_token=True)
            kl_last.append(m["lens_kl_to_clean"].values)
    per = xr.concat(parts, dim="token")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = per.mean("token", skipna=True)
        out["lens_kl_last_token"] = ("layer", np.nanmean(np.concatenate(kl_last, axis=1), axis=1)
                                     if kl_last else np.full(n_l, np.nan))
    out["lens_top_id"] = (("layer", "grid_token"), top_id)
    out["lens_top_prob"] = (("layer", "grid_token"), top_prob)
    return out


def _first(values: np.ndarray, layers: np.ndarray, test) -> float:
    hit = np.flatnonzero(test(values))
    return float(layers[hit[0]]) if hit.size else float("nan")


def diagnostics_summary(store_path: str | Path) -> pd.DataFrame:
    """Per condition: the first layer where CKA to clean drops below 0.9, the first layer whose
    lens top-1 agreement exceeds 50%, retrieval accuracy, probe accuracy at the middle layer."""
    ds = open_diagnostics(store_path)
    if ds is None:
        raise DiagnoseError(f"{store_path} has no diagnostics; run `workbench diagnose {store_path}` first")
    layers = ds["layer"].values
    mid = int(ds.attrs.get("middle_layer", layers[len(layers) // 2]))
    recs = []
    for i, c in enumerate(ds["condition"].values):
        rec = {"condition": str(c), "label": str(ds["label"].values[i])}
        if "cka_linear" in ds:
            rec["cka_below_0.9_layer"] = _first(ds["cka_linear"].values[i], layers, lambda v: v < 0.9)
        if "lens_top1" in ds:
            rec["lens_top1_over_half_layer"] = _first(ds["lens_top1"].values[i], layers, lambda v: v > 0.5)
        for name in ("retrieval_acc", "retrieval_text_acc"):
            if name in ds:
                rec[name] = float(ds[name].values[i])
        if "probe_acc" in ds:
            for p in ds["probe"].values:
                rec[f"probe_acc_mid:{p}"] = float(ds["probe_acc"].sel(condition=c, layer=mid, probe=p))
        recs.append(rec)
    return pd.DataFrame.from_records(recs)


# -- the command -------------------------------------------------------------------------------

def _bar(progress: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not progress, console=Console(stderr=True))


def _token_strings(tokenizer, vocab: int) -> list[str]:
    out = []
    for i in range(vocab):
        try:
            out.append(tokenizer.decode([i]))
        except Exception:  # ids past the tokenizer's vocabulary (padded embeddings)
            out.append("")
    return out


def _cache_state(path: Path, sample: Sample, rows: Rows, overwrite: bool, say) -> bool:
    """True when the store holds a usable activations group of this very sample (resume it).

    Call with the layout claim held. Rows marked complete whose chunks are missing are marked
    incomplete (recomputed); a group that lacks its arrays (laid out by a process killed in the
    middle, before layouts were atomic) holds nothing usable and is laid out again."""
    if not _has_group(path, ACTIVATIONS):
        return False
    try:
        group = _group(path, ACTIVATIONS)
        missing = [n for n in ("complete", *ROW_ARRAYS) if n not in group]
        act = None if missing else open_activations(path)
    except Exception as exc:  # unreadable metadata
        missing, act = [f"readable metadata ({type(exc).__name__})"], None
    if act is None:
        say(f"{path}: the activations group is incomplete (no {', '.join(missing)}); laying it out again")
        return False
    same = (json.loads(act.attrs.get("sample", "{}")) == json.loads(json.dumps(sample.key))
            and [str(c) for c in act["condition"].values] == rows.ids)
    if not same:
        if not overwrite:
            raise DiagnoseError(f"{path} already caches activations of another sample or plan "
                                f"({act.attrs.get('sample')}); rerun with the same --tokens/--corpus/--seed, "
                                "or pass --overwrite to replace them")
        return False
    lost = _lost_rows(path)
    if lost:
        say(f"{len(lost)} cached condition(s) failed verification and will be recomputed: "
            + ", ".join(f"{rows.ids[r]} ({why})" for r, why in lost.items()))
        for r in lost:
            group["complete"][r] = False
    return True


def _row_done(path: Path, row: int) -> bool:
    """One row's flag read from disk now (another process may have just written it)."""
    return bool(_group(path, ACTIVATIONS)["complete"][row])


def _digest(ds: xr.Dataset) -> str:
    """sha256 of every variable's name, dtype, shape and values, as read back from disk."""
    h = hashlib.sha256()
    for name in sorted(ds.variables):
        v = np.asarray(ds[name].values)
        h.update(f"{name}|{v.dtype.str}|{v.shape}|".encode())
        if v.dtype.kind in "UOS":
            h.update("\x1f".join(map(str, v.ravel())).encode())
        else:
            h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()


def _valid_diagnostics(path: Path, key: str, say) -> xr.Dataset | None:
    """The stored diagnostics when they were computed with ``key`` and read back intact."""
    old = open_diagnostics(path)
    if old is None or old.attrs.get("key") != key:
        return None
    if "digest" not in old.attrs:
        say(f"{path}: the diagnostics group has no digest (written by an interrupted or older diagnose); "
            "recomputing it")
        return None
    try:
        ok = old.attrs["digest"] == _digest(old)
    except Exception:  # a chunk that fails to decompress
        ok = False
    if not ok:
        say(f"{path}: the diagnostics group failed verification (missing or changed data); recomputing it")
        return None
    return old


def _write_diagnostics(path: Path, out: xr.Dataset, plan: Plan, rows: Rows, labels: dict, key: str,
                       sample: Sample, model: str) -> None:
    """One row per store condition (twins share their activation row's values), written whole
    with its digest, then renamed into place."""
    conds = ["baseline"] + [c.id for c in plan.conditions if c.kind != "baseline"]
    index = [rows.ids.index(rows.twins.get(c, c)) for c in conds]
    out = out.isel(condition=index).assign_coords(
        condition=conds, label=("condition", [labels.get(c, c) for c in conds]),
        activation_row=("condition", [rows.ids[i] for i in index]))
    out.attrs.update({"key": key, "sample": json.dumps(sample.key, sort_keys=True), "model": model})

    def write(folder: Path) -> None:
        out.to_zarr(str(folder), mode="w-", consolidated=False, **ZARR)
        back = xr.open_zarr(str(folder), consolidated=False, **ZARR)
        zarr.open_group(str(folder), mode="r+", use_consolidated=False, **ZARR).attrs["digest"] = _digest(back)

    _publish(path, DIAG, write)


DEFAULT_TOKENS = 2048
# the default settings and ``--full``'s (see docs/diagnose.md for what each costs)
FAST = {"map_methods": ("pca",), "probe_layers": "middle"}
FULL = {"map_methods": ("pca", "umap"), "probe_layers": "all"}
LAYOUT, DIAG_CLAIM = -1, -2  # claim indices of the activations layout and the diagnostics group


def sample_capacity(n_tokens: int, context: int, prefix_id: int | None) -> int:
    """Token positions a corpus of ``n_tokens`` offers a sample (its non-overlapping windows'
    text positions); 0 when it has fewer than the 2 windows a sample needs."""
    span = context - int(prefix_id is not None)
    grid = n_tokens // span if span > 0 else 0
    return grid * span if grid >= 2 else 0


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def diagnose(store_path: str | Path, *, tokens: int | None = None, corpus: str | None = None,
             diagnostics=DIAGNOSTICS, batch_size: int = 8, progress: bool = True, seed: int = 0,
             windows: int | None = None, max_diag_tokens: int = 4096, map_layer: int | None = None,
             map_methods=None, probe_layers: str | None = None, full: bool = False,
             device: str | None = None, chunk_tokens: int = 1024, overwrite: bool = False, on_condition=None,
             log=None) -> xr.Dataset | None:
    """Cache activations of the store's conditions and write representation diagnostics.

    ``tokens``: sample size (positions; default ``DEFAULT_TOKENS``, or every position the
    corpus offers when it holds fewer, said on ``log``); ``windows``: how many windows they come
    from (default one per quarter-window of positions, at most the corpus's window grid).
    ``diagnostics``: any of ``DIAGNOSTICS`` (empty: cache only). ``max_diag_tokens``:
    diagnostics read at most this many cached tokens (a seeded subset). ``full``: the slow
    settings (``FULL``) where ``map_methods`` / ``probe_layers`` are not given; the default is
    ``FAST``. Returns the diagnostics dataset (None when none were asked for).

    Several processes may diagnose one store at once: claims (``workbench.claims``) give each
    activation row, the layout and the diagnostics group to one process at a time. Groups are
    written into a temporary folder and renamed into place; rows are flagged complete last; a
    rerun recomputes rows whose chunks are missing and diagnostics that do not read back intact.
    """
    path = Path(store_path)
    say = log or _stderr
    preset = FULL if full else FAST
    map_methods = tuple(preset["map_methods"] if map_methods is None else map_methods)
    probe_layers = preset["probe_layers"] if probe_layers is None else probe_layers
    wanted = tuple(d for d in (diagnostics.split(",") if isinstance(diagnostics, str) else diagnostics) if d)
    unknown = sorted(set(wanted) - set(DIAGNOSTICS))
    if unknown:
        raise DiagnoseError(f"unknown diagnostics {unknown}; valid: {', '.join(DIAGNOSTICS)}")
    if probe_layers not in ("middle", "all"):
        raise DiagnoseError(f"probe_layers {probe_layers!r} is invalid; valid: middle, all")
    if (tokens is not None and tokens < 8) or batch_size < 1 or chunk_tokens < 1:
        raise DiagnoseError("tokens must be at least 8, batch_size and chunk_tokens at least 1")
    ds = run_store.open_store(path)
    attrs = ds.attrs
    plan = Plan.model_validate_json(attrs["plan"])
    proto = json.loads(attrs["protocol"])
    loaded = load_model(attrs["model"], device=device or attrs.get("device", "cpu"), dtype=attrs.get("dtype", "float32"))
    check_model(loaded, attrs)
    model = loaded.model
    iv = Intervener(model)
    cmap = iv.cmap
    scored, reference, avoid = rebuild_inputs(ds, loaded.tokenizer, corpus)
    if tokens is None:
        room = sample_capacity(scored.n_tokens, int(proto["context"]), proto.get("prefix_id"))
        tokens = min(DEFAULT_TOKENS, room) if room >= 8 else DEFAULT_TOKENS  # too short: make_sample says why
        if tokens < DEFAULT_TOKENS:
            say(f"diagnose: corpus {scored.name!r} offers {room:,} sample positions, fewer than the default "
                f"{DEFAULT_TOKENS:,}; sampling all {tokens:,}")
    sample = make_sample(scored, int(proto["context"]), proto.get("prefix_id"), tokens, seed=seed, windows=windows)
    rows = activation_rows(plan)
    labels = dict(zip([str(c) for c in ds["condition"].values], [str(x) for x in ds["label"].values]))
    labels["baseline"] = BASELINE.label
    inputs = Inputs(iv, reference, proto, plan, avoid)
    vocab = model.get_output_embeddings().weight.shape[0]
    strings = _token_strings(loaded.tokenizer, vocab)
    claims = Claims(path.with_name(f"{path.name}.diagnose"))  # locks in .STORE.diagnose.claims beside it
    try:
        claims.wait_claim(LAYOUT)  # one process checks and lays out; the others then resume it
        if not _cache_state(path, sample, rows, overwrite, say):
            d_model = model.get_input_embeddings().weight.shape[1]
            text = [strings[int(t)] for t in sample.ids[sample.window, sample.position]]
            _layout(path, sample, rows, cmap, text, d_model, chunk_tokens, labels)
        claims.release(LAYOUT)
        todo = [r for r, ok in enumerate(open_activations(path)["complete"].values) if not ok]
        bar = _bar(progress)
        with bar if progress else nullcontext():
            t_c = bar.add_task("activations", total=len(rows.ids), completed=len(rows.ids) - len(todo))
            t_w = bar.add_task("windows", total=sample.ids.shape[0])

            def fill(r: int) -> None:  # with row r claimed
                if not _row_done(path, r):
                    bar.reset(t_w, total=sample.ids.shape[0])
                    capture_condition(iv, path, r, rows.conditions[r], sample, inputs, batch_size,
                                      on_batch=lambda n: bar.advance(t_w, n))
                    if on_condition:
                        on_condition(r, rows.conditions[r])
                claims.release(r)
                bar.advance(t_c)

            busy = []
            for r in todo:
                if claims.try_claim(r):
                    fill(r)
                else:
                    busy.append(r)
            for r in busy:  # rows another process holds: wait for it to finish (or die), then check
                claims.wait_claim(r)
                fill(r)
        done = None
        if wanted:
            key = json.dumps({"format": DIAGNOSTICS_FORMAT, "sample": sample.key, "diagnostics": sorted(wanted),
                              "max_diag_tokens": max_diag_tokens, "map_layer": map_layer,
                              "map_methods": list(map_methods), "probe_layers": probe_layers,
                              "plan_hash": attrs.get("plan_hash")}, sort_keys=True)
            claims.wait_claim(DIAG_CLAIM)  # one process computes; the others then find it done
            done = _valid_diagnostics(path, key, say)
            if done is None:
                out = compute_diagnostics(path, iv, loaded.tokenizer, sample, rows, inputs, wanted, proto,
                                          strings=strings, max_diag_tokens=max_diag_tokens, map_layer=map_layer,
                                          map_methods=map_methods, probe_layers=probe_layers, seed=seed,
                                          batch_size=batch_size, progress=progress)
                _write_diagnostics(path, out, plan, rows, labels, key, sample, attrs.get("model", ""))
                done = open_diagnostics(path)
    finally:
        claims.release_all()
    if bool(open_activations(path)["complete"].all()):
        claims.remove()
    return done


def compute_diagnostics(path: Path, iv: Intervener, tokenizer, sample: Sample, rows: Rows, inputs: Inputs,
                        wanted, proto: dict, *, strings: list[str], max_diag_tokens: int, map_layer, map_methods,
                        probe_layers: str, seed: int, batch_size: int, progress: bool) -> xr.Dataset:
    """Diagnostics over the activation rows (one per distinct edit), from the cache and the model."""
    from probes.cka import cka_to_clean
    from probes.linear_probe import probe_layers as fit_probes, transfer
    from probes.norm_drift import cos_to_clean, layer_inputs, norm_ratio, resid_norm, write_norm
    from probes.projection import shared_map
    from probes.token_labels import token_labels

    model, cmap = iv.model, iv.cmap
    act = open_activations(path)
    layers = act["layer"].values
    n_t = sample.n_tokens
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(n_t, size=max_diag_tokens, replace=False)) if n_t > max_diag_tokens else np.arange(n_t)
    last = sample.position[keep] == sample.ids.shape[1] - 1
    targets = sample.target[keep]
    mid = int(cmap.n_layers // 2) if map_layer is None else int(map_layer)
    mid_i = int(np.flatnonzero(layers == mid)[0]) if mid in layers else None
    if mid_i is None:
        raise DiagnoseError(f"map layer {mid} is not a layer of this model (-1..{cmap.n_layers - 1})")
    comp_keys = [str(k) for k in act["component"].values]
    comp_layers = [int(x) for x in act["component_layer"].values]

    def hidden(r):
        return act["hidden"].isel(condition=r, token=keep).values.astype(np.float32)

    def da(x, at=layers):
        return xr.DataArray(x, dims=("layer", "token", "d_model"), coords={"layer": at})

    labels = groups = tok_ids = None
    if "probes" in wanted:
        win_ids = sample.ids.numpy()
        full = token_labels(win_ids, strings)
        flat = sample.window[keep] * win_ids.shape[1] + sample.position[keep]
        labels = full.isel(token=flat).drop_vars(["token", "window", "position_in_window", "token_id"])
        labels = labels.assign_coords(token=np.arange(keep.size))
        groups, tok_ids = sample.window[keep], win_ids.ravel()[flat]
    # the lens grid (top token per layer and position) covers the sampled positions of the first
    # LENS_GRID_WINDOWS windows: enough to browse, small on disk
    grid = np.flatnonzero(np.isin(sample.window[keep], np.unique(sample.window[keep])[:LENS_GRID_WINDOWS]))
    clean = hidden(0)
    shift = int(proto.get("prefix_id") is not None)
    n_text = min(16, sample.ids.shape[0])
    text = sample.ids[:n_text, shift:shift + 32].numpy() if sample.ids.shape[1] - shift >= 32 else None
    fitted = None
    per_row: list[dict] = []
    seconds: dict[str, float] = {}
    maps_in: dict[str, np.ndarray] = {}
    map_keep = np.sort(rng.choice(keep.size, size=min(keep.size, max(3, 5000 // len(rows.ids))), replace=False))
    bar = _bar(progress)
    with bar if progress else nullcontext():
        task = bar.add_task("diagnostics", total=len(rows.ids))
        for r, cond in enumerate(rows.conditions):
            run = clean if r == 0 else hidden(r)
            vals: dict[str, xr.DataArray] = {}
            tick = time.perf_counter()

            def took(kind):
                nonlocal tick
                now = time.perf_counter()
                seconds[kind] = seconds.get(kind, 0.0) + now - tick
                tick = now

            if "cka" in wanted:
                c = cka_to_clean({"x": da(run)}, da(clean)).isel(condition=0, drop=True)
                vals.update(cka_linear=c["cka_linear"], cka_debiased=c["cka_debiased"])
                took("cka")
            if "norms" in wanted:
                vals.update(resid_norm=resid_norm(da(run)), norm_ratio=norm_ratio(da(run), da(clean)),
                            cos_to_clean=cos_to_clean(da(run), da(clean)))
                outs = act["component_out"].isel(condition=r, token=keep).values.astype(np.float32)
                inp = layer_inputs(da(run[1:], layers[1:]), run[0])
                vals["write_norm"] = write_norm(outs, inp, comp_layers, comp_keys).drop_vars("layer")
                del outs, inp
                took("norms")
            if "lens" in wanted:
                final = act["final_hidden"].isel(condition=r, token=keep).values
                clean_final = final if r == 0 else act["final_hidden"].isel(condition=0, token=keep).values
                lens = _lens(model, cmap, run, final, clean_final, targets, last, layers, grid)
                vals.update({k: lens[k] for k in VARIABLES["lens"] if k in lens})
                token = keep[grid]  # the grid's positions, as the activations' token index
                at = {"layer": layers, "lens_token": token}
                vals["lens_top_id"] = xr.DataArray(lens["lens_top_id"].values, dims=("layer", "lens_token"), coords=at)
                vals["lens_top_prob"] = xr.DataArray(lens["lens_top_prob"].values, dims=("layer", "lens_token"),
                                                     coords=at)
                vals["lens_top_text"] = xr.DataArray(
                    np.array([strings[i] if 0 <= i < len(strings) else "" for i in
                              lens["lens_top_id"].values.ravel()], dtype=str).reshape(lens["lens_top_id"].shape),
                    dims=("layer", "lens_token"), coords=at)
                took("lens")
            if "probes" in wanted:
                if r == 0:
                    res, fitted = fit_probes(da(run), labels, groups, token_ids=tok_ids, seed=seed, return_probes=True)
                else:
                    at = slice(None) if probe_layers == "all" else slice(mid_i, mid_i + 1)
                    part = fit_probes(da(run)[at], labels, groups, token_ids=tok_ids, seed=seed)
                    res = part.reindex(layer=layers)
                vals.update(probe_acc=res["probe_acc"], probe_selectivity=res["probe_selectivity"])
                vals["probe_transfer_acc"] = transfer(fitted, {"x": da(run)}, labels)["probe_transfer_acc"].isel(
                    condition=0, drop=True)
                took("probes")
            if "retrieval" in wanted:
                ret = retrieval(iv, cond, inputs, len(strings), proto.get("prefix_id"), seed=seed,
                                exclude=[t for t in (tokenizer.all_special_ids or []) if t < len(strings)],
                                text=text)
                vals.update({k: ret[k] for k in ret.data_vars})
                took("retrieval")
            if "state" in wanted and any(c.role in STATE_ROLES for c in cmap.components):
                ids = sample.ids[:STATE_WINDOWS]
                try:
                    sn = state_norms(model, ids, cmap, cond, intervener=iv,
                                     **inputs(cond, ids, sample.begins[:STATE_WINDOWS]))
                    s = sn.mean("row")
                    vals["state_norm"] = xr.DataArray(s.values, dims="layer", coords={"layer": s["layer"].values})
                except StateError:
                    pass
                took("state")
            if "maps" in wanted:
                maps_in[rows.ids[r]] = run[mid_i][map_keep]
            per_row.append(vals)
            del run
            bar.advance(task)
    from probes._arrays import stack_conditions

    out = stack_conditions({rows.ids[r]: xr.Dataset(v) for r, v in enumerate(per_row)})
    if "maps" in wanted and maps_in:
        tick = time.perf_counter()
        parts = []
        for method in map_methods:
            m = shared_map(maps_in, method, max_points=len(maps_in) * map_keep.size, seed=seed)
            parts.append(m["map_xy"].assign_coords(token=keep[map_keep]))
        out["map_xy"] = xr.concat(parts, dim=pd.Index(list(map_methods), name="method"))
        seconds["maps"] = time.perf_counter() - tick
    out.attrs.update({"middle_layer": mid, "map_layer": mid, "map_methods": ",".join(map_methods),
                      "probe_layers": f"clean: every layer; ablations: {probe_layers} layer(s)",
                      "tokens_used": int(keep.size), "lens_kl_last_token": "KL(clean final || lens) at the "
                      "last position of each window, through the final norm",
                      "retrieval": "16 random sequences of 32 distinct tokens, repeated; eager attention",
                      "state_norm": f"mean over the first {STATE_WINDOWS} sample windows of the state after "
                                    "their last token",
                      "retrieval_text": "the first 32 text tokens of up to 16 sample windows, repeated",
                      "layer_note": "layer -1: the embedding output",
                      "seconds": json.dumps({k: round(v, 2) for k, v in seconds.items()})})
    return out
