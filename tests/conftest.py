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


# A check's status across its cases: one failure fails it, one pass beats skips (order-free, so
# the matrix is the same whichever xdist worker ran which case).
_RANK = {"skip": 0, "pass": 1, "FAIL": 2}


def _merge(into: dict[str, dict[str, str]], results: dict[str, dict[str, str]]) -> None:
    for family, checks in results.items():
        for check, status in checks.items():
            prev = into.setdefault(family, {}).get(check)
            if prev is None or _RANK[status] > _RANK[prev]:
                into[family][check] = status


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("compat")
    if marker is None or not hasattr(item, "callspec") or "family" not in item.callspec.params:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        family = families()[item.callspec.params["family"]].name
        status = "pass" if report.outcome == "passed" else "skip" if report.skipped else "FAIL"
        _merge(_results, {family: {marker.args[0]: status}})


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist: a worker's results reach the controller, which writes the file."""
    _merge(_results, node.workeroutput.get("compat", {}))


def pytest_sessionfinish(session, exitstatus):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the results to the controller
        workeroutput["compat"] = _results
        return
    if not _results:
        return
    COMPAT_FILE.parent.mkdir(exist_ok=True)
    COMPAT_FILE.write_text(json.dumps(_results, indent=1, sort_keys=True))
