"""Training curves for a bundle (training.png): accuracy, loss terms, and for decoupled runs the path stats."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    decoupled = "filter_states" in history[0] if history else False
    fig, axes = plt.subplots(1, 3 if decoupled else 2, figsize=(15 if decoupled else 10, 4))
    axes[0].plot(ep, [h["test_accuracy"] for h in history], label="test")
    axes[0].plot(ep, [h["train_acc"] for h in history], label="train (augmented)")
    axes[0].set(title="accuracy", xlabel="epoch")
    axes[0].legend()
    for k in ("train_ce", "train_mi", "train_kl", "train_l1"):
        if k in history[0]:
            axes[1].plot(ep, [h[k] for h in history], label=k[6:])
    axes[1].set(title="loss terms", xlabel="epoch", yscale="log")
    axes[1].legend()
    if decoupled:
        for k in ("activated", "silent", "dynamic"):
            axes[2].plot(
                ep, [h["filter_states"][k] / h["filter_states"]["total"] for h in history], label=f"{k} filters"
            )
        axes[2].plot(ep, [h["flops_ratio"] for h in history], "k--", label="FLOPs ratio")
        axes[2].set(title="calculation paths (test set)", xlabel="epoch", ylim=(0, 1))
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_filter_states(stats: dict[str, Any], path: Path) -> None:
    """Per gated layer: activated / dynamic / silent filters (stacked) and the mean share of open filters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = stats["per_layer"]
    idx = [l["layer"] + 1 for l in layers]
    fig, ax = plt.subplots(figsize=(10, 4))
    bottom = [0.0] * len(layers)
    for key, colour in (("activated", "tab:green"), ("dynamic", "tab:orange"), ("silent", "tab:gray")):
        share = [l[key] / l["filters"] for l in layers]
        ax.bar(idx, share, bottom=bottom, color=colour, label=f"{key} ({stats['filter_states'][key]})")
        bottom = [b + v for b, v in zip(bottom, share)]
    ax.plot(idx, [l["density"] for l in layers], "k.-", label="mean share open")
    fs = stats["filter_states"]
    ax.set(
        xlabel="gated conv layer",
        ylabel="share of the layer's filters",
        ylim=(0, 1.05),
        xticks=idx,
        title=f"filter states on {stats['n_images']} test images: FLOPs ratio {stats['flops_ratio']:.3f}, "
        f"accuracy {stats['test_accuracy']:.4f}, {fs['dynamic']}/{fs['total']} dynamic",
    )
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
