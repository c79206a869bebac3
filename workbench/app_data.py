"""What the app reads from run stores: listing, cached loading, and tables ready to draw.

Streamlit is imported inside functions only, so this module imports without side effects
(tests and scripts can use the table helpers directly). Nothing here runs a model.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from workbench.app.palette import FUNCTION, function_of, role_of
from workbench.claims import pid_alive
from workbench.store import StoreError, open_store, provenance_json, verify

DEFAULT_RUNS = "runs"
# task results carry metric (acc, acc_norm); loglik's choice dim and activations stay on disk
RESULT_DIMS = {"condition", "corpus", "window", "task", "item", "metric", "layer", "role"}
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
    (a store being laid out is a hidden ``.NAME.tmp`` folder), nor following a symbolic link
    out of ``folder`` (the app shows only what lies under its runs folder)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        return []
    top = folder.resolve()
    found, todo = [], [(folder, 0)]
    while todo:
        here, level = todo.pop()
        try:
            entries = sorted(p for p in here.iterdir() if p.is_dir() and not p.name.startswith(".")
                             and (not p.is_symlink() or top in p.resolve().parents))
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


def store_size(path: str | Path) -> int:
    """Bytes on disk under the store folder."""
    total = 0
    for p in Path(path).rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def _holder_gone(lock: Path) -> bool:
    """The lock file names a process of this host that no longer runs (a cancelled run whose
    lock lives on in a child that inherited it)."""
    import json
    import socket

    try:
        owner = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        return False
    pid = owner.get("pid")
    return owner.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)


def being_written(path: str | Path) -> bool:
    """Whether a live process holds a claim on one of the store's conditions now.

    ``workbench run`` holds an exclusive lock on ``.NAME.claims/<index>.lock`` while it computes
    a condition; the kernel drops it when the process dies. A child that inherited the lock can
    outlive a cancelled run, so a held lock counts only while the process it names is alive.
    """
    import fcntl
    import os

    root = Path(path).with_name(f".{Path(path).name}.claims")
    for lock in root.glob("*.lock") if root.is_dir() else ():
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            if not _holder_gone(lock):
                return True
        except OSError:
            continue
        finally:
            os.close(fd)
    return False


_FILL = {"complete": False, "qc_fired": False, "qc_changed": -1, "n_edits": 0}


def read_store(path: str | Path) -> tuple[xr.Dataset, dict[int, str]]:
    """The store's per-condition results, loaded, and its damaged conditions (index -> problem).

    Conditions marked complete whose data are unreadable or missing (``workbench.store.verify``)
    are not read: they come back blank and not complete, so the rest of the store still draws.
    Larger arrays (activations) are never read.
    """
    ds = open_store(path)
    problems = verify(ds)
    if -1 in problems:
        raise StoreError(f"{path}: {problems[-1]}")
    keep = [name for name, v in ds.data_vars.items() if set(v.dims) <= RESULT_DIMS]
    if not problems:
        return ds[keep].load(), {}
    good = [i for i in range(ds.sizes["condition"]) if i not in problems]
    part = ds[keep].isel(condition=good).load()
    full = part.reindex(condition=ds["condition"].values)
    full = full.assign_coords({c: ds[c].load() for c in ds.coords if ds[c].dims == ("condition",)})
    for name, fill in _FILL.items():
        if name in full:
            full[name] = full[name].fillna(fill).astype(ds[name].dtype)
    return full, problems


def read_results(path: str | Path) -> xr.Dataset:
    """``read_store`` without the list of damaged conditions."""
    return read_store(path)[0]


def describe_damage(problems: dict[int, str], labels) -> str:
    labels = list(labels)
    parts = [f"{labels[i] if 0 <= i < len(labels) else i}: {what}" for i, what in sorted(problems.items())]
    more = f" and {len(parts) - 3} more" if len(parts) > 3 else ""
    return f"{len(parts)} damaged condition(s) ({'; '.join(parts[:3])}{more})"


def store_info(path: str | Path) -> dict:
    """One row of the store list; an unreadable or damaged store gets its error, never a crash."""
    from workbench.summary import summary_frame

    path = Path(path)
    row = {"store": path.name, "path": str(path), "model": "", "model_type": "", "n_layers": None,
           "conditions": "", "complete": False, "corpora": "", "qc": "", "size_mb": round(store_size(path) / 1e6, 2),
           "created": "", "writing": False, "damaged": "", "error": ""}
    try:
        ds, problems = read_store(path)
        summary = summary_frame(ds)
    except Exception as exc:  # any unreadable store is listed with its error
        return {**row, "error": str(exc) if isinstance(exc, StoreError) else
                f"unreadable ({type(exc).__name__}: {exc})"}
    done = ds["complete"].values
    qc = summary["qc"].where(~summary.index.isin(list(problems)), "DAMAGED").value_counts()
    return {**row, "model": str(ds.attrs.get("model", "")), "model_type": str(ds.attrs.get("model_type", "")),
            "n_layers": ds.attrs.get("n_layers"),
            "conditions": f"{int(done.sum())}/{done.size}", "complete": bool(done.all()),
            "corpora": ", ".join(map(str, ds.corpus.values)),
            "qc": ", ".join(f"{k} {v}" for k, v in qc.items()),
            "created": str(ds.attrs.get("created", "")), "writing": being_written(path),
            "damaged": describe_damage(problems, ds["label"].values) if problems else ""}


def store_name(path: str | Path, info: dict | None = None) -> str:
    info = info or {}
    model, stem = info.get("model"), Path(path).stem
    return f"{stem} ({model})" if model and model != stem else stem


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
    def store(path: str, stamp: tuple) -> tuple[xr.Dataset, dict[int, str]]:
        return read_store(path)

    @st.cache_data(show_spinner=False, max_entries=16)
    def summary(path: str, stamp: tuple) -> pd.DataFrame:
        ds, problems = store(path, stamp)
        frame = summary_frame(ds)
        frame.loc[frame.index.isin(list(problems)), "qc"] = "DAMAGED"
        return frame

    @st.cache_data(show_spinner="Bootstrapping intervals...", max_entries=16)
    def intervals(path: str, stamp: tuple, n_boot: int, seed: int) -> xr.Dataset | None:
        ds, _ = store(path, stamp)
        if "baseline" not in list(ds.condition.values):
            return None
        return ratio_intervals(ds, n_boot=n_boot, seed=seed, block="auto")  # the report's blocks

    @st.cache_data(show_spinner="Bootstrapping task intervals...", max_entries=16)
    def accuracy(path: str, stamp: tuple, metric: str, n_boot: int) -> pd.DataFrame | None:
        return accuracy_table(store(path, stamp)[0], metric, n_boot=n_boot)

    @st.cache_data(show_spinner="Reading diagnostics...", max_entries=16)
    def diagnostics(path: str, stamp: int) -> xr.Dataset | None:
        from workbench.app.diagnostics import read_diagnostics

        return read_diagnostics(path)

    return {"info": info, "store": store, "summary": summary, "intervals": intervals, "accuracy": accuracy,
            "diagnostics": diagnostics}


def cached_info(path) -> dict:
    return _cached()["info"](str(path), fingerprint(path))


def cached_results(path) -> xr.Dataset:
    return _cached()["store"](str(path), fingerprint(path))[0]


def cached_summary(path) -> pd.DataFrame:
    return _cached()["summary"](str(path), fingerprint(path))


def cached_intervals(path, n_boot: int = N_BOOT, seed: int = 0) -> xr.Dataset | None:
    return _cached()["intervals"](str(path), fingerprint(path), n_boot, seed)


def cached_accuracy(path, metric: str = "acc", n_boot: int = N_BOOT) -> pd.DataFrame | None:
    return _cached()["accuracy"](str(path), fingerprint(path), metric, n_boot)


def cached_diagnostics(path, warn: bool = True) -> xr.Dataset | None:
    """The store's diagnostics group (None without one; a damaged one is said on the page and
    treated as absent)."""
    from workbench.app import diagnostics as dg

    stamp = dg.group_stamp(path, dg.DIAGNOSTICS)
    if not stamp:
        return None
    try:
        return _cached()["diagnostics"](str(path), stamp)
    except dg.Unreadable as exc:
        if warn:
            import streamlit as st

            st.warning(str(exc))
        return None


# --- tables for the pages (pure pandas; pages only draw) --------------------------------

def provenance_table(ds: xr.Dataset) -> pd.DataFrame:
    """Provenance attrs as (field, value) rows; the plan itself is shown separately."""
    prov = provenance_json(ds)
    rows = []
    for key in ("model", "model_type", "model_source", "model_revision", "config_hash", "protocol",
                "reference_corpus", "donor_seed", "device", "dtype", "created", "git_commit", "versions", "kernels",
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
    out["role"] = [role_of(r) for r in out["roles"]]
    out["function"] = [function_of(r) for r in out["roles"]]
    out["same_as"] = same_as_group(out)
    out["order"] = np.arange(len(out))
    return out


def short_number(value: float, ratio: bool = True) -> str:
    """A ratio with enough decimals to tell it from 1 (1.00033, 1.50, 12.30); else 3 significant digits."""
    if not np.isfinite(value):
        return str(value)
    if not ratio:
        return f"{value:.3g}"
    gap = abs(value - 1)
    places = 2 if gap == 0 else min(5, max(2, 1 - int(np.floor(np.log10(gap)))))
    return f"{value:.{places}f}"


def choices(ids, labels) -> dict[str, str]:
    """Display text -> condition id, for selectboxes (a repeated label gets its id appended)."""
    labels = [str(x) for x in labels]
    return {(lab if labels.count(lab) == 1 else f"{lab} [{cid}]"): str(cid) for cid, lab in zip(ids, labels)}


def same_as_group(table: pd.DataFrame) -> list[str]:
    """For each random draw, the group condition that removes exactly the same components
    (same single role, layers and mode), else "". Such a trial is no control for that group."""
    groups = table[table["kind"] == "group"]
    index = {(r, lay, m): lab for r, lay, m, lab in zip(groups["roles"], groups["layers"], groups["mode"],
                                                          groups["label"])}
    return [index.get((r, lay, m), "") if k == "random_matched" else ""
            for k, r, lay, m in zip(table["kind"], table["roles"], table["layers"], table["mode"])]


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
    """'random:6ofattention+ssm' -> 'attention+ssm'; the mode a study appends to its whole-layer
    draws ('random:2oflayer:skip_layer') is dropped: it is shown beside the pool anyway."""
    pool = group.split("of", 1)[1] if "of" in group else group
    return pool.split(":", 1)[0]


OVERFLOW = 1e3  # ratios drawn at most this far from 1; larger ones sit at the edge, marked


def clip_ratios(frame: pd.DataFrame, limit: float = OVERFLOW,
                columns=("ratio", "low", "high", "min", "max", "median", "q25", "q75")) -> pd.DataFrame:
    """Ratios above ``limit`` drawn at ``limit``, the true value kept in ``true_ratio`` and the
    row flagged in ``overflow``: one destroyed model (x1e36) would otherwise flatten a shared log
    axis, shrinking x1.2 against x2.0 to slivers."""
    out = frame.copy()
    value = "ratio" if "ratio" in out else "median"
    out["true_ratio"] = out[value]
    out["overflow"] = out[value].astype(float) > limit
    out["overflow_text"] = [f"▶ x{v:.3g}" if o else "" for v, o in zip(out[value], out["overflow"])]
    for col in columns:
        if col in out:
            vals = out[col].astype(float)
            out[col] = vals.where(~(vals > limit), limit)
    return out


def overflow_caption(frame: pd.DataFrame, limit: float = OVERFLOW) -> str:
    """A sentence naming the clipped rows, or ""."""
    if "overflow" not in frame or not frame["overflow"].any():
        return ""
    return (f"▶ marks ratios above x{limit:g}, drawn at the axis edge so the others stay readable "
            "(true values in the tooltip and the table).")


def no_interval(frame: pd.DataFrame) -> list[str]:
    """Labels of rows with a finite ratio but no interval (too few windows to resample)."""
    if not {"ratio", "low"} <= set(frame):
        return []
    rows = frame[np.isfinite(frame["ratio"].astype(float)) & frame["low"].isna()]
    return list(dict.fromkeys(rows["label"] if "label" in rows else rows.index.astype(str)))


def interval_caption(frame: pd.DataFrame) -> str:
    """'too few windows for an interval' with the rows it concerns, or ""."""
    names = no_interval(frame)
    if not names:
        return ""
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return (f"Too few windows for an interval: {'; '.join(names[:3])}{more} (no error bar; an interval "
            "needs at least two windows to resample).")


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


def comparison_key(row, align: str = "role") -> str:
    """What makes conditions of different models comparable (not their layer indices).

    ``align="function"`` names roles by what they do, so Falcon-H1's ``ssm`` and Qwen3.5's
    ``linear_attention`` share the key "linear-time mixer".
    """
    if align not in ("role", "function"):
        raise ValueError(f"align must be 'role' or 'function', got {align!r}")
    kind, mode, roles = row["kind"], row["mode"], row["roles"]
    if kind == "group" and str(row.get("group", "")).startswith("group:"):
        roles = str(row["group"]).split(":")[1]  # a skip_layer group's targets are layers; name its role
    if align == "function":
        roles = "+".join(dict.fromkeys(FUNCTION.get(r, r) for r in str(roles).split("+") if r))
    if kind == "group":
        return f"{roles} group, {mode}"
    if kind == "thirds":
        return f"{roles} {row['third'] or row['layers']} third, {mode}"
    if kind == "random_matched":
        pool = random_pool(row["group"])
        if align == "function":
            pool = "+".join(dict.fromkeys(FUNCTION.get(r, r) for r in pool.split("+")))
        return f"random from {pool} (median), {mode}"
    if kind == "sweep":
        return f"{roles} layer {row['layers']}, {mode}"
    return str(row["label"])


def comparison_table(tables: dict[str, pd.DataFrame], align: str = "role") -> pd.DataFrame:
    """Long table (key, kind, store, ratio) over stores; random trials reduced to medians.

    Random draws identical to a group condition are kept but counted in ``n_same``."""
    from probes.stats import trial_summary

    rows = []
    for name, table in tables.items():
        t = table[(table["kind"] != "baseline") & table["complete"]]
        if t.empty:
            continue
        for key, part in t.groupby(t.apply(comparison_key, axis=1, align=align), sort=False):
            kind = part["kind"].iloc[0]
            ratio = trial_summary(part["ratio"])["median"] if kind == "random_matched" else part["ratio"].iloc[0]
            low = np.nan if kind == "random_matched" else part["low"].iloc[0]
            high = np.nan if kind == "random_matched" else part["high"].iloc[0]
            n_same = int((part["same_as"] != "").sum()) if "same_as" in part else 0
            rows.append({"key": key, "kind": kind, "mode": part["mode"].iloc[0], "roles": part["roles"].iloc[0],
                         "function": function_of(part["roles"].iloc[0]), "store": name, "ratio": ratio,
                         "low": low, "high": high, "n": len(part), "n_same": n_same})
    return pd.DataFrame(rows, columns=["key", "kind", "mode", "roles", "function", "store", "ratio", "low",
                                       "high", "n", "n_same"])


def sweep_segments(sweep: pd.DataFrame, layers_of: dict[str, list[int]] | None = None) -> pd.Series:
    """A line id per run of adjacent layers of the same role: a role absent from layers in
    between (Qwen3.5's attention at 3 and 7) breaks the line instead of bridging the gap.

    ``layers_of`` gives each role's layers in the model; without it, the sweep's own layers.
    """
    seg = pd.Series("", index=sweep.index, dtype=object)
    by = [c for c in ("store", "series") if c in sweep] or ["roles"]
    for key, part in sweep.groupby(by, sort=False):
        key = "|".join(map(str, key)) if isinstance(key, tuple) else str(key)
        role = part["roles"].iloc[0]
        have = sorted(set((layers_of or {}).get(role, [])) | set(part["first_layer"].astype(int)))
        run_of, run = {}, 0
        for a, b in zip([None] + have[:-1], have):
            if a is not None and b != a + 1:
                run += 1
            run_of[b] = run
        seg[part.index] = [f"{key}|{run_of[int(x)]}" for x in part["first_layer"]]
    return seg


# --- shared sidebar widgets ----------------------------------------------------------------

@dataclasses.dataclass
class Selection:
    """What the sidebar chose: the runs folder, every store found, their infos, the picked ones."""
    folder: Path
    stores: list[str]
    infos: dict[str, dict]
    picked: list[str]

    def usable(self) -> list[str]:
        return [p for p in self.stores if not self.infos[p]["error"]]

    def short(self, path: str) -> str:
        """The store's folder name (relative path when two share a name), for narrow widgets."""
        stems = [Path(p).stem for p in self.usable()]
        if stems.count(Path(path).stem) > 1:
            return str(Path(path).relative_to(self.folder)) if Path(path).is_relative_to(self.folder) else path
        return Path(path).stem

    def name(self, path: str) -> str:
        names = [store_name(p, self.infos[p]) for p in self.usable()]
        name = store_name(path, self.infos[path])
        return str(path) if names.count(name) > 1 else name  # same file name in two folders


def default_runs_dir() -> str:
    import sys

    return runs_dir_from_argv(sys.argv[1:]) or DEFAULT_RUNS


def folder_in_runs(value: str, root: Path) -> Path | None:
    """The folder typed in the sidebar (relative ones inside ``root``), resolved; None when it is
    not ``root`` or below it: visitors read only the folder the app was started on (--runs)."""
    path = Path(value.strip() or ".").expanduser()
    path = (path if path.is_absolute() else root / path).resolve()
    return path if path == root or root in path.parents else None


def sidebar() -> Selection:
    """The sidebar of every page: runs folder and stores. Drawn by the entrypoint on each run,
    so the choice survives page changes (a page-local widget's state is dropped on a switch).
    Both are kept in the URL (``?folder=...&stores=...``, see ``workbench.app.permalink``)."""
    import streamlit as st

    from workbench.app import permalink

    # The default goes in as the widget's value: a value put in session state before the widget
    # exists is dropped by Streamlit on the first page change.
    default = st.session_state.setdefault("_runs_default", default_runs_dir())  # one default per visit
    value = st.sidebar.text_input("Folder of run stores", value=default, **permalink.bound(permalink.FOLDER),
                                  help="The app's runs folder or one of its sub-folders: every *.zarr store in it "
                                       "and its subfolders is listed.")
    root = Path(default).expanduser().resolve()
    # typed or from a link's ?folder=: the same pin either way
    folder = folder_in_runs(value or default, root)
    if folder is None:  # not echoed: the text is the visitor's
        st.sidebar.error(f"That folder is outside the app's runs folder {root}; type it or one of its sub-folders.")
        folder = root
    stores = [str(p) for p in find_stores(folder)]
    infos = {p: cached_info(p) for p in stores}
    sel = Selection(folder, stores, infos, [])
    usable = sel.usable()
    # one URL parameter for every folder: a new folder starts on its first store
    if st.session_state.get("_stores_folder") not in (None, str(folder)):
        st.session_state[permalink.STORES] = usable[:1]
    st.session_state["_stores_folder"] = str(folder)
    if usable:
        default_pick = None if permalink.STORES in st.session_state else usable[:1]
        sel.picked = st.sidebar.multiselect(
            "Stores", usable, default=default_pick, **permalink.bound(permalink.STORES),
            format_func=sel.short, help="Pages about one store show the first one picked; Random controls "
                                       "and Compare show every store picked.")
    permalink.remember(value if folder != root else None, [sel.short(p) for p in sel.picked])
    st.session_state["selection"] = sel
    return sel


def selection() -> Selection:
    """The sidebar's choice for this run; drawn here when a page runs on its own (tests)."""
    import streamlit as st

    if st.session_state.get(IN_NAVIGATION) and "selection" in st.session_state:
        return st.session_state["selection"]
    return sidebar()


IN_NAVIGATION = "_sidebar_drawn_by_entrypoint"


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


def need_stores(sel: Selection, at_least: int = 1) -> list[str]:
    """The picked stores, or stop the page with a message saying what is missing and why."""
    import streamlit as st

    if not sel.stores:
        explain_no_stores(sel.folder)
        st.stop()
    if not sel.usable():
        st.error(f"None of the {len(sel.stores)} store(s) in `{sel.folder}` could be read; the Runs page "
                 "lists each with its error.")
        st.stop()
    if len(sel.picked) < at_least:
        st.info(f"Pick {'a store' if at_least == 1 else f'{at_least} or more stores'} in the sidebar "
                f"({len(sel.usable())} readable in `{sel.folder}`).")
        st.stop()
    return sel.picked


def one_store(sel: Selection) -> str:
    """The store a one-store page draws: the first picked, or a choice among the picked."""
    import streamlit as st

    picked = need_stores(sel)
    if len(picked) == 1:
        return picked[0]
    return st.selectbox("Store", picked, format_func=sel.name)


def warn_store(sel: Selection, path: str) -> None:
    """Say on the page when a store is damaged, partial or still being written."""
    import streamlit as st

    info = sel.infos[path]
    name = sel.name(path)
    if info["damaged"]:
        st.warning(f"**{name}**: {info['damaged']}. They are left out of every chart; rerun the same "
                   "`workbench run` command to recompute them.")
    if info["writing"]:
        st.info(f"**{name}** is being written now ({info['conditions']} conditions complete); "
                "charts update as conditions finish.")
    elif not info["complete"]:
        st.info(f"**{name}** is partial ({info['conditions']} conditions complete); the rest show as pending. "
                "Rerun the same `workbench run` command to finish it.")


# --- tasks and diagnostics ------------------------------------------------------------------

def group_role(row) -> str:
    """The role a group condition is about ('group:attention' -> 'attention'), also for
    skip_layer groups ('group:attention:skip_layer'), whose targets are whole layers."""
    group = str(row["group"])
    return group.split(":")[1] if group.startswith("group:") else role_of(row["roles"])


def task_metrics(ds: xr.Dataset) -> list[str]:
    """The accuracy metrics a store holds (``acc``, ``acc_norm``), or [] without task results."""
    if "correct" not in ds and "accuracy" not in ds:
        return []
    var = ds["correct"] if "correct" in ds else ds["accuracy"]
    return [str(m) for m in ds["metric"].values] if "metric" in var.dims else ["acc"]


def _by_metric(var: xr.DataArray, metric: str) -> xr.DataArray:
    return var.sel(metric=metric) if "metric" in var.dims else var


def accuracy_table(ds: xr.Dataset, metric: str = "acc", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame | None:
    """Long table (id, label, task, accuracy, low, high, drop, drop_low, drop_high, items) when the
    store has task results, for one ``metric``.

    Accuracy intervals: bootstrap over items; drops (baseline minus condition, positive: worse):
    paired by item, as the report computes them (``probes.stats``). Conditions not computed yet
    are NaN.
    """
    from probes import stats

    if not task_metrics(ds):
        return None
    if metric not in task_metrics(ds):
        raise ValueError(f"no task metric {metric!r} in the store; it has {', '.join(task_metrics(ds))}")
    ids = [str(c) for c in ds["condition"].values]
    out = pd.DataFrame([{"id": cid, "label": str(lab), "task": str(t)}
                        for t in ds["task"].values for cid, lab in zip(ids, ds["label"].values)])
    if "correct" in ds:
        correct = _by_metric(ds["correct"], metric).transpose("condition", "task", "item")
        acc = stats.accuracy_intervals(correct, n_boot=n_boot, seed=seed)
        for col in ("accuracy", "low", "high"):
            out[col] = acc[col].transpose("task", "condition").values.reshape(-1)
        out["items"] = np.repeat((~correct.isnull().all("condition")).sum("item").values, len(ids))
        if "baseline" in ids:
            drops = stats.accuracy_drops(correct, n_boot=n_boot, seed=seed).transpose("task", "condition")
            for col, name in (("drop", "acc_drop"), ("drop_low", "low"), ("drop_high", "high")):
                out[col] = drops[name].values.reshape(-1)
    else:
        out["accuracy"] = _by_metric(ds["accuracy"], metric).transpose("task", "condition").values.reshape(-1)
        out["low"] = out["high"] = np.nan
        out["items"] = 0
    if "drop" not in out:
        base = out[out["id"] == "baseline"].set_index("task")["accuracy"]
        out["drop"] = [base.get(t, np.nan) - a for t, a in zip(out["task"], out["accuracy"])]
        out["drop_low"] = out["drop_high"] = np.nan
    return out


def item_table(ds: xr.Dataset, task: str, condition: str, metric: str = "acc") -> pd.DataFrame:
    """One row per item of ``task``: right or wrong under the baseline and under ``condition``,
    and what the ablation did to it (lost, gained, kept right, kept wrong)."""
    correct = _by_metric(ds["correct"], metric).sel(task=task).transpose("condition", "item")
    base, cond = correct.sel(condition="baseline").values, correct.sel(condition=condition).values
    real = ~np.isnan(base)
    names = (ds["item_id"].sel(task=task).values if "item_id" in ds.coords else correct["item"].values)
    change = np.select([(base == 1) & (cond == 0), (base == 0) & (cond == 1), base == 1, base == 0],
                       ["lost", "gained", "kept right", "kept wrong"], "not computed")
    return pd.DataFrame({"item": np.asarray(names)[real].astype(str), "baseline": base[real],
                         "ablated": cond[real], "change": change[real]})


def sweep_row(roles: str, mode: str) -> str:
    """A sweep heatmap's row: the role ('attention'), its mode when not zero, and the study's
    every-layer-alone sweep (targets: whole layers) as 'whole layer, skip_layer'."""
    name = "whole layer" if roles == "layer" else roles
    return name if mode == "zero" else f"{name}, {mode}"


def layer_variables(ds: xr.Dataset) -> list[str]:
    """Diagnostic variables over (condition, layer), e.g. ``cka(condition, layer)``."""
    return [name for name, v in ds.data_vars.items() if set(v.dims) == {"condition", "layer"}]
