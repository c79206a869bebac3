"""The Mediation page and its torch-free reader, on a tiny hybrid store mediated with heads and on
a store without a mediation group."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import pytest
import xarray as xr

from test_app import TEXT, _env, widget
from workbench.app import mediation as md

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

pytestmark = pytest.mark.slow  # the store fixture runs and mediates a tiny model: about a minute on 2 cores

ROOT = Path(__file__).resolve().parents[1]
ENTRY = str(ROOT / "streamlit_app.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/q35.zarr: a random tiny Qwen3.5 (attention and Gated DeltaNet groups) mediated with
    heads; runs/bare.zarr: the same store before mediation."""
    from workbench import cli
    from workbench.mediate import mediate
    from workbench.store import open_store

    folder = tmp_path_factory.mktemp("mediation")
    corpus = folder / "tale.txt"
    corpus.write_text(TEXT)
    plan = folder / "plan.yaml"
    plan.write_text("generators: [{kind: group, role: attention}, {kind: group, role: linear_attention}]\n")
    store = folder / "runs" / "q35.zarr"
    old, sys.argv = sys.argv, ["workbench", "run", "--model", "random:qwen3_5", "--plan", str(plan), "--context",
                               "32", "--stride", "16", "--corpus", str(corpus), "--out", str(store)]
    try:
        cli.main()
    finally:
        sys.argv = old
    shutil.copytree(store, folder / "runs" / "bare.zarr")
    mediate(store, max_tokens=64, heads=True, n_boot=50)
    ds = open_store(store)  # a small diagnostics group, for the Representations page the links open
    layers = np.arange(-1, int(ds.attrs["n_layers"]))
    cka = np.random.default_rng(0).uniform(0.3, 0.99, (ds.sizes["condition"], len(layers)))
    xr.Dataset({"cka_linear": (("condition", "layer"), cka)},
               coords={"condition": ds.condition.values, "label": ("condition", ds.label.values), "layer": layers}
               ).to_zarr(str(store), group="diagnostics", mode="w", consolidated=False, zarr_format=2)
    return folder / "runs"


def open_page(runs: Path, store: str, params: dict | None = None, page: str = "mediation") -> AppTest:
    old, sys.argv = sys.argv, ["streamlit_app.py", "--runs", str(runs)]
    try:
        at = AppTest.from_file(ENTRY, default_timeout=120)
        at.query_params["stores"] = store
        for k, v in (params or {}).items():
            at.query_params[k] = v
        at.run()
        at.switch_page(f"app_pages/{page}.py").run()
    finally:
        sys.argv = old
    return at


def specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def test_reader_orders_components_and_finds_the_groups(runs):
    from workbench.store import open_store

    assert md.read_mediation(runs / "bare.zarr") is None
    med = md.read_mediation(runs / "q35.zarr").load()
    names = md.components(med)
    layers = [int(med["component_layer"].sel(component=c)) for c in names]
    assert layers == sorted(layers) and not any(".h" in n for n in names)
    first = [n for n in names if n.endswith("@0")]
    assert first[-1] == "resid@0" and first.index("mlp@0") > first.index("linear_attention@0")  # forward order
    assert all(".h" in n for n in md.components(med, heads=True))
    groups = md.group_conditions(med, open_store(runs / "q35.zarr"))
    assert set(groups) == {"attention", "linear_attention"}
    table = md.frame(med, "recovery")
    assert np.isfinite(table["value"]).all() and set(table["condition"]) == set(groups.values())
    att = table[table["condition"] == groups["attention"]]
    first_att = min(int(med["component_layer"].sel(component=c)) for c in names if c.startswith("attention@"))
    assert att["layer"].min() >= first_att  # only what runs after the removal
    top = md.top(table, groups["attention"], 3, resid=False)
    assert len(top) == 3 and "resid" not in set(top["role"]) and top["value"].is_monotonic_decreasing


def test_page_draws_matrices_bars_heads_and_links_to_representations(runs):
    at = open_page(runs, "q35")
    assert not at.exception, at.exception
    heads = [h.value for h in at.subheader]
    assert heads == ["Recovery matrix", "Transfer matrix", "Top components of one condition", "Heads, per layer"]
    text = " ".join(str(m.value) for m in at.markdown)
    assert md.WHAT["recovery"] in text and md.WHAT["transfer"] in text
    charts = specs(at)
    rec = charts[0]
    colour = rec["encoding"]["color"]
    assert colour["scale"]["domainMid"] == 0 and colour["scale"]["domain"][0] == -colour["scale"]["domain"][1]
    med = md.read_mediation(runs / "q35.zarr")
    shown = set(md.frame(med)["component"])  # downstream of some condition
    assert rec["encoding"]["x"]["sort"] == [c for c in md.components(med) if c in shown]  # by layer, then role
    assert "resid@7" in shown
    assert {t.get("title") for t in rec["encoding"]["tooltip"]} >= {"95% low", "95% high"}
    # two matrices, the top bars, one head heatmap: after attention at 3 and 7 only Gated DeltaNet heads
    assert len(charts) == 4 and charts[3]["title"] == "linear_attention"
    cid = widget(at, "selectbox", "Ablated condition").value
    links = [(p.proto.page, parse_qs(p.proto.query_string)) for p in at.get("page_link")]
    assert [(page.strip("/"), q["condition"]) for page, q in links] == [("representations", [cid])]
    assert links[0][1]["stores"] == ["q35"]
    at.toggle[0].set_value(False).run()  # hide the residual stream
    assert "resid@" not in " ".join(specs(at)[0]["encoding"]["x"]["sort"])
    # the link opens Representations on that condition (beside the baseline)
    label = str(md.read_mediation(runs / "q35.zarr")["label"].sel(condition=cid).values)
    rep = open_page(runs, "q35", {"condition": cid}, page="representations")
    assert not rep.exception, rep.exception
    assert widget(rep, "multiselect", "Conditions").value == ["baseline (no ablation)", label]


def test_page_without_mediation_names_the_command(runs):
    at = open_page(runs, "bare")
    assert not at.exception, at.exception
    info = " ".join(str(i.value) for i in at.info)
    assert f"`workbench mediate {runs / 'bare.zarr'}`" in info and not at.get("vega_lite_chart")


def test_mediation_page_never_imports_torch(runs):
    code = f"""
import sys
from streamlit.testing.v1 import AppTest
sys.argv = ["streamlit_app.py", "--runs", {str(runs)!r}]
at = AppTest.from_file({ENTRY!r}, default_timeout=120)
at.query_params["stores"] = "q35"
at.run()
at.switch_page("app_pages/mediation.py").run()
assert not at.exception, at.exception
assert len(at.get("vega_lite_chart")) >= 3
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
