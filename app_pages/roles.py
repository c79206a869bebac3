"""Roles: one card per role of a store (what removing it does to perplexity and tasks, how that
compares with random removals of the same size, where in depth it matters, and what it changes
inside the network), each number linked to the page that shows it in full."""

from __future__ import annotations

import altair as alt
import numpy as np
import streamlit as st

from workbench import app_data as ad
from workbench.app import charts, permalink
from workbench.app import roles as rl
from workbench.app.diagnostics import DIAGNOSE_HINT
from workbench.app.palette import ROLE_COLOURS
from workbench.report import MIN_ITEMS

MODE_NAMES = {"zero": "component only (`zero`)", "skip_layer": "whole layer (`skip_layer`)"}

st.title("Roles")
st.caption("Why does a role matter? One card per role of the store: the effect of removing all of it, against "
           "random removals of the same size, layer by layer, on tasks and inside the network.")
sel = ad.selection()
path = ad.one_store(sel)
ad.warn_store(sel, path)
ds = ad.cached_results(path)
summary = ad.cached_summary(path)
intervals = ad.cached_intervals(path)
if intervals is None:
    st.warning("This store has no baseline condition: ratios need one.")
    st.stop()
corpora = [str(c) for c in ds.corpus.values]
metrics = ad.task_metrics(ds)
c1, c2 = st.columns(2)
corpus = c1.selectbox("Corpus", corpora, **permalink.bound("corpus"))
metric = c2.selectbox("Task metric", metrics, **permalink.bound("metric")) if metrics else None
table = ad.condition_table(ds, corpus, intervals, summary)
acc = ad.cached_accuracy(path, metric) if metric else None
diag = ad.cached_diagnostics(path)
cards = rl.role_cards(table, acc, diag)
if not cards:
    st.info("This store has no completed group or sweep conditions (`workbench run --preset study` makes them).")
    st.stop()
links = permalink.carried()


def depth_chart(card: rl.Card):
    frame = ad.clip_ratios(card.depth)
    x = alt.X("layer:O", title="layer", axis=alt.Axis(labelAngle=0))
    y = alt.Y("ratio:Q", title="ppl / baseline", scale=alt.Scale(type="log", domain=ad.log_domain(frame), nice=False),
              axis=charts.AXIS)
    base = alt.Chart(frame).encode(x=x)
    return (base.mark_bar(color=ROLE_COLOURS.get(card.role, "#888"), width={"band": 0.6}).encode(
                y=y, y2=alt.datum(1.0),
                tooltip=["label", alt.Tooltip("true_ratio:Q", format=".4~g", title="ratio"),
                         alt.Tooltip("low:Q", format=".4f", title="95% low"),
                         alt.Tooltip("high:Q", format=".4f", title="95% high")])
            + base.mark_rule(color="black").encode(y="low:Q", y2="high:Q")
            + charts.unit_rule("y")).properties(height=140)


for card in cards:
    with st.container(border=True):
        st.subheader(card.role)
        left, right = st.columns([3, 2])
        with left:
            st.markdown("**Effect on perplexity** (perplexity with the whole role removed / baseline, corpus "
                        f"`{corpus}`; 1 = no change)")
            if not card.effects:
                st.markdown("No group condition for this role in the store.")
            for e in card.effects:
                st.markdown(f"- {MODE_NAMES.get(e.mode, e.mode)}: **{rl.ratio_text(e)}**; {rl.rank_text(e)}")
            st.caption("Intervals: the report's paired block bootstrap over windows. Rank: a role that hurts more "
                       "than most random removals of as many components matters more than its size.")
            st.page_link("app_pages/perplexity.py", label="Perplexity and tasks", icon=":material/bar_chart:",
                         query_params=links)
            st.page_link("app_pages/random_controls.py", label="Random controls", icon=":material/scatter_plot:",
                         query_params=links)
            st.markdown("**On tasks** (baseline accuracy minus accuracy without the role, component only; "
                        "above 0: worse)")
            if metric is None:
                st.markdown("This store has no task results (`workbench study` adds them).")
            elif card.tasks.empty:
                st.markdown("No task results for this role's group.")
            else:
                st.markdown("\n".join(f"- {rl.task_text(r)}" for _, r in card.tasks.iterrows()))
                if not card.tasks["enough"].all():
                    st.caption(f"The report gives a paired interval over items only from {MIN_ITEMS} items.")
            st.markdown("**Inside the network** (at the last layer, component-only removal)")
            if diag is None:
                st.markdown(f"No diagnostics yet: run `{DIAGNOSE_HINT.format(path=path)}`.")
            elif not card.diagnosed:
                st.markdown("This role's group is not among the diagnosed conditions.")
            else:
                parts = []
                if np.isfinite(card.cka):
                    parts.append(f"- CKA to the clean run **{card.cka:.3f}** (drop {1 - card.cka:.3f}): how alike "
                                 "the residual streams are (1: the same up to rotation and scale)")
                if np.isfinite(card.lens_kl):
                    parts.append(f"- lens KL to the clean output **{card.lens_kl:.3f}** nats: how far the last "
                                 "token's prediction moved (0: unchanged)")
                st.markdown("\n".join(parts) or "The diagnostics hold neither CKA nor lens KL.")
            st.page_link("app_pages/representations.py", label="Representations",
                         icon=":material/stacked_line_chart:", query_params=links)
        with right:
            st.markdown("**Depth profile** (one layer's component removed at a time)")
            if card.depth.empty:
                st.markdown("No layer sweep for this role.")
            else:
                charts.show(depth_chart(card), f"{card.role} depth", card.depth)
                cap = ad.interval_caption(card.depth)
                st.caption("Bars: perplexity / baseline per layer, log scale; black lines: 95% intervals. "
                           + (cap if cap else ""))
            st.page_link("app_pages/layer_sweep.py", label="Layer sweep", icon=":material/grid_on:",
                         query_params=links)
