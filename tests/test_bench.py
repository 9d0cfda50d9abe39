"""Smoke runs of bench/train_epoch.py (decoupled against dense training epochs), so the script cannot rot unnoticed:
`make bench` is not part of the test suite. Tiny settings: the figures themselves are not checked, only what the
script reads and prints. The float32 run is part of `make test`; the runs that train in bfloat16, which a CPU without
native bfloat16 emulates (30-80 s on 2 AMD EPYC Zen 3 cores), are slow (`make test-all`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "train_epoch.py"


def _run(*args: str) -> str:
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--rounds", "1", "--steps", "1", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, f"bench/train_epoch.py {' '.join(args)} failed:\n{r.stderr[-3000:]}"
    return r.stdout


FLOAT32_SETUPS = ["dense", "decoupled", "decoupled+kd", "decoupled+kd fp32-teacher", "decoupled+kd-offline"]


def _check_setups(out: str, setups: list[str], n_ratios: int) -> None:
    for name in setups:
        assert re.search(rf"^{re.escape(name)} +\d+\.\d ms/step", out, re.M), f"no timing line for {name!r}"
        assert f"\n{name}: top 2 operators by self CPU time" in out, f"no profile table for {name!r}"
    ratios = re.findall(r"training cost: (\d+\.\d\d)x", out)
    assert len(ratios) == n_ratios and all(float(r) > 0 for r in ratios), ratios


def test_train_epoch_float32_setups_and_profile() -> None:
    out = _run("--batch-size", "8", "--profile", "2")
    assert re.search(r"^tune_malloc: (applied|not applied)", out, re.M), out[:500]
    _check_setups(out, FLOAT32_SETUPS, 4)  # each decoupled setup against the dense one
    assert not re.search(r"^\S+ bf16 ", out, re.M), "a bfloat16 setup ran without --bf16"


@pytest.mark.slow
def test_train_epoch_setups_ratios_and_profile() -> None:
    out = _run("--batch-size", "8", "--bf16", "--profile", "2")
    _check_setups(out, [*FLOAT32_SETUPS, "dense bf16", "decoupled+kd bf16"], 7)


@pytest.mark.slow
def test_train_epoch_recipes_read_from_the_shipped_bundles() -> None:
    dense, dec = ROOT / "models" / "resnet20-dense", ROOT / "models" / "resnet20-decoupled"
    cfg_d = json.loads((dense / "config.json").read_text())["train"]
    cfg_f = json.loads((dec / "config.json").read_text())["train"]
    out = _run("--recipes", str(dense), str(dec))
    line_d = next(l for l in out.splitlines() if l.startswith("resnet20-dense ("))
    line_f = next(l for l in out.splitlines() if l.startswith("resnet20-decoupled ("))
    # each recipe at the batch size and precision its own config.json records
    assert f"batch {cfg_d['batch_size']} " in line_d and f"batch {cfg_f['batch_size']} " in line_f
    assert ("bf16" in line_d.split(")")[0]) == bool(cfg_d.get("bf16"))
    assert line_f.startswith("resnet20-decoupled (decoupled")
    m = re.search(r"fine-tune epoch / dense epoch +training cost: (\d+\.\d\d)x", out)
    assert m and float(m.group(1)) > 0, out[-500:]
