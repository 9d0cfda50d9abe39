"""The paper's Tables 1 and 2 beside our bundles' `dnd stats` (models/*/metrics.json), for docs/networks.md.

Li et al., "Interpretable Neural Network Decoupling" (ECCV 2020; arXiv 1906.01166), Table 1 (CIFAR-10) and Table 2
(CIFAR-100): top-1 accuracy of the dense and the decoupled network and the FLOPs reduction (dense / mean decoupled).
Our figures are on the JPEG q75 copy of CIFAR-10, which costs ~2-4 points of accuracy against published ones, and on
recipes sized for 2 CPU cores (docs/networks.md), so the comparison to read is within a row: decoupled against dense,
and the FLOPs reduction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PaperRow:
    table: str
    network: str
    dataset: str
    dense: float  # top-1 %
    decoupled: float
    reduction: float  # FLOPs, dense / decoupled
    ours: tuple[str, str]  # our (dense, decoupled) bundle names under models/
    recipe: str  # the make target that trains ours


C100 = "`dnd train --arch resnet56 --data CIFAR100_ROOT`; no CIFAR-100 copy on this machine"
PAPER = (
    PaperRow("Table 1", "ResNet-56", "CIFAR-10", 93.17, 93.43, 1.45, ("resnet56-dense", "resnet56-decoupled"),
             "`make train-resnet56`"),
    PaperRow("Table 1", "VGGNet", "CIFAR-10", 93.75, 93.82, 2.82, ("vgg19-dense", "vgg19-decoupled"),
             "`make train-vgg`"),
    PaperRow("Table 2", "ResNet-56", "CIFAR-100", 70.43, 69.54, 3.05,
             ("resnet56-c100-dense", "resnet56-c100-decoupled"), C100),
)  # fmt: skip


def paper_table(metrics: dict[str, dict[str, Any] | None]) -> str:
    """One row per paper row: the paper's accuracies and FLOPs reduction, then ours from `metrics` (bundle name ->
    its metrics.json, or None where the bundle is not trained): accuracies, the decoupled network's FLOPs ratio and
    reduction, parameters, and its dynamic / always-activated / silent filters."""
    head = [
        "paper row", "network, data", "paper dense → decoupled", "paper FLOPs reduction", "ours dense → decoupled",
        "ours FLOPs ratio (reduction)", "parameters", "filters dynamic / activated / silent",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in PAPER:
        dense, dec = (metrics.get(b) for b in r.ours)
        paper = [r.table, f"{r.network}, {r.dataset}", f"{r.dense:.2f}% → {r.decoupled:.2f}%", f"{r.reduction:.2f}x"]
        if dense is None or dec is None:
            missing = " and ".join(f"`{b}`" for b, m in zip(r.ours, (dense, dec)) if m is None)
            have = f"{100 * dense['test_accuracy']:.2f}% → " if dense is not None else ""
            params = f" {dense['parameters']:,} |" if dense is not None else " |"
            lines.append(
                "| " + " | ".join(paper) + f" | {have}not trained here yet ({missing}: {r.recipe}) | |{params} |"
            )
            continue
        fs = dec["filter_states"]
        ours = [
            f"{100 * dense['test_accuracy']:.2f}% → {100 * dec['test_accuracy']:.2f}%",
            f"{dec['flops_ratio']:.3f} ({1 / dec['flops_ratio']:.2f}x)",
            f"{dec['parameters']:,}",
            f"{fs['dynamic']} / {fs['activated']} / {fs['silent']} of {fs['total']}",
        ]
        lines.append("| " + " | ".join(paper + ours) + " |")
    return "\n".join(lines)
