"""Qwen3-Next: Gated DeltaNet layers (``linear_attn``) with gated full attention (``self_attn``)
every ``full_attention_interval``-th layer (3 of 4 layers are linear), then the MLP (``mlp``).

Quirks:
* the attention output gate (sigmoid of half of ``q_proj``) is applied *before* ``o_proj``, so
  zeroing ``o_proj`` is still exactly zero-ablating the attention output (a tuple
  ``(attn_output, attn_weights)``; element 0 is the output);
* ``mlp`` is a sparse MoE block (routed experts + sigmoid-gated shared expert, summed inside the
  block) except in ``mlp_only_layers`` (dense MLP with ``down_proj``). The MoE block has no single
  output Linear, so its ``out_proj`` is None; the whole block is the ``mlp`` component;
* the DeltaNet ``out_proj`` follows a gated RMSNorm, so zeroing it is exact too.
"""

from workbench.architectures.base import Family


def tiny_config():
    from transformers import Qwen3NextConfig

    # 4 layers -> linear, linear, linear, full; layer 0 dense MLP, layers 1-3 MoE.
    return Qwen3NextConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
        linear_value_head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=32, mlp_only_layers=[0], max_position_embeddings=1024,
    )


def expected_counts(config):
    n = config.num_hidden_layers
    n_full = sum(t == "full_attention" for t in config.layer_types)
    return {"attention": n_full, "linear_attention": n - n_full, "mlp": n, "layer": n}


FAMILY = Family(
    name="qwen3_next",
    model_types=("qwen3_next",),
    tiny_config=tiny_config,
    # The MoE block has no ``down_proj`` attribute, so the scan leaves its out_proj None.
    children={"self_attn": ("attention", "o_proj"), "linear_attn": ("linear_attention", "out_proj"),
              "mlp": ("mlp", "down_proj")},
    expected_counts=expected_counts,
)
