"""Qwen2 / Qwen2.5: the plain Transformer control (attention + MLP per layer)."""

from workbench.architectures.base import TRANSFORMER_CHILDREN, Family, transformer_counts


def tiny_config():
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
    )


FAMILY = Family(
    name="qwen2",
    model_types=("qwen2",),
    tiny_config=tiny_config,
    children=TRANSFORMER_CHILDREN,
    expected_counts=transformer_counts,
    heads={"attention": "num_attention_heads"},
)
