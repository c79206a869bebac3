"""Shared chart pieces and figure / table downloads (figures made only when downloaded)."""

from __future__ import annotations

import importlib.util
import re

import altair as alt
import numpy as np
import pandas as pd

from workbench.app_data import log_domain

AXIS = alt.Axis(format="~g", labelOverlap=True)
LEGEND = dict(orient="top", labelLimit=0, titleLimit=0)  # never truncate legend labels
HAS_VL_CONVERT = importlib.util.find_spec("vl_convert") is not None


def ratio_scale(*frames: pd.DataFrame) -> alt.Scale:
    return alt.Scale(type="log", domain=log_domain(*frames), nice=False)


def unit_rule(axis: str = "x") -> alt.Chart:
    """The no-change line at ratio 1."""
    enc = alt.X("r:Q") if axis == "x" else alt.Y("r:Q")
    return alt.Chart(pd.DataFrame({"r": [1.0]})).mark_rule(strokeDash=[4, 4], color="gray").encode(enc)


def finite_bars(table: pd.DataFrame) -> pd.DataFrame:
    """Rows with a finite ratio, interval ends that are not finite blanked (no bar to infinity)."""
    out = table[np.isfinite(table["ratio"].astype(float))].copy()
    for col in ("low", "high"):
        if col in out:
            out[col] = out[col].where(np.isfinite(out[col].astype(float)))
    return out


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "figure"


def figure_bytes(chart: alt.TopLevelMixin, fmt: str, title: str | None = None) -> bytes:
    """The chart as PNG or SVG (vl-convert), or as a standalone HTML page (Altair's own);
    ``title`` goes on a chart without one (on the page the heading above it says what it is, a
    downloaded file has nothing else)."""
    if fmt not in ("png", "svg", "html"):
        raise ValueError(f"unknown figure format {fmt!r}; valid: png, svg, html")
    if title and chart.to_dict().get("title") is None:
        chart = chart.properties(title=alt.TitleParams(title, anchor="start"))
    if fmt == "html":
        return chart.to_html().encode()
    import vl_convert as vlc

    spec = chart.to_dict()
    if fmt == "png":
        return vlc.vegalite_to_png(spec, scale=2)
    return vlc.vegalite_to_svg(spec).encode()


def show(chart: alt.TopLevelMixin, name: str, table: pd.DataFrame | None = None, **kwargs):
    """Draw ``chart`` with downloads of the figure (PNG and SVG when vl-convert is installed,
    else interactive HTML) and of ``table`` (CSV). Returns what ``st.altair_chart`` returns."""
    import streamlit as st

    out = st.altair_chart(chart, width="stretch", **kwargs)
    base = slug(name)
    title = name[:1].upper() + name[1:]
    formats = ("png", "svg") if HAS_VL_CONVERT else ("html",)
    cols = st.columns(len(formats) + (table is not None) + 4)
    for col, fmt in zip(cols, formats):
        col.download_button(fmt.upper(), data=lambda fmt=fmt: figure_bytes(chart, fmt, title), file_name=f"{base}.{fmt}",
                            mime={"png": "image/png", "svg": "image/svg+xml", "html": "text/html"}[fmt],
                            on_click="ignore", key=f"dl:{base}:{fmt}", icon=":material/download:")
    if table is not None:
        cols[len(formats)].download_button("CSV", data=lambda: table.to_csv(index=False).encode(),
                                           file_name=f"{base}.csv", mime="text/csv", on_click="ignore",
                                           key=f"dl:{base}:csv", icon=":material/download:")
    return out


def table_download(table: pd.DataFrame, name: str) -> None:
    import streamlit as st

    st.download_button("CSV", data=lambda: table.to_csv(index=False).encode(), file_name=f"{slug(name)}.csv",
                       mime="text/csv", on_click="ignore", key=f"dl:{slug(name)}:table",
                       icon=":material/download:")
