"""scripts/ship_check.py: the shipping rule on hand-built metrics and reports."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "ship_check.py"


def _pair(
    root: Path,
    dense_dir: str,
    dec_dir: str,
    report_dir: str,
    dense: float,
    dec: float,
    auroc: dict[str, float],
    flops: float = 0.68,
    dynamic: int = 527,
) -> None:
    # ship_check reads FLOPs and filter states of the fine-tune only; the dense file carries the same, unread.
    states = {"activated": 672 - dynamic, "dynamic": dynamic, "silent": 0, "total": 672}
    for d, acc in ((dense_dir, dense), (dec_dir, dec)):
        (root / d).mkdir(parents=True)
        (root / d / "metrics.json").write_text(
            json.dumps({"test_accuracy": acc, "flops_ratio": flops, "filter_states": states})
        )
    (root / report_dir).mkdir(parents=True)
    attacks = {a: {"detectors": {"path": {"auroc": v}}} for a, v in auroc.items()}
    (root / report_dir / "report.json").write_text(json.dumps({"attacks": attacks}))


def _check(root: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), name, "--root", str(root)], capture_output=True, text=True)


SHIPPED = {"fgsm": 0.91, "pgd": 0.95, "cw": 0.84, "deepfool": 0.89}


@pytest.mark.parametrize(
    "dense, dec, auroc, flops, dynamic, ok",
    [
        (0.886, 0.880, SHIPPED, 0.68, 527, True),  # every rule holds
        (0.884, 0.880, SHIPPED, 0.68, 527, False),  # dense below 88.5%
        (0.890, 0.878, SHIPPED, 0.68, 527, False),  # fine-tune 1.2 points below its dense
        (0.890, 0.885, {**SHIPPED, "fgsm": 0.899}, 0.68, 527, False),  # FGSM floor
        (0.890, 0.885, {**SHIPPED, "cw": 0.79}, 0.68, 527, False),  # mean falls by 0.0125
        (0.890, 0.885, {**SHIPPED, "cw": 0.81}, 0.68, 527, True),  # mean falls by 0.0075
        (0.890, 0.885, SHIPPED, 0.7005, 527, False),  # FLOPs above 0.70 x dense
        (0.890, 0.885, SHIPPED, 0.70, 101, True),  # at both limits (101 / 672 = 15.03%)
        (0.890, 0.885, SHIPPED, 0.68, 100, False),  # 100 / 672 = 14.9% dynamic
    ],
)
def test_rule(
    tmp_path: Path, dense: float, dec: float, auroc: dict[str, float], flops: float, dynamic: int, ok: bool
) -> None:
    _pair(tmp_path, "models/resnet20-dense", "models/resnet20-decoupled", "reports/evaluation", 0.878, 0.881, SHIPPED)
    _pair(tmp_path, "runs/x-dense", "runs/x-decoupled", "runs/x-evaluation", dense, dec, auroc, flops, dynamic)
    r = _check(tmp_path, "x")
    assert r.returncode == (0 if ok else 1), r.stdout + r.stderr
    assert ("ship it" if ok else "do not ship") in r.stdout


def test_missing_candidate_is_exit_2(tmp_path: Path) -> None:
    r = _check(tmp_path, "nope")
    assert r.returncode == 2 and "make candidate" in r.stderr


def _init(root: Path, dec_dir: str, dense_dir: str, dense_sha: str, recorded_sha: str) -> None:
    (root / dense_dir / "config.json").write_text(json.dumps({"weights_sha256": dense_sha}))
    (root / dec_dir / "config.json").write_text(
        json.dumps({"init": {"path": dense_dir, "weights_sha256": recorded_sha}})
    )


def test_dense_comes_from_the_fine_tunes_init(tmp_path: Path) -> None:
    # runs/x-dense (92%) is a decoy: the fine-tune recorded runs/other-dense (88.0%) as its start, so rule 4 fails.
    _pair(tmp_path, "models/resnet20-dense", "models/resnet20-decoupled", "reports/evaluation", 0.878, 0.881, SHIPPED)
    _pair(tmp_path, "runs/x-dense", "runs/x-decoupled", "runs/x-evaluation", 0.92, 0.915, SHIPPED)
    (tmp_path / "runs/other-dense").mkdir()
    (tmp_path / "runs/other-dense/metrics.json").write_text(json.dumps({"test_accuracy": 0.880, "flops_ratio": 1.0}))
    _init(tmp_path, "runs/x-decoupled", "runs/other-dense", "abc", "abc")
    r = _check(tmp_path, "x")
    assert r.returncode == 1 and "runs/other-dense" in r.stdout and "FAILS  dense accuracy" in r.stdout, r.stdout


def test_dense_with_other_weights_is_exit_2(tmp_path: Path) -> None:
    _pair(tmp_path, "models/resnet20-dense", "models/resnet20-decoupled", "reports/evaluation", 0.878, 0.881, SHIPPED)
    _pair(tmp_path, "runs/x-dense", "runs/x-decoupled", "runs/x-evaluation", 0.89, 0.885, SHIPPED)
    _init(tmp_path, "runs/x-decoupled", "runs/x-dense", "retrained", "original")
    r = _check(tmp_path, "x")
    assert r.returncode == 2 and "original" in r.stderr and "retrained" in r.stderr


def _details(root: Path, dec_dir: str, report_dir: str, states: tuple[int, int, int], kept: float) -> None:
    """Add what `--all` shows beyond the rule: filter states, Mahalanobis AUROC, the adaptive attack."""
    m = json.loads((root / dec_dir / "metrics.json").read_text())
    m["filter_states"] = dict(zip(("activated", "dynamic", "silent"), states)) | {"total": sum(states)}
    (root / dec_dir / "metrics.json").write_text(json.dumps(m))
    r = json.loads((root / report_dir / "report.json").read_text())
    for a in r["attacks"].values():
        a["detectors"]["mahalanobis"] = {"auroc": 0.5}
    r["adaptive"] = {"accuracy_kept": kept}
    (root / report_dir / "report.json").write_text(json.dumps(r))


def test_all_tables_finished_candidates_with_the_rules_they_fail(tmp_path: Path) -> None:
    _pair(tmp_path, "models/resnet20-dense", "models/resnet20-decoupled", "reports/evaluation", 0.878, 0.881, SHIPPED)
    _details(tmp_path, "models/resnet20-decoupled", "reports/evaluation", (145, 527, 0), 0.008)
    _pair(tmp_path, "runs/a-dense", "runs/a-decoupled", "runs/a-evaluation", 0.890, 0.878, SHIPPED)  # gap 1.2
    _details(tmp_path, "runs/a-decoupled", "runs/a-evaluation", (100, 572, 0), 0.015)
    _pair(tmp_path, "runs/b-dense", "runs/b-decoupled", "runs/b-evaluation", 0.886, 0.880, SHIPPED)  # every rule
    _details(tmp_path, "runs/b-decoupled", "runs/b-evaluation", (90, 580, 2), 0.0)
    _pair(tmp_path, "runs/s-dense", "runs/s-decoupled", "runs/s-evaluation", 0.878, 0.881, SHIPPED)  # shipped
    _details(tmp_path, "runs/s-decoupled", "runs/s-evaluation", (145, 527, 0), 0.008)
    for d in ("models/resnet20-decoupled", "runs/s-decoupled"):  # the same weights as models/
        (tmp_path / d / "config.json").write_text(json.dumps({"weights_sha256": "f00d"}))
    (tmp_path / "runs/b-decoupled/config.json").write_text(json.dumps({"weights_sha256": "beef"}))
    (tmp_path / "runs/c-decoupled").mkdir()  # not finished: no metrics, no report
    r = subprocess.run([sys.executable, str(SCRIPT), "--all", "--root", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = r.stdout.strip().splitlines()
    assert len(rows) == 6 and rows[2].startswith("| shipped"), r.stdout  # header, rule, shipped, a, b, s
    assert rows[3].startswith("| `a` | 89.00% | 87.80% | -1.20 | 0.680 | 100 / 572 / 0 | 0.910 / 0.950 / 0.840 / 0.890")
    assert rows[3].endswith("| 1.5% | fine-tune within 1.0 point of its dense |")
    assert rows[4].startswith("| `b` |") and "| 90 / 580 / 2 |" in rows[4] and rows[4].endswith("| none: ship it |")
    assert rows[5].startswith("| `s` |") and rows[5].endswith("| none: shipped (the weights in `models/`) |")


def test_name_and_all_are_exclusive(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "x", "--all", "--root", str(tmp_path)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "exactly one" in r.stderr
