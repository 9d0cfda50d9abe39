"""The `path` score on path features (detector/features.py) and its threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .trees import TreeEnsemble, fit_family_trees


@dataclass(frozen=True)
class PathScorer:
    """The `path` score on `path_features`; higher = more likely an attack. Fitted only on calibration data.

    linear: logistic model ((x - mean) / scale) . coef + intercept, on all attacks together. Measured on a 1,000-image
      calibration split: per-filter deviations lifted PGD AUROC from 0.77 (per-layer distances only) to 0.87, so both
      are kept.
    trees (optional, the default of `dnd profiles`): gradient-boosted trees on the same features, one model per attack
      family (FGSM / PGD move paths towards the predicted class's profile, CW / DeepFool away from it: one model on the
      mix, ~90% FGSM / PGD rows, served the minimal attacks poorly). Each model's log-odds is a likelihood ratio of its
      family against clean (prior-corrected to balanced classes); the score is the log-odds of their mixture,
      logsumexp_k(log-odds_k + log_prior_k), log_prior_k the log of family k's prior weight (only differences count).
      With one model: its log-odds.
    The trees have no gradient, so `surrogate` (the linear model) is what a gradient-based adaptive attacker descends
    on, against `surrogate_threshold` (same target FPR)."""

    mean: Tensor  # (F,)
    scale: Tensor  # (F,)
    coef: Tensor  # (F,)
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
    def fit(
        cls,
        clean: Tensor,
        attacked: dict[str, Tensor],
        families: list[list[str]] | None = None,
        log_prior: list[float] | None = None,
        c: float = 0.01,
        trees: bool = True,
        tree_params: dict[str, Any] | None = None,
    ) -> PathScorer:
        """clean (N0, F) and per attack name attacked (N_a, F) path features. Always an L2-regularised logistic
        regression (scikit-learn) on all attacks with balanced class weights on standardised features (small C: F
        ~1,500 is large next to N); with trees=True also gradient-boosted trees (trees.fit_family_trees, TREE_PARAMS,
        prior-corrected to balanced classes), one model per family (lists of attack names; default one family of all;
        families with no rows are left out, and so are their log_prior entries; default log_prior: zeros).
        tree_params overrides TREE_PARAMS."""
        from sklearn.linear_model import LogisticRegression

        rows = [v for v in attacked.values() if len(v)]
        if len(clean) == 0 or not rows:
            raise ValueError(
                f"need clean and attacked calibration paths, found {len(clean)} clean and "
                f"{sum(map(len, rows))} attacked"
            )
        x = torch.cat([clean, *rows]).double()
        n_att = len(x) - len(clean)
        mean, scale = x.mean(0), x.std(0).clamp_min(1e-3)
        y = torch.cat([torch.zeros(len(clean)), torch.ones(n_att)])
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
        lr.fit(((x - mean) / scale).numpy(), y.numpy())
        ensemble = None
        if trees:
            fams = [list(attacked)] if families is None else families
            prior = [0.0] * len(fams) if log_prior is None else list(log_prior)
            if len(prior) != len(fams):
                raise ValueError(f"expected one log prior per family ({len(fams)}), found {len(prior)}")
            unknown = sorted({a for f in fams for a in f} - set(attacked))
            if unknown:
                raise ValueError(
                    f"families name attacks {unknown} that have no rows; attacked sets: {sorted(attacked)}"
                )
            fam_rows, kept_prior = [], []
            for fam, lp in zip(fams, prior):
                att = [attacked[a] for a in fam if len(attacked[a])]
                if att:
                    fam_rows.append(torch.cat(att))
                    kept_prior.append(lp)
            ensemble = fit_family_trees(clean, fam_rows, tree_params)
            log_prior_t = torch.tensor(kept_prior, dtype=torch.float64)
        else:
            log_prior_t = None
        return cls(
            mean.float(),
            scale.float(),
            torch.from_numpy(lr.coef_[0]).float(),
            float(lr.intercept_[0]),
            ensemble,
            log_prior=log_prior_t,
        )

    def tensors(self) -> dict[str, Tensor]:
        t = {
            "scorer.mean": self.mean,
            "scorer.scale": self.scale,
            "scorer.coef": self.coef,
            "scorer.intercept": torch.tensor([self.intercept]),
        }
        if self.surrogate_threshold is not None:
            t["scorer.surrogate_threshold"] = torch.tensor([self.surrogate_threshold], dtype=torch.float64)
        if self.log_prior is not None:
            t["scorer.log_prior"] = self.log_prior
        return t | (self.trees.tensors() if self.trees is not None else {})

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor]) -> PathScorer:
        known = {f"scorer.{k}" for k in ("mean", "scale", "coef", "intercept", "surrogate_threshold", "log_prior")}
        known |= {f"scorer.trees.{k}" for k in ("feature", "threshold", "left", "value", "depth", "group", "baseline")}
        unknown = sorted(k for k in t if k.startswith("scorer.") and k not in known)
        if unknown:
            raise ValueError(
                f"unexpected scorer tensors {unknown} (written by another version?); expected some of {sorted(known)}"
            )
        trees = TreeEnsemble.from_tensors(t) if "scorer.trees.baseline" in t else None
        sur = float(t["scorer.surrogate_threshold"][0]) if "scorer.surrogate_threshold" in t else None
        lp = t.get("scorer.log_prior")
        if lp is not None and (trees is None or lp.shape != trees.baseline.shape):
            raise ValueError(
                f"expected one log prior per tree model, shape {tuple(trees.baseline.shape) if trees else (0,)}, "
                f"found {tuple(lp.shape)}"
            )
        return cls(
            t["scorer.mean"], t["scorer.scale"], t["scorer.coef"], float(t["scorer.intercept"][0]), trees, sur, lp
        )


def calibrate_threshold(clean_scores: Tensor, target_fpr: float) -> float:
    """Smallest threshold t with share(clean_scores > t) <= target_fpr (inputs scoring above t are flagged)."""
    if not 0 <= target_fpr < 1:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    s = torch.sort(clean_scores.double().flatten(), descending=True).values
    if len(s) == 0:
        raise ValueError("need at least one clean calibration score")
    k = math.floor(target_fpr * len(s))  # at most k clean scores may lie above t
    return float(s[k]) if k < len(s) else float(s[-1])


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of a share k / n: where the rate a threshold set on n images flags of unseen ones may lie."""
    from scipy.stats import binomtest  # ~0.3 s to import; only calibration and the docs need it

    ci = binomtest(k, n).proportion_ci(method="wilson")
    return float(ci.low), float(ci.high)
