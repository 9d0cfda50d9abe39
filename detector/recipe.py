"""The calibration recipe: every choice `dnd profiles` makes in fitting the `path` scorer and its threshold, as one
frozen dataclass recorded in the profiles (`calibration.config`), with the reasons each default was chosen."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .attacks import ATTACKS, needs_run_source, split_name
from .consistency import FeatureSpec
from .corruptions import AUGMENT, AUGMENT_KINDS, BASE_AUGMENT


@dataclass(frozen=True)
class CalibrationConfig:
    """How `dnd profiles` fits the detector; every field but `seed` is a flag of `dnd profiles`.

    The defaults are the shipped profiles' recipe. Training images join the fit because the calibration half alone
    is small for 1,417 features. One tree model per attack family, because FGSM + PGD move paths towards the
    predicted class's profile and CW + DeepFool (minimal attacks) away from it: one model for both directions fits
    neither well. PGD transferred from another network (`source`) joins the FGSM + PGD model: with no transferred
    attack in the fit the trees flagged under half of MI-FGSM transferred, and inside that model it scored as well as
    a third model of its own (0.925 against 0.923, reports/selection). The families are mixed with equal priors."""

    target_fpr: float = 0.05  # share of clean images the threshold flags
    # With a value above 0, the threshold also flags at most this share of the threshold part's clean images under each
    # weighed corruption (detector/shift_threshold.py); 0 = the clean images alone set it. Their shares are recorded
    # either way.
    max_shift_flagged: float = 0.0
    attacks: tuple[str, ...] = ("fgsm", "pgd", "cw", "deepfool", "transfer")  # run on the calibration fit images
    limit: int = 0  # calibration images (class-balanced; 0 = the whole half)
    train_images: int = 30000  # training images added to the fit data (0 = none); the threshold stays on test images
    # run on those (DeepFool costs ~0.25 s per image on 2 cores). Transferred PGD (with a source) on all of them rather
    # than on the subset below flagged more transferred attacks on the calibration half (the Makefile says how many).
    train_attacks: tuple[str, ...] = ("fgsm", "pgd", "transfer")
    train_subset: int = 2000  # of those, this many also get train_subset_attacks (0 = none)
    train_subset_attacks: tuple[str, ...] = ("cw", "deepfool")
    families: tuple[tuple[str, ...], ...] = (("fgsm", "pgd", "transfer"), ("cw", "deepfool"))  # a tree model each
    # The network the transferred attacks (ATTACKS[...].transfer) are crafted on: a bundle path. "" = none, and the
    # fit runs no transferred attack (`make profiles` passes the shipped dense ResNet-20).
    source: str = ""
    family_log_prior: tuple[float, ...] = (0.0, 0.0)  # their log prior weights in the mixture score
    scorer: str = "trees"  # "trees" (gradient-boosted, per family) or "linear" (the logistic model alone)
    tree_iterations: int = 300  # boosting rounds (trees) per family model
    gate_logits: bool = True  # also score each gate logit's deviation from its class mean (how near it is to flipping)
    threshold_share: float = 0.4  # share of the calibration images kept for the threshold
    # Generic perturbations rather than the exact evaluated attacks: the fit's Linf attacks (fgsm, pgd, transferred
    # PGD) run at these radii in pixel steps, each image at one of them (seeded; PGD's step is eps / 4); () = at their
    # 8/255. Several radii teach the trees the direction of a perturbation rather than one size of it.
    linf_eps: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)
    # Clean negatives also under generic corruptions (detector/corruptions.py AUGMENT: one of these kinds per image, at
    # a random strength; () = none): trees fitted on pristine images only learn "any perturbation" and flag noisy but
    # correctly classified clean images as attacks. Noise, blur, JPEG, brightness and contrast: `make select` also
    # tried torchvision's whole colour-jitter set (saturation and hue besides) on the calibration half, which flagged
    # more noisy clean images and no fewer saturated ones (reports/selection).
    clean_augment: tuple[str, ...] = BASE_AUGMENT
    # Beside the path features: path consistency under these transforms (detector/consistency.py), and the output
    # confidence columns. Chosen on the calibration half (`make select`, reports/selection) by the worst AUROC over
    # the fit's attacks and the held-out pgdl2 and MI-FGSM transferred: the median filter and the 1-pixel shift without
    # the confidence columns (0.890; 0.887 with them, which flag more of every attack at the threshold; the 2-pixel
    # shift 0.882). Pairs with the horizontal mirror scored best on the white-box attacks and worst on the transferred
    # ones. JPEG re-encoding at the data's own quality 75 was left out: it flagged every noisy clean image (clean
    # images are JPEG q75 files, so re-encoding them is nearly lossless and any change at all stands out).
    transforms: tuple[str, ...] = ("median", "shift")
    confidence: bool = False
    # The input's own median-filter residual (consistency.residual_features): 6 columns, no extra forward. The same
    # study chooses it with the two transforms: worst AUROC 0.910 against 0.890 without it.
    residual: bool = True
    # The transformed copies' forward (FeatureSpec.precision). float32 (the shipped ResNet profiles') runs at one cost
    # on every CPU; bfloat16 gave the same AUROCs within 0.002 and det.predict at batch 64 1.95x path-only instead of
    # 2.82x on a CPU with AMX, but 5.4x slower than float32 copies where bfloat16 is emulated (2 AMD EPYC Zen 3
    # cores; bench/scoring.py --float32-copies).
    transform_precision: str = "float32"
    # Attacks in no fit whose calibration-half figures chose the settings above (radii, transforms and families:
    # pgdl2 and MI-FGSM transferred). Recorded, so that `dnd evaluate` never reports them as unseen.
    selection_attacks: tuple[str, ...] = ("pgdl2", "transfer-mi")
    # Attacks run on the threshold part once scorer and threshold are set (detector/validation.py): their figures on
    # the calibration half, for choosing between recipes; () = none (the shipped profiles).
    validation_attacks: tuple[str, ...] = ()
    seed: int = 0

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec(self.transforms, self.confidence, self.residual, self.transform_precision)

    def attacks_run(self) -> list[str]:
        """Every attack the scorer is fitted against, in order of first use; transferred ones only with a source."""
        names = list(self.attacks) + (list(self.train_attacks) if self.train_images > 0 else [])
        names += list(self.train_subset_attacks) if self.train_images > 0 and self.train_subset > 0 else []
        return [n for n in dict.fromkeys(names) if self.source or not needs_run_source(n)]

    def check(self) -> None:
        """Refuse an inconsistent recipe before any attack runs (they take tens of minutes)."""
        if not 0 <= self.target_fpr < 1:
            raise ValueError(f"target FPR: expected a rate from 0 to below 1, got {self.target_fpr}")
        if not 0 < self.threshold_share < 1:
            raise ValueError(f"threshold share: expected a share above 0 and below 1, got {self.threshold_share}")
        if not 0 <= self.max_shift_flagged < 1:
            raise ValueError(f"shift limit: expected a rate from 0 (none) to below 1, got {self.max_shift_flagged}")
        if self.tree_iterations < 1:
            raise ValueError(f"tree iterations: expected at least 1, got {self.tree_iterations}")
        self.spec.check()
        if bad := [k for k in self.clean_augment if k not in AUGMENT]:
            raise ValueError(f"clean augmentation: unknown kind(s) {bad}; expected some of {', '.join(AUGMENT_KINDS)}")
        if bad := [n for n in self.validation_attacks if split_name(n)[0] not in ATTACKS]:
            raise ValueError(f"validation attacks: unknown {bad}; expected some of {', '.join(sorted(ATTACKS))}")
        if not self.source and any(needs_run_source(n) for n in self.validation_attacks):
            raise ValueError("validation attacks: a transferred attack needs a source network (--source)")
        if self.scorer not in ("trees", "linear"):
            raise ValueError(f"scorer: expected trees or linear, got {self.scorer!r}")
        ran, flat = self.attacks_run(), [n for f in self.families for n in f]
        missing, twice = [n for n in ran if n not in flat], sorted({n for n in flat if flat.count(n) > 1})
        if missing or twice or not self.families:
            raise ValueError(
                f"families {'+'.join(self.families[0]) if self.families else ''}...: expected every attack the scorer "
                f"is fitted against ({', '.join(ran)}) in exactly one family, found "
                f"{'missing ' + ', '.join(missing) if missing else ''}{'twice ' + ', '.join(twice) if twice else ''}"
            )
        if len(self.family_log_prior) != len(self.families):
            raise ValueError(
                f"expected one log prior per family ({len(self.families)}), found {len(self.family_log_prior)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, cal: dict[str, Any]) -> CalibrationConfig:
        """The recipe a profiles' calibration record names ("config"; JSON lists back to tuples); defaults for
        fields it does not name."""
        conf = {"residual": False, **cal.get("config", {})}  # a record without it predates the residual: none read
        if isinstance(conf.get("clean_augment"), bool):  # a yes/no record predates the kinds: the five, or none
            conf["clean_augment"] = BASE_AUGMENT if conf["clean_augment"] else ()
        return cls(
            **{
                f: tuple(map(tuple, v)) if f == "families" else tuple(v) if isinstance(v, list) else v
                for f, v in conf.items()
            }
        )
