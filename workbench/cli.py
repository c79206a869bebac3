"""The ``workbench`` command: components, run, show (+ data build, train)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Ablate components of hybrid language models and measure what changes.")
# Piped output (a file, a test) gets a wide console instead of rich's 80 columns.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


class UserError(Exception):
    """Any bad input: reported as one line, exit status 2."""


def _user_errors():
    from workbench.architectures import UnsupportedArchitecture
    from workbench.corpora import CorpusError
    from workbench.interventions import InterventionError
    from workbench.loading import ModelLoadError
    from workbench.plans import PlanError
    from workbench.store import StoreError

    return (UserError, UnsupportedArchitecture, CorpusError, InterventionError, ModelLoadError,
            PlanError, StoreError)


def _load(model: str, device: str, dtype: str):
    from workbench.loading import load_model

    with err.status(f"loading {model} ..."):
        return load_model(model, device=device, dtype=dtype)


@app.command()
def components(
    model: str = typer.Argument(..., help="built-in name, random:<model_type>, local folder, .gguf, or HF id"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list of components"),
    device: str = typer.Option("cpu"),
    dtype: str = typer.Option("float32"),
):
    """Print the component map of MODEL."""
    from workbench.architectures import component_map

    loaded = _load(model, device, dtype)
    cmap = component_map(loaded.model)
    if as_json:
        print(json.dumps(cmap.as_records(), indent=1))
        return
    table = Table(title=f"{model}: {cmap.model_type}, {cmap.n_layers} layers, {cmap.kind} ({cmap.topology})")
    for col in ("layer", "role", "path", "topology", "out_proj"):
        table.add_column(col)
    for c in cmap.components:
        table.add_row(str(c.layer), c.role, c.path, c.topology, c.out_proj or "")
    out.print(table)
    out.print("counts: " + ", ".join(f"{r}={n}" for r, n in cmap.counts().items()))


@app.command()
def run(
    model: str = typer.Option(..., "--model", "-m", help="model spec (see `workbench components --help`)"),
    out_path: Path = typer.Option(..., "--out", "-o", help="zarr store to write (resumed if it exists)"),
    corpus: list[str] = typer.Option(..., "--corpus", "-c", help="built-in name, text file, or hf:path=..."),
    plan: Optional[Path] = typer.Option(None, "--plan", "-p", help="plan spec file (YAML/JSON)"),
    preset: Optional[str] = typer.Option(None, help="smoke | groups | sweep | study"),
    mode: str = typer.Option("zero", help="ablation mode for presets: zero | mean | resample | skip_layer"),
    seeds: int = typer.Option(10, help="random-matched draws per preset control"),
    context: int = typer.Option(512, help="tokens per window"),
    stride: int = typer.Option(256, help="window step; each token is scored once"),
    batch_size: int = typer.Option(8),
    max_tokens: Optional[int] = typer.Option(None, help="use only the first N tokens of each corpus"),
    reference: Optional[str] = typer.Option(None, help="corpus for mean/resample (default: first corpus)"),
    device: str = typer.Option("cpu"),
    dtype: str = typer.Option("float32"),
    seed: int = typer.Option(0, help="donor seed for resample conditions"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved plan and stop"),
):
    """Run a plan of ablation conditions and write perplexities into a store."""
    from workbench import plans
    from workbench.architectures import component_map
    from workbench.corpora import load_corpus, read_text
    from workbench.runner import run_plan

    if (plan is None) == (preset is None):
        raise UserError(f"give exactly one of --plan FILE or --preset ({', '.join(plans.PRESETS)})")
    if mode not in plans.MODES:
        raise UserError(f"unknown mode {mode!r}; valid: {', '.join(plans.MODES)}")
    spec = plans.load_spec(plan) if plan else None
    texts = [read_text(c) for c in corpus]  # bad corpora fail before the model loads
    ref_text = read_text(reference) if reference else None
    loaded = _load(model, device, dtype)
    cmap = component_map(loaded.model)
    if spec is None:
        spec = plans.auto_spec(cmap, preset, mode=mode, seeds=seeds)
    spec = spec.model_copy(update={"seed": seed}) if preset else spec
    resolved = plans.resolve(spec, cmap)
    if dry_run:
        _print_plan(resolved)
        return
    corpora = [load_corpus(c, loaded.tokenizer, max_tokens, text=t) for c, t in zip(corpus, texts)]
    names = [k.name for k in corpora]
    if len(set(names)) != len(names):
        raise UserError(f"corpus names repeat: {names}")
    ref = load_corpus(reference, loaded.tokenizer, max_tokens, text=ref_text) if reference else None
    err.print(f"{len(resolved.conditions)} conditions x {len(corpora)} corpora "
              f"({sum(k.n_tokens for k in corpora):,} tokens) -> {out_path}")
    ds = run_plan(loaded, resolved, corpora, out_path, context=context, stride=stride,
                  batch_size=batch_size, reference=ref, device=device, dtype=dtype, seed=seed)
    n_done = int(ds["complete"].sum())
    err.print(f"done: {n_done}/{ds.sizes['condition']} conditions in {out_path}")


def _print_plan(plan) -> None:
    table = Table(title=f"plan {plan.name} ({len(plan.conditions)} conditions, hash {plan.hash})")
    for col in ("id", "label", "kind", "group"):
        table.add_column(col)
    for row in plan.table():
        table.add_row(row["id"], row["label"], row["kind"], row["group"])
    out.print(table)


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:,.2f}" if x < 1e5 else f"{x:.3g}"


@app.command()
def show(store_path: Path = typer.Argument(..., help="a run store"),
         as_json: bool = typer.Option(False, "--json", help="print the summary as JSON records")):
    """Summarise a run store: perplexity per condition and corpus, ratio to baseline, QC."""
    from workbench.store import open_store
    from workbench.summary import summary_frame

    ds = open_store(store_path)
    frame = summary_frame(ds)
    if as_json:
        print(frame.to_json(orient="records", indent=1))
        return
    proto = json.loads(ds.attrs["protocol"])
    out.print(f"[bold]{store_path}[/]: model {ds.attrs['model']} ({ds.attrs['model_type']}), "
              f"{int(ds['complete'].sum())}/{ds.sizes['condition']} conditions complete; "
              f"context {proto['context']}, stride {proto['stride']}")
    corpora = list(ds.corpus.values)
    table = Table()
    for col in ["label", "kind"] + [f"ppl {c}" for c in corpora] + [f"x base {c}" for c in corpora] + ["qc"]:
        table.add_column(col, justify="left" if col in ("label", "kind") else "right")
    for rec in frame.to_dict("records"):
        row = [rec["label"], rec["kind"]]
        row += [_fmt(rec[f"perplexity:{c}"]) for c in corpora]
        row += [_fmt(rec[f"ratio:{c}"]) for c in corpora]
        row.append(rec["qc"])
        table.add_row(*row)
    out.print(table)


def _mount_optional() -> None:
    """Data building and training live in their own packages; mount them when present."""
    try:
        from workbench.databuild.cli import app as data_app
        app.add_typer(data_app, name="data", help="Build the offline corpora and tokenizer.")
    except ImportError:
        pass
    try:
        from workbench.training.cli import train_cli
        app.command("train", help="Train the embedded mini models from scratch.")(train_cli)
    except ImportError:
        pass


_mount_optional()


def main() -> None:
    try:
        app(standalone_mode=False)
    except _user_errors() as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted; rerun the same command to resume")
        sys.exit(130)
    except Exception as exc:  # click's usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
