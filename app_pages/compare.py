"""Compare: two or more models (stores) on comparable conditions, or two conditions of one store,
side by side with the difference."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from probes.stats import paired_ratio, pooled_windows
from workbench import app_data as ad
from workbench.app import charts
from workbench.app.palette import FUNCTION_COLOURS, ROLE_COLOURS, STORE_COLOURS, scale

st.title("Compare")
sel = ad.selection()
what = st.radio("Compare", ["models (stores)", "two conditions of one store"], horizontal=True)


def models() -> None:
    picked = ad.need_stores(sel, at_least=2)
    for p in picked:
        ad.warn_store(sel, p)
    shared = [c for c in sel.infos[picked[0]]["corpora"].split(", ")
              if all(c in sel.infos[p]["corpora"].split(", ") for p in picked[1:])]
    if not shared:
        st.warning("These stores share no corpus, so their ratios are not comparable. Pick stores evaluated on "
                   "at least one common corpus.")
        st.stop()
    c1, c2 = st.columns(2)
    corpus = c1.selectbox("Corpus", shared)
    align = c2.radio("Line up roles by", ["role", "function"], horizontal=True,
                     help="function: attention versus the linear-time mixer, so Falcon-H1's `ssm` and Qwen3.5's "
                          "`linear_attention` share a row.")
    tables, protocols, n_layers = {}, {}, {}
    for p in picked:
        intervals = ad.cached_intervals(p)
        if intervals is None:
            st.warning(f"{sel.name(p)} has no baseline; left out.")
            continue
        ds = ad.cached_results(p)
        tables[sel.name(p)] = ad.condition_table(ds, corpus, intervals, ad.cached_summary(p))
        protocols[sel.name(p)] = ds.attrs.get("protocol", "")
        n_layers[sel.name(p)] = ds.attrs.get("n_layers")
    if len(set(protocols.values())) > 1:
        st.warning("These stores used different evaluation protocols (rolling or carry, context, stride); ratios may not be "
                   "comparable: " + "; ".join(f"{k}: {v}" for k, v in protocols.items()))
    if len(tables) < 2:
        st.stop()
    long = ad.comparison_table(tables, align=align)
    long = long[np.isfinite(long["ratio"])]
    long = ad.clip_ratios(long)
    same = long[long["n_same"] > 0]
    if len(same):
        st.warning("Some random draws remove exactly the components of a group (no control for it): "
                   + "; ".join(f"{r.store}: {r.key} ({r.n_same} of {r.n})" for r in same.itertuples()))
    kinds = [k for k in ("group", "thirds", "random_matched", "custom") if k in set(long["kind"])]
    k1, k2 = st.columns([3, 1])
    pick = k1.multiselect("Kind", kinds, default=kinds)
    only_shared = k2.toggle("Shared rows only", value=True, help="Only rows that two or more picked stores have.")
    both = long.groupby("key")["store"].transform("nunique") >= 2
    shown = long[long["kind"].isin(pick) & (both if only_shared else True)]
    stores = list(tables)

    st.subheader("Ratio to baseline, side by side")
    st.caption(f"corpus **{corpus}** · perplexity / the store's own baseline (log scale) · error bars: the report's "
               "paired block-bootstrap 95% intervals · random controls: median of the trials (no interval)")
    if shown.empty:
        st.info("No condition matches." + (" Try lining up by function, or turn off 'Shared rows only'."
                                           if only_shared else ""))
    else:
        order = list(dict.fromkeys(shown["key"]))
        base = alt.Chart(shown.assign(one=1.0)).encode(
            y=alt.Y("key:N", sort=order, title=None, axis=alt.Axis(labelLimit=0)), yOffset=alt.YOffset("store:N"))
        tip = ["store", "key", alt.Tooltip("true_ratio:Q", format=".4~g", title="ratio"),
               alt.Tooltip("low:Q", format=".4f"), alt.Tooltip("high:Q", format=".4f"), "n"]
        chart = (base.mark_bar().encode(x=alt.X("ratio:Q", scale=charts.ratio_scale(shown), axis=charts.AXIS,
                                                title="perplexity / baseline"), x2="one:Q",
                                        color=alt.Color("store:N", legend=alt.Legend(**charts.LEGEND),
                                                        scale=alt.Scale(domain=stores,
                                                                        range=STORE_COLOURS[:len(stores)])),
                                        tooltip=tip)
                 + base.mark_rule(color="black").encode(x="low:Q", x2="high:Q")
                 + base.mark_text(align="right", dx=-4, fontSize=10).encode(x="ratio:Q", text="overflow_text:N")
                 + charts.unit_rule("x"))
        wide = shown.pivot_table(index="key", columns="store", values="true_ratio", sort=False).reset_index()
        a, b = stores[0], stores[1]
        if a in wide and b in wide:
            wide[f"{b} / {a}"] = wide[b] / wide[a]
        charts.show(chart.properties(height=alt.Step(16)), f"compare {' vs '.join(stores)} {corpus}", wide)
        st.dataframe(wide, hide_index=True,
                     column_config={c: st.column_config.NumberColumn(format="%.4f") for c in wide if c != "key"})
        st.caption(" ".join(x for x in (
            f"`{b} / {a}`: how many times larger the second store's ratio is (1 = the same effect).",
            ad.overflow_caption(shown), ad.interval_caption(shown[shown["kind"] != "random_matched"]
                                                            .assign(label=lambda f: f["store"] + ": " + f["key"])))
            if x))

    # Sweeps of models of different depths line up by relative depth, not layer index.
    sweeps = []
    for name, t in tables.items():
        s = t[(t["kind"] == "sweep") & t["complete"] & np.isfinite(t["ratio"])].copy()
        deepest = (n_layers[name] - 1 if n_layers.get(name) else
                   np.nanmax(t["layers"].str.findall(r"\d+").explode().astype(float).to_numpy(), initial=0))
        if not s.empty:
            s["series"] = s["role"] if align == "role" else s["function"]
            s = s.assign(store=name, depth=s["first_layer"] / max(deepest, 1))
            sweeps.append(ad.clip_ratios(s.assign(segment=ad.sweep_segments(s))))
    if sweeps:
        st.subheader("Layer sweeps by relative depth")
        st.caption("layer / last layer of the model. Colour: role; line style and point shape: store. A line "
                   "joins adjacent layers only: a role absent in between (attention every few layers) shows "
                   "as separate points.")
        sw = pd.concat(sweeps)
        colours = ROLE_COLOURS if align == "role" else FUNCTION_COLOURS
        present = list(dict.fromkeys(sw["series"]))
        enc = dict(x=alt.X("depth:Q", title="relative depth", scale=alt.Scale(domain=[0, 1])),
                   y=alt.Y("ratio:Q", scale=charts.ratio_scale(sw), axis=charts.AXIS, title="perplexity / baseline"),
                   color=alt.Color("series:N", title=align, scale=scale(colours, present),
                                   legend=alt.Legend(**charts.LEGEND)))
        chart = (alt.Chart(sw).mark_line().encode(
                     **enc, strokeDash=alt.StrokeDash("store:N", legend=alt.Legend(**charts.LEGEND, symbolStrokeWidth=2,
                                                                                  symbolType="stroke")),
                     detail="segment:N")
                 + alt.Chart(sw).mark_point(filled=True, size=60).encode(
                     **enc, shape=alt.Shape("store:N", legend=None),
                     tooltip=["store", "label", alt.Tooltip("true_ratio:Q", format=".4~g", title="ratio")])
                 + charts.unit_rule("y"))
        charts.show(chart.properties(height=340), f"compare sweeps {' vs '.join(stores)} {corpus}",
                    sw[["store", "label", "series", "depth", "true_ratio"]].rename(columns={"true_ratio": "ratio"}))
        if ad.overflow_caption(sw):
            st.caption(ad.overflow_caption(sw).replace("drawn at the axis edge", "drawn at the top"))


def conditions() -> None:
    path = ad.one_store(sel)
    ad.warn_store(sel, path)
    ds = ad.cached_results(path)
    summary = ad.cached_summary(path)
    done = summary[summary["complete"]]
    if len(done) < 2:
        st.info("This store has fewer than two completed conditions to compare.")
        st.stop()
    options = ad.choices(done["id"], done["label"])
    labels = {v: k for k, v in options.items()}
    c1, c2 = st.columns(2)
    a = options[c1.selectbox("Condition A", list(options), index=0)]
    b = options[c2.selectbox("Condition B", list(options), index=1)]
    nll = ds["window_nll"].transpose("condition", "corpus", "window")
    rows = []
    row = summary.set_index("id")
    for j, corpus in enumerate(ds.corpus.values):
        tok = ds["window_tokens"].isel(corpus=j).values
        r = paired_ratio(nll.sel(condition=b).isel(corpus=j).values, nll.sel(condition=a).isel(corpus=j).values,
                         tok, n_boot=ad.N_BOOT)
        rows.append({"corpus": str(corpus), "A perplexity": row.loc[a, f"perplexity:{corpus}"],
                     "B perplexity": row.loc[b, f"perplexity:{corpus}"], "B / A": r.ratio, "low": r.low,
                     "high": r.high})
    if ds.sizes["corpus"] > 1:  # what the report states: every corpus's windows pooled
        pooled, tok = pooled_windows(ds)
        ids = [str(c) for c in ds.condition.values]
        r = paired_ratio(pooled[ids.index(b)], pooled[ids.index(a)], tok, n_boot=ad.N_BOOT)
        rows.append({"corpus": "all corpora (pooled)", "A perplexity": np.nan, "B perplexity": np.nan,
                     "B / A": r.ratio, "low": r.low, "high": r.high})
    diff = pd.DataFrame(rows)
    st.subheader("B against A")
    st.caption("B / A = perplexity of B over perplexity of A on the same windows; error bars: the report's paired "
               "block-bootstrap 95% intervals (8 contiguous windows a block, fewer below 80 windows). 1 = no "
               "difference." + (" The pooled row puts every corpus's windows side by side, as the report does."
                                if ds.sizes["corpus"] > 1 else ""))
    if diff["low"].isna().any() and np.isfinite(diff["B / A"]).any():
        st.caption(ad.interval_caption(diff.rename(columns={"B / A": "ratio", "corpus": "label"})))
    long = diff.dropna(subset=["A perplexity"]).melt(id_vars="corpus", value_vars=["A perplexity", "B perplexity"],
                                                     var_name="condition", value_name="perplexity")
    left = alt.Chart(long).mark_bar().encode(
        x=alt.X("perplexity:Q"), y=alt.Y("corpus:N", title=None), yOffset="condition:N",
        color=alt.Color("condition:N", scale=alt.Scale(domain=["A perplexity", "B perplexity"],
                                                       range=["#4e79a7", "#f28e2b"]),
                        legend=alt.Legend(**charts.LEGEND)),
        tooltip=["corpus", "condition", alt.Tooltip("perplexity:Q", format=".3f")]).properties(title="perplexity")
    clipped = ad.clip_ratios(diff.rename(columns={"B / A": "ratio"}))
    right = (alt.Chart(clipped).mark_point(filled=True, size=80, color="black").encode(
                 x=alt.X("ratio:Q", title="B / A", scale=charts.ratio_scale(clipped), axis=charts.AXIS),
                 y=alt.Y("corpus:N", title=None),
                 tooltip=["corpus", alt.Tooltip("true_ratio:Q", format=".4~g", title="B / A"),
                          alt.Tooltip("low:Q", format=".4f"), alt.Tooltip("high:Q", format=".4f")])
             + alt.Chart(clipped).mark_rule().encode(x="low:Q", x2="high:Q", y="corpus:N")
             + alt.Chart(clipped).mark_text(align="right", dx=-8, fontSize=10).encode(
                 x="ratio:Q", y="corpus:N", text="overflow_text:N")
             + charts.unit_rule("x")).properties(title="difference: B / A")
    charts.show(alt.hconcat(left, right), f"compare conditions {sel.short(path)}", diff)
    st.markdown(f"**A**: {labels[a]} · **B**: {labels[b]}")
    st.dataframe(diff, hide_index=True, column_config={c: st.column_config.NumberColumn(format="%.4f")
                                                       for c in diff if c != "corpus"})


if what.startswith("models"):
    models()
else:
    conditions()
