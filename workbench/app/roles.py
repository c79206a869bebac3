"""One card per role of a store (attention, linear_attention, ssm, mlp, ...): what removing the
role does, gathered from the tables the other pages draw, so "why does this role matter?" is
one page, not five.

Pure pandas over ``app_data.condition_table`` / ``accuracy_table`` and the diagnostics group;
the Roles page only draws. Intervals are the ones those tables carry (``probes.stats``, the
report's block rule); "too few items" follows the report's ``MIN_ITEMS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from workbench import app_data as ad
from workbench.app.palette import ROLE_COLOURS
from workbench.report import MIN_ITEMS

MODES = ("zero", "skip_layer")  # component only, whole layer


@dataclass
class Effect:
    """One group condition's perplexity ratio, interval and rank among matched random draws."""
    mode: str
    id: str
    label: str
    ratio: float
    low: float
    high: float
    below: int = 0  # random draws of the same size that hurt less than the group
    draws: int = 0  # random draws compared (those identical to the group left out)


@dataclass
class Card:
    role: str
    effects: list[Effect] = field(default_factory=list)
    depth: pd.DataFrame = field(default_factory=pd.DataFrame)  # layer, ratio, low, high, label
    tasks: pd.DataFrame = field(default_factory=pd.DataFrame)  # task, drop, drop_low, drop_high, items, enough
    cka: float = np.nan  # CKA to clean at the last layer (component-only group)
    lens_kl: float = np.nan  # lens KL to the clean output at the last layer
    diagnosed: bool = False

    def effect(self, mode: str) -> Effect | None:
        return next((e for e in self.effects if e.mode == mode), None)


def _rank(table: pd.DataFrame, group: pd.Series) -> tuple[int, int]:
    """(draws below the group's ratio, draws) over the random controls of the group's size and mode."""
    trials = table[(table["kind"] == "random_matched") & table["complete"] & (table["same_as"] != group["label"])]
    trials = trials[(trials["n_targets"] == group["n_targets"]) & (trials["mode"] == group["mode"])]
    vals = trials["ratio"].astype(float)
    vals = vals[np.isfinite(vals)]
    return int((vals < float(group["ratio"])).sum()), int(len(vals))


def role_cards(table: pd.DataFrame, acc: pd.DataFrame | None = None, diag: xr.Dataset | None = None) -> list[Card]:
    """The cards of every role with a group or sweep condition in ``table`` (one corpus of
    ``condition_table``), in the palette's role order; ``acc`` from ``accuracy_table``."""
    done = table[table["complete"]]
    groups = done[done["kind"] == "group"].copy()
    groups["group_role"] = [ad.group_role(r) for _, r in groups.iterrows()]
    sweep = done[done["kind"] == "sweep"]
    present = (set(groups["group_role"]) | set(sweep["roles"])) - {"layer"}  # "layer": the whole-layer sweep
    order = [r for r in ROLE_COLOURS if r in present] + sorted(present - set(ROLE_COLOURS))
    cards = []
    for role in order:
        card = Card(role)
        for mode in MODES:
            rows = groups[(groups["group_role"] == role) & (groups["mode"] == mode)]
            if rows.empty:
                continue
            g = rows.iloc[0]
            below, draws = _rank(done, g)
            card.effects.append(Effect(mode, str(g["id"]), str(g["label"]), float(g["ratio"]), float(g["low"]),
                                       float(g["high"]), below, draws))
        mine = sweep[(sweep["roles"] == role) & (sweep["mode"] == "zero")].sort_values("first_layer")
        card.depth = pd.DataFrame({"layer": mine["first_layer"].astype(int), "ratio": mine["ratio"].astype(float),
                                   "low": mine["low"], "high": mine["high"], "label": mine["label"]})
        zero = card.effect("zero") or (card.effects[0] if card.effects else None)
        if zero is not None and acc is not None:
            rows = acc[acc["id"] == zero.id]
            card.tasks = pd.DataFrame({"task": rows["task"], "drop": rows["drop"], "drop_low": rows["drop_low"],
                                       "drop_high": rows["drop_high"], "items": rows["items"].astype(int),
                                       "enough": rows["items"] >= MIN_ITEMS}).reset_index(drop=True)
        if zero is not None and diag is not None and zero.id in [str(c) for c in diag["condition"].values]:
            last = diag["layer"].values[-1]
            card.diagnosed = True
            for var, attr in (("cka_linear", "cka"), ("lens_kl_last_token", "lens_kl")):
                if var in diag and set(diag[var].dims) == {"condition", "layer"}:
                    setattr(card, attr, float(diag[var].sel(condition=zero.id, layer=last)))
        cards.append(card)
    return cards


def interval_text(low: float, high: float, fmt: str = "{:.3f}", none: str = "too few windows for an interval") -> str:
    """'95% CI 1.02 to 1.10', or ``none`` where there is no interval."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return none
    return f"95% CI {fmt.format(low)} to {fmt.format(high)}"


def ratio_text(e: Effect) -> str:
    """'x1.234 (95% CI 1.20 to 1.27)', the interval or the reason there is none."""
    if not np.isfinite(e.ratio):
        return f"x{e.ratio} (not finite)"
    fmt = "{:.4g}" if e.ratio > ad.OVERFLOW else "{:.3f}"
    return f"x{fmt.format(e.ratio)} ({interval_text(e.low, e.high, fmt)})"


def rank_text(e: Effect) -> str:
    """Where the group falls among random draws of its size."""
    if not e.draws:
        return "no random draws of the same size in this store"
    return f"hurts more than {e.below} of {e.draws} random draws of the same size"


def task_text(row) -> str:
    """One task's accuracy drop with its paired interval, or why the interval is withheld."""
    if not np.isfinite(row["drop"]):
        return f"{row['task']}: not computed"
    if not row["enough"]:
        return f"{row['task']}: drop {row['drop']:+.3f} (too few items for an interval: {row['items']} < {MIN_ITEMS})"
    return f"{row['task']}: drop {row['drop']:+.3f} ({interval_text(row['drop_low'], row['drop_high'], '{:+.3f}')})"
