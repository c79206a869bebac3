"""The app's pages run against small real stores, and say so clearly when there are none."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench import app_data as ad
from workbench import plans
from workbench.architectures import component_map
from workbench.corpora import load_corpus
from workbench.loading import load_model
from workbench.runner import run_plan

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOME, CONDITIONS, COMPARE = "streamlit_app.py", "pages/1_Conditions.py", "pages/2_Compare_runs.py"
TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness. ") * 6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A folder with a study store (sweep, thirds, group, random trials), a smoke store, a partial
    store and a folder that only looks like a store."""
    folder = tmp_path_factory.mktemp("runs")
    corpus_file = folder.parent / "tale.txt"
    corpus_file.write_text(TEXT)
    loaded = load_model("random:qwen2")
    cmap = component_map(loaded.model)
    corpus = load_corpus(str(corpus_file), loaded.tokenizer)
    kw = dict(context=32, stride=16, progress=False)

    spec = plans.auto_spec(cmap, "study", seeds=2)
    spec = spec.model_copy(update={"generators": [
        *spec.generators, plans.RandomSpec(kind="random_matched", size=2, pool=["attention"], seeds=4),
        plans.RandomSpec(kind="random_matched", size=3, pool=["attention"], seeds=2)]})
    run_plan(loaded, plans.resolve(spec, cmap), [corpus], folder / "study.zarr", **kw)
    run_plan(loaded, plans.resolve(plans.auto_spec(cmap, "groups"), cmap), [corpus],
             folder / "control" / "groups.zarr", **kw)

    class Stop(Exception):
        pass

    def stop_after_two(i, cond, seen=[]):
        seen.append(i)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        run_plan(loaded, plans.resolve(plans.auto_spec(cmap, "sweep"), cmap), [corpus], folder / "partial.zarr",
                 on_condition=stop_after_two, **kw)
    (folder / "junk.zarr").mkdir()
    return folder


def app(script: str, runs_dir, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / script), default_timeout=30)
    at.session_state["runs_dir"] = str(runs_dir)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def texts(at: AppTest, kind: str) -> str:
    return " ".join(str(e.value) for e in getattr(at, kind))


def all_labels(at: AppTest) -> set[str]:
    out = set()
    for frame in at.dataframe:
        value = frame.value
        if isinstance(value, pd.DataFrame) and "label" in value:
            out |= set(value["label"])
    return out


def test_find_stores_and_info(runs):
    found = ad.find_stores(runs)
    assert [p.name for p in found] == ["groups.zarr", "junk.zarr", "partial.zarr", "study.zarr"]
    info = {p.name: ad.store_info(p) for p in found}
    assert info["study.zarr"]["model"] == "random:qwen2" and info["study.zarr"]["error"] == ""
    assert info["partial.zarr"]["conditions"] == "2/5"
    assert "not a readable workbench store" in info["junk.zarr"]["error"]
    assert ad.find_stores(runs / "nowhere") == []
    assert ad.runs_dir_from_argv(["--runs", "/x"]) == "/x" and ad.runs_dir_from_argv([]) is None


def test_home_lists_stores_and_shows_summary(runs):
    at = app(HOME, runs, store=str(runs / "study.zarr"))
    assert not at.exception
    listing = at.dataframe[0].value
    assert {"study.zarr", "groups.zarr", "partial.zarr", "junk.zarr"} <= set(listing["store"])
    assert "2/5" in set(listing["conditions"])
    labels = all_labels(at)
    assert {"baseline (no ablation)", "attention off, layers 0-3, zero", "attention off, layer 2, zero",
            "attention off (early third), layers 0-1, zero", "random 2 of attention, draw seed 0, zero"} <= labels
    assert "random:qwen2" in texts(at, "markdown") + texts(at, "header")
    assert not at.error  # every condition of this store passed QC


def test_home_partial_store_and_argv(runs, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["streamlit_app.py", "--runs", str(runs)])
    at = AppTest.from_file(str(ROOT / HOME), default_timeout=30)
    at.session_state["store"] = str(runs / "partial.zarr")
    at.run()
    assert not at.exception
    assert "not computed yet" in texts(at, "warning")
    summary = at.dataframe[-1].value
    assert (summary["qc"] == "pending").sum() == 3


def test_home_flags_failed_qc(runs, tmp_path):
    import shutil

    import zarr

    folder = tmp_path / "qc"
    shutil.copytree(runs / "study.zarr", folder / "study.zarr")
    group = zarr.open_group(folder / "study.zarr", mode="r+", zarr_format=2)
    fired = group["qc_fired"][:]
    fired[1] = False  # as if the edit of condition 1 never ran
    group["qc_fired"][:] = fired
    at = app(HOME, folder, store=str(folder / "study.zarr"))
    assert not at.exception
    assert "NOT FIRED" in texts(at, "error")
    assert (at.dataframe[-1].value["qc"] == "NOT FIRED").sum() == 1


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_no_stores_gives_a_message(case, tmp_path):
    folder = tmp_path / "nope" if case == "missing" else tmp_path
    for script in (HOME, CONDITIONS, COMPARE):
        at = app(script, folder)
        assert not at.exception, script
        message = texts(at, "warning") + texts(at, "info")
        assert ("does not exist" if case == "missing" else "No run stores") in message, script


def test_conditions_page(runs):
    at = app(CONDITIONS, runs, store=str(runs / "study.zarr"))
    assert not at.exception
    heads = texts(at, "subheader")
    for head in ("Perplexity ratio per condition", "Layer sweep", "Thirds", "Random-matched controls"):
        assert head in heads
    labels = all_labels(at)
    assert {"attention off, layers 0-3, zero", "attention off, layer 1, zero"} <= labels
    control = next(f.value for f in at.dataframe if "control" in f.value)
    n_trials = int((ad.read_results(runs / "study.zarr")["kind"] == "random_matched").sum())
    # two random controls: 3 of 4 attention layers (2 seeds) and 2 of 4 (4 seeds), every trial kept
    assert n_trials == 6 and sorted(control["n"].tolist()) == [2, 4]
    assert {"2 random from attention, zero", "3 random from attention, zero"} == set(control["control"])
    assert len(at.get("vega_lite_chart")) == 4

    at.multiselect[1].set_value([]).run()  # no mode picked: nothing to draw, no crash
    assert not at.exception and "No condition matches" in texts(at, "info")


def test_conditions_page_partial_store(runs):
    at = app(CONDITIONS, runs, store=str(runs / "partial.zarr"))
    assert not at.exception
    assert "not computed yet" in texts(at, "info")


def test_compare_page(runs):
    at = app(COMPARE, runs, store=str(runs / "study.zarr"))
    assert not at.exception
    picked = at.multiselect[0].value
    assert len(picked) == 2 and picked[0].endswith("study.zarr")
    wide = next(f.value for f in at.dataframe if "key" in f.value)
    assert "attention group, zero" in set(wide["key"])
    row = wide.set_index("key").loc["attention group, zero"]
    assert row.notna().all()  # both stores have it

    at.multiselect[0].set_value(picked[:1]).run()
    assert not at.exception and "two or more" in texts(at, "info")


def test_matched_groups_and_comparison_keys():
    table = pd.DataFrame({
        "label": ["a group", "s group", "r0", "r1", "small"],
        "kind": ["group", "group", "random_matched", "random_matched", "group"],
        "group": ["group:attention", "group:ssm", "random:6ofattention+ssm", "random:6ofattention+ssm", "x"],
        "mode": ["zero"] * 5, "n_targets": [6, 6, 6, 6, 2], "roles": ["attention", "ssm", "", "", "ssm"],
        "layers": ["0-5"] * 5, "third": [""] * 5})
    assert ad.matched_groups(table) == {"random:6ofattention+ssm": ["a group", "s group"]}
    assert ad.comparison_key(table.iloc[2]) == "random from attention+ssm (median), zero"
    assert ad.third_name("attention off (late third), layers 6-8, zero") == "late"
    assert np.isnan(ad._first_layer(""))
