"""The study report: Markdown with PNG figures, from a folder of study stores (numbers stay in
the stores; this module only reads them, computes intervals and draws).

Perplexity figures pool every corpus of a store: the windows of all corpora side by side, so a
ratio is exp(mean extra loss per scored token), with paired block-bootstrap intervals
(``probes.stats``; blocks of 8 contiguous windows, fewer when a store has under 80 windows so
that there are still about 10 blocks to resample).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from probes import stats
from workbench.store import open_store

PUBLISHED = [  # WikiText-2 perplexity in arXiv 2603.22473 (whole-layer skips on Qwen3.5, zeroed branches on Falcon-H1)
    ("Qwen3.5-0.8B", "whole-layer skip", 7.62, 268337.0, 624.8),
    ("Falcon-H1-0.5B", "component zero", 5.62, 295.2, 17.7),
]
MIXER_NAMES = {"attention": "attention", "linear_attention": "linear attention (GDN)", "ssm": "SSM (Mamba-2)",
               "conv": "short convolution", "mlp": "MLP"}
N_BOOT = 2000


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
    runs so that about 10 blocks remain (a single block gives no interval at all)."""
    return int(max(1, min(8, len(p.tokens) // 10)))


def ratios(ds: xr.Dataset, p: Pooled, ids: list[str], seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """(ratio, low, high) to the baseline for ``ids``, pooled over corpora."""
    if not ids:
        return {}
    r, lo, hi = stats.block_bootstrap_ratios(np.stack([p.row(i) for i in ids]), p.row("baseline"), p.tokens,
                                             block=block_for(p), n_boot=N_BOOT, seed=seed)
    return {i: (float(a), float(b), float(c)) for i, a, b, c in zip(ids, r, lo, hi)}


def _sel(ds: xr.Dataset, **coords) -> list[str]:
    mask = np.ones(ds.sizes["condition"], dtype=bool)
    for name, value in coords.items():
        mask &= np.asarray(ds[name].values).astype(str) == value
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

def analyse(ds: xr.Dataset, comp: xr.Dataset | None) -> dict:
    """Every number the report states for one model."""
    p = pooled(ds)
    if np.isnan(p.row("baseline")).any():
        raise ReportError(f"the store of {ds.attrs.get('model')} has no complete baseline")
    base_loss = float(np.nansum(p.row("baseline")) / p.tokens.sum())
    out = {"model": ds.attrs["model"], "baseline_ppl": math.exp(base_loss), "groups": [], "thirds": {},
           "tasks": {}, "compression": {}, "transformer": is_transformer(ds)}
    for role in model_roles(ds):
        row = {"role": role}
        for mode in ("zero", "skip_layer"):
            name = f"group:{role}" + ("" if mode == "zero" else f":{mode}")
            ids = _sel(ds, group=name)
            row[mode] = ratios(ds, p, ids)[ids[0]] if ids else (math.nan,) * 3
            row[f"{mode}_id"] = ids[0] if ids else None
        out["groups"].append(row)
    for role in model_roles(ds):
        ids = _sel(ds, group=f"thirds:{role}")
        if len(ids) == 3:
            r = ratios(ds, p, ids)
            grad = stats.positional_gradient(p.row(ids[0]), p.row(ids[2]), p.row("baseline"), p.tokens,
                                             block=block_for(p), n_boot=N_BOOT)
            out["thirds"][role] = {"early": r[ids[0]], "middle": r[ids[1]], "late": r[ids[2]], **grad}
    if "accuracy" in ds:
        drops = stats.accuracy_drops(ds["correct"].sel(metric="acc"), n_boot=N_BOOT)
        base_acc = ds["accuracy"].sel(condition="baseline", metric="acc")
        for row in out["groups"]:
            for mode in ("zero", "skip_layer"):
                cid = row[f"{mode}_id"]
                if cid is None:
                    continue
                for task in ds.task.values:
                    d = drops.sel(condition=cid, task=task)
                    out["tasks"].setdefault(str(task), {"baseline": float(base_acc.sel(task=task)),
                                                        "chance": float(ds["chance"].sel(task=task))})
                    out["tasks"][str(task)][f"{row['role']}:{mode}"] = (float(d["acc_drop"]), float(d["low"]),
                                                                        float(d["high"]))
    if comp is not None:
        cp = pooled(comp)
        if not np.isnan(cp.row("baseline")).any():
            for family in ("mixers", "mlp", "layers"):
                per = {}
                for order in ("importance", "random"):
                    ids = _sel(comp, group=f"compression:{family}:{order}")
                    if ids:
                        r = ratios(comp, cp, ids)
                        per[order] = np.array([r[i][0] for i in ids])
                        per[f"{order}_low"] = np.array([r[i][1] for i in ids])
                        per[f"{order}_high"] = np.array([r[i][2] for i in ids])
                if per:
                    out["compression"][family] = per
    return out


def random_trials(ds: xr.Dataset) -> dict[int, np.ndarray]:
    """Whole-layer random removals by size: per-trial perplexity ratio (pooled corpora)."""
    p = pooled(ds)
    base = p.row("baseline")
    out: dict[int, list] = {}
    for cid in _sel(ds, kind="random_matched", mode="skip_layer"):
        size = int(ds["n_targets"].sel(condition=cid))
        out.setdefault(size, []).append(math.exp((p.row(cid) - base).sum() / p.tokens.sum()))
    return {s: np.array(v) for s, v in out.items()}


def _group_layer_ratio(ds: xr.Dataset, size: int) -> float | None:
    p = pooled(ds)
    for cid in _sel(ds, kind="group", mode="skip_layer"):
        if int(ds["n_targets"].sel(condition=cid)) == size:
            return math.exp((p.row(cid) - p.row("baseline")).sum() / p.tokens.sum())
    return None


# --- the document ---------------------------------------------------------------------------

def write_report(folder: str | Path) -> Path:
    folder = Path(folder)
    settings_file = folder / "study.json"
    if not settings_file.exists():
        raise ReportError(f"{folder} has no study.json: run `workbench study --out {folder}` first")
    settings = json.loads(settings_file.read_text())
    from workbench.study import slug

    figures = folder / "figures"
    figures.mkdir(exist_ok=True)
    stores, comps = {}, {}
    for model in settings["models"]:
        path = folder / f"{slug(model)}.zarr"
        if not path.exists():
            continue
        stores[model] = open_store(path).load()
        cpath = folder / f"{slug(model)}.compression.zarr"
        comps[model] = open_store(cpath).load() if cpath.exists() else None
    if not stores:
        raise ReportError(f"no study stores in {folder}; run `workbench study --out {folder}`")
    results = {m: analyse(ds, comps[m]) for m, ds in stores.items()}
    first = next(iter(stores.values()))
    task_list = ", ".join(first.task.values) if "task" in first.dims else "none"
    items = f" (first {settings['task_items']} items each)" if settings.get("task_items") else ""
    lines = [f"# Component ablation study: {', '.join(stores)}", "",
             f"Corpora: {', '.join(settings['corpora'])} (first {settings.get('max_tokens') or 'all'} tokens each; "
             f"context {settings['context']}, stride {settings['stride']}); tasks: {task_list}{items}. "
             "Perplexity ratios pool every corpus; intervals are paired 95% block-bootstrap intervals "
             f"(blocks of {block_for(pooled(first))} contiguous window(s), {len(pooled(first).tokens)} windows "
             "pooled; adjacent windows share text, so blocks rather than single windows are resampled); "
             "accuracy drops are paired by item.", ""]
    lines += _summary_table(results)
    for model, r in results.items():
        ds = stores[model]
        s = slug(model)
        lines += [f"## {model}", "", f"Baseline perplexity (pooled): {_fmt(r['baseline_ppl'])}.", ""]
        fig_groups(model, r["groups"], figures / f"{s}-groups.png")
        fig_sweep(model, ds, pooled(ds), figures / f"{s}-sweep.png")
        lines += ["### 1-2. Is each component type used, and which is the backbone?", "",
                  f"![groups](figures/{s}-groups.png)", "",
                  "| component | removed alone (zero) | whole layers skipped (skip_layer) |", "|---|---:|---:|"]
        lines += [f"| {MIXER_NAMES[g['role']]} | {_ci(g['zero'])} | {_ci(g['skip_layer'])} |" for g in r["groups"]]
        lines += ["", _backbone_sentence(r), "", f"![sweep](figures/{s}-sweep.png)", ""]
        if r["tasks"]:
            lines += ["Accuracy drop (baseline minus ablated, acc) with paired 95% intervals:", "",
                      "| task | baseline (chance) | " + " | ".join(
                          f"{MIXER_NAMES[g['role']]} {m}" for g in r["groups"] for m in ("zero", "skip_layer")) + " |",
                      "|---|---:|" + "---:|" * (2 * len(r["groups"]))]
            for task, t in r["tasks"].items():
                cells = [_ci(t.get(f"{g['role']}:{m}", (math.nan,) * 3)) for g in r["groups"]
                         for m in ("zero", "skip_layer")]
                lines.append(f"| {task} | {t['baseline']:.3f} ({t['chance']:.3f}) | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["### 3. Where in depth does it matter?", ""]
        if r["thirds"]:
            lines += ["| component | early third | middle third | late third | perplexity early/late | "
                      "early/late excess-loss ratio |", "|---|---:|---:|---:|---:|---:|"]
            for role, t in r["thirds"].items():
                excess = (_ci((t["gradient"], t["gradient_low"], t["gradient_high"])) if _excess_defined(t)
                          else "n/a (late third: no clear effect)")
                lines.append(f"| {MIXER_NAMES[role]} | {_ci(t['early'])} | {_ci(t['middle'])} | {_ci(t['late'])} | "
                             f"{_ci(_ppl_early_late(t))} | {excess} |")
            lines += ["", "Perplexity early/late: with the early third removed over with the late third removed "
                      "(above 1: the early third matters more). The excess-loss ratio divides the extra loss of "
                      "one by the other's; it is shown only where the late third's removal clearly raises the "
                      "loss, since it is meaningless near zero.", ""]
        else:
            lines += ["No role has three or more layers, so there are no thirds.", ""]
        if r["compression"]:
            fig_compression(model, r["compression"], figures / f"{s}-compression.png")
            lines += ["### 5. How much could be removed?", "", f"![compression](figures/{s}-compression.png)", "",
                      "| removed cumulatively | within +5% | within +10% | within +25% | of |", "|---|---:|---:|---:|---:|"]
            for family, per in r["compression"].items():
                if "importance" in per:
                    counts = [_removable_ci(per, t) for t in (0.05, 0.10, 0.25)]
                    lines.append(f"| {family} (least important first) | " + " | ".join(counts)
                                 + f" | {len(per['importance'])} |")
            lines += ["", "Counts are the steps before the re-measured perplexity first exceeds the threshold "
                      "(interval: the same count on the curve's lower and upper 95% bounds).", ""]
    lines += _resilience_section(stores, figures)
    lines += _published_section(results)
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (folder / "summary.json").write_text(json.dumps(_summary_json(results), indent=1, default=float))
    return path


def _removable_ci(per: dict, threshold: float) -> str:
    from workbench.study import removable

    point = removable(per["importance"], threshold)
    # a higher curve allows fewer steps: the upper bound gives the low count
    lo, hi = removable(per["importance_high"], threshold), removable(per["importance_low"], threshold)
    return f"{point} [{lo}, {hi}]"


def _backbone_sentence(r: dict) -> str:
    mixers = [g for g in r["groups"] if g["role"] != "mlp" and not math.isnan(g["zero"][0])]
    if not mixers:
        return ""
    top = max(mixers, key=lambda g: g["zero"][0])
    top_skip = max(mixers, key=lambda g: g["skip_layer"][0])
    if any(math.isnan(g["zero"][1]) for g in mixers):
        used_text = "Used: not decided (too few windows for an interval)."
    else:
        used = [MIXER_NAMES[g["role"]] for g in mixers if g["zero"][1] > 1.0]
        used_text = f"Used: {', '.join(used) or 'no mixer'} (interval of the component-only ratio above 1)."
    text = (f"{used_text} "
            f"Backbone by component-only removal: **{MIXER_NAMES[top['role']]}** (x{_fmt(top['zero'][0])}); ")
    tied = [g for g in mixers if g["skip_layer"][0] == top_skip["skip_layer"][0]]
    if len(tied) > 1:  # parallel blocks: every mixer sits in the same layers
        return text + ("whole-layer removal cannot tell: " + ", ".join(MIXER_NAMES[g["role"]] for g in tied)
                       + f" sit in the same layers, so skipping them removes the same blocks (x{_fmt(top_skip['skip_layer'][0])}).")
    text += f"by whole-layer removal: **{MIXER_NAMES[top_skip['role']]}** (x{_fmt(top_skip['skip_layer'][0])})."
    if top["role"] != top_skip["role"]:
        text += " The two protocols disagree: whole-layer removal also removes the MLPs of those layers."
    return text


def _summary_table(results: dict) -> list[str]:
    lines = ["## Summary", "", "| model | baseline ppl | group (zero) | group (skip_layer) | early/late |",
             "|---|---:|---|---|---|"]
    for model, r in results.items():
        zero = "; ".join(f"{g['role']} x{_fmt(g['zero'][0])}" for g in r["groups"])
        skip = "; ".join(f"{g['role']} x{_fmt(g['skip_layer'][0])}" for g in r["groups"])
        grad = "; ".join(f"{role} {_fmt(t['gradient'])}" if _excess_defined(t)
                         else f"{role} n/a (late third no effect; ppl early/late {_fmt(_ppl_early_late(t)[0])})"
                         for role, t in r["thirds"].items()) or "n/a"
        lines.append(f"| {model} | {_fmt(r['baseline_ppl'])} | {zero} | {skip} | {grad} |")
    return lines + [""]


def _resilience_section(stores: dict, figures: Path) -> list[str]:
    transformers = [m for m, ds in stores.items() if is_transformer(ds)]
    hybrids = [m for m in stores if m not in transformers]
    lines = ["## 4. Resilience against the Transformer control", ""]
    if not transformers or not hybrids:
        return lines + ["Needs at least one hybrid and one Transformer in the study.", ""]
    trials = {m: random_trials(ds) for m, ds in stores.items()}
    groups = {m: {s: v for s in trials[m] if (v := _group_layer_ratio(stores[m], s)) is not None} for m in stores}
    fig_random(trials, groups, figures / "random-layers.png")
    lines += ["![random](figures/random-layers.png)", "",
              "Resilience = (Transformer's random whole-layer removal perplexity / its baseline) / "
              "(the hybrid's), same sizes, same protocol; from medians and from means of the trials "
              "(percentile bootstrap over trials).", "",
              "| hybrid | Transformer | layers removed | trials | from medians | from means |", "|---|---|---:|---:|---:|---:|"]
    for h in hybrids:
        for t in transformers:
            try:
                stats.check_same_protocol(stores[t], stores[h])
            except ValueError as exc:
                lines.append(f"| {h} | {t} | | | not comparable: {exc} | |")
                continue
            for size in sorted(set(trials[h]) & set(trials[t])):
                try:
                    res = stats.resilience(trials[t][size], trials[h][size], n_boot=N_BOOT)
                except ValueError:
                    continue
                lines.append(f"| {h} | {t} | {size} | {res.n_hybrid}/{res.n_transformer} | "
                             f"{_ci((res.from_medians, res.medians_low, res.medians_high))} | "
                             f"{_ci((res.from_means, res.means_low, res.means_high))} |")
    return lines + [""]


def _published_section(results: dict) -> list[str]:
    lines = ["## Published values for the real models (reference)", "",
             "| model | protocol | baseline | backbone removed | attention removed |", "|---|---|---:|---:|---:|"]
    lines += [f"| {m} | {p} | {b} | {bb:,} | {a} |" for m, p, b, bb, a in PUBLISHED]
    lines += ["", "## Which findings hold here", ""]
    for model, r in results.items():
        if r["transformer"]:
            continue
        mixers = {g["role"]: g for g in r["groups"] if g["role"] != "mlp"}
        linear = [k for k in mixers if k != "attention"]
        if "attention" in mixers and linear:
            lin = linear[0]
            holds = mixers[lin]["zero"][1] > mixers["attention"]["zero"][2]
            lines.append(f"- {model}: \"the linear-time mixer is the backbone, attention matters less\" "
                         f"{'holds' if holds else 'does not hold (intervals overlap or reverse)'} for "
                         f"component-only removal ({MIXER_NAMES[lin]} x{_fmt(mixers[lin]['zero'][0])} vs attention "
                         f"x{_fmt(mixers['attention']['zero'][0])}).")
        for role, t in r["thirds"].items():
            if role == "mlp":
                continue
            ratio = _ppl_early_late(t)
            holds = ratio[1] > 1
            excess = (f"; excess-loss ratio x{_fmt(t['gradient'])} [{_fmt(t['gradient_low'])}, "
                      f"{_fmt(t['gradient_high'])}]" if _excess_defined(t) else "; the late third has no clear effect")
            lines.append(f"- {model}: \"early layers matter more than late ones\" for {MIXER_NAMES[role]} "
                         f"{'holds' if holds else 'does not hold'} (perplexity early/late x{_fmt(ratio[0])}, "
                         f"interval [{_fmt(ratio[1])}, {_fmt(ratio[2])}]{excess}).")
    return lines + [""]


def _summary_json(results: dict) -> dict:
    out = {}
    for model, r in results.items():
        out[model] = {"baseline_ppl": r["baseline_ppl"],
                      "groups": {g["role"]: {"zero": g["zero"], "skip_layer": g["skip_layer"]} for g in r["groups"]},
                      "thirds": {k: {**{x: (v[x] if _excess_defined(v) else None)
                                        for x in ("gradient", "gradient_low", "gradient_high")},
                                     **dict(zip(("ppl_early_late", "ppl_early_late_low", "ppl_early_late_high"),
                                                _ppl_early_late(v)))}
                                 for k, v in r["thirds"].items()},
                      "tasks": r["tasks"],
                      "compression": {f: {f"within_{int(t * 100)}pct": _removable_ci(per, t) for t in (0.05, 0.1, 0.25)}
                                      for f, per in r["compression"].items() if "importance" in per}}
    return out
