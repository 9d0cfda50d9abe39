"""Path divergence: how far an input's calculation path is from the reference path of its predicted class.

Per layer l and input with predicted class c: Hamming distance (share of the layer's filters whose state differs
from c's signature) and Jaccard distance (1 - |z AND sig| / |z OR sig|). The `path` score is a classifier (gradient-
boosted trees, or a logistic model) on those distances, on each filter's deviation from the class's firing
frequency, on naive-Bayes path likelihoods (how much more the path looks like c's than like any other class's) and,
when the profiles hold them, on each gate logit's deviation from its class mean (the path before thresholding), fitted on a calibration split (clean vs attacked), one tree model per attack family; the score is the log-odds of
their mixture. `path_hamming` and `path_jaccard` are plain means over layers and
need no fitting.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


@functools.cache
def _layer_sums(widths: tuple[int, ...]) -> Tensor:
    """(sum C_l, L) 0/1 block matrix: cat(z) @ it sums each layer's columns, so all layers cost one matmul. Made
    outside inference mode whatever the caller's mode: the cached tensor also serves the adaptive attack's autograd."""
    with torch.inference_mode(False):
        return torch.block_diag(*[torch.ones(w, 1) for w in widths])


def _concat(z: list[Tensor]) -> Tensor:
    """Paths L x (N, C_l), bool or float -> (N, sum C_l) float (bool: one cat, then one conversion)."""
    zc = torch.cat(z, 1)
    return zc if zc.is_floating_point() else zc.float()


def _distances(zc: Tensor, ref: Tensor, widths: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Concatenated paths zc (N, sum C_l) and reference signatures ref (N, sum C_l), float -> (hamming, jaccard), each
    (N, L). Binary inputs: the sums are exact integer counts (<= 64, exact in float32), so every figure is exact."""
    s = _layer_sums(widths).to(zc)
    inter = (zc * ref) @ s                    # |z AND ref| (soft: sum v ref)
    union = (zc + ref) @ s - inter            # |z OR ref|
    ham = (union - inter) / zc.new_tensor(widths)  # |z XOR ref| / C_l  (soft: sum |v - ref| for binary ref)
    jac = torch.where(union > 0, 1 - inter / union.clamp_min(1e-6), torch.zeros_like(union))
    return ham, jac


def path_distances(z: list[Tensor], labels: Tensor, signatures: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-layer distances of paths z (L x (N, C_l)) to the signatures (L x (K, C_l), bool) of `labels` (N,).

    Returns (hamming, jaccard), each (N, L): Hamming = share of the layer's filters whose state differs;
    Jaccard = 1 - |z AND s| / |z OR s| (0 when both are empty). z bool gives exact figures; z soft (float in [0, 1],
    the adaptive attack's SemHash v1 or straight-through z) gives their differentiable extension, equal on binary z."""
    zc = _concat(z)
    ref = torch.cat(signatures, 1)[labels].to(zc.dtype)
    return _distances(zc, ref, tuple(zl.shape[1] for zl in z))


@dataclass(frozen=True)
class PathLikelihood:
    """Naive-Bayes log-likelihood of a path under each class: layer l's filters fire independently, filter j of class
    k with the profile's frequency p (clamped to [eps, 1 - eps]): ll[l, k] = sum_j z_j log p_kj + (1 - z_j) log(1 - p_kj).
    Held as one block-diagonal matrix, so all L x K likelihoods are one matmul: ll = cat(z) @ weight + bias.
    Linear in z, so soft paths give a differentiable value."""

    weight: Tensor  # (sum C_l, L*K): rows of layer l hold log p - log(1 - p) in column block l
    bias: Tensor    # (L*K,): sum over layer l's filters of log(1 - p)
    layers: int
    classes: int

    @classmethod
    def from_freq(cls, freq: list[Tensor], eps: float = 1e-3) -> "PathLikelihood":
        k, widths = freq[0].shape[0], [f.shape[1] for f in freq]
        weight = freq[0].new_zeros(sum(widths), len(freq) * k)
        bias, row = [], 0
        for l, f in enumerate(freq):
            lp, lq = f.clamp(eps, 1 - eps).log(), (1 - f).clamp(eps, 1 - eps).log()  # (K, C_l)
            weight[row:row + f.shape[1], l * k:(l + 1) * k] = (lp - lq).T
            bias.append(lq.sum(1))
            row += f.shape[1]
        return cls(weight, torch.cat(bias), len(freq), k)

    def __call__(self, z: list[Tensor] | Tensor) -> Tensor:
        """Paths L x (N, C_l) (bool or [0, 1]), or already concatenated (N, sum C_l) float -> (N, L, K) log-likelihoods."""
        zc = z if isinstance(z, Tensor) else torch.cat([zl.float() for zl in z], 1)
        return (zc @ self.weight.to(zc) + self.bias.to(zc)).view(len(zc), self.layers, self.classes)


def likelihood_features(ll: Tensor, labels: Tensor) -> Tensor:
    """(N, L, K) log-likelihoods, (N,) labels c -> (N, 2L + 1): per layer the path's log-likelihood under c, per layer
    its margin over the best other class, and the margin of the summed (whole-path) log-likelihoods. Measured on the
    calibration half: the whole-path margin alone separates CW / DeepFool from clean images with AUROC 0.87 / 0.92 (the
    image crossed the decision boundary, the path still looks like where it came from)."""
    n, l, k = ll.shape
    idx = labels.view(n, 1, 1).expand(n, l, 1)
    own = ll.gather(2, idx).squeeze(2)                                               # (N, L)
    margin = own - ll.scatter(2, idx, float("-inf")).amax(2)                        # (N, L)
    tot = ll.sum(1)                                                                   # (N, K)
    total = tot.gather(1, labels.view(n, 1)) - tot.scatter(1, labels.view(n, 1), float("-inf")).amax(1, keepdim=True)
    return torch.cat([own, margin, total], 1)


def feature_count(widths: list[int], gate_logits: bool = False) -> int:
    """Columns of `path_features` for layers of widths C_l: 2L distances, sum C_l deviations, 2L + 1 likelihoods,
    and with gate_logits another sum C_l (each gate logit's deviation from its class mean)."""
    return 4 * len(widths) + 1 + sum(widths) * (2 if gate_logits else 1)


def without_likelihoods(features: Tensor, widths: list[int]) -> Tensor:
    """`path_features` rows minus the likelihood columns: the feature set before session 10 (708 columns for
    ResNet-20), for the study scripts' `--without-likelihoods` (regenerating figures measured on it)."""
    if features.shape[1] != feature_count(widths):
        raise ValueError(f"expected {feature_count(widths)} path feature columns, found {features.shape[1]}")
    return features[:, :feature_count(widths) - (2 * len(widths) + 1)]


def path_features(z: list[Tensor], labels: Tensor, freq: list[Tensor], signatures: list[Tensor] | None = None,
                  likelihood: PathLikelihood | None = None, s: list[Tensor] | None = None,
                  gate_mean: list[Tensor] | None = None) -> Tensor:
    """The `path` score's inputs, (N, feature_count): per-layer Hamming and Jaccard distances to the signature of
    `labels` (columns :L and L:2L, the same numbers as `path_distances`), then every filter's deviation
    z - freq[label] from the class's firing frequency (sum C_l columns), then `likelihood_features` (2L + 1). Only
    path information. z may be soft (L x (N, C_l) in [0, 1]); the result is then differentiable in z. `signatures`
    (freq >= 0.5) and `likelihood` (PathLikelihood.from_freq(freq)) may be passed to skip recomputing them.
    With the gate logits s (L x (N, C_l), z = 1(s > 0)) and the profiles' class means of s, `gate_mean` (L x (K, C_l)),
    sum C_l more columns: s - gate_mean[label], how far each gate's decision sits from where it sits for clean images of
    the class (z keeps only its sign). Measured on the calibration half (scripts/scorer_logit_study.py): +0.04 / +0.03
    / +0.015 / +0.014 AUROC on FGSM / PGD / CW / DeepFool.
    All layers at once on the concatenated path (~35 ops whatever L: per layer, one image cost 0.8 ms in ~200 ops)."""
    sig = [f >= 0.5 for f in freq] if signatures is None else signatures
    nb = PathLikelihood.from_freq(freq) if likelihood is None else likelihood
    zc = _concat(z)  # (N, sum C_l)
    labels = labels.to(zc.device)
    ham, jac = _distances(zc, torch.cat(sig, 1)[labels].to(zc.dtype), tuple(zl.shape[1] for zl in z))
    dev = zc - torch.cat(freq, 1).to(zc)[labels]
    cols = [ham, jac, dev, likelihood_features(nb(zc), labels)]
    if (s is None) != (gate_mean is None):
        raise ValueError("gate-logit features need both the gate logits s and the profiles' gate_mean; "
                         f"found s {'missing' if s is None else 'given'} and gate_mean {'missing' if gate_mean is None else 'given'}")
    if s is not None and gate_mean is not None:  # (both, after the check above; narrows the types)
        sc = torch.cat(s, 1).to(zc)  # (N, sum C_l)
        cols.append(sc - torch.cat(gate_mean, 1).to(zc)[labels])
    return torch.cat(cols, 1)


@functools.cache
def _walk_kernel() -> Any:
    """The tree walk, compiled by numba for one signature on the first call (~1 s with the import, once per process;
    `load_detector` makes that call, importing this module does not). Why not torch ops: a level-by-level walk in
    torch is ~180 small ops per batch, 6.6-7 ms for 256 images on 2 threads here, and a slow mode of those ops
    (18-23 ms, in some processes and stretches, not of the forward pass) made the <= 10% scoring target a coin toss
    (README, Benchmarks). This loop is one pass per (image, tree) on one thread: 4.8-5.0 ms for the same batch in
    every run, 0.08 ms for one image (torch: 0.7-0.85 ms). nogil: the service's event loop runs on meanwhile."""
    import numba

    @numba.njit("void(float32[:, ::1], int32[:, ::1], float32[:, ::1], int32[:, ::1], float64[:, ::1], int64[::1], "
                "float64[:, ::1])", nogil=True, cache=False)
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

    feature: Tensor    # (T, M) int64
    threshold: Tensor  # (T, M) float32: sklearn's float64 split value rounded down, exact for float32 inputs
    left: Tensor       # (T, M) int64
    value: Tensor      # (T, M) float64 (leaves; 0 elsewhere)
    depth: Tensor      # (T,) int64, non-increasing
    group: Tensor      # (T,) int64: which of the K models the tree belongs to
    baseline: Tensor   # (K,) float64

    @classmethod
    def from_sklearn(cls, clfs: list[Any]) -> "TreeEnsemble":
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
                    feature[i, j], threshold[i, j], left[i, j] = int(n["feature_idx"][old]), float(t32), new[int(n["left"][old])]
        depth = torch.tensor([int(n["depth"].max()) for _, n in trees])
        group = torch.tensor([k for k, _ in trees], dtype=torch.int64)
        baseline = torch.tensor([float(c._baseline_prediction.ravel()[0]) for c in clfs], dtype=torch.float64)
        return cls(feature, threshold, left, value, depth, group, baseline)

    @functools.cached_property
    def _arrays(self) -> tuple[np.ndarray, ...]:
        """The walk's inputs as contiguous numpy arrays of the kernel's dtypes (int32 indices: M, F < 2^31)."""
        c = lambda t, dt: np.ascontiguousarray(t.detach().cpu().numpy(), dtype=dt)  # noqa: E731
        return (c(self.feature, np.int32), c(self.threshold, np.float32), c(self.left, np.int32),
                c(self.value, np.float64), c(self.group, np.int64))

    @functools.cached_property
    def _max_feature(self) -> int:
        return int(self._arrays[0].max(initial=0))

    @functools.cached_property
    def _baseline(self) -> np.ndarray:
        return self.baseline.detach().cpu().numpy().astype(np.float64)

    def compile(self) -> "TreeEnsemble":
        """Compile the walk now (numba import + compilation, ~1 s once per process) instead of at the first score."""
        _walk_kernel()
        return self

    def raw(self, features: Tensor) -> Tensor:
        """(N, F) -> (N, K) float64 log-odds, on the features' device (walked on the CPU: the features are ~4 KB per
        image). Piecewise constant: no useful gradient (see PathScorer.surrogate)."""
        x = np.ascontiguousarray(features.detach().float().cpu().numpy())
        top = self._max_feature  # the kernel does not bounds-check: too few columns are refused
        if x.ndim != 2 or x.shape[1] <= top:
            raise ValueError(f"expected (N, F) path features with F > {top} (the trees' largest feature index), "
                             f"found shape {tuple(x.shape)}")
        out = np.tile(self._baseline, (len(x), 1))  # (N, K)
        _walk_kernel()(x, *self._arrays, out)
        return torch.from_numpy(out).to(features.device)

    def tensors(self) -> dict[str, Tensor]:
        return {f"scorer.trees.{k}": getattr(self, k) for k in ("feature", "threshold", "left", "value", "depth", "group",
                                                                "baseline")}

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor]) -> "TreeEnsemble":
        feature = t["scorer.trees.feature"]
        # files from before the per-family scorer (session 12) hold one model and no group
        group = t.get("scorer.trees.group", torch.zeros(len(feature), dtype=torch.int64))
        return cls(*(t[f"scorer.trees.{k}"] for k in ("feature", "threshold", "left", "value", "depth")), group=group,
                   baseline=t["scorer.trees.baseline"].double())


# Boosting settings, one model per attack family. 600 trees at rate 0.05 were chosen for the single model on a
# validation split inside the calibration half (FGSM / PGD AUROC 0.908 / 0.957 there, vs 0.869 / 0.923 for the logistic
# model and at best 0.894 / 0.946 for 12 MLPs; scripts/scorer_study.py). Two family models at 300 trees / rate 0.1
# score as well as two at 600 / 0.05 (threshold part, logsumexp(A, B - 1): 0.904 / 0.954 / 0.837 / 0.899 vs 0.904 /
# 0.953 / 0.835 / 0.899 FGSM / PGD / CW / DeepFool; scripts/scorer_family_study.py) and keep scoring as cheap as the
# one 600-tree model was.
TREE_PARAMS: dict[str, Any] = {"learning_rate": 0.1, "max_iter": 300, "max_leaf_nodes": 31, "early_stopping": False,
                               "random_state": 0}


@dataclass(frozen=True)
class PathScorer:
    """The `path` score on `path_features`; higher = more likely an attack. Fitted only on calibration data.

    linear: logistic model ((x - mean) / scale) . coef + intercept, on all attacks together. Measured on a 1,000-image
      calibration split: per-filter deviations lifted PGD AUROC from 0.77 (per-layer distances only) to 0.87, so both
      are kept.
    trees (optional, the default of `dnd profiles`): gradient-boosted trees on the same features, one model per attack
      family (FGSM / PGD move paths towards the predicted class's profile, CW / DeepFool away from it: one model on the
      mix, ~90% FGSM / PGD rows, served the minimal attacks poorly). Each model's log-odds is a likelihood ratio of its
      family against clean (balanced weights); the score is the log-odds of their mixture,
      logsumexp_k(log-odds_k + log_prior_k), log_prior_k the log of family k's prior weight (only differences count).
      One model (files from before session 12): its log-odds.
    The trees have no gradient, so `surrogate` (the linear model) is what a gradient-based adaptive attacker descends
    on, against `surrogate_threshold` (same target FPR)."""

    mean: Tensor   # (F,)
    scale: Tensor  # (F,)
    coef: Tensor   # (F,)
    intercept: float
    trees: TreeEnsemble | None = None
    surrogate_threshold: float | None = None
    log_prior: Tensor | None = None  # (K,) float64 per tree model; None = zeros

    def surrogate(self, features: Tensor) -> Tensor:
        """(N, F) -> (N,) logistic log-odds. Pure torch ops, so it is differentiable."""
        return ((features - self.mean.to(features)) / self.scale.to(features)) @ self.coef.to(features) + self.intercept

    def family_scores(self, features: Tensor) -> Tensor:
        """(N, F) -> (N, K) each tree model's log-odds (float64)."""
        if self.trees is None:
            raise ValueError("this scorer has no trees (fitted with trees=False): use score() or surrogate()")
        return self.trees.raw(features)

    def score(self, features: Tensor) -> Tensor:
        """(N, F) -> (N,) float32: the mixture log-odds of the family tree models (see the class docstring); the
        logistic log-odds without trees."""
        if self.trees is None:
            return self.surrogate(features)
        raw = self.trees.raw(features)  # (N, K)
        if self.log_prior is not None:
            raw = raw + self.log_prior.to(raw)
        return torch.logsumexp(raw, 1).float()

    @classmethod
    def fit(cls, clean: Tensor, attacked: dict[str, Tensor], families: list[list[str]] | None = None,
            log_prior: list[float] | None = None, c: float = 0.01, trees: bool = True,
            tree_params: dict[str, Any] | None = None) -> "PathScorer":
        """clean (N0, F) and per attack name attacked (N_a, F) path features. Always an L2-regularised logistic
        regression (scikit-learn) on all attacks with balanced class weights on standardised features (small C: F ~700
        is large next to N); with trees=True also gradient-boosted trees (TREE_PARAMS, balanced sample weights), one
        model per family (lists of attack names; default one family of all; families with no rows are left out, and
        so are their log_prior entries; default log_prior: zeros).
        tree_params overrides TREE_PARAMS (the study scripts refit the single model shipped until session 11)."""
        from sklearn.linear_model import LogisticRegression

        rows = [v for v in attacked.values() if len(v)]
        if len(clean) == 0 or not rows:
            raise ValueError(f"need clean and attacked calibration paths, found {len(clean)} clean and "
                             f"{sum(map(len, rows))} attacked")
        x = torch.cat([clean, *rows]).double()
        n_att = len(x) - len(clean)
        mean, scale = x.mean(0), x.std(0).clamp_min(1e-3)
        y = torch.cat([torch.zeros(len(clean)), torch.ones(n_att)])
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
        lr.fit(((x - mean) / scale).numpy(), y.numpy())
        ensemble = None
        if trees:
            from sklearn.ensemble import HistGradientBoostingClassifier

            fams = [list(attacked)] if families is None else families
            prior = [0.0] * len(fams) if log_prior is None else list(log_prior)
            if len(prior) != len(fams):
                raise ValueError(f"expected one log prior per family ({len(fams)}), found {len(prior)}")
            unknown = sorted({a for f in fams for a in f} - set(attacked))
            if unknown:
                raise ValueError(f"families name attacks {unknown} that have no rows; attacked sets: {sorted(attacked)}")
            models, kept_prior = [], []
            for fam, lp in zip(fams, prior):
                att = [attacked[a] for a in fam if len(attacked[a])]
                if not att:
                    continue
                xf = torch.cat([clean, *att]).double()
                n1 = len(xf) - len(clean)
                yf = torch.cat([torch.zeros(len(clean)), torch.ones(n1)])
                w = torch.where(yf == 1, len(yf) / (2 * n1), len(yf) / (2 * len(clean)))
                clf = HistGradientBoostingClassifier(**(tree_params or TREE_PARAMS))
                models.append(clf.fit(xf.numpy(), yf.numpy(), sample_weight=w.numpy()))
                kept_prior.append(lp)
            ensemble, log_prior_t = TreeEnsemble.from_sklearn(models), torch.tensor(kept_prior, dtype=torch.float64)
        else:
            log_prior_t = None
        return cls(mean.float(), scale.float(), torch.from_numpy(lr.coef_[0]).float(), float(lr.intercept_[0]), ensemble,
                   log_prior=log_prior_t)

    def tensors(self) -> dict[str, Tensor]:
        t = {"scorer.mean": self.mean, "scorer.scale": self.scale, "scorer.coef": self.coef,
             "scorer.intercept": torch.tensor([self.intercept])}
        if self.surrogate_threshold is not None:
            t["scorer.surrogate_threshold"] = torch.tensor([self.surrogate_threshold], dtype=torch.float64)
        if self.log_prior is not None:
            t["scorer.log_prior"] = self.log_prior
        return t | (self.trees.tensors() if self.trees is not None else {})

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor]) -> "PathScorer":
        known = {f"scorer.{k}" for k in ("mean", "scale", "coef", "intercept", "surrogate_threshold", "log_prior")}
        known |= {f"scorer.trees.{k}" for k in ("feature", "threshold", "left", "value", "depth", "group", "baseline")}
        unknown = sorted(k for k in t if k.startswith("scorer.") and k not in known)
        if unknown:
            raise ValueError(f"unexpected scorer tensors {unknown} (written by another version?); expected some of {sorted(known)}")
        trees = TreeEnsemble.from_tensors(t) if "scorer.trees.baseline" in t else None
        sur = float(t["scorer.surrogate_threshold"][0]) if "scorer.surrogate_threshold" in t else None
        lp = t.get("scorer.log_prior")
        if lp is not None and (trees is None or lp.shape != trees.baseline.shape):
            raise ValueError(f"expected one log prior per tree model, shape {tuple(trees.baseline.shape) if trees else (0,)}, "
                             f"found {tuple(lp.shape)}")
        return cls(t["scorer.mean"], t["scorer.scale"], t["scorer.coef"], float(t["scorer.intercept"][0]), trees, sur, lp)


def calibrate_threshold(clean_scores: Tensor, target_fpr: float) -> float:
    """Smallest threshold t with share(clean_scores > t) <= target_fpr (inputs scoring above t are flagged)."""
    if not 0 <= target_fpr < 1:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    s = torch.sort(clean_scores.double().flatten(), descending=True).values
    if len(s) == 0:
        raise ValueError("need at least one clean calibration score")
    k = math.floor(target_fpr * len(s))  # at most k clean scores may lie above t
    return float(s[k]) if k < len(s) else float(s[-1])
