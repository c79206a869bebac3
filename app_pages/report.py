"""Report: a study's Markdown report with its PNG figures, from a study folder.

Only ``report.md`` files that lie, links resolved, under the sidebar's folder (itself pinned to
the app's runs folder) are offered, and only figures beside them are drawn."""

from __future__ import annotations

import re

import streamlit as st

from workbench import app_data as ad

IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")

st.title("Report")
sel = ad.selection()
root = sel.folder.resolve()


def readable(path) -> bool:
    """A report.md under the folder, links resolved, outside any store."""
    return ".zarr" not in str(path) and path.is_file() and root in path.resolve().parents


reports = sorted(p for p in sel.folder.rglob("report.md") if readable(p)) if sel.folder.is_dir() else []
if not reports:
    st.info(f"No `report.md` under `{sel.folder}`. A study folder holds one once the study command "
            "(`workbench study`) has written its report (Markdown with PNG figures beside it); this page "
            "renders it. The other pages chart run stores directly in the meantime.")
    st.stop()
path = st.selectbox("Report", reports, format_func=lambda p: str(p.relative_to(sel.folder)))
try:
    text = path.read_text(encoding="utf-8", errors="replace")
except OSError as exc:  # one line, not a traceback
    st.error(f"Cannot read {path.relative_to(sel.folder)} ({exc.strerror or type(exc).__name__}).")
    st.stop()
st.download_button("Markdown", data=text.encode(), file_name="report.md", mime="text/markdown",
                   on_click="ignore", icon=":material/download:")
# Streamlit's Markdown cannot load local files: draw the text between images, and each image itself.
pos = 0
for m in IMAGE.finditer(text):
    if text[pos:m.start()].strip():
        st.markdown(text[pos:m.start()])
    figure = (path.parent / m.group(2)).resolve()
    if figure.is_file() and figure.is_relative_to(path.resolve().parent):
        st.image(str(figure), caption=m.group(1) or None)
    else:
        st.warning(f"Figure `{m.group(2)}` is missing beside the report.")
    pos = m.end()
if text[pos:].strip():
    st.markdown(text[pos:])
