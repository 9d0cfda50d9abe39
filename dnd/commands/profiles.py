"""`dnd profiles`: class path profiles, the calibrated `path` scorer and its threshold, into the bundle."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..args import add_device, attack_names, count, rate

if TYPE_CHECKING:
    from detector.calibration import CalibrationConfig


def register(sub: argparse._SubParsersAction) -> None:
    from detector.calibration import CalibrationConfig
    from detector.consistency import TRANSFORMS

    d = CalibrationConfig()
    fams = ",".join("+".join(f) for f in d.families)
    p = sub.add_parser("profiles", help="class path profiles from train + `path` scorer and threshold from calibration")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument(
        "--fpr",
        type=rate,
        default=d.target_fpr,
        help=f"target false-positive rate of the threshold (default {d.target_fpr})",
    )
    p.add_argument(
        "--calib-attacks",
        default=",".join(d.attacks),
        help=f"attacks the scorer is fitted against (default {','.join(d.attacks)}; fgsm,pgd with "
        "--calib-train-subset 0: 20 min less, 0.01 more AUROC on FGSM / PGD, 0.16-0.22 less on CW / DeepFool)",
    )
    p.add_argument(
        "--calib-limit", type=count, default=d.limit, help="calibration images (class-balanced; 0 = all 5,000)"
    )
    p.add_argument(
        "--without-gate-logits",
        action="store_true",
        help="score the binary path z only, not also each gate logit's deviation from its class mean (on the "
        "calibration half the gate logits added 0.014-0.04 AUROC per attack)",
    )
    p.add_argument(
        "--calib-train",
        type=count,
        default=d.train_images,
        help="training images (class-balanced) whose clean and attacked paths join the scorer's fit data; the "
        f"threshold stays on test calibration images (default {d.train_images}, 0 = none)",
    )
    p.add_argument(
        "--calib-train-attacks",
        default=",".join(d.train_attacks),
        help=f"attacks run on those training images (default {','.join(d.train_attacks)}: DeepFool costs "
        "~0.25 s per image on 2 cores, about 2 h for 30,000)",
    )
    p.add_argument(
        "--calib-train-subset",
        type=count,
        default=None,
        help=f"of those training images, this many (class-balanced) are also attacked with "
        f"--calib-train-subset-attacks (default {d.train_subset}, none with --calib-train 0; ~8 min on 2 cores)",
    )
    p.add_argument("--calib-train-subset-attacks", default=",".join(d.train_subset_attacks))
    p.add_argument(
        "--source",
        default=d.source,
        help="bundle the fit's transferred attacks (transfer) are crafted on; without it the fit runs none "
        "(`make profiles` passes the shipped dense ResNet-20)",
    )
    p.add_argument(
        "--families",
        default=fams,
        help=f"attack families, one tree model each, '+'-joined within and "
        f"comma-separated (default {fams}; one family of all attacks = a single tree model)",
    )
    p.add_argument(
        "--family-log-prior",
        default=None,
        help="log prior weight of each family in the mixture score, comma-separated in --families order "
        f"(default {','.join(map(str, d.family_log_prior))} for the default families, else zeros; only "
        "differences count)",
    )
    p.add_argument(
        "--linf-eps",
        default=",".join(f"{e:g}" for e in d.linf_eps),
        help="radii (in 1/255) the fit's FGSM, PGD and transferred PGD run at, each image at one of them: generic "
        "perturbations rather than only the evaluated 8/255 "
        f"(default {','.join(f'{e:g}' for e in d.linf_eps)}; '' = 8/255 only)",
    )
    p.add_argument(
        "--max-shift-flagged",
        type=rate,
        default=d.max_shift_flagged,
        help="also keep the share of the threshold images flagged under each weighed corruption (noise, blur, JPEG, "
        "brightness, contrast, pixelation, saturation) at most this; raises the threshold where needed, so fewer "
        f"than --fpr clean images and fewer attacks are flagged (default {d.max_shift_flagged:g} = off)",
    )
    p.add_argument(
        "--threshold-share",
        type=rate,
        default=d.threshold_share,
        help="share of the calibration images kept out of the fit to set the threshold on (default "
        f"{d.threshold_share:g}); the achieved FPR's 95%% interval on them is recorded and printed: about ±1 point "
        "needs some 1,800 correctly classified threshold images",
    )
    p.add_argument(
        "--clean-augment",
        default=",".join(d.clean_augment),
        help="kinds of generic change the fit's clean negatives are also shown under, one per image at a random "
        f"strength (detector/corruptions.py AUGMENT; default {','.join(d.clean_augment)}; '' = pristine images only)",
    )
    p.add_argument(
        "--scorer",
        choices=("trees", "linear"),
        default=d.scorer,
        help="`path` score model: gradient-boosted trees (default) or the logistic model alone",
    )
    p.add_argument(
        "--tree-iterations", type=count, default=d.tree_iterations, help="boosting rounds per family's tree model"
    )
    p.add_argument(
        "--transforms",
        default=",".join(d.transforms),
        help="path consistency: the score also reads how far the path moves under these input transforms, run in "
        f"the same forward pass (comma-separated from {', '.join(TRANSFORMS)}; default {','.join(d.transforms)}; "
        "'' = none)",
    )
    p.add_argument(
        "--transform-precision",
        choices=("float32", "bfloat16"),
        default=d.transform_precision,
        help="the transformed copies' forward: bfloat16 autocast runs them ~2.5x faster on CPUs with bf16 matrix "
        "units; the images themselves always run in float32 (default %(default)s)",
    )
    p.add_argument(
        "--confidence",
        action=argparse.BooleanOptionalAction,
        default=d.confidence,
        help="also read the output-confidence columns (max softmax, energy, logit margin, feature norm); "
        "default %(default)s, the calibration-half choice",
    )
    p.add_argument(
        "--residual",
        action=argparse.BooleanOptionalAction,
        default=d.residual,
        help="also read the input's median-filter residual (quantiles of |x - median3(x)|: the fine detail an Linf "
        "perturbation adds to flat regions); default %(default)s",
    )
    p.add_argument(
        "--selection-attacks",
        default=",".join(d.selection_attacks),
        help="attacks in no fit whose calibration-half figures chose this recipe (`dnd select`), recorded so that "
        "`dnd evaluate` never reports them as unseen (default %(default)s)",
    )
    p.add_argument(
        "--validation-attacks",
        default="",
        help="attacks to run on the threshold images once scorer and threshold are set: their AUROC and share "
        "flagged on the calibration half go into the record, for choosing between recipes; `dnd evaluate` then "
        "refuses them as unseen (default none)",
    )
    add_device(p)
    p.set_defaults(handler=cmd_profiles, out_is_dir=True)


def _radii(spec: str) -> tuple[float, ...]:
    try:
        radii = tuple(float(v) for v in spec.split(",") if v.strip())
    except ValueError:
        radii = (-1.0,)
    if any(not 0 < r <= 255 for r in radii):
        raise ValueError(f"--linf-eps {spec!r}: expected comma-separated radii in 1/255 from above 0 to 255")
    return radii


def _families(spec: str) -> tuple[tuple[str, ...], ...]:
    """ "fgsm+pgd,cw+deepfool" -> (("fgsm", "pgd"), ("cw", "deepfool"))."""
    return tuple(tuple(attack_names(f.replace("+", ","))) for f in spec.split(",") if f.strip())


def calibration_config(a: argparse.Namespace) -> CalibrationConfig:
    """The CalibrationConfig a parsed `dnd profiles` command line asks for, checked (before any attack runs)."""
    from detector.calibration import CalibrationConfig

    d = CalibrationConfig()
    subset = a.calib_train_subset
    if subset is None:  # its default follows --calib-train (none when that is 0)
        subset = min(d.train_subset, a.calib_train) if a.calib_train > 0 else 0
    elif subset > 0 and a.calib_train <= 0:
        raise ValueError(
            f"--calib-train-subset {subset} takes its images from the --calib-train ones, but "
            f"--calib-train is {a.calib_train}; pass both (e.g. --calib-train 30000)"
        )
    families = _families(a.families)
    if a.family_log_prior is None:  # the measured priors belong to the default families; other families: equal
        prior = d.family_log_prior if families == d.families else (0.0,) * len(families)
    else:
        try:
            prior = tuple(float(v) for v in a.family_log_prior.split(","))
        except ValueError:
            prior = ()
        if len(prior) != len(families):
            raise ValueError(
                f"--family-log-prior {a.family_log_prior!r}: expected one number per family of --families "
                f"{a.families!r} ({len(families)}), comma-separated"
            )
    cfg = CalibrationConfig(
        target_fpr=a.fpr,
        attacks=tuple(attack_names(a.calib_attacks)),
        limit=a.calib_limit,
        train_images=a.calib_train,
        train_attacks=tuple(attack_names(a.calib_train_attacks)),
        train_subset=subset,
        train_subset_attacks=tuple(attack_names(a.calib_train_subset_attacks)),
        families=families,
        family_log_prior=prior,
        scorer=a.scorer,
        tree_iterations=a.tree_iterations,
        gate_logits=not a.without_gate_logits,
        linf_eps=_radii(a.linf_eps),
        max_shift_flagged=a.max_shift_flagged,
        threshold_share=a.threshold_share,
        clean_augment=tuple(k.strip() for k in a.clean_augment.split(",") if k.strip()),
        transforms=tuple(t.strip() for t in a.transforms.split(",") if t.strip()),
        confidence=a.confidence,
        residual=a.residual,
        transform_precision=a.transform_precision,
        source=a.source,
        selection_attacks=tuple(attack_names(a.selection_attacks)) if a.selection_attacks.strip() else (),
        validation_attacks=tuple(attack_names(a.validation_attacks)) if a.validation_attacks.strip() else (),
    )
    if cfg.source and not (Path(cfg.source) / "config.json").is_file():
        raise ValueError(f"--source {cfg.source!r}: expected a model bundle folder (with config.json)")
    try:
        cfg.spec.check()
    except ValueError as e:
        raise ValueError(f"--transforms {a.transforms!r}: {e}") from None
    try:
        cfg.check()
    except ValueError as e:
        raise ValueError(f"--families {a.families!r}: {e}") from None
    return cfg


def cmd_profiles(a: argparse.Namespace) -> None:
    from detector.attack_cache import AttackCache
    from detector.bundle import WEIGHTS, file_sha256, load_model
    from detector.calibration import calibrate
    from detector.data import check_classes, load_split
    from detector.parallel import is_main
    from detector.profiles import build_profiles, save_profiles
    from detector.splits import balanced_subset, split_test, train_sample

    cfg = calibration_config(a)
    model = load_model(a.model, a.device)
    size = model.cfg.input_size
    train, test = load_split(a.data, "train", size), load_split(a.data, "test", size)
    for split in (train, test):
        check_classes(split, model.cfg.classes, f"--data against the bundle {a.model}")
    profiles = build_profiles(model, train.x, train.y, device=a.device, gate_logits=cfg.gate_logits)
    k = model.cfg.num_classes
    cal_idx = balanced_subset(split_test(test.y, k)[0], test.y, cfg.limit, k)
    extra = None
    if cfg.train_images > 0:
        tr_idx = train_sample(train.y, cfg.train_images, k)
        extra = (train.x[tr_idx], train.y[tr_idx])
    # The fit's attack results (most of the run) are kept under BUNDLE/checkpoint/profiles until the profiles are
    # written, keyed by the seed and the weights of the network and of the transfer source: a re-run resumes there.
    key = {"seed": str(cfg.seed), "model": file_sha256(Path(a.model) / WEIGHTS)}
    key["source"] = file_sha256(Path(cfg.source) / WEIGHTS) if cfg.source else ""
    cache_dir = Path(a.model) / "checkpoint" / "profiles"
    cache = AttackCache(cache_dir, key, save=is_main())
    profiles = calibrate(model, profiles, test.x[cal_idx], test.y[cal_idx], cfg, extra, a.device, cache)
    if not is_main():  # under torchrun: every process fitted the same profiles; process 0 writes them
        return
    path = save_profiles(profiles, a.model, f"train:{train.fingerprint} test:{test.fingerprint}")
    shutil.rmtree(cache_dir, ignore_errors=True)
    if cache_dir.parent.is_dir() and not any(cache_dir.parent.iterdir()):  # a training checkpoint there stays
        cache_dir.parent.rmdir()
    c = profiles.meta["calibration"]
    lo, hi = c["fpr_interval"]
    fams = f", families {' | '.join('+'.join(f) for f in c['families'])}" if "families" in c else ""
    print(
        f"profiles from {profiles.meta['images_correct']} correctly classified training images; scorer fitted on "
        f"{c['n_clean']} clean + {c['n_attacked']} attacked images ({', '.join(c['attacks'])}, "
        f"{c.get('n_extra_clean', 0)} of the clean from training, the rest from calibration; {c['scorer']}{fams}); "
        f"threshold {profiles.meta['threshold']:.4f} at target FPR {cfg.target_fpr} on {c['n_threshold_clean']} other "
        f"clean calibration images (achieved {c['fpr_achieved']:.1%} [{lo:.1%}, {hi:.1%}]) | wrote {path}"
    )
    shifts = c["threshold_shift_flagged"]
    worst = max(shifts, key=shifts.get, default=None)
    if worst is not None:
        print(f"threshold images flagged under the weighed corruptions: at most {shifts[worst]:.1%} ({worst})")
    for name, v in c.get("validation", {}).items():
        auroc = "n/a" if v["auroc"] is None else f"{v['auroc']:.3f}"
        print(f"validation {name}: AUROC {auroc}, flagged {v['flagged'] or 0:.1%} of {v['n']} adversarial images")
