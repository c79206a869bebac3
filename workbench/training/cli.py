"""`workbench train`: train the shipped mini models (registered by workbench/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def train_cli(
    model: str = typer.Argument("all", help="mini-qwen3.5 | mini-falcon-h1 | mini-qwen2.5 | all"),
    tokens: Optional[int] = typer.Option(None, help="training tokens per model (default: configs)"),
    cycles: Optional[int] = typer.Option(None, help="cosine cycles with warm restarts (a run of N tokens in 1 "
                                         "cycle continues to 2N tokens in 2)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="sequences of 512 tokens per step"),
    lr: Optional[float] = typer.Option(None, help="peak learning rate (default: configs)"),
    embedding_lr_scale: Optional[float] = typer.Option(None, "--embedding-lr-scale",
                                                       help="embedding lr / lr (default: configs)"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: configs)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: data/models)"),
    resume: bool = typer.Option(True, "--resume/--fresh", help="continue from build/train/<model>/checkpoint.pt"),
    bf16: Optional[bool] = typer.Option(None, "--bf16/--fp32", help="bf16 autocast (default: configs)"),
    progress: bool = typer.Option(True, "--progress/--quiet"),
):
    """Train the mini models from scratch on build/corpus/train.txt, evaluate them, write their cards."""
    from workbench.training.card import loss_spread, meets_bigram_bar
    from workbench.training.configs import MINI_MODELS, TRAINING
    from workbench.training.pipeline import train_mini
    from workbench.training.train import TrainSettings

    names = list(MINI_MODELS) if model == "all" else [model]
    unknown = [n for n in names if n not in MINI_MODELS]
    if unknown:
        raise typer.BadParameter(f"unknown model {unknown[0]!r}; choose from {', '.join(MINI_MODELS)} or all")
    given = {"tokens": tokens, "cycles": cycles, "batch_size": batch_size, "lr": lr,
             "embedding_lr_scale": embedding_lr_scale, "bf16": bf16, "threads": threads}
    cards = []
    for name in names:
        # the shipped recipe (configs.TRAINING), then whatever was given here
        recipe = {**TRAINING, **{k: v for k, v in given.items() if v is not None}}
        threads_used = recipe.pop("threads")
        settings = TrainSettings(**recipe)
        card = train_mini(name, settings, threads=threads_used, out_root=out, resume=resume, progress=progress)
        cards.append(card)
        worst = min(card["quality"]["gain_over_bigram"].values())
        typer.echo(f"{name}: " + ", ".join(f"{s} {r['loss']:.3f}" for s, r in card["heldout"].items())
                   + f"; min gain over bigram {worst:.1%} ({'ok' if meets_bigram_bar(card) else 'BELOW BAR'})")
    if len(cards) > 1:
        spread = loss_spread(cards)
        typer.echo("held-out loss spread across models: " + ", ".join(f"{s} {v:.1%}" for s, v in spread.items()))
