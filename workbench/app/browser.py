"""Serving the app and driving it in a real browser (Playwright pages): shared by the browser
test and ``docs/screenshots.py``. Nothing here imports Playwright; callers pass its page objects."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def serve(runs: Path, port: int, log_path: Path, env: dict | None = None):
    """The app on 127.0.0.1:``port`` over ``runs`` (as ``workbench app`` starts it), until the
    block ends; yields its URL once it answers its health check."""
    from workbench.app_cli import streamlit_command

    log = open(log_path, "w")
    proc = subprocess.Popen(streamlit_command(str(runs), "127.0.0.1", port), cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"the app did not start: {Path(log_path).read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


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
