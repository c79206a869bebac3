"""Bamba: Mamba-2 layers (``mamba``) with softmax attention (``self_attn``) at
``attn_layer_indices``; every layer then runs its MLP (``feed_forward``).

Quirks: the Mamba-2 mixer returns a tensor, attention a tuple ``(output, weights)``; the final
norm is ``model.final_layernorm``. Config ``layer_types`` says ``linear_attention`` for the Mamba
layers (transformers' generic name for recurrent mixers), which is role ``ssm`` here.
"""

from workbench.architectures.base import Family, Readout


def tiny_config():
    from transformers import BambaConfig

    # 4 layers: mamba, mamba, attention, mamba.
    return BambaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[2],
        mamba_n_heads=8, mamba_d_state=16, mamba_n_groups=1, mamba_d_conv=4, mamba_expand=2,
        mamba_chunk_size=16, max_position_embeddings=1024,
    )


def expected_counts(config):
    n = config.num_hidden_layers
    n_attn = sum(t in ("attention", "full_attention") for t in config.layers_block_type)
    return {"attention": n_attn, "ssm": n - n_attn, "mlp": n, "layer": n}


FAMILY = Family(
    name="bamba",
    model_types=("bamba",),
    tiny_config=tiny_config,
    children={"mamba": ("ssm", "out_proj"), "self_attn": ("attention", "o_proj"),
              "feed_forward": ("mlp", "down_proj")},
    expected_counts=expected_counts,
    readout=Readout(final_norm="model.final_layernorm"),
)
