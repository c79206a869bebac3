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


def pooled_ratio_texts(ds: xr.Dataset) -> dict[str, str]:
    """Condition id -> perplexity ratio to the baseline pooled over corpora, with its paired
    block-bootstrap interval, or a note saying why there is none (the report's rule: under
    ``MIN_WINDOWS`` windows the blocks are too few to resample)."""
    from workbench import report

    ids = [str(c) for c in ds.condition.values]
    if "baseline" not in ids or not bool(ds["complete"].sel(condition="baseline")):
        return {}
    p = report.pooled(ds)
    done = [c for c, ok in zip(ids, ds["complete"].values) if ok]
    note = None
    if report.ppl_power(p):
        note = f"no interval: {len(p.tokens)} windows, needs {report.MIN_WINDOWS}"
    out = {}
    for cid, (r, lo, hi) in report.ratios(ds, p, done).items():
        out[cid] = f"{report._fmt(r)} ({note})" if note else report._ci((r, lo, hi))
    return out


def task_drop_texts(ds: xr.Dataset) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """(task -> baseline line, condition id -> task -> accuracy drop with its paired interval, or
    the point with a note where the task cannot carry one: too few items or a baseline not above
    chance, the report's ``task_power``)."""
    from probes import stats
    from workbench import report

    if "correct" not in ds or "baseline" not in ds.condition.values:
        return {}, {}
    acc = ds["correct"].sel(metric="acc").load() if "metric" in ds["correct"].dims else ds["correct"].load()
    drops = stats.accuracy_drops(acc, n_boot=report.N_BOOT)
    heads, rows = {}, {}
    for task in [str(t) for t in ds.task.values]:
        base = acc.sel(condition="baseline", task=task).values
        n = int(np.isfinite(base).sum())
        base_acc = float(np.nanmean(base)) if n else float("nan")
        chance = float(ds["chance"].sel(task=task))
        why = report.task_power(n, base_acc, chance) if n else "no items scored"
        if 0 < n < report.MIN_ITEMS:
            why = f"{n} items, needs {report.MIN_ITEMS}"
        heads[task] = f"baseline {report._fmt(base_acc)}, chance {chance:.2f}, {n} items"
        for cid, ok in zip(ds.condition.values, ds["complete"].values):
            if str(cid) == "baseline" or not ok:
                continue
            d = drops.sel(condition=cid, task=task)
            t = (float(d["acc_drop"]), float(d["low"]), float(d["high"]))
            rows.setdefault(str(cid), {})[task] = (f"{report._fmt(t[0])} (no interval: {why})" if why
                                                   else report._ci(t))
    return heads, rows

