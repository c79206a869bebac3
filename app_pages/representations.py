"""Representations: what an ablation changes inside the network, from the store's diagnostics
(`workbench diagnose STORE`): CKA to clean, CKA between layers of two runs, probes, logit lens,
norm drift, retrieval and induction heads."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from workbench import app_data as ad
from workbench.app import charts
from workbench.app import diagnostics as dg

VIEWS = ["CKA to clean", "CKA between layers", "Probes", "Logit lens", "Norm drift", "Retrieval and induction"]
BASE_COLOUR = "#3b3b3b"
COLOURS = ["#e15759", "#4e79a7", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f",
           "#bab0ac"]


@st.cache_data(show_spinner="Reading diagnostics...", max_entries=16)
def _diagnostics(path: str, stamp: int):
    return dg.read_diagnostics(path)


def diagnostics(path: str, stamp: int):
    """The store's diagnostics; a damaged group stops the page with one clear line."""
    try:
        return _diagnostics(path, stamp)
    except dg.Unreadable as exc:
        st.error(str(exc))
        st.stop()


@st.cache_data(show_spinner="Computing CKA between layers...", max_entries=32)
def cka(path_a, cond_a, path_b, cond_b, max_tokens, debiased, stamps):
    return dg.cka_between(path_a, cond_a, path_b, cond_b, max_tokens=max_tokens, debiased=debiased)


@st.cache_data(show_spinner=False, max_entries=16)
def tokens(path: str, stamp: int):
    return dg.token_table(path)


def colour(labels: list[str]) -> alt.Scale:
    """Baseline dark grey, the other conditions in a fixed order (same colour in every view)."""
    others = [x for x in labels if not x.startswith("baseline")]
    domain = [x for x in labels if x.startswith("baseline")] + others
    rng = [BASE_COLOUR if x.startswith("baseline") else COLOURS[others.index(x) % len(COLOURS)] for x in domain]
    return alt.Scale(domain=domain, range=rng)


def curves(frame: pd.DataFrame, scale: alt.Scale, title: str, independent: bool = False) -> alt.Chart:
    base = alt.Chart(frame).mark_line(point=alt.OverlayMarkDef(size=30)).encode(
        x=alt.X("layer:Q", title="layer (-1: embedding)", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("value:Q", title=title, scale=alt.Scale(zero=False)),
        color=alt.Color("label:N", title="condition", scale=scale, legend=alt.Legend(**charts.LEGEND)),
        tooltip=["label", "measure" if "measure" in frame else "variable", "layer",
                 alt.Tooltip("value:Q", format=".4f")])
    if "measure" in frame and frame["measure"].nunique() > 1:
        order = list(dict.fromkeys(frame["measure"]))  # the order the caption names them
        out = base.properties(width=360, height=240).facet(facet=alt.Facet("measure:N", title=None, sort=order),
                                                           columns=2)
        return out.resolve_scale(y="independent") if independent else out
    return base.properties(height=320)


st.title("Representations")
sel = ad.selection()
picked = ad.need_stores(sel)
stamps = {p: dg.group_stamp(p, dg.DIAGNOSTICS) for p in picked}
diagnosed = [p for p in picked if stamps[p]]
if not diagnosed:
    first = picked[0]
    ad.warn_store(sel, first)
    st.info(f"**{sel.name(first)}** has no representation diagnostics yet. They are written into the store by "
            f"`{dg.DIAGNOSE_HINT.format(path=first)}` (or `workbench run ... --diagnose`): activations of every "
            "condition on a token sample, then CKA, probes, logit lens, norms, retrieval and maps. "
            + (f"None of the {len(picked)} picked stores has them." if len(picked) > 1 else ""))
    st.stop()
path = diagnosed[0] if len(diagnosed) == 1 else st.selectbox("Store", diagnosed, format_func=sel.name)
skipped = [sel.name(p) for p in picked if p not in diagnosed]
if skipped:
    st.caption(f"Without diagnostics (run `workbench diagnose STORE`): {', '.join(skipped)}.")
ad.warn_store(sel, path)
diag = diagnostics(path, stamps[path])
options = dg.condition_choices(diag)
labels = list(options)
linked = [x for x in labels if options[x] == st.query_params.get("condition")]  # a link from Mediation
default = list(dict.fromkeys(labels[:1] + linked)) if linked else labels[: min(4, len(labels))]
chosen_labels = st.multiselect("Conditions", labels, default=default, key=f"repr_conds:{path}")
chosen = [options[x] for x in chosen_labels] or [options[labels[0]]]
scale = colour([dg.labels_of(diag)[c] for c in chosen])
view = st.radio("View", VIEWS, horizontal=True, key="repr_view")
st.caption(f"{diag.attrs.get('tokens_used', '?')} sampled tokens of {diag.attrs.get('model', '')}; "
           f"{diag.attrs.get('layer_note', '')}.")

if view == "CKA to clean":
    est = st.radio("Estimator", ["cka_linear", "cka_debiased"], horizontal=True,
                   format_func=lambda v: {"cka_linear": "linear (standard)", "cka_debiased": "debiased"}[v])
    frame = dg.layer_frame(diag, [est], chosen)
    if frame.empty:
        st.info(f"This store's diagnostics have no `{est}`; rerun `workbench diagnose` with `--diagnostics cka`.")
        st.stop()
    st.caption("CKA between each condition's residual stream and the clean run's, layer by layer (1: the same "
               "representation up to rotation and scale). It falls where the ablation takes effect.")
    charts.show(curves(frame, scale, "CKA to clean"), f"cka to clean {est}", frame)

elif view == "CKA between layers":
    with_act = [p for p in picked if (p and dg.open_group(p, dg.ACTIVATIONS) is not None)]
    c1, c2 = st.columns(2)
    pa = c1.selectbox("Run A: store", with_act, index=with_act.index(path) if path in with_act else 0,
                      format_func=sel.short, key="cka_store_a")
    pb = c2.selectbox("Run B: store", with_act, index=with_act.index(path) if path in with_act else 0,
                      format_func=sel.short, key="cka_store_b")
    da, db = diagnostics(pa, stamps.get(pa) or dg.group_stamp(pa, dg.DIAGNOSTICS)), None
    opts_a = dg.condition_choices(da) if da is not None else {"baseline": "baseline"}
    db = diagnostics(pb, stamps.get(pb) or dg.group_stamp(pb, dg.DIAGNOSTICS))
    opts_b = dg.condition_choices(db) if db is not None else {"baseline": "baseline"}
    ca = opts_a[c1.selectbox("Run A: condition", list(opts_a), key="cka_cond_a")]
    cb_labels = list(opts_b)
    cb = opts_b[c2.selectbox("Run B: condition", cb_labels, index=min(1, len(cb_labels) - 1), key="cka_cond_b")]
    c3, c4 = st.columns(2)
    n_tok = c3.select_slider("Tokens (a seeded subsample)", [128, 256, 512, 1024], value=512)
    debiased = c4.toggle("Debiased CKA", value=False)
    try:
        m = cka(pa, ca, pb, cb, n_tok, debiased, (dg.group_stamp(pa, dg.ACTIVATIONS), dg.group_stamp(pb, dg.ACTIVATIONS)))
    except ValueError as exc:
        st.warning(str(exc))
        st.stop()
    frame = dg.cka_frame(m)
    frame["text"] = [f"{v:.2f}" for v in frame["cka"]]
    base = alt.Chart(frame).encode(x=alt.X("layer_b:O", title=f"B: {sel.short(pb)} · layer"),
                                   y=alt.Y("layer_a:O", title=f"A: {sel.short(pa)} · layer", sort="descending"))
    chart = (base.mark_rect().encode(color=alt.Color("cka:Q", scale=alt.Scale(scheme="viridis", domain=[0, 1]),
                                                     title="CKA"),
                                     tooltip=["layer_a", "layer_b", alt.Tooltip("cka:Q", format=".3f")])
             + base.mark_text(fontSize=10).encode(text="text:N", color=alt.condition(alt.datum.cka > 0.6,
                                                                                      alt.value("black"),
                                                                                      alt.value("white"))))
    st.caption(f"CKA between every layer of A ({dg.labels_of(da)[ca] if da is not None else ca}) and every "
               f"layer of B ({dg.labels_of(db)[cb] if db is not None else cb}) on {m.attrs['tokens']} shared "
               f"sampled tokens ({'debiased' if debiased else 'standard'} estimator, from the cached activations). "
               "A bright diagonal: the two runs represent the input alike layer by layer.")
    charts.show(chart.properties(height=alt.Step(34), width=alt.Step(48)), "cka between layers", frame)

elif view == "Probes":
    frame = dg.probe_frame(diag, chosen)
    if frame.empty:
        st.info("No probe results; rerun `workbench diagnose` with `--diagnostics probes`.")
        st.stop()
    names = {"probe_acc": "accuracy (probe fitted on this run)", "probe_selectivity":
             "selectivity (accuracy minus control task)", "probe_transfer_acc": "clean probe on this run"}
    measure = st.radio("Measure", [v for v in names if v in set(frame["variable"])], horizontal=True,
                       format_func=names.get)
    part = frame[frame["variable"] == measure].dropna(subset=["value"])
    st.caption(f"{diag.attrs.get('probe_layers', '')}. Selectivity is accuracy on the real labels minus "
               "accuracy on a control task (Hewitt & Liang), so it discounts what a probe memorises.")
    chart = alt.Chart(part).mark_line(point=True).encode(
        x=alt.X("layer:Q", axis=alt.Axis(tickMinStep=1, format="d")), y=alt.Y("value:Q", title=names[measure]),
        color=alt.Color("label:N", title="condition", scale=scale, legend=alt.Legend(**charts.LEGEND)),
        tooltip=["label", "probe", "layer", alt.Tooltip("value:Q", format=".3f")]
    ).properties(width=300, height=200).facet(facet=alt.Facet("probe:N", title=None), columns=3)
    charts.show(chart, f"probes {measure}", part)

elif view == "Logit lens":
    lens_vars = [v for v in ("lens_kl", "lens_top1", "lens_ce", "lens_entropy", "lens_kl_last_token") if v in diag]
    if lens_vars:
        frame = dg.layer_frame(diag, lens_vars, chosen)
        st.caption("The residual stream read through the model's own final norm and unembedding at each layer, "
                   "against the run's own output (KL, top-1 agreement), the next token (cross-entropy) and itself "
                   "(entropy).")
        charts.show(curves(frame, scale, "value", independent=True), "logit lens by layer", frame)
    st.subheader("Lens grid: top token by layer and position")
    if not dg.has_lens_grid(diag):
        st.info("This store's diagnostics hold the lens per (condition, layer) only: they were written before "
                "the lens grid existed. Rerun `workbench diagnose` on the store (the cached activations are "
                "reused) to add `lens_top_id(condition, layer, lens_token)` and `lens_top_prob` / "
                "`lens_top_text`: the grid (layer x token of one sample window, the lens's top token and its "
                "probability in the hover) then appears here.")
    else:
        toks = tokens(path, dg.group_stamp(path, dg.ACTIVATIONS))
        have = toks[toks["token"].isin(diag[dg.GRID_DIM].values)]
        windows = sorted(set(have["window"]))
        c1, c2 = st.columns(2)
        window = c1.selectbox("Sequence (sample window)", windows)
        pair = [c for c in chosen if c == "baseline"][:1] + [c for c in chosen if c != "baseline"][:1]
        grid = dg.lens_grid(diag, toks, pair or chosen[:1], window)
        grid["label_short"] = grid["label"].str.slice(0, 40)
        grid["text"] = grid["top"].str.slice(0, 6)
        # below 14 px a row, the token text would overlap: it lives in the hover only
        step = dg.grid_step(grid["layer"].nunique(), grid["label_short"].nunique())
        base = alt.Chart(grid).encode(x=alt.X("position:O", title="position (input token below)"),
                                      y=alt.Y("layer:O", sort="descending",
                                              axis=alt.Axis(labelOverlap=True) if step < 14 else alt.Axis()))
        cells = base.mark_rect().encode(
            color=alt.Color("prob:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]), title="top prob"),
            tooltip=["label", "layer", "position", "input", "top", alt.Tooltip("prob:Q", format=".3f"), "is_next"])
        layered = cells + base.mark_text(fontSize=9).encode(text="text:N") if step >= 14 else cells
        chart = layered.properties(height=alt.Step(step), width=alt.Step(44)).facet(
            row=alt.Row("label_short:N", title=None))
        st.caption("Clean beside ablated: each cell is the lens's most likely token at that layer and position.")
        charts.show(chart, "lens grid", grid)

elif view == "Norm drift":
    frame = dg.layer_frame(diag, ["resid_norm", "norm_ratio", "cos_to_clean"], chosen)
    if frame.empty:
        st.info("No norm diagnostics; rerun `workbench diagnose` with `--diagnostics norms`.")
        st.stop()
    st.caption("Three panels, by layer: **residual norm** (mean over tokens of ||h||); **norm / clean norm** (that "
               "mean over the clean run's: above 1, the ablated stream is larger); **cosine to clean** (mean over "
               "tokens of the cosine between the ablated and the clean residual: 1, the same direction). The "
               "baseline is the clean run, so its ratio and cosine are 1 throughout.")
    charts.show(curves(frame, scale, "value", independent=True), "norm drift", frame)
    writes = dg.write_frame(diag, chosen).dropna(subset=["value"])
    if len(writes):
        st.subheader("What each component writes")
        st.caption("write_norm: norm of a component's output relative to its layer's input (missing: removed).")
        chart = alt.Chart(writes).mark_line(point=True).encode(
            x=alt.X("layer:Q", axis=alt.Axis(tickMinStep=1, format="d")), y=alt.Y("value:Q", title="write norm"),
            color=alt.Color("label:N", title="condition", scale=scale, legend=alt.Legend(**charts.LEGEND)),
            tooltip=["label", "component", alt.Tooltip("value:Q", format=".3f")]
        ).properties(width=300, height=200).facet(facet=alt.Facet("role:N", title=None), columns=3).resolve_scale(
            y="independent")
        charts.show(chart, "write norm", writes)

else:
    ret = dg.retrieval_frame(diag)
    ret = ret[ret["condition"].isin(chosen)]
    measures = {"retrieval_acc": "random tokens, 2nd copy", "retrieval_text_acc": "real text, 2nd copy",
                "retrieval_text_first_acc": "real text, 1st copy"}
    long = ret.melt(id_vars=["condition", "label"], value_vars=[m for m in measures if m in ret],
                    var_name="variable", value_name="accuracy")
    long["measure"] = long["variable"].map(measures)
    if not len(long):
        st.info("This store's diagnostics have no in-context retrieval results (`retrieval_acc`, "
                "`retrieval_text_acc`), so there is nothing to draw here; rerun `workbench diagnose` with "
                "`--diagnostics retrieval` (the cached activations are reused).")
    else:
        st.caption("Next-token accuracy inside a repeated sequence: the second copy can be retrieved from the "
                   "first (in-context copying); the first copy is the control with nothing to retrieve.")
        chart = alt.Chart(long).mark_bar().encode(
            y=alt.Y("label:N", title=None, axis=alt.Axis(labelLimit=0)), x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("label:N", scale=scale, legend=None),
            tooltip=["label", "measure", alt.Tooltip("accuracy:Q", format=".3f")]
        ).properties(width=320).facet(column=alt.Column("measure:N", title=None))
        charts.show(chart, "retrieval accuracy", long)
    if "induction_score" not in diag:
        st.caption("No induction-head scores in these diagnostics (`--diagnostics retrieval` writes them for "
                   "models with attention layers).")
    else:
        st.subheader("Induction heads")
        cond = st.selectbox("Condition", chosen, format_func=dg.labels_of(diag).get, key="induction_cond")
        heads = dg.induction_frame(diag, cond)
        heads["removed"] = ~np.isfinite(heads["value"])
        heads["text"] = [("off" if not np.isfinite(v) else f"{v:.2f}") for v in heads["value"]]
        base = alt.Chart(heads).encode(x=alt.X("head:O"), y=alt.Y("layer:O", sort="descending"))
        chart = (base.mark_rect(stroke="white").encode(
                     color=alt.condition("datum.removed", alt.value("#dddddd"),
                                         alt.Color("value:Q", scale=alt.Scale(scheme="oranges", domain=[0, 1]),
                                                   title="induction score")),
                     tooltip=["layer", "head", alt.Tooltip("value:Q", format=".3f")])
                 + base.mark_text(fontSize=10).encode(text="text:N"))
        st.caption("Attention paid by each token of the second copy to the token after its earlier occurrence "
                   "(attention layers only; grey: removed by this condition).")
        charts.show(chart.properties(height=alt.Step(26), width=alt.Step(50)), "induction heads", heads)
