"""The study report: Markdown with PNG figures, from a folder of study stores (numbers stay in
the stores; this module only reads them, computes intervals, judges and draws).

Perplexity figures pool every corpus of a store: the windows of all corpora side by side, so a
ratio is exp(mean extra loss per scored token), with paired block-bootstrap intervals
(``probes.stats``; blocks of 8 contiguous windows, fewer when a store has under 80 windows so
that there are still about 10 blocks to resample).

Every published finding gets a verdict: ``holds``, ``does not hold`` or ``undecided at this
precision``, or ``underpowered`` where the numbers cannot carry one (too few windows for a block
bootstrap, too few task items, a baseline not above chance, too few random trials); underpowered
numbers are printed without intervals and marked. A study with missing or unfinished stores is
reported with a warning line at the top and its partial sections marked (exit status 0).

"Through what it matters" reads each store's ``mediation`` group (``workbench mediate``) with the
app's torch-free reader (``workbench.app.mediation``): the top recovering components of each group
(the residual stream left out: restored after the last removed layer it recovers everything), and
whether a kind of later component, or the linear mixers for attention, stands out beyond the others'
intervals; under ``MIN_WINDOWS`` patched windows the numbers are points, marked underpowered.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from probes import stats
from workbench.store import open_store

PUBLISHED = [  # WikiText-2 perplexity in arXiv 2603.22473 (whole-layer skips on Qwen3.5, zeroed branches on Falcon-H1)
    ("Qwen3.5-0.8B", "whole-layer skip", 7.62, 268337.0, 624.8),
    ("Falcon-H1-0.5B", "component zero", 5.62, 295.2, 17.7),
]
PUBLISHED_RESILIENCE = (20.0, 119.0)
MIXER_NAMES = {"attention": "attention", "linear_attention": "linear attention (GDN)", "ssm": "SSM (Mamba-2)",
               "conv": "short convolution", "mlp": "MLP"}
N_BOOT = 2000

# verdicts
HOLDS, NOT, UNDECIDED, UNDERPOWERED = "holds", "does not hold", "undecided at this precision", "underpowered"
# what a number needs before it can carry a verdict (and why)
MIN_WINDOWS = 20  # 10 blocks of >= 2 adjacent windows: neighbours share half their text (stride = context / 2)
MIN_ITEMS = 30  # a percentile bootstrap of a mean of paired 0/1 differences is badly calibrated below ~30
MIN_TRIALS = 5  # the published resilience test used 5 trials; fewer gives no spread to speak of
NULL_MARGIN = math.log(1.02)  # "no difference": a log-ratio interval inside +/-2% of perplexity
USED_MARGIN = 1.01  # "not used": the component-only ratio's interval below +1%
ESSENTIAL = 1.10  # "essential": removing it costs at least +10% perplexity (interval above)


class ReportError(ValueError):
    pass


@dataclass
class Pooled:
    """Every corpus's windows side by side."""

    nll: np.ndarray  # (condition, window)
    tokens: np.ndarray  # (window,)
    ids: list[str]

    def row(self, cid: str) -> np.ndarray:
        return self.nll[self.ids.index(cid)]


def pooled(ds: xr.Dataset) -> Pooled:
    nll = ds["window_nll"].transpose("condition", "corpus", "window").values
    tok = ds["window_tokens"].transpose("corpus", "window").values
    keep = tok > 0
    return Pooled(nll[:, keep], tok[keep], [str(c) for c in ds.condition.values])


def block_for(p: Pooled) -> int:
    """Windows per bootstrap block: 8 (about 2k tokens at the default stride), fewer for short
    runs so that about 10 blocks remain (a single block gives no interval at all); the app's rule too."""
    return stats.block_size(len(p.tokens))


def ppl_power(p: Pooled) -> str | None:
    """None when block-bootstrap intervals of a store can be trusted, else why not."""
    n = len(p.tokens)
    if n < MIN_WINDOWS:
        return (f"{n} window{'s' if n != 1 else ''} pooled; a block bootstrap needs at least {MIN_WINDOWS} "
                "(10 blocks of 2 or more adjacent windows, which share text)")
    return None


def task_power(n_items: int, baseline_acc: float, chance: float) -> str | None:
    """None when accuracy drops on a task can carry a claim, else why not."""
    from scipy.stats import binomtest

    if n_items < MIN_ITEMS:
        return f"{n_items} items (a paired interval needs at least {MIN_ITEMS})"
    k = int(round(baseline_acc * n_items))
    if binomtest(k, n_items, chance, alternative="greater").pvalue >= 0.05:
        return f"baseline {baseline_acc:.2f} not above chance {chance:.2f} ({n_items} items)"
    return None


def ratios(ds: xr.Dataset, p: Pooled, ids: list[str], seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """(ratio, low, high) to the baseline for ``ids``, pooled over corpora; no interval (NaN) when
    the store is underpowered."""
    if not ids:
        return {}
    r, lo, hi = stats.block_bootstrap_ratios(np.stack([p.row(i) for i in ids]), p.row("baseline"), p.tokens,
                                             block=block_for(p), n_boot=N_BOOT, seed=seed)
    if ppl_power(p):
        lo, hi = np.full_like(r, np.nan), np.full_like(r, np.nan)
    return {i: (float(a), float(b), float(c)) for i, a, b, c in zip(ids, r, lo, hi)}


def point_ratio(p: Pooled, cid: str) -> float:
    with np.errstate(over="ignore"):
        return math.exp(min((p.row(cid) - p.row("baseline")).sum() / p.tokens.sum(), 709.0))


def _sel(ds: xr.Dataset, complete: bool = True, **coords) -> list[str]:
    mask = np.ones(ds.sizes["condition"], dtype=bool)
    for name, value in coords.items():
        mask &= np.asarray(ds[name].values).astype(str) == str(value)
    if complete:
        mask &= ds["complete"].values
    return [str(c) for c in ds.condition.values[mask]]


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "inf"
    if abs(x) < 1e4:
        return f"{x:,.2f}"
    return f"{x:,.0f}" if abs(x) < 1e7 else f"{x:.3g}"  # 2.58e+40, not forty digits


def _ci(t) -> str:
    if t is None or math.isnan(t[0]):
        return "n/a"
    if math.isnan(t[1]) or math.isnan(t[2]):
        return f"{_fmt(t[0])} (no interval)"
    return f"{_fmt(t[0])} [{_fmt(t[1])}, {_fmt(t[2])}]"


def _ppl_early_late(t: dict) -> tuple[float, float, float]:
    """Perplexity with the early third removed over perplexity with the late third removed."""
    return tuple(math.exp(t[k]) if np.isfinite(t[k]) else math.nan
                 for k in ("log_difference", "log_difference_low", "log_difference_high"))


def _excess_defined(t: dict) -> bool:
    """The excess-loss ratio divides by the late third's extra loss: it means something only
    when that is clearly above zero (the late third's interval above x1)."""
    return t["late"][1] > 1


def model_roles(ds: xr.Dataset) -> list[str]:
    roles = {str(r) for r, k in zip(ds["roles"].values, ds["kind"].values) if str(k) == "sweep"}
    return [r for r in MIXER_NAMES if r in roles]


def is_transformer(ds: xr.Dataset) -> bool:
    return [r for r in model_roles(ds) if r != "mlp"] == ["attention"]


def edit_ids(ds: xr.Dataset) -> dict[str, str]:
    """Condition id -> what it edits (conditions with equal values make the same edit)."""
    if "plan" in ds.attrs:
        from workbench.plans import Plan

        return {c.id: c.effect_id for c in Plan.model_validate_json(ds.attrs["plan"]).conditions}
    return {str(c): f"{m}|{r}|{l}" for c, m, r, l in zip(ds.condition.values, ds["mode"].values,
                                                         ds["roles"].values, ds["layers"].values)}


def vocab_size(ds: xr.Dataset) -> int | None:
    """The model's vocabulary (uniform guessing scores perplexity = vocabulary size): from the
    store's attributes, else from the model's config file (no weights loaded); None if unknown."""
    if ds.attrs.get("vocab_size"):
        return int(ds.attrs["vocab_size"])
    spec = str(ds.attrs.get("model", ""))
    try:
        if spec.startswith("random:"):
            from workbench.architectures import family_for

            return int(family_for(spec.split(":", 1)[1]).tiny_config().get_text_config().vocab_size)
        from workbench.paths import data_dir

        for folder in (data_dir() / "models" / spec, Path(spec).expanduser()):
            if (folder / "config.json").is_file():
                cfg = json.loads((folder / "config.json").read_text())
                return int(cfg.get("vocab_size") or cfg["text_config"]["vocab_size"])
    except Exception:  # an unknown family or an unreadable config: the label is then left out
        return None
    return None


# --- figures ---------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log(axis) -> None:
    """Tick labels as plain numbers (1.3, 40, 1e+14) instead of matplotlib's 1.3x10^0 on short log
    ranges; past one decade only the minor ticks at 2 and 5 are labelled (all of them overlap)."""
    from matplotlib.ticker import FuncFormatter

    def minor(v, _):
        lo, hi = sorted(axis.get_view_interval())
        if lo > 0 and hi / lo <= 10:
            return f"{v:g}"
        mantissa = round(v / 10 ** math.floor(math.log10(v)), 6) if v > 0 else 0
        return f"{v:g}" if mantissa in (2, 5) else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def fig_groups(name: str, rows: list[dict], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.55 * len(rows)))
    for k, row in enumerate(rows):
        for dy, key, colour in ((-0.15, "zero", "#1f77b4"), (0.15, "skip_layer", "#d62728")):
            r, lo, hi = row[key]
            if not math.isnan(r):
                ax.errorbar([r], [k + dy], xerr=[[max(r - lo, 0)], [max(hi - r, 0)]], fmt="o", color=colour,
                            label={"zero": "component only (zero)", "skip_layer": "whole layers (skip_layer)"}[key]
                            if k == 0 else None, capsize=3)
    ax.set_yticks(range(len(rows)), [MIXER_NAMES[r["role"]] for r in rows])
    ax.set_xscale("log")
    ax.axvline(1, color="grey", lw=0.8)
    ax.set_xlabel("perplexity / baseline (log scale; 95% block-bootstrap interval)")
    ax.set_title(f"{name}: each component type removed as a group")
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)  # beside: no point under it
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_sweep(name: str, ds: xr.Dataset, p: Pooled, path: Path) -> None:
    plt = _plt()
    roles = model_roles(ds) + ["layer"]
    n = int(ds.attrs.get("n_layers", 0)) or 1
    grid = np.full((len(roles), n), np.nan)
    for k, role in enumerate(roles):
        mode = "skip_layer" if role == "layer" else "zero"
        for cid in _sel(ds, kind="sweep", roles=role, mode=mode):
            layer = int(str(ds["layers"].sel(condition=cid).values))
            diff = (p.row(cid) - p.row("baseline")).sum() / p.tokens.sum()
            grid[k, layer] = diff
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * n + 2), 0.6 * len(roles) + 1.2))
    im = ax.imshow(grid, aspect="auto", cmap="magma_r", interpolation="nearest")
    ax.set_yticks(range(len(roles)), [MIXER_NAMES.get(r, "whole layer") for r in roles])
    ax.set_xticks(range(n))
    ax.set_xlabel("layer (blank: the layer has no such component)")
    ax.set_title(f"{name}: one component at a time", fontsize=10)
    fig.colorbar(im, ax=ax, label="extra loss, nats/token\n= log(perplexity / baseline)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_random(trials: dict[str, dict[int, np.ndarray]], groups: dict[str, dict[int, float]], path: Path) -> None:
    plt = _plt()
    sizes = sorted({s for per in trials.values() for s in per})
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.2 * len(sizes), 3.6), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, size in zip(axes[0], sizes):
        names = [m for m in trials if size in trials[m]]
        for k, m in enumerate(names):
            v = trials[m][size]
            ax.scatter(k + rng.uniform(-0.15, 0.15, v.size), v, s=14, alpha=0.7)
            ax.hlines(np.median(v), k - 0.3, k + 0.3, color="black", lw=2)
            if size in groups.get(m, {}):
                ax.scatter([k], [groups[m][size]], marker="*", s=140, color="#d62728", zorder=3)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        _plain_log(ax.yaxis)
        ax.set_title(f"{size} random layers skipped", fontsize=9)
    axes[0][0].set_ylabel("perplexity / baseline (log)")
    fig.suptitle("Random whole-layer removal: trials (dots), median (bar), the targeted group (star)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fig_compression(name: str, curves: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.4), squeeze=False)
    for ax, (family, per) in zip(axes[0], curves.items()):
        for order, colour in (("importance", "#1f77b4"), ("random", "#7f7f7f")):
            if order in per:
                y = per[order]
                ax.plot(np.arange(1, len(y) + 1), y, marker="o", ms=3, color=colour,
                        label="least important first" if order == "importance" else "random order")
        for t in (1.05, 1.10, 1.25):
            ax.axhline(t, color="#d62728", lw=0.6, ls=":")
        ax.set_yscale("log")
        if np.nanmax([np.nanmax(v) for k, v in per.items() if k in ("importance", "random")]) < 100:
            _plain_log(ax.yaxis)  # short ranges only: long ones keep powers of ten
        ax.set_xlabel(f"{family} removed")
        ax.set_title(family, fontsize=9)
    axes[0][0].set_ylabel("perplexity / baseline (re-measured)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{name}: compression curve (dotted: +5%, +10%, +25%)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the analysis of one model ---------------------------------------------------------------

def _n_targets(ds: xr.Dataset, cid: str) -> int:
    return int(ds["n_targets"].sel(condition=cid))


def _random_ids(ds: xr.Dataset, mode: str, size: int, complete: bool = True) -> list[str]:
    same = ds["same_as_group"] if "same_as_group" in ds.coords else None
    return [c for c in _sel(ds, complete, kind="random_matched", mode=mode) if _n_targets(ds, c) == size
            and not (same is not None and bool(same.sel(condition=c)))]


def random_spread(ds: xr.Dataset, p: Pooled, mode: str, size: int) -> np.ndarray:
    """Per-trial ratios of the random sets of ``size`` under ``mode`` (draws equal to a targeted
    group left out: they are that group, not a control for it)."""
    return np.array([point_ratio(p, c) for c in _random_ids(ds, mode, size)])


def against_random(value: float, trials: np.ndarray) -> tuple[str, str]:
    """Where a targeted group sits in the spread of random sets of its size: (place, text)."""
    n = len(trials)
    if math.isnan(value):
        return "n/a", "not measured"
    if n == 0:
        return "none", "no random control of this size"
    spread = f"random sets of the same size: median x{_fmt(float(np.median(trials)))}, " \
             f"range x{_fmt(float(trials.min()))}-x{_fmt(float(trials.max()))}, {n} sets"
    if n < MIN_TRIALS:
        return "few", f"{spread}; too few to compare with"
    if value > trials.max():
        return "above", f"above all {spread}"
    if value < trials.min():
        return "below", f"below all {spread}"
    return "inside", f"inside the spread of {spread} ({int((trials < value).sum())} of {n} below it)"


def _group_row(ds, p, role, base_ppl, vocab, edits, seen) -> dict:
    row = {"role": role}
    for mode in ("zero", "skip_layer"):
        name = f"group:{role}" + ("" if mode == "zero" else f":{mode}")
        ids, planned = _sel(ds, group=name), _sel(ds, complete=False, group=name)
        cid = ids[0] if ids else None
        row[mode] = ratios(ds, p, ids)[cid] if cid else (math.nan,) * 3
        row[f"{mode}_id"] = cid
        row[f"{mode}_pending"] = bool(planned) and not ids
        row[f"{mode}_n"] = _n_targets(ds, cid) if cid else 0
        row[f"{mode}_beyond"] = bool(cid and vocab and base_ppl * row[mode][0] > vocab)
        row[f"{mode}_every_layer"] = bool(cid and mode == "skip_layer"
                                          and row[f"{mode}_n"] == int(ds.attrs.get("n_layers", -1)))
        row[f"{mode}_same_as"] = seen.get((mode, edits.get(cid))) if cid else None
        if cid and row[f"{mode}_same_as"] is None:
            seen[(mode, edits.get(cid))] = role
        trials = random_spread(ds, p, mode, row[f"{mode}_n"]) if cid else np.array([])
        row[f"{mode}_random"] = trials
        row[f"{mode}_place"], row[f"{mode}_against"] = against_random(row[mode][0], trials)
        planned = len(_random_ids(ds, mode, row[f"{mode}_n"], complete=False)) if cid else 0
        if planned > len(trials):  # an unfinished control: say how much of it there is
            row[f"{mode}_place"] = "pending" if not len(trials) else row[f"{mode}_place"]
            row[f"{mode}_against"] += f" (partial: {len(trials)} of {planned} random sets measured)"
    return row


def _pair(p: Pooled, a: str, b: str) -> dict:
    """log(ppl with ``a`` removed / ppl with ``b`` removed), paired block-bootstrap interval."""
    g = stats.positional_gradient(p.row(a), p.row(b), p.row("baseline"), p.tokens, block=block_for(p), n_boot=N_BOOT)
    out = {k: g[k] for k in ("log_difference", "log_difference_low", "log_difference_high")}
    if ppl_power(p):  # no interval where the windows cannot support one
        out["log_difference_low"] = out["log_difference_high"] = math.nan
    return out


def _tasks(ds: xr.Dataset, groups: list[dict]) -> dict:
    out = {}
    acc = ds["correct"].sel(metric="acc")
    drops = stats.accuracy_drops(acc, n_boot=N_BOOT)
    for task in ds.task.values:
        base = acc.sel(condition="baseline", task=task).values
        n = int(np.isfinite(base).sum())
        base_acc = float(np.nanmean(base)) if n else math.nan
        chance = float(ds["chance"].sel(task=task))
        t = {"baseline": base_acc, "chance": chance, "n_items": n,
             "power": task_power(n, base_acc, chance) if n else "no items scored"}
        for row in groups:
            for mode in ("zero", "skip_layer"):
                cid = row[f"{mode}_id"]
                if cid is None:
                    continue
                d = drops.sel(condition=cid, task=task)
                t[f"{row['role']}:{mode}"] = (float(d["acc_drop"]), float(d["low"]), float(d["high"]))
        out[str(task)] = t
    return out


def _thirds(ds, p, role) -> dict | str | None:
    """The thirds of ``role`` (component only), "pending" when planned but unfinished, None when
    the role has under three layers."""
    ids, planned = _sel(ds, group=f"thirds:{role}"), _sel(ds, complete=False, group=f"thirds:{role}")
    if len(planned) != 3:
        return None
    if len(ids) < 3:
        return "pending"
    r = ratios(ds, p, ids)
    grad = stats.positional_gradient(p.row(ids[0]), p.row(ids[2]), p.row("baseline"), p.tokens,
                                     block=block_for(p), n_boot=N_BOOT)
    if ppl_power(p):
        grad = {k: (math.nan if k.endswith(("_low", "_high")) else v) for k, v in grad.items()}
    return {"early": r[ids[0]], "middle": r[ids[1]], "late": r[ids[2]], **grad}


def _compression(comp: xr.Dataset) -> dict:
    cp = pooled(comp)
    out: dict = {}
    if np.isnan(cp.row("baseline")).any():
        return out
    for family in ("mixers", "mlp", "layers"):
        per: dict = {}
        for order in ("importance", "random"):
            planned = _sel(comp, complete=False, group=f"compression:{family}:{order}")
            done = comp["complete"].sel(condition=planned).values if planned else []
            ids = planned[:int(np.argmin(done)) if not all(done) else len(planned)]  # the measured prefix only
            if planned:
                per[f"{order}_planned"] = len(planned)
            if ids:
                r = ratios(comp, cp, ids)
                per[order] = np.array([r[i][0] for i in ids])
                per[f"{order}_low"] = np.array([r[i][1] for i in ids])
                per[f"{order}_high"] = np.array([r[i][2] for i in ids])
        if per:
            out[family] = per
    return out


def analyse(ds: xr.Dataset, comp: xr.Dataset | None) -> dict:
    """Every number the report states for one model."""
    p = pooled(ds)
    if "baseline" not in p.ids or not bool(ds["complete"].sel(condition="baseline")) \
            or np.isnan(p.row("baseline")).any():
        raise ReportError("its store has no complete baseline")
    base_loss = float(np.nansum(p.row("baseline")) / p.tokens.sum())
    vocab = vocab_size(ds)
    out = {"model": ds.attrs["model"], "baseline_ppl": math.exp(base_loss), "groups": [], "thirds": {},
           "tasks": {}, "compression": {}, "transformer": is_transformer(ds), "vocab": vocab,
           "windows": len(p.tokens), "power": ppl_power(p), "n_layers": int(ds.attrs.get("n_layers", 0)),
           "progressive": {}, "random": {}, "random_planned": {}, "pairs": {}}
    edits, seen = edit_ids(ds), {}
    out["groups"] = [_group_row(ds, p, role, out["baseline_ppl"], vocab, edits, seen) for role in model_roles(ds)]
    mixers = {g["role"]: g for g in out["groups"] if g["role"] != "mlp"}
    linear = [r for r in mixers if r != "attention"]
    if "attention" in mixers and linear:  # the backbone comparison, paired on the same blocks
        for mode in ("zero", "skip_layer"):
            a, b = mixers[linear[0]][f"{mode}_id"], mixers["attention"][f"{mode}_id"]
            if a and b:
                out["pairs"][mode] = {"linear": linear[0], **_pair(p, a, b)}
    for role in model_roles(ds):
        t = _thirds(ds, p, role)
        if t is not None:
            out["thirds"][role] = t
        prog = {}
        for order in ("first", "last", "random"):
            ids = _sel(ds, group=f"progressive:{role}:{order}")
            if ids:
                r = ratios(ds, p, ids)
                prog[order] = {_n_targets(ds, c): r[c] for c in ids}
        if prog:
            out["progressive"][role] = prog
    for mode in ("zero", "skip_layer"):
        sizes = sorted({_n_targets(ds, c) for c in _sel(ds, False, kind="random_matched", mode=mode)})
        if sizes:
            out["random"][mode] = {s: random_spread(ds, p, mode, s) for s in sizes}
            out["random_planned"][mode] = {s: len(_random_ids(ds, mode, s, complete=False)) for s in sizes}
    if "correct" in ds:
        out["tasks"] = _tasks(ds, out["groups"])
    if comp is not None:
        out["compression"] = _compression(comp)
    return out


def random_trials(ds: xr.Dataset) -> dict[int, np.ndarray]:
    """Whole-layer random removals by size: per-trial perplexity ratio (pooled corpora)."""
    p = pooled(ds)
    out: dict[int, list] = {}
    for cid in _sel(ds, kind="random_matched", mode="skip_layer"):
        out.setdefault(_n_targets(ds, cid), []).append(point_ratio(p, cid))
    return {s: np.array(v) for s, v in out.items()}


def _group_layer_ratio(ds: xr.Dataset, size: int) -> float | None:
    p = pooled(ds)
    for cid in _sel(ds, kind="group", mode="skip_layer"):
        if _n_targets(ds, cid) == size:
            return point_ratio(p, cid)
    return None


def missing_parts(settings: dict, folder: Path, stores: dict, comps: dict, left_out=()) -> list[str]:
    """What an unfinished study lacks, one line each (empty when complete)."""
    from workbench.study import slug

    out = []
    for model in settings["models"]:
        if model in left_out:
            continue
        if model not in stores:
            out.append(f"{model}: no store yet ({slug(model)}.zarr)")
            continue
        ds = stores[model]
        done = ds["complete"].values
        if not done.all():
            pending = list(dict.fromkeys(str(g) or "baseline" for g in ds["group"].values[~done]))
            out.append(f"{model}: {int(done.sum())} of {done.size} conditions complete; pending: "
                       + ", ".join(pending[:8]) + (f" and {len(pending) - 8} more" if len(pending) > 8 else ""))
        comp = comps.get(model)
        if comp is None:
            out.append(f"{model}: no compression curve yet ({slug(model)}.compression.zarr)")
        elif not comp["complete"].values.all():
            c = comp["complete"].values[np.asarray(comp["kind"].values).astype(str) != "baseline"]
            out.append(f"{model}: compression curve {int(c.sum())} of {c.size} steps measured")
    return out


# --- verdicts ---------------------------------------------------------------------------------

PENDING, CANNOT = "not measured yet", "cannot be tested here"


@dataclass
class Finding:
    model: str
    claim: str
    verdict: str
    evidence: str

    def line(self) -> str:
        return f"- **{self.verdict}**: \"{self.claim}\" ({self.model}): {self.evidence}"


def _log_verdict(lo: float, hi: float) -> tuple[str, str]:
    """A verdict on a log ratio that the claim says is positive."""
    if math.isnan(lo) or math.isnan(hi):
        return UNDECIDED, "no interval"
    if lo > 0:
        return HOLDS, ""
    if hi < 0:
        return NOT, "reversed"
    if -NULL_MARGIN < lo and hi < NULL_MARGIN:
        return NOT, "no difference beyond 2%"
    return UNDECIDED, "the interval spans no difference"


def _ratio_text(t) -> str:
    return f"x{_ci(t)}"


def _used(model: str, r: dict, row: dict) -> Finding:
    name = MIXER_NAMES[row["role"]]
    claim = f"{name} is used (removing it alone raises perplexity)"
    if row["zero_pending"] or row["zero_id"] is None:
        return Finding(model, claim, PENDING, "its group is not measured")
    ev = f"component only {_ratio_text(row['zero'])}; {row['zero_against']}"
    if r["power"]:
        return Finding(model, claim, UNDERPOWERED, f"{ev}; {r['power']}")
    lo, hi = row["zero"][1:]
    verdict = NOT if hi < USED_MARGIN else HOLDS if lo > 1 else UNDECIDED  # a real but sub-1% effect is no use
    return Finding(model, claim, verdict, ev + ("; no effect beyond 1%" if verdict == NOT else ""))


def _backbone(model: str, r: dict, mode: str) -> Finding | None:
    pair = r["pairs"].get(mode)
    if pair is None:
        return None
    rows = {g["role"]: g for g in r["groups"]}
    lin, att = rows[pair["linear"]], rows["attention"]
    how = "component only" if mode == "zero" else "whole layers"
    claim = f"{MIXER_NAMES[pair['linear']]} is the backbone: removing it costs more than removing attention ({how})"
    ev = (f"{MIXER_NAMES[pair['linear']]} {_ratio_text(lin[mode])} vs attention {_ratio_text(att[mode])}; "
          f"perplexity of the one over the other x{_ci(tuple(math.exp(pair[k]) for k in ('log_difference', 'log_difference_low', 'log_difference_high')))}")
    if lin[f"{mode}_same_as"] or att[f"{mode}_same_as"]:
        return Finding(model, claim, CANNOT, f"both sit in the same layers, so skipping them is one edit ({ev})")
    beyond = [MIXER_NAMES[g["role"]] for g in (lin, att) if g[f"{mode}_beyond"]]
    if beyond:
        return Finding(model, claim, CANNOT, f"{' and '.join(beyond)} removed: beyond uniform guessing "
                                             f"(perplexity above the vocabulary size {r['vocab']}), so the ranking says nothing ({ev})")
    if r["power"]:
        return Finding(model, claim, UNDERPOWERED, f"{ev}; {r['power']}")
    verdict, why = _log_verdict(pair["log_difference_low"], pair["log_difference_high"])
    if verdict == HOLDS and lin[f"{mode}_place"] in ("inside", "below"):
        return Finding(model, claim, NOT, f"{ev}; but {MIXER_NAMES[pair['linear']]} ({lin[f'{mode}_n']} "
                                          f"{'components' if mode == 'zero' else 'layers'}) sits {lin[f'{mode}_against']}: "
                                          "a count effect, not one of the component")
    return Finding(model, claim, verdict, f"{ev}{'; ' + why if why else ''}; {MIXER_NAMES[pair['linear']]}: "
                                          f"{lin[f'{mode}_against']}; attention: {att[f'{mode}_against']}")


def _early_late(model: str, r: dict, role: str, t, control: dict | None) -> Finding:
    claim = f"early layers matter more than late ones ({MIXER_NAMES[role]}, component only)"
    if t == "pending":
        return Finding(model, claim, PENDING, "the thirds are not all measured")
    ratio = _ppl_early_late(t)
    ev = (f"perplexity early/late x{_ci(ratio)} (early third {_ratio_text(t['early'])}, late {_ratio_text(t['late'])})"
          + (f"; excess-loss ratio x{_ci((t['gradient'], t['gradient_low'], t['gradient_high']))}"
             if _excess_defined(t) else "; the late third has no clear effect"))
    if control:
        c_ratio = _ppl_early_late(control["t"])
        # as strong unless the hybrid's interval lies above the control's (points where there is none)
        c_high = c_ratio[0] if math.isnan(c_ratio[2]) else c_ratio[2]
        same = c_high >= (ratio[0] if math.isnan(ratio[1]) else ratio[1])
        ev += (f"; the Transformer control ({control['model']}, attention) gives x{_ci(c_ratio)}: "
               + ("as strong, so this is a property of depth, not of the hybrid" if same
                  else "weaker than here"))
    if r["power"]:
        return Finding(model, claim, UNDERPOWERED, f"{ev}; {r['power']}")
    verdict, why = _log_verdict(t["log_difference_low"], t["log_difference_high"])
    return Finding(model, claim, verdict, ev + (f"; {why}" if why else ""))


def _essential(model: str, r: dict) -> Finding | None:
    mixers = [g for g in r["groups"] if g["role"] != "mlp"]
    if len(mixers) < 2:
        return None
    claim = "both component types are essential (removing either alone costs +10% perplexity or more)"
    ev = "; ".join(f"{MIXER_NAMES[g['role']]} {_ratio_text(g['zero'])}" for g in mixers)
    if any(g["zero_id"] is None for g in mixers):
        return Finding(model, claim, PENDING, ev)
    if r["power"]:
        return Finding(model, claim, UNDERPOWERED, f"{ev}; {r['power']}")
    if all(g["zero"][1] > ESSENTIAL for g in mixers):
        return Finding(model, claim, HOLDS, ev)
    weak = [MIXER_NAMES[g["role"]] for g in mixers if g["zero"][2] < ESSENTIAL]
    if weak:
        return Finding(model, claim, NOT, f"{ev}; {', '.join(weak)} below +10%")
    return Finding(model, claim, UNDECIDED, f"{ev}; an interval spans +10%")


def _downstream(model: str, r: dict, mode: str) -> Finding | None:
    from scipy.stats import binomtest

    mixers = [g for g in r["groups"] if g["role"] != "mlp" and g[f"{mode}_id"]]
    if not r["tasks"] or not mixers:
        return None
    how = "component only" if mode == "zero" else "whole layers"
    claim = f"removing either component group pushes the tasks to about chance ({how})"
    powered = {k: t for k, t in r["tasks"].items() if not t["power"]}
    if not powered:
        return Finding(model, claim, UNDERPOWERED, "; ".join(f"{k}: {t['power']}" for k, t in r["tasks"].items()))
    at, above = [], []
    for task, t in powered.items():
        for g in mixers:
            drop = t.get(f"{g['role']}:{mode}")
            if drop is None or math.isnan(drop[0]):
                continue
            acc = t["baseline"] - drop[0]
            low = binomtest(int(round(acc * t["n_items"])), t["n_items"]).proportion_ci().low
            text = f"{task} without {MIXER_NAMES[g['role']]} {acc:.2f} (chance {t['chance']:.2f})"
            (above if low > t["chance"] else at).append(text)
    skipped = [f"{k}: {t['power']}" for k, t in r["tasks"].items() if t["power"]]
    tail = f"; left out as underpowered: {'; '.join(skipped)}" if skipped else ""
    if above:
        return Finding(model, claim, NOT, f"above chance: {'; '.join(above)}{tail}")
    return Finding(model, claim, HOLDS, f"at chance: {'; '.join(at)}{tail}")


def _resilience_finding(row: dict) -> Finding:
    lo_pub, hi_pub = PUBLISHED_RESILIENCE
    claim = (f"the hybrid is more resilient to random whole-layer removal than the Transformer "
             f"(published {lo_pub:g}-{hi_pub:g}x)")
    model = f"{row['hybrid']} vs {row['transformer']}, {row['size']} layers"
    if "error" in row:
        return Finding(model, claim, CANNOT, row["error"])
    nan = math.nan
    med = (row["from_medians"], *((nan, nan) if row.get("power") else (row["medians_low"], row["medians_high"])))
    mean = (row["from_means"], *((nan, nan) if row.get("power") else (row["means_low"], row["means_high"])))
    ev = f"from medians x{_ci(med)}, from means x{_ci(mean)}, {row['n_hybrid']}/{row['n_transformer']} trials"
    if row.get("beyond"):
        ev += f"; {row['beyond']}"
    if row.get("power"):
        return Finding(model, claim, UNDERPOWERED, f"{ev}; {row['power']}")
    if row.get("median_beyond"):
        return Finding(model, claim, CANNOT, f"{ev}; the median trial of {' and '.join(row['median_beyond'])} "
                                             "is beyond uniform guessing, so the ratio compares broken models")
    lo, hi = row["medians_low"], row["medians_high"]
    if hi < lo_pub:
        return Finding(model, claim, NOT, f"{ev}; the published size lies above the interval"
                       + ("; the hybrid is less resilient" if hi < 1 else ""))
    if lo > 1:
        return Finding(model, claim, HOLDS, ev)
    return Finding(model, claim, UNDECIDED, ev)


def findings(results: dict, resilience_rows: list[dict]) -> list[Finding]:
    """Every published finding, for every hybrid of the study, with its verdict and numbers."""
    control = next(({"model": m, "t": r["thirds"]["attention"]} for m, r in results.items()
                    if r["transformer"] and isinstance(r["thirds"].get("attention"), dict)), None)
    out = []
    for model, r in results.items():
        if r["transformer"]:
            continue
        out += [_used(model, r, g) for g in r["groups"] if g["role"] != "mlp"]
        out += [f for mode in ("zero", "skip_layer") if (f := _backbone(model, r, mode))]
        out += [_early_late(model, r, role, t, control) for role, t in r["thirds"].items() if role != "mlp"]
        out += [f for f in (_essential(model, r), _downstream(model, r, "zero"), _downstream(model, r, "skip_layer")) if f]
    out += [_resilience_finding(row) for row in resilience_rows]
    return out


def resilience_table(stores: dict, results: dict) -> list[dict]:
    """Each hybrid against each Transformer, per removal size both have: medians and means."""
    transformers = [m for m in stores if results[m]["transformer"]]
    rows = []
    for h in (m for m in stores if m not in transformers):
        for t in transformers:
            try:
                stats.check_same_protocol(stores[t], stores[h])
            except ValueError as exc:
                rows.append({"hybrid": h, "transformer": t, "size": "-", "error": f"not comparable: {exc}"})
                continue
            th, tt = random_trials(stores[h]), random_trials(stores[t])
            for size in sorted(set(th) & set(tt)):
                row = {"hybrid": h, "transformer": t, "size": size}
                try:
                    res = stats.resilience(tt[size], th[size], n_boot=N_BOOT)
                except ValueError as exc:
                    rows.append({**row, "error": str(exc)})
                    continue
                row.update(asdict(res))
                power = [f"{m}: {results[m]['power']}" for m in (h, t) if results[m]["power"]]
                if min(res.n_hybrid, res.n_transformer) < MIN_TRIALS:
                    power.append(f"{min(res.n_hybrid, res.n_transformer)} trials (needs {MIN_TRIALS})")
                row["power"] = "; ".join(power)
                beyond = [f"{m} {int((v * results[m]['baseline_ppl'] > results[m]['vocab']).sum())} of {len(v)}"
                          for m, v in ((h, th[size]), (t, tt[size])) if results[m]["vocab"]
                          and (v * results[m]["baseline_ppl"] > results[m]["vocab"]).any()]
                if beyond:
                    row["beyond"] = "trials beyond uniform guessing: " + ", ".join(beyond)
                row["median_beyond"] = [m for m, v in ((h, th[size]), (t, tt[size])) if results[m]["vocab"]
                                        and np.median(v) * results[m]["baseline_ppl"] > results[m]["vocab"]]
                rows.append(row)
    return rows


# --- the document ---------------------------------------------------------------------------

def _load(folder: Path, settings: dict) -> tuple[dict, dict]:
    from workbench.store import StoreError
    from workbench.study import slug

    stores, comps = {}, {}
    try:
        for model in settings["models"]:
            path = folder / f"{slug(model)}.zarr"
            if not path.exists():
                continue
            stores[model] = open_store(path).load()
            cpath = folder / f"{slug(model)}.compression.zarr"
            comps[model] = open_store(cpath).load() if cpath.exists() else None
    except StoreError as exc:
        raise ReportError(str(exc)) from None
    return stores, comps


def write_report(folder: str | Path, log=None) -> Path:
    """Write ``report.md``, its figures and ``summary.json``; ``log`` gets each warning line (an
    unfinished study is reported, with what is missing at the top)."""
    folder = Path(folder)
    settings_file = folder / "study.json"
    if not settings_file.exists():
        raise ReportError(f"{folder} has no study.json: run `workbench study --out {folder}` first")
    try:
        settings = json.loads(settings_file.read_text())
        settings["models"], settings["corpora"]  # noqa: B018 - the fields the report needs
    except (ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"{settings_file} is not a study settings file ({exc}); rerun `workbench study`") from None
    from workbench.study import slug

    stores, comps = _load(folder, settings)
    if not stores:
        raise ReportError(f"no study stores in {folder}; run `workbench study --out {folder}`")
    figures = folder / "figures"
    figures.mkdir(exist_ok=True)
    results, unusable = {}, []
    for m, ds in stores.items():
        try:
            results[m] = analyse(ds, comps[m])
            results[m]["mediation"] = mediation_result(folder / f"{slug(m)}.zarr", ds)
        except ReportError as exc:  # no baseline yet: nothing of this model can be compared
            unusable.append(f"{m}: {exc}; left out of the report")
    if not results:
        raise ReportError(f"no store in {folder} has a complete baseline yet: " + "; ".join(unusable))
    missing = unusable + missing_parts(settings, folder, stores, comps, left_out=set(stores) - set(results))
    stores = {m: stores[m] for m in results}
    res_rows = resilience_table(stores, results)
    found = findings(results, res_rows)
    weak = {m: r["power"] for m, r in results.items() if r["power"]}
    lines = []
    if missing:
        lines += ["> **WARNING: PARTIAL STUDY.** The study is unfinished; sections built from missing "
                  "conditions are marked, and verdicts on them are withheld. Missing:", ">"]
        lines += [f"> - {m}" for m in missing] + [""]
    if weak:
        lines += ["> **UNDERPOWERED: these numbers are not evidence.** " + "; ".join(f"{m}: {w}" for m, w in weak.items())
                  + ". Perplexity ratios are shown without intervals and no verdict is given on them; "
                  "rerun with more tokens (`--max-tokens`) for a report that can decide.", ""]
    for line in (lines[:1] + [f"  {m}" for m in missing] if missing else []) + ([lines[-2]] if weak else []):
        if log:
            log(line.lstrip("> ").replace("**", ""))
    first = next(iter(stores.values()))
    task_list = ", ".join(first.task.values) if "task" in first.dims else "none"
    items = f" (first {settings['task_items']} items each)" if settings.get("task_items") else ""
    fp = pooled(first)
    lines += [f"# Component ablation study: {', '.join(stores)}", "",
              f"Corpora: {', '.join(settings['corpora'])} (first {settings.get('max_tokens') or 'all'} tokens each; "
              f"context {settings.get('context')}, stride {settings.get('stride')}); tasks: {task_list}{items}. "
              "Perplexity ratios pool every corpus; intervals are paired 95% block-bootstrap intervals "
              f"(blocks of {block_for(fp)} contiguous window(s), {len(fp.tokens)} window(s) "
              "pooled; adjacent windows share text, so blocks rather than single windows are resampled); "
              "accuracy drops are paired by item. Verdicts: holds / does not hold / undecided at this precision; "
              f"underpowered where the numbers cannot carry one (under {MIN_WINDOWS} windows, under {MIN_ITEMS} "
              f"task items or a baseline not above chance, under {MIN_TRIALS} random trials). A perplexity above the "
              "vocabulary size (uniform guessing) is marked \"beyond uniform guessing\" and never names a backbone.", ""]
    lines += _summary_table(results)
    lines += _findings_section(found)
    for model, r in results.items():
        control = next(((m, c) for m, c in results.items() if c["transformer"] and m != model), None)
        lines += _model_section(model, r, stores[model], folder, figures, slug(model),
                                [f for f in found if f.model == model], control)
    lines += _resilience_section(stores, res_rows, figures)
    lines += _published_section()
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (folder / "summary.json").write_text(json.dumps(_summary_json(results, found, res_rows, missing), indent=1,
                                                    default=_json_default))
    return path


def _json_default(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    return float(x)


def _skip_cell(g: dict, r: dict) -> str:
    if g["skip_layer_pending"]:
        return "pending"
    if g["skip_layer_same_as"]:
        return f"same edit as {MIXER_NAMES[g['skip_layer_same_as']]} (reported once)"
    text = _ci(g["skip_layer"])
    if g["skip_layer_every_layer"]:
        text += " every layer skipped"
    return text + (" **beyond uniform guessing**" if g["skip_layer_beyond"] else "")


def _place(g: dict, mode: str) -> str:
    if g[f"{mode}_same_as"] or g[f"{mode}_id"] is None:
        return ""
    t = g[f"{mode}_random"]
    short = {"above": "above all", "below": "below all", "inside": "inside", "few": "too few to compare:",
             "none": "no control", "pending": "pending"}.get(g[f"{mode}_place"], "")
    partial = " (partial)" if "partial:" in g[f"{mode}_against"] else ""
    if not len(t):
        return short
    return f"{short} {len(t)} (median x{_fmt(float(np.median(t)))}, x{_fmt(float(t.min()))}-x{_fmt(float(t.max()))}){partial}"


def _model_section(model, r, ds, folder, figures, s, found, control=None) -> list[str]:
    lines = [f"## {model}", "", f"Baseline perplexity (pooled): {_fmt(r['baseline_ppl'])}; "
             f"uniform guessing: {r['vocab'] or 'unknown (vocabulary size not found)'}; {r['windows']} window(s) pooled.", ""]
    if r["power"]:
        lines += [f"**Underpowered** ({r['power']}): point values only, not evidence.", ""]
    fig_groups(model, r["groups"], figures / f"{s}-groups.png")
    fig_sweep(model, ds, pooled(ds), figures / f"{s}-sweep.png")
    lines += ["### 1-2. Is each component type used, and which is the backbone?", "",
              f"![groups](figures/{s}-groups.png)", "",
              "Each group against random sets of the same count (component-level randoms drawn from every "
              "component; whole-layer randoms from every layer):", "",
              "| component | removed alone (zero) | against random components | whole layers skipped (skip_layer) "
              "| against random layers |", "|---|---:|---|---:|---|"]
    for g in r["groups"]:
        zero = "pending" if g["zero_pending"] else _ci(g["zero"]) + (" **beyond uniform guessing**" if g["zero_beyond"] else "")
        lines.append(f"| {MIXER_NAMES[g['role']]} ({g['zero_n']}) | {zero} | {_place(g, 'zero')} | "
                     f"{_skip_cell(g, r)} | {_place(g, 'skip_layer')} |")
    lines += [""] + _control_line(r, control) + [f"![sweep](figures/{s}-sweep.png)", ""]
    lines += _tasks_table(r)
    lines += ["### 3. Where in depth does it matter?", ""]
    done = {k: v for k, v in r["thirds"].items() if isinstance(v, dict)}
    if done:
        lines += ["| component | early third | middle third | late third | perplexity early/late | "
                  "early/late excess-loss ratio |", "|---|---:|---:|---:|---:|---:|"]
        for role, t in done.items():
            excess = (_ci((t["gradient"], t["gradient_low"], t["gradient_high"])) if _excess_defined(t)
                      else "n/a (late third: no clear effect)")
            lines.append(f"| {MIXER_NAMES[role]} | {_ci(t['early'])} | {_ci(t['middle'])} | {_ci(t['late'])} | "
                         f"{_ci(_ppl_early_late(t))} | {excess} |")
        lines += ["", "Perplexity early/late: with the early third removed over with the late third removed "
                  "(above 1: the early third matters more). The excess-loss ratio divides the extra loss of "
                  "one by the other's; it is shown only where the late third's removal clearly raises the "
                  "loss, since it is meaningless near zero.", ""]
    pending = [MIXER_NAMES[k] for k, v in r["thirds"].items() if v == "pending"]
    if pending:
        lines += [f"**Pending** (study unfinished): the thirds of {', '.join(pending)}.", ""]
    if not r["thirds"]:
        lines += ["No role has three or more layers, so there are no thirds.", ""]
    lines += _progressive_section(r)
    lines += _random_section(r)
    if r["compression"]:
        lines += _compression_section(model, r, figures, s)
    lines += _why_section(folder / f"{s}.zarr", ds, r)
    lines += _mediation_section(r.get("mediation"), r["transformer"])
    if found:
        lines += [f"### Verdicts for {model}", ""] + [f.line() for f in found] + [""]
    return lines


def _control_line(r: dict, control) -> list[str]:
    """The Transformer control's random whole-layer removals of this model's group sizes."""
    if control is None or r["transformer"]:
        return []
    name, c = control
    per = c["random"].get("skip_layer", {})
    parts = [f"{g['skip_layer_n']} layers (like {MIXER_NAMES[g['role']]}): median x{_fmt(float(np.median(per[g['skip_layer_n']])))}"
             f" over {len(per[g['skip_layer_n']])} sets" for g in r["groups"]
             if g["skip_layer_id"] and not g["skip_layer_same_as"] and len(per.get(g["skip_layer_n"], []))]
    if not parts:
        return []
    return [f"Transformer control ({name}), random whole layers of the same counts: " + "; ".join(parts) + ".", ""]


def _tasks_table(r: dict) -> list[str]:
    if not r["tasks"]:
        return []
    heads = [(g, m) for g in r["groups"] for m in ("zero", "skip_layer") if not g[f"{m}_same_as"]]
    lines = ["Accuracy drop (baseline minus ablated, acc) with paired 95% intervals; a task that cannot carry "
             "a claim shows why instead:", "",
             "| task | items | baseline (chance) | " + " | ".join(f"{MIXER_NAMES[g['role']]} {m}" for g, m in heads) + " |",
             "|---|---:|---:|" + "---:|" * len(heads)]
    for task, t in r["tasks"].items():
        head = f"| {task} | {t['n_items']} | {t['baseline']:.3f} ({t['chance']:.3f}) |"
        if t["power"]:
            lines.append(head + f" underpowered: {t['power']} |" + " |" * (len(heads) - 1))
            continue
        cells = [_ci(t.get(f"{g['role']}:{m}", (math.nan,) * 3)) for g, m in heads]
        lines.append(head + " " + " | ".join(cells) + " |")
    return lines + [""]


def _progressive_section(r: dict) -> list[str]:
    if not r["progressive"]:
        return []
    lines = ["### Progressive removal", "", "The first N, the last N and N random components of a type removed "
             "together (component only), against the baseline:", "",
             "| component | N | first N | last N | random N |", "|---|---:|---:|---:|---:|"]
    for role, per in r["progressive"].items():
        for n in sorted({k for v in per.values() for k in v}):
            cells = [_ci(per.get(o, {}).get(n)) for o in ("first", "last", "random")]
            lines.append(f"| {MIXER_NAMES[role]} | {n} | " + " | ".join(cells) + " |")
    return lines + [""]


def _random_section(r: dict) -> list[str]:
    if not r["random"]:
        return []
    lines = ["### Random controls", "", "Random sets of components (zero, drawn from every component) and of whole "
             "layers (skip_layer), by count: the spread of their perplexity ratios and the targeted groups of "
             "the same count.", "", "| removed | count | sets | median | range | targeted groups of this count |",
             "|---|---:|---:|---:|---:|---|"]
    for mode, per in r["random"].items():
        for size, v in per.items():
            groups = [f"{MIXER_NAMES[g['role']]} x{_fmt(g[mode][0])} ({g[f'{mode}_place']})" for g in r["groups"]
                      if g[f"{mode}_n"] == size and g[f"{mode}_id"] and not g[f"{mode}_same_as"]]
            med = _fmt(float(np.median(v))) if len(v) else "n/a"
            rng = f"{_fmt(float(v.min()))}-{_fmt(float(v.max()))}" if len(v) else "n/a"
            beyond = (r["vocab"] and len(v) and int((v * r["baseline_ppl"] > r["vocab"]).sum())) or 0
            planned = r["random_planned"][mode][size]
            sets = f"{len(v)}" + (f" of {planned} (partial)" if planned > len(v) else "")
            lines.append(f"| {'components' if mode == 'zero' else 'whole layers'} | {size} | {sets} | x{med} | "
                         f"x{rng}{f' ({beyond} beyond uniform guessing)' if beyond else ''} | "
                         f"{'; '.join(groups) or '-'} |")
    return lines + [""]


def _compression_section(model, r, figures, s) -> list[str]:
    fig_compression(model, {k: v for k, v in r["compression"].items() if "importance" in v or "random" in v},
                    figures / f"{s}-compression.png")
    lines = ["### 5. How much could be removed?", "", f"![compression](figures/{s}-compression.png)", "",
             "| removed cumulatively | within +5% | within +10% | within +25% | measured | of |",
             "|---|---:|---:|---:|---:|---:|"]
    for family, per in r["compression"].items():
        planned = per.get("importance_planned", 0)
        got = len(per.get("importance", []))
        if not got:
            lines.append(f"| {family} (least important first) | pending | pending | pending | 0 | {planned} |")
            continue
        partial = got < planned
        counts = [_removable_ci(per, t) + (" or more (partial)" if partial and
                                           _removable(per["importance"], t) == got else "") for t in (0.05, 0.10, 0.25)]
        lines.append(f"| {family} (least important first) | " + " | ".join(counts) + f" | {got} | {planned} |")
    lines += ["", "Counts are the steps before the re-measured perplexity first exceeds the threshold "
              "(interval: the same count on the curve's lower and upper 95% bounds). \"Measured\" below \"of\": "
              "the curve is unfinished.", ""]
    return lines


def _removable(curve, threshold) -> int:
    from workbench.study import removable

    return removable(curve, threshold)


def _removable_ci(per: dict, threshold: float) -> str:
    point = _removable(per["importance"], threshold)
    if np.isnan(per["importance_low"]).any():
        return f"{point} (no interval)"
    # a higher curve allows fewer steps: the upper bound gives the low count
    lo, hi = _removable(per["importance_high"], threshold), _removable(per["importance_low"], threshold)
    return f"{point} [{lo}, {hi}]"


def _why_section(store_path: Path, ds: xr.Dataset, r: dict) -> list[str]:
    """What the stored diagnostics say about the groups: representation change at the last layer."""
    lines = ["### Why: what the removals change inside the network", ""]
    diag = None
    try:
        from workbench.diagnose import open_diagnostics

        diag = open_diagnostics(store_path) if store_path.exists() else None
    except Exception as exc:  # a damaged or half-written group: say so rather than fail the report
        return lines + [f"The stored diagnostics could not be read ({exc}); rerun `workbench diagnose {store_path}`.", ""]
    if diag is None:
        return lines + [f"No diagnostics stored; run `workbench diagnose {store_path}` to add CKA, logit lens "
                        "and norm drift per group.", ""]
    diag = diag.load()
    if "complete" in diag and not bool(diag["complete"].all()):
        lines += ["**Partial**: the diagnostics are unfinished; conditions without them are left out.", ""]
    have = [v for v in ("cka_linear", "cos_to_clean", "norm_ratio", "lens_kl_last_token") if v in diag]
    if not have:
        return lines + ["The diagnostics group holds none of CKA, norm drift or lens KL.", ""]
    last = diag["layer"].values[-1]
    names = {"cka_linear": "CKA to clean", "cos_to_clean": "cosine to clean", "norm_ratio": "norm ratio",
             "lens_kl_last_token": "lens KL (last token)"}
    lines += [f"At the last layer ({int(last)}), on diagnose's sample of tokens:", "",
              "| group | perplexity ratio | " + " | ".join(names[v] for v in have) + " | CKA first below 0.9 |",
              "|---|---:|" + "---:|" * len(have) + "---:|"]
    conds = [str(c) for c in diag["condition"].values]
    rows = []
    for g in r["groups"]:
        for mode in ("zero", "skip_layer"):
            cid = g[f"{mode}_id"]
            if cid is None or cid not in conds or g[f"{mode}_same_as"]:
                continue
            if "complete" in diag and "condition" in diag["complete"].dims and not bool(diag["complete"].sel(condition=cid)):
                continue
            vals = [float(diag[v].sel(condition=cid, layer=last)) for v in have]
            rows.append((g[mode][0], f"{MIXER_NAMES[g['role']]} {mode}", vals))
            drop = "n/a"
            if "cka_linear" in diag:
                below = np.flatnonzero(diag["cka_linear"].sel(condition=cid).values < 0.9)
                drop = f"layer {int(diag['layer'].values[below[0]])}" if below.size else "never"
            lines.append(f"| {MIXER_NAMES[g['role']]} {mode} | x{_fmt(g[mode][0])} | "
                         + " | ".join(f"{v:.3f}" for v in vals) + f" | {drop} |")
    if "cka_linear" in have and len(rows) > 1:
        k = have.index("cka_linear")
        by_ppl = [n for _, n, _ in sorted(rows, key=lambda x: -x[0])]
        by_cka = [n for _, n, _ in sorted(rows, key=lambda x: x[2][k])]
        agree = by_ppl[0] == by_cka[0]
        lines += ["", f"The removal that costs most perplexity ({by_ppl[0]}) "
                  + ("also changes the last layer's representation most (lowest CKA): the loss follows from a "
                     "changed representation." if agree else
                     f"is not the one that changes the last layer's representation most ({by_cka[0]}, lowest CKA): "
                     "the loss is not explained by representation change alone.")]
    return lines + [""]


# --- through what it matters (the store's mediation group) ----------------------------------

def _med_rows(table, cid: str, k: int, resid: bool = False) -> list[dict]:
    from workbench.app import mediation as md

    return [{"component": str(row["component"]), "role": str(row["role"]), "recovery": row["value"],
             "low": row["low"], "high": row["high"]} for _, row in md.top(table, cid, k, resid).iterrows()]


def _med_text(rows: list[dict], powered: bool) -> str:
    if not rows:
        return "no later component"
    return ", ".join(f"{x['component']} " + (_ci((x['recovery'], x['low'], x['high'])) if powered
                                              else _fmt(x['recovery'])) for x in rows)


def _by_kind(rows: list[dict]) -> dict[str, dict]:
    """The best-recovering component of each role among ``rows`` (already sorted, best first)."""
    out = {}
    for x in rows:
        out.setdefault(x["role"], x)
    return out


def _carry_answer(rows: list[dict], powered: bool) -> tuple[str, str]:
    """(verdict, sentence): which kind of later component carries a linear-mixer group's damage."""
    kinds = _by_kind(rows)
    if not kinds:
        return "n/a", "no later mixer or MLP is downstream of the removal"
    best = next(iter(kinds.values()))
    text = "; ".join(f"best {MIXER_NAMES.get(role, role)} {x['component']} recovers {_fmt(x['recovery'])}"
                     for role, x in kinds.items())
    if not powered:
        return UNDERPOWERED, text
    rest = [x for role, x in kinds.items() if role != best["role"]]
    if not rest or all(best["low"] > x["high"] for x in rest):
        return "clear", f"mainly {MIXER_NAMES.get(best['role'], best['role'])} ({text})"
    return UNDECIDED, f"no kind stands out at this precision ({text})"


def _via_linear_answer(rows: list[dict], powered: bool) -> tuple[str, str]:
    """(verdict, sentence): is the attention group's damage carried by the later linear mixers."""
    kinds = _by_kind(rows)
    lin = [x for role, x in kinds.items() if role in ("linear_attention", "ssm")]
    other = [x for role, x in kinds.items() if role not in ("linear_attention", "ssm")]
    if not lin:
        return "n/a", "no linear mixer comes after the attention layers removed"
    best_lin = max(lin, key=lambda x: x["recovery"])
    text = (f"restoring the best later linear mixer ({best_lin['component']}) recovers "
            f"{_ci((best_lin['recovery'], best_lin['low'], best_lin['high'])) if powered else _fmt(best_lin['recovery'])}"
            + "".join(f", the best {MIXER_NAMES.get(x['role'], x['role'])} ({x['component']}) "
                      + (_ci((x['recovery'], x['low'], x['high'])) if powered else _fmt(x['recovery'])) for x in other))
    if not powered:
        return UNDERPOWERED, text
    if all(best_lin["low"] > x["high"] for x in other):
        return HOLDS, f"yes, mainly through the linear mixers: {text}"
    if other and best_lin["high"] < max(x["low"] for x in other):
        return NOT, f"no, mainly through other components: {text}"
    return UNDECIDED, f"undecided at this precision: {text}"


def mediation_result(store_path: Path, ds: xr.Dataset, k: int = 5) -> dict:
    """The numbers of "Through what it matters" for one store: per group (zero) condition the top
    recovering components and heads with intervals, and the two answers."""
    from workbench.app import mediation as md

    command = md.HINT.format(path=store_path)
    try:
        med = md.read_mediation(store_path)
        med = med.load() if med is not None else None
    except Exception as exc:  # a damaged group: say so rather than fail the report
        return {"computed": False, "command": command, "error": str(exc).splitlines()[0][:160] if str(exc) else ""}
    if med is None:
        return {"computed": False, "command": command}
    n = md.windows(med)
    table, heads = md.frame(med), md.frame(med, heads=True)
    powered = n >= MIN_WINDOWS and bool(np.isfinite(table["low"]).any())
    out = {"computed": True, "command": command, "windows": n, "tokens": md.tokens(med),
           "underpowered": None if powered else f"{n} window(s) patched, under {MIN_WINDOWS}"
           if n < MIN_WINDOWS else "no intervals", "groups": {}}
    for role, cid in md.group_conditions(med, ds).items():
        rows = _med_rows(table, cid, 10 ** 6)
        out["groups"][role] = {"condition": cid, "label": str(med["label"].sel(condition=cid).values),
                               "top": rows[:k], "top_heads": _med_rows(heads, cid, k)}
        if role in ("linear_attention", "ssm"):
            out["groups"][role]["carried_by"] = dict(zip(("verdict", "answer"), _carry_answer(rows, powered)))
        if role == "attention":
            out["groups"][role]["via_linear"] = dict(zip(("verdict", "answer"), _via_linear_answer(rows, powered)))
    return out


def _mediation_section(m: dict | None, transformer: bool) -> list[str]:
    lines = ["### Through what it matters", ""]
    if not m or not m["computed"]:
        why = f" (the stored group could not be read: {m['error']})" if m and m.get("error") else ""
        cmd = m["command"] if m else "workbench mediate STORE"
        return lines + [f"Not computed{why}: run `{cmd}` to patch each later component back into the "
                        "ablated run.", ""]
    from workbench.app.mediation import WHAT

    lines += [f"Activation patching on {m['tokens']} token(s) ({m['windows']} window(s)); "
              f"{WHAT['recovery']}. The residual stream is left out of the tables (restoring it after the last "
              "removed layer recovers everything by construction).", ""]
    if m["underpowered"]:
        lines += [f"**Underpowered** ({m['underpowered']}): point values only, not evidence; rerun "
                  f"`{m['command']} --max-tokens N --overwrite` with more tokens.", ""]
    if not m["groups"]:
        return lines + ["None of the study's groups (component only) is mediated yet: run "
                        f"`{m['command']}`.", ""]
    powered = not m["underpowered"]
    lines += ["| group removed | top recovering components | top heads |", "|---|---|---|"]
    for role, g in m["groups"].items():
        lines.append(f"| {MIXER_NAMES.get(role, role)} | {_med_text(g['top'], powered)} | "
                     f"{_med_text(g['top_heads'], powered) if g['top_heads'] else 'not patched (--heads)'} |")
    lines.append("")
    linear = [r for r in m["groups"] if r in ("linear_attention", "ssm")]
    for role in linear:
        a = m["groups"][role]["carried_by"]
        lines.append(f"- When the linear mixers ({MIXER_NAMES[role]}) are removed, the damage is carried by: "
                     f"{'underpowered: ' if a['verdict'] == UNDERPOWERED else ''}{a['answer']}.")
    if not linear and not transformer:
        lines.append("- When the linear mixers are removed: not computed: run "
                     f"`{m['command']}` (their group is not mediated).")
    if "attention" in m["groups"] and not transformer:
        a = m["groups"]["attention"]["via_linear"]
        lines.append("- Is attention's contribution mediated by the linear mixers? "
                     f"{'underpowered: ' if a['verdict'] == UNDERPOWERED else ''}{a['answer']}.")
    elif not transformer:
        lines.append(f"- Is attention's contribution mediated by the linear mixers? not computed: run `{m['command']}`.")
    return lines + [""]


def _summary_table(results: dict) -> list[str]:
    lines = ["## Summary", "", "| model | baseline ppl | windows | group (zero) | group (skip_layer) | early/late |",
             "|---|---:|---:|---|---|---|"]
    for model, r in results.items():
        zero = "; ".join(f"{g['role']} x{_fmt(g['zero'][0])}" for g in r["groups"])
        skip = "; ".join(f"{g['role']} " + (f"= {g['skip_layer_same_as']}" if g["skip_layer_same_as"] else
                                            f"x{_fmt(g['skip_layer'][0])}" + (" (beyond uniform)" if g["skip_layer_beyond"] else ""))
                         for g in r["groups"])
        grad = "; ".join(f"{role} pending" if t == "pending" else f"{role} ppl early/late x{_fmt(_ppl_early_late(t)[0])}"
                         for role, t in r["thirds"].items()) or "n/a"
        windows = f"{r['windows']}" + (" (underpowered)" if r["power"] else "")
        lines.append(f"| {model} | {_fmt(r['baseline_ppl'])} | {windows} | {zero} | {skip} | {grad} |")
    return lines + [""]


def _findings_section(found: list[Finding]) -> list[str]:
    lines = ["## Which published findings hold here", ""]
    if not found:
        return lines + ["No hybrid in the study: the published findings are about hybrids.", ""]
    counts = {v: sum(f.verdict == v for f in found) for v in (HOLDS, NOT, UNDECIDED, UNDERPOWERED, CANNOT, PENDING)}
    lines += ["; ".join(f"{v}: {n}" for v, n in counts.items() if n) + " (the numbers behind each verdict: "
              "the model's section, and section 4 for resilience).", "", "| finding | model | verdict |", "|---|---|---|"]
    return lines + [f"| {f.claim} | {f.model} | **{f.verdict}** |" for f in found] + [""]


def _resilience_section(stores: dict, rows: list[dict], figures: Path) -> list[str]:
    lines = ["## 4. Resilience against the Transformer control", ""]
    if not rows:
        return lines + ["Needs at least one hybrid and one Transformer in the study, with random whole-layer "
                        "removals of a common size.", ""]
    trials = {m: random_trials(ds) for m, ds in stores.items()}
    groups = {m: {s: v for s in trials[m] if (v := _group_layer_ratio(stores[m], s)) is not None} for m in stores}
    fig_random(trials, groups, figures / "random-layers.png")
    lines += ["![random](figures/random-layers.png)", "",
              "Resilience = (Transformer's random whole-layer removal perplexity / its baseline) / "
              "(the hybrid's), same sizes, same protocol; from medians and from means of the trials "
              "(percentile bootstrap over trials). The verdict reads the medians against the published "
              f"{PUBLISHED_RESILIENCE[0]:g}-{PUBLISHED_RESILIENCE[1]:g}x.", "",
              "| hybrid | Transformer | layers removed | trials | from medians | from means | verdict |",
              "|---|---|---:|---:|---:|---:|---|"]
    found = [_resilience_finding(row) for row in rows]
    for row, f in zip(rows, found):
        if "error" in row:
            lines.append(f"| {row['hybrid']} | {row['transformer']} | {row['size']} | | {row['error']} | | |")
            continue
        med = (row["from_medians"], row["medians_low"], row["medians_high"])
        mean = (row["from_means"], row["means_low"], row["means_high"])
        if row.get("power"):
            med, mean = (med[0], math.nan, math.nan), (mean[0], math.nan, math.nan)
        lines.append(f"| {row['hybrid']} | {row['transformer']} | {row['size']} | {row['n_hybrid']}/{row['n_transformer']} "
                     f"| {_ci(med)} | {_ci(mean)} | {f.verdict} |")
    return lines + [""] + [f.line() for f in found] + [""]


def _published_section() -> list[str]:
    lines = ["## Published values for the real models (reference)", "",
             "| model | protocol | baseline | backbone removed | attention removed |", "|---|---|---:|---:|---:|"]
    lines += [f"| {m} | {p} | {b} | {bb:,} | {a} |" for m, p, b, bb, a in PUBLISHED]
    return lines + [""]


def _summary_json(results: dict, found: list[Finding], res_rows: list[dict], missing: list[str]) -> dict:
    out = {"partial": missing, "findings": [asdict(f) for f in found],
           "resilience": [{k: v for k, v in row.items()} for row in res_rows], "models": {}}
    for model, r in results.items():
        out["models"][model] = {
            "baseline_ppl": r["baseline_ppl"], "windows": r["windows"], "underpowered": r["power"],
            "vocab_size": r["vocab"],
            "groups": {g["role"]: {"zero": g["zero"], "skip_layer": g["skip_layer"],
                                   "skip_layer_same_as": g["skip_layer_same_as"],
                                   "skip_layer_beyond_uniform": g["skip_layer_beyond"],
                                   "zero_against_random": g["zero_place"],
                                   "skip_layer_against_random": g["skip_layer_place"]} for g in r["groups"]},
            "thirds": {k: ("pending" if v == "pending" else
                           {**{x: (v[x] if _excess_defined(v) else None) for x in ("gradient", "gradient_low", "gradient_high")},
                            **dict(zip(("ppl_early_late", "ppl_early_late_low", "ppl_early_late_high"), _ppl_early_late(v)))})
                       for k, v in r["thirds"].items()},
            "tasks": r["tasks"],
            "mediation": r.get("mediation"),
            "compression": {f: {f"within_{int(t * 100)}pct": _removable_ci(per, t) for t in (0.05, 0.1, 0.25)}
                            | {"measured": len(per["importance"]), "of": per.get("importance_planned")}
                            for f, per in r["compression"].items() if "importance" in per}}
    return out
