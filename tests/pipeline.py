"""The trained tiny bundle the pipeline tests share, built once per test run (a dense ResNet-8 on generated images,
its decoupling fine-tune and `dnd profiles`), and the flags that keep every step cheap. tests/conftest.py imports the
fixtures (`tiny_data`, `tiny_bundle`, `trained_dense`) at the root of the tests package, so "package" scope builds
each once for every test below it."""

import os
from pathlib import Path

import pytest

from dnd.cli import main


def dnd_train(data: Path, out: Path, *flags: str) -> Path:
    """`dnd train --data DATA --out OUT FLAGS...`, which must succeed; returns OUT."""
    assert main(["train", "--data", str(data), "--out", str(out), *flags]) == 0
    return out


# torch threads of a test: both cores, or one per worker when pytest-xdist runs two tests at once (`make test`): two
# workers of two threads each on two cores ran the suite 1.9x slower than one process
XDIST_WORKER = bool(os.environ.get("PYTEST_XDIST_WORKER"))
THREADS = 1 if XDIST_WORKER else 2
TINY = ["--batch-size", "32", "--threads", str(THREADS)]
# a CIFAR ResNet-8 of widths 8 / 16 / 32: 6 gated layers, 112 filters; the pipeline is the same as ResNet-20's and
# every fit, attack and scorer costs a fraction (full-size networks are tested where the shipped bundles are)
TINY_NET = ["--blocks-per-stage", "1", "--widths", "8,16,32"]
LAYERS = 6
# `dnd profiles` without CW / DeepFool (the defaults add them: DeepFool ~0.25 s per image, a minute or more here)
# and with 30 trees per family instead of 300 (the fit's cost grows with them; the behaviour tested does not)
CHEAP = ["--calib-attacks", "fgsm,pgd", "--calib-train-subset", "0", "--tree-iterations", "30"]


@pytest.fixture(scope="package")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from .conftest import write_image_folder  # imported here: conftest imports this module

    return write_image_folder(tmp_path_factory.mktemp("data"), n_train=30, n_test=10)


@pytest.fixture(scope="package")
def tiny_bundle(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    dnd_train(tiny_data, runs / "dense", "--epochs", "6", "--lr", "0.05", *TINY, *TINY_NET)
    dnd_train(
        tiny_data,
        runs / "dec",
        "--decouple",
        "--init",
        str(runs / "dense"),
        "--epochs",
        "2",
        "--target-flops",
        "0.7",
        "--target-ramp-epochs",
        "0.5",
        "--lambda-kd",
        "0",
        *TINY,
    )
    # (no distillation: from this 6-epoch teacher on 300 images it left whole classes misclassified, and profiles
    # need at least one correct image per class)
    assert main(["profiles", "--model", str(runs / "dec"), "--data", str(tiny_data), "--calib-limit", "0", *CHEAP]) == 0
    return runs / "dec"


# `dnd train` tests: a dense ResNet-20 trained one epoch on the same folder
TRAIN_TINY = ["--batch-size", "64", "--eval-limit", "50", "--threads", str(THREADS)]


@pytest.fixture(scope="package")
def trained_dense(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "dense"
    assert main(["train", "--data", str(tiny_data), "--out", str(out), "--epochs", "1", *TRAIN_TINY]) == 0
    return out
