"""Write the README's and docs' result tables from the reports and bundle metrics (`make docs`); `--check` lists the
tables that disagree with them and exits 1 (the test suite runs it, so a regenerated report cannot leave a stale
table behind).

A table lives between `<!-- dnd-docs:NAME -->` and `<!-- /dnd-docs:NAME -->` in any Markdown file below; NAME is a
key of BLOCKS.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from detector.evaluation.bundle_tables import bundles_table, calibration_record_table, score_reads_table
from detector.evaluation.paper import PAPER, paper_table
from detector.evaluation.selection_report import selection_summary
from detector.evaluation.summary import (
    ablation_table,
    adaptive_table,
    depth_table,
    detection_table,
    lee_table,
    worst_case_table,
)

ROOT = Path(__file__).resolve().parents[1]
FILES = ("README.md", "docs/*.md")
BUNDLES = (
    "resnet20-dense",
    "resnet20-decoupled",
    "resnet20-dense-robust",
    "resnet20-decoupled-robust",
    "resnet56-dense",
    "resnet56-decoupled",
    "vgg19-dense",
    "vgg19-decoupled",
)
# each shipped detector's report (`make evaluate`, `make evaluate-robust`, `make evaluate-resnet56`, `make
# evaluate-vgg`)
REPORTS = {
    "resnet20-decoupled": "reports/evaluation",
    "resnet20-decoupled-robust": "reports/evaluation-robust",
    "resnet56-decoupled": "reports/evaluation-resnet56",
    "vgg19-decoupled": "reports/evaluation-vgg19",
}
# does a deeper path detect better: the served ResNet-20, the ResNet-20 on the ResNet-56's recipe (`make depth`), the
# ResNet-56 and the VGG-19 on that recipe
DEPTH = {
    "ResNet-20, its served recipe": "reports/evaluation",
    "ResNet-20, the ResNet-56 recipe": "reports/depth-resnet20",
    "ResNet-56": "reports/evaluation-resnet56",
    "VGG-19": "reports/evaluation-vgg19",
}


def _json(root: Path, path: str) -> dict:
    return json.loads((root / path).read_text())


def _calibration(root: Path, bundle: str) -> tuple[dict, int, str]:
    """A bundle's profiles' calibration record, its scorer's feature count and the precision its consistency copies
    run in (profiles written before that field ran them in float32), from the safetensors header."""
    from safetensors import safe_open

    with safe_open(str(root / "models" / bundle / "profiles.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["dnd_profiles"])
        n = f.get_slice("scorer.mean").get_shape()[0]
    return meta.get("calibration", {}), n, (meta.get("features") or {}).get("precision", "float32")


def _metrics_or_none(root: Path, bundle: str) -> dict | None:
    path = root / "models" / bundle / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _detectors(root: Path) -> list[str]:
    """The shipped bundles with a detector (profiles), evaluated or not."""
    return [b for b in BUNDLES if (root / "models" / b / "profiles.safetensors").is_file()]


def _reports(root: Path) -> dict[str, dict]:
    return {name: _json(root, f"{d}/report.json") for name, d in REPORTS.items()}


BLOCKS: dict[str, Callable[[Path], str]] = {
    "bundles": lambda root: bundles_table({b: _json(root, f"models/{b}/metrics.json") for b in BUNDLES}),
    "paper": lambda root: paper_table({b: _metrics_or_none(root, b) for r in PAPER for b in r.ours}),
    "worst-cases": lambda root: worst_case_table(_reports(root)),
    "detection": lambda root: detection_table(_json(root, f"{REPORTS['resnet20-decoupled']}/report.json")),
    "detection-robust": lambda root: detection_table(
        _json(root, f"{REPORTS['resnet20-decoupled-robust']}/report.json")
    ),
    "adaptive": lambda root: adaptive_table(_reports(root)),
    "depth": lambda root: depth_table({name: _json(root, f"{d}/report.json") for name, d in DEPTH.items()}),
    "selection": lambda root: selection_summary(_json(root, "reports/selection/report.json")),
    "score-reads": lambda root: score_reads_table({b: _calibration(root, b) for b in _detectors(root)}),
    "calibration-record": lambda root: calibration_record_table(
        {b: _calibration(root, b)[0] for b in _detectors(root)}
    ),
    "ablation": lambda root: ablation_table(_json(root, f"{REPORTS['resnet20-decoupled']}/report.json")),
    "lee": lambda root: (
        lee_table(_json(root, f"{REPORTS['resnet20-decoupled']}/report.json"))
        or "(no Lee upper bound in this report: `dnd evaluate --lee-limit 0`)"
    ),
}
MARKED = re.compile(r"(<!-- dnd-docs:([\w-]+) -->\n)(.*?)(<!-- /dnd-docs:\2 -->)", re.S)


def rewrite(text: str, root: Path) -> str:
    """`text` with every marked block replaced by its table, rendered from the files under `root`."""

    def block(m: re.Match) -> str:
        name = m.group(2)
        if name not in BLOCKS:
            raise SystemExit(f"unknown docs block {name!r}: expected one of {', '.join(BLOCKS)}")
        return m.group(1) + BLOCKS[name](root) + "\n" + m.group(4)

    return MARKED.sub(block, text)


def markdown_files(root: Path) -> list[Path]:
    return [p for pattern in FILES for p in sorted(root.glob(pattern))]


def stale(root: Path = ROOT) -> list[str]:
    """The marked blocks, as FILE:NAME, whose text differs from what the reports give."""
    out = []
    for path in markdown_files(root):
        text = path.read_text()
        new = rewrite(text, root)
        if new != text:
            old_blocks = {m.group(2): m.group(3) for m in MARKED.finditer(text)}
            new_blocks = {m.group(2): m.group(3) for m in MARKED.finditer(new)}
            out += [f"{path.relative_to(root)}:{n}" for n in old_blocks if old_blocks[n] != new_blocks[n]]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table disagrees with its report")
    a = ap.parse_args(argv)
    if a.check:
        bad = stale()
        for b in bad:
            print(f"stale: {b} (run `make docs`)")
        return 1 if bad else 0
    for path in markdown_files(ROOT):
        text = path.read_text()
        new = rewrite(text, ROOT)
        if new != text:
            path.write_text(new)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
