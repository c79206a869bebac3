"""``workbench diagnose STORE...``: cache activations into run stores and compute diagnostics.

Mounted by ``workbench.cli`` (``app.command("diagnose")(diagnose_cmd)``); kept apart so the
command's options live beside the code they drive. With ``--workers N`` or ``--cluster ADDRESS``
each store is one task on the cluster (``workbench.cluster.diagnose_cluster``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from workbench.cluster_options import CLUSTER, THREADS_PER_WORKER, WORKERS, target
from workbench.diagnose import DIAGNOSTICS, DiagnoseError, diagnose, diagnostics_summary


def diagnose_cmd(
    stores: list[Path] = typer.Argument(..., help="run stores made by `workbench run` (each diagnosed whole)"),
    tokens: Optional[int] = typer.Option(None, help="token positions to sample (from windows of the store's "
                                         "context; default 2048, or all the corpus offers when fewer)"),
    corpus: Optional[str] = typer.Option(None, help="corpus of the store to sample (default: its first)"),
    diagnostics: str = typer.Option(",".join(DIAGNOSTICS), help="comma-separated: " + ", ".join(DIAGNOSTICS)
                                    + " (empty: cache activations only)"),
    batch_size: int = typer.Option(8, help="windows per forward"),
    seed: int = typer.Option(0, help="seed of the sample (windows, positions, probe splits, maps)"),
    windows: Optional[int] = typer.Option(None, help="windows the positions come from (default: "
                                          "tokens / (context / 4), at most what the corpus holds)"),
    max_diag_tokens: int = typer.Option(4096, help="cached tokens the diagnostics read at most"),
    map_layer: Optional[int] = typer.Option(None, help="layer of the 2-D maps (default: the middle layer)"),
    map_methods: Optional[str] = typer.Option(None, help="pca and/or umap (default pca; --full: pca,umap)"),
    probe_layers: Optional[str] = typer.Option(None, help="middle | all: layers ablated runs are probed at "
                                               "(default middle; --full: all)"),
    full: bool = typer.Option(False, "--full", help="the slow, complete set: UMAP maps too, and ablated "
                              "runs probed at every layer"),
    device: Optional[str] = typer.Option(None, help="default: the store's device"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a cache of another sample"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads on a CPU (default: the "
                                          "cores not busy with other processes)"),
    cluster: Optional[str] = CLUSTER,
    workers: Optional[int] = WORKERS,
    threads_per_worker: Optional[int] = THREADS_PER_WORKER,
):
    """Cache activations of each STORE's conditions into it and write representation diagnostics.

    With --workers/--cluster every store is one task on a cluster worker (stores in parallel)."""
    where = target(cluster, workers, threads_per_worker)
    if tokens is not None and tokens < 8:
        raise DiagnoseError(f"--tokens {tokens} is invalid: give at least 8")
    if batch_size < 1:
        raise DiagnoseError(f"--batch-size {batch_size} is invalid: give at least 1")
    methods = None if map_methods is None else tuple(m for m in map_methods.split(",") if m)
    if methods is not None and set(methods) - {"pca", "umap"}:
        raise DiagnoseError(f"--map-methods {map_methods!r} is invalid; valid: pca, umap")
    wanted = tuple(d.strip() for d in diagnostics.split(",") if d.strip())
    options = dict(tokens=tokens, corpus=corpus, diagnostics=wanted, batch_size=batch_size, seed=seed,
                   windows=windows, max_diag_tokens=max_diag_tokens, map_layer=map_layer, map_methods=methods,
                   probe_layers=probe_layers, full=full, device=device, overwrite=overwrite)
    if where is None:
        if device in (None, "cpu"):  # extra OpenMP threads on busy cores stall each other (as in `run`)
            from workbench.threads import set_threads

            typer.echo(f"torch threads: {set_threads(threads)}", err=True)
        for store in stores:
            diagnose(store, progress=True, **options)
    else:
        from workbench.cluster import diagnose_cluster

        diagnose_cluster(stores, **where.connect_kwargs(), log=lambda m: typer.echo(m, err=True), **options)
    if wanted:
        for store in stores:
            if len(stores) > 1:
                typer.echo(f"\n{store}:")
            typer.echo(diagnostics_summary(store).to_string(index=False))
