"""Qwen3.5: Gated DeltaNet layers (``linear_attn``) with full attention every 4th layer."""

from workbench.architectures.base import Family


def tiny_config():
    from transformers import Qwen3_5TextConfig

    return Qwen3_5TextConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
        linear_value_head_dim=16, max_position_embeddings=1024,
    )


def expected_counts(config):
    n_full = sum(t == "full_attention" for t in config.layer_types)
    n = config.num_hidden_layers
    return {"attention": n_full, "linear_attention": n - n_full, "mlp": n, "layer": n}


FAMILY = Family(
    name="qwen3_5",
    model_types=("qwen3_5", "qwen3_5_text"),
    tiny_config=tiny_config,
    children={"self_attn": ("attention", "o_proj"), "linear_attn": ("linear_attention", "out_proj"),
              "mlp": ("mlp", "down_proj")},
    expected_counts=expected_counts,
    heads={"attention": "num_attention_heads", "linear_attention": "linear_num_value_heads"},
)
