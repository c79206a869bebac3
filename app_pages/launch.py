"""Launch: start `workbench run`, `study` or `diagnose` as a background job in the runs folder's
queue (workbench/jobs.py), and follow every job of the machine: state, store progress, log tail.
With a Dask scheduler (`workbench app --cluster ADDRESS`) jobs are sent to its workers instead."""

from __future__ import annotations

import hmac
import re
import os
import shlex
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from workbench import app_data as ad
from workbench import jobs

TOKEN_ENV = "WORKBENCH_LAUNCH_TOKEN"
MODELS = ["mini-qwen3.5", "mini-falcon-h1", "mini-qwen2.5"]
PRESETS = ["groups", "smoke", "sweep", "study"]
CORPORA = "encyclopedic"


def launch_token() -> str:
    return os.environ.get(TOKEN_ENV, "")


def scheduler() -> str:
    """The Dask scheduler launched jobs go to ("" for this machine's queue)."""
    return os.environ.get(jobs.CLUSTER_ENV, "").strip()


def allowed() -> bool:
    token = launch_token()
    return bool(token) and hmac.compare_digest(st.session_state.get("launch_token_given", ""), token)


def inside(folder: Path, out: Path) -> bool:
    return out == folder or folder in out.parents


def command_form(folder: Path) -> list[str] | None:
    """The widgets of one command; its argv (after `workbench`), or None when incomplete."""
    what = st.radio("Command", ["run", "study", "diagnose"], horizontal=True, key="launch_what",
                    captions=["ablation conditions of one model into a store", "the published study on models",
                              "activations and diagnostics of a store"])
    c1, c2 = st.columns(2)
    if what in ("run", "study"):
        if what == "run":
            model = c1.selectbox("Model", MODELS, accept_new_options=True, key="launch_model",
                                 help="an embedded mini model, a local folder, or random:<model_type>")
            preset = c2.selectbox("Preset", PRESETS, key="launch_preset")
            out = c1.text_input("Store (in the runs folder)", value=f"{re.sub(r'[^A-Za-z0-9._-]+', '_', model)}-{preset}.zarr",
                                key=f"launch_out:{model}:{preset}")
            argv = ["run", "--model", model, "--preset", preset]
        else:
            models = c1.text_input("Models (comma-separated)", value="mini-qwen3.5,mini-falcon-h1", key="launch_models")
            out = c2.text_input("Study folder (in the runs folder)", value="study", key="launch_study_out")
            argv = ["study", "--models", models]
        corpus = c2.text_input("Corpora (names or files, comma-separated)", value=CORPORA, key="launch_corpus")
        max_tokens = c1.number_input("Max tokens per corpus (0: all)", min_value=0, value=4096, step=1024,
                                     key="launch_max_tokens")
        for c in [x.strip() for x in corpus.split(",") if x.strip()]:
            argv += ["--corpus", c]
        if max_tokens:
            argv += ["--max-tokens", str(int(max_tokens))]
        if what == "run" and c2.toggle("Then diagnose (--diagnose)", key="launch_diag"):
            argv.append("--diagnose")
    else:
        stores = [str(p) for p in ad.find_stores(folder)]
        if not stores:
            st.info(f"No stores in `{folder}` to diagnose yet.")
            return None
        store = c1.selectbox("Store", stores, format_func=lambda p: str(Path(p).relative_to(folder)), key="launch_store")
        n = c2.number_input("Tokens to sample", min_value=64, value=2048, step=256, key="launch_tokens")
        argv, out = ["diagnose", "--tokens", str(int(n))], store
    extra = st.text_input("More options", key=f"launch_extra:{what}", placeholder="--context 256 --device cuda",
                          help=f"any options of `workbench {what}` (see `workbench {what} --help`)")
    try:
        argv += shlex.split(extra)
    except ValueError as exc:
        st.error(f"More options: {exc}")
        return None
    if not out.strip():
        return None
    path = (folder / out.strip()).resolve() if not Path(out).is_absolute() else Path(out).resolve()
    if not inside(folder, path):
        st.error(f"`{out}` is outside the runs folder `{folder}`; jobs write only there.")
        return None
    return argv + ([str(path)] if what == "diagnose" else ["--out", str(path)])


def job_table(all_jobs: list[jobs.Job]) -> pd.DataFrame:
    now = time.time()
    rows = []
    for j in reversed(all_jobs):
        took = (j.ended or now) - j.started if j.started else None
        prog = jobs.progress(j) if j.state in ("running", "done", "cancelled", "failed") else None
        rows.append({"job": j.id, "owner": j.owner, "state": j.state, "device": j.device,
                     "host": j.host or ("" if j.scheduler else "this machine"),
                     "progress": f"{prog[0]}/{prog[1]}" if prog else "",
                     "minutes": round(took / 60, 1) if took is not None else None,
                     "command": j.command, "status": j.returncode, "note": j.note})
    return pd.DataFrame(rows, columns=["job", "owner", "state", "device", "host", "progress", "minutes", "command",
                                       "status", "note"])


st.title("Launch")
sel = ad.selection()
# the folder the app was started on (--runs), never the one typed in the sidebar
folder = Path(st.session_state.get("_runs_default") or ad.default_runs_dir()).expanduser().resolve()
if scheduler():
    st.caption(f"Jobs go to the Dask scheduler at `{scheduler()}` and run on its workers: each GPU job holds one "
               "GPU (`GPU=1`), each CPU job one CPU slot (`CPU=1`), and they start in the order they were "
               f"submitted, whoever submitted them. Their states and logs are in `{folder}/.jobs/`. They run apart "
               "from the app: closing the tab or restarting the app does not stop them.")
else:
    st.caption(f"Jobs run one at a time per device, in a queue in `{folder}/.jobs/` that everyone using this "
               "folder shares. They run apart from the app: closing the tab or restarting the app does not stop "
               "them.")
if sel.folder.expanduser().resolve() != folder:
    st.info(f"Jobs are launched into the app's runs folder `{folder}`, not the folder typed in the sidebar.")

if not launch_token():
    st.warning("Launching is off: this app is read-only. The operator enables it by starting the app with a "
               "token, `workbench app --runs DIR --launch-token TOKEN` (or with the environment variable "
               f"`{TOKEN_ENV}` set), and gives the token to the people who may launch jobs.")
elif not allowed():
    given = st.text_input("Launch token", type="password", key="launch_token_input",
                          help="Ask the operator who started the app.")
    if given:
        if hmac.compare_digest(given, launch_token()):
            st.session_state["launch_token_given"] = given
            st.rerun()
        st.error("That is not the launch token.")

if allowed():
    with st.container(border=True):
        st.subheader("New job")
        owner = st.text_input("Your name (shown in the queue)", key="launch_owner",
                              value=st.session_state.get("launch_owner_default", ""))
        argv = command_form(folder)
        if argv:
            st.code("workbench " + shlex.join(argv), language="bash", wrap_lines=True)
        if st.button("Launch", type="primary", disabled=not argv, key="launch_button"):
            try:
                job = jobs.submit(folder, argv, owner=owner, scheduler=scheduler() or None)
            except jobs.JobError as exc:
                st.error(str(exc))
            else:
                free = (f"a worker with {next(iter(job.resources))}=1" if job.scheduler
                        else f"the {job.device} runner")
                st.success(f"Queued job `{job.id}`; it starts when {free} is free.")


@st.fragment(run_every=2.0)
def queue() -> None:
    jobs.ensure_runners(folder)  # a runner that died with jobs waiting is restarted
    all_jobs = jobs.list_jobs(folder)
    st.subheader("Queue")
    if not all_jobs:
        st.info(f"No jobs yet in `{folder}`.")
        return
    table = job_table(all_jobs)
    st.dataframe(table, hide_index=True, key="jobs_table", column_config={
        "command": st.column_config.TextColumn(width="large"), "note": st.column_config.TextColumn(width="medium")})
    active = [j for j in all_jobs if j.state in jobs.ACTIVE]
    running = [j for j in all_jobs if j.state == "running"]
    for j in running + [j for j in all_jobs if j.state != "running"][-1:]:
        with st.expander(f"{j.id} · {j.state} · {j.owner or 'no owner'}", expanded=j.state == "running" or not running):
            prog = jobs.progress(j)
            if prog:
                st.progress(prog[0] / max(prog[1], 1), text=f"{prog[0]}/{prog[1]} conditions complete in {j.out}")
            st.code(jobs.log_tail(j) or "(no output yet)", language=None)
    if active and allowed():
        c1, c2 = st.columns([3, 1])
        pick = c1.selectbox("Cancel a job", [j.id for j in active], key="cancel_pick",
                            format_func=lambda i: next(f"{j.id} ({j.state}, {j.owner or 'no owner'})"
                                                       for j in active if j.id == i))
        if c2.button("Cancel", key="cancel_button"):
            try:
                jobs.cancel(folder, pick)
                st.toast(f"Cancelling {pick}: a running job stops at once and its store can be resumed.")
            except jobs.JobError as exc:
                st.error(str(exc))


queue()
