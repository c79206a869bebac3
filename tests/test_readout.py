"""The lens is the model's own readout: checked against the model's logits on every family."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import family_names
from workbench.architectures import UnsupportedArchitecture, component_map, families
from workbench.readout import embed_residual, lens_logits, readout_for, residual_paths

FAMILIES = family_names()


def _ids(seed=0, shape=(2, 12)):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))


def _main(out):
    return out[0] if isinstance(out, tuple) else out


def _last_residual_and_logits(model, ids):
    """Output of the last decoder layer (plain torch hook) and the model's logits."""
    path = residual_paths(component_map(model))[-1]
    got = {}
    handle = model.get_submodule(path).register_forward_hook(
        lambda m, a, out: got.__setitem__("h", _main(out)))
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits
    finally:
        handle.remove()
    return got["h"], logits


@pytest.mark.compat("lens = logits at last layer")
@pytest.mark.parametrize("family", FAMILIES)
def test_lens_reproduces_logits_at_last_layer(family, tiny):
    model = tiny.model
    hidden, logits = _last_residual_and_logits(model, _ids())
    lens = lens_logits(model, hidden)
    assert lens.dtype == torch.float32 and lens.shape == logits.shape
    torch.testing.assert_close(lens, logits.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.compat("embedding readout = layer-0 input")
@pytest.mark.parametrize("family", FAMILIES)
def test_embed_residual_is_layer0_input(family, tiny):
    model = tiny.model
    ids = _ids(1)
    got = {}

    def pre(_module, args, kwargs):
        got["x"] = args[0] if args else kwargs["hidden_states"]

    path = residual_paths(component_map(model))[0]
    handle = model.get_submodule(path).register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    torch.testing.assert_close(embed_residual(model, ids), got["x"].float(), atol=0, rtol=0)


@pytest.mark.parametrize("family", ["falcon_h1", "gemma3_text", "granitemoehybrid"])
def test_tiny_configs_exercise_the_logit_transform(family, tiny):
    """Without its transform the lens misses the logits, so the test above can catch a bug."""
    model = tiny.model
    hidden, logits = _last_residual_and_logits(model, _ids())
    bare = dataclasses.replace(readout_for(model), logit_multiplier_attr=None,
                               logit_divisor_attr=None, softcap_attr=None)
    assert not torch.allclose(lens_logits(model, hidden, bare), logits, atol=1e-3)


@pytest.mark.parametrize("family", ["falcon_h1", "granitemoehybrid"])
def test_tiny_configs_exercise_the_embedding_multiplier(family, tiny):
    model = tiny.model
    ids = _ids()
    bare = dataclasses.replace(readout_for(model), embed_multiplier_attr=None)
    assert not torch.allclose(embed_residual(model, ids, bare), embed_residual(model, ids))


@pytest.mark.parametrize("family", ["qwen3_5"])
def test_chunks_and_reduce(family, tiny):
    model = tiny.model
    hidden, logits = _last_residual_and_logits(model, _ids(2, (3, 7)))
    whole = lens_logits(model, hidden)
    torch.testing.assert_close(lens_logits(model, hidden, chunk=4), whole, atol=1e-6, rtol=1e-6)
    flat = logits.reshape(-1, logits.shape[-1])
    top = lens_logits(model, hidden, chunk=5, reduce=lambda lg, rows: lg.argmax(-1))
    assert top.shape == (3, 7)
    assert torch.equal(top.reshape(-1), flat.argmax(-1))
    with pytest.raises(ValueError, match="chunk"):
        lens_logits(model, hidden, chunk=0)


def test_every_family_declares_resolvable_readout_paths():
    from workbench.architectures import random_model

    seen = set()
    for model_type, fam in sorted(families().items()):
        if fam.name in seen:
            continue
        seen.add(fam.name)
        model, _ = random_model(model_type)
        ro = fam.readout
        for path in (ro.final_norm, ro.unembed, ro.embed):
            model.get_submodule(path)
        for attr in (ro.embed_multiplier_attr, ro.logit_multiplier_attr, ro.logit_divisor_attr,
                     ro.softcap_attr):
            assert attr is None or hasattr(model.config, attr), (model_type, attr)


def test_unknown_model_type_is_refused():
    with pytest.raises(UnsupportedArchitecture, match="gpt2"):
        readout_for(torch.nn.Linear(2, 2), "gpt2")
