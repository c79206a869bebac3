"""Probe targets computed offline from the tokens and their text, one integer code per token.

Each label is a variable over ``token`` holding codes into its ``classes`` attribute; -1
means the token has no label (e.g. the last token of a window has no next token). Windows
are contiguous runs of one ``window`` id, tokens in order.

- ``next_token``: the next token if it is one of the ``top_k`` most frequent token ids (of
  the given tokens, or ``frequent``), else "other".
- ``repeat``: whether the token id already occurred earlier in the same window (copying /
  induction can use it).
- ``position``: position in the window, bucketed (0-7, 8-63, 64-255, 256+ by default).
- ``word_start``: "initial" if the token begins a word, "continuation" if it begins inside one,
  "non-word" if it holds no letter. Words are runs of letters in the window's decoded text, so a
  leading space, a newline or punctuation before the token all mark a word start.
- ``word_class``: noun / verb / adjective / adverb / other, the WordNet class of the word the
  token belongs to (every piece of a word gets the word's class), from the shipped lexicon
  ``data/lexicon/wordnet_pos.tsv``; words it lacks (function words, names, contractions) are
  "other".

``token_strings[i]`` is the tokenizer's decode of id i alone (byte-level BPE pieces of one
character decode to U+FFFD and count as non-word).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import xarray as xr

from workbench.databuild.lexicon import WORD
from workbench.paths import data_dir

WORD_START = ["initial", "continuation", "non-word"]
WORD_CLASS = ["noun", "verb", "adjective", "adverb", "other"]
REPEAT = ["new", "repeat"]


def lexicon_path() -> Path:
    return data_dir() / "lexicon" / "wordnet_pos.tsv"


@lru_cache(maxsize=4)
def load_lexicon(path: str | Path | None = None) -> dict[str, str]:
    """word -> word class from a ``word<TAB>pos`` file (the shipped WordNet lexicon by default)."""
    rows = Path(path or lexicon_path()).read_text("utf-8").splitlines()[1:]
    return dict(r.split("\t", 1) for r in rows if r)


def bucket_names(edges: Sequence[int]) -> list[str]:
    edges = list(edges)
    return [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])] + [f"{edges[-1]}+"]


def _windows(ids: np.ndarray, window) -> tuple[np.ndarray, np.ndarray]:
    """(window id per token, position in its window)."""
    n = ids.shape[0]
    w = np.zeros(n, dtype=np.int64) if window is None else np.asarray(window).ravel()
    if w.shape[0] != n:
        raise ValueError(f"window must have one id per token ({n}), got {w.shape[0]}")
    new = np.r_[True, w[1:] != w[:-1]] if n else np.zeros(0, dtype=bool)
    starts = np.flatnonzero(new)
    run = np.cumsum(new) - 1
    return w, np.arange(n) - starts[run]


def _word_labels(strings: list[str], lexicon: Mapping[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """word_start and word_class codes for the tokens of one window."""
    text = "".join(strings)
    owner = np.full(len(text), -1, dtype=np.int64)  # char -> index of the word it belongs to
    spans = [m.span() for m in WORD.finditer(text)]
    for k, (s, e) in enumerate(spans):
        owner[s:e] = k
    classes = []
    for s, e in spans:
        word = text[s:e].lower().replace("’", "'")
        cls = lexicon.get(word) or (lexicon.get(word[:-2]) if word.endswith("'s") else None)
        classes.append(WORD_CLASS.index(cls) if cls in WORD_CLASS else WORD_CLASS.index("other"))
    start = np.full(len(strings), WORD_START.index("non-word"))
    wclass = np.full(len(strings), WORD_CLASS.index("other"))
    pos = 0
    for i, piece in enumerate(strings):
        inside = np.flatnonzero(owner[pos:pos + len(piece)] >= 0)
        if inside.size:
            p = pos + inside[0]
            k = owner[p]
            start[i] = WORD_START.index("initial" if p == spans[k][0] else "continuation")
            wclass[i] = classes[k]
        pos += len(piece)
    return start, wclass


def token_labels(token_ids, token_strings: Sequence[str], window=None, *, top_k: int = 20,
                 frequent: Sequence[int] | None = None, lexicon: Mapping[str, str] | str | Path | None = None,
                 buckets: Sequence[int] = (0, 8, 64, 256)) -> xr.Dataset:
    """All labels for ``token_ids`` (token,) or (window, position); see the module docstring.

    ``token_strings``: decoded text of every id in the vocabulary. ``window``: window id per
    token (default: rows of a 2-D input, else one window). ``lexicon``: a mapping word ->
    class or a TSV path (default: the shipped WordNet lexicon).
    """
    ids = np.asarray(token_ids)
    if ids.ndim == 2 and window is None:
        window = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
    ids = ids.astype(np.int64).ravel()
    if ids.size and (ids.min() < 0 or ids.max() >= len(token_strings)):
        raise ValueError(f"token ids must lie in [0, {len(token_strings)}) (the length of token_strings)")
    if list(buckets) != sorted(set(buckets)) or not buckets or buckets[0] != 0:
        raise ValueError(f"buckets must be increasing edges starting at 0, got {list(buckets)}")
    lex = lexicon if isinstance(lexicon, Mapping) else load_lexicon(lexicon)
    w, position = _windows(ids, window)
    n = ids.shape[0]
    same_next = np.r_[w[1:] == w[:-1], False] if n else np.zeros(0, dtype=bool)

    if frequent is None:
        counts = np.bincount(ids, minlength=len(token_strings))
        frequent = np.argsort(-counts, kind="stable")[:top_k]
        frequent = [int(t) for t in frequent if counts[t] > 0]
    frequent = [int(t) for t in frequent]
    code = np.full(len(token_strings), len(frequent), dtype=np.int64)  # "other"
    code[frequent] = np.arange(len(frequent))
    next_token = np.full(n, -1, dtype=np.int64)
    next_token[same_next] = code[ids[1:][same_next[:-1]]] if n else []

    repeat = np.zeros(n, dtype=np.int64)
    word_start = np.zeros(n, dtype=np.int64)
    word_class = np.zeros(n, dtype=np.int64)
    starts = np.flatnonzero(position == 0)
    for a, b in zip(starts, list(starts[1:]) + [n]):
        seen = set()
        for i in range(a, b):
            repeat[i] = ids[i] in seen
            seen.add(ids[i])
        word_start[a:b], word_class[a:b] = _word_labels([token_strings[t] for t in ids[a:b]], lex)

    pos_bucket = np.searchsorted(np.asarray(buckets), position, side="right") - 1
    labels = {
        "next_token": (next_token, [token_strings[t] for t in frequent] + ["other"]),
        "repeat": (repeat, REPEAT),
        "position": (pos_bucket, bucket_names(buckets)),
        "word_start": (word_start, WORD_START),
        "word_class": (word_class, WORD_CLASS),
    }
    ds = xr.Dataset({k: xr.DataArray(v.astype(np.int64), dims="token", attrs={"classes": c})
                     for k, (v, c) in labels.items()},
                    coords={"token": np.arange(n), "window": ("token", w), "position_in_window": ("token", position),
                            "token_id": ("token", ids)})
    ds["next_token"].attrs["token_ids"] = frequent + [-1]
    ds.attrs = {"description": "probe labels: integer codes into each variable's 'classes'; -1 = no label",
                "lexicon": "WordNet 3.0 (data/lexicon/wordnet_pos.tsv)" if lexicon is None else "custom"}
    return ds
