"""Permalinks: the view's state (the sidebar's folder and stores, a page's main choices) kept in
the URL, so a copied link opens the same view.

Streamlit binds a keyed widget to the query parameter of the same name (``bind="query-params"``):
the widget writes its value into the URL and is restored from it on load. Nothing read from the
URL is trusted more than a typed value: the folder still goes through the sidebar's
``folder_in_runs`` pin, and a value that is not among a widget's options is dropped by Streamlit.
Choices are carried as their displayed text (a store's short name, never its path on disk).

A page adopts permalinks by passing ``**bound("name")`` to its main widgets; links into other
pages carry the sidebar's state with ``st.page_link(..., query_params=carried())``.
"""

from __future__ import annotations

FOLDER, STORES = "folder", "stores"  # the sidebar's parameters, on every page
_SIDEBAR = "_permalink_sidebar"


def bound(key: str) -> dict:
    """Keyword arguments that tie a widget to the URL parameter ``key`` (also its session key)."""
    return {"key": key, "bind": "query-params", "persist_state": "session"}


def remember(folder: str | None, stores: list[str]) -> None:
    """The sidebar's state as its URL carries it (folder left out when it is the default)."""
    import streamlit as st

    st.session_state[_SIDEBAR] = {**({FOLDER: folder} if folder else {}), **({STORES: stores} if stores else {})}


def carried(**page_params) -> dict:
    """Query parameters for a link to another page: the sidebar's state plus ``page_params``
    (empty values left out), so the page opens on the same folder and stores."""
    import streamlit as st

    extra = {k: v for k, v in page_params.items() if v not in (None, "", [], ())}
    return {**st.session_state.get(_SIDEBAR, {}), **extra}
