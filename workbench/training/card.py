"""Model cards: `card.json` (machine-readable) and `README.md` (the same numbers, for people)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

# The quality bar every shipped model must clear (issue "Embedded default").
MIN_GAIN_OVER_BIGRAM = 0.25  # perplexity at least 25% below the add-k bigram's, on every set
MAX_LOSS_SPREAD = 0.15  # held-out losses of the shipped models within 15% of each other


def hardware(threads: int) -> str:
    """E.g. '2 CPU cores (no GPU), Intel(R) Xeon(R) Processor, 2 torch threads'."""
    import torch

    cpu = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "GPU present, unused" if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({gpu}), {cpu}, {threads} torch thread(s)"


def gains(card: dict) -> dict[str, float]:
    """Relative perplexity improvement over the bigram per held-out set: 1 - ppl_model / ppl_bigram."""
    return {s: 1 - r["perplexity"] / card["bigram"]["heldout"][s]["perplexity"] for s, r in card["heldout"].items()}


def meets_bigram_bar(card: dict) -> bool:
    return all(g >= MIN_GAIN_OVER_BIGRAM for g in gains(card).values())


def loss_spread(cards: list[dict]) -> dict[str, float]:
    """Per held-out set: (max - min) / min of the models' losses."""
    sets = set.intersection(*(set(c["heldout"]) for c in cards))
    spread = {}
    for s in sorted(sets):
        losses = [c["heldout"][s]["loss"] for c in cards]
        spread[s] = (max(losses) - min(losses)) / min(losses)
    return spread


def write_card(out_dir: Path, card: dict) -> dict:
    card = dict(card)
    card["quality"] = {"gain_over_bigram": gains(card), "min_gain_required": MIN_GAIN_OVER_BIGRAM,
                       "meets_bigram_bar": meets_bigram_bar(card)}
    Path(out_dir, "card.json").write_text(json.dumps(card, indent=1) + "\n")
    Path(out_dir, "README.md").write_text(render(card))
    return card


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def render(card: dict) -> str:
    t, p, cfg = card["training"], card["parameters"], card["config"]
    proto = card["protocol"]
    lines = [
        f"# {card['name']}",
        "",
        f"A small **{card['model_class']}** (`model_type: {card['model_type']}`, {card['topology']}) trained from "
        f"scratch for the hybrid-LM ablation workbench: the shape of `{card['published']}` scaled down "
        "(see `workbench/training/configs.py`). It loads with `from_pretrained` and goes through the same "
        "component map as the published model. It is a test subject for ablations, not a useful language model.",
        "",
        "## Configuration",
        "",
        "| field | value |",
        "|---|---|",
    ]
    lines += [f"| `{k}` | `{json.dumps(v)}` |" for k, v in cfg.items()]
    lines += [
        "",
        "## Parameters",
        "",
        f"- total (tied embeddings counted once): {_fmt_int(p['total'])}",
        f"- embedding: {_fmt_int(p['embedding'])}",
        f"- non-embedding: {_fmt_int(p['non_embedding'])}",
        f"- stored as {card['saved_dtype']} safetensors; the numbers below come from those weights as loaded "
        f"by `workbench.loading.load_model` (float32)",
        "",
        "## Training",
        "",
        f"- data: `{t['corpus']}` (sha256 `{t['corpus_sha256'][:16]}...`, {_fmt_int(t['corpus_tokens'])} tokens with "
        f"the workbench tokenizer, vocabulary {card['config'].get('vocab_size')}); the last "
        f"{_fmt_int(t['validation_tokens'])} tokens are a validation slice, never trained on",
        f"- order: non-overlapping windows of {t['seq_len']} + 1 tokens in a permutation seeded with {t['seed']} "
        "(the same windows in the same order for every shipped model)",
        f"- tokens trained: {_fmt_int(t['tokens'])} ({_fmt_int(t['steps'])} steps x batch {t['batch_size']} x "
        f"sequence length {t['seq_len']})",
        f"- optimiser: AdamW (betas {t['betas']}, weight decay {t['weight_decay']} on matrices), peak lr {t['lr']} "
        f"(embedding x{t.get('embedding_lr_scale', 1.0):g}), "
        + (f"{t['cycles']} cosine cycles with warm restarts, each with " if t.get("cycles", 1) > 1 else "")
        + f"linear warmup {t['warmup_steps']} steps, cosine decay to {t['min_lr_ratio']} x peak, "
        f"gradient clipping at {t['grad_clip']}, {'bf16 autocast' if t['bf16'] else 'float32'}",
        f"- final training loss {t['final_loss']:.4f}, validation loss {t['val_loss']:.4f}"
        if t.get("val_loss") is not None else f"- final training loss {t['final_loss']:.4f}",
        f"- wall time: {t['wall_time_s'] / 60:.1f} min ({t['tokens_per_s']:,.0f} tokens/s) on {t['hardware']}",
        f"- software: torch {t['versions']['torch']}, transformers {t['versions']['transformers']}, "
        f"tokenizers {t['versions']['tokenizers']}, Python {t['versions']['python']}",
        "",
        "Reproduce:",
        "",
        "```",
        t["command"],
        "```",
        "",
        "## Held-out evaluation",
        "",
        f"Rolling windows of context {proto['context']}, stride {proto['stride']}: every token after the first of "
        "each held-out text is scored once (`workbench.evaluate.perplexity`). The baseline is an add-k smoothed "
        f"bigram fitted on the same training tokens (k = {card['bigram']['k']:.4g}, chosen on the validation "
        "slice), scored the same way. The model was trained without a prefix token (training windows are plain "
        "slices of the token stream, documents separated by `<|endoftext|>`) and its tokenizer adds none, so "
        "`workbench run --prefix-token auto` scores it without one, as here. Bits per byte divide the summed "
        "NLL of the scored tokens by ln 2 times the UTF-8 bytes those tokens cover.",
        "",
        "| set | tokens | loss | perplexity | bits/byte | bigram loss | bigram perplexity | bigram bits/byte | "
        "perplexity gain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    gain = card["quality"]["gain_over_bigram"]
    for s, r in card["heldout"].items():
        b = card["bigram"]["heldout"][s]
        lines.append(f"| {s} | {_fmt_int(r['n_tokens'])} | {r['loss']:.4f} | {r['perplexity']:.2f} | "
                     f"{r['bits_per_byte']:.4f} | {b['loss']:.4f} | {b['perplexity']:.2f} | "
                     f"{b['bits_per_byte']:.4f} | {gain[s]:.1%} |")
    verdict = "meets" if card["quality"]["meets_bigram_bar"] else "does NOT meet"
    lines += [
        "",
        f"Perplexity gain = 1 - perplexity / bigram perplexity. This model {verdict} the bar of at least "
        f"{MIN_GAIN_OVER_BIGRAM:.0%} on every set.",
        "",
    ]
    return "\n".join(lines)
