"""Multiple-choice task builders: pinned packages and held-out texts -> data/tasks/.

Five zero-shot tasks (see data/tasks/README.md): two taken from BIG-bench task files in the
pinned sdist (subject-verb agreement, TruthfulQA MC1 subset) and three generated here from
held-out text (LAMBADA-style last word, next sentence, WordNet definitions of synsets held out
of training). Distractors are matched to the answer on what a context-blind model would use
(word frequency in the training text, length, the same words), so that the choice turns on the
context. Every draw comes from a seeded `random.Random`, so a rebuild writes the same bytes.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import tarfile
from collections import Counter
from pathlib import Path

from . import clean
from .fileio import atomic_write_text, sha256_file

SEED = 0
N_ITEMS = 400  # short items (agreement, next-sentence pairs)
N_GENERATED = 300  # passage-length items (last word)
N_DEFINITIONS = 800  # one-line items; together all tasks stay at about 350k tokens per model
BIGBENCH_TASKS_PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks/"
BIGBENCH_TASKS = ("subject_verb_agreement", "truthful_qa")
BIGBENCH_LICENCE = "Apache-2.0 (BIG-bench task data)"
CORPORA = ("encyclopedic", "news", "forum", "reviews", "books")
# English subject-verb agreement sub-tasks (the Italian and *_mini files are left out).
SVA_SUBTASKS = ("simple_english", "adv_english", "adv_adv_english", "adv_conjunction_english", "namepp_english",
                "nounpp_english", "nounpp_adv_english", "short_nested_inner_english",
                "short_nested_outer_english", "long_nested_inner_english", "long_nested_outer_english",
                "linzen2016_english", "gulordava_nonce_english", "frequency_disbalance_nonce_english")
STOPWORDS = set("""a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
nor not now of off on once only or other our ours ourselves out over own same she should so some such than that
the their theirs them themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself yourselves said one two three
like well even much many still back said says upon shall thus""".split())
_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z])")


# --- BIG-bench --------------------------------------------------------------------------

def extract_bigbench_tasks(archive: Path, cache: Path) -> Path:
    """Unpack the two task folders from the verified sdist into cache/extract/bigbench-tasks/ once."""
    root = cache / "extract" / "bigbench-tasks"
    done = root / ".done"
    marker = sha256_file(archive) + " " + ",".join(BIGBENCH_TASKS)
    if done.exists() and done.read_text().strip() == marker:
        return root / BIGBENCH_TASKS_PREFIX
    shutil.rmtree(root, ignore_errors=True)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    prefixes = tuple(BIGBENCH_TASKS_PREFIX + t + "/" for t in BIGBENCH_TASKS)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if member.name.startswith(prefixes) and member.name.endswith(".json") and member.isfile():
                tar.extract(member, tmp, filter="data")
    tmp.rename(root)
    done.write_text(marker)
    return root / BIGBENCH_TASKS_PREFIX


def _examples(path: Path) -> list[dict]:
    data = json.loads(path.read_text("utf-8"))
    return data["examples"]


def agreement_items(task_dir: Path, n: int = N_ITEMS, seed: int = SEED) -> list[dict]:
    """Minimal pairs: the same prefix, the verb in the agreeing and the non-agreeing number.

    An even share of each English sub-task, drawn without replacement; gold is the choice with
    target score 1, and the pair's order is shuffled so gold is not always first.
    """
    rng = random.Random(seed)
    per = -(-n // len(SVA_SUBTASKS))
    items = []
    for sub in SVA_SUBTASKS:
        examples = _examples(task_dir / f"{sub}.json")
        for k in sorted(rng.sample(range(len(examples)), min(per, len(examples)))):
            ex = examples[k]
            choices = list(ex["target_scores"])
            rng.shuffle(choices)
            gold = [ex["target_scores"][c] for c in choices].index(1)
            items.append({"id": f"{sub}-{k}", "context": ex["input"], "choices": choices, "gold": gold,
                          "meta": {"subtask": sub, "condition": ex.get("comment", "")}})
    return items[:n] if len(items) > n else items


def truthfulqa_items(task_dir: Path, seed: int = SEED) -> list[dict]:
    """BIG-bench truthful_qa multiple choice (task_mc.json): every question, exactly one true answer.

    The context is ``Q: <question>\nA:`` without the six-question prompt that BIG-bench and
    lm-eval's truthfulqa_mc1 put first (it would quadruple the tokens scored, and models this
    small do not use it); choices are shuffled with the seed (BIG-bench lists the true one first).
    """
    data = json.loads((task_dir / "task_mc.json").read_text("utf-8"))
    rng = random.Random(seed)
    items = []
    for k, ex in enumerate(data["examples"]):
        scores = ex["target_scores"]
        if sorted(scores.values()) != [0] * (len(scores) - 1) + [1]:
            continue  # MC1 needs exactly one correct answer
        choices = list(scores)
        rng.shuffle(choices)
        context = "Q: " + ex["input"] + "\nA:"
        items.append({"id": f"tqa-{k}", "context": context, "choices": choices,
                      "gold": [scores[c] for c in choices].index(1)})
    return items


# --- generated from held-out text --------------------------------------------------------

def read_documents(corpora_dir: Path, names=CORPORA) -> dict[str, list[str]]:
    """Held-out set name -> its documents (blank-line separated)."""
    return {name: clean.paragraphs((corpora_dir / f"{name}.txt").read_text("utf-8")) for name in names}


def _content(word: str) -> bool:
    return len(word) >= 4 and word.isalpha() and word.lower() not in STOPWORDS


def _trim(context: str, max_words: int) -> str:
    """The last whole sentences of ``context`` (and its unfinished final one) within ``max_words``."""
    parts = _SENTENCE_END.split(context)
    out = parts[-1]
    for part in reversed(parts[:-1]):
        if _n_words(out) + _n_words(part) > max_words:
            break
        out = part + " " + out
    return out


def _last_word_candidate(doc: str, min_words: int, max_words: int):
    """(context, gold word) for the last sentence-final content word repeated in its context.

    The context is the document up to the word, trimmed to whole sentences within ``max_words``
    (the sentence holding the word is always kept); at least ``min_words`` words must remain.
    """
    words = list(_WORD.finditer(doc))
    for k in range(len(words) - 1, 0, -1):
        m = words[k]
        after = doc[m.end():m.end() + 1]
        if after not in {".", "!", "?"} or not _content(m.group()):
            continue
        context = _trim(doc[:m.start()].rstrip(), max_words)
        before = [w.group().lower() for w in _WORD.finditer(context)]
        if len(before) >= min_words and m.group().lower() in before:
            return context, m.group()
    return None


def word_counts(texts) -> Counter:
    """Lower-cased word counts of ``texts`` (the training documents): the frequency distractors are matched on."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(w.lower() for w in _WORD.findall(text))
    return counts


def _log_count(counts: Counter, word: str) -> float:
    return math.log(counts.get(word.lower(), 0) + 1)


def last_word_items(sets: dict[str, list[str]], n: int = N_GENERATED, seed: int = SEED, counts: Counter | None = None,
                    n_choices: int = 4, min_words: int = 30, max_words: int = 80) -> list[dict]:
    """LAMBADA-style: predict a passage's final word, which occurs earlier in the passage.

    The context is the sentences before the word (a sentence-final content word), at most
    ``max_words`` words, as in LAMBADA's short passages. Distractors are other content words of
    the same passage, first those that occur in the context at least as often as the gold word,
    and among them those closest to it in training frequency (``counts``, log scale): neither
    "copy a word from the passage", "pick the most repeated word" nor "pick the most frequent
    word" solves the task. Without ``counts`` frequency is ignored.
    """
    rng = random.Random(seed)
    counts = counts if counts is not None else Counter()
    pool = []
    for name, docs in sets.items():
        for d, doc in enumerate(docs):
            cand = _last_word_candidate(doc, min_words, max_words)
            if cand is None:
                continue
            context, gold = cand
            before = _WORD.findall(context)
            in_context = Counter(w.lower() for w in before)
            first_form = {}
            for w in before:
                if _content(w) and w.lower() != gold.lower():
                    first_form.setdefault(w.lower(), w)
            if len(first_form) < n_choices - 1:
                continue
            need = in_context[gold.lower()]
            strong = sorted(w for w in first_form if in_context[w] >= need)
            weak = sorted(w for w in first_form if in_context[w] < need)
            rng.shuffle(strong)
            rng.shuffle(weak)
            g = _log_count(counts, gold)
            for group in (strong, weak):  # a stable sort: equal distances keep the shuffled order
                group.sort(key=lambda w: abs(_log_count(counts, w) - g))
            distractors = [first_form[w] for w in (strong + weak)[:n_choices - 1]]
            choices = [gold] + distractors
            rng.shuffle(choices)
            pool.append({"id": f"{name}-{d}", "context": context, "choices": choices,
                         "gold": choices.index(gold), "meta": {"set": name}})
    return _sample(pool, n, rng)


def sentences(doc: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(doc.replace("\n", " ")) if s.strip()]


def _n_words(s: str) -> int:
    return len(s.split())


def next_sentence_items(sets: dict[str, list[str]], n: int = N_ITEMS, seed: int = SEED, context_words: int = 40,
                        min_words: int = 4, max_words: int = 40) -> list[dict]:
    """Which of two sentences comes next: the document's next two sentences in their true order
    against the same two swapped (sentence-order prediction, as ALBERT's SOP).

    The context is the whole sentences before them within ``context_words`` words (at least one).
    Both choices hold the same words, so a context-blind model has nothing but the order to go on
    (chance 0.5, equal byte lengths); the sentence's own probability, which swamps the context
    when the other choice is an unrelated sentence, cancels. One pair per document, at a random
    position.
    """
    rng = random.Random(seed)
    pool = []
    for name, docs in sets.items():
        for d, doc in enumerate(docs):
            ss = sentences(doc)
            ks = []
            for k in range(1, len(ss) - 1):
                a, b = ss[k], ss[k + 1]
                if a == b or not all(min_words <= _n_words(x) <= max_words for x in (a, b)):
                    continue
                context = _trim(" ".join(ss[:k]), context_words)
                if _n_words(context) <= context_words:
                    ks.append((k, context))
            if not ks:
                continue
            k, context = rng.choice(ks)
            true, swapped = ss[k] + " " + ss[k + 1], ss[k + 1] + " " + ss[k]
            choices = [true, swapped]
            rng.shuffle(choices)
            pool.append({"id": f"{name}-{d}-{k}", "context": context, "choices": choices,
                         "gold": choices.index(true), "meta": {"set": name}})
    return _sample(pool, n, rng)


def _sample(pool: list[dict], n: int, rng: random.Random) -> list[dict]:
    if len(pool) <= n:
        return pool
    keep = sorted(rng.sample(range(len(pool)), n))
    return [pool[i] for i in keep]


# --- WordNet definitions held out of training ------------------------------------------

WORDNET_POS = ("noun", "verb", "adj", "adv")


def training_gloss_lines(train_texts) -> set[str]:
    """Every line of the training documents (WordNet glosses are one line each there)."""
    lines = set()
    for text in train_texts:
        lines.update(text.split("\n"))
    return lines


def wordnet_synsets(wordnet_root: Path, train_lines: set[str]) -> list[dict]:
    """Every WordNet synset: offset, part of speech, words, definition (the gloss without its quoted
    examples), and ``heldout``: whether its training line ('words: gloss') is absent from the training text."""
    out = []
    for pos in WORDNET_POS:
        text = (wordnet_root / "usr/share/wordnet" / f"data.{pos}").read_text("utf-8", "replace")
        for line in text.splitlines():
            full = clean.wordnet_gloss(line)
            if full is None:
                continue
            words, gloss = full.split(": ", 1)
            definition = gloss.split('; "')[0].strip().rstrip(";").strip()
            out.append({"offset": line.split()[0], "pos": pos, "words": words, "definition": definition,
                        "heldout": full not in train_lines})
    return out


def _headword(s: dict) -> str | None:
    """The synset's only word if it is one plain lower-case word (the usual dictionary headword)."""
    w = s["words"]
    return w if w.isalpha() and w.islower() else None


def definition_items(synsets: list[dict], counts: Counter, n: int = N_DEFINITIONS, seed: int = SEED,
                     n_choices: int = 4, min_words: int = 3, max_words: int = 20, min_count: int = 20,
                     factor: float = 1.5) -> list[dict]:
    """Which word does a held-out definition define: the line ``word: definition`` (the training
    corpus's WordNet format) with the synset's word and with three other words.

    Every choice holds the same definition, so its own probability cancels and what decides is
    how well each word predicts it (the words' own probabilities are matched: same part of
    speech, training frequency within ``factor``). Gold synsets are held out of training, have one
    plain word that occurs at least ``min_count`` times in training (the model has met the word,
    not this definition of it), a definition of ``min_words``-``max_words`` words that neither
    contains the word nor is the definition of a synset in training. Distractors are one-word
    lemmas of the same part of speech that share no synset with the word and do not occur in the
    definition. The context is empty: the line starts a document.
    """
    rng = random.Random(seed)
    synonyms: dict[str, set[str]] = {}
    lemmas: dict[str, set[str]] = {}
    for s in synsets:
        words = [w.lower() for w in s["words"].split(", ")]
        for w in words:
            synonyms.setdefault(w, set()).update(words)
        if _headword(s):
            lemmas.setdefault(s["pos"], set()).add(s["words"])
    by_pos = {pos: sorted(ws) for pos, ws in lemmas.items()}
    trained = {s["definition"] for s in synsets if not s["heldout"]}
    usable = [s for s in synsets if s["heldout"] and _headword(s) and counts.get(s["words"], 0) >= min_count
              and min_words <= _n_words(s["definition"]) <= max_words and s["definition"] not in trained
              and s["words"] not in _WORD.findall(s["definition"].lower())]
    order = list(range(len(usable)))
    rng.shuffle(order)
    picked = {}
    for i in order:
        if len(picked) == n:
            break
        s = usable[i]
        word, c = s["words"], counts[s["words"]]
        in_def = {w.lower() for w in _WORD.findall(s["definition"])}
        near = [w for w in by_pos[s["pos"]] if c / factor <= counts.get(w, 0) <= c * factor
                and w not in synonyms[word] and w not in in_def]
        if len(near) < n_choices - 1:
            continue
        words = [word] + rng.sample(near, n_choices - 1)
        rng.shuffle(words)
        picked[i] = {"id": f"{s['pos']}-{s['offset']}", "context": "",
                     "choices": [f"{w}: {s['definition']}" for w in words], "gold": words.index(word),
                     "meta": {"pos": s["pos"]}}
    return [picked[i] for i in sorted(picked)]  # in WordNet file order


# --- writing -----------------------------------------------------------------------------

def write_task(out_dir: Path, spec: dict, items: list[dict]) -> dict:
    """data/tasks/<name>.jsonl and <name>.json (chance level and item count from the items)."""
    name = spec["name"]
    if not items:
        raise ValueError(f"task {name!r}: the builder produced no items (are the source files empty or the "
                         "filters too strict for them?)")
    body = "".join(json.dumps(it, ensure_ascii=False, sort_keys=False) + "\n" for it in items)
    atomic_write_text(out_dir / f"{name}.jsonl", body)
    full = {**spec, "items": f"{name}.jsonl", "metrics": ["acc", "acc_norm"], "num_fewshot": 0,
            "n_items": len(items), "chance": round(sum(1 / len(it["choices"]) for it in items) / len(items), 6)}
    atomic_write_text(out_dir / f"{name}.json", json.dumps(full, indent=2, ensure_ascii=False) + "\n")
    return full


def build_tasks(bigbench_tasks_dir: Path, wordnet_root: Path, corpora_dir: Path, train_texts,
                out_dir: Path, n: int | None = None, seed: int = SEED, log=print) -> dict[str, dict]:
    """Write all five tasks; ``train_texts``: the training documents (the WordNet hold-out and the
    word frequencies distractors are matched on); ``n`` caps every task's item count."""
    sets = read_documents(corpora_dir)
    counts = word_counts(train_texts)
    synsets = wordnet_synsets(wordnet_root, training_gloss_lines(train_texts))

    def cap(k: int) -> int:
        return k if n is None else min(k, n)

    by = "workbench.databuild.tasks"
    bb = "bigbench 1.0.0 (PyPI sdist), benchmark_tasks/"
    heldout_text = {"source": "data/corpora/*.txt (held-out sets)", "licence": "as the held-out sets (CC BY 4.0 "
                    "SQuAD-shifts; public-domain novels)", "version": ""}
    specs = [
        ({"name": "agreement", "description": "subject-verb agreement minimal pairs (English sub-tasks, "
          "an even share of each)", "source": bb + "subject_verb_agreement", "licence": BIGBENCH_LICENCE,
          "version": "bigbench-1.0.0", "target_delimiter": "", "generated_by": f"{by}.agreement_items"},
         lambda: agreement_items(bigbench_tasks_dir / "subject_verb_agreement", cap(N_ITEMS), seed)),
        ({"name": "truthfulqa_mc1", "description": "TruthfulQA multiple choice, one true answer (MC1 style); "
          "the 299-question subset shipped as BIG-bench truthful_qa/task_mc.json, not all 817 questions; "
          "no few-shot prompt before the question",
          "source": bb + "truthful_qa/task_mc.json", "licence": BIGBENCH_LICENCE + "; TruthfulQA: Apache-2.0",
          "version": "bigbench-1.0.0", "target_delimiter": " ", "generated_by": f"{by}.truthfulqa_items"},
         lambda: truthfulqa_items(bigbench_tasks_dir / "truthful_qa", seed)[:n]),
        ({"name": "last_word", "description": "LAMBADA-style: the passage's final word, which occurs earlier "
          "in the passage; distractors are other content words of the passage, matched to it in training "
          "word frequency", **heldout_text, "target_delimiter": " ", "generated_by": f"{by}.last_word_items"},
         lambda: last_word_items(sets, cap(N_GENERATED), seed, counts)),
        ({"name": "next_sentence", "description": "which of two sentences comes next: the next two sentences "
          "in their true order against the same two swapped (sentence-order prediction), after up to 40 "
          "words of the document", **heldout_text, "target_delimiter": " ",
          "generated_by": f"{by}.next_sentence_items"},
         lambda: next_sentence_items(sets, cap(N_ITEMS), seed)),
        ({"name": "wordnet_definition", "description": "which word a definition defines: the line 'word: "
          "definition' with the synset's word against three words of the same part of speech and training "
          "frequency; only synsets whose gloss is not in the training corpus",
          "source": "wordnet-base 1:3.0-37 (Debian), data.{noun,verb,adj,adv}",
          "licence": "WordNet 3.0 licence (BSD-style)", "version": "WordNet 3.0", "target_delimiter": "",
          "generated_by": f"{by}.definition_items"},
         lambda: definition_items(synsets, counts, cap(N_DEFINITIONS), seed)),
    ]
    out = {}
    for spec, make in specs:
        items = make()
        out[spec["name"]] = write_task(out_dir, spec, items)
        log(f"  {spec['name']}: {len(items)} items, chance {out[spec['name']]['chance']:.3f}")
    return out


def build_tasks_from_cache(cache: Path, data_dir: Path, train_path: Path | None = None,
                           allow_download: bool = True, log=print) -> dict[str, dict]:
    """Standalone build: pinned packages from the cache; the training text from ``train_path`` if
    given and present, else re-derived with the corpus builder's own code (same bytes)."""
    from . import fetch
    from .sources import PACKAGES

    bb = extract_bigbench_tasks(fetch.fetch(PACKAGES["bigbench"], cache, allow_download), cache)
    wn = fetch.extract(PACKAGES["wordnet-base"], fetch.fetch(PACKAGES["wordnet-base"], cache, allow_download), cache)
    if train_path is not None and Path(train_path).exists():
        from .assemble import read_train

        log(f"training text from {train_path}")
        train_texts = read_train(Path(train_path))
    else:
        log("re-deriving the training corpus (no train.txt): fetch, read, assemble")
        train_texts = derive_training_texts(cache, allow_download, log)
    return build_tasks(bb, wn, data_dir / "corpora", train_texts, data_dir / "tasks", log=log)


def derive_training_texts(cache: Path, allow_download: bool = True, log=print) -> list[str]:
    """The training documents exactly as `build_from_roots` assembles them."""
    from . import assemble as asm
    from . import fetch, heldout, readers
    from .sources import BIGBENCH_MEMBER_PREFIX

    roots = fetch.fetch_all(cache, allow_download)
    docs = readers.read_all(roots, progress=lambda n: log(f"  {n}"))
    sets = heldout.squad_sets(roots["bigbench"] / BIGBENCH_MEMBER_PREFIX)
    sets.append(heldout.books_set(docs))
    return [d.text for d in asm.assemble(docs, [hs.text for hs in sets], heldout.HELDOUT_BOOKS).docs]
