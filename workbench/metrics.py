"""Numbers every report uses, without torch (the app reads stores through these)."""

from __future__ import annotations

import math


def safe_exp(x: float) -> float:
    """exp that reports overflow as inf instead of raising (perplexity is never clipped)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def bits_per_byte(nll_nats: float, n_bytes: int | None) -> float:
    """Summed NLL (nats) of the scored tokens over the UTF-8 bytes those tokens cover, in bits."""
    if not n_bytes:
        return math.nan
    return nll_nats / (math.log(2) * n_bytes)
