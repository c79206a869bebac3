"""Runs: every store in the runs folder, with provenance, QC, size, completeness and integrity."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from workbench import app_data as ad
from workbench.app import charts

METRICS = ("ratio", "perplexity", "bits_per_byte", "loss")

st.title("Runs")
st.caption("Run stores written by `workbench run`, found in the folder named in the sidebar. "
           "Pick one or several stores in the sidebar; the other pages chart them.")
sel = ad.selection()
if not sel.stores:
    ad.explain_no_stores(sel.folder)
    st.stop()

listing = pd.DataFrame([sel.infos[p] for p in sel.stores])
listing["status"] = [("unreadable" if r.error else "damaged" if r.damaged else "being written" if r.writing
                      else "complete" if r.complete else "partial") for r in listing.itertuples()]
listing["problem"] = [r.error or r.damaged for r in listing.itertuples()]
columns = ["store", "status", "model", "model_type", "conditions", "qc", "corpora", "size_mb", "created",
           "problem", "path"]
st.subheader(f"{len(listing)} store(s) in `{sel.folder}`")
st.dataframe(listing[columns], hide_index=True, column_config={
    "conditions": st.column_config.TextColumn("conditions (complete/total)"),
    "size_mb": st.column_config.NumberColumn("size (MB)", format="%.2f"),
    "problem": st.column_config.TextColumn("problem", width="large")})
charts.table_download(listing[columns], "stores")
bad = listing[listing["error"].astype(bool)]
if len(bad):
    st.error(f"{len(bad)} store(s) cannot be read and are left out of every page: "
             + "; ".join(f"`{r.store}`: {r.error}" for r in bad.itertuples()))
damaged = listing[listing["damaged"].astype(bool)]
if len(damaged):
    st.warning("Damaged stores (conditions marked complete whose data are unreadable or missing): "
               + "; ".join(f"`{r.store}`: {r.damaged}" for r in damaged.itertuples())
               + ". Those conditions are left out of the charts; rerun the same `workbench run` command "
                 "to recompute them.")

for path in ad.need_stores(sel):
    info = sel.infos[path]
    ds = ad.cached_results(path)
    summary = ad.cached_summary(path)
    corpora = [str(c) for c in ds.corpus.values]
    st.header(sel.name(path))
    done, total = int(summary["complete"].sum()), len(summary)
    cols = st.columns(5)
    cols[0].metric("model", info["model_type"] or info["model"])
    cols[1].metric("conditions complete", f"{done}/{total}")
    cols[2].metric("corpora", ", ".join(corpora))
    cols[3].metric("tokens scored", f"{int((ds['n_tokens'] - 1).sum()):,}")
    cols[4].metric("size", f"{info['size_mb']:.1f} MB")
    ad.warn_store(sel, path)
    if "baseline" not in set(summary["id"]):
        st.warning("This store has no baseline condition, so ratios to baseline are not available.")
    with st.expander("Provenance"):
        st.dataframe(ad.provenance_table(ds), hide_index=True)
        plan = ad.plan_of(ds)
        if plan:
            st.caption(f"plan **{plan.get('name', '')}**, {len(plan.get('conditions', []))} conditions")
            st.json(plan, expanded=False)
    failed = ~summary["qc"].isin(["ok", "pending"])
    if failed.any():
        st.error(f"QC: {int(failed.sum())} condition(s) flagged "
                 f"({', '.join(sorted(set(summary.loc[failed, 'qc'])))}). NOT FIRED: the edit never ran; "
                 "NO EFFECT: the output is identical to the baseline's; NON-FINITE: a loss is NaN or inf; "
                 "DAMAGED: the stored data are unreadable. Their numbers do not measure the ablation.")
    metric_cols = [f"{m}:{c}" for m in METRICS for c in corpora]
    table = summary[["label", "kind", "mode", "roles", "layers", *metric_cols, "qc", "id"]]
    st.dataframe(table, hide_index=True, height=min(38 + 35 * len(table), 420), key=f"summary:{path}",
                 column_config={c: st.column_config.NumberColumn(format="%.2f" if c.startswith("perplexity")
                                                                 else "%.4f") for c in metric_cols})
    charts.table_download(table, f"summary {sel.name(path)}")
    st.caption("ratio = perplexity / baseline perplexity on the same corpus (1 = no change).")
