"""Assembly: documents + held-out sets -> filtered, capped, shuffled training stream.

Pure apart from writing the output file, so tests run it on fixture documents.
"""

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from . import clean, overlap
from .fileio import AtomicTextWriter
from .readers import Doc

EOT = "<|endoftext|>"
# On disk each document is followed by a line holding only EOT.
DOC_SEPARATOR = f"\n{EOT}\n"
# Markup-heavy or list-like sources may not dominate: share of the corpus bytes, at most.
CAPS = {"gcide": 0.15, "wordnet": 0.12}
SEED = 0


@dataclass
class Assembly:
    docs: list[Doc]
    dropped_passages: Counter = field(default_factory=Counter)
    dropped_docs_by_cap: Counter = field(default_factory=Counter)
    heldout_excluded: list[str] = field(default_factory=list)


def filter_overlap(docs: list[Doc], banned: set[str]) -> tuple[list[Doc], Counter]:
    """Drop every paragraph that shares a word 13-gram with held-out text."""
    kept, dropped = [], Counter()
    for d in docs:
        paras = clean.paragraphs(d.text)
        good = [p for p in paras if not overlap.overlaps(p, banned)]
        dropped[d.source] += len(paras) - len(good)
        if good:
            kept.append(Doc(d.source, d.title, clean.join_paragraphs(good)))
    return kept, dropped


def apply_caps(docs: list[Doc], caps: dict[str, float]) -> tuple[list[Doc], Counter]:
    """Keep an evenly spread subset of each capped source so it stays under its byte share."""
    size = defaultdict(int)
    for d in docs:
        size[d.source] += len(d.text.encode("utf-8"))
    uncapped = sum(v for k, v in size.items() if k not in caps)
    share = sum(f for k, f in caps.items() if k in size)
    total = uncapped / (1 - share) if share < 1 else float("inf")
    keep_ratio = {k: min(1.0, caps[k] * total / size[k]) for k in caps if size.get(k)}
    out, dropped, seen = [], Counter(), Counter()
    for d in docs:
        r = keep_ratio.get(d.source, 1.0)
        i = seen[d.source]
        seen[d.source] += 1
        if int((i + 1) * r) > int(i * r):  # even stride through the source (A..Z for dictionaries)
            out.append(d)
        else:
            dropped[d.source] += 1
    return out, dropped


def assemble(docs: list[Doc], heldout_texts: list[str], exclude: list[tuple[str, str]],
             caps: dict[str, float] = CAPS, seed: int = SEED) -> Assembly:
    excluded = set(exclude)
    train = [d for d in docs if (d.source, d.title) not in excluded]
    train, dropped = filter_overlap(train, overlap.heldout_ngrams(heldout_texts))
    train, capped = apply_caps(train, caps)
    random.Random(seed).shuffle(train)  # mix sources so any prefix of the stream is representative
    return Assembly(train, dropped, capped, [f"{t} ({s})" for s, t in exclude])


def write_train(docs: list[Doc], path: Path) -> None:
    with AtomicTextWriter(path) as f:
        for d in docs:
            f.write(d.text)
            f.write(DOC_SEPARATOR)


def read_train(path: Path) -> list[str]:
    """Documents of a train.txt written by `write_train`."""
    text = Path(path).read_text("utf-8")
    return [d for d in text.split(DOC_SEPARATOR) if d]
