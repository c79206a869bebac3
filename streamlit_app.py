"""The app: home page (find run stores, pick one, provenance and summary) and navigation.

    streamlit run streamlit_app.py -- --runs DIR

The app only reads stores (lazily, cached until a store changes); it never runs a model.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from workbench import app_data as ad

METRICS = ("ratio", "perplexity", "bits_per_byte", "loss")


def _qc_colour(row: pd.Series) -> list[str]:
    colour = {"ok": "", "pending": "background-color: #fff3cd"}.get(row["qc"], "background-color: #f8d7da")
    return [colour] * len(row)


def summary_table(summary: pd.DataFrame, corpora: list[str]):
    """The summary frame, metrics grouped by kind across corpora, QC rows coloured."""
    metric_cols = [f"{m}:{c}" for m in METRICS for c in corpora]
    table = summary[["label", "kind", "mode", "roles", "layers", "draw_seed", "donor_seed", *metric_cols,
                     "qc", "id"]].copy()
    for col in ("draw_seed", "donor_seed"):
        table[col] = [str(s) if s >= 0 else "" for s in table[col]]  # -1 means "no seed"
    return (table.style.apply(_qc_colour, axis=1)
            .format({c: "{:.2f}" if c.startswith("perplexity") else "{:.4f}" for c in metric_cols}, na_rep=""))


def home() -> None:
    st.title("Hybrid-LM ablation workbench")
    st.caption("Perplexity of ablated models, read from `workbench run` stores. "
               "Pick a store in the sidebar; the other pages chart it.")
    path, infos = ad.choose_store()

    if infos:
        st.subheader("Run stores found")
        listing = pd.DataFrame(list(infos.values()))
        columns = ["store", "model", "model_type", "conditions", "corpora", "created"]
        if listing["error"].astype(bool).any():
            columns.append("error")
        st.dataframe(listing[columns], hide_index=True,
                     column_config={"conditions": st.column_config.TextColumn("conditions (complete/total)")})
    if path is None:
        return

    ds = ad.cached_results(path)
    summary = ad.cached_summary(path)
    info = infos[str(path)]
    corpora = [str(c) for c in ds.corpus.values]

    st.header(ad.store_name(path, info))
    done, total = int(summary["complete"].sum()), len(summary)
    cols = st.columns(4)
    cols[0].metric("model", info["model_type"] or info["model"])
    cols[1].metric("conditions complete", f"{done}/{total}")
    cols[2].metric("corpora", ", ".join(corpora))
    cols[3].metric("tokens scored", f"{int((ds['n_tokens'] - 1).sum()):,}")
    if done < total:
        st.warning(f"{total - done} condition(s) are not computed yet (a partial or running store); "
                   "they show as *pending*. Rerun the same `workbench run` command to finish it.")
    if "baseline" not in set(summary["id"]):
        st.warning("This store has no baseline condition, so ratios to baseline are not available.")

    with st.expander("Provenance"):
        st.dataframe(ad.provenance_table(ds), hide_index=True)
        plan = ad.plan_of(ds)
        if plan:
            st.caption(f"plan **{plan.get('name', '')}**, {len(plan.get('conditions', []))} conditions")
            st.json(plan, expanded=False)

    st.subheader("Summary")
    bad = ~summary["qc"].isin(["ok", "pending"])
    if bad.any():
        st.error(f"QC: {int(bad.sum())} condition(s) failed ({', '.join(sorted(set(summary.loc[bad, 'qc'])))}), "
                 "highlighted in red. NOT FIRED: the edit never ran; NO EFFECT: the output is identical "
                 "to the baseline's. Their numbers do not measure the ablation.")
    st.dataframe(summary_table(summary, corpora), hide_index=True, height=min(38 + 35 * len(summary), 800))
    st.caption("ratio = perplexity / baseline perplexity on the same corpus (1 = no change). "
               "Rows in red failed QC; rows in yellow are pending.")


# Explicit navigation, so pages get titles rather than file names.
st.set_page_config(page_title="Ablation workbench", layout="wide", initial_sidebar_state="expanded")
st.navigation([st.Page(home, title="Run stores", default=True),
               st.Page("pages/1_Conditions.py", title="Conditions"),
               st.Page("pages/2_Compare_runs.py", title="Compare runs")]).run()
