"""Perplexity and tasks: group ablations per corpus (component-only beside whole-layer), with
the report's paired block-bootstrap intervals, and per-task accuracy, accuracy drops and
per-item results when the store has them."""

from __future__ import annotations

from pathlib import Path

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
           "removes whole layers (the mixer and its MLP). Log scale per column, 1 = no change; error bars: the "
           f"report's paired bootstrap 95% intervals over blocks of contiguous windows ({n_boot} resamples; 8 "
           "windows a block, fewer below 80 windows; adjacent windows share text, so blocks are resampled).")
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
        groups = ad.clip_ratios(groups.assign(
            group_role=[ad.group_role(r) for _, r in groups.iterrows()],
            mode_title=[MODE_TITLES.get(m, m) for m in groups["mode"]], one=1.0))
        roles = [r for r in ROLE_COLOURS if r in set(groups["group_role"])]
        tip = ["label", "corpus", "mode", "layers", alt.Tooltip("true_ratio:Q", format=".4~g", title="ratio"),
               alt.Tooltip("low:Q", format=".4f", title="95% low"),
               alt.Tooltip("high:Q", format=".4f", title="95% high"), "qc"]
        modes = [MODE_TITLES[m] for m in MODE_TITLES if m in set(groups["mode"])]
        # one chart per mode: whole-layer removal is often orders of magnitude worse, and a shared
        # axis would flatten the component-only bars
        panels = []
        for title in modes:
            part = groups[groups["mode_title"] == title]  # its own axis range; the data stay one table
            x = alt.X("ratio:Q", scale=charts.ratio_scale(part), axis=charts.AXIS, title="perplexity / baseline")
            y = alt.Y("group_role:N", sort=roles, title=None)
            base = alt.Chart().encode(y=y)
            layer = alt.layer(
                base.mark_bar(height={"band": 0.7}).encode(
                    x=x, x2="one:Q", color=alt.Color("group_role:N", title="role", scale=scale(ROLE_COLOURS, roles),
                                                     legend=alt.Legend(**charts.LEGEND)), tooltip=tip),
                base.mark_rule(color="black", strokeWidth=1.5).encode(x="low:Q", x2="high:Q"),
                base.mark_text(align="right", dx=-4, fontSize=10).encode(x="ratio:Q", text="overflow_text:N"),
                alt.Chart().mark_rule(strokeDash=[4, 4], color="gray").encode(x=alt.datum(1.0)),
                data=groups).transform_filter(alt.datum.mode_title == title).properties(height=alt.Step(30),
                                                                                         width=280)
            panels.append(layer.facet(row=alt.Row("corpus:N", title=None,
                                                  header=alt.Header(labelAngle=0, labelAlign="left")),
                                      title=title))
        chart = alt.hconcat(*panels).resolve_scale(color="shared")
        cols = ["corpus", "label", "mode", "group_role", "layers", "true_ratio", "low", "high", "perplexity", "qc"]
        charts.show(chart, f"{Path(path).stem} group ablations", groups[cols].rename(columns={"true_ratio": "ratio"}))
        notes = " ".join(x for x in (ad.overflow_caption(groups), ad.interval_caption(groups)) if x)
        if notes:
            st.caption(notes)
        if "skip_layer" not in set(groups["mode"]):
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
metrics = ad.task_metrics(ds)
if not metrics:
    st.info("This store has no task results. `workbench study` evaluates multiple-choice tasks under each "
            "condition and writes `accuracy(condition, task, metric)` and `correct(condition, task, item, metric)` "
            "into the store; this section charts them once present.")
    st.stop()
metric = st.radio("Metric", metrics, horizontal=True, key="task_metric",
                  help="acc: the choice with the highest summed log-likelihood; acc_norm: per byte of the choice "
                       "(lm-evaluation-harness conventions).")
acc = ad.cached_accuracy(path, metric, n_boot)
kinds = summary.set_index("id")["kind"]
done = set(summary.loc[summary["complete"], "id"])
shown = acc[acc["id"].map(kinds).isin(["baseline", "group"]) & acc["id"].isin(done)].copy()
shown = shown[np.isfinite(shown["accuracy"])]
tip = ["label", "task", alt.Tooltip("accuracy:Q", format=".3f"), alt.Tooltip("low:Q", format=".3f", title="95% low"),
       alt.Tooltip("high:Q", format=".3f", title="95% high"), alt.Tooltip("drop:Q", format=".3f"), "items"]
order = list(dict.fromkeys(shown.sort_values("id", key=lambda s: s != "baseline", kind="stable")["label"]))
base = alt.Chart(shown).encode(y=alt.Y("label:N", title=None, sort=order, axis=alt.Axis(labelLimit=0)),
                               yOffset="task:N")
chart = (base.mark_bar().encode(x=alt.X("accuracy:Q", title=f"accuracy ({metric})", scale=alt.Scale(domain=[0, 1]),
                                          axis=alt.Axis(tickCount=5, format=".1f")),
                                color=alt.Color("task:N", legend=alt.Legend(**charts.LEGEND)), tooltip=tip)
         + base.mark_rule(color="black").encode(x="low:Q", x2="high:Q"))
charts.show(chart, f"{Path(path).stem} task accuracy {metric}", shown)
st.caption(f"`{metric}` per task for the baseline and each group ablation; error bars: bootstrap 95% intervals "
           "over items.")

drops = shown[shown["id"] != "baseline"].copy()
if len(drops):
    st.markdown("**Accuracy drop against the baseline** (baseline minus ablated; right of 0: worse)")
    tip = ["label", "task", alt.Tooltip("drop:Q", format=".3f"), alt.Tooltip("drop_low:Q", format=".3f", title="95% low"),
           alt.Tooltip("drop_high:Q", format=".3f", title="95% high"), "items"]
    base = alt.Chart(drops).encode(y=alt.Y("label:N", title=None, axis=alt.Axis(labelLimit=0)), yOffset="task:N")
    chart = (base.mark_point(filled=True, size=60).encode(
                 x=alt.X("drop:Q", title="accuracy drop (baseline minus ablated)", scale=alt.Scale(domain=[-1, 1]),
                         axis=alt.Axis(tickCount=5)),
                 color=alt.Color("task:N", legend=alt.Legend(**charts.LEGEND)), tooltip=tip)
             + base.mark_rule().encode(x="drop_low:Q", x2="drop_high:Q", color="task:N")
             + alt.Chart().mark_rule(strokeDash=[4, 4], color="gray").encode(x=alt.datum(0)))
    charts.show(chart, f"{Path(path).stem} accuracy drops {metric}", drops)
    st.caption("Error bars: paired bootstrap 95% intervals over items (the same items for the baseline and the "
               "ablation), as in the report. An interval that covers 0 is no evidence of a drop.")

st.markdown("**Item by item**")
done_ids = [i for i in summary["id"] if i in done and i != "baseline"]
if "correct" not in ds or "baseline" not in done or not done_ids:
    st.info("Per-item results need `correct(condition, task, item)` and a completed baseline.")
else:
    i1, i2 = st.columns(2)
    options = ad.choices(done_ids, summary.set_index("id").loc[done_ids, "label"])
    cond = options[i1.selectbox("Ablation", list(options), key="item_condition")]
    task = i2.selectbox("Task", [str(t) for t in ds["task"].values], key="item_task")
    items = ad.item_table(ds, task, cond, metric)
    counts = items["change"].value_counts()
    st.caption(f"{len(items)} items of `{task}`: " + ", ".join(f"{k} {int(counts.get(k, 0))}" for k in
               ("lost", "gained", "kept right", "kept wrong")) + " (lost: right under the baseline, wrong ablated).")
    st.dataframe(items, hide_index=True)
