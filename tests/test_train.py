"""`dnd train` (dnd/training/train.py): dense and decoupled runs, warm restarts, resuming, and refusals before any
work, on a tiny generated image folder."""

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dnd.cli import main

from .conftest import write_image_folder
from .pipeline import TINY_NET, TRAIN_TINY, dnd_train

TINY = TRAIN_TINY


def test_dense_smoke_run_writes_a_bundle(trained_dense: Path) -> None:
    assert {"model.safetensors", "config.json", "train_history.json", "training.png"} <= {
        p.name for p in trained_dense.iterdir()
    }
    cfg = json.loads((trained_dense / "config.json").read_text())
    assert cfg["phase"] == "dense" and cfg["train"]["epochs"] == 1 and len(cfg["data"]["train_fingerprint"]) == 16
    hist = json.loads((trained_dense / "train_history.json").read_text())
    assert len(hist) == 1 and 0 <= hist[0]["test_accuracy"] <= 1


def test_dense_init_is_a_warm_restart_from_those_weights(trained_dense: Path, tiny_data: Path, tmp_path: Path) -> None:
    # --init without --decouple once loaded the bundle and then trained from a fresh initialisation; with LR 0
    # every parameter must stay the init's (BN running statistics, buffers, still move)
    out = tmp_path / "warm"
    dnd_train(tiny_data, out, "--init", str(trained_dense), "--epochs", "1", "--lr", "0", *TINY)
    d, w = load_file(str(trained_dense / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(d) == set(w)
    params = [k for k in d if k.endswith(".weight") or k.endswith(".bias")]
    assert len(params) > 40 and all(torch.equal(d[k], w[k]) for k in params)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["phase"] == "dense" and cfg["init"]["path"] == str(trained_dense)


def test_decoupled_fine_tune_and_stats(trained_dense: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "dec"
    dnd_train(tiny_data, out, "--decouple", "--init", str(trained_dense), "--epochs", "1", *TINY)
    hist = json.loads((out / "train_history.json").read_text())
    assert hist[0]["filter_states"]["total"] == 672 and 0 < hist[0]["flops_ratio"] <= 1
    assert all(torch.isfinite(torch.tensor(hist[0][k])) for k in ("train_ce", "train_mi", "train_kl", "train_l1"))
    metrics = tmp_path / "metrics.json"
    assert main(["stats", "--model", str(out), "--data", str(tiny_data), "--out", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    assert (tmp_path / "filter_states.png").stat().st_size > 1000
    assert m["n_images"] == 100 and m["dense_macs"] == 40_551_040
    assert {
        "test_accuracy",
        "mean_macs",
        "flops_ratio",
        "filter_states",
        "per_layer",
        "parameters_without_silent",
    } <= set(m)
    # PGD-10 at 8/255 on a class-balanced sample: at most the clean accuracy of those images, recorded with its setting
    assert 0 <= m["test_robust_accuracy"] <= 1 and m["robust_eval"]["eps"] == 8.0
    # the dense weights were really the starting point: non-gate tensors moved only by the fine-tune
    d, c = load_file(str(trained_dense / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(d) < set(c) and all(".gate." in k for k in set(c) - set(d))


def test_bf16_flag_is_recorded_and_trains(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    # the ResNet-8 of the pipeline tests: bfloat16 is emulated on CPUs without native support, and what is checked
    # here is the flag and the bundle, not the network
    args = ["train", "--data", str(tiny_data), "--out", str(out), "--epochs", "1", "--bf16", *TINY, *TINY_NET]
    assert main(args) == 0
    assert json.loads((out / "config.json").read_text())["train"]["bf16"] is True
    weights = load_file(out / "model.safetensors")
    assert all(t.dtype in (torch.float32, torch.int64) for t in weights.values())  # the bundle stays float32
    from dnd.training.config import make_config

    assert make_config(False, {}).bf16 is False and make_config(True, {}).bf16 is False  # off unless asked for


def test_train_refuses_a_bad_cutout_size_before_loading_data(tmp_path: Path) -> None:
    from dnd.training.config import TrainConfig
    from dnd.training.train import train

    with pytest.raises(ValueError, match="--cutout: expected .* 0 \\(off\\) to 32, got -4"):
        train(tmp_path / "no-data", tmp_path / "out", TrainConfig(cutout=-4))


def test_train_refuses_unusable_settings_before_anything_is_written(tmp_path: Path) -> None:
    from dnd.training.config import TrainConfig, check_config, make_config
    from dnd.training.train import train

    # --epochs 0 used to run no epoch, write a bundle and then fail drawing the plot of an empty history
    with pytest.raises(ValueError, match="--epochs: expected at least 1, got 0"):
        train(tmp_path / "no-data", tmp_path / "out", TrainConfig(epochs=0))
    assert not (tmp_path / "out").exists()
    # every broken setting is named at once, with the value found
    with pytest.raises(ValueError) as e:
        check_config(TrainConfig(lr=-0.1, target_flops=1.5, hard_epochs=-1))
    assert "--lr: expected 0 or more, got -0.1" in str(e.value)
    assert "--target-flops: expected a FLOPs ratio, 0 (fixed --lambda-s) to 1, got 1.5" in str(e.value)
    assert "--hard-epochs: expected 0 or more, got -1" in str(e.value)
    # the defaults, dense and decoupled, pass
    check_config(make_config(False, {}))
    check_config(make_config(True, {}))


def _interrupted_after_first_epoch(tiny_data: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2-epoch dense run killed right after its first checkpoint."""
    import dnd.training.train as tr

    real_save = tr.save_checkpoint

    def crash_after_first(ckpt_dir, modules, opt, meta):
        real_save(ckpt_dir, modules, opt, meta)
        raise KeyboardInterrupt

    monkeypatch.setattr(tr, "save_checkpoint", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        main(["train", "--data", str(tiny_data), "--out", str(out), "--epochs", "2", *TINY])
    monkeypatch.setattr(tr, "save_checkpoint", real_save)


def test_resume_after_interruption(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "r"
    _interrupted_after_first_epoch(tiny_data, out, monkeypatch)
    assert not (out / "model.safetensors").exists()
    assert main(["train", "--data", str(tiny_data), "--out", str(out), "--epochs", "2", "--resume", *TINY]) == 0
    hist = json.loads((out / "train_history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    straight = tmp_path / "s"
    assert main(["train", "--data", str(tiny_data), "--out", str(straight), "--epochs", "2", *TINY]) == 0
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_checkpoint_from_before_a_setting_existed_resumes_at_its_old_behaviour(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # A run checkpointed before `kd_teacher_bf16` existed has no such key; it resumes as what it was (the class
    # default, fp32), and is refused if the resuming command asks for the other value.
    out = tmp_path / "old"
    _interrupted_after_first_epoch(tiny_data, out, monkeypatch)
    meta_path = out / "checkpoint" / "state.json"
    meta = json.loads(meta_path.read_text())
    del meta["train"]["kd_teacher_bf16"]
    meta_path.write_text(json.dumps(meta))
    args = ["train", "--data", str(tiny_data), "--out", str(out), "--epochs", "2", "--resume", *TINY]
    assert main([*args, "--kd-teacher-bf16"]) == 2
    assert "other settings" in (err := capsys.readouterr().err)
    assert "kd_teacher_bf16: checkpoint False, this command True" in err  # names what differs
    assert main(args) == 0
    assert [h["epoch"] for h in json.loads((out / "train_history.json").read_text())] == [1, 2]


def test_resume_with_other_settings_is_refused(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "x"
    assert main(["train", "--data", str(tiny_data), "--out", str(out), "--epochs", "1", *TINY]) == 0
    assert (
        main(["train", "--data", str(tiny_data), "--out", str(out), "--epochs", "1", "--lr", "0.5", "--resume", *TINY])
        == 2
    )
    err = capsys.readouterr().err
    assert "other settings" in err and "lr: checkpoint 0.2, this command 0.5" in err and "epochs" not in err


def test_finished_bundle_without_checkpoint_is_not_retrained(
    trained_dense: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # A committed bundle keeps no checkpoint; training into it (with or without --resume) would start from scratch
    # and overwrite it. Refused before any data is read, and the bundle is left byte for byte.
    out = tmp_path / "finished"
    shutil.copytree(trained_dense, out, ignore=shutil.ignore_patterns("checkpoint"))
    before = (out / "model.safetensors").read_bytes()
    for extra in ([], ["--resume"]):
        assert main(["train", "--data", str(tiny_data), "--out", str(out), "--epochs", "1", *extra, *TINY]) == 2
        err = capsys.readouterr().err
        assert "holds a finished bundle" in err and "no checkpoint to resume" in err
    assert (out / "model.safetensors").read_bytes() == before and not (out / "checkpoint").exists()


def test_decouple_without_init_is_refused(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "o"), "--decouple"]) == 2
    assert "--init" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, target, nth",
    [
        ("resnet20-dense", "train-dense", 0),
        ("resnet20-decoupled", "train-decoupled", 0),
        ("resnet20-dense-robust", "train-robust", 0),
        ("resnet20-decoupled-robust", "train-robust", 1),
    ],
)
def test_make_targets_reproduce_the_shipped_recipes(name: str, target: str, nth: int) -> None:
    # `make train-dense` / `make train-decoupled` must ask for exactly the settings the shipped bundles recorded in
    # config.json (fields added since then count at their class defaults: training.config.saved_config), or those
    # targets would not reproduce them. The command is the one make would run, parsed by dnd's own parser.
    from dnd.cli import build_parser
    from dnd.commands.train import train_config
    from dnd.training.config import saved_config

    root = Path(__file__).parents[1]
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "-s", target], cwd=root, capture_output=True, text=True, check=True).stdout
    line = [ln for ln in out.splitlines() if ln.startswith(".venv/bin/dnd train ")][nth]
    recorded = json.loads((root / "models" / name / "config.json").read_text())["train"]
    assert train_config(build_parser().parse_args(shlex.split(line)[1:])).to_dict() == saved_config(recorded)


def test_a_new_network_takes_its_data_s_classes_and_other_data_is_refused(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A folder of 3 classes trains a 3-class network labelled with the folder's names; a bundle refuses data whose
    classes are not its own, naming both, in `dnd train --init`, `dnd stats` and `dnd profiles`."""
    from detector import load_model

    own = write_image_folder(tmp_path / "own", n_train=20, n_test=6, classes=("apple", "pear", "plum"))
    out = tmp_path / "fruit"
    args = ["--epochs", "1", "--blocks-per-stage", "1", "--widths", "4,8,8", *TINY, "--batch-size", "16"]
    assert main(["train", "--data", str(own), "--out", str(out), *args]) == 0
    cfg = json.loads((out / "config.json").read_text())["model"]
    assert cfg["classes"] == ["apple", "pear", "plum"] and cfg["num_classes"] == 3
    from detector.data import load_split, to_unit_float

    x = to_unit_float(load_split(own, "train").x).double()
    assert cfg["mean"] == pytest.approx(x.mean((0, 2, 3)).tolist(), abs=1e-4)  # the data's statistics, not CIFAR-10's
    assert cfg["std"] == pytest.approx(x.std((0, 2, 3)).tolist(), abs=1e-4)
    assert load_model(out)(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    capsys.readouterr()
    for argv in (
        ["train", "--data", str(tiny_data), "--out", str(tmp_path / "x"), "--init", str(out), "--epochs", "1"],
        ["stats", "--model", str(out), "--data", str(tiny_data), "--robust-eps", "0"],
        ["profiles", "--model", str(out), "--data", str(tiny_data)],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "expected the classes ['apple', 'pear', 'plum']" in err and "'airplane'" in err, argv
