"""The offline data builder on fixtures: cleaning, overlap filter, tokenizer, assembly.

No network: the fixture "packages" are built in tmp_path from the small text files in
tests/fixtures/databuild/ (R data files are written with rdata, dictd files with gzip).
"""

import gzip
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest

from workbench.databuild import assemble, bpe, clean, fetch, heldout, overlap, readers
from workbench.databuild.build import BuildPaths, build_from_roots
from workbench.databuild.fileio import atomic_write_text, sha256_text
from workbench.databuild.sources import BIGBENCH_MEMBER_PREFIX, Package

FIX = Path(__file__).parent / "fixtures" / "databuild"
REPO = Path(__file__).resolve().parents[1]


# --- fixture package trees -------------------------------------------------------------

def _rds_bytes(obj, tmp: Path) -> bytes:
    import rdata

    path = tmp / "obj.rds"
    rdata.write_rds(path, obj, compression=None)
    return path.read_bytes()


def _write_lazyload(data_dir: Path, objs: dict, tmp: Path) -> None:
    """An R lazy-load database (Rdata.rdx + Rdata.rdb), the layout of installed R data."""
    data_dir.mkdir(parents=True)
    blob, variables = b"", {}
    for name, value in objs.items():
        raw = _rds_bytes(value, tmp)
        record = len(raw).to_bytes(4, "big") + zlib.compress(raw)
        variables[name] = np.array([len(blob), len(record)], dtype=np.int32)
        blob += record
    (data_dir / "Rdata.rdb").write_bytes(blob)
    index = {"variables": variables, "references": {}, "compressed": True}
    (data_dir / "Rdata.rdx").write_bytes(gzip.compress(_rds_bytes(index, tmp)))


def _lines(name: str) -> np.ndarray:
    return np.array((FIX / name).read_text("utf-8").rstrip("\n").split("\n"))


def _b64(n: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = ""
    while True:
        out = alphabet[n % 64] + out
        n //= 64
        if n == 0:
            return out


def _write_dictd(base: Path, name: str, entries: dict[str, str]) -> None:
    base.mkdir(parents=True)
    data, index = b"", []
    for head, body in entries.items():
        raw = body.encode("utf-8")
        index.append(f"{head}\t{_b64(len(data))}\t{_b64(len(raw))}")
        data += raw
    (base / f"{name}.index").write_text("\n".join(["00-database-info\tA\tB", *index]) + "\n")
    (base / f"{name}.dict.dz").write_bytes(gzip.compress(data))


def make_roots(tmp: Path) -> dict[str, Path]:
    import pandas as pd
    import rdata

    roots = {name: tmp / "pkg" / name for name in
             ["r-cran-janeaustenr", "r-cran-tidytext", "fortunes", "wordnet-base", "dict-devil",
              "python3.11-doc", "bigbench"]}
    _write_lazyload(roots["r-cran-janeaustenr"] / readers.R_LIB / "janeaustenr" / "data",
                    {"emma": _lines("austen_emma.txt"), "northangerabbey": _lines("austen_northangerabbey.txt")}, tmp)
    frames = []
    for title, fn in [("The War of the Worlds", "tidytext_war_of_the_worlds.txt"),
                      ("Great Expectations", "tidytext_great_expectations.txt")]:
        text = _lines(fn).tolist()
        frames.append(pd.DataFrame({"gutenberg_id": np.zeros(len(text), dtype=np.int32),
                                    "text": pd.Series(text, dtype=object), "title": pd.Series([title] * len(text), dtype=object)}))
    extdata = roots["r-cran-tidytext"] / readers.R_LIB / "tidytext" / "extdata"
    extdata.mkdir(parents=True)
    rdata.write_rda(extdata / "books.rda", {"books": pd.concat(frames, ignore_index=True)})
    shutil.copytree(FIX / "fortunes", roots["fortunes"] / "usr/share/games/fortunes")
    shutil.copytree(FIX / "wordnet", roots["wordnet-base"] / "usr/share/wordnet")
    _write_dictd(roots["dict-devil"] / "usr/share/dictd", "devil",
                 {"abandon": (FIX / "gcide_entry.txt").read_text(),
                  "ass": "ASS, n.  A public singer with a good voice but no ear.\n"})
    html = roots["python3.11-doc"] / "usr/share/doc/python3.11/html/library"
    html.mkdir(parents=True)
    shutil.copy(FIX / "page.html", html / "json.html")
    shutil.copytree(FIX / "squad", roots["bigbench"] / BIGBENCH_MEMBER_PREFIX)
    return roots


# --- cleaning --------------------------------------------------------------------------

def test_clean_novel_strips_gutenberg_markup_and_reflows():
    text = clean.clean_novel((FIX / "gutenberg_novel.txt").read_text("utf-8"))
    assert text == ("CHAPTER I.\n\nIt was a very dark night, and the wind blew hard across the moor.\n\n"
                    '"Who goes there?"  cried the watchman, raising his lantern.')  # spacing inside a line is kept


def test_normalize_whitespace_conventions():
    assert clean.normalize_whitespace("\ufeffa  \r\nb\t.\n\n\n\n c\n\n") == "a\nb    .\n\n c"
    assert clean.paragraphs("a\nb\n\n \n\nc") == ["a\nb", "c"]


def test_clean_verse_keeps_lines():
    assert clean.clean_verse("  To be, or not to be:  \n    that is the question.\n\n\nExit.") == (
        "To be, or not to be:\nthat is the question.\n\nExit.")


def test_gcide_entry_loses_markup():
    text = clean.clean_gcide_entry((FIX / "gcide_entry.txt").read_text())
    assert text.startswith("Abandon, v. t. [imp. & p. p. Abandoned; p. pr. & vb. n. Abandoning.]")
    for junk in ("[1913 Webster]", "\\", "{", "[a^]", "[u^]", "  "):
        assert junk not in text
    assert "That he might... abandon them from him. --Udall." in text
    assert "[Obs.]" in text  # usage labels are kept


def test_dictd_entries_and_numbers():
    assert clean.dictd_b64("A") == 0 and clean.dictd_b64("BA") == 64 and _b64(4097) == "BAB"
    index = "00-database-short\tA\tC\nb\tF\tD\na\tA\tF\nalias\tA\tF\n"
    assert clean.dictd_entries(index, b"firstsec") == ["first", "sec"]


def test_wordnet_gloss_lines():
    lines = (FIX / "wordnet" / "data.noun").read_text().splitlines()
    glosses = [g for g in map(clean.wordnet_gloss, lines) if g]
    assert glosses[1] == 'dog, domestic dog, Canis familiaris: a member of the genus Canis; "the dog barked all night"'
    assert len(glosses) == 2  # licence header lines are skipped
    adj = [clean.wordnet_gloss(x) for x in (FIX / "wordnet" / "data.adj").read_text().splitlines()]
    assert adj[2] == "outside: located on the outside"


def test_fortune_items_split_on_percent():
    assert clean.fortune_items((FIX / "fortunes" / "science").read_text()) == [
        "A penny saved is a penny earned.\n        -- Benjamin Franklin",
        "Two roads diverged in a wood, and I --\nI took the one less traveled by.",
    ]


def test_html_to_text_keeps_prose_only():
    text = clean.html_to_text((FIX / "page.html").read_text())
    assert text.startswith("json — JSON encoder and decoder\n\nJSON is a lightweight data interchange format "
                           "inspired by JavaScript object literal syntax.")
    assert "Use dumps() to encode & loads() to decode.\n\nA second line." in text
    for junk in ("not text", "color: red", "json.dumps([1, 2])", "cell", "Navigation", "Copyright", "¶", "index"):
        assert junk not in text
    assert clean.looks_like_prose(text)
    assert not clean.looks_like_prose("a\n\nb\n\nc" * 100)


def test_parse_kjv_one_doc_per_book():
    docs = readers.parse_kjv((FIX / "kjv_printed.txt").read_text())
    assert [d.title for d in docs] == ["Genesis", "1 Samuel"]
    assert docs[0].text == (
        "Genesis 1\nIn the beginning God created the heaven and the earth.\n"
        "And the earth was without form, and void; and darkness was upon the face of the deep.\n\n"
        "Genesis 2\nThus the heavens and the earth were finished, and all the host of them.")


# --- overlap filter --------------------------------------------------------------------

def test_overlap_filter_drops_only_planted_passage():
    held = "The quick brown fox jumps over the lazy dog while the farmer sleeps under a tall oak tree."
    banned = overlap.heldout_ngrams([held])
    docs = [
        readers.Doc("a", "t1", "An unrelated first paragraph about ships.\n\n"
                    "PLANTED: the QUICK brown fox, jumps over the lazy dog while the farmer sleeps under a tall tree.\n\n"
                    "A closing paragraph."),
        readers.Doc("b", "t2", "The quick brown fox jumps over the lazy dog while the farmer wakes."),  # 12 words shared
    ]
    kept, dropped = assemble.filter_overlap(docs, banned)
    assert dropped == {"a": 1, "b": 0}
    assert kept[0].text == "An unrelated first paragraph about ships.\n\nA closing paragraph."
    assert kept[1].text == docs[1].text


def test_caps_keep_an_even_spread():
    docs = [readers.Doc("big", str(i), "x" * 100) for i in range(10)] + [readers.Doc("other", "o", "y" * 800)]
    out, dropped = assemble.apply_caps(docs, {"big": 0.2})
    big = [d.title for d in out if d.source == "big"]
    assert len(big) == 2 and big == ["4", "9"] and dropped == {"big": 8}


# --- held-out sets ---------------------------------------------------------------------

def test_squad_contexts_deduplicated_and_canary_free():
    contexts = heldout.squad_contexts(FIX / "squad" / "new_wiki_v1.0.json")
    assert len(contexts) == 3  # one context appears in two articles
    forum = heldout.squad_contexts(FIX / "squad" / "reddit_v1.0.json")
    assert len(forum) == 2 and not any("canary GUID" in c for c in forum)


def test_sample_to_size_is_deterministic_and_ordered():
    docs = [f"doc {i} " + "w" * 50 for i in range(50)]
    a = heldout.sample_to_size(docs, 500)
    assert a == heldout.sample_to_size(docs, 500)
    assert a == sorted(a, key=docs.index) and 500 <= sum(len(d) + 2 for d in a) < 600


# --- tokenizer -------------------------------------------------------------------------

ROUND_TRIP = [
    "Hello  world!\n\n\tTabs and  double spaces ",
    " leading space, trailing newline\n",
    "naïve café — “quotes” 日本語 🙂 \u200b zero-width",
    "<|endoftext|> inside text",
    "",
]


def test_tiny_bpe_round_trips(tmp_path):
    texts = [p.read_text("utf-8") for p in sorted(FIX.glob("*.txt"))]
    tok = bpe.train_bpe(texts, vocab_size=300)
    assert tok.get_vocab_size() <= 300 and tok.token_to_id(assemble.EOT) == 0
    for text in ROUND_TRIP + texts:
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) == text
    bpe.save(tok, tmp_path / "tok")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert hf.eos_token == hf.bos_token == hf.pad_token == assemble.EOT
    for text in ROUND_TRIP:
        assert hf.decode(hf.encode(text)) == text


@pytest.mark.skipif(not (REPO / "data" / "tokenizer" / "tokenizer.json").exists(), reason="no shipped tokenizer")
def test_shipped_tokenizer_round_trips():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(REPO / "data" / "tokenizer"))
    assert len(tok) == 4096 and tok.eos_token_id == 0 and tok.pad_token_id == 0
    samples = list(ROUND_TRIP)
    for path in sorted((REPO / "data" / "corpora").glob("*.txt")):
        samples.append(path.read_text("utf-8")[:3000])
    for text in samples:
        assert tok.decode(tok.encode(text)) == text


# --- fetch (no network) ----------------------------------------------------------------

def _pkg(tmp: Path, content: bytes, sha: str | None = None) -> Package:
    (tmp / "pypi").mkdir(parents=True, exist_ok=True)
    (tmp / "pypi" / "x-1.tar.gz").write_bytes(content)
    import hashlib

    return Package("x", "1", "pypi", "x-1.tar.gz", sha or hashlib.sha256(content).hexdigest(), "MIT", "test")


def test_fetch_verifies_checksum(tmp_path):
    good = _pkg(tmp_path, b"payload")
    assert fetch.fetch(good, tmp_path, allow_download=False) == tmp_path / "pypi" / "x-1.tar.gz"
    bad = _pkg(tmp_path, b"payload", sha="0" * 64)
    with pytest.raises(fetch.FetchError, match="checksum mismatch"):
        fetch.fetch(bad, tmp_path, allow_download=False)
    missing = Package("y", "1", "pypi", "y-1.tar.gz", "0" * 64, "MIT", "test")
    with pytest.raises(fetch.FetchError, match="--skip-download"):
        fetch.fetch(missing, tmp_path, allow_download=False)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "a" / "f.txt", "hello")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.txt"]
    assert (tmp_path / "a" / "f.txt").stat().st_mode & 0o044  # readable by others (not mkstemp's 0600)


# --- the whole assembly on fixture packages -------------------------------------------

def test_build_from_fixture_packages(tmp_path):
    roots = make_roots(tmp_path)
    paths = BuildPaths(tmp_path / "build", tmp_path / "data")
    logs: list[str] = []
    manifest = build_from_roots(roots, paths, vocab_size=300, log=logs.append)

    # held-out sets: five files + metadata that matches them; no canary anywhere
    for name in ("encyclopedic", "news", "forum", "reviews", "books"):
        text = (paths.corpora / f"{name}.txt").read_text("utf-8")
        meta = json.loads((paths.corpora / f"{name}.json").read_text())
        assert meta["sha256"] == sha256_text(text) and meta["n_bytes"] == len(text.encode())
        assert meta["n_documents"] == len(clean.paragraphs(text)) and "canary GUID" not in text
    books = (paths.corpora / "books.txt").read_text()
    assert books.startswith("NORTHANGER ABBEY") and "The War of the Worlds" in books

    # training stream: held-out novels absent, planted passage dropped, the rest kept
    train = assemble.read_train(paths.train)
    joined = "\n".join(train)
    assert "NORTHANGER ABBEY" not in joined and "War of the Worlds" not in joined
    assert "Stocks rose on Tuesday" not in joined
    assert "A clean fortune that shares nothing" in joined and "Emma Woodhouse" in joined
    assert manifest["overlap_filter"]["dropped_by_source"] == {"fortunes": 1}
    assert {"austen", "tidytext_novels", "fortunes", "wordnet", "devil", "python_docs"} == set(manifest["sources"])
    assert len(train) == manifest["n_documents"]
    assert int((paths.corpus / "READY").read_text()) == manifest["total_tokens"] > 0

    # tokenizer loads offline and counts agree with the manifest
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(paths.tokenizer))
    n = sum(len(tok.encode(d)) for d in train) + len(train)
    assert n == manifest["total_tokens"]

    # rerun: same bytes, tokenizer not retrained
    sha = manifest["train_sha256"]
    logs.clear()
    again = build_from_roots(roots, paths, vocab_size=300, log=logs.append)
    assert again["train_sha256"] == sha and any("up to date" in m for m in logs)
