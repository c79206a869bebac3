"""The app's pages run against small real stores, explain their empty states, and stay torch-free."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import zarr

from workbench import app_data as ad
from workbench import plans
from workbench.app.components import component_frame
from workbench.architectures import component_map
from workbench.corpora import load_corpus
from workbench.loading import load_model
from workbench.runner import run_plan
from workbench.tasks import get_tasks

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from workbench.app.pages import NAMES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENTRY = str(ROOT / "streamlit_app.py")
PAGES = list(NAMES)
TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness. ") * 6
KW = dict(context=32, stride=16, progress=False)


def _without_component_map(path: Path) -> None:
    """Drop the component map from a store's attrs (as in stores written before it was recorded)."""
    group = zarr.open_group(path, mode="r+", zarr_format=2)
    del group.attrs["component_map"]
    zarr.consolidate_metadata(path, zarr_format=2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("runs"))


def make_runs(folder: Path) -> Path:
    """study.zarr (Transformer: sweep, thirds, groups, whole-layer groups and sweep, random trials, and
    two tasks), control/groups.zarr, partial.zarr, a junk folder named like a store, and two hybrids
    in hybrids/ (Qwen3.5 and Falcon-H1)."""
    corpus_file = folder.parent / "tale.txt"
    corpus_file.write_text(TEXT)
    loaded = load_model("random:qwen2")
    cmap = component_map(loaded.model)
    corpus = load_corpus(str(corpus_file), loaded.tokenizer)

    spec = plans.auto_spec(cmap, "study", seeds=2)
    spec = spec.model_copy(update={"generators": [
        *spec.generators, plans.RandomSpec(kind="random_matched", size=2, pool=["attention"], seeds=4),
        plans.RandomSpec(kind="random_matched", size=3, pool=["attention"], seeds=2),
        plans.GroupSpec(kind="group", role="attention", mode="skip_layer"),
        plans.SweepSpec(kind="sweep", roles=[], mode="skip_layer")]})
    run_plan(loaded, plans.resolve(spec, cmap), [corpus], folder / "study.zarr",
             tasks=get_tasks(["last_word", "next_sentence"]), task_items=4, **KW)
    run_plan(loaded, plans.resolve(plans.auto_spec(cmap, "groups"), cmap), [corpus],
             folder / "control" / "groups.zarr", **KW)
    _without_component_map(folder / "control" / "groups.zarr")

    class Stop(Exception):
        pass

    def stop_after_two(i, cond, seen=[]):
        seen.append(i)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        run_plan(loaded, plans.resolve(plans.auto_spec(cmap, "sweep"), cmap), [corpus], folder / "partial.zarr",
                 on_condition=stop_after_two, group_size=1, **KW)  # written one at a time
    (folder / "junk.zarr").mkdir()

    for model_type, mixer in (("qwen3_5", "linear_attention"), ("falcon_h1", "ssm")):
        hybrid = load_model(f"random:{model_type}")
        hmap = component_map(hybrid.model)
        gens = [plans.GroupSpec(kind="group", role="attention"), plans.GroupSpec(kind="group", role=mixer),
                plans.GroupSpec(kind="group", role="attention", mode="skip_layer"),
                plans.SweepSpec(kind="sweep", roles=["attention", mixer]),
                plans.RandomSpec(kind="random_matched", size="attention", pool=["attention", mixer], seeds=3),
                # the only draw of all attention layers is the attention group itself
                plans.RandomSpec(kind="random_matched", size="attention", pool=["attention"], seeds=1)]
        hspec = plans.PlanSpec(name="hybrid", mode="zero", generators=gens)
        out = folder / "hybrids" / f"{model_type}.zarr"
        run_plan(hybrid, plans.resolve(hspec, hmap), [load_corpus(str(corpus_file), hybrid.tokenizer)], out, **KW)
    return folder


def start(runs_dir, page: str | None = None, picked: list[str] | None = None, monkeypatch=None) -> AppTest:
    """The app as a visitor opens it (`--runs DIR`), optionally on ``page`` with stores picked."""
    argv = ["streamlit_app.py", "--runs", str(runs_dir)]
    old = sys.argv
    sys.argv = argv
    try:
        at = AppTest.from_file(ENTRY, default_timeout=60)
        at.run()
        if picked is not None:
            stores = next(m for m in at.multiselect if m.label == "Stores")
            stores.set_value([str(p) for p in picked]).run()
        if page:
            at.switch_page(f"app_pages/{page}.py").run()
    finally:
        sys.argv = old
    return at


def texts(at: AppTest, kind: str) -> str:
    return " ".join(str(e.value) for e in getattr(at, kind))


def specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def chart_data(at: AppTest, i: int, column: str) -> pd.DataFrame:
    """The data of chart ``i`` that has ``column`` (Streamlit sends it apart from the spec)."""
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    proto = at.get("vega_lite_chart")[i].proto
    frames = [convert_arrow_bytes_to_pandas_df(d.data.data) for d in proto.datasets]
    if proto.HasField("data"):
        frames.append(convert_arrow_bytes_to_pandas_df(proto.data.data))
    return next(f for f in frames if column in f)


def widget(at: AppTest, kind: str, label: str):
    return next(w for w in getattr(at, kind) if w.label == label)


# --- data layer -----------------------------------------------------------------------------

def test_find_stores_and_info(runs):
    found = ad.find_stores(runs)
    assert [p.name for p in found] == ["groups.zarr", "falcon_h1.zarr", "qwen3_5.zarr", "junk.zarr",
                                       "partial.zarr", "study.zarr"]
    info = {p.name: ad.store_info(p) for p in found}
    assert info["study.zarr"]["model"] == "random:qwen2" and info["study.zarr"]["error"] == ""
    assert info["study.zarr"]["complete"] and info["study.zarr"]["size_mb"] > 0
    assert info["study.zarr"]["qc"].startswith("ok")
    assert info["partial.zarr"]["conditions"] == "2/5" and not info["partial.zarr"]["complete"]
    assert "not a readable workbench store" in info["junk.zarr"]["error"]
    assert ad.find_stores(runs / "nowhere") == []
    assert ad.runs_dir_from_argv(["--runs", "/x"]) == "/x" and ad.runs_dir_from_argv([]) is None


def test_component_records_and_frame(runs):
    frame = component_frame(ad.read_results(runs / "hybrids" / "falcon_h1.zarr"))
    assert set(frame["role"]) == {"attention", "ssm", "mlp", "layer"}
    assert (frame.loc[frame["role"] == "ssm", "topology"] == "parallel").all()
    assert (frame["n_params"] > 0).all()
    layer0 = frame[frame["layer"] == 0].set_index("role")["n_params"]
    assert layer0["layer"] >= layer0["attention"] + layer0["ssm"] + layer0["mlp"]
    assert component_frame(ad.read_results(runs / "study.zarr")) is not None  # the runner records it
    assert component_frame(ad.read_results(runs / "control" / "groups.zarr")) is None  # an older store


def test_comparison_keys_align_by_function():
    row = pd.Series({"kind": "group", "mode": "zero", "roles": "ssm", "group": "group:ssm", "third": "",
                     "layers": "0-5", "label": "x"})
    assert ad.comparison_key(row) == "ssm group, zero"
    assert ad.comparison_key(row, align="function") == "linear-time mixer group, zero"
    assert ad.comparison_key(row.replace("ssm", "linear_attention").set_axis(row.index), align="function") \
        == "linear-time mixer group, zero"
    with pytest.raises(ValueError, match="align must be"):
        ad.comparison_key(row, align="depth")


def test_sweep_segments_break_at_missing_layers():
    sweep = pd.DataFrame({"roles": ["attention", "attention", "linear_attention", "linear_attention",
                                    "linear_attention"], "first_layer": [3.0, 7.0, 0.0, 1.0, 4.0]})
    seg = ad.sweep_segments(sweep)
    assert seg[0] != seg[1]  # attention at 3 and 7: no line through 4-6
    assert seg[2] == seg[3] != seg[4]


# --- every page ----------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES)
def test_page_draws_without_error(runs, page):
    picked = [runs / "hybrids" / "qwen3_5.zarr", runs / "hybrids" / "falcon_h1.zarr"]
    at = start(runs, page, picked=picked)
    assert not at.exception, at.exception
    n_charts = len(at.get("vega_lite_chart"))
    # the runs fixture has no diagnostics and no mediation group: those pages explain themselves
    no_charts = {"runs", "report", "launch", "representations", "embedding_map", "mediation"}
    assert n_charts >= (0 if page in no_charts else 2 if page == "compare" else 1), page
    if page == "runs":
        listing = at.dataframe[0].value
        assert {"study.zarr", "groups.zarr", "partial.zarr", "junk.zarr", "qwen3_5.zarr"} <= set(listing["store"])
        assert "not a readable workbench store" in texts(at, "error")  # the junk folder, listed, no traceback
    if page == "report":
        assert "workbench study" in texts(at, "info")
    if page == "mediation":
        assert "workbench mediate" in texts(at, "info") + texts(at, "warning") + texts(at, "markdown")


@pytest.mark.parametrize("case", ["missing", "empty"])
@pytest.mark.parametrize("page", PAGES)
def test_empty_folder_explains_itself(case, page, tmp_path):
    folder = tmp_path / "nope" if case == "missing" else tmp_path
    at = start(folder, page)
    assert not at.exception, page
    message = texts(at, "warning") + texts(at, "info")
    want = ("report.md" if page == "report" else "Launching is off" if page == "launch"
            else "does not exist" if case == "missing" else "No run stores")
    assert want in message, (page, message)


def test_perplexity_page_groups_zero_beside_skip_layer(runs):
    at = start(runs, "perplexity", picked=[runs / "hybrids" / "qwen3_5.zarr"])
    data = chart_data(at, 0, "mode")
    assert {"zero", "skip_layer"} <= set(data["mode"])
    assert ((data["low"] <= data["ratio"]) & (data["ratio"] <= data["high"])).all()
    assert "workbench study" in texts(at, "info")  # no task results in these stores: say what makes them


def test_layer_sweep_heatmap_and_details(runs):
    at = start(runs, "layer_sweep", picked=[runs / "hybrids" / "qwen3_5.zarr"])
    cells = set(zip(*chart_data(at, 0, "row")[["row", "layer"]].T.values))
    assert cells >= {("attention", 3), ("attention", 7), ("linear_attention", 0)}
    assert ("attention", 4) not in cells
    details = widget(at, "selectbox", "Condition details")
    details.select_index(len(details.options) - 1).run()
    assert not at.exception and "QC" in texts(at, "markdown")


def test_model_map_shows_topology_and_params(runs):
    at = start(runs, "model_map", picked=[runs / "hybrids" / "falcon_h1.zarr"])
    assert "parallel" in texts(at, "markdown")
    assert {"attention", "ssm", "mlp"} <= set(chart_data(at, 0, "role")["role"])
    at = start(runs, "model_map", picked=[runs / "control" / "groups.zarr"])
    assert "does not record its component map" in texts(at, "info")


def test_compare_two_conditions(runs):
    at = start(runs, "compare", picked=[runs / "study.zarr"])
    at.radio[0].set_value("two conditions of one store").run()
    assert not at.exception
    b = widget(at, "selectbox", "Condition B")
    b.select_index(2).run()
    frame = next(f.value for f in at.dataframe if "B / A" in f.value)
    assert (frame["low"] <= frame["B / A"]).all() and (frame["B / A"] <= frame["high"]).all()


def test_report_page_renders_markdown_and_figures(tmp_path):
    from PIL import Image

    study = tmp_path / "study1"
    study.mkdir()
    Image.new("RGB", (8, 8), "red").save(study / "fig.png")
    (study / "report.md").write_text("# Findings\n\nAttention matters.\n\n![ratios](fig.png)\n\nThe end.\n")
    at = start(tmp_path, "report")
    assert not at.exception
    assert "Attention matters." in texts(at, "markdown") and len(at.get("image")) == 1


# --- the defects found in a real browser, one test each -----------------------------------------

def test_runs_folder_survives_page_changes(runs, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["streamlit_app.py", "--runs", str(runs)])
    at = start(runs)
    for page in PAGES:
        at.switch_page(f"app_pages/{page}.py").run()
        assert widget(at, "text_input", "Folder of run stores").value == str(runs), page
        assert "`runs` does not exist" not in texts(at, "warning"), page


@pytest.fixture
def damaged(runs, tmp_path):
    """A folder with a good store, one with a corrupted chunk and one with a deleted chunk."""
    folder = tmp_path / "damaged"
    folder.mkdir()
    for name in ("good", "corrupt", "missing"):
        shutil.copytree(runs / "hybrids" / "qwen3_5.zarr", folder / f"{name}.zarr")
    (folder / "corrupt.zarr" / "window_nll" / "2.0.0").write_bytes(b"\x02\x01garbage")
    (folder / "missing.zarr" / "window_nll" / "1.0.0").unlink()
    return folder


@pytest.mark.slow
def test_damaged_stores_are_explained_not_raised(damaged):
    info = {p.name: ad.store_info(p) for p in ad.find_stores(damaged)}
    assert "unreadable" in info["corrupt.zarr"]["damaged"] and info["good.zarr"]["damaged"] == ""
    assert "missing" in info["missing.zarr"]["damaged"]
    for page in PAGES:
        at = start(damaged, page, picked=[damaged / "corrupt.zarr", damaged / "missing.zarr"])
        assert not at.exception, page
        if page not in ("report", "runs", "launch"):
            assert "damaged condition" in texts(at, "warning"), page
    at = start(damaged, "runs")
    listing = at.dataframe[0].value.set_index("store")
    assert listing.loc["corrupt.zarr", "status"] == "damaged" and listing.loc["good.zarr", "status"] == "complete"
    # added on Compare, a damaged store keeps the good store's comparison
    at = start(damaged, "compare", picked=[damaged / "good.zarr", damaged / "corrupt.zarr"])
    wide = next(f.value for f in at.dataframe if "key" in f.value)
    assert wide.set_index("key").loc["attention group, zero"].notna().all()


def test_role_filter_never_changes_the_random_controls(runs):
    at = start(runs, "random_controls", picked=[runs / "study.zarr"])
    before = next(f.value for f in at.dataframe if "control" in f.value and "median" in f.value)
    assert sorted(before["n"]) == [2, 4]  # 2 of 4 attention layers (4 draws), 3 of 4 (2 draws)
    widget(at, "multiselect", "Groups marked").set_value([]).run()
    after = next(f.value for f in at.dataframe if "control" in f.value and "median" in f.value)
    pd.testing.assert_frame_equal(before, after)
    assert not any("trials below" in f.value for f in at.dataframe)  # no group marked, no comparison


def test_compare_lines_up_hybrids_by_function(runs):
    picked = [runs / "hybrids" / "qwen3_5.zarr", runs / "hybrids" / "falcon_h1.zarr"]
    at = start(runs, "compare", picked=picked)
    keys = set(next(f.value for f in at.dataframe if "key" in f.value)["key"])
    assert "linear-time mixer group, zero" not in keys
    widget(at, "radio", "Line up roles by").set_value("function").run()
    wide = next(f.value for f in at.dataframe if "key" in f.value).set_index("key")
    row = wide.loc["linear-time mixer group, zero"]
    assert row.notna().all() and len(row) == 3  # both stores and their ratio


def test_compare_sweep_chart_colours_roles_and_breaks_lines(runs):
    picked = [runs / "hybrids" / "qwen3_5.zarr", runs / "hybrids" / "falcon_h1.zarr"]
    at = start(runs, "compare", picked=picked)
    k = next(i for i, s in enumerate(specs(at)) if "depth" in json.dumps(s))
    sweep = specs(at)[k]
    line = sweep["layer"][0]["encoding"]
    assert line["color"]["field"] == "series" and line["detail"]["field"] == "segment"
    assert dict(zip(line["color"]["scale"]["domain"], line["color"]["scale"]["range"]))["attention"] == "#e15759"
    assert line["strokeDash"]["legend"]["symbolType"] == "stroke"
    data = chart_data(at, k, "segment")
    q35_attention = set(data.loc[data["store"].str.startswith("qwen3_5") & (data["series"] == "attention"), "segment"])
    assert len(q35_attention) == 2  # layers 3 and 7 are not joined
    assert all(s.get("encoding", {}).get("color", {}).get("legend", {}).get("labelLimit", 0) == 0
               for s in sweep["layer"])


def test_compare_warns_about_partial_stores_and_identical_draws(runs):
    at = start(runs, "compare", picked=[runs / "study.zarr", runs / "partial.zarr"])
    assert "partial" in texts(at, "info")
    picked = [runs / "hybrids" / "qwen3_5.zarr", runs / "hybrids" / "falcon_h1.zarr"]
    at = start(runs, "compare", picked=picked)
    assert "remove exactly the components of a group" in texts(at, "warning")
    at = start(runs, "random_controls", picked=picked)
    assert "same set as a group" in set(chart_data(at, 0, "flag")["flag"])


def test_role_colours_fixed_whatever_the_filter(runs):
    from workbench.app.palette import ROLE_COLOURS, scale

    full, part = scale(ROLE_COLOURS), scale(ROLE_COLOURS, ["ssm", "attention"])
    assert dict(zip(part.domain, part.range)) == {"attention": "#e15759", "ssm": "#59a14f"}
    assert dict(zip(full.domain, full.range))["ssm"] == "#59a14f"
    assert len(set(ROLE_COLOURS.values())) == len(ROLE_COLOURS)


@pytest.mark.slow
def test_app_never_imports_torch(runs):
    """Importing the app modules and running every page leaves torch out of sys.modules."""
    code = f"""
import sys
from streamlit.testing.v1 import AppTest
sys.argv = ["streamlit_app.py", "--runs", {str(runs)!r}]
at = AppTest.from_file({ENTRY!r}, default_timeout=120).run()
for page in {PAGES!r}:
    at.switch_page(f"app_pages/{{page}}.py").run()
    assert not at.exception, page
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def _env() -> dict:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_app_command_line(tmp_path):
    import typer
    from typer.testing import CliRunner

    from workbench import app_cli

    cmd = app_cli.streamlit_command(str(tmp_path), "0.0.0.0", 8600)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("streamlit_app.py")
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0" and cmd[cmd.index("--server.port") + 1] == "8600"
    assert cmd[-3:] == ["--", "--runs", str(tmp_path)]
    cli = typer.Typer()
    cli.command()(app_cli.app)
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(cli, ["--runs", str(tmp_path / "file")])
    said = " ".join(result.output.replace("│", " ").split())  # rich wraps the message in a box
    assert result.exit_code == 2 and "is a file" in said, result.output


def test_runs_page_flags_failed_qc_and_live_writers(runs, tmp_path):
    from workbench.claims import Claims

    folder = tmp_path / "qc"
    shutil.copytree(runs / "study.zarr", folder / "study.zarr")
    group = zarr.open_group(folder / "study.zarr", mode="r+", zarr_format=2)
    fired = group["qc_fired"][:]
    fired[1] = False  # as if the edit of condition 1 never ran
    group["qc_fired"][:] = fired
    at = start(folder, "runs")
    assert "NOT FIRED" in texts(at, "error")
    assert "NOT FIRED 1" in at.dataframe[0].value.set_index("store").loc["study.zarr", "qc"]

    assert not ad.being_written(folder / "study.zarr")
    claims = Claims(folder / "study.zarr")  # a live writer holds condition 3
    assert claims.try_claim(3)
    try:
        assert ad.being_written(folder / "study.zarr")
    finally:
        claims.release_all()
    assert not ad.being_written(folder / "study.zarr")


def test_skip_layer_groups_keep_their_role_in_comparisons():
    row = pd.Series({"kind": "group", "mode": "skip_layer", "roles": "layer", "group": "group:ssm", "third": "",
                     "layers": "0-5", "label": "ssm layers skipped, layers 0-5, skip_layer"})
    assert ad.comparison_key(row) == "ssm group, skip_layer"
    assert ad.comparison_key(row, align="function") == "linear-time mixer group, skip_layer"


def test_figure_downloads():
    import altair as alt

    from workbench.app import charts

    chart = alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_point().encode(x="x", y="y")
    assert b"<html" in charts.figure_bytes(chart, "html")[:200].lower()
    if charts.HAS_VL_CONVERT:
        assert charts.figure_bytes(chart, "png")[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in charts.figure_bytes(chart, "svg")[:200]
    with pytest.raises(ValueError, match="valid: png, svg, html"):
        charts.figure_bytes(chart, "gif")


# --- task results, intervals and axes as the report has them --------------------------------------

def test_task_results_reach_the_perplexity_page(runs):
    from probes import stats

    ds = ad.read_results(runs / "study.zarr")
    assert {"correct", "accuracy"} <= set(ds.data_vars)  # dims (…, metric) no longer dropped
    at = start(runs, "perplexity", picked=[runs / "study.zarr"])
    assert not at.exception
    assert "no task results" not in texts(at, "info")
    drops = chart_data(at, 2, "drop_low")
    want = stats.accuracy_drops(ds["correct"].sel(metric="acc"), n_boot=ad.N_BOOT)
    for r in drops.itertuples():
        assert r.drop == pytest.approx(float(want["acc_drop"].sel(condition=r.id, task=r.task)))
        assert r.drop_low == pytest.approx(float(want["low"].sel(condition=r.id, task=r.task)))
    assert {"last_word", "next_sentence"} == set(drops["task"])
    items = next(f.value for f in at.dataframe if "change" in f.value)
    assert len(items) == 4 and set(items["change"]) <= {"lost", "gained", "kept right", "kept wrong"}
    widget(at, "radio", "Metric").set_value("acc_norm").run()
    assert not at.exception and "acc_norm" in texts(at, "caption")


def test_layer_sweep_offers_accuracy_drops_and_whole_layers(runs):
    at = start(runs, "layer_sweep", picked=[runs / "study.zarr"])
    rows = set(chart_data(at, 0, "row")["row"])
    assert "whole layer, skip_layer" in rows and "attention" in rows
    value = widget(at, "selectbox", "Value")
    assert "accuracy drop" in value.options
    value.select("accuracy drop").run()
    assert not at.exception
    cells = chart_data(at, 0, "row")
    acc = ad.accuracy_table(ad.read_results(runs / "study.zarr"), "acc", n_boot=ad.N_BOOT)
    want = acc[acc["task"] == "last_word"].set_index("id")["drop"]
    assert (cells["value"].to_numpy() == want.loc[cells["id"]].to_numpy()).all()


def test_skip_layer_groups_are_drawn_under_their_role(runs):
    at = start(runs, "perplexity", picked=[runs / "study.zarr"])
    groups = chart_data(at, 0, "group_role")
    skip = groups[groups["mode"] == "skip_layer"]
    assert len(skip) and set(skip["group_role"]) == {"attention"}  # not 'attention:skip_layer'


def test_app_intervals_are_the_reports(runs):
    from probes import stats
    from workbench import report

    ds = ad.read_results(runs / "study.zarr")  # one corpus: the report's pooled windows are its windows
    p = report.pooled(ds)
    ids = [i for i in map(str, ds.condition.values) if i != "baseline"]
    want = report.ratios(ds, p, ids)
    got = stats.ratio_intervals(ds, n_boot=report.N_BOOT, block="auto")
    for i in ids:
        assert tuple(float(got[v].sel(condition=i).item()) for v in ("ratio", "low", "high")) == \
            pytest.approx(want[i])
    at = start(runs, "compare", picked=[runs / "study.zarr"])
    at.radio[0].set_value("two conditions of one store").run()
    frame = next(f.value for f in at.dataframe if "B / A" in f.value).set_index("corpus")
    a, b = "baseline", str(ds.condition.values[1])
    r = stats.paired_ratio(p.row(b), p.row(a), p.tokens, n_boot=ad.N_BOOT)
    assert (frame.loc["tale", "low"], frame.loc["tale", "high"]) == pytest.approx((r.low, r.high))


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory):
    """Two tiny stores: few.zarr (a handful of windows) and one.zarr (a single window)."""
    folder = tmp_path_factory.mktemp("short")
    loaded = load_model("random:qwen2")
    cmap = component_map(loaded.model)
    plan = plans.resolve(plans.auto_spec(cmap, "groups"), cmap)
    for name, words in (("few", 30), ("one", 4)):
        text = folder.parent / f"{name}.txt"
        text.write_text(" ".join(TEXT.split()[:words]))
        run_plan(loaded, plan, [load_corpus(str(text), loaded.tokenizer)], folder / f"{name}.zarr", **KW)
    return folder


def test_short_runs_get_intervals_or_say_why_not(short_runs):
    few = ad.read_results(short_runs / "few.zarr")
    assert 2 <= int((few["window_tokens"] > 0).sum()) < 16  # a single block of 8 once: no interval at all
    at = start(short_runs, "perplexity", picked=[short_runs / "few.zarr"])
    data = chart_data(at, 0, "mode")
    assert data["low"].notna().all() and "Too few windows" not in texts(at, "caption")
    at = start(short_runs, "perplexity", picked=[short_runs / "one.zarr"])
    assert not at.exception
    assert "Too few windows for an interval" in texts(at, "caption")


def test_one_huge_ratio_does_not_flatten_the_axis():
    table = pd.DataFrame({"label": ["attention", "gdn", "layers"], "ratio": [1.2, 2.0, 1e36],
                          "low": [1.1, 1.8, 1e30], "high": [1.3, 2.2, 1e40]})
    clipped = ad.clip_ratios(table)
    assert clipped["overflow"].tolist() == [False, False, True]
    assert clipped["true_ratio"].iloc[2] == 1e36 and clipped["ratio"].iloc[2] == ad.OVERFLOW
    lo, hi = ad.log_domain(clipped)
    assert hi < 2 * ad.OVERFLOW  # x2.0 keeps a tenth of the axis, not a 1/80th
    assert "▶" in ad.overflow_caption(clipped) and ad.overflow_caption(ad.clip_ratios(table.iloc[:2])) == ""


def test_a_cancelled_run_is_not_being_written(runs, tmp_path):
    """A lock inherited by a child outlives the killed run: the pid in the lock file decides."""
    import fcntl
    import os

    store = tmp_path / "s.zarr"
    shutil.copytree(runs / "control" / "groups.zarr", store)
    claims = tmp_path / ".s.zarr.claims"
    claims.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = claims / "1.lock"
    lock.write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": dead.pid, "since": 0}))
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held, as by the orphaned child
    try:
        assert not ad.being_written(store)
        lock.write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": os.getpid(), "since": 0}))
        assert ad.being_written(store)
    finally:
        os.close(fd)


def test_layer_sweep_draws_per_layer_diagnostics(runs, tmp_path):
    import numpy as np
    import xarray as xr

    path = tmp_path / "diag" / "study.zarr"
    shutil.copytree(runs / "study.zarr", path)
    ds = ad.read_results(path)
    ids = [str(c) for c in ds.condition.values]
    cka = np.linspace(0.5, 1.0, len(ids) * 5).reshape(len(ids), 5)
    xr.Dataset({"cka_linear": (("condition", "layer"), cka)},
               coords={"condition": ids, "layer": np.arange(-1, 4)}).to_zarr(
        str(path), group="diagnostics", mode="w", consolidated=False, zarr_format=2)
    at = start(tmp_path / "diag", "layer_sweep", picked=[path])
    value = widget(at, "selectbox", "Value")
    assert "CKA to the clean run (linear)" in value.options
    value.select("cka_linear").run()
    assert not at.exception
    widget(at, "selectbox", "Measured at layer").select(1).run()
    cells = chart_data(at, 0, "row")
    assert len(cells) and np.allclose(cells["value"], [cka[ids.index(i), 2] for i in cells["id"]])


def test_whole_layer_random_pools_and_sweep_colours_read_plainly(runs):
    assert ad.random_pool("random:2oflayer:skip_layer") == "layer"
    assert ad.random_pool("random:6ofattention+ssm") == "attention+ssm"
    at = start(runs, "layer_sweep", picked=[runs / "study.zarr"])
    colour = specs(at)[0]["layer"][0]["encoding"]["color"]["scale"]
    low, high = colour["domain"]
    assert low * high == pytest.approx(1.0) and colour["clamp"]  # x0.9 as pale as x1.11


def test_downloaded_figures_carry_a_title():
    import altair as alt

    from workbench.app import charts

    chart = alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_point().encode(x="x", y="y")
    assert b"Qwen3 group ablations" in charts.figure_bytes(chart, "html", "Qwen3 group ablations")
    assert b"Kept" in charts.figure_bytes(chart.properties(title="Kept"), "html", "Other")
    assert b"Other" not in charts.figure_bytes(chart.properties(title="Kept"), "html", "Other")
