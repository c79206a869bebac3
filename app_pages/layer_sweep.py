"""Layer sweep: one component (or whole layer) removed at a time, as a layer x role heatmap;
click a cell for that condition's details."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from workbench import app_data as ad
from workbench.app import charts
from workbench.app import diagnostics as dg

st.title("Layer sweep")
sel = ad.selection()
path = ad.one_store(sel)
ad.warn_store(sel, path)
ds = ad.cached_results(path)
summary = ad.cached_summary(path)
intervals = ad.cached_intervals(path)
corpora = [str(c) for c in ds.corpus.values]
task_metrics = ad.task_metrics(ds)
diag = ad.cached_diagnostics(path)
diagnostics = [v for v in dg.LAYER_CURVES if diag is not None and v in diag
               and set(diag[v].dims) == {"condition", "layer"}]

metrics = ["perplexity ratio"] + (["accuracy drop"] if task_metrics else []) + diagnostics
c1, c2, c3 = st.columns(3)
metric = c1.selectbox("Value", metrics, format_func=lambda m: dg.LAYER_CURVES.get(m, m),
                      help="Accuracy drop appears once the store has task results (`workbench study`); "
                           "per-layer diagnostics (CKA, norms, lens) once `workbench diagnose` has run on it.")
if not task_metrics or diag is None:
    missing = [w for w, gone in (("task results (`workbench study`)", not task_metrics),
                                 (f"diagnostics (`workbench diagnose {path}`)", diag is None)) if gone]
    st.caption("This store has no " + " and no ".join(missing) + ", so only the values it holds are offered.")
sweep_ids = set(summary.loc[(summary["kind"] == "sweep") & summary["complete"], "id"])
if not sweep_ids:
    st.info("This store has no completed layer-sweep conditions (`workbench run --preset sweep` or "
            "`--preset study` makes them).")
    st.stop()
if intervals is None:
    st.warning("This store has no baseline condition: ratios need one.")
    st.stop()

if metric == "perplexity ratio":
    corpus = c2.selectbox("Corpus", corpora)
    table = ad.condition_table(ds, corpus, intervals, summary)
    cells = table[table["id"].isin(sweep_ids)].copy()
    cells["value"] = cells["ratio"]
    finite = cells["value"][np.isfinite(cells["value"].astype(float)) & (cells["value"] > 0)]
    top = min(float(finite.max()) if len(finite) else 2.0, ad.OVERFLOW)
    low_end = float(finite.min()) if len(finite) else 0.5
    # symmetric about 1 on the log scale (x0.93 and x1.07 equally pale), clamped: one destroyed model
    # (x1e36) must not wash every other cell out to white
    span = max(top, 1 / min(low_end, 0.999), 1.001)
    colour = alt.Color("value:Q", title="perplexity / baseline",
                       scale=alt.Scale(type="log", scheme="redblue", reverse=True, domainMid=1.0, clamp=True,
                                       domain=[1 / span, span]),
                       legend=alt.Legend(orient="right", format=".6~r"))
    caption = (f"perplexity with that component removed / baseline, corpus **{corpus}** "
               "(log colour scale: red worse, blue better than the baseline"
               + (f"; colours saturate at x{ad.OVERFLOW:g}, the numbers are exact" if finite.max() > ad.OVERFLOW
                  else "") + ")")
elif metric == "accuracy drop":
    task = c2.selectbox("Task", [str(t) for t in ds["task"].values])
    which = c3.selectbox("Metric", task_metrics)
    acc = ad.cached_accuracy(path, which)
    table = ad.condition_table(ds, corpora[0], intervals, summary)
    mine = acc[acc["task"] == task].set_index("id")
    cells = table[table["id"].isin(sweep_ids)].copy()
    cells["value"] = cells["id"].map(mine["drop"])
    cells["low"], cells["high"] = cells["id"].map(mine["drop_low"]), cells["id"].map(mine["drop_high"])
    colour = alt.Color("value:Q", title="accuracy drop",
                       scale=alt.Scale(scheme="redblue", reverse=True, domainMid=0.0))
    caption = (f"baseline accuracy (`{which}`) minus accuracy with that component removed, task **{task}** "
               "(red: worse; the hover gives the paired 95% interval over items)")
else:
    layers = [int(x) for x in diag["layer"].values]
    layer = c2.selectbox("Measured at layer", layers[::-1])
    table = ad.condition_table(ds, corpora[0], intervals, summary)
    values = diag[metric].sel(layer=layer).to_series()
    cells = table[table["id"].isin(sweep_ids)].copy()
    cells["value"] = cells["id"].map(values.rename(index=str))
    cells["low"] = cells["high"] = np.nan
    colour = alt.Color("value:Q", title=dg.LAYER_CURVES.get(metric, metric), scale=alt.Scale(scheme="viridis"))
    n_have = int(np.isfinite(cells["value"].astype(float)).sum())
    caption = (f"{dg.LAYER_CURVES.get(metric, metric)} measured at layer {layer} with that component removed "
               f"({n_have} of {len(cells)} sweep conditions diagnosed)")

cells = cells.assign(layer=cells["first_layer"].astype(int),
                     row=[ad.sweep_row(r, m) for r, m in zip(cells["roles"], cells["mode"])])
cells = cells[np.isfinite(cells["value"].astype(float))]
if cells.empty:
    st.info("No sweep condition has this value yet.")
    st.stop()
cells["text"] = [ad.short_number(v, metric == "perplexity ratio") for v in cells["value"]]
st.caption(caption + ". Empty cells: the model has no such component there. Click a cell for its details.")
pick = alt.selection_point(fields=["id"], name="cell", on="click", clear="dblclick")
rows = list(dict.fromkeys(cells.sort_values("order")["row"]))
base = alt.Chart(cells).encode(x=alt.X("layer:O", title="layer", axis=alt.Axis(labelAngle=0)),
                               y=alt.Y("row:N", sort=rows, title=None, axis=alt.Axis(labelLimit=0)))
tip = ["label", alt.Tooltip("value:Q", format=".4f"), alt.Tooltip("low:Q", format=".4f", title="95% low"),
       alt.Tooltip("high:Q", format=".4f", title="95% high"), "qc"]
chart = (base.mark_rect(stroke="white", strokeWidth=1).encode(
             color=colour, tooltip=tip,
             opacity=alt.condition(pick, alt.value(1.0), alt.value(0.35)))
         + base.mark_text(fontSize=10).encode(text="text:N", color=alt.value("black"))).add_params(pick)
cols = ["label", "roles", "mode", "layer", "value", "low", "high", "qc", "id"]
event = charts.show(chart.properties(height=alt.Step(40), width=alt.Step(64)), f"{Path(path).stem} layer sweep {metric}", cells[cols],
                    on_select="rerun", selection_mode="cell", key="sweep_heatmap")

clicked = [p.get("id") for p in (event.selection.get("cell") or [])] if event else []
ordered = cells.sort_values(["row", "layer"])
options = ad.choices(ordered["id"], ordered["label"])
ids = list(options.values())
default = ids.index(clicked[0]) if clicked and clicked[0] in ids else 0
chosen = options[st.selectbox("Condition details", list(options), index=default)]
row = summary.set_index("id").loc[chosen]
detail = pd.DataFrame({"corpus": corpora,
                       "ratio": [row[f"ratio:{c}"] for c in corpora],
                       "95% low": intervals["low"].sel(condition=chosen).values,
                       "95% high": intervals["high"].sel(condition=chosen).values,
                       "perplexity": [row[f"perplexity:{c}"] for c in corpora],
                       "bits_per_byte": [row[f"bits_per_byte:{c}"] for c in corpora]})
st.markdown(f"**{row['label']}** · kind {row['kind']} · mode {row['mode']} · QC **{row['qc']}** · "
            f"{int(ds['n_edits'].sel(condition=chosen))} edits · "
            f"{float(ds['elapsed_s'].sel(condition=chosen)):.1f} s")
st.dataframe(detail, hide_index=True, column_config={c: st.column_config.NumberColumn(format="%.4f")
                                                     for c in ("ratio", "95% low", "95% high", "bits_per_byte")})
