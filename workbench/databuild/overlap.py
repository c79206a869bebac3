"""Contamination filter: training passages sharing a word 13-gram with held-out text go."""

import re

N = 13
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int = N) -> set[str]:
    """The lower-cased word n-grams of `text`, each as one space-joined string."""
    w = words(text)
    return {" ".join(w[i : i + n]) for i in range(len(w) - n + 1)}


def heldout_ngrams(texts, n: int = N) -> set[str]:
    out: set[str] = set()
    for t in texts:
        out |= ngrams(t, n)
    return out


def overlaps(passage: str, banned: set[str], n: int = N) -> bool:
    w = words(passage)
    return any(" ".join(w[i : i + n]) in banned for i in range(len(w) - n + 1))
