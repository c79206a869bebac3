"""Perplexity and tasks: group ablations per corpus (component-only beside whole-layer), with
bootstrap intervals, and per-task accuracy when the store has it."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from workbench import app_data as ad
from workbench.app import charts
from workbench.app.palette import ROLE_COLOURS, scale

MODE_TITLES = {"zero": "zero: component only", "mean": "mean: component only",
               "resample": "resample: component only", "skip_layer": "skip_layer: whole layer (mixer + MLP)"}

st.title("Perplexity and tasks")
sel = ad.selection()
path = ad.one_store(sel)
ad.warn_store(sel, path)
ds = ad.cached_results(path)
summary = ad.cached_summary(path)
corpora = [str(c) for c in ds.corpus.values]
c1, c2 = st.columns([3, 1])
pick_corpora = c1.multiselect("Corpora", corpora, default=corpora)
n_boot = c2.selectbox("Bootstrap resamples", [200, 500, 1000, 2000, 5000], index=3)
intervals = ad.cached_intervals(path, n_boot=n_boot)

st.subheader("Group ablations: perplexity / baseline")
st.caption("Every component of one role removed at once. `zero` removes the component only; `skip_layer` "
           "removes whole layers (the mixer and its MLP). Log scale, 1 = no change; error bars: paired "
           f"bootstrap 95% intervals over blocks of 8 contiguous windows ({n_boot} resamples; adjacent windows "
           "share text, so blocks, not single windows, are resampled).")
if intervals is None:
    st.warning("This store has no baseline condition: ratios and intervals need one.")
elif not pick_corpora:
    st.info("Pick at least one corpus.")
else:
    tables = [ad.condition_table(ds, c, intervals, summary).assign(corpus=c) for c in pick_corpora]
    groups = [t[(t["kind"] == "group") & t["complete"]] for t in tables]
    groups = charts.finite_bars(pd.concat(groups))
    if groups.empty:
        st.info("No group condition is complete in this store yet (`workbench run --preset groups` or "
                "`--preset study` makes them).")
    else:
        groups = groups.assign(group_role=[ad.group_role(r) for _, r in groups.iterrows()],
                               mode_title=[MODE_TITLES.get(m, m) for m in groups["mode"]], one=1.0)
        roles = [r for r in ROLE_COLOURS if r in set(groups["group_role"])]
        x = alt.X("ratio:Q", scale=charts.ratio_scale(groups), axis=charts.AXIS, title="perplexity / baseline")
        y = alt.Y("group_role:N", sort=roles, title=None)
        tip = ["label", "corpus", "mode", "layers", alt.Tooltip("ratio:Q", format=".4f"),
               alt.Tooltip("low:Q", format=".4f", title="95% low"),
               alt.Tooltip("high:Q", format=".4f", title="95% high"), "qc"]
        base = alt.Chart().encode(y=y)
        layer = alt.layer(
            base.mark_bar(height={"band": 0.7}).encode(
                x=x, x2="one:Q", color=alt.Color("group_role:N", title="role", scale=scale(ROLE_COLOURS, roles),
                                                 legend=alt.Legend(**charts.LEGEND)), tooltip=tip),
            base.mark_rule(color="black", strokeWidth=1.5).encode(x="low:Q", x2="high:Q"),
            alt.Chart().mark_rule(strokeDash=[4, 4], color="gray").encode(x=alt.datum(1.0)),
            data=groups).properties(height=alt.Step(30), width=420)
        modes = [MODE_TITLES[m] for m in MODE_TITLES if m in set(groups["mode"])]
        chart = layer.facet(row=alt.Row("corpus:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left")),
                            column=alt.Column("mode_title:N", title=None, sort=modes,
                                              header=alt.Header(labelLimit=0, labelFontSize=12)))
        cols = ["corpus", "label", "mode", "group_role", "layers", "ratio", "low", "high", "perplexity", "qc"]
        charts.show(chart, "group ablations",
                    groups[cols])
        if set(groups["mode"]) == {"zero"} or "skip_layer" not in set(groups["mode"]):
            st.caption("This store has no `skip_layer` groups; run a plan with `mode: skip_layer` to set "
                       "whole-layer removal beside component removal.")
    everything = pd.concat(tables)
    inf = everything[everything["complete"] & ~np.isfinite(everything["ratio"]) & (everything["kind"] != "baseline")]
    if len(inf):
        st.warning("Perplexity is not finite (inf or NaN) for: " + "; ".join(sorted(set(inf["label"])))
                   + ". Not drawn; see the table.")
    with st.expander("Every condition"):
        cols = ["corpus", "label", "kind", "mode", "roles", "layers", "ratio", "low", "high", "perplexity", "qc"]
        st.dataframe(everything[cols], hide_index=True,
                     column_config={k: st.column_config.NumberColumn(format="%.4f") for k in ("ratio", "low", "high")})
        charts.table_download(everything[cols], "conditions")

st.subheader("Task accuracy")
acc = ad.accuracy_table(ds)
if acc is None:
    st.info("This store has no task results. `workbench study` evaluates multiple-choice tasks under each "
            "condition and writes `accuracy(condition, task)` and `correct(condition, task, item)` into the "
            "store; this section charts them once present.")
else:
    kinds = summary.set_index("id")["kind"]
    shown = acc[acc["id"].map(kinds).isin(["baseline", "group"])].copy()
    shown = shown[np.isfinite(shown["accuracy"])]
    base = alt.Chart(shown).encode(y=alt.Y("label:N", title=None, axis=alt.Axis(labelLimit=0)))
    chart = (base.mark_bar().encode(x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1])),
                                    color=alt.Color("task:N", legend=alt.Legend(**charts.LEGEND)),
                                    yOffset="task:N",
                                    tooltip=["label", "task", alt.Tooltip("accuracy:Q", format=".3f"),
                                             alt.Tooltip("drop:Q", format=".3f")])
             + base.mark_rule(color="black").encode(x="low:Q", x2="high:Q", yOffset="task:N"))
    charts.show(chart, "task accuracy", shown)
    st.caption("Accuracy per task for the baseline and each group ablation; error bars: bootstrap 95% "
               "intervals over items.")
