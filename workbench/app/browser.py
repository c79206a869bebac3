"""Driving the app in a real browser (Playwright pages): shared by the browser test and
``docs/screenshots.py``. Nothing here imports Playwright; callers pass its page objects."""

from __future__ import annotations

from pathlib import Path


def settled(page) -> None:
    """Wait until Streamlit has finished the run (no 'running' status) and charts are drawn."""
    page.wait_for_timeout(300)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=60_000)
    page.wait_for_load_state("networkidle")
    for chart in page.locator('[data-testid="stVegaLiteChart"]').all():
        chart.locator("canvas, svg").first.wait_for(timeout=30_000)
    page.wait_for_timeout(300)


def screenshot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main block, so grow the window to fit it."""
    height = page.evaluate('document.querySelector(\'[data-testid="stMain"]\').scrollHeight')
    page.set_viewport_size({"width": 1440, "height": min(max(int(height), 800), 4000)})
    page.wait_for_timeout(500)
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1440, "height": 1000})
