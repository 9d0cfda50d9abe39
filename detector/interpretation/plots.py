"""Drawing the interpretation figures (matplotlib, imported when a figure is drawn)."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_class_paths(cp: dict[str, Any]) -> Any:
    """One row per class, one column per dynamic filter (blocks' first convs left to right), firing frequency."""
    import numpy as np

    plt = _plt()
    mat = np.concatenate([np.array(layer["freq"]) for layer in cp["layers"]], 1)
    fig, ax = plt.subplots(figsize=(14, 4))
    if mat.shape[1] == 0:  # every filter of the shown layers activated or silent on these images
        ax.text(0.5, 0.5, "no dynamic filters in these layers", ha="center", va="center", transform=ax.transAxes)
        ax.set(xticks=[], yticks=[])
        return fig
    im = ax.imshow(mat, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    edges = np.cumsum([len(layer["filters"]) for layer in cp["layers"]])[:-1]
    for e in edges:
        ax.axvline(e - 0.5, color="w", lw=0.8)
    ax.set_yticks(range(len(cp["classes"])), [f"{c} ({cp['density'][c]:.2f})" for c in cp["classes"]], fontsize=8)
    ax.set_xticks(
        [(a + b) / 2 for a, b in zip([0, *edges], [*edges, mat.shape[1]])],
        [f"block {i + 1}" for i in range(len(cp["layers"]))],
        fontsize=8,
    )
    ax.set_title(
        "Class calculation paths: firing frequency of each dynamic filter (first conv of each block); "
        "mean path density beside each class",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, fraction=0.02)
    fig.tight_layout()
    return fig


def plot_adversarial(adv: dict[str, Any], classes: list[str]) -> Any:
    """Left: distance of each adversarial group's path to the clean source / target class path, per layer.
    Right: the many-to-one group's path beside the clean target path (first convs)."""
    import numpy as np

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    ax = axes[0]
    cmap = plt.get_cmap("tab10")
    for c, g in adv["one_to_many"].items():  # one colour per group: dashed to the source class, solid to the target
        col = cmap(int(c) % 10)
        ax.plot(g["to_source"], "--", lw=1, color=col)
        ax.plot(g["to_target"], "-", lw=1, color=col, label=f"{classes[adv['source']]} as {classes[int(c)]}")
    m = adv["many_to_one"]
    if "to_source" in m:
        ax.plot(m["to_source"], "k--", lw=2)
        ax.plot(m["to_target"], "k-", lw=2, label=f"others as {classes[adv['target']]}")
    ax.set(
        xlabel="gated layer",
        ylabel="mean |frequency difference|",
        title="Where adversarial paths part (dashed: to the source class, solid: to the predicted one)",
    )
    ax.title.set_fontsize(9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, ncol=2)
    else:  # no attack on these images changed a label: nothing to draw
        ax.text(0.5, 0.5, "no successful attacks", ha="center", va="center", transform=ax.transAxes)

    def block_starts(path: list) -> np.ndarray:
        return np.concatenate([np.array(path[l]) for l in adv["shown_layers"]])

    width = len(block_starts(m["path"]))
    t = classes[adv["target"]]
    others = [block_starts(p) for c, p in adv["clean"].items() if int(c) != adv["target"]]
    rows = [
        block_starts(m["path"]),
        block_starts(adv["clean"][str(adv["target"])]) if str(adv["target"]) in adv["clean"] else np.zeros(width),
        np.mean(others, 0) if others else np.zeros(width),
    ]
    axes[1].imshow(np.stack(rows), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_yticks([0, 1, 2], [f"attacked to {t}", f"clean {t}", "clean, other classes"])
    axes[1].set(xlabel="filters of each block's first conv", title="Many classes attacked to one")
    fig.tight_layout()
    return fig


def plot_embeddings(emb: dict[str, Any], classes: list[str]) -> Any:
    import numpy as np

    plt = _plt()
    layers = list(emb["layers"])
    fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 4.6))
    labels, pred = np.array(emb["labels"]), np.array(emb["adv_pred"])
    cmap = plt.get_cmap("tab10")
    for ax, l in zip(np.atleast_1d(axes), layers):
        c, a = np.array(emb["layers"][l]["clean"]), np.array(emb["layers"][l]["attacked"])
        ax.scatter(c[:, 0], c[:, 1], s=3, c=cmap(labels % 10), alpha=0.6)
        ax.scatter(a[:, 0], a[:, 1], s=14, c=cmap(pred % 10), marker="x", lw=0.8)
        ax.set(title=f"layer {l}: silhouette {emb['layers'][l]['silhouette_by_class']:.2f}", xticks=[], yticks=[])
    handles = [plt.Line2D([], [], ls="", marker="o", color=cmap(i), label=c) for i, c in enumerate(classes)]
    handles.append(plt.Line2D([], [], ls="", marker="x", color="k", label="attacked (PGD), by predicted class"))
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot_filter_class(fc: dict[str, Any]) -> Any:
    import numpy as np

    plt = _plt()
    layers = fc["weights"]
    cols = min(6, len(layers))
    rows = -(-len(layers) // cols)  # ResNet-20: 3 x 6; ResNet-56: 9 x 6
    fig, axes = plt.subplots(rows, cols, figsize=(15, 2 * rows), squeeze=False)
    for ax in axes.flat[len(layers) :]:
        ax.axis("off")
    for ax, (l, w) in zip(axes.flat, enumerate(layers)):
        w = np.array(w)
        lim = np.abs(w).max() or 1
        ax.imshow(w, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set(title=f"layer {l}", xticks=[], yticks=range(len(fc["classes"])))
        ax.set_yticklabels(fc["classes"] if l % cols == 0 else [], fontsize=6)
    fig.suptitle(
        "Filter-class relation: weights of a linear classifier from each layer's path to the class "
        "(red: the filter's opening votes for the class)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def plot_filter_images(ext: list[dict[str, Any]], x: Tensor, y: Tensor, classes: list[str]) -> Any:
    plt = _plt()
    n = len(ext[0]["most_open"]) if ext else 1
    rows = max(len(ext), 1)  # (a network with no dynamic filter at a stage's start has nothing to show: one empty row)
    fig, axes = plt.subplots(rows, 2 * n + 1, figsize=(2 * n * 0.9 + 1, 1.0 * rows), squeeze=False)
    for r, f in enumerate(ext):
        row = axes[r]
        row[n].axis("off")
        row[n].text(0.5, 0.5, f"layer {f['layer']}\nfilter {f['filter']}", ha="center", va="center", fontsize=6)
        for j, i in enumerate(f["most_open"]):
            row[j].imshow(x[i].permute(1, 2, 0).numpy())
        for j, i in enumerate(f["most_shut"]):
            row[n + 1 + j].imshow(x[i].permute(1, 2, 0).numpy())
        for ax in row:
            ax.set(xticks=[], yticks=[])
    if ext:
        axes[0][0].set_title("opens most", fontsize=7, loc="left")
        axes[0][n + 1].set_title("shuts most", fontsize=7, loc="left")
    fig.tight_layout()
    return fig
