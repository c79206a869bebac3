"""`workbench app`: start the Streamlit app on a folder of run stores.

The lead mounts ``app`` in ``workbench/cli.py`` (``cli.command("app")(app)``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"


def streamlit_command(runs: str, host: str, port: int, headless: bool = True) -> list[str]:
    """The ``streamlit run`` command line for these settings (never the launch token: `ps` shows
    argv to every user of the machine). Visitors see no tracebacks (they name server paths):
    uncaught errors show a generic message, details go to the server's log."""
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", host, "--server.port", str(port),
            "--server.headless", "true" if headless else "false",
            "--browser.gatherUsageStats", "false",
            "--client.showErrorDetails", "none",
            "--", "--runs", runs]


def read_token_file(path: str) -> str:
    """The launch token from a file (first line); a missing or empty file is a usage error."""
    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path} ({exc.__class__.__name__}); give a UTF-8 text file "
                                 "holding the token", param_hint="--launch-token-file") from None
    if not token:
        raise typer.BadParameter(f"{path} is empty; put the token on its first line", param_hint="--launch-token-file")
    return token


def describe_scheduler(address: str) -> str:
    """One line about the scheduler jobs go to (its workers and what they advertise); a
    scheduler out of reach is a usage error."""
    from workbench.jobs import JobError, scheduler_client

    try:
        with scheduler_client(address) as client:
            workers = client.scheduler_info()["workers"].values()
    except JobError as exc:
        raise typer.BadParameter(str(exc), param_hint="--cluster") from None
    gpus = sum(w.get("resources", {}).get("GPU", 0) for w in workers)
    cpus = sum(w.get("resources", {}).get("CPU", 0) for w in workers)
    return (f"Jobs go to the Dask scheduler at {address}: {len(workers)} worker(s) now, {gpus:g} GPU and {cpus:g} "
            "CPU job slot(s) (workers advertise them with --resources GPU=1 / CPU=N).")


def app(runs: str = typer.Option("runs", "--runs", help="Folder of run stores (searched 3 levels deep)."),
        host: str = typer.Option("127.0.0.1", "--host",
                                 help="Address to listen on; 0.0.0.0 serves every network interface."),
        port: int = typer.Option(8501, "--port", min=1, max=65535, help="Port to listen on."),
        open_browser: bool = typer.Option(False, "--open/--no-open", help="Open a browser tab."),
        launch_token: str = typer.Option("", "--launch-token", envvar="WORKBENCH_LAUNCH_TOKEN", show_default=False,
                                         help="Let visitors who give this token launch jobs from the Launch page "
                                              "(without it the app is read-only). On a shared machine set the "
                                              "environment variable or use --launch-token-file: `ps` shows "
                                              "command lines to every user."),
        launch_token_file: str = typer.Option("", "--launch-token-file", show_default=False,
                                              help="Read the launch token from this file (its first line)."),
        cluster: str = typer.Option("", "--cluster", envvar="WORKBENCH_CLUSTER", show_default=False,
                                    help="Send launched jobs to the Dask scheduler at this address (tcp://host:8786) "
                                         "instead of this machine's queue; see docs/cluster.md.")) -> None:
    """Open the app on a folder of run stores (reads stores; jobs launched from it run apart)."""
    if not APP.is_file():
        raise typer.BadParameter(f"the app script {APP} is missing (a source checkout is needed)")
    folder = Path(runs).expanduser()
    if folder.exists() and not folder.is_dir():
        raise typer.BadParameter(f"--runs {runs} is a file; give the folder that holds the *.zarr stores")
    if launch_token_file:
        launch_token = read_token_file(launch_token_file)
    cluster = cluster.strip()
    scheduler_line = describe_scheduler(cluster) if cluster else ""
    typer.echo(f"Workbench app on http://{host}:{port}  (runs folder: {folder.resolve()})")
    cmd = streamlit_command(str(folder.resolve()), host, port, headless=not open_browser)
    if launch_token:
        os.environ["WORKBENCH_LAUNCH_TOKEN"] = launch_token  # the environment, not argv: `ps` shows argv
        typer.echo("Launching jobs is on for visitors who give the launch token.")
    elif host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo("Read-only: pass --launch-token-file FILE to let visitors who give its token launch jobs.")
    from workbench.jobs import CLUSTER_ENV, ensure_runners, send_queued

    if cluster:
        os.environ[CLUSTER_ENV] = cluster  # the Launch page sends jobs there
        typer.echo(scheduler_line)
    else:
        os.environ.pop(CLUSTER_ENV, None)
    if folder.is_dir():
        ensure_runners(folder)  # jobs queued before a restart (their runner died) go on
        send_queued(folder)  # and those of a scheduler that restarted
    os.execv(cmd[0], cmd)  # Streamlit owns the process from here (signals, Ctrl-C)
