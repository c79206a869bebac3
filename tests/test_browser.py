"""End to end in a real browser: the app served on a loopback port, every page opened, a selector
switched on each, no error shown, the main chart drawn, and a screenshot saved per page.

Needs Debian's chromium (`apt-get install -y chromium`) and the `playwright` package (its own
browser download is never used: it cannot work offline).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from workbench.app.browser import screenshot as _screenshot, serve, settled as _settled

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# build/ by default (ignored by git); WORKBENCH_SCREENSHOTS=docs/screenshots refreshes the committed ones
SHOTS = Path(os.environ.get("WORKBENCH_SCREENSHOTS", ROOT / "build" / "screenshots"))
# (navigation title, screenshot name, main element, how to switch one selector)
PAGES = [("Runs", "runs", "stDataFrame", ("multiselect", "Stores", "qwen3_5")),
         ("Model map", "model_map", "stVegaLiteChart", ("toggle", "Show whole-layer rows", None)),
         ("Perplexity and tasks", "perplexity", "stVegaLiteChart", ("selectbox", "Bootstrap resamples", "500")),
         ("Layer sweep", "layer_sweep", "stVegaLiteChart", ("selectbox", "Condition details", "ssm off, layer 2")),
         ("Random controls", "random_controls", "stVegaLiteChart", ("multiselect", "Stores", "study")),
         ("Compare", "compare", "stVegaLiteChart", ("radio", "Line up roles by", "function")),
         ("Representations", "representations", "stVegaLiteChart", ("radio", "View", "CKA between layers")),
         ("Embedding map", "embedding_map", "stVegaLiteChart", ("selectbox", "Colour by", "next token")),
         ("Report", "report", "stImage", ("selectbox", "Report", "study2"))]
TOKEN = "let-me-launch"
# Launch and Roles have browser tests of their own (test_browser_roles.py); Mediation is drawn
# by AppTest on a mediated store (test_app_mediation.py).
ELSEWHERE = {"launch", "roles", "mediation"}


def test_every_registered_page_is_opened():
    from workbench.app.pages import NAMES

    assert {name for _, name, _, _ in PAGES} | ELSEWHERE == set(NAMES)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install -y chromium")
    pytest.importorskip("playwright", reason="pip install playwright (never `playwright install`)")
    from PIL import Image

    from test_app import make_runs

    from workbench.diagnose import diagnose

    runs = make_runs(tmp_path_factory.mktemp("browser_runs"))
    shutil.rmtree(runs / "control")  # the first store picked by default is then a hybrid (Falcon-H1)
    diagnose(runs / "hybrids" / "falcon_h1.zarr", tokens=64, progress=False, map_methods=("pca",),
             diagnostics=("cka", "lens", "norms", "retrieval", "state", "maps"))
    for name, colour in (("study1", "#4e79a7"), ("study2", "#e15759")):
        (runs / name).mkdir()
        Image.new("RGB", (480, 200), colour).save(runs / name / "ratios.png")
        (runs / name / "report.md").write_text(f"# {name}\n\nRemoving attention hurts most.\n\n"
                                               "![perplexity ratios](ratios.png)\n")
    log = tmp_path_factory.mktemp("log") / "streamlit.log"
    with serve(runs, _free_port(), log, env={"WORKBENCH_LAUNCH_TOKEN": TOKEN}) as url:
        yield url, runs


def _switch(page, kind: str, label: str, option: str | None) -> None:
    testid = {"selectbox": "stSelectbox", "multiselect": "stMultiSelect", "radio": "stRadio",
              "toggle": "stCheckbox"}[kind]
    widget = page.locator(f'[data-testid="{testid}"]').filter(has_text=label).first
    if kind in ("selectbox", "multiselect"):
        page.get_by_role("combobox", name=label).first.click()
        page.get_by_role("option").filter(has_text=option).first.click()
        page.keyboard.press("Escape")
    elif kind == "radio":
        widget.get_by_text(option, exact=True).click()
    else:
        widget.locator("label").first.click()
    page.evaluate("document.activeElement && document.activeElement.blur()")


def test_every_page_in_a_browser(served):
    from playwright.sync_api import sync_playwright

    served, _ = served
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(served)
        _settled(page)
        for title, name, main, (kind, label, option) in PAGES:
            page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()
            _settled(page)
            folder = page.locator('[data-testid="stTextInput"] input').first.input_value()
            assert folder.endswith("browser_runs0"), (title, folder)  # the --runs folder, on every page
            assert page.locator('[data-testid="stException"]').count() == 0, title
            _switch(page, kind, label, option)
            _settled(page)
            # a rerun may start after the settle check on a busy machine: wait for the chart itself
            page.locator(f'[data-testid="{main}"]').first.wait_for(timeout=30_000)
            _settled(page)
            assert page.locator('[data-testid="stException"]').count() == 0, title
            assert page.locator(f'[data-testid="{main}"]').count() > 0, (title, main)
            _screenshot(page, SHOTS / f"{name}.png")
        # a page's own URL, opened directly, gets the same app (navigation, sidebar, wide layout)
        page.goto(f"{served}/layer_sweep")
        _settled(page)
        # on a loaded machine the page can still be drawing after the settle check: wait for what is counted
        page.get_by_role("combobox", name="Condition details").first.wait_for(timeout=60_000)
        nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
        assert "Perplexity and tasks" in nav and "streamlit app" not in nav.lower(), nav
        assert page.locator('[data-testid="stException"]').count() == 0
        assert page.get_by_role("combobox", name="Condition details").count() == 1
        browser.close()
    assert not errors, errors


def _pick_store(page, name: str) -> None:
    """The page's own "Store" selectbox (exact: the sidebar's "Stores" would match too)."""
    box = page.get_by_role("combobox", name="Store", exact=True).first
    box.wait_for(timeout=30_000)
    box.click()
    page.get_by_role("option").filter(has_text=name).first.click()
    page.keyboard.press("Escape")
    page.evaluate("document.activeElement && document.activeElement.blur()")
    _settled(page)


def test_task_results_in_a_browser(served):
    """A study store with tasks: accuracy, paired accuracy drops and the per-item table on the
    Perplexity-and-tasks page, and accuracy drops on the Layer sweep."""
    from playwright.sync_api import sync_playwright

    served, _ = served
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{served}/perplexity")
        _settled(page)
        _switch(page, "multiselect", "Stores", "study")
        _settled(page)
        _pick_store(page, "study")
        page.get_by_text("Accuracy drop against the baseline").first.wait_for(timeout=60_000)
        _settled(page)
        body = page.inner_text("body")
        assert "no task results" not in body and "Item by item" in body
        assert page.locator('[data-testid="stVegaLiteChart"]').count() >= 3  # groups, accuracy, drops
        assert page.locator('[data-testid="stException"]').count() == 0
        _screenshot(page, SHOTS / "perplexity_tasks.png")
        page.locator('[data-testid="stSidebarNav"] a').filter(has_text="Layer sweep").first.click()
        _settled(page)
        _pick_store(page, "study")
        _switch(page, "selectbox", "Value", "accuracy drop")
        _settled(page)
        page.get_by_role("combobox", name="Task").first.wait_for(timeout=60_000)
        assert page.locator('[data-testid="stVegaLiteChart"]').count() >= 1
        assert page.locator('[data-testid="stException"]').count() == 0
        browser.close()
    assert not errors, errors


def _text(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True).first
    box.fill(value)
    box.press("Enter")
    _settled(page)


def test_launch_a_job_while_another_visitor_browses(served, tmp_path):
    """Two visitors of one app: one launches a tiny run from the Launch page, the other browses and
    sees the same queue (read-only without the token); the job finishes and its store is listed."""
    from playwright.sync_api import sync_playwright

    url, runs = served
    corpus = runs / "tiny.txt"  # a launched corpus is a built-in name or a file in the runs folder
    corpus.write_text("It was the best of times, it was the worst of times. " * 20)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        ana = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
        ben = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
        errors = []
        for page in (ana, ben):
            page.on("pageerror", lambda exc: errors.append(str(exc)))
        ana.goto(f"{url}/launch")
        _settled(ana)
        _text(ana, "Launch token", "wrong")
        assert "not the launch token" in " ".join(ana.locator('[data-testid="stAlert"]').all_inner_texts())
        _text(ana, "Launch token", TOKEN)
        ana.get_by_role("button", name="Launch", exact=True).wait_for(timeout=30_000)
        _text(ana, "Your name (shown in the queue)", "ana")
        ana.get_by_role("combobox", name="Model").first.click()
        ana.keyboard.type("random:qwen2")
        ana.keyboard.press("Enter")
        _settled(ana)
        _switch(ana, "selectbox", "Preset", "smoke")
        _settled(ana)
        _text(ana, "Corpora (names or files, comma-separated)", str(corpus))
        _text(ana, "Max tokens per corpus (0: all)", "0")
        _text(ana, "More options", "--context 32 --stride 16")
        command = ana.locator('[data-testid="stCode"]').first.inner_text()
        assert "--model random:qwen2 --preset smoke" in command and "random_qwen2-smoke.zarr" in command, command
        # ben browses while ana launches
        ben.goto(url)
        _settled(ben)
        ben.locator('[data-testid="stSidebarNav"] a').filter(has_text="Representations").first.click()
        _settled(ben)
        ana.get_by_role("button", name="Launch", exact=True).click()
        # on a busy machine the rerun that queues the job can outlast the settle check: wait for it
        ana.locator('[data-testid="stAlert"]').filter(has_text="Queued job").first.wait_for(timeout=60_000)
        _settled(ana)
        _switch(ben, "radio", "View", "Norm drift")
        _settled(ben)
        assert ben.locator('[data-testid="stException"]').count() == 0
        ben.locator('[data-testid="stSidebarNav"] a').filter(has_text="Launch").first.click()
        _settled(ben)
        assert "Launching is off" not in ben.inner_text("body")  # a token is set: ben is asked for it
        assert ben.get_by_label("Launch token").count() >= 1
        assert ben.get_by_role("button", name="Launch", exact=True).count() == 0  # not until ben gives it
        ben.get_by_text("· ana", exact=False).first.wait_for(timeout=30_000)  # ana's job, in ben's queue
        ana.get_by_text("· done · ana").first.wait_for(timeout=120_000)
        _settled(ana)
        _screenshot(ana, SHOTS / "launch.png")
        ben.get_by_text("· done · ana").first.wait_for(timeout=30_000)
        assert ana.locator('[data-testid="stException"]').count() == 0
        browser.close()
    assert not errors, errors
    assert (runs / "random_qwen2-smoke.zarr" / "complete").is_dir()
