"""The detectors an evaluation compares, fitted and scored on the same images.

`View` holds what every detector reads of one set of images (one forward pass of the detector, pooled activations,
LID estimates). `Suite` fits them:
- unsupervised, never shown an attack: per-layer Hamming / Jaccard path divergence (raw mean, and standardised per
  layer on clean images), max-softmax, energy, penultimate Mahalanobis;
- supervised, on exactly the same attacked images (the calibration half's fit part): the `path` recipe refitted
  (`path_refit`), the Mahalanobis feature ensemble and LID; each also refitted without one attack at a time
  (leave-one-out, variant "without:NAME");
- `path` is the served scorer as the bundle's profiles hold it (fitted on the larger calibration recipe);
- the ablation: the `path_refit` recipe on the same images but reading fewer or more families, `path_only` (path
  features alone), `path_consistency` (and path consistency), `path_residual` (and the input's median-filter
  residual) and `path_all` (and output confidence: all four families, whichever the served score reads).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from ..api import Detector, Prediction
from ..baselines import (
    LID,
    LogisticCombiner,
    Mahalanobis,
    MahalanobisEnsemble,
    energy_score,
    msp_score,
    pooled_activations,
)
from ..consistency import CONFIDENCE_COLUMNS, RESIDUAL_COLUMNS, FeatureSpec, confidence_features, residual_features
from ..features import feature_count
from ..scorer import PathScorer
from ..trees import TREE_PARAMS

UNSUPERVISED = ("path_hamming", "path_hamming_std", "path_jaccard_std", "msp", "energy", "mahalanobis")
# the path_refit recipe reading fewer or more families than the served score (fitted on ALL only)
ABLATION = ("path_only", "path_consistency", "path_residual", "path_all")
SUPERVISED = ("path", "path_refit", *ABLATION, "maha_mix", "lid")
DETECTORS = SUPERVISED + UNSUPERVISED
REFITTED = ("path_refit", "maha_mix", "lid")  # the ones a leave-one-out variant refits
ALL = "all"


@dataclass
class View:
    pred: Prediction
    pooled: list[Tensor]  # L x (N, C_l): pooled activations of the stem and each block
    lid: Tensor  # (N, L') LID estimates
    residual: Tensor  # (N, 6) the images' median-filter residual columns (consistency.residual_features)

    def __len__(self) -> int:
        return len(self.pred.labels)


def cat_views(views: list[View]) -> View:
    return View(
        Prediction.concat([v.pred for v in views]),
        [torch.cat(p) for p in zip(*(v.pooled for v in views))],
        torch.cat([v.lid for v in views]),
        torch.cat([v.residual for v in views]),
    )


@dataclass
class Suite:
    det: Detector
    maha: Mahalanobis
    ensemble: MahalanobisEnsemble
    lid: LID
    layer_stats: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # clean per-layer mean, std
    path_refit: dict[str, PathScorer] = field(default_factory=dict)  # variant -> scorer
    ablation: dict[str, tuple[list[int], PathScorer]] = field(default_factory=dict)  # name -> (columns, scorer)
    ensemble_comb: dict[str, LogisticCombiner] = field(default_factory=dict)
    lid_comb: dict[str, LogisticCombiner] = field(default_factory=dict)

    @classmethod
    def unsupervised(cls, det: Detector, train_x: Tensor, train_y: Tensor, lid_reference: Tensor) -> Suite:
        """Gaussians on the correctly classified training images; LID's clean reference batch."""
        logits, pooled = pooled_activations(det.model, train_x)
        ok = logits.argmax(1) == train_y
        feats = det.predict(train_x[ok]).features
        return cls(
            det,
            Mahalanobis.fit(feats, train_y[ok]),
            MahalanobisEnsemble.fit([p[ok] for p in pooled], train_y[ok]),
            LID.fit_reference(det.model, lid_reference),
        )

    def view(self, x: Tensor) -> View:
        if len(x) == 0:  # an attack that never succeeded: an empty view of the right shapes, from one blank image
            v = self.view(torch.zeros(1, *x.shape[1:], dtype=x.dtype))
            return View(v.pred[:0], [p[:0] for p in v.pooled], v.lid[:0], v.residual[:0])
        return View(
            self.det.predict(x),
            pooled_activations(self.det.model, x)[1],
            torch.from_numpy(self.lid.estimates(self.det.model, x)).float(),
            residual_features(x),
        )

    def path_features(self, v: View) -> Tensor:
        """What the served scorer reads of these images (path features and the profiles' other families)."""
        return v.pred.inputs

    def all_features(self, v: View) -> Tensor:
        """Every family's columns in the layout of `self.wider()`: the served path and consistency columns, then the
        output-confidence and residual columns (computed from the image's own logits, features and pixels where the
        served score leaves them out): the `path_all` ablation's."""
        spec, inputs = self.det.profiles.spec, v.pred.inputs
        tail = (CONFIDENCE_COLUMNS if spec.confidence else 0) + (RESIDUAL_COLUMNS if spec.residual else 0)
        n = inputs.shape[1] - tail  # the path and consistency columns
        conf = (
            inputs[:, n : n + CONFIDENCE_COLUMNS]
            if spec.confidence
            else confidence_features(v.pred.logits, v.pred.features)
        )
        return torch.cat([inputs[:, :n], conf, v.residual.to(inputs)], 1)

    def wider(self) -> FeatureSpec:
        """The layout of all_features(): the served transforms, confidence and residual."""
        return FeatureSpec(self.det.profiles.spec.transforms, True, True)

    def fit_supervised(self, clean: View, attacked: dict[str, View]) -> None:
        """The supervised detectors on clean vs all attacks, and once more without each attack in turn."""
        self.layer_stats = {
            k: (t.mean(0), t.std(0).clamp_min(1e-6))
            for k, t in (("hamming", clean.pred.per_layer), ("jaccard", clean.pred.per_layer_jaccard))
        }
        cal = self.det.profiles.meta.get("calibration", {})
        families = cal.get("families") or [list(attacked)]
        prior = cal.get("family_log_prior") or [0.0] * len(families)
        # the served recipe's tree settings (profiles fitted before the setting was recorded used the default)
        tree_params = {**TREE_PARAMS, "max_iter": cal.get("tree_iterations", TREE_PARAMS["max_iter"])}
        clean_f, clean_all = self.path_features(clean), self.all_features(clean)
        rows = {a: self.path_features(v) for a, v in attacked.items()}
        rows_all = {a: self.all_features(v) for a, v in attacked.items()}
        for variant in tqdm([ALL, *(f"without:{a}" for a in attacked)], desc="supervised refits", unit="fit"):
            kept = [a for a in attacked if variant != f"without:{a}"]
            fams = [[a for a in f if a in kept] for f in families]
            fams += [[a] for a in kept if not any(a in f for f in fams)]  # an attack outside the recipe's families
            pri = list(prior) + [0.0] * (len(fams) - len(prior))
            self.path_refit[variant] = PathScorer.fit(
                clean_f, {a: rows[a] for a in kept}, fams, pri, tree_params=tree_params
            )
            att = cat_views([attacked[a] for a in kept])
            self.ensemble_comb[variant] = LogisticCombiner(
                self.ensemble.distances(clean.pooled), self.ensemble.distances(att.pooled)
            )
            self.lid_comb[variant] = LogisticCombiner(clean.lid.numpy(), att.lid.numpy())
        fams = [[a for a in f if a in attacked] for f in families]
        fams += [[a] for a in attacked if not any(a in f for f in fams)]
        pri = list(prior) + [0.0] * (len(fams) - len(prior))
        served = self.columns(self.det.profiles.spec)
        for name, cols in tqdm(self.ablation_columns().items(), desc="ablation refits", unit="fit"):
            sc = self.path_refit[ALL]
            if cols != served:  # other families than the served score reads: refit on those columns
                sc = PathScorer.fit(
                    clean_all[:, cols], {a: r[:, cols] for a, r in rows_all.items()}, fams, pri, tree_params=tree_params
                )
            self.ablation[name] = (cols, sc)

    def columns(self, spec: FeatureSpec) -> list[int]:
        """The columns of all_features() that a score reading `spec`'s families reads."""
        p = self.det.profiles
        n_path = feature_count([f.shape[1] for f in p.freq], p.gate_mean is not None)
        return spec.columns_in(self.wider(), n_path, len(p.freq))

    def ablation_columns(self) -> dict[str, list[int]]:
        """The columns of all_features() each ablation detector reads: the path features alone, with the consistency
        block, with the residual too, and with confidence as well."""
        t = self.det.profiles.spec.transforms
        reads = {
            "path_only": FeatureSpec(),
            "path_consistency": FeatureSpec(t),
            "path_residual": FeatureSpec(t, residual=True),
            "path_all": FeatureSpec(t, True, True),
        }
        return {name: self.columns(spec) for name, spec in reads.items()}

    def scores(self, v: View, variant: str = ALL) -> dict[str, Tensor]:
        """Every detector's score (higher = more suspicious) for the images of `v`."""
        if len(v) == 0:  # no images (an attack that never succeeded): no scores, and no baseline asked for none
            return {d: torch.zeros(0) for d in DETECTORS}
        p = v.pred
        std = {
            k: ((getattr(p, a) - m) / s).mean(1)
            for (k, (m, s)), a in zip(self.layer_stats.items(), ("per_layer", "per_layer_jaccard"))
        }
        out = {
            "path": p.scores,
            "path_hamming": p.per_layer.mean(1),
            "path_hamming_std": std["hamming"],
            "path_jaccard_std": std["jaccard"],
            "msp": msp_score(p.logits),
            "energy": energy_score(p.logits),
            "mahalanobis": self.maha.score(p.features),
        }
        if self.path_refit:
            out["path_refit"] = self.path_refit[variant].score(self.path_features(v))
            full = self.all_features(v)
            for name, (cols, sc) in self.ablation.items():  # fitted on all known attacks, whatever the variant
                out[name] = sc.score(full[:, cols])
            out["maha_mix"] = self.ensemble_comb[variant](self.ensemble.distances(v.pooled))
            out["lid"] = self.lid_comb[variant](v.lid.numpy())
        return {k: t.float() for k, t in out.items()}
