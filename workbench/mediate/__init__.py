"""Activation patching for ablated conditions: through which later components the damage travels.

For an ablated condition A of a run store and each component X downstream of A's first edit
(every mixer and MLP whose output is computed after that edit, and the residual stream after
each layer from the first edited one on, named ``resid@i``):

- restoration: A with X's output set to its clean output;
  ``recovery = (L_A - L_restored) / (L_A - L_clean)`` (1: X carries all of the damage);
- corruption: the clean model with X's output set to its output under A;
  ``transfer = (L_corrupted - L_clean) / (L_A - L_clean)`` (1: X's change alone does all of it).

This is TransformerLens' ``generic_activation_patch`` (one activation patched per run) over the
roles of the component maps, so hybrids' mixers are patched like attention. Every patched run
is an ``Intervener.run`` resample edit whose donor values are the patches (its edits fire in
measured forward order and are checked): A's own targets are set to the outputs A gives them,
which is exact for zero, mean and resample ablations (those outputs do not depend on the rest
of the run); skip_layer conditions are refused.

Losses are summed NLLs per rolling window of the store's protocol, over the windows that cover
the first ``max_tokens`` tokens of one corpus, so the paired block bootstrap of ``probes.stats``
gives intervals (blocks of windows resampled, the same blocks for every run of a condition).
Results go to the store's ``mediation`` zarr group (the main group is left as it is), laid out
once for all ablated conditions, one region per condition, ``complete`` written last; a rerun
skips complete conditions.
"""

from workbench.mediate.patching import (MediationError, Prefix, condition_nll, downstream, fractions, name, patchable,
                                        patched_logits)
from workbench.mediate.group import (DEFAULT_TOKENS, GROUP, ablated_conditions, mediate, open_mediation,
                                     pick_conditions, top)

__all__ = ["DEFAULT_TOKENS", "GROUP", "MediationError", "Prefix", "ablated_conditions", "condition_nll", "downstream",
           "fractions", "mediate", "name", "open_mediation", "patchable", "patched_logits", "pick_conditions", "top"]
