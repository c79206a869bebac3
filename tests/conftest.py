"""Shared fixtures: tiny random models of every family, built once per session.

Tests that take a ``family`` parameter and carry ``@pytest.mark.compat("check name")`` feed the
compatibility matrix (family x check -> pass/fail) written to build/compat.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models run fastest (and deterministically) on one thread; more threads only contend.
torch.set_num_threads(1)

from workbench.architectures import families  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMPAT_FILE = ROOT / "build" / "compat.json"
_results: dict[str, dict[str, str]] = {}


def family_names() -> list[str]:
    """One representative model_type per family, sorted by family name."""
    seen = {}
    for model_type, fam in sorted(families().items()):
        seen.setdefault(fam.name, model_type)
    return [seen[k] for k in sorted(seen)]


_models: dict[str, object] = {}


@pytest.fixture
def tiny(request):
    """A (model, tokenizer) pair for the model_type in the test's ``family`` parameter."""
    from workbench.loading import load_model

    model_type = request.node.callspec.params["family"]
    if model_type not in _models:
        _models[model_type] = load_model(f"random:{model_type}")
    return _models[model_type]


def pytest_configure(config):
    config.addinivalue_line("markers", "compat(check): a check reported in the compatibility matrix")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("compat")
    if marker is None or not hasattr(item, "callspec") or "family" not in item.callspec.params:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        family = families()[item.callspec.params["family"]].name
        check = marker.args[0]
        status = "pass" if report.outcome == "passed" else "skip" if report.skipped else "FAIL"
        prev = _results.setdefault(family, {}).get(check)
        if prev != "FAIL":  # one failing case fails the check
            _results[family][check] = status


def pytest_sessionfinish(session, exitstatus):
    if not _results:
        return
    COMPAT_FILE.parent.mkdir(exist_ok=True)
    COMPAT_FILE.write_text(json.dumps(_results, indent=1, sort_keys=True))
