"""Interventions checked against independent computations, on every supported family."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import family_names
from workbench.architectures import MIXER_ROLES, component_map
from workbench.interventions import Intervener, InterventionError
from workbench.plans import BASELINE, Condition, Target

FAMILIES = family_names()


def _ids(seed=0, shape=(2, 12)):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))


def _main(out):
    return out[0] if isinstance(out, tuple) else out


def _hooked_logits(model, path, make_value, ids):
    """Logits with a plain torch forward hook replacing a module's output (no nnsight)."""
    def hook(_module, _args, out):
        value = make_value(_main(out))
        return (value,) + tuple(out[1:]) if isinstance(out, tuple) else value
    handle = model.get_submodule(path).register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(input_ids=ids).logits
    finally:
        handle.remove()


@pytest.mark.compat("no-op trace = plain forward")
@pytest.mark.parametrize("family", FAMILIES)
def test_empty_condition_reproduces_plain_forward(family, tiny):
    model = tiny.model
    ids = _ids()
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    out = Intervener(model).run(ids, BASELINE)
    assert torch.equal(out.logits, ref)
    assert out.fired == []


@pytest.mark.compat("zero = zeroed out_proj")
@pytest.mark.parametrize("family", FAMILIES)
def test_zero_equals_zeroed_output_projection(family, tiny):
    model = tiny.model
    iv = Intervener(model)
    ids = _ids(1)
    checked = 0
    for comp in iv.cmap.components:
        if comp.role not in MIXER_ROLES + ("mlp",) or comp.out_proj is None:
            continue
        cond = Condition(targets=(Target(layer=comp.layer, role=comp.role),), mode="zero")
        got = iv.run(ids, cond)
        assert got.fired == [comp.key]
        edited = copy.deepcopy(model)
        proj = edited.get_submodule(comp.out_proj)
        proj.weight.data.zero_()
        if proj.bias is not None:
            proj.bias.data.zero_()
        with torch.no_grad():
            ref = edited(input_ids=ids).logits
        torch.testing.assert_close(got.logits, ref, atol=1e-5, rtol=0)
        checked += 1
    assert checked > 0


@pytest.mark.compat("group zero fires every edit")
@pytest.mark.parametrize("family", FAMILIES)
def test_group_zero_fires_every_edit_and_changes_output(family, tiny):
    model = tiny.model
    iv = Intervener(model)
    ids = _ids(2)
    with torch.no_grad():
        clean = model(input_ids=ids).logits
    for role in iv.cmap.roles():
        if role == "layer":
            continue
        targets = tuple(Target(layer=c.layer, role=role) for c in iv.cmap.by_role(role))
        out = iv.run(ids, Condition(targets=targets, mode="zero"))
        assert sorted(out.fired) == sorted(f"{role}@{t.layer}" for t in targets)
        assert not torch.allclose(out.logits, clean)


@pytest.mark.compat("skip_layer = identity block")
@pytest.mark.parametrize("family", FAMILIES)
def test_skip_layer_equals_identity_block(family, tiny):
    model = tiny.model
    iv = Intervener(model)
    ids = _ids(3)
    layer = iv.cmap.n_layers // 2
    got = iv.run(ids, Condition(targets=(Target(layer=layer, role="layer"),), mode="skip_layer"))
    path = iv.cmap.get(layer, "layer").path

    def identity_hook(_module, args, kwargs, out):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) + tuple(out[1:]) if isinstance(out, tuple) else hidden
    handle = model.get_submodule(path).register_forward_hook(identity_hook, with_kwargs=True)
    try:
        with torch.no_grad():
            ref = model(input_ids=ids).logits
    finally:
        handle.remove()
    torch.testing.assert_close(got.logits, ref, atol=1e-6, rtol=0)


@pytest.mark.compat("mean / resample = hooked reference")
@pytest.mark.parametrize("family", FAMILIES)
def test_mean_and_resample_match_hooks(family, tiny):
    model = tiny.model
    iv = Intervener(model)
    ids, ref_ids, donor_ids = _ids(4), _ids(5, (3, 12)), _ids(6)
    mixer = next(c for c in iv.cmap.components if c.role in MIXER_ROLES)
    cond = Condition(targets=(Target(layer=mixer.layer, role=mixer.role),), mode="mean")

    captured = []
    handle = model.get_submodule(mixer.path).register_forward_hook(
        lambda m, a, o: captured.append(_main(o).detach().clone()))
    with torch.no_grad():
        model(input_ids=ref_ids)
        model(input_ids=donor_ids)
    handle.remove()
    mean = captured[0].double().mean(dim=(0, 1))

    means = iv.component_means([ref_ids], [mixer])
    torch.testing.assert_close(means[mixer.key], mean)
    got = iv.run(ids, cond, means=means)
    ref = _hooked_logits(model, mixer.path, lambda x: mean.to(x.dtype).expand_as(x), ids)
    torch.testing.assert_close(got.logits, ref, atol=1e-6, rtol=0)

    cond = Condition(targets=cond.targets, mode="resample", donor_seed=0)
    donor = iv.outputs(donor_ids, [mixer])
    got = iv.run(ids, cond, donor=donor)
    ref = _hooked_logits(model, mixer.path, lambda x: captured[1], ids)
    torch.testing.assert_close(got.logits, ref, atol=1e-6, rtol=0)


def test_missing_means_or_donor_is_an_error():
    from workbench.loading import load_model

    model = load_model("random:qwen2").model
    iv = Intervener(model)
    cond = Condition(targets=(Target(layer=0, role="attention"),), mode="mean")
    with pytest.raises(InterventionError, match="reference means"):
        iv.run(_ids(), cond)
    with pytest.raises(InterventionError, match="donor"):
        iv.run(_ids(), Condition(targets=cond.targets, mode="resample", donor_seed=1))


def test_edits_follow_forward_order_in_parallel_blocks():
    """Falcon-H1 runs mamba before attention inside a block; both edits in one trace work."""
    from workbench.loading import load_model

    model = load_model("random:falcon_h1").model
    iv = Intervener(model)
    cond = Condition(targets=(Target(layer=1, role="attention"), Target(layer=1, role="ssm")), mode="zero")
    out = iv.run(_ids(), cond)
    assert out.fired == ["ssm@1", "attention@1"]
    assert component_map(model).topology == "parallel"
