"""workbench diagnose: cached activations against plain hooks, resuming, diagnostics, refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from workbench.corpora import load_corpus
from workbench.diagnose import (DiagnoseError, Inputs, diagnose, diagnostics_summary, open_activations,
                                open_diagnostics, rebuild_inputs)
from workbench.diagnose_cli import diagnose_cmd
from workbench.loading import load_model
from workbench.plans import BASELINE, Condition, Plan, Target
from workbench.runner import run_plan
from workbench.store import open_store

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness. ") * 6
MODEL = "random:qwen3_5"  # Gated DeltaNet + attention: states, induction heads and both mixers
LA = Target(layer=1, role="linear_attention")
CONDITIONS = {
    "zero": Condition(targets=(LA,), mode="zero"),
    "mean": Condition(targets=(Target(layer=3, role="attention"),), mode="mean"),
    "resample": Condition(targets=(LA,), mode="resample", donor_seed=0),
    "skip_layer": Condition(targets=(Target(layer=2, role="layer"),), mode="skip_layer"),
}
TWIN = Condition(targets=(LA,), mode="zero", kind="group", group="twin")  # the zero edit again
PLAN = Plan(name="diag", conditions=(BASELINE, *CONDITIONS.values(), TWIN))
FAST = dict(tokens=64, progress=False, batch_size=3, map_methods=("pca",))


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpora") / "tale.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def loaded():
    return load_model(MODEL)


@pytest.fixture(scope="module")
def made(tmp_path_factory, corpus_file, loaded):
    out = tmp_path_factory.mktemp("stores") / "run.zarr"
    corpus = load_corpus(str(corpus_file), loaded.tokenizer)
    run_plan(loaded, PLAN, [corpus], out, context=32, stride=16, batch_size=4, progress=False)
    return out


@pytest.fixture(scope="module")
def diagnosed(made, tmp_path_factory):
    path = tmp_path_factory.mktemp("diag") / "run.zarr"
    shutil.copytree(made, path)
    diagnose(path, **FAST)
    return path


def _hooked(model, cmap, ids, comp=None, value=None, skip=None):
    """Layer outputs and the embedding output recorded by torch hooks, one edit by a hook."""
    record, handles = {}, []
    if comp is not None:
        handles.append(model.get_submodule(comp.path).register_forward_hook(
            lambda m, a, out: (value(out[0] if isinstance(out, tuple) else out),) + tuple(out[1:])
            if isinstance(out, tuple) else value(out)))
    if skip is not None:
        held = {}
        handles.append(model.get_submodule(skip.path).register_forward_pre_hook(
            lambda m, args, kw: held.__setitem__("x", args[0] if args else kw["hidden_states"]), with_kwargs=True))
        handles.append(model.get_submodule(skip.path).register_forward_hook(
            lambda m, a, out: (held["x"],) + tuple(out[1:]) if isinstance(out, tuple) else held["x"]))
    for layer in range(cmap.n_layers):
        handles.append(model.get_submodule(cmap.get(layer, "layer").path).register_forward_hook(
            lambda m, a, out, i=layer: record.__setitem__(i, (out[0] if isinstance(out, tuple) else out).float())))
    handles.append(model.get_input_embeddings().register_forward_hook(
        lambda m, a, out: record.__setitem__(-1, out.float())))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([record[i] for i in range(-1, cmap.n_layers)])  # (layer, window, pos, d)


@pytest.mark.parametrize("mode", list(CONDITIONS))
def test_stored_residuals_equal_plain_hooks(diagnosed, loaded, mode):
    from workbench.interventions import Intervener

    act = open_activations(diagnosed)
    cond = CONDITIONS[mode]
    row = list(act["condition"].values).index(cond.id)
    assert bool(act["complete"].values[row])
    iv = Intervener(loaded.model)
    ds = open_store(diagnosed)
    windows = json.loads(act.attrs["window_begins"])
    ids = torch.stack([load_corpus_ids(ds, loaded)[b:b + 32] for b in windows])
    scored, reference, avoid = rebuild_inputs(ds, loaded.tokenizer)
    inputs = Inputs(iv, reference, json.loads(ds.attrs["protocol"]), PLAN, avoid)(cond, ids, np.array(windows))
    target = iv.cmap.get(cond.targets[0].layer, cond.targets[0].role)
    if mode == "skip_layer":
        hooked = _hooked(loaded.model, iv.cmap, ids, skip=target)
    else:
        value = {"zero": lambda x: torch.zeros_like(x),
                 "mean": lambda x: inputs["means"][target.key].to(x.dtype).expand_as(x).clone(),
                 "resample": lambda x: inputs["donor"][target.key].to(x.dtype)}[mode]
        hooked = _hooked(loaded.model, iv.cmap, ids, comp=target, value=value)
    w, p = act["window"].values, act["position"].values
    stored = act["hidden"].isel(condition=row).values.astype(np.float32)
    expected = hooked[:, w, p].numpy().astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=2e-3)
    clean = act["hidden"].isel(condition=0).values.astype(np.float32)
    assert not np.allclose(stored[-1], clean[-1])  # the edit changed the residual
    assert act["token_id"].values.tolist() == ids[w, p].tolist()


def load_corpus_ids(ds, loaded):
    scored, _, _ = rebuild_inputs(ds, loaded.tokenizer)
    return scored.ids


def test_twins_share_a_row_and_skipped_components_are_nan(diagnosed):
    act = open_activations(diagnosed)
    ids = list(act["condition"].values)
    assert TWIN.id not in ids and CONDITIONS["zero"].id in ids
    diag = open_diagnostics(diagnosed)
    a, b = (diag["cka_linear"].sel(condition=c).values for c in (TWIN.id, CONDITIONS["zero"].id))
    np.testing.assert_array_equal(a, b)
    row = ids.index(CONDITIONS["skip_layer"].id)
    comp = act["component_out"].isel(condition=row)
    inside = [k for k in act["component"].values if str(k).endswith("@2")]
    assert inside and np.isnan(comp.sel(component=inside).values.astype(np.float32)).all()
    assert np.isfinite(comp.sel(component="mlp@1").values.astype(np.float32)).all()


def test_resume_after_interruption_gives_the_same_values(made, diagnosed, tmp_path):
    path = tmp_path / "run.zarr"
    shutil.copytree(made, path)
    seen = []

    def stop(r, cond):
        seen.append(r)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        diagnose(path, diagnostics=(), on_condition=stop, **FAST)
    assert open_activations(path)["complete"].values.tolist() == [True, True, False, False, False]
    diagnose(path, diagnostics=(), **FAST)
    got, want = open_activations(path), open_activations(diagnosed)
    assert got["complete"].values.all()
    for name in ("hidden", "component_out", "final_hidden", "nll"):
        np.testing.assert_array_equal(got[name].values, want[name].values)


def test_diagnostics_have_their_dims(diagnosed):
    diag = open_diagnostics(diagnosed)
    conds = ["baseline"] + [c.id for c in PLAN.conditions if c.kind != "baseline"]
    assert list(diag["condition"].values) == conds
    dims = {"cka_linear": ("condition", "layer"), "cka_debiased": ("condition", "layer"),
            "probe_acc": ("condition", "layer", "probe"), "probe_selectivity": ("condition", "layer", "probe"),
            "probe_transfer_acc": ("condition", "layer", "probe"), "lens_kl": ("condition", "layer"),
            "lens_top1": ("condition", "layer"), "lens_ce": ("condition", "layer"),
            "lens_entropy": ("condition", "layer"), "lens_kl_last_token": ("condition", "layer"),
            "resid_norm": ("condition", "layer"), "norm_ratio": ("condition", "layer"),
            "cos_to_clean": ("condition", "layer"), "write_norm": ("condition", "component"),
            "retrieval_acc": ("condition",), "retrieval_text_acc": ("condition",),
            "retrieval_text_first_acc": ("condition",), "induction_score": ("condition", "layer", "head"),
            "state_norm": ("condition", "layer"), "map_xy": ("method", "condition", "token", "axis")}
    for name, d in dims.items():
        assert diag[name].dims == d, name
    assert list(diag["layer"].values) == list(range(-1, 8))
    np.testing.assert_allclose(diag["cka_linear"].sel(condition="baseline").values, 1.0, atol=1e-9)
    mid = diag.attrs["middle_layer"]
    acc = diag["probe_acc"].sel(condition=CONDITIONS["zero"].id)
    assert np.isfinite(acc.sel(layer=mid).values).any() and np.isnan(acc.sel(layer=0).values).all()
    # attention removed at layer 3: its induction scores are undefined, layer 7's are not
    ind = diag["induction_score"].sel(condition=CONDITIONS["mean"].id)
    assert np.isnan(ind.sel(layer=3).values).all() and np.isfinite(ind.sel(layer=7).values).all()
    # the skipped layer 2 keeps its Gated DeltaNet state out of the network
    assert np.isnan(diag["state_norm"].sel(condition=CONDITIONS["skip_layer"].id, layer=2))
    frame = diagnostics_summary(diagnosed)
    assert len(frame) == len(conds) and "retrieval_acc" in frame


def test_lens_at_the_last_layer_is_the_models_output(diagnosed):
    diag, act = open_diagnostics(diagnosed), open_activations(diagnosed)
    base = diag.sel(condition="baseline", layer=7)
    assert float(base["lens_kl"]) < 1e-4  # float16 storage of the last residual only
    assert float(base["lens_top1"]) > 0.97
    assert float(base["lens_kl_last_token"]) < 1e-4
    nll = act["nll"].isel(condition=0).values
    np.testing.assert_allclose(float(base["lens_ce"]), np.nanmean(nll), rtol=1e-3)
    # an ablated run's last-token lens is compared with the clean model's final distribution
    # (its own final distribution would give ~0, as lens_kl does)
    ablated = diag.sel(condition=CONDITIONS["zero"].id, layer=7)
    assert float(ablated["lens_kl"]) < 1e-4
    assert float(ablated["lens_kl_last_token"]) > 100 * float(base["lens_kl_last_token"])


def test_cli_refuses_a_store_whose_model_changed(tmp_path, corpus_file):
    folder = tmp_path / "model"
    lm = load_model("random:qwen2")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    local = load_model(str(folder))
    out = tmp_path / "run.zarr"
    plan = Plan(conditions=(BASELINE, Condition(targets=(Target(layer=0, role="attention"),))))
    run_plan(local, plan, [load_corpus(str(corpus_file), local.tokenizer)], out, context=32, stride=16,
             progress=False)
    with torch.no_grad():
        lm.model.model.layers[0].mlp.down_proj.weight.mul_(1.01)
    lm.model.save_pretrained(folder)
    app = typer.Typer()
    app.command()(diagnose_cmd)
    result = CliRunner().invoke(app, [str(out), "--tokens", "32", "--diagnostics", ""])
    assert result.exit_code != 0
    assert isinstance(result.exception, DiagnoseError)
    assert "weights hash" in str(result.exception) and "not the model" in str(result.exception)
    assert open_activations(out) is None  # nothing written


def test_lens_grid_at_the_last_layer_is_the_models_top_token(diagnosed):
    diag, act = open_diagnostics(diagnosed), open_activations(diagnosed)
    grid = diag["lens_top_id"].sel(condition="baseline", layer=7)
    tokens = grid["lens_token"].values
    assert tokens.size > 0 and set(tokens) <= set(act["token"].values)
    top1 = act["top1_id"].isel(condition=0).sel(token=tokens).values
    assert (grid.values == top1).mean() > 0.97  # float16 storage of the last residual only
    prob = diag["lens_top_prob"].sel(condition="baseline")
    assert ((prob > 0) & (prob <= 1)).all()
    assert diag["lens_top_text"].dtype.kind in "UO"


def test_probes_fit_on_one_thread(monkeypatch):
    """scikit-learn's multinomial loss on 2 busy cores: 51 s a probe on 2 threads, 0.9 s on 1."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info

    from probes.linear_probe import LinearProbe

    seen, fit = [], LogisticRegression.fit

    def spy(self, X, y, *args, **kwargs):
        seen.append(max(i["num_threads"] for i in threadpool_info()))
        return fit(self, X, y, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", spy)
    rng = np.random.default_rng(0)
    LinearProbe().fit(rng.normal(size=(60, 4)), np.arange(60) % 3)
    assert seen == [1]
