"""Component maps of every registered family, checked on tiny random models.

Independent of nnsight: zero-ablation is checked with plain torch forward hooks against zeroing
the component's output Linear.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import family_names
from workbench.architectures import (
    MIXER_ROLES,
    UnsupportedArchitecture,
    component_map,
    families,
    random_model,
)

# One representative model_type per family (de-duplicated, sorted by family name); the
# ``family`` parameter and ``compat`` marks feed the compatibility matrix (see conftest.py).
FAMILIES = family_names()
MODEL_TYPES = sorted(families())


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core box thread
    # contention makes each forward ~50x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ids(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 320, (2, 12), generator=g)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


class Built:
    """A family's tiny model (built once per session by conftest's ``tiny``) and its map."""

    def __init__(self, model_type, loaded):
        self.family = families()[model_type]
        self.model = loaded.model
        assert not self.model.training
        self.cmap = component_map(self.model)
        self.ids = _ids()
        self.base = _logits(self.model, self.ids)


_built: dict[str, Built] = {}


@pytest.fixture
def built(family, tiny):
    if family not in _built:
        _built[family] = Built(family, tiny)
    return _built[family]


def _zeroed_copy(model, proj_path):
    """A copy of ``model`` whose Linear at ``proj_path`` has zero weight (and bias)."""
    clone = copy.deepcopy(model)
    proj = clone.get_submodule(proj_path)
    with torch.no_grad():
        proj.weight.zero_()
        if proj.bias is not None:
            proj.bias.zero_()
    return clone


def _zero_output_hook(calls):
    def hook(module, args, output):
        calls.append(module)
        if isinstance(output, tuple):
            return (torch.zeros_like(output[0]), *output[1:])
        assert isinstance(output, torch.Tensor), type(output)
        return torch.zeros_like(output)

    return hook


@pytest.mark.compat("component map = config counts")
@pytest.mark.parametrize("family", FAMILIES)
def test_counts_match_config(family, built):
    expected = {role: n for role, n in built.family.expected_counts(built.model.config).items() if n}
    assert built.cmap.counts() == expected
    assert built.cmap.family == built.family.name


@pytest.mark.compat("components unique, layers 0..n-1")
@pytest.mark.parametrize("family", FAMILIES)
def test_components_unique_and_layers_in_range(family, built):
    keys = [c.key for c in built.cmap.components]
    assert len(keys) == len(set(keys))
    assert {c.layer for c in built.cmap.by_role("layer")} == set(range(built.cmap.n_layers))
    assert all(c.topology in ("sequential", "parallel") for c in built.cmap.components)


@pytest.mark.compat("paths resolve")
@pytest.mark.parametrize("family", FAMILIES)
def test_paths_resolve(family, built):
    for c in built.cmap.components:
        assert isinstance(built.model.get_submodule(c.path), torch.nn.Module), c
        if c.out_proj is not None:
            assert isinstance(built.model.get_submodule(c.out_proj), torch.nn.Linear), c


@pytest.mark.compat("out_proj on the output path")
@pytest.mark.parametrize("family", FAMILIES)
def test_out_proj_is_on_the_output_path(family, built):
    for c in built.cmap.components:
        if c.out_proj is None:
            continue
        zeroed = _logits(_zeroed_copy(built.model, c.out_proj), built.ids)
        assert (zeroed - built.base).abs().max() > 1e-6, f"zeroing {c.out_proj} changed nothing"


@pytest.mark.compat("hook zero = zeroed out_proj (no nnsight)")
@pytest.mark.parametrize("family", FAMILIES)
def test_zero_hook_equals_zeroed_out_proj(family, built):
    """Replacing a component's output by zeros == zeroing its output Linear (float32)."""
    checked = 0
    for c in built.cmap.components:
        if c.out_proj is None or c.role not in (*MIXER_ROLES, "mlp"):
            continue
        calls = []
        handle = built.model.get_submodule(c.path).register_forward_hook(_zero_output_hook(calls))
        try:
            hooked = _logits(built.model, built.ids)
        finally:
            handle.remove()
        assert len(calls) == 1, f"{c.path} ran {len(calls)} times in one forward"
        zeroed = _logits(_zeroed_copy(built.model, c.out_proj), built.ids)
        torch.testing.assert_close(hooked, zeroed, atol=1e-5, rtol=0, msg=lambda m: f"{c}: {m}")
        checked += 1
    assert checked, "no mixer with an out_proj was checked"
    # The hooks are gone: the model is unchanged.
    torch.testing.assert_close(_logits(built.model, built.ids), built.base, atol=0, rtol=0)


@pytest.mark.compat("every role has a checked out_proj")
@pytest.mark.parametrize("family", FAMILIES)
def test_every_role_has_a_checked_component(family, built):
    """Each role in the tiny model has at least one component with an out_proj, so the
    exactness checks above cover every role of the family."""
    roles = set(built.cmap.roles())
    assert "layer" in roles and roles & set(MIXER_ROLES)
    for role in roles - {"layer"}:
        assert any(c.out_proj for c in built.cmap.by_role(role)), role


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_random_model_every_model_type(model_type):
    model, tok = random_model(model_type)
    model.eval()
    assert tok.vocab_size <= model.config.get_text_config().vocab_size
    cmap = component_map(model)
    assert cmap.family == families()[model_type].name
    logits = _logits(model, _ids(1))
    assert logits.shape == (2, 12, model.config.get_text_config().vocab_size)
    assert torch.isfinite(logits).all()


def test_granitemoehybrid_moe_has_no_mlp_component():
    """MoE Granite layers sum two sibling modules inline: no single module is 'the MLP'."""
    from transformers import AutoModelForCausalLM, GraniteMoeHybridConfig

    from workbench.architectures import granitemoehybrid as g

    config = GraniteMoeHybridConfig(**g.tiny_kwargs(num_local_experts=4))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    cmap = component_map(model)
    expected = {role: n for role, n in g.expected_counts(config).items() if n}
    assert cmap.counts() == expected
    assert "mlp" not in cmap.roles()
    assert torch.isfinite(_logits(model, _ids())).all()


# --- unsupported models -------------------------------------------------------------------------

def test_unsupported_gpt2_names_type_and_modules():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=320, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    with pytest.raises(UnsupportedArchitecture) as err:
        component_map(model)
    msg = str(err.value)
    assert "'gpt2'" in msg
    assert "transformer.h.0" in msg  # the modules that were found
    assert "qwen2" in msg  # and what is supported


def test_unsupported_plain_module_with_unknown_type():
    class Config:
        model_type = "no_such_family"

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = Config()
            self.body = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])

    with pytest.raises(UnsupportedArchitecture) as err:
        component_map(Net())
    msg = str(err.value)
    assert "'no_such_family'" in msg
    assert "body.0" in msg and "body.1" in msg


def test_known_type_with_wrong_layout_is_unsupported():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=320, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    model.config.model_type = "nemotron_h"  # claims a family whose layout it does not have
    with pytest.raises(UnsupportedArchitecture) as err:
        component_map(model)
    assert "nemotron_h" in str(err.value) and "transformer.h.0" in str(err.value)
