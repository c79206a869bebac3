"""The three shipped mini models: one sequential hybrid, one parallel hybrid, one Transformer.

Each is built from the real Hugging Face class, so a trained mini model loads with
`from_pretrained` and goes through the same component maps as the published models
(see /work/shared/model-shapes/). The shapes are the published ones scaled down to
width 256 with the ratios kept where that makes sense:

| name            | class                 | layers | mixing per layer                                  |
|-----------------|-----------------------|--------|---------------------------------------------------|
| mini-qwen3.5    | Qwen3_5ForCausalLM    | 8      | Gated DeltaNet, full (gated) attention every 4th  |
| mini-falcon-h1  | FalconH1ForCausalLM   | 6      | Mamba-2 ‖ attention in every block, then MLP      |
| mini-qwen2.5    | Qwen2ForCausalLM      | 8      | attention, then MLP (the Transformer control)     |

The layer counts and MLP widths are chosen so that the non-embedding parameter counts lie
within 10% of each other (checked by `tests/test_training.py`). All three tie their input
and output embeddings (vocabulary 4096, the workbench tokenizer), which keeps the shipped
weights small; the published Falcon-H1 unties them, which changes no component role.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import (
    FalconH1Config,
    FalconH1ForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3_5ForCausalLM,
    Qwen3_5TextConfig,
)

@dataclass(frozen=True)
class TokenIds:
    """Special token ids taken from the tokenizer (written into every config)."""

    vocab_size: int
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None


def qwen35_config(
    ids: TokenIds,
    hidden_size: int = 256,
    num_hidden_layers: int = 8,
    intermediate_size: int = 640,  # published 3.5x width; 2.5x here
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 64,
    linear_num_heads: int = 4,
    linear_head_dim: int = 64,
) -> Qwen3_5TextConfig:
    """Qwen3.5 text model: Gated DeltaNet layers, full attention at layers 3, 7, ... (as published).

    Published: width 1024, 24 layers, attention 8 Q / 2 KV heads, GDN 16 heads of dim 128,
    partial rotary 0.25, output-gated attention. Here the GDN keeps equal key and value head
    counts; the key/value width equals the model width (published: twice) to keep the
    pure-PyTorch chunked delta rule affordable on CPU.
    """
    if num_hidden_layers % 4:
        raise ValueError("Qwen3.5 places full attention on every 4th layer: use a multiple of 4 layers")
    layer_types = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(num_hidden_layers)]
    rotary_pairs = int(head_dim * 0.25) // 2
    # mrope sections only matter for image/video positions; for text all three are equal.
    section = [rotary_pairs - 2 * (rotary_pairs // 3), rotary_pairs // 3, rotary_pairs // 3]
    return Qwen3_5TextConfig(
        vocab_size=ids.vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        linear_conv_kernel_dim=4,
        linear_key_head_dim=linear_head_dim,
        linear_value_head_dim=linear_head_dim,
        linear_num_key_heads=linear_num_heads,
        linear_num_value_heads=linear_num_heads,
        layer_types=layer_types,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10_000_000.0,
            "partial_rotary_factor": 0.25,
            "mrope_interleaved": True,
            "mrope_section": section,
        },
        bos_token_id=ids.bos_token_id,
        eos_token_id=ids.eos_token_id,
        pad_token_id=ids.pad_token_id,
    )


def falcon_h1_config(
    ids: TokenIds,
    hidden_size: int = 256,
    num_hidden_layers: int = 6,
    intermediate_size: int = 704,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 64,
    mamba_n_heads: int = 6,
    mamba_d_head: int = 64,
    mamba_d_state: int = 64,
    lm_head_multiplier: float = 1.0,
) -> FalconH1Config:
    """Falcon-H1: Mamba-2 and attention in parallel on the same normed input, then an MLP.

    Published (0.5B): width 1024, 36 blocks, attention 8 Q / 2 KV heads of dim 64, Mamba-2 with
    d_ssm 1.5x width (24 heads of dim 64), d_state 128, one group, no gated RMS norm, MLP 2x width.
    Here: the same head dims and d_ssm ratio, d_state 64, and an MLP of 2.75x width so that the
    non-embedding size matches the other two minis.

    Multipliers: every published muP multiplier (embedding, attention in/out, key, SSM in/out,
    the five in-projection multipliers, MLP gate/down) is kept as published, except
    `lm_head_multiplier`: published 0.0390625 (a muP output multiplier for width 1024, tuned for
    a long run). A first training with it (scaled x1024/256 = 0.156) learned far slower than the
    other minis (loss 5.88 against 4.88 for mini-qwen3.5 at the same step), because ~500 AdamW steps
    cannot grow tied embeddings enough to reach useful logit scales; the mini uses 1.0, as the
    Qwen models do.
    """
    return FalconH1Config(
        vocab_size=ids.vocab_size,
        tie_word_embeddings=True,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        mamba_d_ssm=mamba_n_heads * mamba_d_head,
        mamba_n_heads=mamba_n_heads,
        mamba_d_head=mamba_d_head,
        mamba_n_groups=1,
        mamba_d_state=mamba_d_state,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_chunk_size=128,
        mamba_conv_bias=True,
        mamba_proj_bias=False,
        mamba_norm_before_gate=False,
        mamba_rms_norm=False,
        projectors_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1e11},
        # muP multipliers of Falcon-H1-0.5B (model-shapes/falcon-h1-0.5b.json).
        embedding_multiplier=5.656854249492381,
        lm_head_multiplier=lm_head_multiplier,
        mlp_multipliers=[0.8838834764831844, 0.5859375],
        key_multiplier=0.39062499999999994,
        attention_in_multiplier=1.0,
        attention_out_multiplier=0.9375,
        ssm_in_multiplier=1.25,
        ssm_multipliers=[0.3535533905932738, 0.25, 0.3535533905932738, 0.5, 0.3535533905932738],
        ssm_out_multiplier=0.23570226039551587,
        bos_token_id=ids.bos_token_id,
        eos_token_id=ids.eos_token_id,
        pad_token_id=ids.pad_token_id,
    )


def qwen2_config(
    ids: TokenIds,
    hidden_size: int = 256,
    num_hidden_layers: int = 8,
    intermediate_size: int = 800,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
) -> Qwen2Config:
    """Qwen2.5, the Transformer control: attention (biased Q/K/V) and a SwiGLU MLP per layer.

    Published (0.5B): width 896, 24 layers, 14 Q / 2 KV heads of dim 64, MLP ~5.4x width.
    Here: 8 layers and an MLP of 3.125x width, which matches the hybrids' non-embedding size.
    """
    return Qwen2Config(
        vocab_size=ids.vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=ids.bos_token_id,
        eos_token_id=ids.eos_token_id,
        pad_token_id=ids.pad_token_id,
    )


@dataclass(frozen=True)
class MiniModel:
    """One shipped model: how to build its config and which class trains it."""

    name: str
    model_class: type[PreTrainedModel]
    make_config: object  # callable(TokenIds, **shape) -> PretrainedConfig
    topology: str  # "sequential" or "parallel" hybrid, or "transformer"
    published: str  # the published model it scales down
    shape: dict = field(default_factory=dict)  # overrides of the make_config defaults

    def config(self, ids: TokenIds) -> PretrainedConfig:
        return self.make_config(ids, **self.shape)

    def build(self, ids: TokenIds, seed: int = 0) -> PreTrainedModel:
        """A freshly initialised model (float32), deterministic for a given seed."""
        torch.manual_seed(seed)
        config = self.config(ids)
        config._attn_implementation = "sdpa"
        return self.model_class(config)


MINI_MODELS: dict[str, MiniModel] = {
    m.name: m
    for m in [
        MiniModel("mini-qwen3.5", Qwen3_5ForCausalLM, qwen35_config, "sequential", "Qwen/Qwen3.5-0.8B-Base"),
        MiniModel("mini-falcon-h1", FalconH1ForCausalLM, falcon_h1_config, "parallel", "tiiuae/Falcon-H1-0.5B-Base"),
        MiniModel("mini-qwen2.5", Qwen2ForCausalLM, qwen2_config, "transformer", "Qwen/Qwen2.5-0.5B"),
    ]
}


def parameter_counts(model: PreTrainedModel) -> dict[str, int]:
    """Total (unique tensors, so tied embeddings count once) and non-embedding parameters."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    embedding = sum(p.numel() for p in model.get_input_embeddings().parameters())
    out = model.get_output_embeddings()
    if out is not None and out.weight is not model.get_input_embeddings().weight:
        embedding += out.weight.numel()
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


# The shipped recipe, shared by all three models: the same 4M tokens in the same order (one seed),
# the same schedule. Measured on 2 CPU cores: one torch thread per training with bf16 autocast is
# the fastest setting (two threads stall on each other in the many small ops of the GDN / Mamba-2
# fallbacks), so two trainings run side by side. At a fixed token budget this small, optimizer
# steps matter most: mini-qwen2.5 at 400k tokens reached validation loss 6.36 at batch 8, 6.00 at
# batch 4, 5.94 at batch 2, and 5.88 with a 10x embedding learning rate; peak lr 2e-3 beat 1e-3
# and 5e-3. A first run of 2M tokens in one cycle left the Transformer control just at the
# bigram bar (25.1% on encyclopedic), so the recipe is two cosine cycles of 2M tokens each: the
# first cycle is exactly that first run, and a finished first cycle continues into the second.
TRAINING = {
    "tokens": 4_000_000,
    "cycles": 2,
    "batch_size": 2,
    "lr": 2e-3,
    "embedding_lr_scale": 10.0,
    "seed": 0,
    "bf16": True,
    "threads": 1,
}

