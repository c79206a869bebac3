"""Where the shipped data lives (overridable for installs outside the repo)."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("WORKBENCH_DATA", REPO_ROOT / "data"))
