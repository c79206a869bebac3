"""Residual stream and component outputs of one run under a condition, from one nnsight trace.

The trace is ``Intervener.run``'s (the condition's edits plus saves in forward order), so what
is captured is what the edited network computed. A layer removed by ``skip_layer`` records what
the network carried on, its input passed through; the components inside it did not contribute
and are listed in ``Capture.absent`` instead of ``components``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.interventions import Intervener
from workbench.plans import BASELINE, Condition
from workbench.readout import embed_residual


@dataclass
class Capture:
    embedding: torch.Tensor  # (batch, seq, d_model): the residual entering layer 0
    residual: torch.Tensor  # (n_layers, batch, seq, d_model): the residual after each layer
    # component key ("role@layer", role not "layer") -> its module's output (batch, seq, d_model),
    # before anything the layer applies to it (e.g. Falcon-H1's branch multipliers)
    components: dict[str, torch.Tensor]
    absent: tuple[str, ...]  # keys of components inside skipped layers (never contributed)
    logits: torch.Tensor  # (batch, seq, vocab)
    fired: list[str]  # the condition's edits, in the order they ran

    def stream(self) -> torch.Tensor:
        """(n_layers + 1, batch, seq, d_model): embedding, then the residual after each layer."""
        return torch.cat([self.embedding[None], self.residual])


def skipped_paths(iv: Intervener, condition: Condition) -> set[str]:
    if condition.mode != "skip_layer":
        return set()
    return {iv.cmap.get(t.layer, t.role).path for t in condition.targets}


@torch.no_grad()
def capture(iv: Intervener, ids: torch.Tensor, condition: Condition | None = None, *,
            means: dict | None = None, donor: dict | None = None,
            components: bool = True) -> Capture:
    """Run ``ids`` under ``condition`` (None: clean) and keep every layer's output (float32).

    ``means`` / ``donor`` as for ``Intervener.run``. ``components=False`` keeps only the
    residual stream and logits.
    """
    condition = BASELINE if condition is None else condition
    skipped = skipped_paths(iv, condition)
    layers = [iv.cmap.get(i, "layer") for i in range(iv.cmap.n_layers)]  # see residual_paths
    inside = [c for c in iv.cmap.components if c.role != "layer"
              and any(c.path.startswith(p + ".") for p in skipped)]
    parts = [c for c in iv.cmap.components if c.role != "layer" and c not in inside] if components else []
    out = iv.run(ids, condition, means=means, donor=donor, save=layers + parts)
    saved = {k: v.detach().float() for k, v in out.saved.items()}
    return Capture(
        embedding=embed_residual(iv.model, ids, iv.cmap).to(out.logits.device),
        residual=torch.stack([saved[c.key] for c in layers]),
        components={c.key: saved[c.key] for c in parts},
        absent=tuple(c.key for c in inside) if components else (),
        logits=out.logits.float(),
        fired=out.fired,
    )
