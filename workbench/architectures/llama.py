"""Llama (and checkpoints that reuse ``model_type: llama``): the plain Transformer control,
attention (``self_attn``) then MLP (``mlp``) in every layer."""

from workbench.architectures.base import TRANSFORMER_CHILDREN, Family, transformer_counts


def tiny_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
    )


FAMILY = Family(
    name="llama",
    model_types=("llama",),
    tiny_config=tiny_config,
    children=TRANSFORMER_CHILDREN,
    expected_counts=transformer_counts,
    heads={"attention": "num_attention_heads"},
)
