"""Recurrent-state norms read from the model's cache, clean and under edits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import family_names
from workbench.interventions import Intervener
from workbench.plans import Condition, Target
from workbench.states import STATE_ROLES, StateError, state_norms


def _ids(seed=0, shape=(2, 12)):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.compat("recurrent state norms")
@pytest.mark.parametrize("family", family_names())
def test_clean_state_norms_finite_and_positive(family, tiny):
    iv = Intervener(tiny.model)
    if not any(c.role in STATE_ROLES for c in iv.cmap.components):
        with pytest.raises(StateError, match="no recurrent mixers"):
            state_norms(tiny.model, _ids(), intervener=iv)
        pytest.skip(f"{family} has no linear-attention or SSM layers")
    norms = state_norms(tiny.model, _ids(), intervener=iv)
    assert norms.dims == ("component", "row") and norms.shape[1] == 2
    assert set(norms.role.values) <= set(STATE_ROLES)
    assert list(norms.layer.values) == [int(k.split("@")[1]) for k in norms.component.values]
    assert np.isfinite(norms.values).all() and (norms.values > 0).all()


@pytest.mark.parametrize("family", ["qwen3_5", "falcon_h1"])
def test_state_is_per_row_and_after_the_last_token(family, tiny):
    iv = Intervener(tiny.model)
    ids = _ids(1)
    both = state_norms(tiny.model, ids, intervener=iv)
    alone = state_norms(tiny.model, ids[1:], intervener=iv)
    np.testing.assert_allclose(both.values[:, 1], alone.values[:, 0], rtol=1e-5)
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 256
    assert (state_norms(tiny.model, changed, intervener=iv).values != both.values).all()


# An edit at a later layer: the mixers before it see the same input, so keep the clean state.
LATER = {"qwen3_5": (3, "attention"), "falcon_h1": (3, "attention")}


@pytest.mark.parametrize("mode", ["zero", "skip_layer"])
@pytest.mark.parametrize("family", ["qwen3_5", "falcon_h1"])
def test_edit_leaves_earlier_states_and_changes_later_ones(family, mode, tiny):
    iv = Intervener(tiny.model)
    ids = _ids(2)
    layer, role = LATER[family]
    if mode == "skip_layer":
        role = "layer"
    cond = Condition(targets=(Target(layer=layer, role=role),), mode=mode)
    clean = state_norms(tiny.model, ids, intervener=iv)
    edited = state_norms(tiny.model, ids, condition=cond, intervener=iv)
    before = clean.layer.values < layer
    after = clean.layer.values > layer
    assert before.any() and after.any()
    np.testing.assert_array_equal(edited.values[before], clean.values[before])
    assert (edited.values[after] != clean.values[after]).all()
    at = clean.layer.values == layer  # Falcon-H1's layer 3 has an SSM beside the attention
    if mode == "skip_layer":
        assert np.isnan(edited.values[at]).all()
    elif family == "falcon_h1":
        # same normed input as the zeroed attention branch, so the same state
        np.testing.assert_array_equal(edited.values[at], clean.values[at])


@pytest.mark.parametrize("family", ["qwen3_5"])
def test_ablated_mixer_state_is_nan(family, tiny):
    iv = Intervener(tiny.model)
    cond = Condition(targets=(Target(layer=1, role="linear_attention"),), mode="zero")
    norms = state_norms(tiny.model, _ids(), condition=cond, intervener=iv)
    assert np.isnan(norms.sel(component="linear_attention@1").values).all()
    assert np.isfinite(norms.sel(component="linear_attention@0").values).all()
