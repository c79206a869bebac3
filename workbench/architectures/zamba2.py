"""Zamba2: a stack of Mamba-2 layers; every few layers (``hybrid`` in ``layers_block_type``) the
layer first runs a *shared* transformer block, whose output is added to the Mamba input.

How the shared transformer is mapped, and why this is honest:

* A ``hybrid`` layer ``model.layers.i`` (``Zamba2HybridLayer``) computes
  ``t = linear_i(shared_transformer(concat(x, embeddings)))`` and then
  ``x + mamba(norm(x + t))`` (``mamba_decoder``). Plain layers are ``x + mamba(norm(x))``.
  So the shared block's output reaches the residual stream *only through this layer's Mamba
  input*; it is never added to the residual itself.
* ``shared_transformer`` is serial with no inner residual: ``self_attn(norm(concat))`` ->
  ``pre_ff_layernorm`` -> ``feed_forward``. Its weights are tied across hybrid layers (layer
  ``k``-th hybrid uses block ``k % num_mem_blocks``; LoRA-style adapters are per call), but each
  hybrid layer owns its own *module objects*, so a hook or nnsight edit on
  ``model.layers.i.shared_transformer.self_attn`` fires for layer ``i`` only. Editing the
  shared *weights* would change every layer that uses the block, so no component's ``out_proj``
  points at a tied weight.
* Components: ``layer`` = ``model.layers.i``; ``ssm`` = the Mamba mixer (``model.layers.i.mamba``
  or ``model.layers.i.mamba_decoder.mamba``, output Linear ``out_proj``, untied); for hybrid layers
  ``attention`` = ``shared_transformer.self_attn`` and ``mlp`` = ``shared_transformer.feed_forward``
  of that layer's call. Their ``out_proj`` is the per-layer, untied ``model.layers.i.linear``:
  zeroing it sets ``t = 0``, which is exactly what zeroing the MLP output gives, and also what
  zeroing the attention output gives (RMSNorm(0) = 0 and the bias-free MLP maps 0 to 0; with
  ``add_bias_linear`` the attention's ``out_proj`` is None).
* Consequence to keep in mind when reading results: at a hybrid layer, *zero*-ablating
  ``attention``, ``mlp``, or both are the same intervention (the whole shared-block contribution
  at that layer is removed); mean/resample ablations of the two differ. ``skip_layer`` of a
  hybrid layer removes the shared block call and the Mamba layer together.
"""

from workbench.architectures.base import Component, Family, Readout, get_module


def tiny_config():
    from transformers import Zamba2Config

    # 6 layers: mamba, hybrid, mamba, hybrid, mamba, hybrid; 2 memory blocks, so the hybrid
    # layers 1 and 5 share block 0's weights (as in the released checkpoints).
    return Zamba2Config(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "mamba", "hybrid"],
        num_attention_heads=4, num_mem_blocks=2, use_shared_attention_adapter=True, adapter_rank=8,
        use_mem_rope=True, mamba_d_state=16, n_mamba_heads=8, mamba_ngroups=1, chunk_size=16,
        max_position_embeddings=1024,
    )


def expected_counts(config):
    n = len(config.layers_block_type)
    n_hybrid = sum(t == "hybrid" for t in config.layers_block_type)
    return {"attention": n_hybrid, "ssm": n, "mlp": n_hybrid, "layer": n}


def components(family: Family, model) -> list[Component]:
    layers = get_module(model, family.layers_path)
    exact_attn = not getattr(model.config, "add_bias_linear", False)
    found = []
    for i, layer in enumerate(layers):
        base = f"{family.layers_path}.{i}"
        found.append(Component(i, "layer", base, "sequential"))
        if hasattr(layer, "shared_transformer"):
            linear = f"{base}.linear"
            found.append(Component(i, "attention", f"{base}.shared_transformer.self_attn", "sequential",
                                   linear if exact_attn else None))
            found.append(Component(i, "mlp", f"{base}.shared_transformer.feed_forward", "sequential",
                                   linear))
            mamba = f"{base}.mamba_decoder.mamba"
        else:
            mamba = f"{base}.mamba"
        get_module(model, mamba)  # AttributeError -> UnsupportedArchitecture if the layout differs
        found.append(Component(i, "ssm", mamba, "sequential", f"{mamba}.out_proj"))
    return found


FAMILY = Family(
    name="zamba2",
    model_types=("zamba2",),
    tiny_config=tiny_config,
    components=components,
    expected_counts=expected_counts,
    readout=Readout(final_norm="model.final_layernorm"),
)
