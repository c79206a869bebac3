"""Jamba: Mamba (v1) layers (``mamba``) with softmax attention (``self_attn``) every
``attn_layer_period``-th layer; every layer then runs ``feed_forward``, which is a sparse MoE
block every ``expert_layer_period``-th layer and a dense MLP otherwise.

Quirks: the MoE block (router + experts, no shared expert) has no single output Linear, so its
``out_proj`` is None; dense MLPs end in ``down_proj``. The Mamba mixer returns a tensor,
attention a tuple ``(output, weights)``. Final norm: ``model.final_layernorm``.
"""

from workbench.architectures.base import Family, Readout


def tiny_config():
    from transformers import JambaConfig

    # 4 layers: mamba, mamba, attention, mamba; MoE in layers 1 and 3, dense MLP in 0 and 2.
    return JambaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, attn_layer_period=4, attn_layer_offset=2,
        expert_layer_period=2, expert_layer_offset=1, num_experts=4, num_experts_per_tok=2,
        mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, max_position_embeddings=1024,
    )


def expected_counts(config):
    n = config.num_hidden_layers
    n_attn = sum(t == "attention" for t in config.layers_block_type)
    return {"attention": n_attn, "ssm": n - n_attn, "mlp": n, "layer": n}


FAMILY = Family(
    name="jamba",
    model_types=("jamba",),
    tiny_config=tiny_config,
    children={"mamba": ("ssm", "out_proj"), "self_attn": ("attention", "o_proj"),
              "feed_forward": ("mlp", "down_proj")},
    expected_counts=expected_counts,
    readout=Readout(final_norm="model.final_layernorm"),
)
