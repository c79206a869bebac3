"""Gemma 3 text model (``gemma3_text``, ``Gemma3ForCausalLM``): sliding-window and global
attention layers (5:1 by default), each followed by a gated MLP.

Quirks:
* "sandwich" norms: the attention output passes through ``post_attention_layernorm`` and the MLP
  output through ``post_feedforward_layernorm`` before the residual add. An RMSNorm maps zeros to
  zeros, so zeroing ``o_proj`` / ``down_proj`` is still exactly zero-ablating the component; a
  mean- or resample-ablation is applied to the *pre*-norm output (the module's output);
* embeddings are scaled by sqrt(hidden_size) (inside ``embed_tokens``), and logits may be
  soft-capped (``final_logit_softcapping``), which a logit lens must apply.

The multimodal ``gemma3`` checkpoints (``Gemma3ForConditionalGeneration``) are mapped by
``gemma3_multimodal.py``.
"""

from workbench.architectures.base import TRANSFORMER_CHILDREN, Family, Readout, transformer_counts


def text_config():
    from transformers import Gemma3TextConfig

    # 4 layers: sliding, sliding, sliding, full; window 8 < the 12-token test inputs.
    return Gemma3TextConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=8, final_logit_softcapping=5.0,  # a low cap, so a lens without it is caught
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=1024,
    )


def tiny_config():
    return text_config()


FAMILY = Family(
    name="gemma3",
    model_types=("gemma3_text",),
    tiny_config=tiny_config,
    children=TRANSFORMER_CHILDREN,
    expected_counts=transformer_counts,
    # sqrt(hidden_size) is applied inside ``embed_tokens`` (a scaled embedding module).
    readout=Readout(softcap_attr="final_logit_softcapping"),
)
