"""Permalinks in a real browser: a link to the Roles page opens it on the folder, store and choices
it names; a link naming a folder outside the runs folder is refused. Saves the Roles page's
screenshot (build/screenshots/ unless WORKBENCH_SCREENSHOTS says otherwise)."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_browser import CHROMIUM, SHOTS, _free_port
from workbench.app.browser import screenshot, serve, settled

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install -y chromium")
    pytest.importorskip("playwright", reason="pip install playwright (never `playwright install`)")
    from test_app_roles import make_store

    runs = tmp_path_factory.mktemp("roles_runs")
    make_store(runs)  # hybrid/q35.zarr and hybrid/a.zarr (listed first): the link must pick q35
    with serve(runs, _free_port(), tmp_path_factory.mktemp("log") / "streamlit.log") as url:
        yield url, runs


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1440, "height": 1000})
        errors = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        yield tab
        browser.close()
        assert not errors, errors


def test_a_permalink_opens_the_view_it_names(served, page):
    url, runs = served
    page.goto(f"{url}/roles?folder=hybrid&stores=q35&metric=acc_norm")
    page.get_by_role("heading", name="linear_attention").first.wait_for(timeout=120_000)
    settled(page)
    assert page.locator('[data-testid="stTextInput"] input').first.input_value() == "hybrid"
    stores = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Stores").first.inner_text()
    assert "q35" in stores
    assert page.get_by_role("combobox", name="Task metric").first.input_value() == "acc_norm"
    assert page.locator('[data-testid="stException"]').count() == 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    screenshot(page, SHOTS / "roles.png")
    # the view's links keep the folder and store
    page.get_by_role("link", name="Layer sweep").last.click()
    settled(page)
    assert "folder=hybrid" in page.url and "stores=q35" in page.url, page.url
    assert page.locator('[data-testid="stTextInput"] input').first.input_value() == "hybrid"


def test_a_permalink_to_an_outside_folder_is_refused(served, page):
    url, runs = served
    page.goto(f"{url}/roles?folder=..")
    page.get_by_label("Folder of run stores").first.wait_for(timeout=60_000)
    settled(page)
    alerts = " ".join(page.locator('[data-testid="stAlert"]').all_inner_texts())
    assert "outside the app's runs folder" in alerts
    assert str(runs.parent) not in page.inner_text("body").replace(str(runs), "")
