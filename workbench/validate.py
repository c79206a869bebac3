"""A load-time check of the real model, not only of tiny configs (as nnterp checks a model's I/O).

One short clean trace saves every component's output: each must have the residual stream's
shape. Then one component of each role is ablated (``zero``; ``skip_layer`` for whole layers):
the logits must change. A model that fails is refused before a plan runs, with the component
named, because a component map that points at the wrong module would ablate nothing.
"""

from __future__ import annotations

import torch

from workbench.interventions import Intervener, InterventionError
from workbench.plans import BASELINE, Condition, Target

N_CHECK_TOKENS = 8


class ModelCheckError(InterventionError):
    pass


def check_model(iv: Intervener, vocab_size: int | None = None) -> dict:
    """Run the check; returns a record for the store's provenance (``ok``, what was checked)."""
    cmap = iv.cmap
    vocab = vocab_size or iv.model.config.get_text_config().vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(vocab, 1000), (1, N_CHECK_TOKENS), generator=gen)
    clean = iv.run(ids, BASELINE, save=list(cmap.components))
    residual = clean.saved[cmap.by_role("layer")[0].key].shape
    problems = []
    for comp in cmap.components:
        shape = tuple(clean.saved[comp.key].shape)
        if shape != tuple(residual):
            problems.append(f"{comp.key} ({comp.path}) outputs shape {shape}, not the residual's "
                            f"{tuple(residual)}")
    changed = {}
    finite = bool(torch.isfinite(clean.logits).all())
    if not finite:  # NaN/inf weights: no change can be seen; the run reports the non-finite loss
        problems_note = "the clean logits are not finite; the edit check was skipped"
        return {"ok": not problems, "tokens": N_CHECK_TOKENS, "components_checked": len(cmap.components),
                "residual_shape": list(residual), "max_logit_change": {}, "problems": problems,
                "note": problems_note}
    for role in cmap.roles():
        comp = cmap.by_role(role)[0]
        mode = "skip_layer" if role == "layer" else "zero"
        out = iv.run(ids, Condition(targets=(Target(layer=comp.layer, role=role),), mode=mode))
        diff = float((out.logits.float() - clean.logits.float()).abs().max())
        changed[comp.key] = diff
        if not diff > 0:
            problems.append(f"ablating {comp.key} ({comp.path}, {mode}) leaves the logits unchanged")
    record = {"ok": not problems, "tokens": N_CHECK_TOKENS, "components_checked": len(cmap.components),
              "residual_shape": list(residual), "max_logit_change": changed, "problems": problems}
    return record


def require_ok(record: dict, model: str) -> None:
    if not record["ok"]:
        raise ModelCheckError(f"model {model} failed the load-time check: {'; '.join(record['problems'])}. "
                              "Its component map does not match what the model computes; not running")
