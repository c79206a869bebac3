"""Mediation: through which later components an ablation's damage travels (activation patching,
the store's ``mediation`` group written by ``workbench mediate``)."""

from __future__ import annotations

import altair as alt
import numpy as np
import streamlit as st

from workbench import app_data as ad
from workbench.app import charts, permalink
from workbench.app import mediation as md
from workbench.app.diagnostics import group_stamp
from workbench.app.palette import ROLE_COLOURS, scale

COLOURS = {**ROLE_COLOURS, "resid": "#bab0ac"}

st.title("Mediation")
st.caption("Through what does a removal matter? Each later component's clean output restored inside the ablated "
           "run (recovery), and its ablated output put into the clean run (transfer).")
sel = ad.selection()
path = ad.one_store(sel)
ad.warn_store(sel, path)


@st.cache_data(show_spinner="Reading mediation results...", max_entries=16)
def load(path: str, stamp: int):
    med = md.read_mediation(path)
    return None if med is None else med.load()


med = load(path, group_stamp(path, md.GROUP))
if med is None:
    st.info(f"**{sel.name(path)}** has no mediation results yet. Compute them (restoration and corruption of "
            f"every later component, per ablated condition) with `{md.HINT.format(path=path)}` (add `--heads` "
            "for every attention, Gated DeltaNet and Mamba-2 head).")
    st.stop()
ids = md.done(med)
if not ids:
    st.info(f"The mediation of **{sel.name(path)}** is laid out but no condition is complete yet; rerun "
            f"`{md.HINT.format(path=path)}` to finish it.")
    st.stop()

labels = {cid: str(med["label"].sel(condition=cid).values) for cid in ids}
st.markdown(f"- {md.WHAT['recovery']}\n- {md.WHAT['transfer']}")
st.caption(f"{md.tokens(med)} tokens ({md.windows(med)} windows) per run; intervals: 95% paired block bootstrap "
           "over windows (none with a single block). Blank cells: not downstream of the removal (its own "
           "targets and what runs before them).")
resid = st.toggle("Show the residual stream (resid@layer)", value=True,
                  help="Restoring the residual stream after the last removed layer recovers everything by "
                       "construction; hide it to compare mixers and MLPs.")


def matrix(what: str):
    table = md.frame(med, what)
    if not resid:
        table = table[table["role"] != "resid"]
    order = [c for c in md.components(med) if c in set(table["component"])]
    m = float(np.nanmax(np.abs(table[["value"]].to_numpy()))) if len(table) else 1.0
    m = max(m, 1.0)
    chart = alt.Chart(table).mark_rect().encode(
        x=alt.X("component:N", sort=order, title="restored component (by layer)" if what == "recovery"
                else "corrupted component (by layer)", axis=alt.Axis(labelAngle=-90, labelOverlap=False)),
        y=alt.Y("label:N", title="ablated condition", axis=alt.Axis(labelLimit=320)),
        color=alt.Color("value:Q", title=what, scale=alt.Scale(scheme="redblue", domain=[-m, m], domainMid=0)),
        tooltip=["label", "component", alt.Tooltip("value:Q", format=".3f", title=what),
                 alt.Tooltip("low:Q", format=".3f", title="95% low"), alt.Tooltip("high:Q", format=".3f", title="95% high")],
    ).properties(height=alt.Step(36), width=alt.Step(30))  # steps: the axes' labels never squeeze the cells
    return chart, table


for what in ("recovery", "transfer"):
    st.subheader("Recovery matrix" if what == "recovery" else "Transfer matrix")
    st.caption(md.WHAT[what][:1].upper() + md.WHAT[what][1:] + ". Blue: positive, red: negative (the component "
               "works against the removal), white: 0.")
    chart, table = matrix(what)
    charts.show(chart, f"{what} matrix {sel.short(path)}", table)

st.subheader("Top components of one condition")
c1, c2, c3 = st.columns([3, 1, 1])
cid = c1.selectbox("Ablated condition", ids, format_func=labels.get, **permalink.bound("condition"))
what = c2.radio("Metric", ["recovery", "transfer"], horizontal=True, key="med_metric")
k = c3.number_input("Top", 1, 50, 10, key="med_top")
st.page_link("app_pages/representations.py", label=f"Representations of \"{labels[cid]}\"",
             icon=":material/stacked_line_chart:", query_params=permalink.carried(condition=cid))
top = md.top(md.frame(med, what), cid, int(k), resid)
if top.empty:
    st.info("No component is downstream of this condition's removal.")
else:
    base = alt.Chart(top).encode(y=alt.Y("component:N", sort=list(top["component"]), title=None,
                                         axis=alt.Axis(labelOverlap=False)))
    bars = (base.mark_bar().encode(
                x=alt.X("value:Q", title=what),
                color=alt.Color("role:N", scale=scale(COLOURS, list(top["role"])), legend=alt.Legend(**charts.LEGEND)),
                tooltip=["component", "role", alt.Tooltip("value:Q", format=".3f", title=what),
                         alt.Tooltip("low:Q", format=".3f", title="95% low"),
                         alt.Tooltip("high:Q", format=".3f", title="95% high")])
            + base.mark_rule(color="black").encode(x="low:Q", x2="high:Q")
            + alt.Chart(top.iloc[:1]).mark_rule(strokeDash=[4, 4], color="gray").encode(x=alt.datum(0)))
    charts.show(bars.properties(height=26 * len(top) + 90), f"top {what} {labels[cid]}", top)
    if not np.isfinite(top["low"]).any():
        st.caption("No intervals: the patched windows form a single bootstrap block; rerun with more "
                   f"`--max-tokens` (`{md.HINT.format(path=path)} --max-tokens 8192 --overwrite`).")

heads = md.frame(med, what, heads=True)
heads = heads[heads["condition"] == cid]
if md.components(med, heads=True):
    st.subheader("Heads, per layer")
    st.caption(f"{what.capitalize()} of each head restored (or corrupted) on its own: its slice of the output "
               "projection's input. Heads do not add up to their component in loss; each is a separate run. Colours "
               "span the largest head's value either side of 0.")
    if heads.empty:
        st.info("No head is downstream of this condition's removal.")
    for role in [r for r in md.ROLE_ORDER if r in set(heads["role"])]:
        part = heads[heads["role"] == role]
        m = max(0.05, float(np.nanmax(np.abs(part["value"]))))  # heads are small: scale to the largest
        chart = alt.Chart(part).mark_rect().encode(
            x=alt.X("head:O", title="head", axis=alt.Axis(labelAngle=0)), y=alt.Y("layer:O", title="layer"),
            color=alt.Color("value:Q", title=what, scale=alt.Scale(scheme="redblue", domain=[-m, m], domainMid=0)),
            tooltip=["component", alt.Tooltip("value:Q", format=".3f", title=what),
                     alt.Tooltip("low:Q", format=".3f", title="95% low"),
                     alt.Tooltip("high:Q", format=".3f", title="95% high")],
        ).properties(title=role, height=alt.Step(30), width=alt.Step(40))
        charts.show(chart, f"{what} heads {role} {labels[cid]}", part)
else:
    st.caption(f"Heads not patched: rerun `{md.HINT.format(path=path)} --heads --overwrite` for per-head heatmaps.")
