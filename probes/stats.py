"""Statistics over a run store: paired bootstrap intervals and random-control summaries.

The unit of resampling is the evaluation window (its summed NLL and token count), so an
interval reflects how much the ratio depends on which text was scored. Condition and
baseline are resampled with the same window indices (paired), and every condition of a
corpus sees the same draws for a given seed, so intervals are comparable across conditions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

_CHUNK = 4_000_000  # bootstrap weights held at once (draws x windows), ~32 MB of float64


@dataclass(frozen=True)
class RatioInterval:
    ratio: float  # point estimate: exp((sum nll_c - sum nll_b) / sum tokens)
    low: float
    high: float


def _exp(x):
    with np.errstate(over="ignore"):  # overflow is reported as inf, never clipped
        return np.exp(x)


def _valid(tokens: np.ndarray) -> np.ndarray:
    """Windows that exist (stores pad shorter corpora with zero-token windows)."""
    return np.asarray(tokens) > 0


def _boot_log_ratios(diff: np.ndarray, tokens: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """log ratio under ``n_boot`` window resamples; ``diff`` is (conditions, windows)."""
    n = tokens.shape[0]
    rng = np.random.default_rng(seed)
    out = np.empty((diff.shape[0], n_boot))
    step = max(1, _CHUNK // max(n, 1))
    for start in range(0, n_boot, step):
        stop = min(start + step, n_boot)
        # multiplicity of each window in each draw: the same as resampling indices
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=stop - start).astype(np.float64)
        out[:, start:stop] = (diff @ counts.T) / (counts @ tokens)
    return out


def bootstrap_ratio(nll_condition, nll_baseline, tokens, *, n_boot: int = 2000, level: float = 0.95,
                    seed: int = 0) -> RatioInterval:
    """Percentile bootstrap interval of the perplexity ratio of a condition to the baseline.

    Inputs are per-window summed NLL (nats) and scored-token counts on one corpus;
    zero-token (padding) windows are ignored.
    """
    out = bootstrap_ratios(np.asarray(nll_condition, dtype=np.float64)[None], nll_baseline, tokens,
                           n_boot=n_boot, level=level, seed=seed)
    return RatioInterval(*(float(v[0]) for v in out))


def bootstrap_ratios(nll_conditions, nll_baseline, tokens, *, n_boot: int = 2000, level: float = 0.95,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ratio, low, high) for each row of ``nll_conditions`` (conditions, windows).

    Rows with NaN in a real window (conditions not yet computed) give NaN.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    keep = _valid(tokens)
    tokens = np.asarray(tokens, dtype=np.float64)[keep]
    diff = (np.asarray(nll_conditions, dtype=np.float64)[:, keep]
            - np.asarray(nll_baseline, dtype=np.float64)[keep])
    point, low, high = (np.full(diff.shape[0], np.nan) for _ in range(3))
    ok = ~np.isnan(diff).any(axis=1) if tokens.size else np.zeros(diff.shape[0], dtype=bool)
    if ok.any():
        d = diff[ok]
        point[ok] = _exp(d.sum(axis=1) / tokens.sum())
        boots = _boot_log_ratios(d, tokens, n_boot, seed)
        alpha = (1 - level) / 2
        # quantiles of the log ratio, then exp: the same interval, without overflow in between
        low[ok] = _exp(np.quantile(boots, alpha, axis=1))
        high[ok] = _exp(np.quantile(boots, 1 - alpha, axis=1))
    return point, low, high


def ratio_intervals(ds: xr.Dataset, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> xr.Dataset:
    """Bootstrap intervals for every condition and corpus of a run store.

    Needs ``window_nll(condition, corpus, window)``, ``window_tokens(corpus, window)`` and a
    ``baseline`` condition; returns ``ratio``, ``low``, ``high`` over (condition, corpus).
    """
    if "baseline" not in list(ds.condition.values):
        raise ValueError("the store has no baseline condition to compare with")
    nll = ds["window_nll"].transpose("condition", "corpus", "window").values
    tok = ds["window_tokens"].transpose("corpus", "window").values
    base = list(ds.condition.values).index("baseline")
    shape = (ds.sizes["condition"], ds.sizes["corpus"])
    ratio, low, high = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    for j in range(shape[1]):
        if np.isnan(nll[base, j][_valid(tok[j])]).any():
            continue  # baseline not computed yet: nothing to compare with
        ratio[:, j], low[:, j], high[:, j] = bootstrap_ratios(nll[:, j], nll[base, j], tok[j],
                                                              n_boot=n_boot, level=level, seed=seed)
    coords = {"condition": ds.condition.values, "corpus": ds.corpus.values}
    dims = ("condition", "corpus")
    return xr.Dataset({"ratio": (dims, ratio), "low": (dims, low), "high": (dims, high)}, coords=coords,
                      attrs={"method": "paired percentile bootstrap over windows", "n_boot": n_boot,
                             "level": level, "seed": seed})


def trial_summary(values) -> dict[str, float]:
    """Distribution of one random control's trials: n, median, quartiles, IQR, min, max."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"n": 0, **dict.fromkeys(("median", "q25", "q75", "iqr", "min", "max"), np.nan)}
    q25, med, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"n": int(v.size), "median": float(med), "q25": float(q25), "q75": float(q75),
            "iqr": float(q75 - q25), "min": float(v.min()), "max": float(v.max())}


def ratio_to_baseline(ds: xr.Dataset) -> xr.DataArray:
    """Perplexity ratio to the baseline over (condition, corpus), condition coords kept."""
    if "baseline" not in list(ds.condition.values):
        raise ValueError("the store has no baseline condition to compare with")
    loss = ds["loss"]
    base = loss.sel(condition="baseline").drop_vars([c for c in loss.coords if c != "corpus"])
    out = _exp(loss - base)
    out = out.assign_coords({c: loss[c] for c in loss.coords}).rename("ratio")
    out.attrs = {"description": "perplexity over the baseline's perplexity"}
    return out


def random_matched_summary(ratio: xr.DataArray) -> xr.Dataset:
    """Per random_matched group (and corpus): summaries across its trials (seeds).

    ``ratio`` is over ``condition`` (plus any other dims, e.g. ``corpus``) and carries the
    store's ``kind`` and ``group`` condition coordinates (as from ``ratio_to_baseline``).
    """
    kinds = np.asarray(ratio["kind"].values).astype(str)
    trials = ratio.isel(condition=np.flatnonzero(kinds == "random_matched"))
    rest = [d for d in ratio.dims if d != "condition"]
    groups = list(dict.fromkeys(np.asarray(trials["group"].values).astype(str)))
    stats = ("n", "median", "q25", "q75", "iqr", "min", "max")
    shape = (len(groups), *[ratio.sizes[d] for d in rest])
    out = {s: np.full(shape, np.nan) for s in stats}
    for g, name in enumerate(groups):
        pick = np.flatnonzero(np.asarray(trials["group"].values).astype(str) == name)
        block = trials.isel(condition=pick).transpose("condition", *rest).values
        flat = block.reshape(block.shape[0], -1)
        for k in range(flat.shape[1]):
            for s, v in trial_summary(flat[:, k]).items():
                out[s][(g, *np.unravel_index(k, shape[1:]))] = v
    coords = {"group": np.array(groups, dtype=object), **{d: ratio[d].values for d in rest if d in ratio.coords}}
    data = {s: (("group", *rest), v) for s, v in out.items()}
    data["n"] = (("group", *rest), out["n"].astype(np.int64))
    return xr.Dataset(data, coords=coords)
