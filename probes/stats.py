"""Statistics over a run store: paired bootstrap intervals and random-control summaries.

Which interval each function gives (all percentile bootstrap intervals at ``level``, default
95%, from ``n_boot`` resamples drawn from ``numpy.random.default_rng(seed)``):

* ``bootstrap_ratio(s)``: perplexity ratio condition / baseline; windows resampled one by one
  (multinomial weights), paired (the same windows for condition and baseline). Adjacent windows
  share text and are correlated, so this interval is too narrow; kept for comparison.
* ``block_bootstrap_ratios`` and ``ratio_intervals`` (the study's intervals, ``block=8`` windows,
  about 2k tokens with the default stride): blocks of contiguous windows, or whole documents
  when ``boundaries`` are given, resampled with replacement (``scipy.stats.bootstrap`` over
  blocks, ``paired=True``); condition and baseline share the blocks.
* ``accuracy_drops``: baseline accuracy minus condition accuracy per (condition, task); items
  resampled, paired (the same items for condition and baseline).
* ``random_matched_summary`` / ``trial_summary``: no interval; the full distribution of a random
  control's trials (n, median, mean, quartiles, IQR, min, max) and the fraction of trials below
  the targeted group's value.
* ``resilience``: (Transformer's random-removal ratio) / (hybrid's), from medians and from
  means; trials resampled within each model (paired by draw when the two share draws).
* ``positional_gradient``: early/late excess-loss ratio of a role's thirds; paired block
  bootstrap (early, late and baseline share the blocks).

In every case condition and baseline are resampled together, and every condition of a corpus
sees the same draws for a given seed, so intervals are comparable across conditions.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy import stats as sps

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


def block_size(n_windows: int, block: int = 8) -> int:
    """Windows per bootstrap block for ``n_windows`` real windows: ``block`` (8: about 2k tokens
    at the default stride), fewer for short runs so that about 10 blocks remain (a single block
    gives no interval at all). The rule of the report, the app and ``ratio_intervals(block="auto")``."""
    return int(max(1, min(block, n_windows // 10)))


def ratio_intervals(ds: xr.Dataset, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                    block: int | str | None = 8, boundaries: dict | None = None) -> xr.Dataset:
    """Bootstrap intervals for every condition and corpus of a run store.

    Needs ``window_nll(condition, corpus, window)``, ``window_tokens(corpus, window)`` and a
    ``baseline`` condition; returns ``ratio``, ``low``, ``high`` over (condition, corpus).
    Blocks of ``block`` contiguous windows are resampled (``block_bootstrap_ratios``), or whole
    documents where ``boundaries[corpus]`` gives their first windows; ``block=None`` resamples
    single windows (``bootstrap_ratios``: too narrow when windows are correlated);
    ``block="auto"`` sizes the blocks of each corpus by ``block_size`` (what the report does).
    """
    if isinstance(block, str) and block != "auto":
        raise ValueError(f"block must be a number of windows, None or 'auto', got {block!r}")
    if "baseline" not in list(ds.condition.values):
        raise ValueError("the store has no baseline condition to compare with")
    nll = ds["window_nll"].transpose("condition", "corpus", "window").values
    tok = ds["window_tokens"].transpose("corpus", "window").values
    base = list(ds.condition.values).index("baseline")
    shape = (ds.sizes["condition"], ds.sizes["corpus"])
    ratio, low, high = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    boundaries = boundaries or {}
    for j, corpus in enumerate(ds.corpus.values):
        if np.isnan(nll[base, j][_valid(tok[j])]).any():
            continue  # baseline not computed yet: nothing to compare with
        if block is None and corpus not in boundaries:
            out = bootstrap_ratios(nll[:, j], nll[base, j], tok[j], n_boot=n_boot, level=level, seed=seed)
        else:
            size = block_size(int(_valid(tok[j]).sum())) if block == "auto" else block or 8
            out = block_bootstrap_ratios(nll[:, j], nll[base, j], tok[j], block=size,
                                         boundaries=boundaries.get(corpus), n_boot=n_boot, level=level, seed=seed)
        ratio[:, j], low[:, j], high[:, j] = out
    coords = {"condition": ds.condition.values, "corpus": ds.corpus.values}
    dims = ("condition", "corpus")
    method = ("paired percentile bootstrap over windows" if block is None and not boundaries else
              f"paired percentile block bootstrap ({'documents' if boundaries else f'{block} contiguous windows'} a block)")
    if block == "auto" and not boundaries:
        method = ("paired percentile block bootstrap (8 contiguous windows a block, fewer below 80 windows "
                  "so that about 10 blocks remain)")
    return xr.Dataset({"ratio": (dims, ratio), "low": (dims, low), "high": (dims, high)}, coords=coords,
                      attrs={"method": method, "n_boot": n_boot, "level": level, "seed": seed,
                             "block": -1 if block is None else 0 if block == "auto" else block})


def pooled_windows(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(``window_nll`` as (condition, window), tokens per window) with the real windows of every
    corpus side by side, as the report pools them."""
    nll = ds["window_nll"].transpose("condition", "corpus", "window").values
    tok = ds["window_tokens"].transpose("corpus", "window").values
    keep = _valid(tok)
    return nll[:, keep], tok[keep]


def paired_ratio(nll_b, nll_a, tokens, *, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> RatioInterval:
    """Perplexity of B over perplexity of A on the same windows, with the report's interval (paired
    block bootstrap, blocks sized by ``block_size``); NaN ends when there are too few windows."""
    n = int(_valid(tokens).sum())
    r, lo, hi = block_bootstrap_ratios(np.asarray(nll_b, dtype=np.float64)[None], nll_a, tokens,
                                       block=block_size(n), n_boot=n_boot, level=level, seed=seed)
    return RatioInterval(float(r[0]), float(lo[0]), float(hi[0]))


# --- block bootstrap ------------------------------------------------------------------------

def _check(level: float, n_boot: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")


_RNG_ARG = "rng" if "rng" in inspect.signature(sps.bootstrap).parameters else "random_state"


def _percentile_boot(samples: tuple, statistic, n_boot: int, level: float, seed: int):
    """scipy's paired percentile bootstrap along the last axis: (low, high), each (...,).

    Resample ``k`` draws ``rng.integers(0, n, (n_boot, n))[k]`` from ``default_rng(seed)``
    (scipy's own scheme; the tests check it against that direct computation)."""
    res = sps.bootstrap(samples, statistic, paired=True, vectorized=True, axis=-1, n_resamples=n_boot,
                        confidence_level=level, method="percentile",
                        **{_RNG_ARG: np.random.default_rng(seed)})
    return np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)


def block_indices(n_windows: int, block: int = 8, boundaries=None) -> list[np.ndarray]:
    """Consecutive windows grouped into blocks: ``block`` windows each (the last may be shorter),
    or one block per document when ``boundaries`` lists each document's first window."""
    if n_windows < 1:
        raise ValueError(f"need at least one window, got {n_windows}")
    if boundaries is not None:
        cuts = np.unique(np.asarray(boundaries, dtype=np.int64))
        if cuts.size and (cuts[0] < 0 or cuts[-1] >= n_windows):
            raise ValueError(f"document boundaries must be window indices in 0-{n_windows - 1}, got "
                             f"{cuts.min()}-{cuts.max()}")
        cuts = cuts[cuts > 0]
    else:
        if block < 1:
            raise ValueError(f"block must be at least 1 window, got {block}")
        cuts = np.arange(block, n_windows, block)
    return np.split(np.arange(n_windows), cuts)


def block_resample(blocks: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Window indices of one block-bootstrap draw: as many blocks as there are, drawn with
    replacement, each kept whole and in order."""
    pick = rng.integers(0, len(blocks), len(blocks))
    return np.concatenate([blocks[i] for i in pick])


def _block_sums(values: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """Sums over each block along the last axis."""
    return np.stack([values[..., b].sum(axis=-1) for b in blocks], axis=-1)


def _log_ratio(diff, tokens, axis=-1):
    return diff.sum(axis=axis) / tokens.sum(axis=axis)


def block_bootstrap_ratios(nll_conditions, nll_baseline, tokens, *, block: int = 8, boundaries=None,
                           n_boot: int = 2000, level: float = 0.95,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ratio, low, high) of the perplexity ratio of each row of ``nll_conditions`` (conditions,
    windows) to the baseline, from a paired percentile bootstrap over blocks of windows.

    Blocks are ``block`` contiguous windows or whole documents (``boundaries``: each document's
    first window); a draw takes as many blocks as there are, with replacement, the same blocks
    for every condition and the baseline. Zero-token (padding) windows are ignored; rows with
    NaN in a real window give NaN; with a single block there is no interval (NaN).
    """
    _check(level, n_boot)
    keep = _valid(tokens)
    tok = np.asarray(tokens, dtype=np.float64)
    diff = np.asarray(nll_conditions, dtype=np.float64) - np.asarray(nll_baseline, dtype=np.float64)
    diff = np.where(keep, diff, 0.0)  # padding windows count for nothing inside their block
    point, low, high = (np.full(diff.shape[0], np.nan) for _ in range(3))
    real = np.flatnonzero(keep)
    if not real.size:
        return point, low, high
    ok = ~np.isnan(diff[:, real]).any(axis=1)
    if not ok.any():
        return point, low, high
    blocks = [b for b in block_indices(int(real[-1]) + 1, block, boundaries) if keep[b].any()]
    d, t = _block_sums(diff[ok], blocks), _block_sums(np.where(keep, tok, 0.0), blocks)
    point[ok] = _exp(d.sum(axis=1) / t.sum())
    if len(blocks) > 1:
        lo, hi = _percentile_boot((d, np.broadcast_to(t, d.shape)), _log_ratio, n_boot, level, seed)
        low[ok], high[ok] = _exp(lo), _exp(hi)
    return point, low, high


# --- accuracy drops ----------------------------------------------------------------------------

def _mean_last(x, axis=-1):
    return x.mean(axis=axis)


def paired_drops(correct_baseline, correct_conditions, *, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(drop, low, high) per row of ``correct_conditions`` (conditions, items): baseline accuracy
    minus condition accuracy, with a paired percentile bootstrap over items.

    Items where the baseline is NaN (padding) are left out; rows with NaN on a real item give NaN.
    """
    _check(level, n_boot)
    base = np.asarray(correct_baseline, dtype=np.float64)
    cond = np.atleast_2d(np.asarray(correct_conditions, dtype=np.float64))
    real = ~np.isnan(base)
    d = base[real] - cond[:, real]  # per-item drop
    point, low, high = (np.full(cond.shape[0], np.nan) for _ in range(3))
    ok = ~np.isnan(d).any(axis=1) & (d.shape[1] > 0)
    if ok.any():
        point[ok] = d[ok].mean(axis=1)
        if d.shape[1] > 1:
            low[ok], high[ok] = _percentile_boot((d[ok],), _mean_last, n_boot, level, seed)
    return point, low, high


def accuracy_drops(correct: xr.DataArray, *, baseline: str = "baseline", n_boot: int = 2000,
                   level: float = 0.95, seed: int = 0) -> xr.Dataset:
    """``acc_drop``, ``low``, ``high`` over (condition, task, ...) from ``correct(condition, task,
    item, ...)`` (1/0 per item, NaN padding): accuracy lost against the baseline (positive: worse),
    paired by item; every condition of a task sees the same item draws."""
    missing = {"condition", "item"} - set(correct.dims)
    if missing:
        raise ValueError(f"correct needs dims condition and item, has {correct.dims}")
    if baseline not in list(correct.condition.values):
        raise ValueError(f"no {baseline!r} condition to measure drops from")
    rest = [d for d in correct.dims if d not in ("condition", "item")]
    arr = correct.transpose("condition", *rest, "item").values
    base = list(correct.condition.values).index(baseline)
    shape = arr.shape[:-1]
    out = {k: np.full(shape, np.nan) for k in ("acc_drop", "low", "high")}
    for k in np.ndindex(*shape[1:]):
        sl = (slice(None), *k)
        out["acc_drop"][sl], out["low"][sl], out["high"][sl] = paired_drops(
            arr[(base, *k)], arr[sl], n_boot=n_boot, level=level, seed=seed)
    coords = {d: correct[d].values for d in ("condition", *rest) if d in correct.coords}
    extra = {c: correct[c] for c in correct.coords if c not in coords and set(correct[c].dims) <= {"condition", *rest}}
    ds = xr.Dataset({k: (("condition", *rest), v) for k, v in out.items()}, coords=coords)
    return ds.assign_coords(extra).assign_attrs(
        method="paired percentile bootstrap over items (baseline accuracy minus condition accuracy)",
        n_boot=n_boot, level=level, seed=seed)


def accuracy_intervals(correct: xr.DataArray, *, n_boot: int = 2000, level: float = 0.95,
                       seed: int = 0) -> xr.Dataset:
    """``accuracy``, ``low``, ``high`` over (condition, task, ...) from ``correct(condition, task,
    item, ...)`` (1/0 per item, NaN padding): percentile bootstrap over items, the same item draws
    for every condition; items NaN for every condition (padding) are left out."""
    if "item" not in correct.dims:
        raise ValueError(f"correct needs an item dim, has {correct.dims}")
    _check(level, n_boot)
    rest = [d for d in correct.dims if d != "item"]
    arr = correct.transpose(*rest, "item").values.astype(np.float64)
    acc, low, high = (np.full(arr.shape[:-1], np.nan) for _ in range(3))
    lead = [d for d in rest if d != "condition"]
    k_axis = rest.index("condition")
    for k in np.ndindex(*[correct.sizes[d] for d in lead]):
        sl = list(k)
        sl.insert(k_axis, slice(None))
        block = arr[tuple(sl)]  # (condition, item)
        block = block[:, ~np.isnan(block).all(axis=0)]
        ok = ~np.isnan(block).any(axis=1) & (block.shape[1] > 0)
        if not ok.any():
            continue
        idx = tuple(sl)
        a = np.full(block.shape[0], np.nan)
        a[ok] = block[ok].mean(axis=1)
        acc[idx] = a
        if block.shape[1] > 1:
            lo, hi = (np.full(block.shape[0], np.nan) for _ in range(2))
            lo[ok], hi[ok] = _percentile_boot((block[ok],), _mean_last, n_boot, level, seed)
            low[idx], high[idx] = lo, hi
    coords = {d: correct[d].values for d in rest if d in correct.coords}
    return xr.Dataset({k: (tuple(rest), v) for k, v in (("accuracy", acc), ("low", low), ("high", high))},
                      coords=coords, attrs={"method": "percentile bootstrap over items", "n_boot": n_boot,
                                            "level": level, "seed": seed})


# --- resilience -----------------------------------------------------------------------------

PROTOCOL_IGNORED = ("batch_size", "prefix_id", "reference_tokens")  # tokenizer- or speed-specific


def check_same_protocol(a: xr.Dataset, b: xr.Dataset, ignore=PROTOCOL_IGNORED) -> None:
    """Refuse to compare two stores scored with different protocols (their ``protocol`` attrs);
    ``ignore`` lists fields that may differ (token ids and counts differ between tokenizers)."""
    try:
        pa, pb = (json.loads(ds.attrs["protocol"]) for ds in (a, b))
    except KeyError:
        raise ValueError("both stores need a 'protocol' attribute to be compared") from None
    from workbench.store import UNRECORDED  # fields older stores left out: their defaults

    pa, pb = ({**UNRECORDED, **p} for p in (pa, pb))
    diff = sorted(k for k in set(pa) | set(pb) if k not in ignore and pa.get(k) != pb.get(k))
    if diff:
        raise ValueError("the stores were scored with different protocols ("
                         + "; ".join(f"{k}: {pa.get(k)!r} vs {pb.get(k)!r}" for k in diff)
                         + "); rerun one with the other's protocol before comparing them")


@dataclass(frozen=True)
class Resilience:
    from_medians: float
    medians_low: float
    medians_high: float
    from_means: float
    means_low: float
    means_high: float
    n_transformer: int
    n_hybrid: int
    paired: bool


def resilience(transformer_ratios, hybrid_ratios, *, paired: bool = False, n_boot: int = 2000,
               level: float = 0.95, seed: int = 0) -> Resilience:
    """The study's resilience ratio: the Transformer's random-removal perplexity over its
    baseline divided by the hybrid's, from the medians and from the means of the trials.

    Inputs are per-trial perplexity ratios (trial / own baseline), NaN ignored. Intervals:
    percentile bootstrap over trials, each model's trials resampled on their own, or together
    (``paired``) when trial k removed the same layers in both models.
    """
    _check(level, n_boot)
    t = np.asarray(transformer_ratios, dtype=np.float64)
    h = np.asarray(hybrid_ratios, dtype=np.float64)
    if paired:
        if t.shape != h.shape:
            raise ValueError(f"paired trials need as many transformer as hybrid trials, got {t.size} and {h.size}")
        keep = ~np.isnan(t) & ~np.isnan(h)
        t, h = t[keep], h[keep]
    else:
        t, h = t[~np.isnan(t)], h[~np.isnan(h)]
    if t.size < 2 or h.size < 2:
        raise ValueError(f"resilience needs at least 2 trials on each side, got {t.size} and {h.size}")
    out = {}
    for name, f in (("medians", np.median), ("means", np.mean)):
        def stat(a, b, axis=-1, f=f):
            with np.errstate(over="ignore", invalid="ignore"):
                return f(a, axis=axis) / f(b, axis=axis)
        point = float(stat(t, h))
        if paired:
            lo, hi = _percentile_boot((t, h), stat, n_boot, level, seed)
        else:
            res = sps.bootstrap((t, h), stat, paired=False, vectorized=True, axis=-1, n_resamples=n_boot,
                                confidence_level=level, method="percentile",
                                **{_RNG_ARG: np.random.default_rng(seed)})
            lo, hi = res.confidence_interval.low, res.confidence_interval.high
        out[name] = (point, float(lo), float(hi))
    return Resilience(*out["medians"], *out["means"], n_transformer=int(t.size), n_hybrid=int(h.size), paired=paired)


def _trial_ratios(ds: xr.Dataset, corpus: str, group: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(ratios, draw seeds) of one random_matched group of a store on one corpus."""
    ratio = ratio_to_baseline(ds).sel(corpus=corpus)
    kinds = np.asarray(ratio["kind"].values).astype(str)
    groups = np.asarray(ratio["group"].values).astype(str)
    names = list(dict.fromkeys(groups[kinds == "random_matched"]))
    if group is None:
        if len(names) != 1:
            raise ValueError(f"the store of {ds.attrs.get('model', '?')} has {len(names)} random_matched groups "
                             f"({', '.join(names) or 'none'}); name one")
        group = names[0]
    pick = (kinds == "random_matched") & (groups == group)
    if not pick.any():
        raise ValueError(f"no random_matched group {group!r}; groups: {', '.join(names) or 'none'}")
    return ratio.values[pick], np.asarray(ratio["draw_seed"].values)[pick]


def resilience_from_stores(transformer: xr.Dataset, hybrid: xr.Dataset, corpus: str, *,
                           group_transformer: str | None = None, group_hybrid: str | None = None,
                           n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Resilience:
    """``resilience`` from two run stores' random_matched trials on ``corpus``; refused unless
    both were scored with one protocol. Trials pair by draw seed when both have the same seeds."""
    check_same_protocol(transformer, hybrid)
    t, ts = _trial_ratios(transformer, corpus, group_transformer)
    h, hs = _trial_ratios(hybrid, corpus, group_hybrid)
    paired = sorted(ts) == sorted(hs) and len(set(ts)) == len(ts)
    if paired:
        t, h = t[np.argsort(ts)], h[np.argsort(hs)]
    return resilience(t, h, paired=paired, n_boot=n_boot, level=level, seed=seed)


# --- positional gradient ------------------------------------------------------------------

def _excess_ratio(d_early, d_late, axis=-1):
    with np.errstate(divide="ignore", invalid="ignore"):
        return d_early.sum(axis=axis) / d_late.sum(axis=axis)


def _log_difference(d_early, d_late, tokens, axis=-1):
    return (d_early.sum(axis=axis) - d_late.sum(axis=axis)) / tokens.sum(axis=axis)


def positional_gradient(nll_early, nll_late, nll_baseline, tokens, *, block: int = 8, boundaries=None,
                        n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """How much more the early third's ablation costs than the late third's, per window arrays.

    ``gradient`` = log(ratio_early) / log(ratio_late): the extra loss per token (nats) that
    removing the early third adds, over the extra loss the late third adds (5.0 means five
    times the damage; the tokens cancel, so it is sum(nll_early - nll_base) / sum(nll_late -
    nll_base)). ``log_difference`` = log(ratio_early) - log(ratio_late) = log(ppl_early /
    ppl_late), stable when the late effect is near zero. Both with paired block-bootstrap
    intervals (the same blocks for early, late and baseline).
    """
    _check(level, n_boot)
    keep = _valid(tokens)
    tok = np.where(keep, np.asarray(tokens, dtype=np.float64), 0.0)
    base = np.asarray(nll_baseline, dtype=np.float64)
    de = np.where(keep, np.asarray(nll_early, dtype=np.float64) - base, 0.0)
    dl = np.where(keep, np.asarray(nll_late, dtype=np.float64) - base, 0.0)
    if np.isnan(de).any() or np.isnan(dl).any():
        raise ValueError("the early, late or baseline window NLLs have NaN on real windows (not computed yet?)")
    real = np.flatnonzero(keep)
    blocks = [b for b in block_indices(int(real[-1]) + 1, block, boundaries) if keep[b].any()]
    be, bl, bt = (_block_sums(x, blocks) for x in (de, dl, tok))
    out = {"gradient": float(_excess_ratio(be, bl)), "log_difference": float(_log_difference(be, bl, bt)),
           "ratio_early": float(_exp(be.sum() / bt.sum())), "ratio_late": float(_exp(bl.sum() / bt.sum()))}
    for name, stat, data in (("gradient", _excess_ratio, (be, bl)), ("log_difference", _log_difference, (be, bl, bt))):
        if len(blocks) > 1:
            lo, hi = _percentile_boot(data, stat, n_boot, level, seed)
            out[f"{name}_low"], out[f"{name}_high"] = float(lo), float(hi)
        else:
            out[f"{name}_low"] = out[f"{name}_high"] = np.nan
    return out


def thirds_gradient(ds: xr.Dataset, role: str, corpus: str, mode: str = "zero", **kw) -> dict[str, float]:
    """``positional_gradient`` of a store's thirds of ``role`` under ``mode`` (group
    ``thirds:<role>``, or ``thirds:<role>:<mode>``; plan order: early, middle, late) on
    ``corpus``; ``kw`` as for ``positional_gradient``."""
    groups = np.asarray(ds["group"].values).astype(str)
    name = f"thirds:{role}" + ("" if mode == "zero" else f":{mode}")
    idx = np.flatnonzero(groups == name)
    if idx.size != 3:
        raise ValueError(f"the store has {idx.size} {name} conditions, expected 3 (early, middle, late)")
    if "baseline" not in list(ds.condition.values):
        raise ValueError("the store has no baseline condition to compare with")
    nll = ds["window_nll"].sel(corpus=corpus)
    tok = ds["window_tokens"].sel(corpus=corpus).values
    return positional_gradient(nll.isel(condition=idx[0]).values, nll.isel(condition=idx[2]).values,
                               nll.sel(condition="baseline").values, tok, **kw)


def trial_summary(values, targeted: float | None = None) -> dict[str, float]:
    """Distribution of one random control's trials: n, median, mean, quartiles, IQR, min, max;
    with ``targeted`` (the targeted group's value) also ``frac_below``, the fraction of trials
    strictly below it (NaN when there is no targeted value)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    out = {"n": 0, **dict.fromkeys(("median", "mean", "q25", "q75", "iqr", "min", "max"), np.nan)}
    if v.size:
        q25, med, q75 = np.quantile(v, [0.25, 0.5, 0.75])
        with np.errstate(over="ignore", invalid="ignore"):
            mean = float(np.mean(v))
        out = {"n": int(v.size), "median": float(med), "mean": mean, "q25": float(q25), "q75": float(q75),
               "iqr": float(q75 - q25), "min": float(v.min()), "max": float(v.max())}
    if targeted is not None:
        out["frac_below"] = float(np.mean(v < targeted)) if v.size and not np.isnan(targeted) else np.nan
    return out


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


def random_matched_summary(ratio: xr.DataArray, targeted: dict[str, str] | None = None) -> xr.Dataset:
    """Per random_matched group (and corpus): the distribution of its trials (seeds).

    ``ratio`` is over ``condition`` (plus any other dims, e.g. ``corpus``) and carries the
    store's ``kind`` and ``group`` condition coordinates (as from ``ratio_to_baseline``).
    ``targeted`` maps a random group to the condition it controls for (e.g.
    ``{"random:6ofattention+linear_attention": "<id of attention off>"}``); those groups get
    ``targeted`` (that condition's value) and ``frac_below`` (fraction of trials below it).
    """
    kinds = np.asarray(ratio["kind"].values).astype(str)
    trials = ratio.isel(condition=np.flatnonzero(kinds == "random_matched"))
    rest = [d for d in ratio.dims if d != "condition"]
    groups = list(dict.fromkeys(np.asarray(trials["group"].values).astype(str)))
    targeted = targeted or {}
    unknown = set(targeted) - set(groups)
    if unknown:
        raise ValueError(f"targeted names group(s) {sorted(unknown)} that are not random_matched groups; "
                         f"groups: {', '.join(groups) or 'none'}")
    stats = ("n", "median", "mean", "q25", "q75", "iqr", "min", "max", "targeted", "frac_below")
    shape = (len(groups), *[ratio.sizes[d] for d in rest])
    out = {s: np.full(shape, np.nan) for s in stats}
    for g, name in enumerate(groups):
        pick = np.flatnonzero(np.asarray(trials["group"].values).astype(str) == name)
        block = trials.isel(condition=pick).transpose("condition", *rest).values
        flat = block.reshape(block.shape[0], -1)
        target = None
        if name in targeted:
            if targeted[name] not in list(ratio.condition.values):
                raise ValueError(f"targeted condition {targeted[name]!r} for {name!r} is not in the results")
            target = ratio.sel(condition=targeted[name]).transpose(*rest).values.reshape(-1)
        for k in range(flat.shape[1]):
            t = None if target is None else float(target[k])
            for s, v in trial_summary(flat[:, k], t).items():
                out[s][(g, *np.unravel_index(k, shape[1:]))] = v
            if t is not None:
                out["targeted"][(g, *np.unravel_index(k, shape[1:]))] = t
    coords = {"group": np.array(groups, dtype=object), **{d: ratio[d].values for d in rest if d in ratio.coords}}
    data = {s: (("group", *rest), v) for s, v in out.items()}
    data["n"] = (("group", *rest), out["n"].astype(np.int64))
    return xr.Dataset(data, coords=coords)
