"""Representations, Embedding map and Launch pages on small diagnosed stores (no browser)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from test_app import TEXT, chart_data, specs, start, texts
from workbench import jobs, plans
from workbench.app import diagnostics as dg
from workbench.architectures import component_map
from workbench.corpora import load_corpus
from workbench.diagnose import diagnose
from workbench.loading import load_model
from workbench.runner import run_plan

KW = dict(context=32, stride=16, progress=False)
# every diagnostic but the probes (the slow part); the probe view is checked on injected values
FAST = dict(tokens=64, progress=False, batch_size=4, map_methods=("pca",),
            diagnostics=("cka", "lens", "norms", "retrieval", "state", "maps"))
VIEWS = ["CKA to clean", "CKA between layers", "Probes", "Logit lens", "Norm drift", "Retrieval and induction"]


@pytest.fixture(scope="module")
def diag_runs(tmp_path_factory):
    """plain.zarr (no diagnostics), q35.zarr (Qwen3.5 groups, diagnosed), full/q35.zarr (a copy with
    probe results and a per-token logit lens injected, as diagnose would write them)."""
    folder = tmp_path_factory.mktemp("diag_runs")
    corpus_file = folder.parent / "tale.txt"
    corpus_file.write_text(TEXT)
    plain = load_model("random:qwen2")
    cmap = component_map(plain.model)
    run_plan(plain, plans.resolve(plans.auto_spec(cmap, "smoke"), cmap), [load_corpus(str(corpus_file),
             plain.tokenizer)], folder / "plain.zarr", **KW)
    lm = load_model("random:qwen3_5")
    cmap = component_map(lm.model)
    run_plan(lm, plans.resolve(plans.auto_spec(cmap, "groups"), cmap), [load_corpus(str(corpus_file), lm.tokenizer)],
             folder / "q35.zarr", **KW)
    diagnose(folder / "q35.zarr", **FAST)
    shutil.copytree(folder / "q35.zarr", folder / "full" / "q35.zarr")
    inject(folder / "full" / "q35.zarr")
    return folder


def inject(path: Path) -> None:
    """Add probe_* and lens_top_* variables to a diagnostics group (seeded values)."""
    diag = dg.read_diagnostics(path)
    rng = np.random.default_rng(0)
    c, lay = diag.sizes["condition"], diag.sizes["layer"]
    grid = diag["token"].values
    tok = grid.size
    probes = ["next_token", "repeat", "position"]
    shape = (c, lay, len(probes))
    for name in ("probe_acc", "probe_selectivity", "probe_transfer_acc"):
        diag[name] = (("condition", "layer", "probe"), rng.uniform(0, 1, shape))
    diag = diag.assign_coords(probe=probes)
    diag = diag.drop_vars([v for v in ("lens_top_id", "lens_top_prob", "lens_top_text") if v in diag])
    diag = diag.drop_dims([d for d in ("lens_token",) if d in diag.dims]).assign_coords(lens_token=grid)
    diag["lens_top_id"] = (("condition", "layer", "lens_token"), rng.integers(0, 50, (c, lay, tok)))
    diag["lens_top_prob"] = (("condition", "layer", "lens_token"), rng.uniform(0, 1, (c, lay, tok)))
    diag["lens_top_text"] = (("condition", "layer", "lens_token"), np.full((c, lay, tok), " tok"))
    for v in diag.variables.values():
        v.encoding = {}
    diag.to_zarr(str(path), group=dg.DIAGNOSTICS, mode="w", consolidated=False, zarr_format=2)


def view(at, name):
    at.radio(key="repr_view").set_value(name).run()
    assert not at.exception, (name, at.exception)
    return at


def test_pages_explain_a_store_without_diagnostics(diag_runs):
    for page in ("representations", "embedding_map"):
        at = start(diag_runs, page, picked=[diag_runs / "plain.zarr"])
        assert not at.exception
        message = texts(at, "info")
        assert f"workbench diagnose {diag_runs / 'plain.zarr'}" in message, (page, message)
        assert not at.get("vega_lite_chart")


def test_representations_every_view(diag_runs):
    at = start(diag_runs, "representations", picked=[diag_runs / "q35.zarr"])
    assert not at.exception
    conds = next(m for m in at.multiselect if m.label == "Conditions")
    assert len(conds.value) == 3  # baseline and the two groups
    cka = chart_data(at, 0, "value")
    base = cka[cka["label"].str.startswith("baseline")]
    assert np.allclose(base["value"], 1.0) and len(base) == 9  # layers -1..7
    assert (cka["value"] < 0.999).any()  # an ablation moves the representation
    for name in VIEWS:
        view(at, name)
        if name == "Probes":
            assert "no probe results" in texts(at, "info").lower()
        elif name == "Logit lens":  # diagnose writes the grid: curves and grid both draw
            assert len(at.get("vega_lite_chart")) == 2
            grid = chart_data(at, 1, "top")
            assert grid["prob"].between(0, 1).all() and (grid["top_id"] >= 0).all()
        else:
            assert at.get("vega_lite_chart"), name
    view(at, "CKA between layers")
    m = chart_data(at, 0, "cka")
    assert len(m) == 81  # 9 x 9 layers
    view(at, "Retrieval and induction")
    heads = chart_data(at, 1, "head")
    assert {"layer", "head", "value"} <= set(heads)


def test_cka_between_layers_same_condition_is_one_on_the_diagonal(diag_runs):
    path = diag_runs / "q35.zarr"
    m = dg.cka_between(path, "baseline", path, "baseline", max_tokens=48)
    assert m.attrs["tokens"] == 48 and np.allclose(np.diag(m.values), 1.0)
    # a twin store diagnosed on the same sample shares every token
    a = dg.token_table(path)
    ia, ib = dg.shared_tokens(a, a.iloc[::-1].reset_index(drop=True))
    assert len(ia) == len(a) and (a.loc[ia, "token_id"].values == a.loc[ib, "token_id"].values).all()
    other = a.assign(corpus_offset=a["corpus_offset"] + 10_000)
    assert len(dg.shared_tokens(a, other)[0]) == 0


def test_older_diagnostics_without_the_grid_are_explained(diag_runs, tmp_path):
    old = tmp_path / "runs" / "old.zarr"
    shutil.copytree(diag_runs / "q35.zarr", old)
    diag = dg.read_diagnostics(old).drop_vars(["lens_top_id", "lens_top_prob", "lens_top_text"])
    diag = diag.drop_dims("lens_token")
    for v in diag.variables.values():
        v.encoding = {}
    diag.to_zarr(str(old), group=dg.DIAGNOSTICS, mode="w", consolidated=False, zarr_format=2)
    at = start(tmp_path / "runs", "representations", picked=[old])
    view(at, "Logit lens")
    assert "lens_top_id(condition, layer, lens_token)" in texts(at, "info")
    assert len(at.get("vega_lite_chart")) == 1  # the per-layer curves still draw


def test_probes_and_lens_grid_light_up_when_present(diag_runs):
    path = diag_runs / "full" / "q35.zarr"
    at = start(diag_runs, "representations", picked=[path])
    view(at, "Probes")
    probes = chart_data(at, 0, "probe")
    assert set(probes["probe"]) == {"next_token", "repeat", "position"}
    view(at, "Logit lens")
    grid = chart_data(at, 1, "top")
    assert set(grid["top"]) == {" tok"} and grid["prob"].between(0, 1).all()
    assert grid["label"].str.startswith("baseline").any() and grid["label"].nunique() == 2  # clean beside ablated
    assert "lens_top_id(condition" not in texts(at, "info")


def test_embedding_map_points_with_context_and_labels(diag_runs):
    at = start(diag_runs, "embedding_map", picked=[diag_runs / "q35.zarr"])
    assert not at.exception
    pts = chart_data(at, 0, "context")
    diag = dg.read_diagnostics(diag_runs / "q35.zarr")
    assert len(pts) == diag["map_xy"].sizes["token"] * 3
    assert pts["context"].str.contains(r"\[").all()
    assert {"next token", "word class", "position", "prediction"} <= set(pts)
    colour = next(s for s in at.selectbox if s.label == "Colour by")
    colour.set_value("word class").run()
    assert not at.exception
    spec = specs(at)[0]
    assert "word class" in str(spec) and spec.get("facet")  # a panel per condition when colouring by a label


def test_token_context_marks_gaps():
    import pandas as pd

    frame = pd.DataFrame({"window": [0, 0, 0, 1], "position": [0, 1, 5, 0], "token_text": ["a", "b", "c", "d"]})
    # c is 4 positions after b (past the 3 shown after a token); b is within the 6 before c
    assert dg._contexts(frame) == ["[a]b", "a[b]", "ab·[c]", "[d]"]


FAKE = '''
import sys, time
args = sys.argv[1:]
secs = float(args[args.index("--seed") + 1]) if "--seed" in args else 0.1  # --seed: an option the queue takes
print("fake", " ".join(args), flush=True)
time.sleep(secs)
'''


def test_launch_page_read_only_then_with_token(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.delenv("WORKBENCH_LAUNCH_TOKEN", raising=False)
    at = start(runs, "launch")
    assert "--launch-token" in texts(at, "warning") and not [b for b in at.button if b.label == "Launch"]

    (tmp_path / "fake.py").write_text(FAKE)
    monkeypatch.setattr(jobs, "PROGRAM", (str(tmp_path / "fake.py"),))
    monkeypatch.setenv("WORKBENCH_LAUNCH_TOKEN", "s3cret")
    at = start(runs, "launch")
    token = next(t for t in at.text_input if t.label == "Launch token")
    token.set_value("wrong").run()
    assert "not the launch token" in texts(at, "error")
    token.set_value("s3cret").run()
    assert not at.exception
    next(t for t in at.text_input if t.label == "Your name (shown in the queue)").set_value("ana").run()
    next(t for t in at.text_input if t.key == "launch_extra:run").set_value("--seed 3").run()
    command = at.code[0].value
    assert command.startswith("workbench run --model mini-qwen3.5 --preset groups --corpus encyclopedic")
    assert command.endswith(f"--out {runs.resolve()}/mini-qwen3.5-groups.zarr")
    at.button(key="launch_button").click().run()
    assert "Queued job" in texts(at, "success")
    at.button(key="launch_button").click().run()  # the same store again while the first runs
    assert "already the output of job" in texts(at, "error")
    out = next(t for t in at.text_input if t.label == "Store (in the runs folder)")
    out.set_value("../elsewhere.zarr").run()
    assert "outside the runs folder" in texts(at, "error")
    (job,) = jobs.list_jobs(runs)
    assert job.owner == "ana" and job.state in jobs.ACTIVE
    assert not [b for b in at.button if b.key == "queue_refresh"]  # a live queue refreshes itself
    end = time.time() + 30
    while jobs.read_job(runs, job.id).state != "done" and time.time() < end:
        time.sleep(0.2)
    at.run()
    table = at.dataframe[0].value
    assert table.loc[0, "state"] == "done" and table.loc[0, "owner"] == "ana"
    assert [b for b in at.button if b.key == "queue_refresh"]  # nothing active: drawn once, settles


def test_launch_form_keeps_a_typed_store_name(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("WORKBENCH_LAUNCH_TOKEN", "s3cret")
    at = start(runs, "launch")
    next(t for t in at.text_input if t.label == "Launch token").set_value("s3cret").run()
    out = lambda: next(t for t in at.text_input if t.label == "Store (in the runs folder)")  # noqa: E731
    assert out().value == "mini-qwen3.5-groups.zarr"
    next(b for b in at.selectbox if b.label == "Preset").set_value("sweep").run()
    assert out().value == "mini-qwen3.5-sweep.zarr"  # an untouched name follows the preset
    out().set_value("mine.zarr").run()
    next(b for b in at.selectbox if b.label == "Preset").set_value("groups").run()
    assert not at.exception and out().value == "mine.zarr"  # a typed one is kept


def test_damaged_diagnostics_give_one_clear_message(diag_runs, tmp_path):
    bad = tmp_path / "runs" / "bad.zarr"
    shutil.copytree(diag_runs / "q35.zarr", bad)
    for chunk in (bad / dg.DIAGNOSTICS / "cka_linear").glob("[0-9]*"):
        chunk.write_bytes(b"\x02\x01garbage")
    with pytest.raises(dg.Unreadable, match="workbench diagnose"):
        dg.read_diagnostics(bad)
    for page in ("representations", "embedding_map", "layer_sweep"):
        at = start(tmp_path / "runs", page, picked=[bad])
        assert not at.exception, page
        message = texts(at, "error") + texts(at, "warning")
        assert "cannot be read" in message and f"workbench diagnose {bad}" in message, page


def test_retrieval_view_says_why_it_is_blank(diag_runs, tmp_path):
    path = tmp_path / "runs" / "noret.zarr"
    shutil.copytree(diag_runs / "q35.zarr", path)
    diag = dg.read_diagnostics(path)
    diag = diag.drop_vars([v for v in diag.data_vars if v.startswith(("retrieval", "induction"))])
    for v in diag.variables.values():
        v.encoding = {}
    diag.to_zarr(str(path), group=dg.DIAGNOSTICS, mode="w", consolidated=False, zarr_format=2)
    at = view(start(tmp_path / "runs", "representations", picked=[path]), "Retrieval and induction")
    assert "--diagnostics retrieval" in texts(at, "info") and not at.get("vega_lite_chart")


def test_lens_grid_height_capped_and_norm_panels_in_caption_order(diag_runs):
    assert dg.grid_step(9, 2) == 22
    assert dg.grid_step(64, 2) * 64 * 2 <= 1400 and dg.grid_step(500, 2) == 6
    at = view(start(diag_runs, "representations", picked=[diag_runs / "q35.zarr"]), "Norm drift")
    facet = specs(at)[0]["facet"]
    assert facet["sort"] == ["residual norm", "norm / clean norm", "cosine to clean"]
    caption = texts(at, "caption")
    assert caption.index("residual norm") < caption.index("norm / clean norm") < caption.index("cosine to clean")
