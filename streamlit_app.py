"""The app: sidebar (runs folder, stores) and navigation between the pages in ``app_pages/``.

The folder is not called ``pages/``: Streamlit would also serve each file there as a page of its
own (without this sidebar and navigation) to a visitor who opens its URL directly.

    workbench app --runs DIR        (or: streamlit run streamlit_app.py -- --runs DIR)

The app only reads stores (lazily, cached until a store changes); it never runs a model and
never imports torch.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from workbench import app_data as ad
from workbench.app.pages import PAGES




@st.cache_resource
def restart_runners(folder: str) -> list[int]:
    """Once per app process and runs folder: a job runner that died with jobs queued is restarted."""
    from workbench import jobs

    return jobs.ensure_runners(folder) if Path(folder).is_dir() else []


st.set_page_config(page_title="Ablation workbench", layout="wide", initial_sidebar_state="expanded")
page = st.navigation([st.Page(p.path, title=p.title, icon=p.icon, default=i == 0) for i, p in enumerate(PAGES)])
# Drawn here, on every run, so the folder and stores chosen survive page changes.
ad.sidebar()
restart_runners(str(Path(ad.default_runs_dir()).expanduser().resolve()))
st.session_state[ad.IN_NAVIGATION] = True
try:
    page.run()
finally:
    st.session_state[ad.IN_NAVIGATION] = False
