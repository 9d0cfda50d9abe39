"""`dnd` command line. Heavy imports happen inside each sub-command, so `dnd --help` is instant."""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.config import TrainConfig

# Training images added to the `path` scorer's fit data by `dnd profiles` (attacked like the calibration images).
# Measured on the shipped bundle, on the calibration half's threshold part (scripts/scorer_train_study.py): the trees'
# FGSM / PGD AUROC was 0.902 / 0.950 from calibration images alone, 0.921 / 0.965 with 10,000 training images,
# 0.926 / 0.968 with 20,000 and 0.930 / 0.970 with 30,000 (PGD on them: `dnd profiles` took 22 min on 2 cores).
CALIB_TRAIN = 30000
# Attacks the scorer is fitted against, and how many of those training images also get CW and DeepFool. Measured on
# the shipped bundle: FGSM + PGD alone gave evaluation AUROC FGSM / PGD / CW / DeepFool 0.923 / 0.968 / 0.640 / 0.619;
# all four on the calibration images plus CW / DeepFool on 2,000 training images gave 0.912 / 0.957 / 0.796 / 0.838
# (both floors kept, `dnd profiles` 42 min instead of 22). The shipped profiles use these defaults.
CALIB_ATTACKS = "fgsm,pgd,cw,deepfool"
CALIB_TRAIN_SUBSET = 2000
# One tree model per attack family, combined as a mixture: logsumexp(log-odds_k + log_prior_k). The log priors are
# chosen on the calibration half's threshold part with the family models of the shipped profiles (scripts/
# scorer_combine_study.py models/resnet20-decoupled CACHE.pt, CACHE.pt from scorer_logit_study.py), by a rule written
# down before the run: the highest mean AUROC over the four attacks among priors keeping FGSM and PGD >= 0.92. With the
# gate-logit features (session 21) that is equal priors: FGSM / PGD / CW / DeepFool 0.927 / 0.962 / 0.861 / 0.916
# (mean 0.9165) against 0.938 / 0.970 / 0.832 / 0.887 (0.9069) at 0,-1, which session 13's rule had chosen for the
# z-only features (there equal priors put FGSM below the 0.90 floor on the evaluation half).
CALIB_FAMILIES = "fgsm+pgd,cw+deepfool"
CALIB_FAMILY_LOG_PRIOR = "0,0"


def _checked(parse: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse type: `parse` the text, refuse it with "expected ..., got ..." unless `ok` holds, before any
    model, data or attack is touched."""
    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return convert


# image and thread counts (0 = all / the default)
_count = _checked(int, lambda n: n >= 0, "a whole number >= 0")
# uvicorn accepts 99999 and exits at once without saying why
_port = _checked(int, lambda n: 1 <= n <= 65535, "a TCP port from 1 to 65535")
# checked here, not after ~20 min of calibration attacks
_rate = _checked(float, lambda r: 0 <= r < 1, "a rate from 0 to below 1 (0.05 = 5%)")
_finite = _checked(float, math.isfinite, "a finite number")  # a NaN threshold flagged nothing, without a word


def _add_train(sub: argparse._SubParsersAction) -> None:
    from training.config import TrainConfig

    p = sub.add_parser("train", help="train a dense ResNet-20, or fine-tune the decoupled one (--decouple --init DIR)")
    p.add_argument("--data", required=True, help="CIFAR-10 root: torchvision layout or train/ + test/ image folders")
    p.add_argument("--out", required=True, help="bundle directory to write (checkpoints go to OUT/checkpoint)")
    p.add_argument("--decouple", action="store_true", help="add gates and fine-tune from --init")
    p.add_argument("--init", help="bundle to start from: dense (with --decouple the gates are new; without, a warm restart: a new LR cycle "
                   "from its weights) or decoupled (a further fine-tuning stage)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT/checkpoint")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=_count, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward + losses of each step (inductor; "
                   "on CPU needs a C++ compiler; compiles for ~1-3 min at the start and at the switch to hard paths)")
    hp = p.add_argument_group("hyper-parameters (defaults in training/config.py)")
    for f in fields(TrainConfig):
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):  # --kd-offline / --no-kd-offline (type=bool would read "False" as True)
            hp.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, dest=f"hp_{f.name}")
        else:
            hp.add_argument(flag, type=type(f.default), default=None, dest=f"hp_{f.name}")


def train_config(a: argparse.Namespace) -> TrainConfig:
    """The TrainConfig a parsed `dnd train` command line asks for: the defaults plus its hyper-parameter flags."""
    from training.config import make_config

    return make_config(a.decouple, {k[3:]: v for k, v in vars(a).items() if k.startswith("hp_") and v is not None})


def _cmd_train(a: argparse.Namespace) -> None:
    from training.train import train

    train(a.data, a.out, train_config(a), decouple=a.decouple, init=a.init,
          resume=a.resume, device=a.device, compile_step=a.compile)


def _cmd_stats(a: argparse.Namespace) -> None:
    from detector.bundle import load_model, write_json
    from detector.data import load_split
    from detector.stats import compute_stats

    model = load_model(a.model, a.device)
    test = load_split(a.data, "test")
    stats = {"model": str(a.model), "data_test_fingerprint": test.fingerprint,
             **compute_stats(model, test.x, test.y, device=a.device)}
    out = Path(a.out) if a.out else Path(a.model) / "metrics.json"
    write_json(out, stats)
    from training.plots import plot_filter_states

    plot_filter_states(stats, out.with_name("filter_states.png"))
    fs = stats["filter_states"]
    print(f"test accuracy {stats['test_accuracy']:.4f} | MACs {stats['mean_macs'] / 1e6:.2f}M of "
          f"{stats['dense_macs'] / 1e6:.2f}M (ratio {stats['flops_ratio']:.3f}) | filters activated {fs['activated']}, "
          f"silent {fs['silent']}, dynamic {fs['dynamic']} of {fs['total']} | wrote {out}")


def _cmd_predict(a: argparse.Namespace) -> None:
    import torch

    from detector.api import load_detector
    from detector.bundle import load_model
    from detector.profiles import PROFILES
    from detector.images import InputError, decode_image

    # every path checked before the model loads and before any line is printed
    bad = [f"{p} ({'a directory' if Path(p).is_dir() else 'not found'})" for p in a.images if not Path(p).is_file()]
    if bad:
        raise ValueError(f"expected image files, found: {', '.join(bad)}")
    # the detector when the bundle has profiles (`dnd profiles`); otherwise the bare classifier and its path
    det = load_detector(a.model, a.device) if (Path(a.model) / PROFILES).is_file() else None
    model = det.model if det else load_model(a.model, a.device)
    for path in a.images:
        try:
            x, resized = decode_image(Path(path).read_bytes(), 4096 * 4096)
        except InputError as e:
            raise ValueError(f"{path}: {e.message}") from None
        if det:
            d = det.predict(x[None])
            p, z = d.probs[0], d.paths
        else:
            with torch.inference_mode():
                out = model.forward_paths(x[None].to(a.device))
            p, z = out.logits.softmax(1)[0], out.z
        k = int(p.argmax())
        rec = {"image": str(path), "label": model.cfg.classes[k], "class_index": k, "probability": round(float(p[k]), 4),
               "resized_from": resized}
        if det:
            rec |= {"attack_score": round(float(d.scores[0]), 4), "is_adversarial": bool(d.is_adversarial[0]),
                    "threshold": round(det.threshold, 4)}
        if z:
            rec["open_filters_per_layer"] = [int(zl.sum()) for zl in z]
            rec["path_density"] = round(float(sum(int(zl.sum()) for zl in z) / sum(zl.shape[1] for zl in z)), 4)
        print(json.dumps(rec))


def _calib_train_subset(requested: int | None, calib_train: int) -> int:
    """--calib-train-subset as used: its default follows --calib-train (none when that is 0); an explicit count
    without training images is an error rather than silently dropped."""
    if requested is None:
        return min(CALIB_TRAIN_SUBSET, calib_train) if calib_train > 0 else 0
    if requested > 0 and calib_train <= 0:
        raise ValueError(f"--calib-train-subset {requested} takes its images from the --calib-train ones, "
                         f"but --calib-train is {calib_train}; pass both (e.g. --calib-train 30000)")
    return requested


def _families(spec: str, ran: list[str]) -> list[list[str]]:
    """--families "fgsm+pgd,cw+deepfool" -> [["fgsm", "pgd"], ["cw", "deepfool"]]; every attack that runs (`ran`) must be
    in exactly one family (a family none of whose attacks runs gets no model)."""
    fams = [_names(f.replace("+", ",")) for f in spec.split(",") if f.strip()]
    flat = [n for f in fams for n in f]
    missing, twice = [n for n in ran if n not in flat], sorted({n for n in flat if flat.count(n) > 1})
    if missing or twice or not fams:
        raise ValueError(f"--families {spec!r}: expected every attack the scorer is fitted against ({', '.join(ran)}) "
                         f"in exactly one '+'-joined family, found {'missing ' + ', '.join(missing) if missing else ''}"
                         f"{'twice ' + ', '.join(twice) if twice else ''}")
    return fams


def _cmd_profiles(a: argparse.Namespace) -> None:
    from detector.bundle import load_model
    from detector.calibration import balanced_subset, calibrate, split_test, train_sample
    from detector.data import load_split
    from detector.profiles import build_profiles, save_profiles

    subset = _calib_train_subset(a.calib_train_subset, a.calib_train)
    ran = list(dict.fromkeys(_names(a.calib_attacks) + (_names(a.calib_train_attacks) if a.calib_train > 0 else [])
                             + (_names(a.calib_train_subset_attacks) if subset > 0 else [])))
    families = _families(a.families, ran)
    if a.family_log_prior is None:  # the measured priors belong to the default families; other families: equal
        a.family_log_prior = CALIB_FAMILY_LOG_PRIOR if a.families == CALIB_FAMILIES else ",".join(["0"] * len(families))
    try:
        log_prior = [float(v) for v in a.family_log_prior.split(",")]
    except ValueError:
        log_prior = []
    if len(log_prior) != len(families):
        raise ValueError(f"--family-log-prior {a.family_log_prior!r}: expected one number per family of --families "
                         f"{a.families!r} ({len(families)}), comma-separated")
    model = load_model(a.model, a.device)
    train, test = load_split(a.data, "train"), load_split(a.data, "test")
    profiles = build_profiles(model, train.x, train.y, device=a.device, gate_logits=not a.without_gate_logits)
    cal_idx, _ = split_test(test.y, model.cfg.num_classes)
    cal_idx = balanced_subset(cal_idx, test.y, a.calib_limit, model.cfg.num_classes)
    extra = None
    if a.calib_train > 0:
        tr_idx = train_sample(train.y, a.calib_train, model.cfg.num_classes)
        extra = (train.x[tr_idx], train.y[tr_idx])
    profiles = calibrate(model, profiles, test.x[cal_idx], test.y[cal_idx], _names(a.calib_attacks), a.fpr, a.device,
                         trees=a.scorer == "trees", extra_fit=extra, extra_attacks=_names(a.calib_train_attacks),
                         extra_subset=(subset, _names(a.calib_train_subset_attacks)), families=families,
                         log_prior=log_prior)
    path = save_profiles(profiles, a.model, f"train:{train.fingerprint} test:{test.fingerprint}")
    c = profiles.meta["calibration"]
    print(f"profiles from {profiles.meta['images_correct']} correctly classified training images; scorer fitted on "
          f"{c['n_clean']} clean + {c['n_attacked']} attacked images ({', '.join(c['attacks'])}, "
          f"{c.get('n_extra_clean', 0)} of the clean from training, the rest from calibration; "
          f"{c['scorer']}{', families ' + ' | '.join('+'.join(f) for f in c['families']) if 'families' in c else ''}); threshold "
          f"{profiles.meta['threshold']:.4f} at target FPR {a.fpr} on {c['n_threshold_clean']} other clean calibration "
          f"images (achieved {c['fpr_achieved']}) | wrote {path}")


def _names(csv: str) -> list[str]:
    from detector.attacks import ATTACKS

    names = [n.strip().lower() for n in csv.split(",") if n.strip()]
    bad = [n for n in names if n not in ATTACKS]
    if bad or not names:
        raise ValueError(f"unknown attack(s) {bad or csv!r}; expected a comma-separated list of {sorted(ATTACKS)}")
    return names


def _cmd_attack(a: argparse.Namespace) -> None:
    from detector.attacks import run_attack, save_attack_set, write_pngs
    from detector.bundle import load_model
    from detector.calibration import balanced_subset, split_test
    from detector.data import load_split

    model = load_model(a.model, a.device)
    test = load_split(a.data, "test")
    cal_idx, ev_idx = split_test(test.y, model.cfg.num_classes)
    idx = balanced_subset({"calibration": cal_idx, "evaluation": ev_idx}[a.split], test.y, a.limit, model.cfg.num_classes)
    for name in _names(a.attack):
        s = run_attack(model, name, test.x[idx], test.y[idx], seed=a.seed, device=a.device)
        path = save_attack_set(s, Path(a.out) / f"{name}.safetensors")
        print(f"{name}: {int(s.success.sum())} of {len(s.y)} correctly classified {a.split} images misclassified after "
              f"the attack (success rate {s.success_rate:.4f}), max Linf {float((s.x_adv - s.x_clean).abs().max()):.4f} "
              f"| wrote {path}")
        if a.png:
            written, before = write_pngs(s, model, Path(a.out) / name, model.cfg.classes, a.device)
            print(f"{name}: {written} of {before} successful attacks still misclassified as 8-bit images | wrote "
                  f"{Path(a.out) / name}/*.png")


def _cmd_evaluate(a: argparse.Namespace) -> None:
    from detector.api import load_detector
    from detector.evaluation import DETECTORS, evaluate

    det = load_detector(a.model, a.device, a.threshold)
    r = evaluate(det, a.data, _names(a.attacks), a.out, a.limit, a.slow_limit, a.adaptive_limit, a.seed,
                 not a.no_save_attacks)
    print(f"clean accuracy {r['clean_accuracy']:.4f} on {r['evaluation_images']} evaluation images")
    for name, at in r["attacks"].items():
        aucs = ", ".join(f"{d} {at['detectors'][d]['auroc']:.3f}" for d in DETECTORS)
        print(f"{name}: success {at['success_rate']:.3f} | AUROC {aucs}")
    ad = r["adaptive"]
    print(f"adaptive PGD: success {ad['success_rate']:.3f}, flagged {ad['tpr_at_threshold']}, accuracy kept "
          f"{ad['accuracy_kept']:.3f} | wrote {Path(a.out) / 'report.json'}, report.md, roc.png")


def _cmd_serve(a: argparse.Namespace) -> None:
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    overrides = {k: v for k, v in {"model_dir": a.model, "threads": a.threads or None, "device": a.device}.items() if v}
    app = create_app(Settings(**overrides))
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level, timeout_graceful_shutdown=10)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dnd", description="Dynamic Neural Network Decoupling: adversarial-example detector")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    p = sub.add_parser("stats", help="test accuracy, MACs, FLOPs ratio and filter states of a bundle -> metrics.json")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", help="output JSON (default MODEL/metrics.json)")
    p.add_argument("--device", default="cpu")
    p = sub.add_parser("predict", help="classify image files and show their calculation path")
    p.add_argument("--model", default="models/resnet20-decoupled")
    p.add_argument("--device", default="cpu")
    p.add_argument("images", nargs="+")
    p = sub.add_parser("profiles", help="class path profiles from train + `path` scorer and threshold from calibration")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--fpr", type=_rate, default=0.05, help="target false-positive rate of the threshold (default 0.05)")
    p.add_argument("--calib-attacks", default=CALIB_ATTACKS,
                   help=f"attacks the scorer is fitted against (default {CALIB_ATTACKS}; fgsm,pgd with --calib-train-subset 0: "
                        f"20 min less, 0.01 more AUROC on FGSM / PGD, 0.16-0.22 less on CW / DeepFool, README)")
    p.add_argument("--calib-limit", type=_count, default=0, help="calibration images (class-balanced; 0 = all 5,000)")
    p.add_argument("--without-gate-logits", action="store_true",
                   help="score the binary path z only, not also each gate logit's deviation from its class mean (the "
                        "scorer before session 20; on the calibration half the gate logits added 0.014-0.04 AUROC per "
                        "attack, README)")
    p.add_argument("--calib-train", type=_count, default=CALIB_TRAIN,
                   help=f"training images (class-balanced) whose clean and attacked paths join the scorer's fit data; "
                        f"the threshold stays on test calibration images (default {CALIB_TRAIN}, 0 = none)")
    p.add_argument("--calib-train-attacks", default="fgsm,pgd",
                   help="attacks run on those training images (default fgsm,pgd: DeepFool costs ~0.25 s per image "
                        "on 2 cores, about 2 h for 30,000)")
    p.add_argument("--calib-train-subset", type=_count, default=None,
                   help=f"of those training images, this many (class-balanced) are also attacked with "
                        f"--calib-train-subset-attacks (default {CALIB_TRAIN_SUBSET}, none with --calib-train 0; "
                        f"~8 min on 2 cores)")
    p.add_argument("--calib-train-subset-attacks", default="cw,deepfool")
    p.add_argument("--families", default=CALIB_FAMILIES,
                   help=f"attack families, one tree model each, '+'-joined within and comma-separated (default "
                        f"{CALIB_FAMILIES}; one family of all attacks = the single model shipped until session 11)")
    p.add_argument("--family-log-prior", default=None,
                   help=f"log prior weight of each family in the mixture score, comma-separated in --families order "
                        f"(default {CALIB_FAMILY_LOG_PRIOR} for the default families, else zeros; only differences count)")
    p.add_argument("--scorer", choices=("trees", "linear"), default="trees",
                   help="`path` score model: gradient-boosted trees (default) or the logistic model alone")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=_count, default=0)
    p = sub.add_parser("attack", help="adversarial sets (torchattacks) on correctly classified test images")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--attack", default="fgsm,pgd,cw,deepfool", help="comma-separated: fgsm, pgd, cw, deepfool")
    p.add_argument("--split", choices=["evaluation", "calibration"], default="evaluation")
    p.add_argument("--limit", type=_count, default=0, help="class-balanced number of images (0 = the whole split)")
    p.add_argument("--out", required=True, help="directory for NAME.safetensors")
    p.add_argument("--png", action="store_true", help="also write the successful attacks as 8-bit PNGs, "
                   "OUT/NAME/NNNNN-<class>-as-<predicted>.png (those still misclassified once rounded to 8 bits), "
                   "to send to the service")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=_count, default=0)
    p = sub.add_parser("evaluate", help="ROC evaluation of `path` vs max-softmax and Mahalanobis, + adaptive attack")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--attacks", default="fgsm,pgd,cw,deepfool")
    p.add_argument("--limit", type=_count, default=0, help="evaluation images (class-balanced; 0 = all 5,000)")
    p.add_argument("--slow-limit", type=_count, default=500, help="evaluation images for the slow cw and deepfool (0 = all)")
    p.add_argument("--adaptive-limit", type=_count, default=1000, help="images for the adaptive attack")
    p.add_argument("--threshold", type=_finite, default=None, help="override the calibrated threshold")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-save-attacks", action="store_true", help="do not keep OUT/attacks/*.safetensors")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=_count, default=0)
    p = sub.add_parser("serve", help="HTTP service (FastAPI + uvicorn); other settings from DND_* environment variables")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--model", default=None, help="bundle directory (default: DND_MODEL_DIR or models/resnet20-decoupled)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--log-level", default="info")
    p.add_argument("--threads", type=_count, default=0, help="torch threads for large batches (default: DND_THREADS or all cores; small batches use 1)")
    return parser


def _check_common(a: argparse.Namespace) -> None:
    """Flags several commands share, checked before any work: --device names a usable device, --out is not a file."""
    out = getattr(a, "out", None)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file; expected a directory (created if missing)")
    if getattr(a, "device", None) is not None:
        from .runtime import check_device

        check_device(a.device, "--device")


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from .runtime import tune_malloc

    tune_malloc()  # steadier, faster CPU inference (see detector/runtime.py); a no-op off glibc
    if getattr(a, "threads", 0) and a.command != "serve":
        import torch

        torch.set_num_threads(a.threads)
    handler = {"train": _cmd_train, "stats": _cmd_stats, "predict": _cmd_predict, "profiles": _cmd_profiles,
               "attack": _cmd_attack, "evaluate": _cmd_evaluate, "serve": _cmd_serve}[a.command]
    try:
        _check_common(a)
        handler(a)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"dnd {a.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
