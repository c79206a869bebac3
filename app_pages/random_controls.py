"""Random controls: every random draw of a matched size against the targeted group, for each
picked store (a hybrid beside its Transformer), medians marked."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from probes.stats import trial_summary
from workbench import app_data as ad
from workbench.app import charts
from workbench.app.palette import ROLE_COLOURS, scale

st.title("Random controls")
st.caption("A random-matched control removes as many components as a role group, drawn at random (one draw "
           "per seed). If the group hurts more than most draws, the role matters more than its size.")
sel = ad.selection()
picked = ad.need_stores(sel)
for p in picked:
    ad.warn_store(sel, p)
shared = [c for c in sel.infos[picked[0]]["corpora"].split(", ")
          if all(c in sel.infos[p]["corpora"].split(", ") for p in picked[1:])]
if not shared:
    st.warning("The picked stores share no corpus; pick stores evaluated on a common corpus.")
    st.stop()
c1, c2 = st.columns(2)
corpus = c1.selectbox("Corpus", shared)

points, spread, versus, same, without = [], [], [], [], []
for p in picked:
    intervals = ad.cached_intervals(p)
    if intervals is None:
        st.warning(f"{sel.name(p)} has no baseline; left out.")
        continue
    table = ad.condition_table(ad.cached_results(p), corpus, intervals, ad.cached_summary(p))
    table = table[table["complete"]]
    trials = table[table["kind"] == "random_matched"]
    groups = table[table["kind"] == "group"]
    matches = ad.matched_groups(table)
    if trials.empty:
        without.append(sel.name(p))
    for name, part in trials.groupby("group", sort=False):
        row = f"{sel.name(p)} · {int(part['n_targets'].iloc[0])} random from {ad.random_pool(name)}, " \
              f"{part['mode'].iloc[0]}"
        # every trial counts, whatever else is filtered: the control's distribution is fixed
        for k, r in enumerate(part.itertuples()):
            points.append({"row": row, "ratio": r.ratio, "label": r.label, "store": sel.name(p),
                           "same_as": r.same_as, "flag": "same set as a group" if r.same_as else "random draw",
                           "jitter": ((k * 0.618) % 1 - 0.5) * 18})
            if r.same_as:
                same.append({"store": sel.name(p), "draw": r.label, "identical to": r.same_as})
        spread.append({"row": row, "store": sel.name(p), **trial_summary(part["ratio"])})
        for g in groups[groups["label"].isin(matches.get(name, []))].itertuples():
            versus.append({"row": row, "store": sel.name(p), "group": g.label, "role": ad.group_role(g._asdict()),
                           "ratio": g.ratio, "trials below": int((part["ratio"] < g.ratio).sum()),
                           "trials": len(part), "identical to it": int((part["same_as"] == g.label).sum())})
if without:
    st.info(f"No random-matched controls in {', '.join(without)}: the study preset makes none where every draw "
            "would be the group itself (a Transformer's attention group is all its mixers).")
if not points:
    st.info("No random-matched controls are complete in the picked stores (`workbench run --preset study` "
            "makes them for every model with more than one possible draw).")
    st.stop()

pts, summ, vs = pd.DataFrame(points), pd.DataFrame(spread), pd.DataFrame(versus)
roles = [r for r in ROLE_COLOURS if len(vs) and r in set(vs["role"])]
pick_roles = c2.multiselect("Groups marked", roles, default=roles,
                            help="Which role groups are drawn as diamonds; the random draws are never filtered.")
marks = vs[vs["role"].isin(pick_roles)] if len(vs) else vs
# drawn clipped (a whole-layer draw can reach x1e36); the tables below keep the true values
pts_shown, summ_shown = ad.clip_ratios(pts), ad.clip_ratios(summ)
marks_shown = ad.clip_ratios(marks) if len(marks) else marks
if same:
    st.warning(f"{len(same)} random draw(s) remove exactly the components of a group, so they are no control "
               "for it (crossed out in the chart): " + "; ".join(f"{s['draw']} = {s['identical to']} ({s['store']})"
                                                               for s in same))
y = alt.Y("row:N", title=None, sort=list(summ["row"]), axis=alt.Axis(labelLimit=0))
x_scale = charts.ratio_scale(pts_shown, summ_shown, marks_shown)
x = alt.X("ratio:Q", scale=x_scale, axis=charts.AXIS, title="perplexity / baseline")
box = alt.Chart(summ_shown).encode(y=y)
layers = [box.mark_rule(color="#7f7f7f").encode(x=alt.X("min:Q", scale=x_scale), x2="max:Q"),
          box.mark_bar(height=16, opacity=0.25, color="#9467bd").encode(x="q25:Q", x2="q75:Q"),
          alt.Chart(pts_shown).mark_point(size=70, filled=True, opacity=0.7).encode(
              y=y, x=x, yOffset="jitter:Q",
              shape=alt.Shape("flag:N", title=None, scale=alt.Scale(domain=["random draw", "same set as a group"],
                                                                    range=["circle", "cross"]),
                              legend=alt.Legend(**charts.LEGEND)),
              color=alt.value("#9467bd"),
              tooltip=["label", "store", alt.Tooltip("true_ratio:Q", format=".4~g", title="ratio"), "same_as"]),
          box.mark_tick(thickness=3, size=30, color="black").encode(
              x="median:Q", tooltip=["row", alt.Tooltip("true_ratio:Q", format=".4~g", title="median"), "n"]),
          charts.unit_rule("x")]
over = pd.concat([f[f["overflow"]] for f in (pts_shown, marks_shown) if len(f)])
if len(over):  # drawn at the edge: say so on the chart, not only in the caption
    layers.append(alt.Chart(over).mark_text(text="▶", dx=12, fontSize=14).encode(
        y=y, x=alt.X("ratio:Q", scale=x_scale), tooltip=[alt.Tooltip("true_ratio:Q", format=".4~g", title="ratio")]))
if len(marks):
    layers.append(alt.Chart(marks_shown).mark_point(shape="diamond", size=200, filled=True, opacity=1).encode(
        y=y, x=x, color=alt.Color("role:N", title="group", scale=scale(ROLE_COLOURS, roles),
                                  legend=alt.Legend(**charts.LEGEND)),
        tooltip=["group", alt.Tooltip("true_ratio:Q", format=".4~g", title="ratio"), "trials below"]))
chart = alt.layer(*layers).resolve_scale(color="independent", shape="independent")
charts.show(chart.properties(height=alt.Step(64)), f"random controls {corpus}", pts)
st.caption("Dots: one random draw each; shaded box: quartiles; thin line: range; black tick: median; "
           "diamonds: the role groups of the same size, coloured by role. "
           + ad.overflow_caption(pd.concat([pts_shown, marks_shown]) if len(marks_shown) else pts_shown))
four = {k: st.column_config.NumberColumn(format="%.4f") for k in ("median", "q25", "q75", "iqr", "min", "max", "ratio")}
st.dataframe(summ.rename(columns={"row": "control"}), hide_index=True, column_config=four)
if len(marks):
    st.dataframe(marks.rename(columns={"row": "control"}), hide_index=True, column_config=four)
