"""Linear probes on activations, with Hewitt & Liang control tasks and transfer to ablated runs.

- ``LinearProbe``: standardised features -> multinomial logistic regression (lbfgs, fixed
  seed); a scikit-learn estimator (fit / predict / score = accuracy). Fitted on one thread:
  scikit-learn's multinomial loss runs an OpenMP loop per lbfgs step that is far too small to
  share, and on 2 busy cores its threads wait on each other (one 4-class probe on 1,500
  tokens x 256 features: 51 s with 2 threads, 0.9 s with 1, identical coefficients; over a
  store's probes accuracies moved by at most one held-out token, the gradient's sums being
  taken in another order).
- ``control_labels``: the control task of Hewitt & Liang (2019): every token *type* gets one
  label drawn from the task's empirical label distribution, fixed for that type. A probe
  that does well on it memorises token identity; selectivity = task acc - control acc.
- ``probe_layers``: one probe per (layer, label), trained and tested on a split by window
  (GroupShuffleSplit on the window id, never by token, so neighbouring tokens of one text
  never sit on both sides). For speed at most ``max_tokens`` tokens are used, one seeded
  subsample shared by every layer and label so layers are comparable.
- ``transfer``: accuracy of the clean run's probes on an ablated run's activations at the
  same (held-out) tokens: does the clean readout still work after the ablation?

Labels are integer codes; a negative code means "no label" and the token is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ._arrays import as_float64, by_condition, coord, to_numpy


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Standardise, then multinomial logistic regression (L2, strength 1/C)."""

    def __init__(self, C: float = 1.0, max_iter: int = 500, seed: int = 0):
        self.C = C
        self.max_iter = max_iter
        self.seed = seed

    def fit(self, X, y):
        X, y = as_float64(X, "X", 2), np.asarray(y)
        if len(np.unique(y)) < 2:
            raise ValueError(f"a probe needs at least 2 classes in y, got {np.unique(y).tolist()}")
        self.pipeline_ = make_pipeline(StandardScaler(), LogisticRegression(
            C=self.C, max_iter=self.max_iter, random_state=self.seed))
        with threadpool_limits(1):  # see the module docstring
            self.pipeline_.fit(X, y)
        self.classes_ = self.pipeline_.classes_
        return self

    def predict(self, X):
        return self.pipeline_.predict(as_float64(X, "X", 2))

    def predict_proba(self, X):
        return self.pipeline_.predict_proba(as_float64(X, "X", 2))


def control_labels(token_ids, labels, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang control task: one label per token type, drawn from the empirical
    distribution of ``labels`` (over tokens with a label); tokens without a label (< 0) keep -1."""
    ids = to_numpy(token_ids).astype(np.int64).ravel()
    y = to_numpy(labels).astype(np.int64).ravel()
    if ids.shape != y.shape:
        raise ValueError(f"token_ids and labels need the same length, got {ids.shape[0]} and {y.shape[0]}")
    ok = y >= 0
    if not ok.any():
        raise ValueError("labels has no token with a label (all negative)")
    values, counts = np.unique(y[ok], return_counts=True)
    types, inverse = np.unique(ids, return_inverse=True)  # sorted types: a seed fixes the draw
    per_type = np.random.default_rng(seed).choice(values, size=types.shape[0], p=counts / counts.sum())
    return np.where(ok, per_type[inverse], -1)


def _labels(labels) -> dict[str, np.ndarray]:
    if isinstance(labels, xr.Dataset):
        return {str(k): to_numpy(v).astype(np.int64) for k, v in labels.data_vars.items()}
    if isinstance(labels, Mapping):
        return {str(k): to_numpy(v).astype(np.int64).ravel() for k, v in labels.items()}
    return {"label": to_numpy(labels).astype(np.int64).ravel()}


def _acts(acts, name: str):
    if isinstance(acts, xr.DataArray):
        rest = [d for d in acts.dims if d not in ("layer", "token")]
        if "layer" not in acts.dims or "token" not in acts.dims or len(rest) != 1:
            raise ValueError(f"{name} needs dims (layer, token, <feature>), has {acts.dims}")
        acts = acts.transpose("layer", "token", rest[0])
    shape = tuple(getattr(acts, "shape", np.shape(acts)))
    if len(shape) != 3:
        raise ValueError(f"{name} must be (layer, token, d), got shape {shape}")
    return acts, shape


@dataclass
class FittedProbes:
    """Probes from ``probe_layers``: (layer, label) -> probe, and the train / held-out tokens."""

    probes: dict[tuple[object, str], LinearProbe] = field(default_factory=dict)
    train: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    test: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    layers: np.ndarray = field(default_factory=lambda: np.empty(0))
    names: list[str] = field(default_factory=list)


def _score(probe, X, y) -> float:
    return float((probe.predict(X) == y).mean()) if y.size else float("nan")


def probe_layers(acts, labels, groups, *, token_ids, test_size: float = 0.25, max_tokens: int = 10_000,
                 seed: int = 0, C: float = 1.0, return_probes: bool = False):
    """Probe accuracy and selectivity per (layer, probe).

    ``acts``: (layer, token, d); ``labels``: a Dataset over token (one variable per probe), a
    mapping name -> (token,) codes, or one (token,) array; ``groups``: the window id of each
    token (the split unit); ``token_ids``: the token id of each token (for the control task).
    Returns ``probe_acc``, ``probe_control_acc`` and ``probe_selectivity`` over (layer, probe)
    and, with ``return_probes``, the ``FittedProbes`` for ``transfer``. A probe whose training
    set has fewer than 2 classes is NaN.
    """
    acts, (n_lay, n_tok, _) = _acts(acts, "acts")
    labs = _labels(labels)
    groups = to_numpy(groups).ravel()
    ids = to_numpy(token_ids).astype(np.int64).ravel()
    for what, arr in [("groups", groups), ("token_ids", ids), *labs.items()]:
        if arr.shape[0] != n_tok:
            raise ValueError(f"{what} must have one entry per token ({n_tok}), got {arr.shape[0]}")
    if len(np.unique(groups)) < 2:
        raise ValueError("a split by window needs at least 2 distinct windows in groups")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(n_tok, size=max_tokens, replace=False)) if n_tok > max_tokens else np.arange(n_tok)
    split = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    tr, te = next(split.split(keep, groups=groups[keep]))
    train, test = keep[tr], keep[te]
    controls = {k: control_labels(ids, y, seed) for k, y in labs.items()}
    layers = coord(acts, "layer", n_lay)
    names = list(labs)
    acc, ctl = np.full((n_lay, len(names)), np.nan), np.full((n_lay, len(names)), np.nan)
    fitted = FittedProbes(train=train, test=test, layers=layers, names=names)
    for i in range(n_lay):
        X = as_float64(acts[i], "acts layer", 2)
        for j, k in enumerate(names):
            for target, out in ((labs[k], acc), (controls[k], ctl)):
                a, b = train[target[train] >= 0], test[target[test] >= 0]
                if len(np.unique(target[a])) < 2:
                    continue
                probe = LinearProbe(C=C, seed=seed).fit(X[a], target[a])
                out[i, j] = _score(probe, X[b], target[b])
                if out is acc:
                    fitted.probes[(layers[i], k)] = probe
    dims = ("layer", "probe")
    ds = xr.Dataset({"probe_acc": (dims, acc), "probe_control_acc": (dims, ctl),
                     "probe_selectivity": (dims, acc - ctl)}, coords={"layer": layers, "probe": names},
                    attrs={"split": "GroupShuffleSplit by window", "test_size": test_size,
                           "tokens_used": int(keep.size), "n_train": int(train.size), "n_test": int(test.size),
                           "seed": seed, "C": C, "control": "Hewitt & Liang: a label per token type"})
    return (ds, fitted) if return_probes else ds


def transfer(fitted: FittedProbes, acts, labels) -> xr.Dataset:
    """``probe_transfer_acc(condition, layer, probe)``: the clean probes' accuracy on each
    condition's activations at the held-out tokens.

    ``acts`` maps condition -> (layer, token, d) (or is a DataArray with a condition dim),
    laid out like the activations the probes were fitted on (same tokens, same layers).
    """
    runs = by_condition(acts, "acts")
    labs = _labels(labels)
    out = np.full((len(runs), len(fitted.layers), len(fitted.names)), np.nan)
    for c, run in enumerate(runs.values()):
        run, (n_lay, _, _) = _acts(run, "acts")
        if n_lay != len(fitted.layers):
            raise ValueError(f"acts have {n_lay} layers, the probes were fitted on {len(fitted.layers)}")
        for i, layer in enumerate(fitted.layers):
            X = as_float64(run[i], "acts layer", 2)[fitted.test]
            for j, k in enumerate(fitted.names):
                probe = fitted.probes.get((layer, k))
                if probe is None:
                    continue
                y = labs[k][fitted.test]
                ok = y >= 0
                out[c, i, j] = _score(probe, X[ok], y[ok])
    return xr.Dataset({"probe_transfer_acc": (("condition", "layer", "probe"), out)},
                      coords={"condition": list(runs), "layer": fitted.layers, "probe": fitted.names},
                      attrs={"tokens": "held-out windows of the clean probes' split"})
