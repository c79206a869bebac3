"""The app's security boundary in a real browser (headless Debian chromium): a visitor reads only
the runs folder, the launch form refuses what the queue refuses, names are drawn as text, the token
check survives non-ASCII input and cancelling asks first. The app is served as `workbench app`
serves it (tests/test_browser.py's helpers)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from test_browser import CHROMIUM, _free_port, _text
from workbench import jobs
from workbench.app.browser import serve, settled

pytestmark = pytest.mark.slow

TOKEN = "let-me-launch"
SLEEPER = "import sys, time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    sys.exit(130)\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install -y chromium")
    pytest.importorskip("playwright", reason="pip install playwright (never `playwright install`)")
    base = tmp_path_factory.mktemp("security")
    runs, outside = base / "runs", base / "outside"
    (runs / "inside.zarr").mkdir(parents=True)
    (outside / "secret.zarr").mkdir(parents=True)
    (outside / "report.md").write_text("# Outside\n\nSECRET WORDS\n")
    (runs / "link").symlink_to(outside)
    (runs / "study").mkdir()
    (runs / "study" / "report.md").write_text("# Study\n\nRemoving attention hurts most.\n")
    (base / "sleeper.py").write_text(SLEEPER)
    with serve(runs, _free_port(), base / "streamlit.log", env={"WORKBENCH_LAUNCH_TOKEN": TOKEN}) as url:
        yield url, runs, base


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


def _page(browser):
    page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page, errors


def _alerts(page) -> str:
    return " ".join(page.locator('[data-testid="stAlert"]').all_inner_texts())


def _nav(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()
    settled(page)


def test_a_visitor_reads_only_the_runs_folder(served, browser):
    url, runs, base = served
    page, errors = _page(browser)
    page.goto(url)
    page.get_by_label("Folder of run stores").first.wait_for(timeout=60_000)
    settled(page)
    _nav(page, "Report")
    page.get_by_text("Removing attention hurts most.").first.wait_for(timeout=30_000)
    assert "SECRET WORDS" not in page.inner_text("body")  # link/report.md leads outside: not offered
    for typed in (str(base), str(base / "outside"), "../outside", "link", "/"):
        _text(page, "Folder of run stores", typed)
        assert "outside the app's runs folder" in _alerts(page), typed
        body = page.inner_text("body")
        assert "SECRET WORDS" not in body and "Removing attention hurts most." in body, typed
        assert page.locator('[data-testid="stException"]').count() == 0
    _text(page, "Folder of run stores", "study")  # a sub-folder is fine
    assert "outside" not in _alerts(page) and "Removing attention hurts most." in page.inner_text("body")
    assert not errors, errors


def test_the_launch_form_in_a_browser(served, browser):
    url, runs, base = served
    job = jobs.submit(runs, ["run", "--model", "random:qwen2", "--corpus", "news", "--out", "held.zarr"],
                      owner="_ben_", program=[str(base / "sleeper.py")])
    page, errors = _page(browser)
    page.goto(f"{url}/launch")
    page.get_by_label("Launch token").first.wait_for(timeout=60_000)
    settled(page)
    # the owner's name as typed (Markdown would draw _ben_ as italics)
    page.get_by_text("· _ben_").first.wait_for(timeout=30_000)
    _text(page, "Launch token", "pässwörd")  # before: a TypeError traceback
    assert "not the launch token" in _alerts(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    _text(page, "Launch token", TOKEN)
    launch = page.get_by_role("button", name="Launch", exact=True)
    launch.wait_for(timeout=30_000)
    _text(page, "More options", "--cluster tcp://10.0.0.1:8786")
    assert "'--cluster' is not allowed" in _alerts(page) and launch.is_disabled()
    _text(page, "More options", "--out ../outside/victim.zarr")
    assert "outside the runs folder" in _alerts(page) and launch.is_disabled()
    _text(page, "More options", "")
    _text(page, "Corpora (names or files, comma-separated)", str(base / "outside" / "report.md"))
    assert "neither a built-in corpus" in _alerts(page) and launch.is_disabled()
    _text(page, "Corpora (names or files, comma-separated)", "news")
    _text(page, "Your name (shown in the queue)", "[click](http://example.com)")
    launch.click()
    settled(page)
    assert "may hold letters" in _alerts(page)
    assert page.locator('a[href^="http://example.com"]').count() == 0, page.locator('a[href^="http://example.com"]').first.evaluate("e => e.parentElement.outerHTML")
    assert [j.id for j in jobs.list_jobs(runs)] == [job.id]  # nothing else was queued
    # cancelling asks first
    _text(page, "Your name (shown in the queue)", "ana")
    page.get_by_role("button", name="Cancel", exact=True).click()
    settled(page)
    assert "Cancel job" in _alerts(page) and "_ben_" in _alerts(page)
    assert jobs.read_job(runs, job.id).state in jobs.ACTIVE and not jobs.read_job(runs, job.id).cancel_requested
    page.get_by_role("button", name="Yes, cancel it").click()
    settled(page)
    page.get_by_text(f"{job.id} · cancelled").first.wait_for(timeout=30_000)
    assert "by ana" in jobs.read_job(runs, job.id).note or jobs.read_job(runs, job.id).cancel_requested
    assert page.locator('[data-testid="stException"]').count() == 0
    assert not errors, errors
    shutil.rmtree(runs / ".jobs", ignore_errors=True)
