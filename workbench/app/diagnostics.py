"""What the Representations and Embedding map pages read from a store's ``diagnostics`` and
``activations`` groups (written by ``workbench diagnose STORE``), as tables ready to draw.

No torch and no model: the groups are opened with xarray directly (``workbench.diagnose``
imports torch), and the only computation is CKA between cached activations (probes.cka).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

ACTIVATIONS, DIAGNOSTICS = "activations", "diagnostics"
ZARR = {"zarr_format": 2}
DIAGNOSE_HINT = "workbench diagnose {path}"
# The per-token logit lens the grid draws; diagnose writes them when it keeps the lens's top token.
LENS_GRID = ("lens_top_id", "lens_top_prob")
LENS_TEXT = "lens_top_text"
LAYER_CURVES = {
    "cka_linear": "CKA to the clean run (linear)", "cka_debiased": "CKA to the clean run (debiased)",
    "resid_norm": "residual norm", "norm_ratio": "norm / clean norm", "cos_to_clean": "cosine to clean",
    "lens_kl": "lens KL to own output", "lens_top1": "lens top-1 agreement", "lens_ce": "lens cross-entropy",
    "lens_entropy": "lens entropy", "lens_kl_last_token": "lens KL at the last token (to clean final)",
    "state_norm": "recurrent state norm"}


def open_group(path: str | Path, name: str) -> xr.Dataset | None:
    """A zarr group of the store (lazy), or None when the store has none."""
    path = Path(path)
    if not (path / name / ".zgroup").exists():
        return None
    return xr.open_zarr(str(path), group=name, consolidated=False, **ZARR)


def group_stamp(path: str | Path, name: str) -> int:
    """Changes when the group is rewritten (cache key)."""
    p = Path(path) / name
    try:
        return max(q.stat().st_mtime_ns for q in (p, *p.glob("*/.zarray"), p / ".zattrs") if q.exists())
    except (OSError, ValueError):
        return 0


class Unreadable(ValueError):
    """A diagnostics or activations group with a damaged or missing chunk."""


def unreadable(path: str | Path, name: str, exc: Exception) -> Unreadable:
    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return Unreadable(f"The {name} of {Path(path).name} cannot be read (a damaged or missing chunk: "
                      f"{type(exc).__name__}{': ' + first if first else ''}). Rerun `{DIAGNOSE_HINT.format(path=path)}` "
                      "to rewrite them; the run's perplexity and task results are not affected.")


def read_diagnostics(path: str | Path) -> xr.Dataset | None:
    """The diagnostics group, loaded (it is small: per condition, layer, probe, head, map point);
    ``Unreadable`` with one clear line when a chunk of it is damaged."""
    try:
        ds = open_group(path, DIAGNOSTICS)
        return None if ds is None else ds.load()
    except Exception as exc:  # blosc, zarr or key errors from a damaged chunk
        raise unreadable(path, DIAGNOSTICS, exc) from None


def token_table(path: str | Path) -> pd.DataFrame | None:
    """The activations' sampled tokens: window, position, text, ids, and the text around each.

    ``context``: the sampled tokens of the same window within 6 positions before and 3 after,
    the token itself in brackets; "·" marks positions the sample skipped."""
    act = open_group(path, ACTIVATIONS)
    if act is None:
        return None
    cols = {c: act[c].values for c in ("window", "position", "token_id", "token_text", "target_id", "corpus_offset")
            if c in act.coords}
    frame = pd.DataFrame(cols)
    frame["token"] = act["token"].values
    frame["token_text"] = frame.get("token_text", frame.get("token_id", "")).astype(str)
    frame["context"] = _contexts(frame)
    return frame


def _show(text: str) -> str:
    return text.replace("\n", "⏎").replace("\t", "→")


def _contexts(frame: pd.DataFrame, before: int = 6, after: int = 3) -> list[str]:
    out = [""] * len(frame)
    for _, part in frame.groupby("window", sort=False):
        part = part.sort_values("position")
        pos, text, idx = part["position"].to_numpy(), part["token_text"].map(_show).to_numpy(), part.index.to_numpy()
        for k in range(len(part)):
            lo = np.searchsorted(pos, pos[k] - before)
            hi = np.searchsorted(pos, pos[k] + after, side="right")
            pieces, prev = [], None
            for j in range(lo, hi):
                if prev is not None and pos[j] != prev + 1:
                    pieces.append("·")
                pieces.append(f"[{text[j]}]" if j == k else text[j])
                prev = pos[j]
            out[idx[k]] = "".join(pieces)
    return out


def condition_choices(diag: xr.Dataset) -> dict[str, str]:
    """Display label -> condition id of the diagnosed conditions."""
    ids = [str(c) for c in diag["condition"].values]
    labels = [str(x) for x in diag["label"].values] if "label" in diag.coords else ids
    return {(lab if labels.count(lab) == 1 else f"{lab} [{cid}]"): cid for cid, lab in zip(ids, labels)}


def labels_of(diag: xr.Dataset) -> dict[str, str]:
    return {v: k for k, v in condition_choices(diag).items()}


def layer_frame(diag: xr.Dataset, variables, conditions) -> pd.DataFrame:
    """Long table (condition, label, variable, layer, value) of (condition, layer) variables."""
    names = labels_of(diag)
    rows = []
    for var in variables:
        if var not in diag or set(diag[var].dims) != {"condition", "layer"}:
            continue
        da = diag[var].sel(condition=list(conditions)).transpose("condition", "layer")
        for cid, vals in zip(da["condition"].values, da.values):
            for layer, v in zip(da["layer"].values, vals):
                rows.append({"condition": str(cid), "label": names[str(cid)], "variable": var,
                             "measure": LAYER_CURVES.get(var, var), "layer": int(layer), "value": float(v)})
    return pd.DataFrame(rows, columns=["condition", "label", "variable", "measure", "layer", "value"])


def probe_frame(diag: xr.Dataset, conditions) -> pd.DataFrame:
    """Long table of probe accuracy, selectivity and transfer accuracy by layer and probe."""
    names = labels_of(diag)
    parts = []
    for var in ("probe_acc", "probe_selectivity", "probe_transfer_acc"):
        if var in diag:
            f = diag[var].sel(condition=list(conditions)).to_dataframe(name="value").reset_index()
            parts.append(f.assign(variable=var)[["condition", "layer", "probe", "variable", "value"]])
    if not parts:
        return pd.DataFrame(columns=["condition", "label", "layer", "probe", "variable", "value"])
    out = pd.concat(parts, ignore_index=True)
    out["condition"] = out["condition"].astype(str)
    out["label"] = out["condition"].map(names)
    return out


def write_frame(diag: xr.Dataset, conditions) -> pd.DataFrame:
    """write_norm(condition, component) with the component's layer and role from its key."""
    if "write_norm" not in diag:
        return pd.DataFrame(columns=["condition", "label", "component", "role", "layer", "value"])
    names = labels_of(diag)
    f = diag["write_norm"].sel(condition=list(conditions)).to_dataframe(name="value").reset_index()
    f["condition"] = f["condition"].astype(str)
    f["label"] = f["condition"].map(names)
    f["role"] = [str(k).split("@")[0] for k in f["component"]]
    f["layer"] = [int(str(k).split("@")[1]) if "@" in str(k) else -1 for k in f["component"]]
    return f[["condition", "label", "component", "role", "layer", "value"]]


def retrieval_frame(diag: xr.Dataset) -> pd.DataFrame:
    """One row per condition: retrieval accuracy on random and on real repeated text."""
    names = labels_of(diag)
    out = pd.DataFrame({"condition": [str(c) for c in diag["condition"].values]})
    out["label"] = out["condition"].map(names)
    for var in ("retrieval_acc", "retrieval_text_acc", "retrieval_text_first_acc"):
        if var in diag and diag[var].dims == ("condition",):
            out[var] = diag[var].values.astype(float)
    return out


def induction_frame(diag: xr.Dataset, condition: str) -> pd.DataFrame:
    if "induction_score" not in diag:
        return pd.DataFrame(columns=["layer", "head", "value"])
    f = diag["induction_score"].sel(condition=condition).to_dataframe(name="value").reset_index()
    return f[["layer", "head", "value"]]


# -- CKA between conditions or models, from the cached activations -----------------------------

def activation_row(path: str | Path, condition: str) -> int:
    """The activations row holding ``condition`` (twins share the row of their first twin)."""
    act = open_group(path, ACTIVATIONS)
    if act is None:
        raise ValueError(f"{path} has no activations; run `{DIAGNOSE_HINT.format(path=path)}`")
    twins = json.loads(act.attrs.get("twins", "{}"))
    rows = [str(c) for c in act["condition"].values]
    row_id = twins.get(condition, condition)
    if row_id not in rows:
        raise ValueError(f"condition {condition!r} has no cached activations in {path}; cached: {', '.join(rows)}")
    return rows.index(row_id)


def shared_tokens(a: pd.DataFrame, b: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Token indices of two samples that are the same input: the same corpus offset and token id
    (two stores of one corpus and seed share them all; different tokenizers share few)."""
    key_a = pd.MultiIndex.from_arrays([a["corpus_offset"], a["token_id"]])
    key_b = pd.MultiIndex.from_arrays([b["corpus_offset"], b["token_id"]])
    common = key_a.intersection(key_b)
    return (a["token"].to_numpy()[key_a.get_indexer(common)], b["token"].to_numpy()[key_b.get_indexer(common)])


def cka_between(path_a, cond_a: str, path_b, cond_b: str, *, max_tokens: int = 512, seed: int = 0,
                debiased: bool = False) -> xr.DataArray:
    """Layer x layer CKA between two (store, condition) pairs on their shared tokens, at most
    ``max_tokens`` of them (a seeded subset). Raises ValueError when they share too few."""
    from probes.cka import cka_matrix

    ta, tb = token_table(path_a), token_table(path_b)
    if ta is None or tb is None:
        missing = path_a if ta is None else path_b
        raise ValueError(f"{missing} has no activations; run `{DIAGNOSE_HINT.format(path=missing)}`")
    ia, ib = (ta["token"].to_numpy(), tb["token"].to_numpy()) if Path(path_a) == Path(path_b) else shared_tokens(ta, tb)
    if len(ia) < 8:
        raise ValueError(f"the two stores share {len(ia)} sampled tokens (same corpus offset and token id); CKA "
                         "needs the same inputs: diagnose both on the same corpus with the same --tokens and --seed")
    if len(ia) > max_tokens:
        pick = np.sort(np.random.default_rng(seed).choice(len(ia), size=max_tokens, replace=False))
        ia, ib = ia[pick], ib[pick]

    def hidden(path, cond, idx):
        act = open_group(path, ACTIVATIONS)
        h = act["hidden"].isel(condition=activation_row(path, cond)).isel(token=np.sort(idx))
        order = np.argsort(np.argsort(idx))  # back to the pairing order
        try:
            return h.isel(token=order).astype(np.float64).transpose("layer", "token", "d_model").load()
        except Exception as exc:  # a damaged chunk of the cached activations
            raise unreadable(path, ACTIVATIONS, exc) from None

    out = cka_matrix(hidden(path_a, cond_a, ia), hidden(path_b, cond_b, ib), debiased=debiased)
    out.attrs["tokens"] = int(len(ia))
    return out


def cka_frame(m: xr.DataArray) -> pd.DataFrame:
    f = m.to_dataframe(name="cka").reset_index()
    return f[["layer_a", "layer_b", "cka"]]


# -- logit-lens grid ----------------------------------------------------------------------------

GRID_DIM = "lens_token"  # the grid's own positions (a subset of the sample's tokens)


def grid_step(n_layers: int, n_panels: int, budget: int = 1400) -> int:
    """Pixels per layer row of the lens grid: 22, shrinking (to 6) so that every panel together
    stays within ``budget`` pixels (a deep model's grid ran to 5,800 px)."""
    return int(np.clip(budget // max(1, n_layers * n_panels), 6, 22))


def has_lens_grid(diag: xr.Dataset) -> bool:
    return all(v in diag and set(diag[v].dims) == {"condition", "layer", GRID_DIM} for v in LENS_GRID)


def lens_grid(diag: xr.Dataset, tokens: pd.DataFrame, conditions, window: int) -> pd.DataFrame:
    """(condition, layer, position) cells of one sample window: the lens's top token and its
    probability, the input token, and whether the top token is the next token."""
    names = labels_of(diag)
    tok = tokens.set_index("token")
    mine = tok[tok["window"] == window].sort_values("position")
    have = [t for t in mine.index if t in set(diag[GRID_DIM].values)]
    rows = []
    for cid in conditions:
        at = {"condition": cid, GRID_DIM: have}
        top = diag[LENS_GRID[0]].sel(at).transpose("layer", GRID_DIM).values
        prob = diag[LENS_GRID[1]].sel(at).transpose("layer", GRID_DIM).values
        text = (diag[LENS_TEXT].sel(at).transpose("layer", GRID_DIM).values
                if LENS_TEXT in diag else top.astype(int).astype(str))
        for li, layer in enumerate(diag["layer"].values):
            for ti, t in enumerate(have):
                rows.append({"condition": cid, "label": names[cid], "layer": int(layer),
                             "position": int(mine.loc[t, "position"]), "input": _show(str(mine.loc[t, "token_text"])),
                             "top": _show(str(text[li, ti])), "top_id": int(top[li, ti]), "prob": float(prob[li, ti]),
                             "is_next": bool(int(top[li, ti]) == int(mine.loc[t, "target_id"]))})
    return pd.DataFrame(rows)


# -- embedding map --------------------------------------------------------------------------

_WORD = re.compile(r"^\s?[A-Za-z]+$")


def _word_class(texts) -> list[str]:
    """WordNet class of tokens that are whole words (' house'); pieces and symbols: 'not a word'."""
    from probes.token_labels import load_lexicon

    lex = load_lexicon()
    out = []
    for t in texts:
        if _WORD.match(t) and (t.startswith(" ") or t[:1].isupper()):
            out.append(lex.get(t.strip().lower(), "other"))
        else:
            out.append("not a word")
    return out


def position_bucket(position, edges=(0, 8, 64, 256)) -> list[str]:
    from probes.token_labels import bucket_names

    names = bucket_names(edges)
    return [names[i] for i in np.searchsorted(np.asarray(edges), np.asarray(position), side="right") - 1]


COLOUR_BY = {"condition": "the condition (run) each point comes from",
             "next token": "the token that follows (the 10 most frequent; else other)",
             "word class": "WordNet class of tokens that are whole words",
             "position": "position in the window (bucketed)",
             "prediction": "whether that run's top prediction is the next token"}


def map_frame(path: str | Path, diag: xr.Dataset, method: str, conditions) -> pd.DataFrame:
    """Points of the shared map for ``conditions``: x, y, the token, its context and the labels
    the page can colour by (see ``COLOUR_BY``); ``Unreadable`` when the activations are damaged."""
    try:
        return _map_frame(path, diag, method, conditions)
    except (KeyError, Unreadable):
        raise
    except Exception as exc:  # blosc or zarr errors from a damaged chunk of the activations
        raise unreadable(path, ACTIVATIONS, exc) from None


def _map_frame(path: str | Path, diag: xr.Dataset, method: str, conditions) -> pd.DataFrame:
    tokens = token_table(path)
    m = diag["map_xy"].sel({"method": method, "condition": list(conditions)})
    names = labels_of(diag)
    act = open_group(path, ACTIVATIONS)
    top1 = act["top1_id"].load() if act is not None and "top1_id" in act else None
    tok = tokens.set_index("token")
    parts = []
    for cid in m["condition"].values:
        xy = m.sel(condition=cid).transpose("token", "axis").values
        idx = m["token"].values
        f = tok.loc[idx, ["window", "position", "token_text", "target_id", "context"]].reset_index()
        f["x"], f["y"] = xy[:, 0], xy[:, 1]
        f["condition"], f["label"] = str(cid), names[str(cid)]
        if top1 is not None:
            row = activation_row(path, str(cid))
            pred = top1.isel(condition=row).values[idx]
            f["prediction"] = np.where(f["target_id"] < 0, "no next token",
                                       np.where(pred == f["target_id"], "right", "wrong"))
        parts.append(f)
    out = pd.concat(parts, ignore_index=True).dropna(subset=["x", "y"])
    texts = dict(zip(tokens["token_id"], tokens["token_text"]))
    nxt = out["target_id"].map(lambda t: texts.get(t, f"id {t}") if t >= 0 else "(end)")
    frequent = nxt.value_counts().index[:10]
    out["next token"] = [_show(n).replace(" ", "␣") if n in set(frequent) else "other" for n in nxt]
    out["word class"] = _word_class(out["token_text"])
    out["pos"] = out["position"]
    out["position"] = position_bucket(out["position"])
    out["token_text"] = out["token_text"].map(_show)
    return out
