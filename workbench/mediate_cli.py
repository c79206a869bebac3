"""``workbench mediate STORE``: restoration and corruption patching of a store's ablated conditions.

Mounted by ``workbench.cli``; the computation is ``workbench.mediate.mediate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from workbench.mediate import DEFAULT_TOKENS, MediationError, mediate, top


def mediate_cmd(
    store: Path = typer.Argument(..., help="a run store made by `workbench run`"),
    conditions: Optional[str] = typer.Option(None, help="comma-separated condition ids (default: the plan's "
                                             "group conditions, else every zero/mean/resample condition)"),
    max_tokens: int = typer.Option(DEFAULT_TOKENS, help="score the store's first windows covering N tokens"),
    corpus: Optional[str] = typer.Option(None, help="corpus of the store (default: its first)"),
    batch_size: int = typer.Option(8, help="windows per forward"),
    device: Optional[str] = typer.Option(None, help="default: the store's device"),
    heads: bool = typer.Option(False, "--heads", help="also patch every head of each downstream attention, "
                               "Gated DeltaNet and Mamba-2 component (its slice of the out_proj input)"),
    top_k: int = typer.Option(5, "--top", help="components listed per condition"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace mediation results computed with "
                                   "other settings (another corpus or token budget)"),
):
    """Restore each downstream component's clean output inside an ablated run (recovery) and put its
    ablated output into the clean run (transfer); results go to the store's `mediation` group."""
    if max_tokens < 1:
        raise MediationError(f"--max-tokens {max_tokens} is invalid: give at least 1")
    if batch_size < 1:
        raise MediationError(f"--batch-size {batch_size} is invalid: give at least 1")
    wanted = [c.strip() for c in conditions.split(",") if c.strip()] if conditions else None
    med = mediate(store, conditions=wanted, max_tokens=max_tokens, corpus=corpus, batch_size=batch_size,
                  device=device, overwrite=overwrite, heads=heads, log=lambda m: typer.echo(m, err=True))
    done = [str(c) for c, ok in zip(med.condition.values, med["complete"].values) if ok]
    for cid in done:
        label = str(med.label.sel(condition=cid).values)
        typer.echo(f"{label} ({cid}):")
        for what in ("recovery", "transfer"):
            for kind, of in (("", {}), (" (heads)", {"heads": True})) if heads else (("", {}),):
                parts = [f"{n} {v:.2f} [{lo:.2f}, {hi:.2f}]" for n, v, lo, hi in top(med, cid, top_k, what, **of)]
                typer.echo(f"  top {what}{kind}: " + "; ".join(parts))
            by_layer = sorted(top(med, cid, med.sizes["component"], what, resid=True),
                              key=lambda r: int(r[0].split("@")[1]))
            typer.echo(f"  {what} by residual stream: " + "; ".join(f"{n} {v:.2f}" for n, v, *_ in by_layer))
