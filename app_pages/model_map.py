"""Model map: the component map as layers x roles, topology and parameter counts, from the store."""

from __future__ import annotations

import altair as alt
import streamlit as st

from workbench import app_data as ad
from workbench.app import charts
from workbench.app.components import component_frame
from workbench.app.palette import ROLE_COLOURS, scale

st.title("Model map")
st.caption("Which components each layer has, how they are wired, and their size, as recorded in the "
           "store (the app never loads a model).")
sel = ad.selection()
path = ad.one_store(sel)
ad.warn_store(sel, path)
ds = ad.cached_results(path)
try:
    frame = component_frame(ds)
except ValueError as exc:
    st.error(f"The store's component map cannot be read: {exc}")
    st.stop()
if frame is None:
    st.info(f"**{sel.name(path)}** does not record its component map. Stores written by `workbench run` "
            "record it in their attrs (`component_map`); rerun `workbench run` with the same arguments into a "
            "new `--out` store to get one.")
    st.stop()

model = ds.attrs.get("model", "")
parallel = sorted(set(frame.loc[frame["topology"] == "parallel", "role"]))
st.subheader(f"{model} · {frame['layer'].nunique()} layers")
st.markdown("**Topology:** " + (f"parallel: {', '.join(parallel)} run side by side inside a block and are summed "
                                "(one residual update)" if parallel else
                                "sequential: each component adds to the residual stream in turn"))
show_layer = st.toggle("Show whole-layer rows (role `layer`)", value=False)
cells = frame if show_layer else frame[frame["role"] != "layer"]
roles = [r for r in ROLE_COLOURS if r in set(cells["role"])] + sorted(set(cells["role"]) - set(ROLE_COLOURS))
# parallel mixers share one row label prefix, so the block's two branches read as one stage
cells = cells.assign(params=cells["n_params"].astype(float),
                     row=[f"∥ {r} (parallel)" if t == "parallel" else r
                          for r, t in zip(cells["role"], cells["topology"])])
rows = list(dict.fromkeys(cells.set_index("role").loc[roles, "row"]))
base = alt.Chart(cells).encode(
    x=alt.X("layer:O", title="layer", axis=alt.Axis(labelAngle=0)),
    y=alt.Y("row:N", sort=rows, title=None, axis=alt.Axis(labelLimit=0)))
chart = (base.mark_rect(stroke="white", strokeWidth=2).encode(
             color=alt.Color("role:N", scale=scale(ROLE_COLOURS, roles), legend=alt.Legend(**charts.LEGEND)),
             tooltip=["layer", "role", "path", "topology", alt.Tooltip("n_params:Q", format=",")])
         + base.mark_text(fontSize=10, color="black").encode(
             text=alt.Text("params:Q", format=".2s")))
charts.show(chart.properties(height=alt.Step(34)), f"model map {model}", cells)
st.caption("Cell text: parameters of the component. Rows marked ∥ are parallel branches of one block "
           "(their outputs are summed into one residual update); other rows act one after another.")

totals = (frame[frame["role"] != "layer"].groupby("role", sort=False)
          .agg(components=("layer", "size"), parameters=("n_params", "sum")).reset_index())
st.dataframe(totals, hide_index=True, column_config={"parameters": st.column_config.NumberColumn(format="%d")})
with st.expander("Every component"):
    st.dataframe(frame, hide_index=True)
