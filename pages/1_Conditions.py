"""Conditions of one store: ratio to baseline with bootstrap intervals, sweeps, thirds, random controls."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from probes.stats import trial_summary
from workbench import app_data as ad

st.set_page_config(page_title="Conditions", layout="wide")
st.title("Conditions")

path, infos = ad.choose_store()
if path is None:
    st.stop()
ds = ad.cached_results(path)
summary = ad.cached_summary(path)
corpora = [str(c) for c in ds.corpus.values]
corpus = st.sidebar.selectbox("Corpus", corpora)
n_boot = st.sidebar.select_slider("Bootstrap resamples", [200, 500, 1000, 2000, 5000], value=ad.N_BOOT)
intervals = ad.cached_intervals(path, n_boot=n_boot)
st.caption(f"{ad.store_name(path, infos[str(path)])} · corpus **{corpus}** · ratio = perplexity / baseline "
           f"(log scale; 1 = no change) · error bars: paired bootstrap 95% intervals over "
           f"{int((ds['window_tokens'].sel(corpus=corpus) > 0).sum())} windows, {n_boot} resamples")
if intervals is None:
    st.warning("This store has no baseline condition: ratios and intervals need one.")
    st.stop()

table = ad.condition_table(ds, corpus, intervals, summary)
table = table[table["kind"] != "baseline"]
pending = table[~table["complete"]]
if len(pending):
    st.info(f"{len(pending)} condition(s) not computed yet are left out of the charts.")
table = table[table["complete"]]
if table.empty:
    st.info("No ablation condition is complete yet.")
    st.stop()
inf = table[~np.isfinite(table["ratio"])]
if len(inf):
    st.warning("Perplexity overflowed (ratio inf) for: " + "; ".join(inf["label"]) + ". Not drawn; see the table.")
table = table[np.isfinite(table["ratio"])].assign(one=1.0)
table[["low", "high"]] = table[["low", "high"]].where(np.isfinite(table[["low", "high"]]))  # no bar to infinity

kinds = list(dict.fromkeys(table["kind"]))
modes = list(dict.fromkeys(table["mode"]))
roles = sorted({r for rs in table["roles"] for r in rs.split("+") if r})
c1, c2, c3 = st.columns(3)
pick_kinds = c1.multiselect("Kind", kinds, default=[k for k in kinds if k != "random_matched"] or kinds)
pick_modes = c2.multiselect("Mode", modes, default=modes)
pick_roles = c3.multiselect("Role", roles, default=roles)
by_mode_role = table["mode"].isin(pick_modes) & table["roles"].map(
    lambda rs: any(r in pick_roles for r in rs.split("+")))
shown = table[by_mode_role]


def ratio_scale(*frames: pd.DataFrame) -> alt.Scale:
    return alt.Scale(type="log", domain=ad.log_domain(*frames), nice=False)


AXIS = alt.Axis(format="~g", labelOverlap=True)
TIP = ["label", "kind", "mode", "roles", "layers", alt.Tooltip("ratio:Q", format=".4f"),
       alt.Tooltip("low:Q", format=".4f", title="95% low"), alt.Tooltip("high:Q", format=".4f", title="95% high"),
       "qc"]


def unit_rule(axis: str) -> alt.Chart:
    """The no-change line at ratio 1."""
    enc = alt.X("r:Q") if axis == "x" else alt.Y("r:Q")
    return alt.Chart(pd.DataFrame({"r": [1.0]})).mark_rule(strokeDash=[4, 4], color="gray").encode(enc)


# --- every condition ---------------------------------------------------------------------
st.subheader("Perplexity ratio per condition")
bars = shown[shown["kind"].isin(pick_kinds)]
sort_by_ratio = st.toggle("Sort by ratio", value=False)
if bars.empty:
    st.info("No condition matches the filters.")
else:
    order = list(bars.sort_values("ratio", ascending=False)["label"] if sort_by_ratio else bars["label"])
    y = alt.Y("label:N", sort=order, title=None, axis=alt.Axis(labelLimit=420))
    base = alt.Chart(bars).encode(y=y)
    chart = (base.mark_bar(height={"band": 0.7}).encode(
                 x=alt.X("ratio:Q", scale=ratio_scale(bars), axis=AXIS, title="perplexity / baseline"), x2="one:Q",
                 color=alt.Color("kind:N", legend=alt.Legend(orient="top")), tooltip=TIP)
             + base.mark_rule(color="black").encode(x="low:Q", x2="high:Q")
             + unit_rule("x"))
    st.altair_chart(chart.properties(height=alt.Step(22)), width="stretch")

# --- layer sweep -------------------------------------------------------------------------
sweep = shown[shown["kind"] == "sweep"]
if not sweep.empty:
    st.subheader("Layer sweep")
    st.caption("One component (or one whole layer, for skip_layer) ablated at a time.")
    sweep = sweep.assign(layer=sweep["first_layer"].astype(int))
    series = "roles" if sweep["mode"].nunique() == 1 else "series"
    sweep = sweep.assign(series=sweep["roles"] + ", " + sweep["mode"])
    enc = dict(x=alt.X("layer:O", title="layer", axis=alt.Axis(labelAngle=0)),
               color=alt.Color(f"{series}:N", title="role"))
    base = alt.Chart(sweep).encode(**enc)
    chart = (base.mark_line(point=True).encode(y=alt.Y("ratio:Q", scale=ratio_scale(sweep), axis=AXIS,
                                                       title="perplexity / baseline"),
                                               tooltip=TIP)
             + base.mark_rule().encode(y="low:Q", y2="high:Q")
             + unit_rule("y"))
    st.altair_chart(chart.properties(height=320), width="stretch")

# --- thirds ------------------------------------------------------------------------------
thirds = shown[shown["kind"] == "thirds"]
if not thirds.empty:
    st.subheader("Thirds")
    st.caption("Contiguous early / middle / late thirds of each role's layers.")
    thirds = thirds.assign(part=[t or layers for t, layers in zip(thirds["third"], thirds["layers"])],
                           series=thirds["roles"] + ", " + thirds["mode"])
    base = alt.Chart(thirds).encode(x=alt.X("part:N", sort=["early", "middle", "late"], title=None,
                                            axis=alt.Axis(labelAngle=0)),
                                    xOffset="series:N", color=alt.Color("series:N", title="role, mode"))
    chart = (base.mark_bar().encode(y=alt.Y("ratio:Q", scale=ratio_scale(thirds), axis=AXIS,
                                            title="perplexity / baseline"), y2=alt.Y2(datum=1),
                                    tooltip=TIP)
             + base.mark_rule(color="black").encode(y="low:Q", y2="high:Q")
             + unit_rule("y"))
    st.altair_chart(chart.properties(height=300), width="stretch")

# --- random-matched controls -------------------------------------------------------------
trials = shown[shown["kind"] == "random_matched"]
if not trials.empty:
    st.subheader("Random-matched controls")
    st.caption("Each dot is one random draw of the same number of components (one seed); the bar marks "
               "the median, the thin line the range; diamonds are the role groups of that size.")
    matches = ad.matched_groups(table)
    group_ratio = table[table["kind"] == "group"].set_index("label")["ratio"]
    points, spread, versus = [], [], []
    for name, part in trials.groupby("group", sort=False):
        row = f"{int(part['n_targets'].iloc[0])} random from {ad.random_pool(name)}, {part['mode'].iloc[0]}"
        # a fixed vertical spread per seed (golden-ratio steps) keeps overlapping trials apart
        points += [{"row": row, "ratio": r, "what": "trial", "label": lab, "jitter": ((k * 0.618) % 1 - 0.5) * 20}
                   for k, (r, lab) in enumerate(zip(part["ratio"], part["label"]))]
        spread.append({"row": row, **trial_summary(part["ratio"])})
        for label in matches.get(name, []):
            g = float(group_ratio[label])
            points.append({"row": row, "ratio": g, "what": "group", "label": label})
            versus.append({"group": label, "ratio": g, "control": row,
                           "trials below": f"{int((part['ratio'] < g).sum())} of {len(part)}"})
    pts, summ = pd.DataFrame(points), pd.DataFrame(spread)
    y = alt.Y("row:N", title=None, axis=alt.Axis(labelLimit=360))
    scale = ratio_scale(pts, summ)
    x = alt.X("ratio:Q", scale=scale, axis=AXIS, title="perplexity / baseline")
    trial_dots = (alt.Chart(pts[pts["what"] == "trial"]).mark_circle(size=70, opacity=0.6, color="#4c78a8")
                  .encode(y=y, x=x, yOffset="jitter:Q", tooltip=["label", alt.Tooltip("ratio:Q", format=".4f")]))
    box = alt.Chart(summ).encode(y=y)
    chart = (box.mark_rule(color="#4c78a8").encode(x=alt.X("min:Q", scale=scale), x2="max:Q")
             + box.mark_bar(height=14, opacity=0.25, color="#4c78a8").encode(x="q25:Q", x2="q75:Q")
             + box.mark_tick(thickness=3, size=26, color="black").encode(
                 x="median:Q", tooltip=[alt.Tooltip("median:Q", format=".4f")])
             + trial_dots
             + alt.Chart(pts[pts["what"] == "group"]).mark_point(shape="diamond", size=180, filled=True).encode(
                 y=y, x=x, color=alt.Color("label:N", title="group condition", scale=alt.Scale(scheme="dark2"),
                                 legend=alt.Legend(orient="top", columns=1, labelLimit=400)),
                 tooltip=["label", alt.Tooltip("ratio:Q", format=".4f")])
             + unit_rule("x"))
    st.altair_chart(chart.properties(height=alt.Step(70)), width="stretch")
    four = {k: st.column_config.NumberColumn(format="%.4f")
            for k in ("median", "q25", "q75", "iqr", "min", "max", "ratio")}
    st.dataframe(summ.rename(columns={"row": "control"}), hide_index=True, column_config=four)
    if versus:
        st.dataframe(pd.DataFrame(versus), hide_index=True, column_config=four)

with st.expander("Table"):
    cols = ["label", "kind", "mode", "roles", "layers", "ratio", "low", "high", "perplexity", "qc"]
    st.dataframe(shown[cols], hide_index=True,
                 column_config={k: st.column_config.NumberColumn(format="%.4f") for k in ("ratio", "low", "high")})
