"""LFM2 (Liquid): short gated convolution layers (``conv``) with softmax attention
(``self_attn``) in a few layers; every layer then runs its MLP (``feed_forward``).

Quirks:
* each layer has exactly one operator: ``conv`` (role ``conv``) or ``self_attn`` (role
  ``attention``), both on ``operator_norm(x)`` and both ending in a Linear called ``out_proj``;
* the MLP is ``w1``/``w3`` (gate/up) and ``w2`` (down): ``w2`` is the MLP's output projection;
* the final norm is named ``model.embedding_norm`` (it is applied after the last layer, not to
  the embeddings), which a logit lens must use.
"""

from workbench.architectures.base import Family, Readout


def tiny_config():
    from transformers import Lfm2Config

    # 6 layers: conv, conv, attention, conv, conv, attention.
    return Lfm2Config(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, full_attn_idxs=[2, 5],
        block_auto_adjust_ff_dim=False, max_position_embeddings=1024,
    )


def expected_counts(config):
    n = config.num_hidden_layers
    n_conv = sum(t == "conv" for t in config.layer_types)
    return {"attention": n - n_conv, "conv": n_conv, "mlp": n, "layer": n}


FAMILY = Family(
    name="lfm2",
    model_types=("lfm2",),
    tiny_config=tiny_config,
    children={"conv": ("conv", "out_proj"), "self_attn": ("attention", "out_proj"),
              "feed_forward": ("mlp", "w2")},
    expected_counts=expected_counts,
    readout=Readout(final_norm="model.embedding_norm"),
)
