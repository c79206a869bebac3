"""One shipped model end to end: tokens -> train -> save -> held-out evaluation -> bigram -> card."""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from workbench.paths import REPO_ROOT, data_dir
from workbench.training import card as cards
from workbench.training.bigram import AddKBigram
from workbench.training.configs import MINI_MODELS, TokenIds, parameter_counts
from workbench.training.data import WindowOrder, load_tokens, split_validation
from workbench.training.train import TrainSettings, train

HELDOUT_SETS = ("encyclopedic", "news", "forum", "reviews", "books")
PROTOCOL = {"context": 512, "stride": 256, "batch_size": 8}
VALIDATION_TOKENS = 65_536  # tail of the training stream: picks the bigram's k, tracks training


def default_paths() -> dict[str, Path]:
    return {
        "corpus": REPO_ROOT / "build" / "corpus" / "train.txt",
        "tokenizer": data_dir() / "tokenizer",
        "token_cache": REPO_ROOT / "build" / "tokens",
        "work": REPO_ROOT / "build" / "train",
        "out": data_dir() / "models",
    }


def _display_path(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def token_ids(tokenizer) -> TokenIds:
    return TokenIds(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def evaluate_heldout(model_dir: Path, sets=HELDOUT_SETS) -> tuple[dict[str, dict], dict[str, dict]]:
    """Held-out results of the saved weights as `load_model` loads them, and the per-window NLLs.

    The per-window sums go into the card for statistics over windows (bootstrap intervals).
    """
    from workbench.corpora import load_corpus
    from workbench.evaluate.perplexity import perplexity
    from workbench.loading import load_model

    loaded = load_model(str(model_dir))
    results, windows = {}, {}
    for name in sets:
        corpus = load_corpus(name, loaded.tokenizer)
        r = perplexity(loaded.model, corpus.ids, context=PROTOCOL["context"], stride=PROTOCOL["stride"],
                       batch_size=PROTOCOL["batch_size"], n_bytes=corpus.scored_bytes())
        results[name] = {"loss": r.loss, "perplexity": r.perplexity, "bits_per_byte": r.bits_per_byte,
                         "n_tokens": r.n_tokens}
        windows[name] = {"nll": [float(x) for x in r.window_nll], "tokens": [int(x) for x in r.window_tokens]}
    return results, windows


def bigram_baseline(order: WindowOrder, n_windows: int, val_tokens: np.ndarray, tokenizer,
                    sets=HELDOUT_SETS) -> dict:
    """Add-k bigram on exactly the windows the model trained on (each once), k on the validation slice."""
    from workbench.corpora import load_corpus

    seen = np.unique(order.window_ids(0, n_windows))  # repeated epochs count once
    L = order.seq_len
    bigram = AddKBigram(len(tokenizer)).fit(order.tokens[w * L:(w + 1) * L + 1] for w in seen)
    k = bigram.select_k(val_tokens)
    heldout = {}
    for name in sets:
        corpus = load_corpus(name, tokenizer)
        heldout[name] = bigram.score(corpus.ids.numpy(), n_bytes=corpus.n_bytes).as_dict()
    val = bigram.score(val_tokens).loss
    return {"k": k, "train_pairs": int(bigram.n_pairs), "validation_loss": val, "heldout": heldout}


def reproduce_command(name: str, settings: TrainSettings, threads: int) -> str:
    args = ["workbench", "train", name, "--tokens", str(settings.tokens), "--cycles", str(settings.cycles),
            "--batch-size", str(settings.batch_size),
            "--lr", f"{settings.lr:g}", "--embedding-lr-scale", f"{settings.embedding_lr_scale:g}",
            "--threads", str(threads)]
    args.append("--bf16" if settings.bf16 else "--fp32")
    return shlex.join(args)


def train_mini(name: str, settings: TrainSettings, threads: int = 2, out_root: Path | None = None,
               resume: bool = True, paths: dict | None = None, progress: bool = True,
               save_dtype: torch.dtype = torch.float16) -> dict:
    """Train mini model `name`, save it under out_root/name, evaluate it, write its card; return the card."""
    from transformers import AutoTokenizer

    paths = {**default_paths(), **(paths or {})}
    spec = MINI_MODELS[name]
    for key in ("corpus", "tokenizer"):
        if not Path(paths[key]).exists():
            raise FileNotFoundError(f"{key} not found at {paths[key]}; build the data first "
                                    "(workbench data build)")
    torch.set_num_threads(threads)

    tokenizer = AutoTokenizer.from_pretrained(paths["tokenizer"])
    stream = load_tokens(paths["corpus"], paths["tokenizer"], paths["token_cache"])
    train_part, val_part = split_validation(stream, VALIDATION_TOKENS)
    order = WindowOrder(np.asarray(train_part), settings.seq_len, settings.seed)
    val_part = np.asarray(val_part)

    model = spec.build(token_ids(tokenizer), seed=settings.seed)
    counts = parameter_counts(model)
    work = Path(paths["work"]) / name
    result = train(model, order, settings, checkpoint=work / "checkpoint.pt", resume=resume,
                   val_tokens=val_part, progress=progress, desc=name)

    out_dir = Path(out_root or paths["out"]) / name
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(save_dtype).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (work / "history.json").write_text(json.dumps(result.history, indent=1))

    heldout, heldout_windows = evaluate_heldout(out_dir)
    bigram = bigram_baseline(order, result.steps * settings.batch_size, val_part, tokenizer)

    import tokenizers
    import transformers

    config = spec.config(token_ids(tokenizer)).to_diff_dict()
    config.pop("transformers_version", None)
    card = {
        "name": name,
        "model_class": spec.model_class.__name__,
        "model_type": model.config.model_type,
        "topology": spec.topology,
        "published": spec.published,
        "config": config,
        "parameters": counts,
        "saved_dtype": str(save_dtype).removeprefix("torch."),
        "training": {
            **{k: v for k, v in asdict(settings).items() if k not in ("tokens", "checkpoint_every", "log_every")},
            "betas": list(settings.betas),
            "tokens": result.tokens,
            "steps": result.steps,
            "warmup_steps": settings.warmup_steps,
            "wall_time_s": result.wall_time_s,
            "tokens_per_s": result.tokens / result.wall_time_s if result.wall_time_s else None,
            "final_loss": result.final_loss,
            "val_loss": result.val_loss,
            "corpus": _display_path(Path(paths["corpus"])),
            "corpus_sha256": hashlib.sha256(Path(paths["corpus"]).read_bytes()).hexdigest(),
            "corpus_tokens": int(len(stream)),
            "validation_tokens": int(len(val_part)),
            "threads": threads,
            "hardware": cards.hardware(threads),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "tokenizers": tokenizers.__version__, "python": sys.version.split()[0]},
            "command": reproduce_command(name, settings, threads),
        },
        "protocol": dict(PROTOCOL),
        "heldout": heldout,
        "bigram": bigram,
        "heldout_windows": heldout_windows,
    }
    return cards.write_card(out_dir, card)
