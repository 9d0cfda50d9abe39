"""Baseline detectors a user would otherwise pick, on the same model and images (higher score = more suspicious).

Unsupervised (they never see an attack):
- max softmax probability (Hendrycks & Gimpel 2017) and energy (Liu et al. 2020), from pytorch-ood;
- Mahalanobis distance on penultimate features (Lee et al. 2018, one layer, no input preprocessing), pytorch-ood's
  Gaussian fitted on training features.
Supervised (fitted on exactly the attacked images the path scorer is fitted on):
- the Mahalanobis feature ensemble (Lee et al. 2018): one Gaussian per layer, a logistic regression over the
  per-layer distances;
- local intrinsic dimensionality, LID (Ma et al. 2018): per-layer LID estimates against clean reference images, a
  logistic regression over them.
"""

from .activations import layer_activations, pooled_activations
from .combiner import LogisticCombiner
from .confidence import energy_score, msp_score
from .lid import LID
from .mahalanobis import Mahalanobis, MahalanobisEnsemble

__all__ = [
    "LID",
    "LogisticCombiner",
    "Mahalanobis",
    "MahalanobisEnsemble",
    "energy_score",
    "layer_activations",
    "msp_score",
    "pooled_activations",
]
