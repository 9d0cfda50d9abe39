"""The `path` scorer's gradient-boosted trees, exported from scikit-learn to plain tensors and walked by one small
compiled loop: no pickle and no scikit-learn at serving time."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


@functools.cache
def _walk_kernel() -> Any:
    """The tree walk, compiled by numba for one signature on the first call (~1 s with the import, once per process;
    `load_detector` makes that call, importing this module does not). Why not torch ops: a level-by-level walk in
    torch is ~180 small ops per batch, 6.6-7 ms for 256 images on 2 threads here, and a slow mode of those ops
    (18-23 ms, in some processes and stretches, not of the forward pass) made the <= 10% scoring target a coin toss
    (README, Benchmarks). This loop is one pass per (image, tree) on one thread: 4.8-5.0 ms for the same batch in
    every run, 0.08 ms for one image (torch: 0.7-0.85 ms). nogil: the service's event loop runs on meanwhile."""
    import numba

    @numba.njit(
        "void(float32[:, ::1], int32[:, ::1], float32[:, ::1], int32[:, ::1], float64[:, ::1], int64[::1], "
        "float64[:, ::1])",
        nogil=True,
        cache=False,
    )
    def walk(x, feature, threshold, left, value, group, out):  # pragma: no cover - compiled
        # x (N, F); tree arrays (T, M); out (N, K) holds the baselines and receives each reached leaf's value
        for i in range(x.shape[0]):
            for k in range(feature.shape[0]):
                j = 0
                while left[k, j] != j:  # leaves point to themselves
                    j = left[k, j] + (x[i, feature[k, j]] > threshold[k, j])
                out[i, group[k]] += value[k, j]

    return walk


@dataclass(frozen=True)
class TreeEnsemble:
    """K gradient-boosted tree models (scikit-learn HistGradientBoostingClassifier, one per attack family) exported to
    plain tensors, walked by one small compiled loop (`_walk_kernel`): no pickle, no scikit-learn at serving time.
    raw(x)[:, k] = baseline[k] + sum over model k's trees of the reached leaf's value, scikit-learn's decision_function
    (log-odds) for float32 features. All K models in one pass: scoring costs what one model with all their trees would.

    Layout (T trees padded to M nodes, sorted by depth, deepest first): node j's children are left[j] and left[j] + 1
    (renumbered so), and it goes right iff x[feature[j]] > threshold[j]. A leaf points to itself (threshold +inf)."""

    feature: Tensor  # (T, M) int64
    threshold: Tensor  # (T, M) float32: sklearn's float64 split value rounded down, exact for float32 inputs
    left: Tensor  # (T, M) int64
    value: Tensor  # (T, M) float64 (leaves; 0 elsewhere)
    depth: Tensor  # (T,) int64, non-increasing
    group: Tensor  # (T,) int64: which of the K models the tree belongs to
    baseline: Tensor  # (K,) float64

    @classmethod
    def from_sklearn(cls, clfs: list[Any]) -> TreeEnsemble:
        trees = [(k, p[0].nodes) for k, clf in enumerate(clfs) for p in clf._predictors]  # binary: one per iteration
        trees.sort(key=lambda kn: -int(kn[1]["depth"].max()))
        t, m = len(trees), max(len(n) for _, n in trees)
        feature, left = torch.zeros(t, m, dtype=torch.int64), torch.zeros(t, m, dtype=torch.int64)
        threshold, value = torch.full((t, m), float("inf")), torch.zeros(t, m, dtype=torch.float64)
        for i, (_, n) in enumerate(trees):
            order, new = [0], {0: 0}  # breadth-first renumbering that puts each node's children side by side
            for old in order:
                if not n["is_leaf"][old]:
                    for child in (int(n["left"][old]), int(n["right"][old])):
                        new[child] = len(order)
                        order.append(child)
            for old in order:
                j = new[old]
                if n["is_leaf"][old]:
                    left[i, j], value[i, j] = j, float(n["value"][old])
                else:
                    t64 = n["num_threshold"][old]
                    t32 = np.float32(t64)
                    if t32 > t64:  # round down: for float32 x, x <= t64 iff x <= t32
                        t32 = np.nextafter(t32, np.float32(-np.inf))
                    feature[i, j], threshold[i, j], left[i, j] = (
                        int(n["feature_idx"][old]),
                        float(t32),
                        new[int(n["left"][old])],
                    )
        depth = torch.tensor([int(n["depth"].max()) for _, n in trees])
        group = torch.tensor([k for k, _ in trees], dtype=torch.int64)
        baseline = torch.tensor([float(c._baseline_prediction.ravel()[0]) for c in clfs], dtype=torch.float64)
        return cls(feature, threshold, left, value, depth, group, baseline)

    @functools.cached_property
    def _arrays(self) -> tuple[np.ndarray, ...]:
        """The walk's inputs as contiguous numpy arrays of the kernel's dtypes (int32 indices: M, F < 2^31)."""
        c = lambda t, dt: np.ascontiguousarray(t.detach().cpu().numpy(), dtype=dt)  # noqa: E731
        return (
            c(self.feature, np.int32),
            c(self.threshold, np.float32),
            c(self.left, np.int32),
            c(self.value, np.float64),
            c(self.group, np.int64),
        )

    @functools.cached_property
    def _max_feature(self) -> int:
        return int(self._arrays[0].max(initial=0))

    @functools.cached_property
    def _baseline(self) -> np.ndarray:
        return self.baseline.detach().cpu().numpy().astype(np.float64)

    def compile(self) -> TreeEnsemble:
        """Compile the walk now (numba import + compilation, ~1 s once per process) instead of at the first score."""
        _walk_kernel()
        return self

    def raw(self, features: Tensor) -> Tensor:
        """(N, F) -> (N, K) float64 log-odds, on the features' device (walked on the CPU: the features are ~4 KB per
        image). Piecewise constant: no useful gradient (see PathScorer.surrogate)."""
        x = np.ascontiguousarray(features.detach().float().cpu().numpy())
        top = self._max_feature  # the kernel does not bounds-check: too few columns are refused
        if x.ndim != 2 or x.shape[1] <= top:
            raise ValueError(
                f"expected (N, F) path features with F > {top} (the trees' largest feature index), "
                f"found shape {tuple(x.shape)}"
            )
        out = np.tile(self._baseline, (len(x), 1))  # (N, K)
        _walk_kernel()(x, *self._arrays, out)
        return torch.from_numpy(out).to(features.device)

    def tensors(self) -> dict[str, Tensor]:
        return {
            f"scorer.trees.{k}": getattr(self, k)
            for k in ("feature", "threshold", "left", "value", "depth", "group", "baseline")
        }

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor]) -> TreeEnsemble:
        feature = t["scorer.trees.feature"]
        # a scorer of one tree model may be stored without its group
        group = t.get("scorer.trees.group", torch.zeros(len(feature), dtype=torch.int64))
        return cls(
            *(t[f"scorer.trees.{k}"] for k in ("feature", "threshold", "left", "value", "depth")),
            group=group,
            baseline=t["scorer.trees.baseline"].double(),
        )


def fit_family_trees(clean: Tensor, families: list[Tensor], params: dict[str, Any] | None = None) -> TreeEnsemble:
    """One HistGradientBoostingClassifier per family, clean (N0, F) rows against that family's (N_k, F) rows, exported.

    Fitted without sample weights, then prior-corrected: each model's baseline loses log(N_k / N0), so its log-odds
    estimates the likelihood ratio of family against clean, as a fit with balanced class weights would. Why not the
    weights: scikit-learn 1.9 bins weighted features with a weighted percentile per feature, and the histograms carry
    non-constant hessians: on 3,100 rows x 1,497 features, 166 s per model against 30 s unweighted (2 threads here),
    which made every refit of the evaluation a quarter of an hour."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    if not families or any(len(f) == 0 for f in families) or len(clean) == 0:
        raise ValueError(
            f"need clean rows and rows for every family, found {len(clean)} clean and {[len(f) for f in families]}"
        )
    models = []
    for rows in families:
        x = torch.cat([clean, rows]).double().numpy()
        y = np.r_[np.zeros(len(clean)), np.ones(len(rows))]
        models.append(HistGradientBoostingClassifier(**(params or TREE_PARAMS)).fit(x, y))
    ens = TreeEnsemble.from_sklearn(models)
    shift = torch.tensor([math.log(len(f) / len(clean)) for f in families], dtype=torch.float64)
    return dataclasses.replace(ens, baseline=ens.baseline - shift)


# Boosting settings, one model per attack family, chosen on a validation split inside the calibration half: trees
# beat the logistic model and small MLPs on the same features, and 300 trees at rate 0.1 per family score as well as
# 600 at 0.05 at half the serving cost. `dnd profiles --tree-iterations` overrides max_iter.
TREE_PARAMS: dict[str, Any] = {
    "learning_rate": 0.1,
    "max_iter": 300,
    "max_leaf_nodes": 31,
    "early_stopping": False,
    "random_state": 0,
}
