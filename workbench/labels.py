"""Readable labels: layer lists as ranges ("0-7, 12"), condition names."""

from __future__ import annotations


def layer_ranges(layers) -> str:
    layers = sorted(set(int(x) for x in layers))
    if not layers:
        return "none"
    parts, start, prev = [], layers[0], layers[0]
    for x in layers[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(parts)
