"""Tables from a run store (for `workbench show`, reports and the app)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from workbench.metrics import safe_exp


def _qc(complete: bool, fired: bool, changed: np.ndarray, kind: str, loss: np.ndarray) -> str:
    """pending | NOT FIRED (an edit did not run) | NON-FINITE (a loss is NaN or inf) |
    NO EFFECT (the output equals the baseline's on some corpus) | ok."""
    if not complete:
        return "pending"
    if not fired:
        return "NOT FIRED"
    if not np.isfinite(loss).all():
        return "NON-FINITE"
    if kind != "baseline" and (changed == 0).any():
        return "NO EFFECT"
    return "ok"


def summary_frame(ds: xr.Dataset) -> pd.DataFrame:
    """One row per condition: labels, loss / perplexity / ratio to baseline per corpus, QC."""
    ds = ds.load()
    corpora = [str(c) for c in ds.corpus.values]
    cond_ids = list(ds.condition.values)
    base = ds["loss"].sel(condition="baseline").values if "baseline" in cond_ids else None
    rows = []
    for i, cid in enumerate(cond_ids):
        c = ds.isel(condition=i)
        rec = {"id": str(cid), "label": str(c.label.values), "kind": str(c.kind.values),
               "mode": str(c.mode.values), "group": str(c.group.values), "roles": str(c.roles.values),
               "layers": str(c.layers.values), "draw_seed": int(c.draw_seed.values),
               "donor_seed": int(c.donor_seed.values),
               "complete": bool(c.complete.values)}
        for j, name in enumerate(corpora):
            loss = float(c["loss"].values[j])
            rec[f"loss:{name}"] = loss
            rec[f"perplexity:{name}"] = float(c["perplexity"].values[j])
            rec[f"bits_per_byte:{name}"] = float(c["bits_per_byte"].values[j])
            rec[f"ratio:{name}"] = safe_exp(loss - base[j]) if base is not None and not np.isnan(loss) else np.nan
        rec["qc"] = _qc(rec["complete"], bool(c.qc_fired.values), c.qc_changed.values, rec["kind"],
                        c["loss"].values)
        rows.append(rec)
    return pd.DataFrame(rows)
