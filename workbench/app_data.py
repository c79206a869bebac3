"""What the app reads from run stores: listing, cached loading, and tables ready to draw.

Streamlit is imported inside functions only, so this module imports without side effects
(tests and scripts can use the table helpers directly). Nothing here runs a model.
"""

from __future__ import annotations

import argparse
import functools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from workbench.store import StoreError, open_store, provenance_json

DEFAULT_RUNS = "runs"
RESULT_DIMS = {"condition", "corpus", "window"}  # summary-level variables; activations stay on disk
N_BOOT = 2000
CONDITION_COLUMNS = ["id", "label", "kind", "mode", "group", "roles", "layers", "draw_seed", "donor_seed",
                     "n_targets"]


# --- finding and reading stores -----------------------------------------------------------

def runs_dir_from_argv(argv: list[str]) -> str | None:
    """The folder given as ``streamlit run streamlit_app.py -- --runs DIR``, if any."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runs")
    args, _ = parser.parse_known_args(argv)
    return args.runs


def find_stores(folder: str | Path, depth: int = 3) -> list[Path]:
    """Stores (``*.zarr`` folders) in ``folder`` and its subfolders (down to ``depth`` levels,
    so pointing at a large tree stays quick), not looking inside stores or hidden folders
    (a store being laid out is a hidden ``.NAME.tmp`` folder)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        return []
    found, todo = [], [(folder, 0)]
    while todo:
        here, level = todo.pop()
        try:
            entries = sorted(p for p in here.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
        for p in entries:
            if p.suffix == ".zarr":
                found.append(p)
            elif level + 1 < depth:
                todo.append((p, level + 1))
    return sorted(found)


def fingerprint(path: str | Path) -> tuple:
    """Changes whenever a condition completes (its ``complete`` chunk is written last)."""
    path = Path(path)
    stamps = []
    for p in (path / ".zmetadata", path / "complete"):
        try:
            stamps.append(p.stat().st_mtime_ns)
        except OSError:
            stamps.append(0)
    try:
        chunks = [p.stat().st_mtime_ns for p in (path / "complete").iterdir()]
    except OSError:
        chunks = []
    return (*stamps, len(chunks), max(chunks, default=0))


def store_info(path: str | Path) -> dict:
    """One row of the store list; an unreadable store gets its error instead of a crash."""
    path = Path(path)
    row = {"store": path.name, "path": str(path)}
    try:
        ds = open_store(path)
    except StoreError as exc:
        return {**row, "model": "", "model_type": "", "conditions": "", "corpora": "", "created": "",
                "error": str(exc)}
    done = ds["complete"].values
    return {**row, "model": str(ds.attrs.get("model", "")), "model_type": str(ds.attrs.get("model_type", "")),
            "conditions": f"{int(done.sum())}/{done.size}", "corpora": ", ".join(map(str, ds.corpus.values)),
            "created": str(ds.attrs.get("created", "")), "error": ""}


def read_results(path: str | Path) -> xr.Dataset:
    """The store's per-condition results, loaded; larger arrays (activations) are not read."""
    ds = open_store(path)
    keep = [name for name, v in ds.data_vars.items() if set(v.dims) <= RESULT_DIMS]
    return ds[keep].load()


def store_name(path: str | Path, info: dict | None = None) -> str:
    info = info or {}
    model = info.get("model")
    return f"{Path(path).stem} ({model})" if model else Path(path).stem


# --- cached versions (keyed on path and fingerprint, so a finished condition shows up) ----

@functools.cache
def _cached():
    import streamlit as st

    from probes.stats import ratio_intervals
    from workbench.summary import summary_frame

    @st.cache_data(show_spinner=False, max_entries=256)
    def info(path: str, stamp: tuple) -> dict:
        return store_info(path)

    @st.cache_data(show_spinner="Reading store...", max_entries=16)
    def results(path: str, stamp: tuple) -> xr.Dataset:
        return read_results(path)

    @st.cache_data(show_spinner=False, max_entries=16)
    def summary(path: str, stamp: tuple) -> pd.DataFrame:
        return summary_frame(results(path, stamp))

    @st.cache_data(show_spinner="Bootstrapping intervals...", max_entries=16)
    def intervals(path: str, stamp: tuple, n_boot: int, seed: int) -> xr.Dataset | None:
        ds = results(path, stamp)
        if "baseline" not in list(ds.condition.values):
            return None
        return ratio_intervals(ds, n_boot=n_boot, seed=seed)

    return {"info": info, "results": results, "summary": summary, "intervals": intervals}


def cached_info(path) -> dict:
    return _cached()["info"](str(path), fingerprint(path))


def cached_results(path) -> xr.Dataset:
    return _cached()["results"](str(path), fingerprint(path))


def cached_summary(path) -> pd.DataFrame:
    return _cached()["summary"](str(path), fingerprint(path))


def cached_intervals(path, n_boot: int = N_BOOT, seed: int = 0) -> xr.Dataset | None:
    return _cached()["intervals"](str(path), fingerprint(path), n_boot, seed)


# --- tables for the pages (pure pandas; pages only draw) --------------------------------

def provenance_table(ds: xr.Dataset) -> pd.DataFrame:
    """Provenance attrs as (field, value) rows; the plan itself is shown separately."""
    prov = provenance_json(ds)
    rows = []
    for key in ("model", "model_type", "model_source", "model_revision", "config_hash", "protocol",
                "reference_corpus", "donor_seed", "device", "dtype", "created", "git_commit", "versions",
                "plan_hash", "format"):
        if key in prov:
            value = prov[key]
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in value.items())
            rows.append({"field": key, "value": str(value)})
    return pd.DataFrame(rows)


def plan_of(ds: xr.Dataset) -> dict:
    plan = provenance_json(ds).get("plan", {})
    return plan if isinstance(plan, dict) else {}


_THIRD = re.compile(r"\((early|middle|late) third\)")


def third_name(label: str) -> str:
    m = _THIRD.search(label)
    return m.group(1) if m else ""


def condition_table(ds: xr.Dataset, corpus: str, intervals: xr.Dataset | None = None,
                    summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per condition for ``corpus``: its labels, ratio to baseline, CI and QC."""
    from workbench.summary import summary_frame

    frame = summary if summary is not None else summary_frame(ds)
    out = frame[[c for c in CONDITION_COLUMNS if c in frame] + ["complete", "qc"]].copy()
    if "n_targets" not in out and "n_targets" in ds.coords:
        out["n_targets"] = ds["n_targets"].values
    out["ratio"] = frame[f"ratio:{corpus}"].values
    out["perplexity"] = frame[f"perplexity:{corpus}"].values
    if intervals is not None:
        out["low"] = intervals["low"].sel(corpus=corpus).values
        out["high"] = intervals["high"].sel(corpus=corpus).values
    else:
        out["low"] = out["high"] = np.nan
    out["third"] = [third_name(x) for x in out["label"]]
    out["first_layer"] = [_first_layer(x) for x in out["layers"]]
    out["order"] = np.arange(len(out))
    return out


def _first_layer(layers: str) -> float:
    m = re.match(r"\d+", str(layers))
    return float(m.group()) if m else np.nan


def matched_groups(table: pd.DataFrame) -> dict[str, list[str]]:
    """Random control group -> labels of the group conditions it matches (same size and mode).

    A random_matched draw has as many targets as the role group it controls for, so the
    group conditions of that size (and mode) are what its trials are compared with.
    """
    groups = table[table["kind"] == "group"]
    trials = table[table["kind"] == "random_matched"]
    out = {}
    for name, rows in trials.groupby("group", sort=False):
        size, mode = rows["n_targets"].iloc[0], rows["mode"].iloc[0]
        hit = groups[(groups["n_targets"] == size) & (groups["mode"] == mode)]
        out[str(name)] = list(hit["label"])
    return out


def random_pool(group: str) -> str:
    """'random:6ofattention+ssm' -> 'attention+ssm'."""
    return group.split("of", 1)[1] if "of" in group else group


def log_domain(*frames: pd.DataFrame, columns=("ratio", "low", "high", "min", "max")) -> list[float]:
    """Axis limits for ratios on a log scale: the values and 1, padded by 8% of their log span.

    Ablation effects can be far smaller than a decade, which a default "nice" log axis
    (0.1 to 10) flattens into one line.
    """
    parts = [f[c].to_numpy(dtype=float) for f in frames for c in columns if c in f]
    vals = np.concatenate(parts + [np.array([1.0])])
    vals = np.log(vals[np.isfinite(vals) & (vals > 0)])
    pad = max(0.08 * (vals.max() - vals.min()), 1e-5)
    return [float(np.exp(vals.min() - pad)), float(np.exp(vals.max() + pad))]


def comparison_key(row) -> str:
    """What makes conditions of different models comparable (not their layer indices)."""
    kind, mode, roles = row["kind"], row["mode"], row["roles"]
    if kind == "group":
        return f"{roles} group, {mode}"
    if kind == "thirds":
        return f"{roles} {row['third'] or row['layers']} third, {mode}"
    if kind == "random_matched":
        return f"random from {random_pool(row['group'])} (median), {mode}"
    if kind == "sweep":
        return f"{roles} layer {row['layers']}, {mode}"
    return str(row["label"])


def comparison_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Long table (key, kind, store, ratio) over stores; random trials reduced to medians."""
    from probes.stats import trial_summary

    rows = []
    for name, table in tables.items():
        t = table[(table["kind"] != "baseline") & table["complete"]]
        if t.empty:
            continue
        for key, part in t.groupby(t.apply(comparison_key, axis=1), sort=False):
            kind = part["kind"].iloc[0]
            ratio = trial_summary(part["ratio"])["median"] if kind == "random_matched" else part["ratio"].iloc[0]
            low = np.nan if kind == "random_matched" else part["low"].iloc[0]
            high = np.nan if kind == "random_matched" else part["high"].iloc[0]
            rows.append({"key": key, "kind": kind, "mode": part["mode"].iloc[0], "roles": part["roles"].iloc[0],
                         "store": name, "ratio": ratio, "low": low, "high": high, "n": len(part)})
    return pd.DataFrame(rows, columns=["key", "kind", "mode", "roles", "store", "ratio", "low", "high", "n"])


# --- shared sidebar widgets ----------------------------------------------------------------

def sidebar_runs_dir() -> Path:
    """The runs folder: text input remembered across pages; default from ``-- --runs DIR``."""
    import sys

    import streamlit as st

    if "runs_dir" not in st.session_state:
        st.session_state["runs_dir"] = runs_dir_from_argv(sys.argv[1:]) or DEFAULT_RUNS
    value = st.sidebar.text_input("Folder of run stores", key="runs_dir", persist_state="session",
                                  help="Every *.zarr store in this folder and its subfolders is listed.")
    return Path((value or DEFAULT_RUNS).strip()).expanduser()


def explain_no_stores(folder: Path) -> None:
    import streamlit as st

    if not folder.exists():
        st.warning(f"The folder `{folder}` does not exist. Type another folder in the sidebar, or "
                   f"make a run store there: `workbench run --model mini-qwen3.5 --preset study "
                   f"--corpus news --out {folder}/q35.zarr`.")
    elif not folder.is_dir():
        st.warning(f"`{folder}` is a file, not a folder. Type the folder that holds your `*.zarr` stores.")
    else:
        st.info(f"No run stores (`*.zarr`) in `{folder}` yet. Make one with `workbench run ... "
                f"--out {folder}/NAME.zarr`, or type another folder in the sidebar.")


def sidebar_store(stores: list[Path], infos: dict[str, dict]) -> Path | None:
    """One store chosen in the sidebar (remembered across pages); unreadable ones are skipped."""
    import streamlit as st

    options = [str(p) for p in stores if not infos[str(p)]["error"]]
    if not options:
        return None
    if st.session_state.get("store") not in options:
        st.session_state["store"] = options[0]
    choice = st.sidebar.selectbox("Run store", options, key="store", persist_state="session",
                                  format_func=lambda p: store_name(p, infos[p]))
    return Path(choice) if choice else None


def choose_store() -> tuple[Path | None, dict]:
    """Sidebar: folder and store. Returns (store path or None, infos of every store found)."""
    import streamlit as st

    folder = sidebar_runs_dir()
    stores = find_stores(folder)
    if not stores:
        explain_no_stores(folder)
        return None, {}
    infos = {str(p): cached_info(p) for p in stores}
    path = sidebar_store(stores, infos)
    if path is None:
        st.error(f"None of the {len(stores)} store(s) in `{folder}` could be read; see the list on the home page.")
    return path, infos
