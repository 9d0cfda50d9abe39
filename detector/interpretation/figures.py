"""`dnd figures`: the paper's interpretation figures from a bundle, each with the data behind it.

class_paths.png / .json      per class, firing frequency of the dynamic filters of each block's first conv
adversarial_paths.png / .json  one class attacked to others, many attacked to one, beside the clean class paths;
                               the layer where their paths part
path_embeddings.png / .json  t-SNE of z at a shallow, a middle and a deep layer, clean and attacked, by class
filter_class.png / .json     the linear filter-class weights per layer (what the MI heads learn)
filter_images.png / .json    test images that open and shut a few dynamic filters the most
summary.json                 one measured sentence per figure (the README quotes them)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torchattacks
from torch import Tensor

from ..data import load_split, to_unit_float
from ..networks import GatedNetwork
from ..splits import balanced_subset, shuffled_per_class
from ..stats import collect_gate_paths
from .paths import class_paths, filter_extremes, first_convs, linear_heads, mean_path, parting_layer, stage_starts
from .plots import _plt, plot_adversarial, plot_class_paths, plot_embeddings, plot_filter_class, plot_filter_images


def embed_layers(n_layers: int) -> tuple[int, ...]:
    """The layers whose paths are embedded: the second, the middle and the last gated conv (1, 9, 17 of ResNet-20's
    18), how clustering by class grows with depth."""
    return tuple(sorted({min(1, n_layers - 1), n_layers // 2, n_layers - 1}))


def _save(out: Path, name: str, data: dict[str, Any], fig: Any) -> None:
    (out / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    fig.savefig(out / f"{name}.png", dpi=110)
    _plt().close(fig)


def figures(
    model: GatedNetwork,
    data: str | Path,
    out: str | Path,
    limit: int = 2000,
    source: int = 0,
    target: int = 8,
    seed: int = 0,
) -> dict[str, str]:
    """Write every figure and its data to OUT; returns the summary sentences. `limit` test images (class-balanced)
    are used for the clean paths; attacks run on up to a quarter of them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    test = load_split(data, "test", model.cfg.input_size)
    classes = list(model.cfg.classes)
    k = len(classes)
    idx = balanced_subset(torch.cat(shuffled_per_class(test.y, k, seed)), test.y, limit, k)
    x, y = to_unit_float(test.x[idx]), test.y[idx]
    logits, z, s = collect_gate_paths(model, x)
    ok = logits.argmax(1) == y
    x, y, z, s = x[ok], y[ok], [t[ok] for t in z], [t[ok] for t in s]
    summary = {}

    cp = class_paths(z, y, classes, first_convs(model.costs()))
    summary["class_paths"] = (
        f"{cp['thickest']} takes the thickest path ({cp['density'][cp['thickest']]:.3f} of filters "
        f"open on average) and {cp['thinnest']} the thinnest ({cp['density'][cp['thinnest']]:.3f})."
    )
    _save(out, "class_paths", cp, plot_class_paths(cp))

    adv = adversarial_groups(model, x, y, z, source, target, seed)
    summary["adversarial_paths"] = adv["sentence"]
    _save(out, "adversarial_paths", adv, plot_adversarial(adv, classes))

    emb = embeddings(model, x, y, z, seed)
    summary["path_embeddings"] = emb["sentence"]
    _save(out, "path_embeddings", emb, plot_embeddings(emb, classes))

    heads = [w.tolist() for w in linear_heads(z, y, k)]
    fc = {"layers": list(range(len(heads))), "weights": heads, "classes": classes}
    top = [max(range(k), key=lambda c, w=w: max(w[c])) for w in heads]
    summary["filter_class"] = (
        f"the strongest filter-class weight of the deepest layer belongs to {classes[top[-1]]}; "
        f"of the first layer to {classes[top[0]]}."
    )
    _save(out, "filter_class", fc, plot_filter_class(fc))

    ext = filter_extremes(s, z, stage_starts(model.costs()))
    summary["filter_images"] = f"{len(ext)} dynamic filters, their 8 most opening and 8 most shutting test images."
    _save(
        out,
        "filter_images",
        {
            "filters": ext,
            "classes": classes,
            "labels": {str(i): classes[int(y[i])] for f in ext for i in f["most_open"] + f["most_shut"]},
        },
        plot_filter_images(ext, x, y, classes),
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def adversarial_groups(
    model: GatedNetwork, x: Tensor, y: Tensor, z: list[Tensor], source: int, target: int, seed: int
) -> dict[str, Any]:
    """Images of class `source` attacked (untargeted PGD 8/255) to whatever they become, and images of every other
    class attacked (targeted PGD 8/255) to `target`: their mean paths beside the clean class paths."""
    torch.manual_seed(seed)
    src = torch.nonzero(y == source).flatten()
    pgd = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10)
    za = collect_gate_paths(model, a := pgd(x[src], y[src]))
    pred_a = za[0].argmax(1)
    others = torch.nonzero(y != target).flatten()[: 4 * len(src)]
    tpgd = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10)
    tpgd.set_mode_targeted_by_label(quiet=True)
    zb = collect_gate_paths(model, tpgd(x[others], torch.full((len(others),), target)))
    hit = zb[0].argmax(1) == target
    clean = {c: mean_path(z, y == c) for c in torch.unique(y).tolist()}  # classes with correct images
    one_to_many = {}
    for c in pred_a.unique().tolist():
        if c == source or c not in clean or source not in clean or int((pred_a == c).sum()) < 5:
            continue
        grp = mean_path(za[1], pred_a == c)
        one_to_many[str(c)] = {
            "n": int((pred_a == c).sum()),
            **parting_layer(grp, clean[source], clean[c]),
            "path": [g.tolist() for g in grp],
        }
    grp = mean_path(zb[1], hit)
    many_to_one = {"n": int(hit.sum()), "parting_layer": None, "path": [g.tolist() for g in grp]}
    if target in clean and hit.any():  # (a tiny or untrained model may have no correct image of the class)
        many_to_one |= parting_layer(grp, mean_path(z, y != target), clean[target])
    parts = [v["parting_layer"] for v in one_to_many.values() if v["parting_layer"] is not None]
    sentence = (
        f"attacked {int(a.shape[0])} images of class {source}: their paths stay with the source class's and "
        f"part towards the predicted class's from layer {min(parts) if parts else 'none'} on (median "
        f"{sorted(parts)[len(parts) // 2] if parts else 'none'}); images of other classes attacked to class "
        f"{target} part at layer {many_to_one['parting_layer']}."
    )
    return {
        "source": source,
        "target": target,
        "one_to_many": one_to_many,
        "many_to_one": many_to_one,
        "clean": {str(c): [t.tolist() for t in p] for c, p in clean.items()},
        "shown_layers": first_convs(model.costs()),
        "sentence": sentence,
    }


def embeddings(model: GatedNetwork, x: Tensor, y: Tensor, z: list[Tensor], seed: int) -> dict[str, Any]:
    """t-SNE of the binary path at a shallow, a middle and a deep layer: clean images and PGD-attacked ones."""
    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score

    n = min(len(y), 1500)
    m = min(len(y), 300)
    torch.manual_seed(seed)
    adv = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10)(x[:m], y[:m])
    la, za, _ = collect_gate_paths(model, adv)
    res: dict[str, Any] = {"layers": {}, "labels": y[:n].tolist(), "adv_pred": la.argmax(1).tolist()}
    for l in embed_layers(len(z)):
        pts = torch.cat([z[l][:n], za[l]]).float()
        # binary paths repeat exactly (a layer of 16 filters has few distinct ones): sklearn's Barnes-Hut t-SNE
        # crashed on such duplicates in a small set, so each point moves by a seeded jitter of 1e-3
        pts = (pts + 1e-3 * torch.rand(pts.shape, generator=torch.Generator().manual_seed(seed))).numpy()
        xy = TSNE(2, perplexity=min(30.0, (len(pts) - 1) / 3), init="pca", random_state=seed).fit_transform(pts)
        sil = float(silhouette_score(pts[:n], y[:n].numpy())) if len(set(y[:n].tolist())) > 1 else 0.0
        res["layers"][str(l)] = {
            "clean": xy[:n].round(3).tolist(),
            "attacked": xy[n:].round(3).tolist(),
            "silhouette_by_class": round(sil, 4),
        }
    sil = {l: v["silhouette_by_class"] for l, v in res["layers"].items()}
    res["sentence"] = (
        "clean paths cluster by class more the deeper the layer (silhouette "
        + ", ".join(f"layer {l}: {v:.2f}" for l, v in sil.items())
        + ")."
    )
    return res
