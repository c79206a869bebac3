"""Probe labels on hand-made token sequences, and the shipped WordNet lexicon."""

from __future__ import annotations

import numpy as np
import pytest

from probes.token_labels import WORD_CLASS, WORD_START, bucket_names, load_lexicon, token_labels

VOCAB = ["The", " cat", " sat", " on", " the", " mat", ".", "\n", "wal", "ked", " quick", "ly",
         " happy", "\ufffd", " 42", "(", "run", "'s", " dog"]
ID = {s: i for i, s in enumerate(VOCAB)}
LEX = {"cat": "noun", "sat": "verb", "mat": "noun", "walked": "verb", "quickly": "adverb",
       "happy": "adjective", "run": "verb", "dog": "noun"}


def ids(*pieces):
    return np.array([ID[p] for p in pieces])


def decode(ds, name):
    classes = ds[name].attrs["classes"]
    return [classes[c] if c >= 0 else None for c in ds[name].values]


def test_word_start_and_class():
    seq = ids("The", " cat", " sat", ".", "\n", "wal", "ked", " quick", "ly", "(", "run", " 42", "\ufffd",
              " dog", "'s", " happy")
    ds = token_labels(seq, VOCAB, lexicon=LEX)
    assert decode(ds, "word_start") == ["initial", "initial", "initial", "non-word", "non-word", "initial",
                                        "continuation", "initial", "continuation", "non-word", "initial",
                                        "non-word", "non-word", "initial", "continuation", "initial"]
    # every piece of a word gets the word's class; "dog's" is looked up as "dog"
    assert decode(ds, "word_class") == ["other", "noun", "verb", "other", "other", "verb", "verb", "adverb",
                                        "adverb", "other", "verb", "other", "other", "noun", "noun", "adjective"]
    assert ds["word_start"].attrs["classes"] == WORD_START
    assert ds["word_class"].attrs["classes"] == WORD_CLASS


def test_words_do_not_cross_windows():
    seq = np.stack([ids("The", ".", "wal", "ked"), ids("ked", " dog", "wal", "ked")])
    ds = token_labels(seq, VOCAB, lexicon=LEX)
    assert list(ds.window.values) == [0] * 4 + [1] * 4
    assert decode(ds, "word_start")[4] == "initial"  # a window's first token starts a word
    assert decode(ds, "word_class")[2:4] == ["verb", "verb"]
    assert decode(ds, "word_class")[6:8] == ["other", "other"]  # " dogwalked" is one unknown word


def test_next_token_repeat_and_position():
    seq = ids("The", " cat", " sat", " on", " the", " cat", " cat", ".",
              " cat", " the", " the", ".")
    window = np.repeat([7, 3], [8, 4])
    ds = token_labels(seq, VOCAB, window, top_k=2, lexicon=LEX)
    # most frequent: " cat" (4), then " the" (3)
    assert ds["next_token"].attrs["classes"] == [" cat", " the", "other"]
    assert ds["next_token"].attrs["token_ids"] == [ID[" cat"], ID[" the"], -1]
    assert decode(ds, "next_token") == [" cat", "other", "other", " the", " cat", " cat", "other", None,
                                        " the", " the", "other", None]
    assert list(ds["repeat"].values) == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0]  # fresh per window
    assert list(ds["position_in_window"].values) == list(range(8)) + list(range(4))
    long = token_labels(np.zeros(300, dtype=int), VOCAB, lexicon=LEX)
    pos = decode(long, "position")
    assert pos[0] == pos[7] == "0-7" and pos[8] == pos[63] == "8-63"
    assert pos[64] == pos[255] == "64-255" and pos[256] == pos[299] == "256+"
    assert bucket_names([0, 4]) == ["0-3", "4+"]
    fixed = token_labels(seq, VOCAB, window, frequent=[ID["."]], lexicon=LEX)
    assert decode(fixed, "next_token")[6] == "."


def test_errors():
    with pytest.raises(ValueError, match="token ids must lie in"):
        token_labels(np.array([0, len(VOCAB)]), VOCAB, lexicon=LEX)
    with pytest.raises(ValueError, match="one id per token"):
        token_labels(ids("The", " cat"), VOCAB, window=[0], lexicon=LEX)
    with pytest.raises(ValueError, match="buckets"):
        token_labels(ids("The"), VOCAB, buckets=(4, 8), lexicon=LEX)


def test_shipped_lexicon():
    lex = load_lexicon()
    assert lex["walked"] == "verb" and lex["cats"] == "noun"
    assert lex["quickly"] == "adverb" and lex["beautiful"] == "adjective"
    assert "the" not in lex and "in" not in lex  # closed-class words are "other"
    assert set(lex.values()) == set(WORD_CLASS) - {"other"}
    ds = token_labels(ids("The", " cat", " sat"), VOCAB)
    assert decode(ds, "word_class") == ["other", "noun", "verb"]


def test_lexicon_builder(tmp_path):
    from workbench.databuild.lexicon import build_lexicon

    wn = tmp_path / "wordnet"
    wn.mkdir()
    index = {"noun": ["walk n 7 0", "run n 16 0", "cat n 8 0", "in n 3 0"],
             "verb": ["walk v 10 0", "run v 41 0", "be v 13 0"],
             "adj": ["happy a 4 0", "late a 10 0"], "adv": ["quickly r 2 0", "late r 4 0"]}
    for pos, rows in index.items():
        (wn / f"index.{pos}").write_text("  1 licence header line\n" + "\n".join(rows) + "\n")
        (wn / f"{pos}.exc").write_text("was be\nrunning run\n" if pos == "verb" else "")
    (tmp_path / "c.txt").write_text("The cats walked in late; she was happy, quickly running. Don't 42")
    out = tmp_path / "lex.tsv"
    assert build_lexicon(wn, [tmp_path / "c.txt"], out) == 7
    lex = load_lexicon(out)
    assert lex == {"cats": "noun", "walked": "verb", "late": "adjective", "was": "verb", "happy": "adjective",
                   "quickly": "adverb", "running": "verb"}
