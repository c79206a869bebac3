"""Qwen2 / Qwen2.5: the plain Transformer control (attention + MLP per layer)."""

from workbench.architectures.base import Family


def tiny_config():
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
    )


def expected_counts(config):
    n = config.num_hidden_layers
    return {"attention": n, "mlp": n, "layer": n}


FAMILY = Family(
    name="qwen2",
    model_types=("qwen2",),
    tiny_config=tiny_config,
    children={"self_attn": ("attention", "o_proj"), "mlp": ("mlp", "down_proj")},
    expected_counts=expected_counts,
)
