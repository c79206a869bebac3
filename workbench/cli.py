"""The ``workbench`` command: components, run, show (+ data build, train)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workbench.cluster_options import CLUSTER, THREADS_PER_WORKER, WORKERS, ClusterError, plan_runner, target

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
    from workbench.tasks import TaskError

    return (UserError, UnsupportedArchitecture, CorpusError, InterventionError, ModelLoadError,
            PlanError, StoreError, TaskError, ClusterError)


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


def _check_numbers(**values) -> None:
    """Every numeric option, before anything loads or is created."""
    rules = {
        "context": (lambda v: v >= 2, "at least 2 tokens"),
        "batch_size": (lambda v: v >= 1, "at least 1"),
        "max_tokens": (lambda v: v is None or v >= 2, "at least 2 tokens"),
        "seeds": (lambda v: v >= 1, "at least 1"),
        "reference_tokens": (lambda v: v is None or v >= 2, "at least 2 tokens"),
        "seed": (lambda v: v is None or v >= 0, "0 or more"),
        "max_rows": (lambda v: v is None or v >= 1, "at least 1 (or leave it out)"),
        "streams": (lambda v: v >= 1, "at least 1"),
        "threads": (lambda v: v is None or v >= 1, "at least 1 (or leave it out)"),
    }
    for name, value in values.items():
        ok, valid = rules.get(name, (lambda v: True, ""))
        if not ok(value):
            raise UserError(f"--{name.replace('_', '-')} {value} is invalid: give {valid}")
    context, stride = values["context"], values["stride"]
    if not 1 <= stride <= context:
        raise UserError(f"--stride {stride} is invalid: give 1 to --context ({context}) tokens")


# speed and protocol options shared by run and study
FAST = typer.Option(True, "--fast/--no-fast", help="share the clean layers before each condition's first edit and "
                    "stack conditions (--no-fast: each condition alone from the embeddings; same numbers up to "
                    "float rounding)")
MAX_ROWS = typer.Option(None, "--max-rows", help="most rows (conditions x windows) in one forward (default: one "
                        "batch on a CPU, a quarter of free GPU memory)")
PROTOCOL = typer.Option("rolling", "--protocol", help="rolling: overlapping windows of --context every --stride "
                        "tokens; carry: chunks of --stride tokens with the model's state carried (each token "
                        "computed once; see docs/protocols.md)")
STREAMS = typer.Option(1, "--streams", help="carry: contiguous segments of each corpus scored side by side")
THREADS = typer.Option(None, "--threads", help="torch threads on a CPU (default: the cores not busy with other "
                       "processes, from the load average)")


def _protocol_text(proto: dict) -> str:
    if proto.get("scoring", "rolling") == "carry":
        return (f"carry protocol: chunks of {proto['stride']} with the state carried, attention over at most "
                f"{proto['context']}, {proto.get('streams', 1)} stream(s)")
    return f"rolling windows: context {proto['context']}, stride {proto['stride']}"


def _check_protocol(name: str) -> None:
    from workbench.runner import SCORINGS

    if name not in SCORINGS:
        raise UserError(f"unknown --protocol {name!r}; valid: {', '.join(SCORINGS)}")


@app.command()
def run(
    model: str = typer.Option(..., "--model", "-m", help="model spec (see `workbench components --help`)"),
    out_path: Path = typer.Option(..., "--out", "-o", help="zarr store to write (resumed if it exists)"),
    corpus: list[str] = typer.Option(..., "--corpus", "-c", help="built-in name, text file, or hf:path=..."),
    plan: Optional[Path] = typer.Option(None, "--plan", "-p", help="plan spec file (YAML/JSON)"),
    preset: Optional[str] = typer.Option(None, help="smoke | groups | sweep | study"),
    mode: str = typer.Option("zero", help="ablation mode for presets: zero | mean | resample | skip_layer"),
    seeds: int = typer.Option(10, help="random-matched draws per preset control (draw seeds 0..N-1)"),
    context: int = typer.Option(512, help="tokens per window (the prefix token included)"),
    stride: int = typer.Option(256, help="window step; each token is scored once"),
    batch_size: int = typer.Option(8, help="windows per forward (changes results only at float rounding)"),
    fast: bool = FAST,
    max_rows: Optional[int] = MAX_ROWS,
    protocol_name: str = PROTOCOL,
    streams: int = STREAMS,
    threads: Optional[int] = THREADS,
    max_tokens: Optional[int] = typer.Option(None, help="score only the first N tokens of each corpus"),
    prefix_token: str = typer.Option("auto", help="auto | none | bos: token each window starts with "
                                     "(auto: BOS where the tokenizer adds one or the family expects it)"),
    reference: Optional[str] = typer.Option(None, help="corpus for mean/resample inputs (default: the "
                                            "last --reference-tokens tokens of the first corpus, never scored)"),
    reference_tokens: Optional[int] = typer.Option(None, help="tokens set aside as the default reference "
                                                   "(default 16 x context)"),
    device: str = typer.Option("cpu"),
    dtype: str = typer.Option("float32"),
    seed: Optional[int] = typer.Option(None, help="donor seed of resample conditions (default 0; "
                                       "overrides a plan file's donor_seed)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved plan and stop"),
    diagnose: bool = typer.Option(False, "--diagnose", help="then cache activations and compute every "
                                  "diagnostic (as `workbench diagnose STORE` with its defaults; with "
                                  "--workers/--cluster on a worker)"),
    diagnose_tokens: Optional[int] = typer.Option(None, "--diagnose-tokens", help="with --diagnose: token "
                                                  "positions to sample (diagnose --tokens; default 2048, or all "
                                                  "the first corpus offers when fewer)"),
    diagnose_full: bool = typer.Option(False, "--diagnose-full", help="with --diagnose: the slow, complete "
                                       "set (diagnose --full)"),
    mediate: bool = typer.Option(False, "--mediate", help="then patch activations into the ablated conditions "
                                 "(as `workbench mediate STORE` with its defaults; runs on this machine)"),
    mediate_tokens: Optional[int] = typer.Option(None, "--mediate-tokens", help="with --mediate: tokens of the "
                                                 "store's first windows to patch (mediate --max-tokens; default 1024)"),
    cluster: Optional[str] = CLUSTER,
    workers: Optional[int] = WORKERS,
    threads_per_worker: Optional[int] = THREADS_PER_WORKER,
):
    """Run a plan of ablation conditions and write perplexities into a store."""
    from workbench import plans
    from workbench.architectures import component_map
    from workbench.corpora import read_text
    from workbench.loading import DTYPES, check_device
    from workbench.runner import RunError, prepare_inputs

    _check_numbers(context=context, stride=stride, batch_size=batch_size, max_tokens=max_tokens,
                   seeds=seeds, reference_tokens=reference_tokens, seed=seed, max_rows=max_rows, streams=streams,
                   threads=threads)
    _check_protocol(protocol_name)
    if (diagnose_tokens is not None or diagnose_full) and not diagnose:
        raise UserError("--diagnose-tokens and --diagnose-full go with --diagnose; add --diagnose or drop them")
    if diagnose_tokens is not None and diagnose_tokens < 8:
        raise UserError(f"--diagnose-tokens {diagnose_tokens} is invalid: give at least 8")
    if mediate_tokens is not None and not mediate:
        raise UserError("--mediate-tokens goes with --mediate; add --mediate or drop it")
    if mediate_tokens is not None and mediate_tokens < 1:
        raise UserError(f"--mediate-tokens {mediate_tokens} is invalid: give at least 1")
    if (plan is None) == (preset is None):
        raise UserError(f"give exactly one of --plan FILE or --preset ({', '.join(plans.PRESETS)})")
    where = target(cluster, workers, threads_per_worker)
    if mode not in plans.MODES:
        raise UserError(f"unknown mode {mode!r}; valid: {', '.join(plans.MODES)}")
    if prefix_token not in ("auto", "none", "bos"):
        raise UserError(f"unknown --prefix-token {prefix_token!r}; valid: auto, none, bos")
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    check_device(device)
    if plan is not None and plan.is_dir():
        raise UserError(f"--plan {str(plan)!r} is a folder; give a YAML or JSON plan file")
    spec = plans.load_spec(plan) if plan else None
    texts = [read_text(c) for c in corpus]  # bad corpora fail before the model loads
    if len({t[0] for t in texts}) != len(texts):
        raise UserError(f"corpus names repeat: {[t[0] for t in texts]}")
    ref_text = read_text(reference) if reference else None
    n_reference = reference_tokens or 16 * context
    if not dry_run:
        from workbench.store import check_out

        check_out(out_path)  # below a file, /proc, read-only: refused before the model loads
    if device == "cpu" and cluster is None and workers is None:
        from workbench.threads import set_threads

        err.print(f"torch threads: {set_threads(threads)}", markup=False)
    loaded = _load(model, device, dtype)
    cmap = component_map(loaded.model)
    if spec is None:
        spec = plans.auto_spec(cmap, preset, mode=mode, seeds=seeds)
    if seed is not None or preset:
        spec = spec.model_copy(update={"donor_seed": seed or 0})
    resolved = plans.resolve(spec, cmap)
    if dry_run:
        _print_plan(resolved)
        return
    if mediate:  # a plan with nothing to patch is refused now, not after the run
        from workbench.mediate import MediationError
        from workbench.mediate.group import pick_conditions

        try:
            pick_conditions(resolved, None)
        except MediationError as exc:
            raise UserError(f"--mediate: {exc}; drop --mediate or add such conditions") from None
    try:
        corpora, ref, protocol = prepare_inputs(loaded, corpus, texts, max_tokens=max_tokens, reference=reference,
                                                reference_text=ref_text, reference_tokens=n_reference,
                                                prefix_token=prefix_token, context=context, stride=stride,
                                                batch_size=batch_size, scoring=protocol_name, streams=streams)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if diagnose_tokens is not None:  # refused now, not after the run
        from workbench.diagnose import sample_capacity

        room = sample_capacity(corpora[0].n_tokens, context, protocol.prefix_id)
        if diagnose_tokens > room:
            raise UserError(f"--diagnose-tokens {diagnose_tokens} is more than corpus {corpora[0].name!r} offers "
                            f"in windows of --context {context} ({room}); give at most {room} or leave it out")
    policy = protocol.prefix_token
    err.print(f"{len(resolved.conditions)} conditions x {len(corpora)} corpora "
              f"({sum(k.n_tokens for k in corpora):,} tokens, prefix token {policy}) -> {out_path}",
              markup=False, highlight=False)
    def say(message: str) -> None:
        err.print(message, markup=False, highlight=False)

    try:
        with plan_runner(where, device) as run_one:  # run_plan, or run_plan_cluster on the cluster
            ds = run_one(loaded, resolved, corpora, out_path, protocol=protocol, reference=ref, device=device,
                         dtype=dtype, donor_seed=spec.donor_seed, log=say, fast=fast, max_rows=max_rows)
    except RunError as exc:
        raise UserError(str(exc)) from None
    n_done = int(ds["complete"].sum())
    err.print(f"done: {n_done}/{ds.sizes['condition']} conditions in {out_path}", markup=False)
    if diagnose:
        options = dict(tokens=diagnose_tokens, full=diagnose_full)
        if where is None:
            from workbench.diagnose import diagnose as run_diagnose

            run_diagnose(out_path, progress=True, log=say, **options)
        else:  # on a worker too (a GPU host, say): the store as one task
            from workbench.cluster import diagnose_cluster

            diagnose_cluster([out_path], **where.connect_kwargs(), log=say, **options)
        err.print(f"diagnostics in {out_path} (workbench show {out_path} --diagnostics)", markup=False)
    if mediate:
        from workbench.mediate import DEFAULT_TOKENS, mediate as run_mediate

        run_mediate(out_path, max_tokens=mediate_tokens or DEFAULT_TOKENS, device=device, log=say)
        err.print(f"mediation in {out_path} (its mediation group; the app's Mediation page)", markup=False)


EMBEDDED = "mini-qwen3.5,mini-falcon-h1,mini-qwen2.5,smollm2-135m"


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


@app.command()
def study(
    out_dir: Path = typer.Option(Path("runs/study"), "--out", "-o", help="folder of stores (resumed if present)"),
    models: str = typer.Option(EMBEDDED, help="comma-separated model specs"),
    corpus: Optional[list[str]] = typer.Option(None, "--corpus", "-c",
                                               help="held-out corpora (default: every built-in set)"),
    max_tokens: Optional[int] = typer.Option(None, help="score only the first N tokens of each corpus"),
    tasks: str = typer.Option("all", help="comma-separated tasks, 'all', or 'none'"),
    task_items: Optional[int] = typer.Option(None, help="score only the first N items of each task"),
    seeds: int = typer.Option(10, help="random draws per control size and pool"),
    grid: str = typer.Option("1,2,4,8,16,32", help="progressive removal sizes"),
    context: int = typer.Option(512),
    stride: int = typer.Option(256),
    batch_size: int = typer.Option(8),
    prefix_token: str = typer.Option("auto", help="auto | none | bos"),
    device: str = typer.Option("cpu"),
    dtype: str = typer.Option("float32"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print conditions and forward tokens per model, run nothing"),
    replace_settings: bool = typer.Option(False, "--replace-settings", help="use a folder that holds another "
                                          "study (its study.json is replaced; a store made with other settings "
                                          "is still refused)"),
    fast: bool = FAST,
    max_rows: Optional[int] = MAX_ROWS,
    protocol_name: str = PROTOCOL,
    streams: int = STREAMS,
    threads: Optional[int] = THREADS,
    cluster: Optional[str] = CLUSTER,
    workers: Optional[int] = WORKERS,
    threads_per_worker: Optional[int] = THREADS_PER_WORKER,
):
    """The published study on any models, one store per model (see the README).

    Groups (component-only and whole-layer), layer sweeps, thirds, progressive removal, matched
    random controls, tasks, and the compression curve. With --workers/--cluster each store's
    conditions run on the cluster (one client for the whole study)."""
    from workbench.corpora import builtin_corpora
    from workbench.loading import DTYPES, check_device
    from workbench.runner import RunError
    from workbench.study import StudySettings, run_study
    from workbench.tasks import get_tasks

    _check_numbers(context=context, stride=stride, batch_size=batch_size, max_tokens=max_tokens,
                   seeds=seeds, seed=None, reference_tokens=None, max_rows=max_rows, streams=streams,
                   threads=threads)
    _check_protocol(protocol_name)
    where = target(cluster, workers, threads_per_worker)
    if task_items is not None and task_items < 1:
        raise UserError(f"--task-items {task_items} is invalid: give at least 1")
    try:
        grid_sizes = [int(x) for x in _csv(grid)]
    except ValueError:
        raise UserError(f"--grid {grid!r} is invalid: give comma-separated sizes like 1,2,4") from None
    if not grid_sizes or min(grid_sizes) < 1:
        raise UserError(f"--grid {grid!r} is invalid: sizes must be at least 1")
    if prefix_token not in ("auto", "none", "bos"):
        raise UserError(f"unknown --prefix-token {prefix_token!r}; valid: auto, none, bos")
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    check_device(device)
    task_names = None if tasks == "all" else [] if tasks == "none" else _csv(tasks)
    if task_names:
        get_tasks(task_names)  # unknown names fail here, before any model loads
    if device == "cpu" and where is None:  # a dry run too: its estimate times a forward
        from workbench.threads import set_threads

        err.print(f"torch threads: {set_threads(threads)}", markup=False)
    settings = StudySettings(models=_csv(models), corpora=list(corpus or builtin_corpora()), max_tokens=max_tokens,
                             context=context, stride=stride, batch_size=batch_size, tasks=task_names,
                             task_items=task_items, seeds=seeds, grid=grid_sizes, prefix_token=prefix_token,
                             device=device, dtype=dtype, scoring=protocol_name, streams=streams, fast=fast,
                             max_rows=max_rows)
    if not settings.models:
        raise UserError("--models is empty")
    try:
        run_study(settings, out_dir, dry_run=dry_run, log=lambda m: err.print(m, markup=False, highlight=False),
                  cluster=where, replace=replace_settings)
    except RunError as exc:
        raise UserError(str(exc)) from None
    if not dry_run:
        err.print(f"done: stores in {out_dir}; write the report with: workbench report {out_dir}", markup=False)


@app.command()
def report(folder: Path = typer.Argument(..., help="a study folder (workbench study --out FOLDER)")):
    """Write the study report (Markdown with PNG figures) into FOLDER/report.md. An unfinished study
    is still reported (exit status 0), with a warning line first here and at the top of the report."""
    from workbench.report import ReportError, write_report

    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise UserError(f"{folder} {what}; give a study folder (workbench study --out FOLDER)")
    try:
        path = write_report(folder, log=lambda m: err.print(m, markup=False, highlight=False))
    except ReportError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:  # an unreadable study.json, a read-only folder, a full disk
        raise UserError(f"cannot write the report in {folder}: {exc.strerror or exc} "
                        f"({exc.filename or folder}); check the folder's permissions and free space") from None
    err.print(f"report: {path}", markup=False)


def _print_plan(plan) -> None:
    table = Table(title=f"plan {plan.name} ({len(plan.conditions)} conditions, hash {plan.hash})")
    for col in ("id", "label", "kind", "group"):
        table.add_column(col)
    for row in plan.table():
        table.add_row(row["id"], row["label"], row["kind"], row["group"])
    out.print(table)


def _fmt(x: float, complete: bool = True) -> str:
    if not complete:
        return "-"
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf"
    return f"{x:,.2f}" if x < 1e5 else f"{x:.3g}"


@app.command()
def show(store_path: Path = typer.Argument(..., help="a run store"),
         as_json: bool = typer.Option(False, "--json", help="print the summary as JSON records"),
         diagnostics: bool = typer.Option(False, "--diagnostics", help="also summarise the representation "
                                          "diagnostics (from `workbench diagnose`)")):
    """Summarise a run store: perplexity per condition and corpus, ratio to baseline, QC."""
    from workbench.store import StoreError, open_store, verify
    from workbench.summary import pooled_ratio_texts, summary_frame, task_drop_texts

    ds = open_store(store_path)
    damaged = verify(ds)
    if damaged:
        names = ", ".join(f"{ds.condition.values[i] if i >= 0 else 'index'} ({why})" for i, why in damaged.items())
        raise StoreError(f"{store_path}: condition(s) marked complete have unreadable or missing data: "
                         f"{names}; rerun the same `workbench run` command to recompute them")
    frame = summary_frame(ds)
    if as_json:
        print(frame.to_json(orient="records", indent=1))
        return
    proto = json.loads(ds.attrs["protocol"])
    out.print(f"{store_path}: model {ds.attrs['model']} ({ds.attrs['model_type']}), "
              f"{int(ds['complete'].sum())}/{ds.sizes['condition']} conditions complete; "
              f"{_protocol_text(proto)}, prefix token {proto.get('prefix_token', 'none')}",
              markup=False, highlight=False)
    corpora = list(ds.corpus.values)
    pooled = pooled_ratio_texts(ds)  # an interval only where the store has windows enough for one
    table = Table()
    for col in (["label", "kind"] + [f"ppl {c}" for c in corpora] + [f"x base {c}" for c in corpora]
                + ["x base pooled [95% CI]", "qc"]):
        table.add_column(col, justify="left" if col in ("label", "kind") else "right")
    for rec in frame.to_dict("records"):
        row = [rec["label"], rec["kind"]]
        row += [_fmt(rec[f"perplexity:{c}"], rec["complete"]) for c in corpora]
        row += [_fmt(rec[f"ratio:{c}"], rec["complete"]) for c in corpora]
        row.append(pooled.get(rec["id"], "-"))
        row.append(rec["qc"])
        table.add_row(*(escape(x) for x in row))
    out.print(table)
    heads, drops = task_drop_texts(ds)
    if heads:
        out.print("task accuracy drop against the baseline [95% CI]: "
                  + "; ".join(f"{t}: {h}" for t, h in heads.items()), markup=False, highlight=False)
        tasks = Table()
        for col in ["label", *heads]:
            tasks.add_column(col, justify="left" if col == "label" else "right")
        for rec in frame.to_dict("records"):
            if rec["id"] in drops:
                tasks.add_row(*(escape(x) for x in [rec["label"], *(drops[rec["id"]][t] for t in heads)]))
        out.print(tasks)
    warnings = frame[frame["qc"].isin(["NOT FIRED", "NO EFFECT", "NON-FINITE"])]
    for rec in warnings.to_dict("records"):
        err.print(f"QC {rec['qc']}: {rec['label']}", markup=False, highlight=False)
    if diagnostics:
        from workbench.diagnose import diagnostics_summary, open_diagnostics

        if open_diagnostics(store_path) is None:
            raise StoreError(f"{store_path} has no diagnostics yet: run `workbench diagnose {store_path}`")
        out.print("\nrepresentation diagnostics (CKA < 0.9 from: first layer whose CKA to clean drops below "
                  "0.9; lens > 50% from: first layer whose logit-lens top-1 agrees with the run's output; "
                  "probes at the middle layer):", markup=False, highlight=False)
        out.print(diagnostics_summary(store_path).to_string(index=False), markup=False, highlight=False)


def _mount_app() -> None:
    from workbench.app_cli import app as app_command

    app.command("app", help="Open the app on a runs folder (locally or on a shared machine).")(app_command)


def _mount_diagnose() -> None:
    from workbench.diagnose_cli import diagnose_cmd

    app.command("diagnose", help="Cache activations of a run store's conditions into it and compute "
                "representation diagnostics (CKA, probes, logit lens, norms, retrieval, state, maps).")(diagnose_cmd)


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


def _mount_mediate() -> None:
    from workbench.mediate_cli import mediate_cmd

    app.command("mediate", help="Activation patching of a run store's ablated conditions: which later "
                "components carry the damage (recovery) and pass it on (transfer).")(mediate_cmd)


_mount_app()
_mount_diagnose()
_mount_mediate()
_mount_optional()


def _click_errors() -> tuple[type, ...]:
    """Click's exception classes, and typer's bundled copies of them (typer raises those)."""
    import importlib

    found = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(name).ClickException)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _fail(message: str, code: int) -> None:
    # plain print: rich markup would swallow bracketed text such as paths with [draft]
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def main() -> None:
    try:
        # non-standalone typer returns exit codes instead of exiting (Ctrl-C becomes 130)
        code = app(standalone_mode=False, prog_name="workbench")
        if isinstance(code, int) and code == 130:
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except _user_errors() as exc:
        _fail(str(exc), 2)
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except _click_errors() as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
            sys.exit(2)
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            hint = f" (see '{ctx.command_path} --help')"
        _fail(f"{exc.format_message()}{hint}", getattr(exc, "exit_code", 2) or 2)


if __name__ == "__main__":
    main()
