"""A small word-class lexicon from WordNet 3.0 for the probes' coarse word-class label.

Each word that occurs in the held-out corpora gets the WordNet part of speech with the most
synsets, found for the word itself or for its base form (WordNet's own exception lists and
morphy suffix rules, so "walked" finds "walk"). Closed-class words (determiners, pronouns,
prepositions, conjunctions) are left out: WordNet lists some of them as nouns ("a", "I",
"in") and they belong in "other". WordNet comes from the pinned Debian package
``wordnet-base`` (see sources.py); run ``python -m workbench.databuild.lexicon``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ..paths import data_dir
from .fileio import atomic_write_text

POS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}  # WordNet file -> label
# morphy(7WN) detachment rules: suffix -> replacement, per part of speech
RULES = {
    "noun": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
             ("men", "man"), ("ies", "y")],
    "verb": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    "adj": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "adv": [],
}
CLOSED_CLASS = frozenset("""
a an the this that these those some any each every either neither no
i me my mine myself you your yours yourself yourselves he him his himself she her hers herself
it its itself we us our ours ourselves they them their theirs themselves who whom whose which what
of in on at by for with from to into onto upon about above below over under between among through
during before after against without within across along around behind beside besides beyond
toward towards until till via per than as
and or but nor yet so if because although though while whereas unless whether
""".split())
WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")  # letters, with inner apostrophes ("don't")


def read_index(wordnet: Path) -> dict[str, dict[str, int]]:
    """pos -> {lemma: synset count} from WordNet's index.<pos> files."""
    out = {}
    for pos in POS:
        counts = {}
        for line in (wordnet / f"index.{pos}").read_text("utf-8", "replace").splitlines():
            if line.startswith(" ") or not line.strip():
                continue  # the licence header
            f = line.split()
            counts[f[0]] = int(f[2])
        out[pos] = counts
    return out


def read_exceptions(wordnet: Path) -> dict[str, dict[str, list[str]]]:
    """pos -> {inflected form: base forms} from WordNet's <pos>.exc files."""
    out = {}
    for pos in POS:
        exc = {}
        for line in (wordnet / f"{pos}.exc").read_text("utf-8", "replace").splitlines():
            f = line.split()
            if len(f) >= 2:
                exc[f[0]] = f[1:]
        out[pos] = exc
    return out


def word_pos(word: str, index, exceptions) -> str | None:
    """The label of the part of speech with the most synsets for ``word`` or a base form."""
    best, best_count = None, 0
    for pos in POS:  # order breaks ties: noun, verb, adjective, adverb
        bases = [word, *exceptions[pos].get(word, [])]
        bases += [word[: -len(suf)] + rep for suf, rep in RULES[pos] if word.endswith(suf) and len(word) > len(suf)]
        count = max((index[pos].get(b, 0) for b in bases), default=0)
        if count > best_count:
            best, best_count = POS[pos], count
    return best


def corpus_words(paths) -> set[str]:
    words = set()
    for p in paths:
        words.update(w.lower() for w in WORD.findall(Path(p).read_text("utf-8")))
    return words


def build_lexicon(wordnet: Path, corpora, out: Path) -> int:
    """Write ``word<TAB>pos`` for every corpus word WordNet places; returns the row count."""
    index, exceptions = read_index(wordnet), read_exceptions(wordnet)
    rows = []
    for w in sorted(corpus_words(corpora) - CLOSED_CLASS):
        if "'" in w or "’" in w:
            continue  # contractions and possessives: looked up without the "'s" by the probes
        pos = word_pos(w, index, exceptions)
        if pos:
            rows.append(f"{w}\t{pos}\n")
    atomic_write_text(out, "word\tpos\n" + "".join(rows))
    return len(rows)


def main(argv=None) -> None:
    """python -m workbench.databuild.lexicon [BUILD_DIR]: fetch wordnet-base, write the lexicon."""
    from . import fetch
    from .sources import PACKAGES

    build = Path((argv or sys.argv[1:] or ["build"])[0])
    pkg = PACKAGES["wordnet-base"]
    root = fetch.extract(pkg, fetch.fetch(pkg, build / "cache"), build / "cache")
    corpora = sorted((data_dir() / "corpora").glob("*.txt"))
    out = data_dir() / "lexicon" / "wordnet_pos.tsv"
    n = build_lexicon(root / "usr/share/wordnet", corpora, out)
    print(f"{out}: {n} words from {len(corpora)} corpora")


if __name__ == "__main__":
    main()
