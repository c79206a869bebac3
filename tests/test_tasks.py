"""Multiple-choice tasks: registry, lm-eval tokenisation, acc / acc_norm, builders on fixtures."""

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from workbench.databuild import tasks as build
from workbench.evaluate import multiple_choice as mc
from workbench.tasks import Item, Task, TaskError, chance_level, get_tasks, load_registry, read_items

FIX = Path(__file__).parent / "fixtures" / "databuild"
REPO = Path(__file__).resolve().parents[1]


# --- a character-level toy tokenizer and a forward with constructed logits -----------------

class CharTokenizer:
    """One token per character (ids 1..), 0 = end of text; enough for the scoring code."""

    def __init__(self, alphabet: str):
        self.vocab = {c: i + 1 for i, c in enumerate(alphabet)}
        self.eos_token_id = self.bos_token_id = self.pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab[c] for c in text]}

    def __len__(self):
        return len(self.vocab) + 1


def table_forward(logp: dict[int, float], vocab: int):
    """Logits that give token t log-probability logp[t] at every position (rest share the remainder)."""
    rest = [t for t in range(vocab) if t not in logp]
    left = 1 - sum(math.exp(v) for v in logp.values())
    row = torch.full((vocab,), math.log(left / len(rest)), dtype=torch.float64)
    for t, v in logp.items():
        row[t] = v
    calls = []

    def forward(ids, requests):
        calls.append((ids.clone(), list(requests)))
        return row.expand(*ids.shape, -1).clone()
    forward.calls = calls
    return forward


def _task(tmp: Path, name: str, items: list[dict], delimiter: str = " ", **extra) -> Task:
    (tmp / f"{name}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    spec = {"name": name, "description": "toy", "source": "test", "licence": "MIT", "items": f"{name}.jsonl",
            "metrics": ["acc", "acc_norm"], "num_fewshot": 0, "target_delimiter": delimiter,
            "n_items": len(items), "chance": sum(1 / len(i["choices"]) for i in items) / len(items), **extra}
    (tmp / f"{name}.json").write_text(json.dumps(spec))
    return load_registry(tmp)[name]


def test_acc_and_acc_norm_match_hand_computation(tmp_path):
    tok = CharTokenizer("xabc ")
    a, b, c, sp = (tok.vocab[k] for k in "abc ")
    # log p: space -2.0, a -3.0, b -2.5, c -5.0 at every position
    fwd = table_forward({sp: -2.0, a: -3.0, b: -2.5, c: -5.0}, len(tok))
    items = [
        # choices " a" (2 bytes): -5.0 -> -2.5/byte;  " bbb" (4 bytes): -9.5 -> -2.375/byte
        # acc picks " a" (0), acc_norm picks " bbb" (1): they disagree; gold = 1
        {"id": "q1", "context": "x", "choices": ["a", "bbb"], "gold": 1},
        # " c" -7.0, " b" -4.5, " ab" -7.5 -> acc: " b"; per byte -3.5, -2.25, -2.5 -> acc_norm: " b"
        {"id": "q2", "context": "xx", "choices": ["c", "b", "ab"], "gold": 1},
    ]
    task = _task(tmp_path, "toy", items)
    ds = mc.score_tasks(fwd, tok, [task], batch_size=2)
    np.testing.assert_allclose(ds.loglik.sel(task="toy").values,
                               [[-5.0, -9.5, np.nan], [-7.0, -4.5, -7.5]], atol=1e-5)
    assert ds.n_bytes.sel(task="toy").values.tolist() == [[2, 4, -1], [2, 2, 3]]
    assert ds.correct.sel(task="toy", metric="acc").values.tolist() == [0.0, 1.0]
    assert ds.correct.sel(task="toy", metric="acc_norm").values.tolist() == [1.0, 1.0]
    assert ds.accuracy.sel(task="toy").values.tolist() == [0.5, 1.0]
    assert float(ds.chance.sel(task="toy")) == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_padding_across_tasks_of_different_sizes(tmp_path):
    tok = CharTokenizer("xab ")
    fwd = table_forward({tok.vocab["a"]: -0.2}, len(tok))
    t1 = _task(tmp_path, "one", [{"id": "1", "context": "x", "choices": ["a", "b"], "gold": 0}])
    t2 = _task(tmp_path, "two", [{"id": str(i), "context": "x", "choices": ["a", "b", "ab", "ba"], "gold": 1}
                                 for i in range(3)])
    ds = mc.score_tasks(fwd, tok, [t1, t2])
    assert ds.sizes["item"] == 3 and ds.sizes["choice"] == 4
    assert ds.n_items.values.tolist() == [1, 3]
    assert ds.gold.sel(task="one").values.tolist() == [0, -1, -1]
    assert np.isnan(ds.correct.sel(task="one", item=[1, 2])).all()
    assert ds.accuracy.sel(task="one", metric="acc").item() == 1.0
    assert ds.accuracy.sel(task="two", metric="acc").item() == 0.0
    assert ds.chance.values.tolist() == [0.5, 0.25]


def test_metrics_function_directly():
    ll = np.array([[-1.0, -2.0], [-4.0, -3.0]])
    nb = np.array([[1, 10], [1, 1]])
    got = mc.metrics(ll, np.array([1, 1]), nb)
    assert got.sel(metric="acc").values.tolist() == [0.0, 1.0]
    assert got.sel(metric="acc_norm").values.tolist() == [1.0, 1.0]  # -0.2/byte beats -1/byte
    with pytest.raises(ValueError, match="byte length"):
        mc.metrics(ll, np.array([0, 0]), np.array([[0, 1], [1, 1]]))


# --- tokenisation boundary -------------------------------------------------------------

def test_encode_pair_moves_trailing_space_to_continuation():
    tok = CharTokenizer("The cat runs")
    enc = lambda s: tok(s)["input_ids"]  # noqa: E731
    ctx, cont = mc.encode_pair(enc, "The cat ", "runs")
    assert ctx == enc("The cat") and cont == enc(" runs")


def test_encode_pair_with_merging_tokenizer():
    """Continuation tokens are those of the whole string beyond the context's tokens (BPE merges)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(REPO / "data" / "tokenizer"))
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    ctx, cont = mc.encode_pair(enc, "The athlete ", "admires")
    assert ctx == enc("The athlete")
    assert ctx + cont == enc("The athlete admires")
    assert tok.decode(cont) == " admires"


def test_requests_right_padded_and_sorted(tmp_path):
    tok = CharTokenizer("xyab ")
    fwd = table_forward({}, len(tok))
    task = _task(tmp_path, "pad", [{"id": "1", "context": "x", "choices": ["a", "abab"], "gold": 0},
                                   {"id": "2", "context": "xyxy", "choices": ["b", "a"], "gold": 0}])
    mc.score_tasks(fwd, tok, [task], batch_size=2)
    first_ids, first_reqs = fwd.calls[0]
    # inputs (all but the last token): [eot] x y x y ' ' (6, twice), [eot] x ' ' a b a (6), [eot] x ' ' (3)
    assert first_ids.shape == (2, 6) and first_ids[:, 0].tolist() == [0, 0]  # contexts start with end-of-text
    ids, reqs = fwd.calls[-1]
    x, sp = tok.vocab["x"], tok.vocab[" "]
    assert ids.shape == (2, 6) and ids[1].tolist() == [0, x, sp, 0, 0, 0]  # right-padded with pad id 0
    assert reqs[1].context == (0, x) and reqs[1].continuation == (sp, tok.vocab["a"])
    lengths = [len(r.input_ids) for _, reqs in fwd.calls for r in reqs]
    assert lengths == sorted(lengths, reverse=True)


def test_padding_does_not_change_scores_of_a_causal_model(tmp_path):
    from workbench.architectures import random_model

    model, hf_tok = random_model("qwen2", seed=0)
    tok = CharTokenizer("xyzab ")  # ids < 8 fit any vocab
    task = _task(tmp_path, "causal", [{"id": "1", "context": "xyzzy", "choices": ["a", "ab ba b"], "gold": 0}])
    fwd = mc.plain_forward(model.eval())
    batched = mc.score_tasks(fwd, tok, [task], batch_size=2).loglik.values
    single = mc.score_tasks(fwd, tok, [task], batch_size=1).loglik.values
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_bootstrap_interval_contains_mean_and_ignores_padding():
    correct = xr.DataArray(np.r_[np.ones(60), np.zeros(40), [np.nan] * 10], dims="item")
    ci = mc.bootstrap_accuracy(correct, n_boot=500)
    assert 0.48 < float(ci.low) < 0.6 < float(ci.high) < 0.72
    same = mc.bootstrap_accuracy(xr.DataArray(np.ones(5), dims="item"))
    assert float(same.low) == float(same.high) == 1.0


# --- registry --------------------------------------------------------------------------

def test_unknown_task_lists_valid_ones(tmp_path):
    _task(tmp_path, "alpha", [{"id": "1", "context": "x", "choices": ["a", "b"], "gold": 0}])
    with pytest.raises(TaskError, match=r"unknown task\(s\) \['beta'\]; valid tasks: \['alpha'\]"):
        get_tasks(["beta"], root=tmp_path)


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: not valid JSON"),
    ('{"id": "b", "context": "x", "choices": ["a"], "gold": 0}', "line 2: 'choices' must be a list of at least 2"),
    ('{"id": "b", "context": "x", "choices": ["a", "b"], "gold": 2}', "line 2: 'gold' must be an index"),
    ('{"id": "a", "context": "x", "choices": ["a", "b"], "gold": 0}', "line 2: duplicate item id 'a'"),
    ('{"id": "b", "choices": ["a", "b"], "gold": 0}', r"line 2: item lacks \['context'\]"),
])
def test_malformed_item_file_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "context": "x", "choices": ["a", "b"], "gold": 0}\n' + line + "\n")
    with pytest.raises(TaskError, match=f"bad.jsonl, {message}"):
        read_items(path)


def test_task_description_errors(tmp_path):
    task = _task(tmp_path, "t", [{"id": "1", "context": "x", "choices": ["a", "b"], "gold": 0}], chance=0.3)
    with pytest.raises(TaskError, match="chance level of the items is 0.500000"):
        task.items()
    spec = json.loads((tmp_path / "t.json").read_text())
    (tmp_path / "t.json").write_text(json.dumps({**spec, "metrics": ["acc", "f1"], "chance": 0.5}))
    with pytest.raises(TaskError, match=r"t.json: unknown metrics \['f1'\]"):
        load_registry(tmp_path)
    (tmp_path / "t.json").write_text(json.dumps({**spec, "chance": 0.5, "shots": 1}))
    with pytest.raises(TaskError, match=r"unknown keys \['shots'\]"):
        load_registry(tmp_path)


def test_chance_level_per_item():
    items = [Item("a", "", ("x", "y"), 0), Item("b", "", ("x", "y", "z", "w"), 0)]
    assert chance_level(items) == pytest.approx(0.375)


@pytest.mark.skipif(not (REPO / "data" / "tasks").is_dir(), reason="no shipped tasks")
def test_shipped_tasks_are_valid_and_small():
    tasks = get_tasks(root=REPO / "data" / "tasks")
    assert {t.name for t in tasks} >= {"agreement", "truthfulqa_mc1", "last_word", "next_sentence",
                                       "wordnet_definition"}
    total = sum(p.stat().st_size for p in (REPO / "data" / "tasks").iterdir())
    assert total < 3_000_000
    for t in tasks:
        items = t.items()  # checks n_items and chance against the items
        assert 200 <= len(items) <= 1000
        assert t.chance == pytest.approx(np.mean([1 / len(i.choices) for i in items]), abs=1e-6)
        assert t.metrics == ("acc", "acc_norm") and t.num_fewshot == 0
        assert len({i.gold for i in items}) > 1  # choice order shuffled


@pytest.mark.skipif(not (REPO / "data" / "tasks").is_dir(), reason="no shipped tasks")
def test_shipped_generated_tasks_have_matched_choices():
    tasks = {t.name: t for t in get_tasks(root=REPO / "data" / "tasks")}
    for it in tasks["next_sentence"].items():  # the same two sentences, in both orders
        assert sorted(it.choices[0].split()) == sorted(it.choices[1].split())
    for it in tasks["wordnet_definition"].items():  # one definition, different words
        assert it.context == "" and len({c.split(": ", 1)[1] for c in it.choices}) == 1
    for it in tasks["last_word"].items():  # every choice occurs in the passage
        assert all(c.lower() in it.context.lower() for c in it.choices)


# --- builders on fixtures --------------------------------------------------------------

DOCS = {
    "news": [
        "The harbour master watched the ferry leave at dawn. Gulls circled above the pier while the crew "
        "loaded crates of fish and coal. By noon the wind had turned, and the captain ordered the sails "
        "reefed. Nobody on the pier expected the storm to arrive so early in the season. The old harbour "
        "had seen many storms, but none so fierce as the one that struck the harbour.",
        "Farmers in the valley reported a strong harvest this year. Prices for wheat rose sharply after "
        "the floods in the north. Several markets opened late because of the weather. Traders said the "
        "demand for grain would stay high through the winter months. Local bakers raised the price of bread.",
        "A new library opened downtown on Monday morning. Children lined up to borrow picture books and "
        "comics from the shelves. The mayor gave a short speech about reading and learning. Volunteers "
        "served lemonade to the families waiting outside in the sun. The building had been a bank before.",
    ],
}


def test_last_word_items_are_valid_and_deterministic():
    items = build.last_word_items(DOCS, n=10, seed=0, min_words=20)
    assert items == build.last_word_items(DOCS, n=10, seed=0, min_words=20)
    assert [i["id"] for i in items] == ["news-0"]
    it = items[0]
    gold = it["choices"][it["gold"]]
    assert gold == "harbour" and it["context"].endswith("struck the")
    assert gold.lower() in it["context"].lower()
    assert all(c.lower() in it["context"].lower() for c in it["choices"])  # every choice is in the passage
    assert len(set(c.lower() for c in it["choices"])) == 4


def test_last_word_distractors_are_matched_in_training_frequency():
    doc = DOCS["news"][0]
    context, gold = build._last_word_candidate(doc, 20, 80)
    counts = Counter({"harbour": 50, "ferry": 60, "crates": 40, "storm": 45, "gulls": 1, "captain": 500,
                      "season": 2, "pier": 3})
    it = build.last_word_items(DOCS, n=10, seed=0, counts=counts, min_words=20)[0]
    assert it["choices"][it["gold"]] == gold == "harbour"
    # 'pier' occurs in the context as often as 'harbour' (twice), so it comes first whatever its
    # frequency; then the words nearest to 'harbour' in log frequency ('crates' is a little further)
    assert sorted(c.lower() for c in it["choices"]) == ["ferry", "harbour", "pier", "storm"]
    assert it == build.last_word_items(DOCS, n=10, seed=0, counts=counts, min_words=20)[0]


def test_word_counts_are_lower_cased_words():
    assert build.word_counts(["The cat's hat.", "the CAT"]) == Counter({"the": 2, "cat's": 1, "hat": 1, "cat": 1})


def test_next_sentence_items_are_the_true_pair_against_the_swapped_pair():
    items = build.next_sentence_items(DOCS, n=10, seed=0, min_words=4)
    assert items == build.next_sentence_items(DOCS, n=10, seed=0, min_words=4)
    assert len(items) == 3
    for it in items:
        _, d, k = it["id"].split("-")
        ss = build.sentences(DOCS["news"][int(d)])
        a, b = ss[int(k)], ss[int(k) + 1]
        assert it["choices"][it["gold"]] == a + " " + b and it["choices"][1 - it["gold"]] == b + " " + a
        assert it["context"] + " " + a + " " + b in DOCS["news"][int(d)]
        assert 1 <= len(it["context"].split()) <= 40


def test_next_sentence_context_stays_within_the_word_limit():
    doc = "One two three four five six. " * 3 + "Seven eight nine ten eleven twelve. Thirteen fourteen fifteen sixteen."
    items = build.next_sentence_items({"s": [doc]}, n=5, seed=0, context_words=12)
    it = items[0]
    assert len(it["context"].split()) <= 12 and it["context"].endswith(".")


def _synset(offset, words, definition, pos="noun", heldout=True):
    return {"offset": f"{offset:08d}", "pos": pos, "words": words, "definition": definition, "heldout": heldout}


def test_definition_items_ask_for_the_word_of_a_heldout_definition():
    syn = [_synset(1, "lantern", "a light with a case to carry it"),
           _synset(2, "lantern", "a structure on top of a dome", heldout=False),
           _synset(3, "lamp, lantern", "an artificial source of light", heldout=False),  # 'lamp' is a synonym
           _synset(4, "barrel", "a cylindrical container"),  # held out but too rare as a gold word
           _synset(5, "kettle", "a metal pot for stewing", heldout=False),
           _synset(6, "pepper", "a pungent seasoning", heldout=False),
           _synset(7, "carry", "move while supporting", pos="verb", heldout=False),  # other part of speech
           _synset(8, "blanket", "a light with a case to carry it"),  # same definition
           _synset(9, "sugar", "a sweet crystalline substance", heldout=False),
           _synset(10, "case", "a portable container", heldout=False),  # occurs in the definition
           _synset(11, "mirror", "a reflecting surface", heldout=False),  # frequency outside the band
           _synset(12, "hammer", "a hand tool with a heavy head", heldout=False)]
    counts = Counter({"lantern": 100, "lamp": 100, "barrel": 5, "kettle": 90, "pepper": 120, "carry": 100,
                      "blanket": 100, "sugar": 140, "case": 100, "mirror": 200, "hammer": 70})
    items = build.definition_items(syn, counts, n=10, seed=0, min_count=20)
    assert items == build.definition_items(syn, counts, n=10, seed=0, min_count=20)
    # the only usable gold: held out, frequent enough, definition unseen in training and free of the word
    assert [it["id"] for it in items] == ["noun-00000001", "noun-00000008"]
    it = items[0]
    assert it["context"] == "" and it["choices"][it["gold"]] == "lantern: a light with a case to carry it"
    words = sorted(c.split(": ")[0] for c in it["choices"])
    assert len(words) == 4 and set(words) <= {"lantern", "kettle", "pepper", "blanket", "sugar", "hammer"}
    assert all(c.endswith(": a light with a case to carry it") for c in it["choices"])
    # too few words of the same part of speech in the frequency band: the synset is skipped
    assert build.definition_items(syn, counts, n=10, seed=0, min_count=20, factor=1.1) == []


def test_wordnet_synsets_mark_the_heldout_ones(tmp_path):
    root = tmp_path / "wn"
    shutil.copytree(FIX / "wordnet", root / "usr/share/wordnet")
    dog = 'dog, domestic dog, Canis familiaris: a member of the genus Canis; "the dog barked all night"'
    syn = build.wordnet_synsets(root, build.training_gloss_lines(["x\n" + dog + "\ny"]))
    assert [s["words"] for s in syn if not s["heldout"]] == ["dog, domestic dog, Canis familiaris"]
    assert all(s["heldout"] for s in build.wordnet_synsets(root, set())) and len(syn) == 7
    entity = next(s for s in syn if s["words"] == "entity")
    assert entity["definition"].startswith("that which is perceived") and entity["pos"] == "noun"
    assert next(s for s in syn if s["words"].startswith("dog"))["definition"] == "a member of the genus Canis"


def _wordnet_fixture(root: Path, nouns: list[tuple[str, str]]) -> Path:
    """A WordNet tree with the given one-word noun synsets (and empty verb, adj, adv files)."""
    d = root / "usr/share/wordnet"
    d.mkdir(parents=True)
    lines = [f"{k + 1:08d} 03 n 01 {w} 0 000 | {g}  " for k, (w, g) in enumerate(nouns)]
    (d / "data.noun").write_text("  1 licence header\n" + "\n".join(lines) + "\n")
    for pos in ("verb", "adj", "adv"):
        (d / f"data.{pos}").write_text("  1 licence header\n")
    return root


def test_build_tasks_rewrites_the_same_bytes(tmp_path):
    bb = _bigbench_fixture(tmp_path / "bb")
    nouns = [("lantern", "a light with a case to carry it"), ("kettle", "a metal pot for stewing"),
             ("pepper", "a pungent seasoning"), ("sugar", "a sweet crystalline substance"),
             ("hammer", "a hand tool with a heavy head")]
    wn = _wordnet_fixture(tmp_path / "wn", nouns)
    corpora = tmp_path / "corpora"
    corpora.mkdir()
    for name in build.CORPORA:
        (corpora / f"{name}.txt").write_text("\n\n".join(DOCS["news"]) + "\n")
    train = ["kettle: a metal pot for stewing\n" + "lantern kettle pepper sugar hammer " * 30]
    out = tmp_path / "tasks"
    out.mkdir()
    specs = build.build_tasks(bb, wn, corpora, train, out, log=lambda _: None)
    first = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    build.build_tasks(bb, wn, corpora, train, out, log=lambda _: None)
    assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == first
    assert len(first) == 10 and specs["next_sentence"]["chance"] == 0.5
    wn_items = get_tasks(["wordnet_definition"], root=out)[0].items()
    assert len(wn_items) == 4  # every noun but kettle, whose line is in the training text
    assert "noun-00000002" not in [i.id for i in wn_items]


def _bigbench_fixture(tmp: Path) -> Path:
    sva = tmp / "subject_verb_agreement"
    sva.mkdir(parents=True)
    for sub in build.SVA_SUBTASKS:
        ex = [{"input": f"The {sub} dog{'s' * (k % 2)} ", "target_scores": {"runs": 1 - k % 2, "run": k % 2},
               "comment": "x"} for k in range(4)]
        (sva / f"{sub}.json").write_text(json.dumps({"canary": "c", "examples": ex}))
    tqa = tmp / "truthful_qa"
    tqa.mkdir()
    ex = [{"input": "Is the sky green?", "target_scores": {"No.": 1, "Yes.": 0, "Maybe.": 0}},
          {"input": "Two answers?", "target_scores": {"A.": 1, "B.": 1}}]
    (tqa / "task_mc.json").write_text(json.dumps({"task_prefix": "Q: hi?\nA: Hello.\n", "example_input_prefix": "\nQ: ",
                                                  "example_output_prefix": "\nA: ", "examples": ex}))
    return tmp


def test_bigbench_builders(tmp_path):
    root = _bigbench_fixture(tmp_path)
    sva = build.agreement_items(root / "subject_verb_agreement", n=28, seed=0)
    assert len(sva) == 28 and sva == build.agreement_items(root / "subject_verb_agreement", n=28, seed=0)
    for it in sva:
        k = int(it["id"].rsplit("-", 1)[1])
        assert it["choices"][it["gold"]] == ("runs" if k % 2 == 0 else "run")
    assert {it["gold"] for it in sva} == {0, 1}  # shuffled: gold not always first
    tqa = build.truthfulqa_items(root / "truthful_qa", seed=0)
    assert len(tqa) == 1  # two true answers: not MC1
    assert tqa[0]["context"] == "Q: Is the sky green?\nA:"  # no few-shot prompt
    assert tqa[0]["choices"][tqa[0]["gold"]] == "No."


def test_write_task_round_trips_through_registry(tmp_path):
    items = build.last_word_items(DOCS, n=10, seed=0, min_words=20)
    spec = {"name": "lw", "description": "d", "source": "s", "licence": "l", "version": "", "target_delimiter": " "}
    full = build.write_task(tmp_path, spec, items)
    assert full["chance"] == 0.25 and full["n_items"] == 1
    task = get_tasks(["lw"], root=tmp_path)[0]
    assert [i.id for i in task.items()] == ["news-0"]


def test_last_word_context_is_trimmed_to_whole_sentences():
    doc = ("Alpha beta gamma delta. " * 30) + "The river flooded the river valley again and the river."
    items = build.last_word_items({"s": [doc]}, n=5, seed=0, min_words=5, max_words=20)
    it = items[0]
    assert it["choices"][it["gold"]] == "river"
    assert it["context"] == "Alpha beta gamma delta. Alpha beta gamma delta. The river flooded the river valley again and the"


def test_acc_norm_divides_by_utf8_bytes_not_characters(tmp_path):
    tok = CharTokenizer("xé ")
    x, e, sp = tok.vocab["x"], tok.vocab["é"], tok.vocab[" "]
    fwd = table_forward({sp: -1.0, e: -2.0, x: -1.3}, len(tok))
    task = _task(tmp_path, "utf", [{"id": "1", "context": "x", "choices": ["é", "xxx"], "gold": 0}])
    ds = mc.score_tasks(fwd, tok, [task])
    assert ds.n_bytes.sel(task="utf").values[0].tolist() == [3, 4]
    # per byte: -3/3 = -1.0 beats -4.9/4 = -1.225; per character (lm-eval) " é" would get -3/2 = -1.5 and lose
    assert ds.correct.sel(task="utf", metric="acc_norm").item() == 1.0
    assert ds.correct.sel(task="utf", metric="acc").item() == 1.0  # -3.0 > -4.9
