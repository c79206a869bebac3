"""Gemma 3 multimodal checkpoints (``model_type: gemma3``, e.g. gemma-3-4b): only the text part is
mapped. ``AutoModelForCausalLM`` loads them as ``Gemma3ForConditionalGeneration``, whose decoder
layers live at ``model.language_model.layers`` (the vision tower and projector are not
components). The layers are the same as ``gemma3_text`` (see ``gemma3.py`` for the quirks);
text-only inputs never touch the vision tower.
"""

from workbench.architectures.base import Family, Readout
from workbench.architectures.gemma3 import text_config


def tiny_config():
    from transformers import Gemma3Config, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=28, patch_size=14,
    )
    # 2x2 patches pooled to 1 token per image; image/boi/eoi ids stay out of the 320-token vocab.
    return Gemma3Config(text_config=text_config().to_dict(), vision_config=vision.to_dict(),
                        mm_tokens_per_image=1)


def expected_counts(config):
    n = config.text_config.num_hidden_layers
    return {"attention": n, "mlp": n, "layer": n}


FAMILY = Family(
    name="gemma3_multimodal",
    model_types=("gemma3",),
    tiny_config=tiny_config,
    children={"self_attn": ("attention", "o_proj"), "mlp": ("mlp", "down_proj")},
    layers_path="model.language_model.layers",
    expected_counts=expected_counts,
    # Gemma3ForConditionalGeneration (transformers 5) applies no logit soft-cap, whatever the
    # text config says; sqrt(hidden_size) is inside ``embed_tokens``.
    readout=Readout(final_norm="model.language_model.norm", embed="model.language_model.embed_tokens"),
)
