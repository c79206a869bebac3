"""Captured residuals and component outputs against plain torch forward hooks (no nnsight)."""

from __future__ import annotations

import pytest
import torch

from conftest import family_names
from workbench.capture import capture
from workbench.interventions import Intervener
from workbench.plans import Condition, Target

# A sequential hybrid (Gated DeltaNet + attention) and a parallel one (Mamba-2 beside attention).
HYBRIDS = ["qwen3_5", "falcon_h1"]
# (layer, role) targets per family: a mixer in an early layer, and a layer to skip.
MIXER = {"qwen3_5": (1, "linear_attention"), "falcon_h1": (1, "ssm")}
SKIP = 2


def _ids(seed=0, shape=(2, 12)):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))


def _main(out):
    return out[0] if isinstance(out, tuple) else out


def _replace(out, value):
    return (value,) + tuple(out[1:]) if isinstance(out, tuple) else value


def _hooked(model, cmap, ids, edit_path=None, make_value=None, skip_path=None):
    """Layer and component outputs recorded by torch hooks, with one edit applied by a hook."""
    record: dict[str, torch.Tensor] = {}
    handles = []
    if edit_path is not None:
        handles.append(model.get_submodule(edit_path).register_forward_hook(
            lambda m, a, out: _replace(out, make_value(_main(out)))))
    if skip_path is not None:
        held = {}

        def pre(_m, args, kwargs):
            held["x"] = args[0] if args else kwargs["hidden_states"]

        handles.append(model.get_submodule(skip_path).register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(model.get_submodule(skip_path).register_forward_hook(
            lambda m, a, out: _replace(out, held["x"])))
    for c in cmap.components:  # registered after the edits, so they see the edited output
        handles.append(model.get_submodule(c.path).register_forward_hook(
            lambda m, a, out, key=c.key: record.__setitem__(key, _main(out).detach().float())))
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits
    finally:
        for h in handles:
            h.remove()
    return record, logits


def _check(cap, record, logits, cmap):
    for i in range(cmap.n_layers):
        torch.testing.assert_close(cap.residual[i], record[f"layer@{i}"], atol=1e-6, rtol=1e-6)
    for key, value in cap.components.items():
        torch.testing.assert_close(value, record[key], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(cap.logits, logits.float(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", ["zero", "mean", "resample", "skip_layer"])
@pytest.mark.parametrize("family", HYBRIDS)
def test_capture_matches_torch_hooks(family, mode, tiny):
    model = tiny.model
    iv = Intervener(model)
    cmap = iv.cmap
    ids = _ids()
    clean = capture(iv, ids)
    layer, role = (SKIP, "layer") if mode == "skip_layer" else MIXER[family]
    comp = cmap.get(layer, role)
    cond = Condition(targets=(Target(layer=layer, role=role),), mode=mode)
    kwargs, make_value, skip_path, edit_path = {}, None, None, comp.path
    if mode == "zero":
        make_value = torch.zeros_like
    elif mode == "mean":
        kwargs["means"] = iv.component_means([_ids(5), _ids(6)], [comp])
        make_value = lambda main: kwargs["means"][comp.key].to(main.dtype).expand_as(main)  # noqa: E731
    elif mode == "resample":
        kwargs["donor"] = iv.outputs(_ids(7), [comp])
        make_value = lambda main: kwargs["donor"][comp.key]  # noqa: E731
    else:
        edit_path, skip_path = None, comp.path
    cap = capture(iv, ids, cond, **kwargs)
    record, logits = _hooked(model, cmap, ids, edit_path, make_value, skip_path)
    _check(cap, record, logits, cmap)
    assert cap.fired == [comp.key]
    # the edit took: layers before it are clean, the last one is not
    torch.testing.assert_close(cap.residual[:layer], clean.residual[:layer], atol=0, rtol=0)
    assert not torch.allclose(cap.residual[-1], clean.residual[-1])
    torch.testing.assert_close(cap.embedding, clean.embedding, atol=0, rtol=0)
    if mode == "skip_layer":
        inside = sorted(c.key for c in cmap.components if c.layer == SKIP and c.role != "layer")
        assert sorted(cap.absent) == inside and not set(inside) & set(cap.components)
        torch.testing.assert_close(cap.residual[SKIP], cap.residual[SKIP - 1], atol=0, rtol=0)
    else:
        assert cap.absent == ()
        assert set(cap.components) == {c.key for c in cmap.components if c.role != "layer"}


@pytest.mark.parametrize("family", HYBRIDS)
def test_clean_capture_shapes_and_stream(family, tiny):
    model = tiny.model
    iv = Intervener(model)
    ids = _ids(3, (3, 5))
    cap = capture(iv, ids, components=False)
    d = model.config.hidden_size
    assert cap.residual.shape == (iv.cmap.n_layers, 3, 5, d) and cap.residual.dtype == torch.float32
    assert cap.components == {} and cap.absent == ()
    stream = cap.stream()
    assert stream.shape == (iv.cmap.n_layers + 1, 3, 5, d)
    torch.testing.assert_close(stream[0], cap.embedding, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(cap.logits, model(input_ids=ids).logits, atol=0, rtol=0)


@pytest.mark.compat("capture = torch hooks")
@pytest.mark.parametrize("family", family_names())
def test_clean_capture_matches_hooks_every_family(family, tiny):
    model = tiny.model
    iv = Intervener(model)
    ids = _ids(4)
    cap = capture(iv, ids)
    record, logits = _hooked(model, iv.cmap, ids)
    _check(cap, record, logits, iv.cmap)
    assert set(cap.components) == {c.key for c in iv.cmap.components if c.role != "layer"}
