"""Corpora for perplexity: built-in sets in data/corpora, text files, and `datasets` datasets.

Specs:
  * ``encyclopedic`` (a built-in name: ``data/corpora/<name>.txt``);
  * ``path/to/file.txt``;
  * ``hf:path=Salesforce/wikitext,name=wikitext-2-raw-v1,split=test[,column=text]`` for a
    dataset in the local Hugging Face cache, or ``hf:path=json,data_files=x.jsonl,split=train``
    for local files read by `datasets`. Rows are joined with blank lines.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from workbench.paths import data_dir


class CorpusError(ValueError):
    pass


@dataclass
class Corpus:
    name: str
    source: str
    ids: torch.Tensor  # 1-D token stream
    byte_ends: np.ndarray  # UTF-8 bytes of the source text up to the end of token k, for each k
    sha256: str = ""  # of the whole text the tokens come from
    byte_start: int = 0  # where token 0 starts (bytes), for a slice

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    @property
    def n_bytes(self) -> int:
        """UTF-8 bytes of the text the tokens cover."""
        return int(self.byte_ends[-1]) - self.byte_start

    def scored_bytes(self, first_scored: int = 1) -> int:
        """Bytes covered by tokens ``first_scored`` .. end: what bits per byte divides by (token 0
        is only context unless a prefix token lets it be scored)."""
        before = self.byte_start if first_scored == 0 else int(self.byte_ends[first_scored - 1])
        return int(self.byte_ends[-1]) - before

    def slice(self, begin: int, end: int, name: str | None = None) -> "Corpus":
        """Tokens ``begin:end`` as a corpus of their own."""
        start = int(self.byte_ends[begin - 1]) if begin else self.byte_start
        return replace(self, name=name or self.name, ids=self.ids[begin:end],
                       byte_ends=self.byte_ends[begin:end], byte_start=start)


def builtin_corpora() -> list[str]:
    root = data_dir() / "corpora"
    return sorted(p.stem for p in root.glob("*.txt")) if root.exists() else []


def _from_datasets(spec: str) -> tuple[str, str]:
    fields = {}
    for part in spec[len("hf:"):].split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise CorpusError(f"malformed dataset spec {spec!r}: expected key=value pairs, e.g. "
                              "hf:path=Salesforce/wikitext,name=wikitext-2-raw-v1,split=test")
        fields[key.strip()] = value.strip()
    if "path" not in fields:
        raise CorpusError(f"dataset spec {spec!r} needs path=...")
    column = fields.pop("column", "text")
    split = fields.pop("split", "test")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    try:
        ds = datasets.load_dataset(**fields, split=split)
    except Exception as exc:  # datasets raises many types; the message says what to do
        raise CorpusError(f"cannot load dataset {spec!r} offline ({type(exc).__name__}: {exc}). "
                          "Put it in the local HF cache on a machine with access, or pass local "
                          "files with path=json|text|parquet,data_files=...") from None
    if column not in ds.column_names:
        raise CorpusError(f"dataset {spec!r} has no column {column!r}; columns: {', '.join(ds.column_names)}")
    name = fields.get("name") or fields["path"].split("/")[-1]
    return f"{name}:{split}", "\n\n".join(t for t in ds[column] if t and t.strip())


def read_text(spec: str) -> tuple[str, str, str]:
    """(name, source, text) for a corpus spec; an empty corpus is an error."""
    name, source, text = _read(spec)
    if not text.strip():
        raise CorpusError(f"corpus {spec!r} is empty")
    return name, source, text


def _read(spec: str) -> tuple[str, str, str]:
    if spec.startswith("hf:"):
        name, text = _from_datasets(spec)
        return name, spec, text
    builtin = data_dir() / "corpora" / f"{spec}.txt"
    if "/" not in spec and builtin.exists():
        return spec, f"builtin:{spec}", builtin.read_text(encoding="utf-8")
    path = Path(spec).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus {spec!r} not found; give a built-in name "
                          f"({', '.join(builtin_corpora()) or 'none installed'}), a text file, or hf:path=...")
    if path.is_dir():
        raise CorpusError(f"corpus {spec!r} is a folder; give a text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CorpusError(f"corpus {spec!r} is not UTF-8 text") from None
    return path.stem, str(path.resolve()), text


def byte_ends(text: str, offsets) -> np.ndarray:
    """Bytes of ``text`` covered by tokens [0..k] for each k, from the tokens' character offsets.

    A character split over several tokens (byte-level BPE) belongs to the token that completes
    it, so a cut inside a multi-byte character counts none of its bytes.
    """
    starts = np.array([s for s, _ in offsets], dtype=np.int64)
    ends = np.array([e for _, e in offsets], dtype=np.int64)
    nxt = np.append(starts[1:], np.iinfo(np.int64).max)
    char_end = np.where(nxt < ends, nxt, ends)  # the next token shares this character
    char_end = np.maximum.accumulate(np.clip(char_end, 0, len(text)))
    byte_at = np.zeros(len(text) + 1, dtype=np.int64)
    byte_at[1:] = np.cumsum([len(ch.encode("utf-8")) for ch in text])
    return byte_at[char_end]


def tokenize(tokenizer, text: str) -> tuple[list[int], np.ndarray]:
    """Token ids of ``text`` (no special tokens) and their byte ends (see ``byte_ends``)."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_attention_mask=False,
                        return_offsets_mapping=True)
        return list(enc["input_ids"]), byte_ends(text, enc["offset_mapping"])
    except (NotImplementedError, ValueError, TypeError):
        # slow tokenizers have no offsets: per-token decoding, exact for whole characters only
        ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        sizes = [len(tokenizer.decode([i]).encode("utf-8")) for i in ids]
        return list(ids), np.cumsum(sizes, dtype=np.int64)


def _tokenized(spec: str, tokenizer, text: tuple | None) -> Corpus:
    name, source, text = text or read_text(spec)
    ids, ends = tokenize(tokenizer, text)
    return Corpus(name=name, source=source, ids=torch.tensor(ids, dtype=torch.long), byte_ends=ends,
                  sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())


def _capped(corpus: Corpus, spec: str, max_tokens: int | None) -> Corpus:
    if corpus.n_tokens < 2:
        raise CorpusError(f"corpus {spec!r} has {corpus.n_tokens} token(s); at least 2 are needed")
    if max_tokens is not None and corpus.n_tokens > max_tokens:
        corpus = corpus.slice(0, max_tokens)
    return corpus


def load_corpus(spec: str, tokenizer, max_tokens: int | None = None, text: tuple | None = None) -> Corpus:
    """Tokenise a corpus (``text``: an earlier ``read_text(spec)`` result, to read only once)."""
    return _capped(_tokenized(spec, tokenizer, text), spec, max_tokens)


def load_with_reference(spec: str, tokenizer, n_reference: int, max_tokens: int | None = None,
                        text: tuple | None = None) -> tuple[Corpus, Corpus]:
    """The corpus to score and, set aside from its end and never scored, ``n_reference``
    tokens for mean and resample ablations."""
    whole = _tokenized(spec, tokenizer, text)
    if whole.n_tokens - n_reference < 2:
        raise CorpusError(f"corpus {spec!r} has {whole.n_tokens} tokens: too few to set aside "
                          f"{n_reference} reference tokens and still score some; give a longer corpus, "
                          "fewer --reference-tokens, or --reference with another corpus")
    reference = whole.slice(whole.n_tokens - n_reference, whole.n_tokens, name=f"{whole.name}:tail")
    return _capped(whole.slice(0, whole.n_tokens - n_reference), spec, max_tokens), reference
