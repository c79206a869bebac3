"""Launch: start `workbench run`, `study` or `diagnose` as a background job in the runs folder's
queue (workbench/jobs.py), and follow every job of the machine: state, store progress, log tail.
With a Dask scheduler (`workbench app --cluster ADDRESS`) jobs are sent to its workers instead.

Who may do what is in docs/app.md ("Who can do what"): the form's command is checked against the
queue's allow-list (workbench/job_argv.py) before it is shown or queued; visitor-typed text is
drawn as text, never as Markdown."""

from __future__ import annotations

import hmac
import os
import re
import shlex
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from workbench import app_data as ad
from workbench import job_argv, jobs

TOKEN_ENV = "WORKBENCH_LAUNCH_TOKEN"
MODELS = ["mini-qwen3.5", "mini-falcon-h1", "mini-qwen2.5"]
PRESETS = ["groups", "smoke", "sweep", "study"]
CORPORA = "encyclopedic"
FREE_TRIES = 5  # wrong tokens before each further try waits, 2 s doubling up to MAX_WAIT_S
MAX_WAIT_S = 300
MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>:~$])")
NO_JOIN = "\u2060"  # an invisible word joiner: breaks the bare-URL and e-mail patterns GFM turns into links
AUTOLINK = re.compile(r"(://|www\.|@)", re.IGNORECASE)


def plain(text: str) -> str:
    """Visitor-typed text inside Markdown (labels, alerts) shown as typed: no links, images or styles
    (escaped Markdown, and bare URLs and addresses broken invisibly, as GFM links them after escapes)."""
    text = AUTOLINK.sub(lambda m: m.group(1)[0] + NO_JOIN + m.group(1)[1:], str(text))
    return MARKDOWN.sub(r"\\\1", text)


def launch_token() -> str:
    return os.environ.get(TOKEN_ENV, "")


def scheduler() -> str:
    """The Dask scheduler launched jobs go to ("" for this machine's queue)."""
    return os.environ.get(jobs.CLUSTER_ENV, "").strip()


def same_token(given: str, token: str) -> bool:
    """Constant-time, on bytes: compare_digest refuses str with non-ASCII characters."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))


def allowed() -> bool:
    token = launch_token()
    return bool(token) and same_token(st.session_state.get("launch_token_given", ""), token)


def wait_left(now: float | None = None) -> float:
    """Seconds this session must still wait before its next token try (0 within FREE_TRIES)."""
    return max(0.0, st.session_state.get("launch_token_retry_at", 0.0) - (now or time.time()))


def try_token(given: str) -> str | None:
    """Check a typed token (rate-limited per session); an error line, or None when accepted."""
    left = wait_left()
    if left:
        return f"Too many wrong tokens: try again in {left:.0f} s."
    if same_token(given, launch_token()):
        st.session_state["launch_token_given"] = given
        st.session_state["launch_token_failures"] = 0
        return None
    if given != st.session_state.get("launch_token_wrong"):  # a try per token typed, not per rerun of the page
        st.session_state["launch_token_wrong"] = given
        failures = st.session_state["launch_token_failures"] = st.session_state.get("launch_token_failures", 0) + 1
        if failures >= FREE_TRIES:
            st.session_state["launch_token_retry_at"] = time.time() + min(MAX_WAIT_S, 2 ** (failures - FREE_TRIES + 1))
    return "That is not the launch token."


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
            # The name follows model and preset until the visitor types one of their own.
            default = f"{re.sub(r'[^A-Za-z0-9._-]+', '_', model)}-{preset}.zarr"
            if st.session_state.get("launch_out", default) == st.session_state.get("launch_out_default", default):
                st.session_state["launch_out"] = default
            st.session_state["launch_out_default"] = default
            out = c1.text_input("Store (in the runs folder)", key="launch_out")
            argv = ["run", "--model", model, "--preset", preset]
        else:
            models = c1.text_input("Models (comma-separated)", value="mini-qwen3.5,mini-falcon-h1", key="launch_models")
            out = c2.text_input("Study folder (in the runs folder)", value="study", key="launch_study_out")
            argv = ["study", "--models", models]
        corpus = c2.text_input("Corpora (names or files, comma-separated)", value=CORPORA, key="launch_corpus",
                               help=f"built-in: {', '.join(job_argv.builtin_corpora())}; or text files inside the "
                                    "runs folder (hf: datasets only from a shell)")
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
                          help=f"options of `workbench {what}` (see `workbench {what} --help`), except --cluster; "
                               "paths inside the runs folder")
    try:
        argv += shlex.split(extra)
    except ValueError as exc:
        st.error(plain(f"More options: {exc}"))
        return None
    if not out.strip():
        return None
    argv += [out.strip()] if what == "diagnose" else ["--out", out.strip()]
    try:  # the queue's own allow-list: what is shown is what runs
        return jobs.checked(argv, folder)[0]
    except jobs.JobError as exc:
        st.error(plain(exc))
        return None


def job_table(all_jobs: list[jobs.Job]) -> pd.DataFrame:
    now = time.time()
    rows = []
    for j in reversed(all_jobs):
        took = (j.ended or now) - j.started if j.started else None
        prog = jobs.progress(j) if j.state in ("running", "done", "cancelled", "failed") else None
        # a table cell is text, never Markdown: the owner's name is safe here as typed
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
               "token, `workbench app --runs DIR --launch-token-file FILE` (or with the environment variable "
               f"`{TOKEN_ENV}` set), and gives the token to the people who may launch jobs.")
elif not allowed():
    given = st.text_input("Launch token", type="password", key="launch_token_input",
                          help="Ask the operator who started the app.")
    if given:
        problem = try_token(given)
        if problem is None:
            st.rerun()
        st.error(problem)

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
                st.error(plain(exc))
            else:
                free = (f"a worker with {next(iter(job.resources))}=1" if job.scheduler
                        else f"the {job.device} runner")
                st.success(f"Queued job `{job.id}`; it starts when {free} is free.")


POLL_S = 2.0


def queue(live: bool) -> None:
    """The queue; ``live``: redrawn every POLL_S seconds while a job is queued or running. A
    queue with nothing active is drawn once (the page settles), with a button to look again."""
    jobs.ensure_runners(folder)  # a runner that died with jobs waiting is restarted
    all_jobs = jobs.list_jobs(folder)
    if live and not any(j.state in jobs.ACTIVE for j in all_jobs):
        st.rerun()  # the last job ended: draw the page once more, without the timer
    st.subheader("Queue")
    if not live:
        st.button("Refresh the queue", key="queue_refresh", help="Jobs queued from elsewhere appear here; "
                  "while a job is queued or running the queue refreshes itself.")
    if not all_jobs:
        st.info(f"No jobs yet in `{folder}`.")
        return
    table = job_table(all_jobs)
    st.dataframe(table, hide_index=True, key="jobs_table", column_config={
        "command": st.column_config.TextColumn(width="large"), "note": st.column_config.TextColumn(width="medium")})
    active = [j for j in all_jobs if j.state in jobs.ACTIVE]
    running = [j for j in all_jobs if j.state == "running"]
    for j in running + [j for j in all_jobs if j.state != "running"][-1:]:
        with st.expander(f"{j.id} · {j.state} · {plain(j.owner) or 'no owner'}",
                         expanded=j.state == "running" or not running):
            prog = jobs.progress(j)
            if prog:
                st.progress(prog[0] / max(prog[1], 1), text=plain(f"{prog[0]}/{prog[1]} conditions complete in {j.out}"))
            st.code(jobs.log_tail(j) or "(no output yet)", language=None)
    if active and allowed():
        cancel_form(active)


def canceller() -> str:
    """The name typed in the form, when it is a valid owner name (kept in the job's note)."""
    try:
        return job_argv.check_owner(st.session_state.get("launch_owner", ""))
    except job_argv.ArgvError:
        return ""


def cancel_form(active: list[jobs.Job]) -> None:
    """Any token holder may cancel any job (names are typed, not proven), after confirming; the
    job's note keeps who asked."""
    c1, c2 = st.columns([3, 1])
    pick = c1.selectbox("Cancel a job", [j.id for j in active], key="cancel_pick",
                        format_func=lambda i: next(f"{j.id} ({j.state}, {j.owner or 'no owner'})"
                                                   for j in active if j.id == i))
    if c2.button("Cancel", key="cancel_button"):
        st.session_state["cancel_confirm"] = pick
    asked = st.session_state.get("cancel_confirm")
    job = next((j for j in active if j.id == asked), None)
    if job is None:
        return
    st.warning(plain(f"Cancel job {job.id} ({job.state}) of {job.owner or 'no owner'}? A running job stops at "
                     "once; launching the same command again resumes its store."))
    yes, no = st.columns(2)
    if yes.button("Yes, cancel it", key="cancel_yes", type="primary"):
        st.session_state.pop("cancel_confirm", None)
        try:
            jobs.cancel(folder, job.id, by=canceller())
            st.toast(f"Cancelling {job.id}: a running job stops at once and its store can be resumed.")
        except jobs.JobError as exc:
            st.error(plain(exc))
    if no.button("Keep it", key="cancel_no"):
        st.session_state.pop("cancel_confirm", None)


@st.fragment(run_every=POLL_S)
def live_queue() -> None:
    queue(live=True)


@st.fragment
def still_queue() -> None:
    queue(live=False)


(live_queue if any(j.state in jobs.ACTIVE for j in jobs.list_jobs(folder)) else still_queue)()
