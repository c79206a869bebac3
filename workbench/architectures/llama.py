"""Llama (and checkpoints that reuse ``model_type: llama``): the plain Transformer control,
attention (``self_attn``) then MLP (``mlp``) in every layer."""

from workbench.architectures.base import Family


def tiny_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
    )


def expected_counts(config):
    n = config.num_hidden_layers
    return {"attention": n, "mlp": n, "layer": n}


FAMILY = Family(
    name="llama",
    model_types=("llama",),
    tiny_config=tiny_config,
    children={"self_attn": ("attention", "o_proj"), "mlp": ("mlp", "down_proj")},
    expected_counts=expected_counts,
)
