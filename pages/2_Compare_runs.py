"""Compare stores (e.g. a hybrid and its Transformer control) on conditions of the same kind and roles."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from workbench import app_data as ad

st.set_page_config(page_title="Compare runs", layout="wide")
st.title("Compare runs")

folder = ad.sidebar_runs_dir()
stores = ad.find_stores(folder)
if not stores:
    ad.explain_no_stores(folder)
    st.stop()
infos = {str(p): ad.cached_info(p) for p in stores}
readable = [str(p) for p in stores if not infos[str(p)]["error"]]
if len(readable) < 2:
    st.info(f"Comparing needs two or more readable stores; `{folder}` has {len(readable)}.")
    st.stop()

names = {p: ad.store_name(p, infos[p]) for p in readable}
if len(set(names.values())) < len(names):  # same file name in two subfolders: use the paths
    names = {p: str(p) for p in readable}
current = st.session_state.get("store")
default = ([current] if current in readable else []) + [p for p in readable if p != current]
picked = st.multiselect("Stores to compare", readable, default=default[:2], format_func=names.get)
if len(picked) < 2:
    st.info("Pick two or more stores.")
    st.stop()

shared = [c for c in infos[picked[0]]["corpora"].split(", ")
          if all(c in infos[p]["corpora"].split(", ") for p in picked[1:])]
if not shared:
    st.warning("These stores share no corpus, so their ratios are not comparable. Pick stores "
               "evaluated on at least one common corpus.")
    st.stop()
corpus = st.sidebar.selectbox("Corpus", shared)

tables, protocols, n_layers = {}, {}, {}
for p in picked:
    ds = ad.cached_results(p)
    intervals = ad.cached_intervals(p)
    if intervals is None:
        st.warning(f"{names[p]} has no baseline; left out.")
        continue
    tables[names[p]] = ad.condition_table(ds, corpus, intervals, ad.cached_summary(p))
    protocols[names[p]] = ds.attrs.get("protocol", "")
    n_layers[names[p]] = ds.attrs.get("n_layers")
if len(set(protocols.values())) > 1:
    st.warning("These stores used different evaluation protocols (context / stride); ratios may not "
               "be comparable: " + "; ".join(f"{k}: {v}" for k, v in protocols.items()))
if len(tables) < 2:
    st.stop()

long = ad.comparison_table(tables)
long = long[np.isfinite(long["ratio"])]
kinds = [k for k in ("group", "thirds", "random_matched", "custom") if k in set(long["kind"])]
pick = st.multiselect("Kind", kinds, default=kinds)
both = long.groupby("key")["store"].transform("nunique") >= 2
only_shared = st.toggle("Only conditions every picked store has", value=False)
shown = long[long["kind"].isin(pick) & (both if only_shared else True)]

AXIS = alt.Axis(format="~g", labelOverlap=True)


def ratio_scale(*frames: pd.DataFrame) -> alt.Scale:
    return alt.Scale(type="log", domain=ad.log_domain(*frames), nice=False)


st.subheader("Ratio to baseline, side by side")
st.caption(f"corpus **{corpus}** · perplexity / the store's own baseline (log scale) · error bars: "
           "bootstrap 95% intervals · random controls: median of the trials")
if shown.empty:
    st.info("No condition matches.")
else:
    order = list(dict.fromkeys(shown["key"]))
    base = alt.Chart(shown.assign(one=1.0)).encode(
        y=alt.Y("key:N", sort=order, title=None, axis=alt.Axis(labelLimit=360)), yOffset="store:N")
    tip = ["store", "key", alt.Tooltip("ratio:Q", format=".4f"), alt.Tooltip("low:Q", format=".4f"),
           alt.Tooltip("high:Q", format=".4f"), "n"]
    chart = (base.mark_bar().encode(x=alt.X("ratio:Q", scale=ratio_scale(shown), axis=AXIS,
                                            title="perplexity / baseline"), x2="one:Q",
                                    color=alt.Color("store:N", legend=alt.Legend(orient="top")), tooltip=tip)
             + base.mark_rule(color="black").encode(x="low:Q", x2="high:Q")
             + alt.Chart(pd.DataFrame({"r": [1.0]})).mark_rule(strokeDash=[4, 4], color="gray").encode(x="r:Q"))
    st.altair_chart(chart.properties(height=alt.Step(14)), width="stretch")
    wide = shown.pivot_table(index="key", columns="store", values="ratio", sort=False).reset_index()
    st.dataframe(wide, hide_index=True,
                 column_config={s: st.column_config.NumberColumn(format="%.4f") for s in tables})

# Sweeps of models of different depths line up by relative depth, not layer index.
sweeps = []
for name, t in tables.items():
    s = t[(t["kind"] == "sweep") & t["complete"] & np.isfinite(t["ratio"])]
    # the model's depth when the store records it; older stores: the deepest layer in the plan
    deepest = (n_layers[name] - 1 if n_layers.get(name) else
               np.nanmax(t["layers"].str.findall(r"\d+").explode().astype(float).to_numpy(), initial=0))
    if not s.empty:
        sweeps.append(s.assign(store=name, depth=s["first_layer"] / max(deepest, 1),
                               series=s["roles"] + ", " + s["mode"]))
if sweeps:
    st.subheader("Layer sweeps by relative depth")
    st.caption("layer / last layer of the model; one line per store and role.")
    sw = pd.concat(sweeps)
    chart = alt.Chart(sw).mark_line(point=True).encode(
        x=alt.X("depth:Q", title="relative depth", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("ratio:Q", scale=ratio_scale(sw), axis=AXIS, title="perplexity / baseline"),
        color=alt.Color("store:N", legend=alt.Legend(orient="top")),
        strokeDash=alt.StrokeDash("series:N", title="role"),
        detail="series:N", tooltip=["store", "label", alt.Tooltip("ratio:Q", format=".4f")])
    st.altair_chart(chart.properties(height=320), width="stretch")
