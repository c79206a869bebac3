"""Granite 4.0 hybrid (``granitemoehybrid``): Mamba-2 layers (``mamba``) with softmax attention
(``self_attn``) in a few layers; then the channel mixer.

Each layer holds either ``mamba`` or ``self_attn`` (the other attribute is None). The layer
output is ``residual + mixer(norm(x)) * residual_multiplier``, so config multipliers are applied
*after* the mixer (and ``embedding_multiplier`` / ``logits_scaling`` around the stack, which a
logit lens must apply); zeroing a mixer's output Linear still zero-ablates it exactly.

The channel mixer is where this family does not fit one module path:
* dense checkpoints (``num_local_experts == 0``, e.g. granite-4.0-h-micro): ``shared_mlp`` is the
  whole MLP, mapped to role ``mlp`` with ``output_linear`` as its output projection;
* MoE checkpoints (granite-4.0-h-tiny/small): the layer computes
  ``block_sparse_moe(x) + shared_mlp(x)`` inline, with no module whose output is that sum.
  Mapping either sibling alone as ``mlp`` would leave half the MLP running under an "MLP off"
  label, so MoE layers get **no** ``mlp`` component (the layer and its mixer are still mapped).
"""

from workbench.architectures.base import Component, Family, Readout, get_module

_MAMBA = ("mamba", "linear_attention")
_ATTENTION = ("attention", "full_attention")


def tiny_config():
    from transformers import GraniteMoeHybridConfig

    # 4 layers: mamba, mamba, attention, mamba; dense (see module docstring for MoE).
    return GraniteMoeHybridConfig(**tiny_kwargs(num_local_experts=0))


def tiny_kwargs(num_local_experts=0):
    return dict(
        vocab_size=320, hidden_size=64, intermediate_size=32, shared_intermediate_size=128,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        layer_types=["mamba", "mamba", "attention", "mamba"],
        num_local_experts=num_local_experts, num_experts_per_tok=2,
        mamba_n_heads=8, mamba_d_state=16, mamba_n_groups=1, mamba_d_conv=4, mamba_expand=2,
        mamba_chunk_size=16, position_embedding_type="rope", max_position_embeddings=1024,
        embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.25,
        logits_scaling=2.0,
    )


def expected_counts(config):
    n = config.num_hidden_layers
    n_ssm = sum(t in _MAMBA for t in config.layer_types)
    dense = not (config.num_local_experts or 0) > 0
    return {"attention": n - n_ssm, "ssm": n_ssm, "mlp": n if dense else 0, "layer": n}


def components(family: Family, model) -> list[Component]:
    layers = get_module(model, family.layers_path)
    found = []
    for i, layer in enumerate(layers):
        base = f"{family.layers_path}.{i}"
        found.append(Component(i, "layer", base, "sequential"))
        if layer.mamba is not None:
            found.append(Component(i, "ssm", f"{base}.mamba", "sequential", f"{base}.mamba.out_proj"))
        if layer.self_attn is not None:
            found.append(Component(i, "attention", f"{base}.self_attn", "sequential",
                                   f"{base}.self_attn.o_proj"))
        if getattr(layer, "block_sparse_moe", None) is None:
            found.append(Component(i, "mlp", f"{base}.shared_mlp", "sequential",
                                   f"{base}.shared_mlp.output_linear"))
    return found


FAMILY = Family(
    name="granitemoehybrid",
    model_types=("granitemoehybrid",),
    tiny_config=tiny_config,
    components=components,
    expected_counts=expected_counts,
    readout=Readout(embed_multiplier_attr="embedding_multiplier", logit_divisor_attr="logits_scaling"),
)
