"""Evaluation under a condition: each metric sees only a forward function (ids -> logits)."""
