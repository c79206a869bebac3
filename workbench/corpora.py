"""Corpora for perplexity: built-in sets in data/corpora, text files, and `datasets` datasets.

Specs:
  * ``encyclopedic`` (a built-in name: ``data/corpora/<name>.txt``);
  * ``path/to/file.txt``;
  * ``hf:path=Salesforce/wikitext,name=wikitext-2-raw-v1,split=test[,column=text]`` for a
    dataset in the local Hugging Face cache, or ``hf:path=json,data_files=x.jsonl,split=train``
    for local files read by `datasets`. Rows are joined with blank lines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.paths import data_dir


class CorpusError(ValueError):
    pass


@dataclass
class Corpus:
    name: str
    source: str
    ids: torch.Tensor  # 1-D token stream
    n_bytes: int  # UTF-8 bytes of the text those tokens cover

    @property
    def n_tokens(self) -> int:
        return len(self.ids)


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


def load_corpus(spec: str, tokenizer, max_tokens: int | None = None, text: tuple | None = None) -> Corpus:
    """Tokenise a corpus (``text``: an earlier ``read_text(spec)`` result, to read only once)."""
    name, source, text = text or read_text(spec)
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    if len(ids) < 2:
        raise CorpusError(f"corpus {spec!r} has {len(ids)} token(s); at least 2 are needed")
    n_bytes = len(text.encode("utf-8"))
    if max_tokens is not None and len(ids) > max_tokens:
        ids = ids[:max_tokens]
        n_bytes = len(tokenizer.decode(ids).encode("utf-8"))
    return Corpus(name=name, source=source, ids=torch.tensor(ids, dtype=torch.long), n_bytes=n_bytes)
