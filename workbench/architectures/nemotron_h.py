"""Nemotron-H (and Nemotron 3 Nano): a stack of single-mixer blocks. Each block
``model.layers.i`` is ``x + mixer(norm(x))`` with one ``mixer`` whose kind comes from the
config's pattern (``layers_block_type``, legacy ``hybrid_override_pattern`` ``M``/``*``/``-``/``E``):

* ``linear_attention`` (``M``, Mamba-2) -> role ``ssm``, output Linear ``out_proj``;
* ``full_attention`` (``*``) -> role ``attention``, output Linear ``o_proj`` (returns a tuple);
* ``mlp`` (``-``, squared-ReLU MLP) -> role ``mlp``, output Linear ``down_proj``;
* ``moe`` (``E``, routed experts + shared experts summed inside the mixer) -> role ``mlp``, no
  single output Linear (``out_proj`` None).

The block is role ``layer``. Layer indices are *block* indices: a block holds one mixer, so there
is at most one component besides ``layer`` per index, and an "attention + MLP" pair of a
classic Transformer layer spans two consecutive indices here. The final norm is
``model.norm_f``; embeddings are ``model.embeddings``.
"""

import torch

from workbench.architectures.base import Component, Family, Readout, get_module

# block type (new and legacy names) -> (role, output Linear of the mixer or None)
_MIXERS = {
    "linear_attention": ("ssm", "out_proj"), "mamba": ("ssm", "out_proj"),
    "full_attention": ("attention", "o_proj"), "attention": ("attention", "o_proj"),
    "mlp": ("mlp", "down_proj"),
    "moe": ("mlp", None),
}


def tiny_config():
    from transformers import NemotronHConfig

    # 6 blocks: mamba, mlp, attention, moe, mamba, mlp.
    return NemotronHConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128,
        layers_block_type=["linear_attention", "mlp", "full_attention", "moe", "linear_attention", "mlp"],
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=16, n_groups=1, conv_kernel=4,
        expand=2, chunk_size=16, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
        moe_intermediate_size=32, moe_shared_expert_intermediate_size=32,
        max_position_embeddings=1024,
    )


def expected_counts(config):
    kinds = list(config.layers_block_type)
    counts = {"attention": 0, "ssm": 0, "mlp": 0}
    for kind in kinds:
        counts[_MIXERS[kind][0]] += 1
    return {**counts, "layer": len(kinds)}


def components(family: Family, model) -> list[Component]:
    layers = get_module(model, family.layers_path)
    found = []
    for i, block in enumerate(layers):
        base = f"{family.layers_path}.{i}"
        found.append(Component(i, "layer", base, "sequential"))
        role, out = _MIXERS[block.block_type]
        has_out = out is not None and isinstance(getattr(block.mixer, out, None), torch.nn.Linear)
        proj = f"{base}.mixer.{out}" if has_out else None
        found.append(Component(i, role, f"{base}.mixer", "sequential", proj))
    return found


FAMILY = Family(
    name="nemotron_h",
    model_types=("nemotron_h",),
    tiny_config=tiny_config,
    components=components,
    expected_counts=expected_counts,
    readout=Readout(final_norm="model.norm_f", embed="model.embeddings"),
)
