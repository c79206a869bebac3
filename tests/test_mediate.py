"""Activation patching (workbench.mediate): identities, a torch-hook reference, the store group."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench import cli, mediate as M
from workbench.architectures import family_for, random_model
from workbench.evaluate.perplexity import rolling_windows
from workbench.interventions import Intervener
from workbench.plans import BASELINE, Condition, Target

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness. ") * 6


def _ids(seed=0, shape=(2, 16)):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def models():
    return {t: Intervener(random_model(t)[0]) for t in ("qwen2", "falcon_h1")}


CONDS = {"qwen2": Condition(targets=(Target(layer=1, role="attention"),), mode="zero"),
         "falcon_h1": Condition(targets=(Target(layer=1, role="ssm"), Target(layer=3, role="ssm")), mode="zero")}


@pytest.mark.parametrize("family", ["qwen2", "falcon_h1"])
def test_patching_identities(models, family):
    iv, cond, ids = models[family], CONDS[family], _ids()
    targets = iv.components(cond)
    comps = M.downstream(iv, cond)
    clean = iv.run(ids, BASELINE, save=targets + comps)
    ablated = iv.run(ids, cond, save=targets + comps)
    assert not torch.allclose(clean.logits, ablated.logits)  # the identities below can fail
    edits = {c: ablated.saved[c.key] for c in targets}
    # restoring nothing: A's edits as values give A itself
    assert torch.equal(M.patched_logits(iv, ids, edits), ablated.logits)
    # restoring the residual stream after the last layer gives the clean run
    last = next(c for c in comps if M.name(c) == f"resid@{iv.cmap.n_layers - 1}")
    assert torch.equal(M.patched_logits(iv, ids, {**edits, last: clean.saved[last.key]}), clean.logits)
    # corrupting every component with its output under A gives A
    every = {**edits, **{c: ablated.saved[c.key] for c in comps}}
    assert torch.allclose(M.patched_logits(iv, ids, every), ablated.logits, atol=1e-6, rtol=0)
    # downstream: after the first edit, never a target
    assert {M.name(c) for c in comps} >= {f"resid@{i}" for i in range(cond.layers[0], iv.cmap.n_layers)}
    assert not set(comps) & set(targets)
    assert all(c.layer >= cond.layers[0] for c in comps)


def _hooked_nll(model, ids, windows, hooks):
    """Per-window summed NLL with plain torch forward hooks (path -> function of the output)."""
    handles = [model.get_submodule(p).register_forward_hook(
        lambda m, a, out, f=f: ((f(out[0]),) + tuple(out[1:])) if isinstance(out, tuple) else f(out))
        for p, f in hooks.items()]
    try:
        out = []
        with torch.no_grad():
            for w in windows:
                x = ids[w.begin:w.end][None]
                logits = model(input_ids=x).logits[0]
                first = w.score_from - w.begin
                out.append(F.cross_entropy(logits[first - 1:-1].float(), x[0, first:], reduction="sum").item())
        return np.array(out)
    finally:
        for h in handles:
            h.remove()


def _hooked_output(model, ids, w, path, hooks):
    """A module's output on one window, with ``hooks`` applied upstream (torch hooks only)."""
    seen = {}
    h = model.get_submodule(path).register_forward_hook(
        lambda m, a, out: seen.__setitem__("x", (out[0] if isinstance(out, tuple) else out).clone()))
    try:
        _hooked_nll(model, ids, [w], hooks)
    finally:
        h.remove()
    return seen["x"]


def test_restoration_matches_torch_hook_patching(models):
    """TransformerLens-style patching written directly with forward hooks (no nnsight)."""
    iv = models["qwen2"]
    model, cond = iv.model, CONDS["qwen2"]
    ids = _ids(3, (1, 40))[0]
    windows = rolling_windows(len(ids), 16, 8)
    comps, nll, tokens = M.condition_nll(iv, cond, ids, windows, batch_size=2)
    attn = "model.layers.1.self_attn"
    zero = {attn: torch.zeros_like}
    assert np.allclose(nll["ablated"], _hooked_nll(model, ids, windows, zero), atol=1e-4)
    assert np.allclose(nll["clean"], _hooked_nll(model, ids, windows, {}), atol=1e-4)
    for target in ("mlp@2", "attention@3", "resid@1"):
        comp = comps[[M.name(c) for c in comps].index(target)]
        restored, corrupted = [], []
        for w in windows:
            one = [w]
            clean_out = _hooked_output(model, ids, w, comp.path, {})
            ablated_out = _hooked_output(model, ids, w, comp.path, zero)
            restored.append(_hooked_nll(model, ids, one, {**zero, comp.path: lambda out, v=clean_out: v})[0])
            corrupted.append(_hooked_nll(model, ids, one, {comp.path: lambda out, v=ablated_out: v})[0])
        assert np.allclose(nll["restored"][comps.index(comp)], restored, atol=1e-4)
        assert np.allclose(nll["corrupted"][comps.index(comp)], corrupted, atol=1e-4)
        assert not np.allclose(restored, nll["ablated"], atol=1e-4)  # the patch changed something
    assert tokens.sum() == len(ids) - 1


def test_fractions_point_and_interval():
    tokens = np.full(20, 10)
    rng = np.random.default_rng(0)
    clean = rng.normal(20, 1, 20)
    ablated = clean + 5 + rng.normal(0, 0.5, 20)
    restored = np.stack([ablated, clean, clean + 0.25 * (ablated - clean)])  # recovers 0, 1, 0.75
    corrupted = np.stack([clean, ablated, clean + 0.5 * (ablated - clean)])  # transfers 0, 1, 0.5
    out = M.fractions({"clean": clean, "ablated": ablated, "restored": restored, "corrupted": corrupted},
                      tokens, n_boot=300)
    rec, lo, hi = out["recovery"]
    assert np.allclose(rec, [0, 1, 0.75])
    assert np.allclose(out["transfer"][0], [0, 1, 0.5])
    assert np.all(lo <= rec + 1e-12) and np.all(rec <= hi + 1e-12)
    one = M.fractions({"clean": clean[:1], "ablated": ablated[:1], "restored": restored[:, :1],
                       "corrupted": corrupted[:, :1]}, tokens[:1])
    assert np.isnan(one["recovery"][1]).all()  # a single block: no interval


def test_skip_layer_refused(models):
    iv = models["qwen2"]
    cond = Condition(targets=(Target(layer=1, role="layer"),), mode="skip_layer")
    with pytest.raises(M.MediationError, match="skip_layer"):
        M.downstream(iv, cond)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpora") / "tale.txt"
    path.write_text(TEXT)
    plan = path.with_name("plan.yaml")  # the attention group, and attention at layer 1 alone
    plan.write_text("generators: [{kind: group, role: attention}]\n"
                    "conditions: [{targets: [{layer: 1, role: attention}], mode: zero}]\n")
    out = tmp_path_factory.mktemp("stores") / "run.zarr"
    sys.argv = ["workbench", "run", "--model", "random:qwen2", "--plan", str(plan), "--context", "32",
                "--stride", "16", "--corpus", str(path), "--out", str(out)]
    cli.main()
    return out


def _invoke(argv, capsys):
    old, sys.argv = sys.argv, ["workbench", *map(str, argv)]
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = old
    got = capsys.readouterr()
    return code, got.out, got.err


def test_mediate_store_group_and_resume(tiny_store, capsys):
    from workbench.store import open_store

    before = open_store(tiny_store)["loss"].values.copy()
    code, out, err = _invoke(["mediate", tiny_store, "--max-tokens", "64"], capsys)
    assert code == 0, err
    med = M.open_mediation(tiny_store).load()
    assert med["complete"].values.tolist() == [True, False]  # by default the group conditions
    cid = str(med.condition.values[0])
    rec = med["recovery"].sel(condition=cid)
    assert rec.sel(component="resid@3").item() == pytest.approx(1.0)  # the last residual: all of it
    assert med["transfer"].sel(condition=cid, component="resid@3").item() == pytest.approx(1.0)
    assert np.isnan(rec.sel(component="attention@0").item())  # a target: not downstream
    assert float(med["store_nll_diff"].sel(condition=cid)) < 1e-3  # the store's ablation reproduced
    assert med.sizes["window"] >= 3 and int(med["window_tokens"].sum()) >= 64
    assert np.array_equal(open_store(tiny_store)["loss"].values, before, equal_nan=True)  # main group untouched
    assert "resid@3" in out
    code, _, err = _invoke(["mediate", tiny_store, "--max-tokens", "64"], capsys)
    assert code == 0 and "complete, skipped" in err
    code, _, err = _invoke(["mediate", tiny_store, "--max-tokens", "32"], capsys)
    assert code == 2 and "--overwrite" in err and "Traceback" not in err and err.count("\n") == 1
    assert M.open_mediation(tiny_store)["complete"].values.tolist() == [True, False]  # nothing lost
    code, _, err = _invoke(["mediate", tiny_store, "--conditions", "nope"], capsys)
    assert code == 2 and "unknown or unsupported condition id(s) nope; valid:" in err


HEAD_FAMILIES = ["qwen2", "llama", "qwen3_5", "falcon_h1"]


@pytest.mark.parametrize("family", HEAD_FAMILIES)
def test_zeroing_every_head_equals_zeroing_the_component(family):
    from workbench.mediate.heads import HeadEdits, heads_of

    model = random_model(family)[0]
    iv = Intervener(model)
    ids = _ids(5, (1, 12))
    clean = iv.run(ids, BASELINE).logits
    roles = set()
    for comp in iv.cmap.components:
        heads = heads_of(model, comp)
        if not heads:
            continue
        roles.add(comp.role)
        zeroed = iv.run(ids, Condition(targets=(Target(layer=comp.layer, role=comp.role),), mode="zero")).logits
        with HeadEdits(model, {h: None for h in heads}) as edits:  # inside an nnsight trace
            every = iv.run(ids, BASELINE).logits
        assert edits.fired == {comp.out_proj: 1}
        assert torch.allclose(every, zeroed, atol=1e-5, rtol=0)
        with HeadEdits(model, {heads[0]: None}):
            one = iv.run(ids, BASELINE).logits
        assert not torch.allclose(one, clean) and not torch.allclose(one, zeroed)
    assert roles == set(family_for(model.config.model_type).heads)


@pytest.mark.parametrize("family", ["qwen2", "falcon_h1"])
def test_restoring_every_head_equals_restoring_the_component(models, family):
    from workbench.mediate.heads import HeadEdits, HeadInputs, heads_of

    iv, cond, ids = models[family], CONDS[family], _ids(7)
    targets = iv.components(cond)
    # in a later layer: a parallel mixer beside the first target has a clean input in both runs
    comps = [c for c in M.downstream(iv, cond) if heads_of(iv.model, c) and c.layer > cond.layers[0]]
    assert comps
    for comp in comps[:2]:
        hs = heads_of(iv.model, comp)
        with HeadInputs(iv.model, hs) as clean_in:
            clean = iv.run(ids, BASELINE, save=[comp])
        ablated = iv.run(ids, cond, save=targets)
        edits = {c: ablated.saved[c.key] for c in targets}
        whole = M.patched_logits(iv, ids, {**edits, comp: clean.saved[comp.key]})
        with HeadEdits(iv.model, clean_in.values):
            every = M.patched_logits(iv, ids, edits)
        gap = (whole - ablated.logits).abs().max()  # what restoring the component changes
        assert gap > 0
        assert (every - whole).abs().max() <= 1e-3 * gap
        with HeadEdits(iv.model, {hs[0]: clean_in.values[hs[0]]}):
            one = M.patched_logits(iv, ids, edits)
        assert (one - whole).abs().max() > 1e-2 * gap  # one head alone is not the component


def test_mediate_heads_in_the_store(tmp_path, tiny_store):
    import shutil

    copy = tmp_path / "run.zarr"
    shutil.copytree(tiny_store, copy)
    from workbench.store import open_store

    ds = open_store(tiny_store)
    single = str(ds.condition.values[list(ds.kind.values).index("custom")])  # attention at layer 1 alone
    med = M.mediate(copy, conditions=[single], max_tokens=40, heads=True, overwrite=True, n_boot=50).load()
    heads = med.sel(component=med.component_head >= 0)
    assert set(heads.component_role.values) == {"attention"} and heads.sizes["component"] == 16
    row = heads["recovery"].sel(condition=single)
    later = (heads.component_layer > 1).values
    assert np.isfinite(row.values[later]).all() and np.isnan(row.values[~later]).all()
    # the heads of a component sum to it only in its output, not in loss; each is a separate run
    assert not np.allclose(row.values[later], row.values[later][0])
    names = [n for n, *_ in M.top(med, single, 3)]
    head_names = [n for n, *_ in M.top(med, single, 3, heads=True)]
    assert names and not any(".h" in n for n in names) and all(".h" in n for n in head_names)


@pytest.mark.parametrize("family", ["qwen2", "falcon_h1"])
def test_prefix_reuse_equals_the_naive_loop(models, family):
    iv, cond, ids = models[family], CONDS[family], _ids(9)
    targets = iv.components(cond)
    prefix = M.Prefix(iv)
    comps = M.downstream(iv, cond)
    clean = iv.run(ids, BASELINE, save=targets + comps + prefix.layers)
    ablated = iv.run(ids, cond, save=targets + comps + prefix.layers)
    gap = (clean.logits - ablated.logits).abs().max()
    assert gap > 0
    edits = {c: ablated.saved[c.key] for c in targets}
    skipped = 0
    for c in comps:
        k = prefix.start(c.layer)
        skipped += k
        for run, patch in ((ablated, {**edits, c: clean.saved[c.key]}), (clean, {c: ablated.saved[c.key]})):
            resume = (prefix, k, run.saved[prefix.layers[k - 1].key]) if k else None
            naive = M.patched_logits(iv, ids, patch)
            assert (M.patched_logits(iv, ids, patch, resume=resume) - naive).abs().max() <= 1e-4 * gap, c.key
    assert skipped > 0


def test_prefix_reuse_in_condition_nll(models):
    iv, cond = models["qwen2"], CONDS["qwen2"]
    ids = _ids(9, (1, 40))[0]
    windows = rolling_windows(len(ids), 16, 8)
    comps, fast, _ = M.condition_nll(iv, cond, ids, windows, batch_size=4, heads=True)
    same, naive, _ = M.condition_nll(iv, cond, ids, windows, batch_size=4, heads=True, reuse=False)
    assert [M.name(c) for c in comps] == [M.name(c) for c in same]
    for key in naive:
        assert np.allclose(fast[key], naive[key], atol=1e-4, rtol=0), key
    assert not np.allclose(fast["restored"], fast["ablated"], atol=1e-3)


def test_run_mediate_forwards_tokens_and_refuses_tokens_alone(tmp_path, capsys):
    corpus = tmp_path / "tale.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "run.zarr"
    base = ["run", "--model", "random:qwen2", "--preset", "groups", "--context", "32", "--stride", "16",
            "--corpus", corpus, "--out", out]
    code, _, err = _invoke([*base, "--mediate-tokens", "48"], capsys)
    assert code == 2 and "--mediate-tokens goes with --mediate" in err and err.count("\n") == 1
    assert not out.exists()  # refused before the run
    code, _, err = _invoke([*base, "--mode", "skip_layer", "--mediate"], capsys)
    assert code == 2 and "no zero, mean or resample conditions" in err and not out.exists()
    code, _, err = _invoke([*base, "--mediate", "--mediate-tokens", "48"], capsys)
    assert code == 0, err
    med = M.open_mediation(out).load()
    assert bool(med["complete"].all()) and 48 <= int(med["window_tokens"].sum()) < 64  # 48, not the default 1024
