"""One palette for the whole app: a role (or a store) has the same colour on every page,
whatever the filters leave in a chart (scales carry the full domain, not the data's)."""

from __future__ import annotations

ROLE_COLOURS = {  # Tableau 10, one hue family per kind of mixer
    "attention": "#e15759",         # red
    "linear_attention": "#4e79a7",  # blue
    "ssm": "#59a14f",               # green
    "conv": "#b07aa1",              # purple
    "mlp": "#f28e2b",               # orange
    "layer": "#79706e",             # grey: whole layers
    "mixed": "#9c755f",             # brown: conditions over several roles (random draws)
}
FUNCTION_COLOURS = {"attention": "#e15759", "linear-time mixer": "#76b7b2", "conv": "#b07aa1",
                    "mlp": "#f28e2b", "layer": "#79706e", "mixed": "#9c755f"}
# Stores (models) in comparisons: dark hues that no role uses, so a store never reads as a role.
STORE_COLOURS = ["#264653", "#bc6c25", "#6d597a", "#8d99ae", "#3d405b", "#a68a64"]

# Alignment by function: Qwen3.5's Gated DeltaNet and Falcon-H1's Mamba-2 both mix tokens in
# linear time, so a hybrid-to-hybrid comparison lines them up; conv stays apart (short-range).
FUNCTION = {"attention": "attention", "linear_attention": "linear-time mixer", "ssm": "linear-time mixer",
            "conv": "conv", "mlp": "mlp", "layer": "layer"}


def role_of(roles: str) -> str:
    """A condition's colour key: its one role, or "mixed" for a set over several roles."""
    parts = [r for r in str(roles).split("+") if r]
    return parts[0] if len(parts) == 1 else "mixed"


def function_of(roles: str) -> str:
    """'linear_attention' -> 'linear-time mixer'; a set over several functions -> 'mixed'."""
    funcs = {FUNCTION.get(r, r) for r in str(roles).split("+") if r}
    return funcs.pop() if len(funcs) == 1 else "mixed"


def scale(colours: dict[str, str], present=None):
    """An Altair colour scale with a fixed domain; ``present`` (optional) keeps the legend to
    the values in the data, in palette order, without changing any colour."""
    import altair as alt

    names = list(colours)
    extra = [p for p in (present or []) if p not in colours]
    if present is not None:
        names = [n for n in names if n in set(present)]
    names += sorted(set(extra))
    fallback = ["#17becf", "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78"]
    return alt.Scale(domain=names, range=[colours.get(n, fallback[i % len(fallback)])
                                          for i, n in enumerate(names)])
