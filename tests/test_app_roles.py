"""The Roles page (one card per role: effect, rank among random draws, depth, tasks, diagnostics)
and permalinks (the sidebar's folder and stores and a page's choices in the URL)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import pytest
import xarray as xr

from test_app import KW, TEXT, texts, widget
from workbench import app_data as ad
from workbench import plans
from workbench.app import roles
from workbench.architectures import component_map
from workbench.corpora import load_corpus
from workbench.loading import load_model
from workbench.runner import run_plan
from workbench.tasks import get_tasks

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENTRY = str(ROOT / "streamlit_app.py")


def make_store(folder: Path) -> Path:
    """folder/hybrid/q35.zarr: a Qwen3.5 hybrid's study preset (groups, sweep, thirds, random draws),
    whole-layer and MLP groups, two tasks, and a small diagnostics group (CKA and lens KL by layer);
    folder/hybrid/a.zarr links to it (a second store, listed first). Minutes on a loaded machine."""
    (folder / "hybrid").mkdir(parents=True, exist_ok=True)
    text = folder / "tale.txt"
    text.write_text(TEXT)
    loaded = load_model("random:qwen3_5")
    cmap = component_map(loaded.model)
    spec = plans.auto_spec(cmap, "study", seeds=2)
    spec = spec.model_copy(update={"generators": [
        *spec.generators, plans.GroupSpec(kind="group", role="attention", mode="skip_layer"),
        plans.GroupSpec(kind="group", role="linear_attention", mode="skip_layer"),
        plans.GroupSpec(kind="group", role="mlp")]})
    path = folder / "hybrid" / "q35.zarr"
    run_plan(loaded, plans.resolve(spec, cmap), [load_corpus(str(text), loaded.tokenizer)], path,
             tasks=get_tasks(["last_word", "next_sentence"]), task_items=3, **KW)
    ds = ad.read_results(path)
    ids = [str(c) for c in ds.condition.values]
    layers = np.arange(-1, int(ds.attrs["n_layers"]))
    rng = np.random.default_rng(0)
    cka = np.where(np.array(ids)[:, None] == "baseline", 1.0, rng.uniform(0.3, 0.99, (len(ids), len(layers))))
    kl = np.where(np.array(ids)[:, None] == "baseline", 0.0, rng.uniform(0.01, 2.0, (len(ids), len(layers))))
    xr.Dataset({"cka_linear": (("condition", "layer"), cka), "lens_kl_last_token": (("condition", "layer"), kl)},
               coords={"condition": ids, "layer": layers}).to_zarr(
        str(path), group="diagnostics", mode="w", consolidated=False, zarr_format=2)
    (folder / "hybrid" / "a.zarr").symlink_to(path)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("roles") / "runs")


def open_app(runs: Path, page: str | None = "roles", params: dict | None = None) -> AppTest:
    """The app on ``--runs runs`` as a link with ``params`` opens it (on ``page``)."""
    old, sys.argv = sys.argv, ["streamlit_app.py", "--runs", str(runs)]
    try:
        at = AppTest.from_file(ENTRY, default_timeout=120)
        for k, v in (params or {}).items():
            at.query_params[k] = v
        at.run()
        if page:
            at.switch_page(f"app_pages/{page}.py").run()
    finally:
        sys.argv = old
    return at


def markdown(at: AppTest) -> str:
    return " ".join(str(m.value) for m in at.markdown)


@pytest.mark.slow  # the store fixture: minutes
def test_role_cards_from_the_store(store):
    ds = ad.read_results(store)
    from probes.stats import ratio_intervals

    table = ad.condition_table(ds, "tale", ratio_intervals(ds, n_boot=200, block="auto"))
    cards = {c.role: c for c in roles.role_cards(table, ad.accuracy_table(ds, n_boot=200))}
    assert list(cards) == ["attention", "linear_attention", "mlp"]
    gdn = cards["linear_attention"]
    zero, whole = gdn.effect("zero"), gdn.effect("skip_layer")
    row = table.set_index("id").loc[zero.id]
    assert (zero.ratio, zero.low, zero.high) == (row["ratio"], row["low"], row["high"])
    assert whole is not None and whole.ratio != zero.ratio
    # rank: counted over the random draws of the group's size and mode, identical sets left out
    draws = table[(table["kind"] == "random_matched") & (table["n_targets"] == row["n_targets"])
                  & (table["same_as"] != row["label"])]
    assert zero.draws == len(draws) > 0 and zero.below == int((draws["ratio"] < zero.ratio).sum())
    sweep = table[(table["kind"] == "sweep") & (table["roles"] == "linear_attention")]
    assert sorted(gdn.depth["layer"]) == sorted(sweep["first_layer"].astype(int)) and len(gdn.depth) >= 2
    assert set(gdn.tasks["task"]) == {"last_word", "next_sentence"} and not gdn.tasks["enough"].any()
    assert cards["mlp"].depth.empty and cards["mlp"].effect("skip_layer") is None


def test_texts_say_when_an_interval_is_withheld():
    e = roles.Effect("zero", "c", "x", 1.25, np.nan, np.nan)
    assert roles.ratio_text(e) == "x1.250 (too few windows for an interval)"
    assert roles.ratio_text(roles.Effect("zero", "c", "x", 1.25, 1.2, 1.3)) == "x1.250 (95% CI 1.200 to 1.300)"
    assert roles.rank_text(e) == "no random draws of the same size in this store"
    few = {"task": "t", "drop": 0.25, "drop_low": 0.0, "drop_high": 0.5, "items": 4, "enough": False}
    assert "too few items" in roles.task_text(few) and "CI" not in roles.task_text(few)
    many = {**few, "items": 40, "enough": True}
    assert roles.task_text(many) == "t: drop +0.250 (95% CI +0.000 to +0.500)"


@pytest.mark.slow  # the store fixture: minutes
def test_roles_page_draws_a_card_per_role(store):
    runs = store.parents[1]
    at = open_app(runs, params={"folder": "hybrid", "stores": "q35"})
    assert not at.exception, at.exception
    assert [h.value for h in at.subheader] == ["attention", "linear_attention", "mlp"]
    text = markdown(at)
    assert text.count("component only (`zero`)") == 3 and text.count("whole layer (`skip_layer`)") == 2
    assert "random draws of the same size" in text and "too few items for an interval" in text
    assert "CKA to the clean run" in text and "lens KL to the clean output" in text
    assert len(at.get("vega_lite_chart")) == 2  # depth profiles: attention and linear_attention (mlp: no sweep)
    links = [(p.proto.page, parse_qs(p.proto.query_string)) for p in at.get("page_link")]
    assert {"perplexity", "random_controls", "layer_sweep", "representations"} <= {page.strip("/") for page, _ in links}
    assert all(q.get("folder") == ["hybrid"] and q.get("stores") == ["q35"] for _, q in links)  # links keep the view


@pytest.mark.slow  # the store fixture: minutes
def test_roles_page_without_diagnostics_names_the_command(store, tmp_path):
    bare = tmp_path / "runs" / "q35.zarr"
    shutil.copytree(store, bare)
    shutil.rmtree(bare / "diagnostics")
    at = open_app(tmp_path / "runs")
    assert not at.exception, at.exception
    assert f"run `workbench diagnose {bare}`" in markdown(at)


@pytest.mark.slow  # the store fixture: minutes
def test_a_link_restores_folder_stores_and_choices(store):
    runs = store.parents[1]
    at = open_app(runs, params={"folder": "hybrid", "stores": "q35", "corpus": "tale", "metric": "acc_norm"})
    assert not at.exception, at.exception
    assert widget(at, "text_input", "Folder of run stores").value == "hybrid"
    assert widget(at, "multiselect", "Stores").value == [str(store)]  # not a.zarr, the default pick
    assert widget(at, "selectbox", "Task metric").value == "acc_norm"
    at = open_app(runs, params={"folder": "hybrid", "stores": ["q35", "a"]})
    assert widget(at, "multiselect", "Stores").value == [str(store), str(store.parent / "a.zarr")]
    at = open_app(runs, params={"metric": "no-such-metric"})  # not an option: dropped, the default shown
    assert not at.exception and widget(at, "selectbox", "Task metric").value == "acc"


@pytest.mark.slow
@pytest.mark.parametrize("outside", ["/", "..", "../..", "hybrid/../.."])
def test_a_link_to_a_folder_outside_the_runs_folder_is_refused(store, outside):
    runs = store.parents[1]
    at = open_app(runs, page=None, params={"folder": outside})
    assert "outside the app's runs folder" in texts(at, "error")
    assert widget(at, "multiselect", "Stores").options == ["a", "q35"]  # the runs folder's stores, nothing above it
