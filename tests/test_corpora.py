"""Corpus specs: built-ins, text files, `datasets` from local files, clear errors."""

from __future__ import annotations

import json

import pytest

from workbench.corpora import CorpusError, builtin_corpora, load_corpus
from workbench.tokenization import byte_tokenizer

TOK = byte_tokenizer()


def test_builtin_heldout_sets_resolve():
    assert set(builtin_corpora()) >= {"encyclopedic", "news", "forum", "reviews", "books"}
    c = load_corpus("news", TOK, max_tokens=500)
    assert c.name == "news" and c.source == "builtin:news" and c.n_tokens == 500
    assert c.n_bytes == 500  # byte tokenizer: one byte per token


def test_text_file_and_truncation(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("naïve café " * 10)
    full = load_corpus(str(path), TOK)
    assert full.n_bytes == len(("naïve café " * 10).encode()) == full.n_tokens
    part = load_corpus(str(path), TOK, max_tokens=7)
    assert part.n_tokens == 7 and part.n_bytes == 7


def test_datasets_local_files(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"body": f"document number {i}."}) for i in range(5)))
    c = load_corpus(f"hf:path=json,data_files={rows},split=train,column=body", TOK)
    assert TOK.decode(c.ids.tolist()).startswith("document number 0.\n\ndocument number 1.")
    with pytest.raises(CorpusError, match="no column 'text'; columns: body"):
        load_corpus(f"hf:path=json,data_files={rows},split=train", TOK)


def test_bad_specs(tmp_path):
    with pytest.raises(CorpusError, match="expected key=value"):
        load_corpus("hf:wikitext", TOK)
    with pytest.raises(CorpusError, match="cannot load dataset .* offline"):
        load_corpus("hf:path=surely/not-cached-anywhere,split=test", TOK)
    with pytest.raises(CorpusError, match="not found; give a built-in name"):
        load_corpus(str(tmp_path / "missing.txt"), TOK)
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(CorpusError, match="is empty"):
        load_corpus(str(tmp_path / "blank.txt"), TOK)
    (tmp_path / "one.txt").write_text("a")
    with pytest.raises(CorpusError, match="at least 2"):
        load_corpus(str(tmp_path / "one.txt"), TOK)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CorpusError, match="not UTF-8"):
        load_corpus(str(tmp_path / "bin.txt"), TOK)
