"""The store's ``mediation`` group (written by ``workbench mediate``) read without torch, and the
tables the Mediation page and the report draw from it.

``workbench.mediate`` imports torch (it runs models), so the app and the report read the group
here: the same zarr group, opened lazily, guarded by its presence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from workbench.app.palette import ROLE_COLOURS

GROUP = "mediation"
HINT = "workbench mediate {path}"
WHAT = {  # one line each, for the page and the report
    "recovery": "recovery: the share of the ablation's extra loss that goes away when this component's clean "
                "output is restored inside the ablated run (1: it carries all of the damage; 0: none)",
    "transfer": "transfer: the share of the ablation's extra loss that this component's ablated output alone "
                "causes when put into the clean run (1: its change does all of it; 0: none)",
}
# forward order inside a layer: mixers, then the MLP, then the residual stream after the layer
ROLE_ORDER = [r for r in ROLE_COLOURS if r not in ("layer", "mixed")] + ["resid"]
LINEAR = ("linear_attention", "ssm")  # the hybrids' linear-time mixers (Gated DeltaNet, Mamba-2)


def read_mediation(store: str | Path) -> xr.Dataset | None:
    """The mediation group (lazy), or None when the store has none."""
    path = Path(store)
    if not (path / GROUP / ".zgroup").exists():
        return None
    return xr.open_zarr(str(path), group=GROUP, consolidated=False, zarr_format=2)


def _role_rank(role: str) -> int:
    return ROLE_ORDER.index(role) if role in ROLE_ORDER else len(ROLE_ORDER)


def components(med: xr.Dataset, heads: bool = False) -> list[str]:
    """Component names (or head names) ordered by layer, then role in forward order, then head."""
    names = [str(c) for c in med.component.values]
    layer, role = med["component_layer"].values, [str(r) for r in med["component_role"].values]
    head = med["component_head"].values
    keep = [j for j in range(len(names)) if (head[j] >= 0) == heads]
    return [names[j] for j in sorted(keep, key=lambda j: (int(layer[j]), _role_rank(role[j]), int(head[j])))]


def done(med: xr.Dataset) -> list[str]:
    """Ids of the conditions whose mediation is complete."""
    return [str(c) for c, ok in zip(med.condition.values, med["complete"].values) if ok]


def frame(med: xr.Dataset, what: str = "recovery", heads: bool = False) -> pd.DataFrame:
    """Long table of ``what`` over complete conditions x components (or heads), NaN (not
    downstream) rows dropped: condition, label, component, layer, role, head, value, low, high."""
    cols = ["condition", "label", "component", "layer", "role", "head", "value", "low", "high"]
    types = {"layer": int, "head": int, "value": float, "low": float, "high": float}
    ids, names = done(med), components(med, heads)
    if not ids or not names:
        return pd.DataFrame(columns=cols).astype(types)
    sub = med.sel(condition=ids, component=names)
    vals = {k: sub[f"{what}{s}"].values for k, s in (("value", ""), ("low", "_low"), ("high", "_high"))}
    rows = []
    for i, cid in enumerate(ids):
        label = str(sub["label"].values[i])
        for j, comp in enumerate(names):
            if np.isfinite(vals["value"][i, j]):
                rows.append((cid, label, comp, int(sub["component_layer"].values[j]), str(sub["component_role"].values[j]),
                             int(sub["component_head"].values[j]), *(float(vals[k][i, j]) for k in ("value", "low", "high"))))
    return pd.DataFrame(rows, columns=cols).astype(types)


def top(table: pd.DataFrame, condition: str, k: int = 5, resid: bool = True) -> pd.DataFrame:
    """The ``k`` largest rows of one condition in a ``frame`` table (without the residual stream
    unless ``resid``: restoring it after the last edit recovers everything by construction)."""
    rows = table[table["condition"] == condition]
    if not resid:
        rows = rows[rows["role"] != "resid"]
    return rows.sort_values("value", ascending=False).head(k).reset_index(drop=True)


def windows(med: xr.Dataset) -> int:
    return int(med.sizes.get("window", 0))


def tokens(med: xr.Dataset) -> int:
    return int(med["window_tokens"].sum()) if "window_tokens" in med else 0


def group_conditions(med: xr.Dataset, ds: xr.Dataset) -> dict[str, str]:
    """role -> id of the store's component-only (zero) group condition of that role, where the
    mediation group holds it complete."""
    have = set(done(med))
    out = {}
    for cid, kind, group, mode in zip(ds.condition.values, ds["kind"].values, ds["group"].values, ds["mode"].values):
        parts = str(group).split(":")
        if str(kind) == "group" and str(mode) == "zero" and len(parts) == 2 and str(cid) in have:
            out.setdefault(parts[1], str(cid))
    return out
