"""One image's calculation path against its predicted class's signature, as an SVG picture (no plotting library:
a few hundred rectangles as text, well under a millisecond).

Row l is gated layer l, one cell per filter: open in both the path and the signature, open only in the path
(extra), open only in the signature (missing), or shut in both. Layers where the path departs from the class more
than a clean image of the class would are marked: their Hamming distance to the signature lies more than 2 standard
deviations above what the profile predicts for the class (the filters as independent coins with the class's
firing frequencies p: mean sum(min(p, 1 - p)), variance sum(min(p, 1 - p) * (1 - min(p, 1 - p)))).
"""

from __future__ import annotations

from html import escape

import torch
from torch import Tensor

COLOURS = {"both": "#1b7837", "extra": "#e08214", "missing": "#92c5de", "neither": "#eeeeee"}
CELL, GAP, LEFT, TOP = 9, 3, 70, 34


def unusual_layers(path: list[Tensor], freq: list[Tensor], z_limit: float = 2.0) -> list[dict[str, float]]:
    """Per layer: Hamming distance to the signature, its expected value and z-score for the class (see module)."""
    out = []
    for zl, p in zip(path, freq):
        q = torch.minimum(p, 1 - p)  # chance a clean image disagrees with the signature on each filter
        ham = float((zl.float() != (p >= 0.5).float()).sum())
        mean, sd = float(q.sum()), float((q * (1 - q)).sum().sqrt().clamp_min(0.5))
        out.append(
            {
                "hamming": ham,
                "expected": round(mean, 2),
                "z": round((ham - mean) / sd, 2),
                "unusual": (ham - mean) / sd > z_limit,
            }
        )
    return out


def path_svg(
    path: list[Tensor], freq: list[Tensor], label: str, score: float | None = None, threshold: float | None = None
) -> str:
    """path: per layer (C_l,) bool, the image's open filters; freq: per layer (C_l,) the predicted class's firing
    frequencies. Returns a standalone SVG document."""
    layers = unusual_layers(path, freq)
    width = LEFT + max(len(zl) for zl in path) * CELL + 150
    height = TOP + len(path) * (CELL + GAP) + 40
    verdict = ""
    if score is not None and threshold is not None:
        verdict = f"; attack score {score:.2f} ({'over' if score > threshold else 'under'} threshold {threshold:.2f})"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="10">',
        f'<text x="4" y="14" font-size="12">Calculation path against the signature of '
        f"&quot;{escape(label)}&quot;{escape(verdict)}</text>",
    ]
    for l, (zl, p, info) in enumerate(zip(path, freq, layers)):
        y = TOP + l * (CELL + GAP)
        sig = p >= 0.5
        mark = ' fill="#b2182b" font-weight="bold"' if info["unusual"] else ""
        parts.append(f'<text x="4" y="{y + CELL - 1}"{mark}>layer {l}{" !" if info["unusual"] else ""}</text>')
        for j, (o, s) in enumerate(zip(zl.tolist(), sig.tolist())):
            kind = "both" if o and s else "extra" if o else "missing" if s else "neither"
            parts.append(
                f'<rect x="{LEFT + j * CELL}" y="{y}" width="{CELL - 1}" height="{CELL}" '
                f'fill="{COLOURS[kind]}"><title>layer {l}, filter {j}: {kind}</title></rect>'
            )
        parts.append(
            f'<text x="{LEFT + len(zl) * CELL + 6}" y="{y + CELL - 1}"{mark}>'
            f"{info['hamming']:.0f} differ ({info['expected']:.1f} expected)</text>"
        )
    y = TOP + len(path) * (CELL + GAP) + 14
    for i, (kind, colour) in enumerate(COLOURS.items()):
        words = {
            "both": "open in path and signature",
            "extra": "open, not in signature",
            "missing": "in signature, shut",
            "neither": "shut in both",
        }[kind]
        parts.append(
            f'<rect x="{4 + i * 150}" y="{y}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{18 + i * 150}" y="{y + 9}">{words}</text>'
        )
    parts.append(
        f'<text x="4" y="{y + 24}" fill="#b2182b">! = the layer departs from the class more than a clean '
        "image would (z &gt; 2)</text></svg>"
    )
    return "".join(parts)
