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

PAGES = [("app_pages/runs.py", "Runs", ":material/folder_open:"),
         ("app_pages/model_map.py", "Model map", ":material/account_tree:"),
         ("app_pages/perplexity.py", "Perplexity and tasks", ":material/bar_chart:"),
         ("app_pages/layer_sweep.py", "Layer sweep", ":material/grid_on:"),
         ("app_pages/random_controls.py", "Random controls", ":material/scatter_plot:"),
         ("app_pages/compare.py", "Compare", ":material/compare_arrows:"),
         ("app_pages/representations.py", "Representations", ":material/stacked_line_chart:"),
         ("app_pages/embedding_map.py", "Embedding map", ":material/bubble_chart:"),
         ("app_pages/report.py", "Report", ":material/article:"),
         ("app_pages/launch.py", "Launch", ":material/rocket_launch:")]



@st.cache_resource
def restart_runners(folder: str) -> list[int]:
    """Once per app process and runs folder: a job runner that died with jobs queued is restarted."""
    from workbench import jobs

    return jobs.ensure_runners(folder) if Path(folder).is_dir() else []


st.set_page_config(page_title="Ablation workbench", layout="wide", initial_sidebar_state="expanded")
page = st.navigation([st.Page(path, title=title, icon=icon, default=i == 0)
                      for i, (path, title, icon) in enumerate(PAGES)])
# Drawn here, on every run, so the folder and stores chosen survive page changes.
ad.sidebar()
restart_runners(str(Path(ad.default_runs_dir()).expanduser().resolve()))
st.session_state[ad.IN_NAVIGATION] = True
try:
    page.run()
finally:
    st.session_state[ad.IN_NAVIGATION] = False
