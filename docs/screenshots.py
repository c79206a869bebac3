"""Screenshots of every page of the app on a folder of run stores (the README's pictures).

    python docs/screenshots.py RUNS_DIR [--out docs/screenshots] [--port 8765]

Serves the app on 127.0.0.1 with ``--runs RUNS_DIR``, opens each page in Debian's chromium
(through Playwright, never its own browser download), waits until Streamlit has drawn it, and
saves ``<page>.png``. Every store of the folder is picked, as a visitor would.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from workbench.app.browser import screenshot, serve, settled
from workbench.app.pages import PAGES

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, serve(args.runs.resolve(), args.port, Path(tmp) / "app.log") as url:
        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(url)
            settled(page)
            box = page.get_by_role("combobox", name="Stores").first  # pick every store of the folder
            for _ in range(20):
                box.click()
                options = page.get_by_role("option")
                if options.count() == 0:
                    break
                options.first.click()
                settled(page)
            page.keyboard.press("Escape")
            for title, name in ((p.title, p.name) for p in PAGES):
                page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()
                settled(page)
                if name not in ("runs", "report", "launch"):  # a slow first draw may outlast the settle check
                    try:
                        page.locator('[data-testid="stVegaLiteChart"]').first.wait_for(timeout=30_000)
                    except Exception:  # a page that explains why it has nothing to chart
                        pass
                    settled(page)
                screenshot(page, args.out / f"{name}.png")
                print(args.out / f"{name}.png")
            browser.close()


if __name__ == "__main__":
    main()
