"""Training loop, data order, bigram baseline, mini configs; and (slow) the shipped mini models."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from workbench.training.bigram import AddKBigram
from workbench.training.configs import MINI_MODELS, TokenIds, parameter_counts
from workbench.training.data import WindowOrder, split_validation, tokenize_documents
from workbench.training.train import TrainSettings, train

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "data" / "models"


def tiny_model(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=True)
    return Qwen2ForCausalLM(config)


def patterned_tokens(n: int = 4000, seed: int = 0) -> np.ndarray:
    """A learnable stream: mostly a fixed cycle through 16 tokens, with some noise."""
    rng = np.random.default_rng(seed)
    tokens = np.arange(n) % 16
    noise = rng.random(n) < 0.1
    tokens[noise] = rng.integers(16, 32, noise.sum())
    return tokens.astype(np.uint16)


def tiny_settings(**kw) -> TrainSettings:
    base = dict(tokens=4 * 16 * 30, batch_size=4, seq_len=16, lr=1e-2, warmup_fraction=0.1,
                checkpoint_every=5, eval_every=10, log_every=5)
    return TrainSettings(**{**base, **kw})


# --- training loop ---------------------------------------------------------------------------

def test_loss_decreases():
    model = tiny_model()
    settings = tiny_settings()
    order = WindowOrder(patterned_tokens(), settings.seq_len, seed=0)
    result = train(model, order, settings, progress=False)
    assert result.steps == settings.steps == 30
    assert result.history[0]["loss"] > 3.0  # about log(32) at the start
    assert result.final_loss < result.history[0]["loss"] - 1.0


def test_resume_continues_identically(tmp_path):
    settings = tiny_settings(tokens=4 * 16 * 12)
    order = WindowOrder(patterned_tokens(), settings.seq_len, seed=3)

    straight = tiny_model()
    train(straight, order, settings, checkpoint=tmp_path / "a.pt", progress=False)

    interrupted = tiny_model()
    first = train(interrupted, order, settings, checkpoint=tmp_path / "b.pt", stop_after=5, progress=False)
    assert first.steps == 5
    resumed = tiny_model()  # a fresh process would rebuild the model before loading the checkpoint
    second = train(resumed, order, settings, checkpoint=tmp_path / "b.pt", resume=True, progress=False)
    assert second.steps == settings.steps

    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_finished_run_continues_into_a_second_cycle(tmp_path):
    one = tiny_settings(tokens=4 * 16 * 6)
    two = tiny_settings(tokens=4 * 16 * 12, cycles=2)
    assert two.steps == 2 * one.steps and [two.lr_at(i) for i in range(6)] == [one.lr_at(i) for i in range(6)]
    assert two.lr_at(6) == two.lr_at(0)  # warm restart
    order = WindowOrder(patterned_tokens(), 16, seed=1)

    straight = tiny_model()
    train(straight, order, two, checkpoint=tmp_path / "a.pt", progress=False)
    train(tiny_model(), order, one, checkpoint=tmp_path / "b.pt", progress=False)  # a finished 1-cycle run
    resumed = tiny_model()
    result = train(resumed, order, two, checkpoint=tmp_path / "b.pt", resume=True, progress=False)
    assert result.steps == two.steps
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_resume_refuses_other_settings(tmp_path):
    settings = tiny_settings(tokens=4 * 16 * 6)
    order = WindowOrder(patterned_tokens(), settings.seq_len)
    train(tiny_model(), order, settings, checkpoint=tmp_path / "c.pt", stop_after=5, progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(tiny_model(), order, tiny_settings(tokens=4 * 16 * 6, lr=5e-3), checkpoint=tmp_path / "c.pt",
              resume=True, progress=False)


def test_optimizer_groups():
    from workbench.training.train import make_optimizer

    model = tiny_model()
    opt = make_optimizer(model, tiny_settings(embedding_lr_scale=3.0))
    decay, vectors, embedding = opt.param_groups
    assert [p for p in embedding["params"]] == [model.get_input_embeddings().weight]
    assert embedding["lr_scale"] == 3.0 and embedding["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in vectors["params"])
    n_unique = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(vectors["params"]) + len(embedding["params"]) == n_unique


def test_lr_schedule():
    s = TrainSettings(tokens=100 * 8 * 512, batch_size=8, lr=1e-3, warmup_fraction=0.1, min_lr_ratio=0.1)
    assert s.steps == 100 and s.warmup_steps == 10
    assert s.lr_at(0) == pytest.approx(1e-4)
    assert s.lr_at(9) == pytest.approx(1e-3)
    assert s.lr_at(99) == pytest.approx(1e-4, rel=0.01)
    assert all(s.lr_at(i) >= s.lr_at(i + 1) for i in range(10, 99))


# --- data --------------------------------------------------------------------------------------

def test_window_order_covers_each_window_once_per_epoch():
    tokens = np.arange(16 * 10 + 1, dtype=np.uint16)
    order = WindowOrder(tokens, seq_len=16, seed=7)
    assert order.n_windows == 10
    first = order.window_ids(0, 10)
    assert sorted(first) == list(range(10))
    assert list(order.window_ids(0, 10)) == list(first)  # a pure function of the position
    assert sorted(order.window_ids(10, 10)) == list(range(10))  # next epoch, new permutation
    batch = order.batch(1, 3)
    assert batch.shape == (3, 17)
    for row, w in zip(batch, order.window_ids(3, 3)):
        assert list(row) == list(range(w * 16, w * 16 + 17))  # inputs and targets overlap by one


def test_split_validation_takes_the_tail():
    tokens = np.arange(1000)
    train_part, val = split_validation(tokens, 100)
    assert list(val) == list(range(900, 1000)) and len(train_part) == 900


def test_tokenize_documents_separates_with_eot():
    from workbench.tokenization import byte_tokenizer

    tok = byte_tokenizer()
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    ids = tokenize_documents(["ab", "c"], tok, eot)
    assert list(ids) == tok("ab")["input_ids"] + [eot] + tok("c")["input_ids"] + [eot]


# --- bigram -------------------------------------------------------------------------------------

def test_bigram_matches_direct_count_formula():
    rng = np.random.default_rng(0)
    V, k = 7, 0.3
    train_seqs = [rng.integers(0, V, 50) for _ in range(4)]
    test_ids = rng.integers(0, V, 40)
    pairs, contexts = Counter(), Counter()
    for seq in train_seqs:
        for a, b in zip(seq[:-1], seq[1:]):
            pairs[a, b] += 1
            contexts[a] += 1
    expected = -np.mean([math.log((pairs[a, b] + k) / (contexts[a] + k * V))
                         for a, b in zip(test_ids[:-1], test_ids[1:])])
    bigram = AddKBigram(V, k=k).fit(train_seqs)
    score = bigram.score(test_ids, n_bytes=80)
    assert bigram.n_pairs == 4 * 49
    assert score.n_tokens == 39
    assert score.loss == pytest.approx(expected, rel=1e-12)
    assert score.bits_per_byte == pytest.approx(expected * 39 / math.log(2) / 80)
    # probabilities of each context sum to one
    probs = (bigram.counts + k) / (bigram.counts.sum(1, keepdims=True) + k * V)
    assert np.allclose(probs.sum(1), 1.0)


def test_bigram_k_minimises_validation_loss():
    rng = np.random.default_rng(1)
    V = 50
    stream = rng.zipf(1.5, 3000) % V
    bigram = AddKBigram(V).fit([stream[:2000]])
    k = bigram.select_k(stream[2000:])
    best = bigram.score(stream[2000:]).loss
    for other in (k / 3, k * 3, 1e-4, 10.0):
        assert AddKBigram(V, k=other).fit([stream[:2000]]).score(stream[2000:]).loss >= best - 1e-9


# --- mini configs ----------------------------------------------------------------------------------

def test_mini_configs_shapes_and_matched_sizes():
    ids = TokenIds(vocab_size=4096, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    counts = {}
    for name, spec in MINI_MODELS.items():
        config = spec.config(ids)
        with torch.device("meta"):
            model = spec.model_class(config)
        counts[name] = parameter_counts(model)["non_embedding"]
        assert config.tie_word_embeddings
    q35 = MINI_MODELS["mini-qwen3.5"].config(ids)
    assert q35.num_hidden_layers % 4 == 0
    assert q35.layer_types == ["linear_attention"] * 3 + ["full_attention"] + \
        ["linear_attention"] * 3 + ["full_attention"]
    assert max(counts.values()) <= 1.10 * min(counts.values()), counts


# --- shipped models (slow) ----------------------------------------------------------------------

def shipped_cards() -> dict[str, dict]:
    if not MODELS_DIR.exists():
        return {}
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(MODELS_DIR.glob("*/card.json"))}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MINI_MODELS))
def test_shipped_model_matches_its_card(name):
    """load_model(name) reproduces the card's held-out loss (1e-3) on one whole held-out set, a
    different one for each model (every set in full would take ~8 minutes of one core)."""
    from workbench.corpora import load_corpus
    from workbench.evaluate.perplexity import perplexity
    from workbench.loading import load_model

    card = shipped_cards().get(name)
    assert card is not None, f"{name} is not in data/models (train it: workbench train {name})"
    loaded = load_model(name)
    assert type(loaded.model).__name__ == card["model_class"]
    proto = card["protocol"]
    corpus_name = sorted(card["heldout"])[sorted(MINI_MODELS).index(name) % len(card["heldout"])]
    expected = card["heldout"][corpus_name]
    corpus = load_corpus(corpus_name, loaded.tokenizer)
    res = perplexity(loaded.model, corpus.ids, context=proto["context"], stride=proto["stride"],
                     batch_size=proto["batch_size"], n_bytes=corpus.scored_bytes())
    assert res.n_tokens == expected["n_tokens"], \
        f"{corpus_name}: the loaded tokenizer splits the text differently from training"
    assert res.loss == pytest.approx(expected["loss"], abs=1e-3), corpus_name
    assert res.bits_per_byte == pytest.approx(expected["bits_per_byte"], abs=1e-3), corpus_name


@pytest.mark.slow
def test_shipped_models_meet_quality_bar():
    from workbench.training.card import MAX_LOSS_SPREAD, gains, loss_spread

    shipped = shipped_cards()
    missing = [n for n in MINI_MODELS if n not in shipped]
    assert not missing, f"not in data/models: {missing}"
    cards = [shipped[n] for n in MINI_MODELS]
    for card in cards:
        for corpus_name, gain in gains(card).items():
            assert gain >= 0.25, (card["name"], corpus_name, gain)
    for corpus_name, spread in loss_spread(cards).items():
        assert spread <= MAX_LOSS_SPREAD, (corpus_name, spread)


def test_shipped_models_share_their_training_tokens():
    """Same corpus, same windows in the same order, same token count, same tokenizer; the card's
    recipe is the shipped one (configs.TRAINING)."""
    from workbench.training.configs import TRAINING

    shipped = shipped_cards()
    assert set(MINI_MODELS) <= set(shipped), f"not in data/models: {sorted(set(MINI_MODELS) - set(shipped))}"
    same = [(c["training"]["corpus_sha256"], c["training"]["seed"], c["training"]["seq_len"],
             c["training"]["tokens"], c["config"]["vocab_size"]) for c in shipped.values()]
    assert len(set(same)) == 1, same
    tokenizers = {(MODELS_DIR / name / "tokenizer.json").read_bytes() for name in shipped}
    assert len(tokenizers) == 1
    for name, card in shipped.items():
        for key in ("cycles", "batch_size", "lr", "embedding_lr_scale", "bf16"):
            assert card["training"][key] == TRAINING[key], (name, key)


def test_readme_table_matches_the_cards():
    readme = (MODELS_DIR.parents[1] / "README.md").read_text()
    for name, card in shipped_cards().items():
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"README has no row for {name}"
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        expected = [f"{r['loss']:.3f}" for r in card["heldout"].values()]
        expected.append(f"{min(card['quality']['gain_over_bigram'].values()):.1%}")
        assert cells == expected, name
