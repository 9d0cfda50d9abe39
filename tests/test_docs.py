"""The README's and docs' result tables are the reports' (scripts/docs.py, `make docs`): none disagrees with its
report, a changed figure in a report makes one disagree, and every marked block names a known table."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def docs_module():
    spec = importlib.util.spec_from_file_location("dnd_docs", ROOT / "scripts" / "docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_table_agrees_with_its_report() -> None:
    assert docs_module().stale(ROOT) == [], "run `make docs`"


def test_every_table_is_written_somewhere() -> None:
    docs = docs_module()
    text = "\n".join(p.read_text() for p in docs.markdown_files(ROOT))
    used = {m.group(2) for m in docs.MARKED.finditer(text)}
    assert used == set(docs.BLOCKS)
    for name in used:  # a block holds a rendered table, not the empty markers of a file never regenerated
        block = next(m.group(3) for m in docs.MARKED.finditer(text) if m.group(2) == name)
        assert block.count("\n|") >= 2, name


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The Markdown files, the reports and the bundles' metrics and profiles, copied so that a test can change one."""
    for rel in ("README.md", "docs", *(str(r.relative_to(ROOT)) for r in (ROOT / "reports").glob("*/report.json"))):
        src, dst = ROOT / rel, tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    for m in [*(ROOT / "models").glob("*/metrics.json"), *(ROOT / "models").glob("*/profiles.safetensors")]:
        (tmp_path / "models" / m.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(m, tmp_path / "models" / m.parent.name / m.name)
    return tmp_path


@pytest.mark.parametrize(
    "rel, change, stale_block",
    [
        ("reports/evaluation/report.json", ("attacks", "pgd", "detectors", "path", "auroc"), "README.md:detection"),
        ("reports/evaluation-robust/report.json", ("adaptive", "budgets", "8/255", "worst_case"), "README.md:adaptive"),
        ("models/resnet20-decoupled/metrics.json", ("test_accuracy",), "README.md:bundles"),
        (
            "reports/depth-resnet20/report.json",
            ("attacks", "fgsm", "detectors", "path", "auroc"),
            "docs/networks.md:depth",
        ),
    ],
)
def test_a_changed_figure_makes_its_table_stale(copy: Path, rel: str, change: tuple, stale_block: str) -> None:
    docs = docs_module()
    assert docs.stale(copy) == []
    path = copy / rel
    data = json.loads(path.read_text())
    node = data
    for key in change[:-1]:
        node = node[key]
    node[change[-1]] = round(node[change[-1]] * 0.9, 4)
    path.write_text(json.dumps(data))
    assert stale_block in docs.stale(copy)
    for md in docs.markdown_files(copy):  # what `make docs` does, then nothing is stale
        md.write_text(docs.rewrite(md.read_text(), copy))
    assert docs.stale(copy) == []


def test_the_paper_table_fills_in_once_a_bundle_is_trained(copy: Path) -> None:
    """docs/networks.md's table against the paper's Tables 1 and 2 reads models/*/metrics.json: a row says what to
    run until both of its bundles exist, then gives their accuracies, FLOPs reduction and filter states."""
    docs = docs_module()
    text = (copy / "docs" / "networks.md").read_text()
    for name in ("resnet56-dense", "resnet56-decoupled"):  # untrained: no metrics.json (profiles may stay)
        (copy / "models" / name / "metrics.json").unlink(missing_ok=True)
    text = docs.rewrite(text, copy)
    assert "not trained here yet (`resnet56-dense` and `resnet56-decoupled`" in text
    dense = json.loads((copy / "models" / "resnet20-dense" / "metrics.json").read_text())
    dec = json.loads((copy / "models" / "resnet20-decoupled" / "metrics.json").read_text())
    resnet56 = lambda t: next(line for line in t.splitlines() if line.startswith("| Table 1 | ResNet-56, CIFAR-10"))  # noqa: E731
    for name, src in (("resnet56-dense", "resnet20-dense"), ("resnet56-decoupled", "resnet20-decoupled")):
        shutil.copy(copy / "models" / src / "metrics.json", copy / "models" / name / "metrics.json")
        if name == "resnet56-dense":  # the dense network alone: its accuracy, and what to run for the rest
            row = resnet56(docs.rewrite(text, copy))
            assert f"{100 * dense['test_accuracy']:.2f}% → not trained here yet (`resnet56-decoupled`" in row
    assert "docs/networks.md:paper" in docs.stale(copy)
    table = docs.rewrite(text, copy)
    row = resnet56(table)
    assert f"{100 * dense['test_accuracy']:.2f}% → {100 * dec['test_accuracy']:.2f}%" in row
    assert f"({1 / dec['flops_ratio']:.2f}x)" in row and f"{dec['filter_states']['dynamic']} / " in row


def test_the_score_reads_table_says_what_precision_the_copies_run_in() -> None:
    from detector.evaluation.bundle_tables import score_reads_table

    cal = {"features": {"families": ["path", "consistency"], "transforms": {"median": "3 x 3 median filter"}}}
    table = score_reads_table({"a": (cal, 10, "bfloat16"), "b": ({}, 7, "float32")})
    rows = table.splitlines()[2:]
    assert rows[0] == "| `a` | path, consistency | 3 x 3 median filter | bfloat16 | 10 |"
    assert rows[1] == "| `b` | path | — | — | 7 |"  # no transforms: no copies to run


def test_the_calibration_record_table_shows_validation_attacks_and_the_worst_shift() -> None:
    from detector.evaluation.bundle_tables import calibration_record_table

    cal = {
        "validation": {"fgsm": {"offered": 10, "n": 8, "auroc": 0.9705, "flagged": 0.8275}, "cw": {"n": 0}},
        "threshold_shift_flagged": {"gaussian_noise": 0.02, "saturate": 0.139},
        "threshold_bound_by": "clean",
        "n_threshold_clean": 2000,
        "fpr_achieved": 0.05,
    }
    raised = {**cal, "threshold_bound_by": "saturate", "threshold_shift_flagged": {"saturate": 0.1}}
    small = {**cal, "n_threshold_clean": 200}  # ten times fewer threshold images: about three times the interval
    rows = calibration_record_table({"a": cal, "b": raised, "c": small, "old": {}}).splitlines()[2:]
    # an attack with no success: no cell
    assert rows[0] == "| `a` | 5.0% [4.1, 6.0] of 2,000 | fgsm 0.971 / 82.8% (8) | 13.9% (saturate) |"
    assert rows[1].endswith("| 10.0% (saturate; the threshold raised to bound saturate) |")
    assert rows[2].startswith("| `c` | 5.0% [2.7, 9.0] of 200 |")
    assert rows[3] == "| `old` | — | — | — |"
