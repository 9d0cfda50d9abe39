"""`dnd train` / `dnd stats` end to end on a tiny generated image folder (a few hundred images)."""

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

TINY = ["--batch-size", "64", "--eval-limit", "50", "--threads", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("data"), n_train=30, n_test=10)


@pytest.fixture(scope="module")
def dense(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "dense"
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", *TINY]) == 0
    return out


def test_dense_smoke_run_writes_a_bundle(dense: Path) -> None:
    assert {"model.safetensors", "config.json", "train_history.json", "training.png"} <= {
        p.name for p in dense.iterdir()
    }
    cfg = json.loads((dense / "config.json").read_text())
    assert cfg["phase"] == "dense" and cfg["train"]["epochs"] == 1 and len(cfg["data"]["train_fingerprint"]) == 16
    hist = json.loads((dense / "train_history.json").read_text())
    assert len(hist) == 1 and 0 <= hist[0]["test_accuracy"] <= 1


def test_dense_init_is_a_warm_restart_from_those_weights(dense: Path, data: Path, tmp_path: Path) -> None:
    # --init without --decouple once loaded the bundle and then trained from a fresh initialisation; with LR 0
    # every parameter must stay the init's (BN running statistics, buffers, still move)
    out = tmp_path / "warm"
    assert (
        main(
            ["train", "--data", str(data), "--out", str(out), "--init", str(dense), "--epochs", "1", "--lr", "0", *TINY]
        )
        == 0
    )
    d, w = load_file(str(dense / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(d) == set(w)
    params = [k for k in d if k.endswith(".weight") or k.endswith(".bias")]
    assert len(params) > 40 and all(torch.equal(d[k], w[k]) for k in params)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["phase"] == "dense" and cfg["init"]["path"] == str(dense)


def test_decoupled_fine_tune_and_stats(dense: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "dec"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(out),
                "--decouple",
                "--init",
                str(dense),
                "--epochs",
                "1",
                *TINY,
            ]
        )
        == 0
    )
    hist = json.loads((out / "train_history.json").read_text())
    assert hist[0]["filter_states"]["total"] == 672 and 0 < hist[0]["flops_ratio"] <= 1
    assert all(torch.isfinite(torch.tensor(hist[0][k])) for k in ("train_ce", "train_mi", "train_kl", "train_l1"))
    metrics = tmp_path / "metrics.json"
    assert main(["stats", "--model", str(out), "--data", str(data), "--out", str(metrics)]) == 0
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
    d, c = load_file(str(dense / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(d) < set(c) and all(".gate." in k for k in set(c) - set(d))


def test_distillation_from_the_init_bundle(dense: Path, data: Path, tmp_path: Path) -> None:
    from dnd.training.distill import distill_loss

    logits = torch.randn(4, 10)
    assert float(distill_loss(logits, logits, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(torch.zeros(4, 10), logits, 4.0)) > 0
    # the term reaches the update of a decoupled step (it once was computed, logged and then dropped from the loss)
    import copy

    from detector.config import ModelConfig
    from detector.losses import DecouplingLoss
    from detector.model import build_model
    from dnd.training.config import TrainConfig
    from dnd.training.step import make_optimizers, train_step

    torch.manual_seed(0)
    base, teacher = build_model(ModelConfig(decoupled=True)), build_model(ModelConfig()).eval()
    xb, yb = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    after = []
    for lam in (0.0, 1.0):
        m, cfg = copy.deepcopy(base), TrainConfig(lambda_kd=lam)
        loss_mod = DecouplingLoss([u.cout for u in m.units()], 10)
        torch.manual_seed(1)
        train_step(m, loss_mod, make_optimizers(m, loss_mod, cfg), xb, yb, cfg, 0.0, 1, teacher if lam else None)
        after.append(m.fc.weight.detach().clone())
    assert not torch.allclose(after[0], after[1])
    out = tmp_path / "kd"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(out),
                "--decouple",
                "--init",
                str(dense),
                "--epochs",
                "1",
                *TINY,
            ]
        )
        == 0
    )  # distillation is on by default for --decouple
    hist = json.loads((out / "train_history.json").read_text())
    recorded = json.loads((out / "config.json").read_text())["train"]
    assert hist[0]["train_kd"] > 0 and recorded["lambda_kd"] == 1.0 and recorded["kd_teacher_bf16"] is True
    from dnd.training.config import make_config

    assert make_config(False, {}).lambda_kd == 0.0  # a dense run from scratch has no teacher


def test_bf16_teacher_gives_float32_logits_close_to_fp32() -> None:
    from detector.config import ModelConfig
    from detector.model import build_model
    from dnd.training.distill import teacher_forward, teacher_logits

    torch.manual_seed(0)
    teacher, x = build_model(ModelConfig()).eval().requires_grad_(False), torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        ref, low = teacher_forward(teacher, x, bf16=False), teacher_forward(teacher, x, bf16=True)
    assert low.dtype == torch.float32 and low.shape == ref.shape == (16, 10)
    # bf16 keeps 8 mantissa bits: close to fp32, and not bit-identical (the autocast really ran)
    assert not torch.equal(low, ref) and torch.allclose(low, ref, atol=0.05 * float(ref.abs().max()))
    t = teacher_logits(teacher, x, bf16=True, batch_size=5)
    cl = x.contiguous(memory_format=torch.channels_last)  # as teacher_logits feeds it
    with torch.no_grad():
        expect = torch.cat([teacher_forward(teacher, cl[i : i + 5], True) for i in range(0, 16, 5)])
    assert t.dtype == torch.float32 and torch.equal(t[0], expect)


@pytest.mark.parametrize("decouple", [False, True])
def test_bf16_step_keeps_float32_losses_and_gradients_reach_every_parameter(decouple: bool) -> None:
    from dataclasses import replace

    from detector.config import ModelConfig
    from detector.losses import DecouplingLoss
    from detector.model import build_model
    from detector.stats import dense_macs
    from dnd.training.config import make_config
    from dnd.training.step import step_loss

    torch.manual_seed(0)
    model = build_model(replace(ModelConfig(), decoupled=decouple)).to(memory_format=torch.channels_last).train()
    loss_mod = DecouplingLoss([u.cout for u in model.units()], 10) if decouple else None
    x, y = torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (8,))
    results = {}
    for bf16 in (False, True):
        cfg = make_config(decouple, {"bf16": bf16, "lambda_kd": 0.0})
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same gate noise in both passes
        loss, terms = step_loss(model, loss_mod, x, y, cfg, 0.1, dense_macs(model))
        loss.backward()
        results[bf16] = (loss.detach(), terms)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert all(t.dtype in (torch.float32, torch.float64) for t in terms.values())
        for name, p in model.named_parameters():  # master weights and their gradients stay float32
            assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32, name
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"no gradient reached {name}"
    # the autocast really ran (not bit-identical), and the cross-entropy stays close to the float32 one
    ce32, ce16 = results[False][1]["ce"], results[True][1]["ce"]
    assert not torch.equal(ce32, ce16) and abs(float(ce32) - float(ce16)) < 0.05 * float(ce32)


def test_bf16_flag_is_recorded_and_trains(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--bf16", *TINY]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["bf16"] is True
    weights = load_file(out / "model.safetensors")
    assert all(t.dtype in (torch.float32, torch.int64) for t in weights.values())  # the bundle stays float32
    from dnd.training.config import make_config

    assert make_config(False, {}).bf16 is False and make_config(True, {}).bf16 is False  # off unless asked for


@pytest.mark.parametrize("decoupled", [False, True])
def test_frozen_teacher_folds_batchnorm_and_keeps_the_logits(decoupled: bool) -> None:
    import copy

    from detector.config import ModelConfig
    from detector.model import build_model
    from dnd.training.distill import frozen_teacher

    torch.manual_seed(0)
    net = build_model(ModelConfig(decoupled=decoupled))
    net.train()
    with torch.no_grad():  # BN statistics and affine parameters away from their identity initialisation
        for _ in range(3):
            net(torch.rand(64, 3, 32, 32) * 2)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    net.eval()
    x = torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        ref = net.forward_paths(x)
        teacher = frozen_teacher(copy.deepcopy(net), torch.device("cpu"))
        got = teacher.forward_paths(x.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert torch.allclose(got.logits, ref.logits, atol=1e-4, rtol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(got.z, ref.z))  # the gates read the conv input: same paths


def test_augment_crops_and_mirrors_each_image_at_its_offsets() -> None:
    from dnd.training.augment import augment, crop_flip_params

    x = torch.rand(16, 3, 32, 32)
    ij, flip = crop_flip_params(16, torch.Generator().manual_seed(0))
    out = augment(x, ij, flip)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    assert flip.any() and (~flip).any() and out.shape == x.shape
    for k in range(16):  # the per-image definition: crop, then mirror
        i, j = ij[k].tolist()
        crop = padded[k, :, i : i + 32, j : j + 32]
        assert torch.equal(out[k], crop.flip(2) if flip[k] else crop)
    assert torch.equal(augment(x[3:4], ij[3:4], flip[3:4])[0], out[3])  # batched == unbatched


def test_cutout_zeroes_one_clipped_square_per_image() -> None:
    from dnd.training.augment import cutout, cutout_params

    x = torch.rand(64, 3, 32, 32) + 0.1  # no zeros of its own
    centre = cutout_params(64, torch.Generator().manual_seed(0))
    centre[0], centre[1] = torch.tensor([16, 16]), torch.tensor([0, 31])  # one square inside, one in a corner
    out = cutout(x, centre, 16)
    for k in range(64):  # the per-image definition
        i, j = centre[k].tolist()
        r0, c0 = max(i - 8, 0), max(j - 8, 0)
        r1, c1 = min(i + 8, 32), min(j + 8, 32)
        ref = x[k].clone()
        ref[:, r0:r1, c0:c1] = 0
        assert torch.equal(out[k], ref)
    assert (out[0] == 0).sum() == 3 * 16 * 16 and (out[1] == 0).sum() == 3 * 8 * 9
    assert torch.equal(cutout(x[5:6], centre[5:6], 16)[0], out[5])  # batched == unbatched
    assert torch.equal(cutout(x, centre, 0), x)


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


def test_offline_distillation_targets_and_run(dense: Path, data: Path, tmp_path: Path) -> None:
    from detector.config import ModelConfig
    from detector.model import build_model
    from dnd.training.distill import teacher_logits

    torch.manual_seed(0)
    teacher, x = build_model(ModelConfig()).eval(), torch.rand(7, 3, 32, 32)
    t = teacher_logits(teacher, x, batch_size=3)  # ragged last batch
    assert t.shape == (2, 7, 10) and not t.requires_grad
    with torch.no_grad():
        assert torch.allclose(t[0], teacher(x), atol=1e-5) and torch.allclose(t[1], teacher(x.flip(3)), atol=1e-5)
    out = tmp_path / "kd-offline"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(out),
                "--decouple",
                "--init",
                str(dense),
                "--epochs",
                "1",
                "--kd-offline",
                *TINY,
            ]
        )
        == 0
    )
    hist = json.loads((out / "train_history.json").read_text())
    assert hist[0]["train_kd"] > 0 and json.loads((out / "config.json").read_text())["train"]["kd_offline"] is True
    from dnd.training.config import make_config

    assert make_config(True, {}).kd_offline is False


def _interrupted_after_first_epoch(data: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2-epoch dense run killed right after its first checkpoint."""
    import dnd.training.train as tr

    real_save = tr.save_checkpoint

    def crash_after_first(ckpt_dir, modules, opt, meta):
        real_save(ckpt_dir, modules, opt, meta)
        raise KeyboardInterrupt

    monkeypatch.setattr(tr, "save_checkpoint", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        main(["train", "--data", str(data), "--out", str(out), "--epochs", "2", *TINY])
    monkeypatch.setattr(tr, "save_checkpoint", real_save)


def test_resume_after_interruption(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "r"
    _interrupted_after_first_epoch(data, out, monkeypatch)
    assert not (out / "model.safetensors").exists()
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "2", "--resume", *TINY]) == 0
    hist = json.loads((out / "train_history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    straight = tmp_path / "s"
    assert main(["train", "--data", str(data), "--out", str(straight), "--epochs", "2", *TINY]) == 0
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_checkpoint_from_before_a_setting_existed_resumes_at_its_old_behaviour(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # A run checkpointed before `kd_teacher_bf16` existed has no such key; it resumes as what it was (the class
    # default, fp32), and is refused if the resuming command asks for the other value.
    out = tmp_path / "old"
    _interrupted_after_first_epoch(data, out, monkeypatch)
    meta_path = out / "checkpoint" / "state.json"
    meta = json.loads(meta_path.read_text())
    del meta["train"]["kd_teacher_bf16"]
    meta_path.write_text(json.dumps(meta))
    args = ["train", "--data", str(data), "--out", str(out), "--epochs", "2", "--resume", *TINY]
    assert main([*args, "--kd-teacher-bf16"]) == 2
    assert "other settings" in (err := capsys.readouterr().err)
    assert "kd_teacher_bf16: checkpoint False, this command True" in err  # names what differs
    assert main(args) == 0
    assert [h["epoch"] for h in json.loads((out / "train_history.json").read_text())] == [1, 2]


def test_resume_with_other_settings_is_refused(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "x"
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", *TINY]) == 0
    assert (
        main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--lr", "0.5", "--resume", *TINY]) == 2
    )
    err = capsys.readouterr().err
    assert "other settings" in err and "lr: checkpoint 0.2, this command 0.5" in err and "epochs" not in err


def test_finished_bundle_without_checkpoint_is_not_retrained(
    dense: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # A committed bundle keeps no checkpoint; training into it (with or without --resume) would start from scratch
    # and overwrite it. Refused before any data is read, and the bundle is left byte for byte.
    out = tmp_path / "finished"
    shutil.copytree(dense, out, ignore=shutil.ignore_patterns("checkpoint"))
    before = (out / "model.safetensors").read_bytes()
    for extra in ([], ["--resume"]):
        assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", *extra, *TINY]) == 2
        err = capsys.readouterr().err
        assert "holds a finished bundle" in err and "no checkpoint to resume" in err
    assert (out / "model.safetensors").read_bytes() == before and not (out / "checkpoint").exists()


def test_bad_data_path_is_a_clear_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "cifar-10-batches-py" in err and "train/<class>" in err


def test_decouple_without_init_is_refused(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "o"), "--decouple"]) == 2
    assert "--init" in capsys.readouterr().err


def test_predict_prints_label_and_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    from detector import ModelConfig, build_model, save_bundle

    save_bundle(build_model(ModelConfig(decoupled=True)).eval(), tmp_path / "b", {})
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    assert main(["predict", "--model", str(tmp_path / "b"), str(tmp_path / "red.png")]) == 0
    rec = json.loads(capsys.readouterr().out.strip())
    assert rec["label"] in ModelConfig().classes and rec["resized_from"] == [40, 30]
    assert len(rec["open_filters_per_layer"]) == 18 and 0 <= rec["path_density"] <= 1
    assert "attack_score" not in rec  # no profiles in this bundle: classifier only


def test_predict_checks_every_path_before_printing_anything(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    # a directory used to end in an IsADirectoryError traceback, after the earlier images' lines were printed; the
    # bundle does not exist either: the paths are checked before it would be loaded
    argv = ["predict", "--model", str(tmp_path / "no-bundle"), str(tmp_path / "ok.png"), str(tmp_path), "nosuch.jpg"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"expected image files, found: {tmp_path} (a directory), nosuch.jpg (not found)" in err


def test_predict_with_profiles_scores_the_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    from .conftest import write_detector_bundle

    write_detector_bundle(tmp_path / "b")
    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "g.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert main(["predict", "--model", str(tmp_path / "b"), str(tmp_path / "g.png")]) == 0
    rec = json.loads(capsys.readouterr().out.strip())
    assert isinstance(rec["is_adversarial"], bool) and rec["threshold"] == 0.0 and rec["resized_from"] is None
    assert main(["predict", "--model", str(tmp_path / "b"), str(tmp_path / "bad.png")]) == 2
    assert "bad.png" in capsys.readouterr().err


@pytest.mark.slow  # torch.compile's inductor takes about a minute on 2 CPU cores: `make test-all`
def test_compiled_step_matches_eager() -> None:
    # --compile must change the speed only: with deterministic paths (no noise, all hard, as in the final epochs)
    # the compiled forward + losses give the eager values and gradients. Small network: compilation takes ~1 min.
    import copy

    from detector.config import ModelConfig
    from detector.losses import DecouplingLoss
    from detector.model import build_model
    from dnd.training.config import TrainConfig
    from dnd.training.step import compiled_step_loss, step_loss

    torch.manual_seed(0)
    base = build_model(ModelConfig(decoupled=True, widths=(8, 16, 32), blocks_per_stage=1))
    base.set_gate_training(noise_std=0.0, p_hard=1.0)
    teacher = build_model(ModelConfig(widths=(8, 16, 32), blocks_per_stage=1)).eval().requires_grad_(False)
    xb, yb = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    cfg = TrainConfig(lambda_kd=1.0)
    grads, losses = [], []
    for fn in (step_loss, compiled_step_loss()):
        m = copy.deepcopy(base).train()
        torch.manual_seed(1)  # the same MI heads for both
        loss_mod = DecouplingLoss([u.cout for u in m.units()], 10)
        loss, terms = fn(m, loss_mod, xb, yb, cfg, torch.tensor(0.1, dtype=torch.float64), 1, teacher)
        loss.backward()
        losses.append((float(loss.detach()), {k: float(v) for k, v in terms.items()}))
        grads.append([p.grad.clone() for p in (*m.parameters(), *loss_mod.parameters())])
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-4)
    assert losses[0][1] == pytest.approx(losses[1][1], rel=1e-4, abs=1e-6)
    gate_grads = [g for g, (n, _) in zip(grads[0], base.named_parameters()) if ".gate." in n]
    assert gate_grads and all(g.abs().sum() > 0 for g in gate_grads)  # the comparison covers live gate gradients
    for ge, gc in zip(*grads):
        torch.testing.assert_close(gc, ge, rtol=1e-3, atol=1e-5)


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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["serve", "--port", "99999"], "argument --port: expected a TCP port from 1 to 65535, got '99999'"),
        (
            ["profiles", "--model", "m", "--data", "d", "--fpr", "1.5"],
            "argument --fpr: expected a rate from 0 to below 1 (0.05 = 5%), got '1.5'",
        ),
        (
            ["evaluate", "--model", "m", "--data", "d", "--out", "o", "--limit", "-5"],
            "argument --limit: expected a whole number >= 0, got '-5'",
        ),
        (
            ["attack", "--model", "m", "--data", "d", "--out", "o", "--threads", "two"],
            "argument --threads: expected a whole number >= 0, got 'two'",
        ),
    ],
)
def test_out_of_range_numbers_are_refused_while_parsing(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    # before any model, data or attack is touched: --fpr 1.5 used to be refused only after ~20 min of attacks
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_device_and_out_are_checked_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a-file").write_text("x")
    image = tmp_path / "i.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    # the bundle does not exist: each check must come before it would be loaded (a bad device used to end in a
    # torch RuntimeError traceback)
    cases = [
        (["predict", "--model", "none", "--device", "foo", str(image)], "--device 'foo': expected cpu, cuda or cuda:N"),
        (["predict", "--model", "none", "--device", "cuda:7", str(image)], "--device cuda:7: "),
        (
            ["evaluate", "--model", "none", "--data", "d", "--out", str(tmp_path / "a-file")],
            f"--out {tmp_path / 'a-file'} is a file; expected a directory",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", "m", "--data", "d", "--out", "o", "--threshold", "nan"])
    assert "argument --threshold: expected a finite number, got 'nan'" in capsys.readouterr().err
