"""Falcon-H1: a Mamba-2 branch and an attention branch on the same normed input, each scaled by
a config multiplier and summed into the residual; then the MLP (``feed_forward``)."""

from workbench.architectures.base import Family, Readout


def tiny_config():
    from transformers import FalconH1Config

    return FalconH1Config(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        mamba_d_ssm=128, mamba_n_heads=8, mamba_d_head=16, mamba_d_state=16, mamba_n_groups=1,
        mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=16, max_position_embeddings=1024,
        attention_out_multiplier=0.9375, ssm_out_multiplier=0.2357, attention_in_multiplier=1.0,
        ssm_in_multiplier=1.25, embedding_multiplier=5.66, lm_head_multiplier=0.039,
    )


def expected_counts(config):
    n = config.num_hidden_layers
    return {"attention": n, "ssm": n, "mlp": n, "layer": n}


FAMILY = Family(
    name="falcon_h1",
    model_types=("falcon_h1",),
    tiny_config=tiny_config,
    children={"mamba": ("ssm", "out_proj"), "self_attn": ("attention", "o_proj"),
              "feed_forward": ("mlp", "down_proj")},
    parallel_roles=("attention", "ssm"),
    expected_counts=expected_counts,
    heads={"attention": "num_attention_heads", "ssm": "mamba_n_heads"},
    # The embedding output is multiplied inside the model's forward, the logits after lm_head.
    readout=Readout(final_norm="model.final_layernorm", embed_multiplier_attr="embedding_multiplier",
                    logit_multiplier_attr="lm_head_multiplier"),
)
