"""Embedding map: the shared 2-D map (PCA / UMAP) of every condition's residual stream at one
layer (`map_xy` from `workbench diagnose`); hover a point for its token in context."""

from __future__ import annotations

import altair as alt
import streamlit as st

from workbench import app_data as ad
from workbench.app import charts
from workbench.app import diagnostics as dg

BASE_COLOUR = "#3b3b3b"
COLOURS = ["#e15759", "#4e79a7", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f",
           "#bab0ac", "#17becf", "#bcbd22"]


@st.cache_data(show_spinner="Reading the map...", max_entries=32)
def points(path: str, method: str, conditions: tuple, stamp: int):
    diag = dg.read_diagnostics(path)
    return dg.map_frame(path, diag, method, list(conditions))


@st.cache_data(show_spinner=False, max_entries=16)
def diagnostics(path: str, stamp: int):
    return dg.read_diagnostics(path)


def has_map(path: str, stamp: int) -> bool:
    """Whether the store has a readable map (a damaged diagnostics group is said on the page)."""
    try:
        return "map_xy" in diagnostics(path, stamp)
    except dg.Unreadable as exc:
        st.error(str(exc))
        return False


st.title("Embedding map")
sel = ad.selection()
picked = ad.need_stores(sel)
stamps = {p: dg.group_stamp(p, dg.DIAGNOSTICS) for p in picked}
mapped = [p for p in picked if stamps[p] and has_map(p, stamps[p])]
if not mapped:
    first = picked[0]
    ad.warn_store(sel, first)
    st.info(f"No shared map in **{sel.name(first)}**{' or the other picked stores' if len(picked) > 1 else ''}. "
            f"`{dg.DIAGNOSE_HINT.format(path=first)}` writes one (`map_xy`: PCA fitted on all conditions' "
            "points at the middle layer; `--full` adds UMAP).")
    st.stop()
path = mapped[0] if len(mapped) == 1 else st.selectbox("Store", mapped, format_func=sel.name)
ad.warn_store(sel, path)
diag = diagnostics(path, stamps[path])
options = dg.condition_choices(diag)
labels = list(options)
c1, c2, c3 = st.columns([1, 1, 2])
method = c1.selectbox("Method", [str(m) for m in diag["method"].values],
                      format_func=lambda m: {"pca": "PCA", "umap": "UMAP"}.get(m, m))
colour_by = c2.selectbox("Colour by", list(dg.COLOUR_BY), help="; ".join(f"{k}: {v}" for k, v in dg.COLOUR_BY.items()))
chosen_labels = c3.multiselect("Conditions", labels, default=labels[: min(3, len(labels))], key=f"map_conds:{path}")
chosen = tuple(options[x] for x in chosen_labels) or (options[labels[0]],)
try:
    frame = points(path, method, chosen, stamps[path])
except dg.Unreadable as exc:
    st.error(str(exc))
    st.stop()
split = st.toggle("One panel per condition", value=colour_by != "condition" and len(chosen) > 1)

if colour_by == "condition":
    present = [dg.labels_of(diag)[c] for c in chosen]
    others = [x for x in present if not x.startswith("baseline")]
    scale = alt.Scale(domain=present, range=[BASE_COLOUR if x.startswith("baseline")
                                             else COLOURS[others.index(x) % len(COLOURS)] for x in present])
    colour = alt.Color("label:N", title="condition", scale=scale, legend=alt.Legend(**charts.LEGEND))
else:
    values = sorted(set(frame[colour_by]), key=lambda v: (v == "other", v))
    colour = alt.Color(f"{colour_by}:N", title=colour_by, scale=alt.Scale(domain=values, range=COLOURS),
                       legend=alt.Legend(**charts.LEGEND, columns=6))
tip = [alt.Tooltip("token_text:N", title="token"), alt.Tooltip("context:N", title="in context"),
       alt.Tooltip("label:N", title="condition"), alt.Tooltip("pos:Q", title="position"),
       alt.Tooltip("next token:N"), alt.Tooltip("word class:N")]
if "prediction" in frame:
    tip.append(alt.Tooltip("prediction:N", title="top prediction"))
chart = alt.Chart(frame).mark_circle(size=22, opacity=0.7).encode(
    x=alt.X("x:Q", title=f"{method.upper()} 1", axis=alt.Axis(labels=False, ticks=False)),
    y=alt.Y("y:Q", title=f"{method.upper()} 2", axis=alt.Axis(labels=False, ticks=False)),
    color=colour, tooltip=tip)
if split:
    order = [dg.labels_of(diag)[c] for c in chosen]
    chart = chart.properties(width=420, height=360).facet(facet=alt.Facet("label:N", title=None, sort=order),
                                                          columns=2)
else:
    chart = chart.properties(height=560).interactive()
st.caption(f"{len(frame)} points: the residual stream at layer {diag.attrs.get('map_layer', '?')} of "
           f"{diag.attrs.get('model', 'the model')}, one point per sampled token and condition, all conditions "
           "mapped together (so distances compare across conditions). Hover a point for its token in context: "
           "[brackets] mark the token, · a gap in the sample. Scroll to zoom, drag to pan.")
charts.show(chart, f"embedding map {method} {colour_by}", frame.drop(columns=["condition"]))
