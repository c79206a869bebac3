"""The app as a shared service: what a visitor (no token) can read, what a token holder can make
the queue run or write, and what a file dropped in RUNS/.jobs/ can do (docs/app.md, "Who can do
what"). Fast: no model is run; the queue runs a stand-in or nothing."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from workbench import job_argv, jobs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

OK = ["run", "--model", "random:qwen2", "--preset", "smoke", "--corpus", "encyclopedic"]


@pytest.fixture
def runs(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("not for visitors")
    (outside / "secret.zarr").mkdir()
    (folder / "link").symlink_to(outside)  # a folder inside that leads outside
    (folder / "mine.txt").write_text("a corpus the operator put in the runs folder")
    return folder


# -- what a token holder can make the queue run ---------------------------------------------

REFUSED = {  # argv -> what the one-line message names
    "diagnose with an option-looking path": (["diagnose", "-x.zarr/../../outside/victim.zarr", "a.zarr"],
                                             "not allowed here"),
    "--out twice": ([*OK, "--out", "a.zarr", "--out", "b.zarr"], "given twice"),
    "-o and --out=": ([*OK, "-o", "a.zarr", "--out=b.zarr"], "given twice"),
    "--out outside": ([*OK, "--out", "../outside/x.zarr"], "outside the runs folder"),
    "--out absolute outside": ([*OK, "--out", "/tmp/x.zarr"], "outside the runs folder"),
    "--out through a link": ([*OK, "--out", "link/x.zarr"], "outside the runs folder"),
    "--out into the queue": ([*OK, "--out", ".jobs/x.zarr"], "hidden path"),
    "--out the runs folder": ([*OK, "--out", "."], "not the runs folder itself"),
    "hf: with cache_dir": (["run", "--model", "m", "--corpus", "hf:path=json,data_files=x,cache_dir=/tmp/c",
                            "--out", "a.zarr"], "hf: corpora"),
    "a server file as corpus": (["run", "--model", "m", "--corpus", "/etc/hostname", "--out", "a.zarr"],
                                "neither a built-in corpus"),
    "a corpus through a link": (["run", "--model", "m", "--corpus", "link/victim.txt", "--out", "a.zarr"],
                                "neither a built-in corpus"),
    "--reference outside": ([*OK, "--reference", "/etc/hostname", "--out", "a.zarr"], "neither a built-in"),
    "--cluster": ([*OK, "--cluster", "tcp://10.0.0.1:8786", "--out", "a.zarr"], "'--cluster' is not allowed"),
    "--cluster=": ([*OK, "--cluster=tcp://10.0.0.1:8786", "--out", "a.zarr"], "'--cluster' is not allowed"),
    "a model folder outside": (["run", "--model", "/etc", "--corpus", "news", "--out", "a.zarr"],
                               "outside the runs folder"),
    "a study model outside": (["study", "--models", "mini-qwen3.5,../outside", "--out", "s"], "outside the runs"),
    "a plan file outside": ([*OK, "--plan", "/etc/passwd", "--out", "a.zarr"], "outside the runs folder"),
    "an unknown option": ([*OK, "--trust-remote-code", "--out", "a.zarr"], "not allowed here"),
    "a glued short option": ([*OK, "-o/tmp/x.zarr"], "not allowed here"),
    "a stray argument": ([*OK, "extra", "--out", "a.zarr"], "takes no argument"),
    "a value that is an option": ([*OK, "--out", "--dry-run"], "needs a value"),
    "a bad number": ([*OK, "--context", "1e9", "--out", "a.zarr"], "whole number"),
    "a bad device": ([*OK, "--device", "cuda;rm", "--out", "a.zarr"], "unknown device"),
    "diagnose a store outside": (["diagnose", "--tokens", "64", "../outside/secret.zarr"], "outside the runs"),
    "another command": (["components", "--out", "a.zarr"], "one of: run, study, diagnose"),
}


@pytest.mark.parametrize("argv,message", REFUSED.values(), ids=REFUSED.keys())
def test_the_queue_refuses_commands_outside_its_allow_list(runs, argv, message):
    with pytest.raises(jobs.JobError, match=message) as exc:
        jobs.submit(runs, argv, owner="ana", start=False)
    assert "\n" not in str(exc.value)  # one line
    assert not jobs.list_jobs(runs)


def test_output_of_is_not_fooled_and_the_job_writes_what_its_record_names(runs):
    # before: the option-looking path was skipped and a.zarr named; the job wrote the other store
    with pytest.raises(jobs.JobError):
        jobs.output_of(["diagnose", "-x.zarr/../../outside/victim.zarr", "a.zarr"], runs)
    job = jobs.submit(runs, [*OK, "-o", "sub/../a.zarr", "--context=64"], owner="ana", start=False)
    assert job.out == str(runs.resolve() / "a.zarr")
    assert job.argv[job.argv.index("--out") + 1] == job.out  # one spelling: the path the record names
    assert "--context" in job.argv and "64" in job.argv


def test_allowed_commands_pass(runs):
    argv, out = job_argv.check(["run", "--model", "mini-qwen3.5", "--corpus", "news", "-c", "mine.txt",
                                "--preset", "sweep", "--no-fast", "--device", "cuda:1", "--out", "x.zarr"], runs)
    assert argv == ["run", "--model", "mini-qwen3.5", "--corpus", "news", "--corpus", str(runs.resolve() / "mine.txt"),
                    "--preset", "sweep", "--no-fast", "--device", "cuda:1", "--out", str(runs.resolve() / "x.zarr")]
    assert out == runs.resolve() / "x.zarr"
    assert job_argv.check(["study", "--models", "mini-qwen3.5,random:qwen2,Org/Model", "--tasks", "none",
                           "--grid", "1,2,4", "--out", "study"], runs)[1] == runs.resolve() / "study"
    assert job_argv.check(["diagnose", "--diagnostics", "cka,lens", "--corpus", "wikitext-2-raw-v1:test",
                           "x.zarr"], runs)[1] == runs.resolve() / "x.zarr"


@pytest.mark.parametrize("owner", ["[click](http://example.com)", "![x](http://example.com/a.png)", "**bold**",
                                   ":red[alarm]", "a" * 41, "<b>x</b>"])
def test_owner_names_are_plain_words(runs, owner):
    with pytest.raises(jobs.JobError, match="may hold letters"):
        jobs.submit(runs, [*OK, "--out", "a.zarr"], owner=owner, start=False)


# -- files in RUNS/.jobs/ the queue did not write ------------------------------------------------

def _forged(runs, job_id="20260101-000000-aaaaaa", **fields) -> Path:
    marker = runs.parent / "pwned"
    folder = runs / ".jobs"
    folder.mkdir(exist_ok=True)
    record = {"id": job_id, "argv": ["run", "--out", "x.zarr"], "out": str(runs / "x.zarr"), "device": "cpu",
              "owner": "eve", "state": "queued", "created": 1.0, "log": str(folder / f"{job_id}.log"),
              "program": ["-c", f"open({str(marker)!r}, 'w').write('ran')"], **fields}
    (folder / f"{job_id}.json").write_text(json.dumps(record))
    return marker


def test_a_job_file_the_queue_did_not_write_never_runs(runs):
    marker = _forged(runs)  # no signature
    jobs.submit(runs, [*OK, "--out", "ok.zarr"], owner="ana", start=False)  # the folder gets its secret
    assert [j.owner for j in jobs.list_jobs(runs)] == ["ana"]  # the forged file is not listed
    marker2 = _forged(runs, "20260101-000000-bbbbbb", sig="0" * 64)  # a made-up signature
    with pytest.raises(jobs.JobError, match="not written by this queue"):
        jobs.read_job(runs, "20260101-000000-bbbbbb")
    with pytest.raises(jobs.JobError):
        jobs.exec_job(runs, "20260101-000000-aaaaaa")
    assert not marker.exists() and not marker2.exists()


def test_an_edited_job_file_is_refused(runs):
    job = jobs.submit(runs, [*OK, "--out", "ok.zarr"], owner="ana", start=False)
    path = runs / ".jobs" / f"{job.id}.json"
    record = json.loads(path.read_text())
    record["program"] = ["-c", "print('code from the runs folder')"]
    path.write_text(json.dumps(record))
    assert jobs.list_jobs(runs) == []
    with pytest.raises(jobs.JobError, match="not written by this queue"):
        jobs.exec_job(runs, job.id)


def test_the_runner_skips_forged_jobs(runs):
    jobs.submit(runs, [*OK, "--out", "ok.zarr", "--dry-run"], owner="ana", start=False)
    marker = _forged(runs)
    jobs.cancel(runs, jobs.list_jobs(runs)[0].id, by="ana")  # leave nothing real to run
    assert jobs.ensure_runners(runs) == []  # nothing signed waits: no runner starts
    jobs.run_queue(runs, "cpu", idle_s=0.2)  # a runner started by hand takes only signed jobs
    assert not marker.exists()
    assert "cancelled by ana" in jobs.list_jobs(runs)[0].note


def test_a_secret_others_can_read_or_replace_is_refused(runs):
    jobs.submit(runs, [*OK, "--out", "ok.zarr"], owner="ana", start=False)
    secret = runs / ".jobs" / jobs.SECRET
    assert secret.stat().st_mode & 0o777 == 0o600
    os.chmod(secret, 0o644)
    assert jobs.list_jobs(runs) == []
    with pytest.raises(jobs.JobError, match="chmod 600"):
        jobs.submit(runs, [*OK, "--out", "two.zarr"], owner="ana", start=False)


def test_jobs_do_not_inherit_the_launch_token(monkeypatch):
    monkeypatch.setenv("WORKBENCH_LAUNCH_TOKEN", "s3cret")
    assert "WORKBENCH_LAUNCH_TOKEN" not in jobs._env()


# -- workbench app ------------------------------------------------------------------------------

def test_app_command_hides_error_details_and_the_token(tmp_path, monkeypatch):
    from workbench import app_cli

    cmd = app_cli.streamlit_command(str(tmp_path), "0.0.0.0", 8501)
    assert cmd[cmd.index("--client.showErrorDetails") + 1] == "none"
    token_file = tmp_path / "token"
    token_file.write_text("t0k3n-from-a-file\n")
    seen = {}
    monkeypatch.setattr(app_cli.os, "execv", lambda path, argv: seen.update(argv=argv))
    monkeypatch.delenv("WORKBENCH_LAUNCH_TOKEN", raising=False)
    monkeypatch.delenv(jobs.CLUSTER_ENV, raising=False)
    app_cli.app(runs=str(tmp_path), host="127.0.0.1", port=8501, open_browser=False, launch_token="",
                launch_token_file=str(token_file), cluster="")
    assert os.environ["WORKBENCH_LAUNCH_TOKEN"] == "t0k3n-from-a-file"
    assert not any("t0k3n" in a for a in seen["argv"])
    (tmp_path / "empty").write_text("\n")
    import typer

    with pytest.raises(typer.BadParameter, match="empty"):
        app_cli.app(runs=str(tmp_path), host="127.0.0.1", port=8501, open_browser=False, launch_token="",
                    launch_token_file=str(tmp_path / "empty"), cluster="")


# -- the pages, as a visitor opens them ---------------------------------------------------------

def _start(runs, page):
    from test_app import start

    return start(runs, page)


def _folder_box(at):
    return next(t for t in at.text_input if t.label == "Folder of run stores")


def test_the_sidebar_reads_only_the_runs_folder(runs, tmp_path):
    from test_app import texts

    (runs / "inside.zarr").mkdir()
    at = _start(runs, "runs")
    sel = at.session_state["selection"]
    assert [Path(p).name for p in sel.stores] == ["inside.zarr"]  # not link/secret.zarr
    for typed in (str(tmp_path / "outside"), "../outside", str(runs / "link"), "/"):
        _folder_box(at).set_value(typed).run()
        assert "outside the app's runs folder" in texts(at, "error"), typed
        sel = at.session_state["selection"]
        assert sel.folder == runs.resolve() and [Path(p).name for p in sel.stores] == ["inside.zarr"], typed
        assert not at.exception
    (runs / "sub" / "deeper.zarr").mkdir(parents=True)
    _folder_box(at).set_value("sub").run()  # a sub-folder is fine, relative or absolute
    assert [Path(p).name for p in at.session_state["selection"].stores] == ["deeper.zarr"]
    assert "outside" not in texts(at, "error")


def test_the_report_page_renders_only_reports_in_the_runs_folder(runs, tmp_path):
    from test_app import texts

    (tmp_path / "outside" / "report.md").write_text("# Outside\n\nSECRET WORDS\n")
    (runs / "linked").mkdir()
    (runs / "linked" / "report.md").symlink_to(tmp_path / "outside" / "report.md")
    (runs / "study").mkdir()
    (runs / "study" / "report.md").write_text("# Study\n\nRemoving attention hurts most.\n")
    at = _start(runs, "report")
    assert not at.exception
    options = next(s for s in at.selectbox if s.label == "Report").options
    assert [Path(o).parent.name for o in options] == ["study"]
    assert "SECRET WORDS" not in " ".join(str(m.value) for m in at.markdown)
    _folder_box(at).set_value(str(tmp_path)).run()
    assert "SECRET WORDS" not in " ".join(str(m.value) for m in at.markdown)
    assert "outside the app's runs folder" in texts(at, "error")


def _launch(runs, monkeypatch, token="s3cret"):
    monkeypatch.setenv("WORKBENCH_LAUNCH_TOKEN", token)
    return _start(runs, "launch")


def _token_box(at):
    return next(t for t in at.text_input if t.label == "Launch token")


def test_a_non_ascii_token_does_not_crash_the_launch_page(runs, monkeypatch):
    from test_app import texts

    at = _launch(runs, monkeypatch)
    _token_box(at).set_value("pässwörd").run()  # before: TypeError from compare_digest on str
    assert not at.exception and "not the launch token" in texts(at, "error")
    at = _launch(runs, monkeypatch, token="clé-secrète")
    _token_box(at).set_value("clé-secrète").run()
    assert not at.exception and any(b.label == "Launch" for b in at.button)


def test_token_tries_are_rate_limited(runs, monkeypatch):
    from test_app import texts

    at = _launch(runs, monkeypatch)
    for i in range(5):
        _token_box(at).set_value(f"guess{i}").run()
        assert "not the launch token" in texts(at, "error")
    _token_box(at).set_value("s3cret").run()  # right, but within the wait after 5 wrong ones
    assert "Too many wrong tokens" in texts(at, "error") and not any(b.label == "Launch" for b in at.button)
    assert at.session_state["launch_token_retry_at"] - time.time() > 1
    at.run()  # a rerun of the page is not another try
    assert at.session_state["launch_token_failures"] == 5
    at.session_state["launch_token_retry_at"] = time.time() - 1  # the wait is over
    _token_box(at).set_value("s3cret").run()
    assert any(b.label == "Launch" for b in at.button)


def test_the_form_refuses_what_the_queue_refuses(runs, monkeypatch):
    from test_app import texts

    at = _launch(runs, monkeypatch)
    _token_box(at).set_value("s3cret").run()
    extra = next(t for t in at.text_input if t.key == "launch_extra:run")
    for typed, message in (("--cluster tcp://10.0.0.1:8786", "'--cluster' is not allowed"),
                           ("--out elsewhere.zarr", "given twice"),
                           ("--plan /etc/passwd", "outside the runs folder")):
        extra.set_value(typed).run()
        assert message in texts(at, "error").replace("\\", ""), typed
        assert at.button(key="launch_button").disabled
    extra.set_value("").run()
    corpus = next(t for t in at.text_input if t.key == "launch_corpus")
    corpus.set_value("/etc/hostname").run()
    assert "neither a built-in corpus" in texts(at, "error").replace("\\", "")
    corpus.set_value("news,mine.txt").run()
    assert not texts(at, "error") and str(runs.resolve() / "mine.txt") in at.code[0].value


SLEEPER = "import sys, time\ntry:\n    time.sleep(30)\nexcept KeyboardInterrupt:\n    sys.exit(130)\n"


def test_cancel_asks_first_and_names_who_asked(runs, monkeypatch):
    (runs.parent / "sleeper.py").write_text(SLEEPER)
    job = jobs.submit(runs, [*OK, "--out", "a.zarr"], owner="ben_x_", program=[str(runs.parent / "sleeper.py")])
    at = _launch(runs, monkeypatch)
    assert any(e.label.endswith("· ben\\_x\\_") for e in at.expander)  # as typed, not italics
    _token_box(at).set_value("s3cret").run()
    next(t for t in at.text_input if t.label == "Your name (shown in the queue)").set_value("ana").run()
    at.button(key="cancel_button").click().run()
    assert jobs.read_job(runs, job.id).state in jobs.ACTIVE  # not yet: asked first
    assert not jobs.read_job(runs, job.id).cancel_requested
    assert any("of ben\\_x\\_" in str(w.value) for w in at.warning)
    at.button(key="cancel_no").click().run()
    assert not jobs.read_job(runs, job.id).cancel_requested and jobs.read_job(runs, job.id).state in jobs.ACTIVE
    at.button(key="cancel_button").click().run()
    at.button(key="cancel_yes").click().run()
    asked = jobs.read_job(runs, job.id)
    assert asked.state == "cancelled" or (asked.cancel_requested and "by ana" in asked.note)
    end = time.time() + 30
    while jobs.read_job(runs, job.id).state in jobs.ACTIVE and time.time() < end:
        time.sleep(0.1)
    assert jobs.read_job(runs, job.id).state == "cancelled"


def _planted_store(path: Path, source: str, reference: str = "") -> Path:
    """Just what diagnose re-reads of a store: its corpus sources and protocol."""
    import numpy as np
    import zarr

    path.mkdir()
    arr = zarr.open_array(str(path / "corpus_source"), mode="w", shape=(1,), dtype=np.dtypes.StringDType(),
                          zarr_format=2)
    arr[:] = np.array([source], dtype=np.dtypes.StringDType())
    (path / ".zattrs").write_text(json.dumps({"protocol": json.dumps({"reference": reference or source})}))
    return path


def test_diagnose_refuses_a_store_that_would_read_a_server_file(runs):
    _planted_store(runs / "planted.zarr", "/etc/hostname")
    _planted_store(runs / "sneaky.zarr", "builtin:news", reference="/etc/hostname (last 128 tokens)")
    _planted_store(runs / "fine.zarr", "builtin:news", reference=f"{runs / 'mine.txt'} (last 128 tokens)")
    assert job_argv.recorded_corpora(runs / "planted.zarr") == ["/etc/hostname", "/etc/hostname"]
    for name in ("planted.zarr", "sneaky.zarr"):
        with pytest.raises(jobs.JobError, match="diagnose it from a shell"):
            jobs.submit(runs, ["diagnose", "--tokens", "64", name], owner="ana", start=False)
    assert jobs.submit(runs, ["diagnose", "fine.zarr"], owner="ana", start=False).out == str(runs.resolve() / "fine.zarr")
