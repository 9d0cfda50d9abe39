"""Offline evaluation: the `path` detector against max-softmax and Mahalanobis, on oblivious and adaptive attacks.

Splits: profiles from train (built by `dnd profiles`), scorer and threshold from the calibration half of the test
set (also `dnd profiles`), every figure here from the disjoint evaluation half. Negatives: clean, correctly
classified evaluation images; positives: successful attacks on them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import Tensor

from .adaptive import DEFAULTS as ADAPTIVE_DEFAULTS
from .adaptive import adaptive_pgd
from .api import Detector, Prediction
from .attacks import run_attack, save_attack_set
from .baselines import Mahalanobis, msp_score
from .bundle import write_json
from .data import load_split, to_unit_float
from .splits import SPLIT_SEED, balanced_subset, split_test

DETECTORS = ("path", "path_hamming", "path_jaccard", "msp", "mahalanobis")
# torchattacks' CW (50 optimiser steps) and DeepFool (a Jacobian per image and step) cost ~0.2-1 s per image on
# 2 CPU cores, so they run on a class-balanced subset of the evaluation images (negatives stay all clean images).
SLOW_ATTACKS = {"cw", "deepfool"}


def detector_scores(p: Prediction, maha: Mahalanobis) -> dict[str, Tensor]:
    """Every detector's score (higher = more suspicious) for one Prediction."""
    return {
        "path": p.scores,
        "path_hamming": p.per_layer.mean(1),
        "path_jaccard": p.per_layer_jaccard.mean(1),
        "msp": msp_score(p.logits),
        "mahalanobis": maha.score(p.features),
    }


def roc_figures(neg: Tensor, pos: Tensor, max_fpr: float = 0.05) -> dict[str, Any]:
    """AUROC and the best TPR with FPR <= max_fpr, plus the curve (for the plot)."""
    y = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
    s = np.r_[neg.double().numpy(), pos.double().numpy()]
    fpr, tpr, _ = roc_curve(y, s)
    return {
        "auroc": round(float(roc_auc_score(y, s)), 4),
        "tpr_at_5fpr": round(float(tpr[fpr <= max_fpr].max()), 4),
        "curve": (fpr, tpr),
    }


def evaluate(
    det: Detector,
    data: str | Path,
    attacks: list[str],
    out: str | Path,
    limit: int = 0,
    slow_limit: int = 500,
    adaptive_limit: int = 1000,
    seed: int = 0,
    save_attacks: bool = True,
) -> dict[str, Any]:
    """Run the whole evaluation and write OUT/report.json, OUT/report.md and OUT/roc.png. Returns the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    k = len(det.classes)
    train, test = load_split(data, "train"), load_split(data, "test")
    cal_record = det.profiles.meta.get("calibration", {})
    _, ev_idx = split_test(test.y, k, cal_record.get("split_seed", SPLIT_SEED))
    ev_idx = balanced_subset(ev_idx, test.y, limit, k)
    x, y = to_unit_float(test.x[ev_idx]), test.y[ev_idx]

    # Mahalanobis baseline: class means and tied covariance of penultimate features of the training set
    train_pred = det.predict(to_unit_float(train.x))
    maha = Mahalanobis.fit(train_pred.features, train.y, k)
    del train_pred

    clean = det.predict(x)
    ok = clean.labels == y
    clean_ok = clean.select(ok)
    neg = detector_scores(clean_ok, maha)
    report: dict[str, Any] = {
        "model": det.name,
        "weights_sha256": det.weights_sha256,
        "data_test_fingerprint": test.fingerprint,
        "evaluation_images": len(y),
        "clean_accuracy": round(float(ok.float().mean()), 4),
        "threshold": det.threshold,
        "target_fpr": det.profiles.meta.get("target_fpr"),
        "clean_fpr_at_threshold": round(float(clean_ok.is_adversarial.float().mean()), 4),
        "calibration": cal_record,
        "attacks": {},
    }
    curves: dict[str, dict[str, Any]] = {}
    for name in attacks:
        sub = balanced_subset(torch.arange(len(y)), y, slow_limit if name in SLOW_ATTACKS else 0, k)
        s = run_attack(det.model, name, x[sub], y[sub], seed=seed, device=det.device)
        if save_attacks:
            save_attack_set(s, out / "attacks" / f"{name}.safetensors")
        adv = det.predict(s.x_adv[s.success])
        pos = detector_scores(adv, maha)
        if len(adv.labels) and len(clean_ok.labels):
            figs = {d: roc_figures(neg[d], pos[d]) for d in DETECTORS}
            curves[name] = {d: f.pop("curve") for d, f in figs.items()}
        else:  # no successful attack (or no clean image): there is no ROC to draw
            figs = {d: {"auroc": None, "tpr_at_5fpr": None} for d in DETECTORS}
        report["attacks"][name] = {
            "params": s.params,
            "images_attacked": len(s.y),
            "success_rate": round(s.success_rate, 4),
            "n_clean": int(ok.sum()),
            "n_adv": int(s.success.sum()),
            "linf_max": round(float((s.x_adv - s.x_clean).abs().max()), 5),
            "path_tpr_at_threshold": round(float(adv.is_adversarial.float().mean()), 4) if len(adv.labels) else None,
            "detectors": figs,
        }
    report["adaptive"] = adaptive_entry(det, x[ok], y[ok], adaptive_limit, seed)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out / "report.json", report)
    (out / "report.md").write_text(render_markdown(report))
    plot_rocs(curves, out / "roc.png")
    return report


def adaptive_entry(det: Detector, x: Tensor, y: Tensor, limit: int, seed: int) -> dict[str, Any]:
    """Adaptive PGD on (up to `limit`, class-balanced) clean, correctly classified images: what a user keeps."""
    idx = balanced_subset(torch.arange(len(y)), y, limit, len(det.classes))
    x, y = x[idx], y[idx]
    x_adv = adaptive_pgd(det, x, y, seed=seed, **ADAPTIVE_DEFAULTS)  # the parameters the report records
    p = det.predict(x_adv)
    wrong = p.labels != y
    undetected = wrong & ~p.is_adversarial
    return {
        "params": ADAPTIVE_DEFAULTS,
        "n": len(y),
        "linf_max": round(float((x_adv - x).abs().max()), 5),
        "success_rate": round(float(wrong.float().mean()), 4),
        "tpr_at_threshold": round(float(p.is_adversarial[wrong].float().mean()), 4) if wrong.any() else None,
        "undetected_success_rate": round(float(undetected.float().mean()), 4),
        "accuracy_kept": round(float(1 - undetected.float().mean()), 4),
        "note": "accuracy_kept: share of attacked images that stay correctly classified or are flagged",
    }


def render_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Detection report: {r['model']}",
        "",
        f"Evaluation images: {r['evaluation_images']} (test half disjoint from calibration); clean accuracy "
        f"{r['clean_accuracy']:.4f}; `path` threshold {r['threshold']:.4f} (target FPR {r['target_fpr']}, "
        f"measured on evaluation clean images {r['clean_fpr_at_threshold']:.4f}).",
        "",
        "AUROC / TPR at 5% FPR (positives: successful attacks on correctly classified images).",
        "",
        "| attack | success | n_clean | n_adv | " + " | ".join(DETECTORS) + " | path TPR at threshold |",
        "|---|---|---|---|" + "---|" * len(DETECTORS) + "---|",
    ]
    for name, a in r["attacks"].items():
        cells = [_pair(a["detectors"][d]) for d in DETECTORS]
        lines.append(
            f"| {name} | {a['success_rate']:.3f} | {a['n_clean']} | {a['n_adv']} | "
            + " | ".join(cells)
            + f" | {a['path_tpr_at_threshold']} |"
        )
    ad = r["adaptive"]
    lines += [
        "",
        "## Adaptive attack (detector-aware PGD, straight-through paths)",
        "",
        f"Parameters {ad['params']}, {ad['n']} images. Misclassified: {ad['success_rate']:.3f}; of those flagged "
        f"by `path`: {ad['tpr_at_threshold']}; misclassified and not flagged: {ad['undetected_success_rate']:.3f}; "
        f"accuracy a user keeps (correct or flagged): {ad['accuracy_kept']:.3f}.",
        "",
        f"Regenerated in {r['seconds']:.0f} s by `dnd evaluate`.",
        "",
    ]
    return "\n".join(lines)


def _pair(fig: dict[str, Any]) -> str:
    return "n/a" if fig["auroc"] is None else f"{fig['auroc']:.3f} / {fig['tpr_at_5fpr']:.3f}"


def plot_rocs(curves: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(curves), 1)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 4), squeeze=False)
    for ax, (name, dets) in zip(axes[0], curves.items()):
        for d, (fpr, tpr) in dets.items():
            ax.plot(fpr, tpr, label=d, lw=2 if d == "path" else 1)
        ax.plot([0, 1], [0, 1], "k:", lw=0.5)
        ax.set(title=name, xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
