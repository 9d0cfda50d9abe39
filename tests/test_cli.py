"""The `dnd` command line (dnd/): its commands' own behaviour, and clear errors for bad arguments."""

from pathlib import Path

import pytest

from dnd.cli import main


def test_attack_cli_writes_sets_within_budget(tiny_bundle: Path, tiny_data: Path, tmp_path: Path, capsys) -> None:
    from detector.attacks import load_attack_set

    assert (
        main(
            [
                "attack",
                "--model",
                str(tiny_bundle),
                "--data",
                str(tiny_data),
                "--attack",
                "fgsm,pgd",
                "--limit",
                "20",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "success rate" in capsys.readouterr().out
    for name in ("fgsm", "pgd"):
        s = load_attack_set(tmp_path / f"{name}.safetensors")
        assert s.name == name and s.params["eps"] == pytest.approx(8 / 255) and len(s.y) <= 20
        assert (s.x_adv - s.x_clean).abs().max() <= 8 / 255 + 1e-6 and s.x_adv.min() >= 0 and s.x_adv.max() <= 1
