"""The evaluation protocol's settings: one frozen recipe, each field a `dnd evaluate` flag."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..adaptive import AdaptiveConfig
from ..corruptions import CORRUPTIONS


@dataclass(frozen=True)
class EvalConfig:
    # attacks whose family the `path` scorer is fitted on, at their evaluation parameters (detector/attacks.py)
    known: tuple[str, ...] = ("fgsm", "pgd", "cw", "deepfool", "transfer")
    # attacks in no fit that informed a recipe choice on the calibration half (pgdl2 and MI-FGSM transferred chose
    # the consistency transforms and the families) or share the fit's Linf budgets (apgd-dlr at 4/255, square at
    # 8/255)
    selection: tuple[str, ...] = ("pgdl2", "transfer-mi", "apgd-dlr", "square")
    # attacks no fit and no choice ever touched: another norm (L1), another threat model (L0 black box) and another
    # transfer method (TI-DIM's smoothed perturbations)
    unseen: tuple[str, ...] = ("eadl1", "pixle", "transfer-ti")
    # common corruptions and ordinary changes of clean images (detector/corruptions.py): false positives on shifted
    # images; the report says which of them the fit's clean augmentation covers and which no recipe choice weighed
    corruptions: tuple[str, ...] = tuple(CORRUPTIONS)
    limit: int = 0  # evaluation images (class-balanced; 0 = the whole half, 5,000)
    # images for the costly attacks: 1,200 leave more than 1,000 successful ones (their success rates are 0.7-1.0)
    slow_limit: int = 1200
    slow: tuple[str, ...] = ("cw", "deepfool", "square", "apgd-dlr", "eadl1", "pixle")
    fit_limit: int = 0  # calibration fit-part images the supervised detectors are refitted on (0 = all, ~3,000)
    # clean and adversarial images per attack for the Lee-faithful Mahalanobis upper bound (baselines/lee.py: fitted
    # on each attack itself, two-fold; 0 = skip it): its preprocessing costs ~60 forward passes per image
    lee_limit: int = 500
    lid_reference: int = 200  # clean training images LID measures distances to
    adaptive_limit: int = 500  # evaluation images (correct or not) for the adaptive attacks
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    bootstrap: int = 500  # resamples for the 95% intervals
    source: str = "models/resnet20-dense"  # the network transfer attacks are crafted on
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
