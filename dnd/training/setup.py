"""Setting a training run up: check the request, load the data, build the model, losses, teacher and optimizers
(`Run`), and resume from a checkpoint."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from detector.bundle import WEIGHTS, load_model
from detector.config import ModelConfig
from detector.data import Split, check_classes, load_split, to_unit_float
from detector.losses import DecouplingLoss
from detector.networks import GatedNetwork, build_model

from .checkpoint import META, load_checkpoint
from .config import TrainConfig, check_config, saved_config
from .distill import frozen_teacher, teacher_logits
from .distributed import Dist, StepModule, sync_batchnorm
from .step import compiled_step_loss, make_optimizers, step_loss


@dataclass
class Run:
    """What one training run holds between its steps."""

    cfg: TrainConfig
    model_cfg: ModelConfig
    dev: torch.device
    x_train: torch.Tensor  # (N, 3, S, S) float in [0, 1], on the device
    y_train: torch.Tensor  # (N,) on the device
    test: Split
    model: GatedNetwork
    loss_mod: DecouplingLoss | None
    optimizers: list[torch.optim.Optimizer]
    teacher: GatedNetwork | None = None
    t_logits: torch.Tensor | None = None  # (2, N, K) offline distillation targets: [plain, mirrored]
    loss_fn: Any = step_loss
    start_epoch: int = 0
    lambda_s: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    history: list[dict[str, Any]] = field(default_factory=list)
    dist: Dist = field(default_factory=Dist)  # this process's place under torchrun (training/distributed.py)

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model, **({"loss": self.loss_mod} if self.loss_mod else {})}

    @property
    def steps_per_epoch(self) -> int:
        return len(self.y_train) // self.cfg.batch_size  # the ragged last batch is dropped


def check_request(
    out: Path, cfg: TrainConfig, decouple: bool, init: str | Path | None, resume: bool, world: int = 1
) -> None:
    """Refuse a run that cannot do what was asked, before any data is loaded or file written."""
    if cfg.batch_size % world:
        raise ValueError(
            f"--batch-size {cfg.batch_size} is the global batch: expected a multiple of the {world} "
            "processes torchrun started"
        )
    ckpt_dir = out / "checkpoint"
    if decouple and init is None:
        raise ValueError("--decouple needs --init DIR: a trained dense bundle to fine-tune from")
    if cfg.lambda_kd > 0 and init is None:
        raise ValueError("--lambda-kd distils from the --init bundle; pass --init DIR")
    check_config(cfg)
    if (ckpt_dir / META).exists() and not resume:
        raise FileExistsError(f"{ckpt_dir} holds an earlier run; pass --resume to continue it or choose another --out")
    if (out / WEIGHTS).exists() and not (ckpt_dir / META).exists():
        # a finished run whose checkpoint is gone (committed bundles keep none): training would start from scratch
        # and, hours later, overwrite the bundle and leave any profiles beside it stale
        raise FileExistsError(
            f"{out} holds a finished bundle ({WEIGHTS}) and no checkpoint to resume ({ckpt_dir / META} is "
            "missing); choose another --out, or remove the bundle to retrain it"
        )


def load_data(
    data: str | Path, cfg: TrainConfig, dev: torch.device, size: int | None = None
) -> tuple[Split, Split, torch.Tensor, torch.Tensor]:
    """(train split, test split (maybe limited), training images on the device as float, their labels); images at
    `size` (default: the training data's own size)."""
    train_set = load_split(data, "train", size)
    test_set = load_split(data, "test", train_set.x.shape[-1])
    x_train, y_train = train_set.x, train_set.y
    if cfg.limit:
        idx = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.limit]
        x_train, y_train = x_train[idx], y_train[idx]
    if cfg.eval_limit:
        idx = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.eval_limit]
        test_set = Split(test_set.x[idx], test_set.y[idx], test_set.classes, test_set.fingerprint)
    # the training set lives on the device (600 MB as float; a GPU then needs no per-step host copy of images)
    return train_set, test_set, to_unit_float(x_train.to(dev)), y_train.to(dev)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of images x (N, C, H, W) in [0, 1], to 4 places: what the model normalises its input
    by (recorded in the bundle). One channel at a time in float64: a whole float64 copy of 50,000 CIFAR images would
    be 1.2 GB."""
    stats = [(float(c.mean()), float(c.std())) for c in (x[:, k].double() for k in range(x.shape[1]))]
    return tuple(round(m, 4) for m, _ in stats), tuple(round(max(sd, 1e-3), 4) for _, sd in stats)


def init_weights(model: GatedNetwork, src: GatedNetwork, init_dir: Path) -> None:
    """Start from a bundle's model `src`: a dense one gives every non-gate weight (the gates are the only new
    parameters; for a dense `model`, everything); a decoupled one gives everything, strictly (a further stage)."""
    if src.cfg.decoupled or not model.cfg.decoupled:
        if src.cfg != model.cfg:
            raise ValueError(f"--init {init_dir} has another architecture: {src.cfg} vs {model.cfg}")
        model.load_state_dict(src.state_dict(), strict=True)
        return
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    bad = [k for k in missing if ".gate." not in k]
    if bad or unexpected:
        raise ValueError(
            f"--init {init_dir} does not fit this architecture: missing {bad[:5]}, unexpected {unexpected[:5]}"
        )


def build_run(
    data: str | Path,
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    decouple: bool,
    init: str | Path | None,
    dev: torch.device,
    compile_step: bool,
    dist: Dist = Dist(),
    size: int | None = None,
) -> tuple[Run, Split]:
    """Data, model (from --init where given), decoupling losses, distillation teacher and optimizers; under torchrun
    the network with global-batch BatchNorm and, with the heads, wrapped in DistributedDataParallel."""
    torch.manual_seed(cfg.seed)
    size = model_cfg.input_size if init is not None else size  # a bundle reads the size it was trained at
    train_set, test_set, x_train, y_train = load_data(data, cfg, dev, size)
    check_classes(test_set, train_set.classes, "the test split of --data")
    if init is not None:  # a bundle's network keeps its labels: the data must name the same classes
        check_classes(train_set, model_cfg.classes, f"--data against the --init bundle {init}")
    else:  # a new network is trained on, labels with, and normalises by the statistics of the data
        mean, std = channel_stats(x_train)
        k, side = len(train_set.classes), train_set.x.shape[-1]
        model_cfg = replace(
            model_cfg, classes=tuple(train_set.classes), num_classes=k, mean=mean, std=std, input_size=side
        )
    model = build_model(model_cfg)
    src = load_model(Path(init)) if init is not None else None
    if src is not None:  # dense --init: a warm restart (new LR cycle) from those weights; --decouple: the fine-tune
        init_weights(model, src, Path(init))
    model = model.to(dev, memory_format=torch.channels_last)
    if dist.on:
        model = sync_batchnorm(model, dev)
    loss_mod = DecouplingLoss([u.cout for u in model.units()], model_cfg.num_classes).to(dev) if decouple else None
    loss_fn = compiled_step_loss() if compile_step else step_loss
    if dist.on:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(
            StepModule(model, loss_mod, loss_fn), device_ids=[dev.index] if dev.type == "cuda" else None
        )
        loss_fn = lambda _model, _loss_mod, *args: ddp(*args)  # noqa: E731 - the step through DDP's hooks
    run = Run(
        cfg,
        model_cfg,
        dev,
        x_train,
        y_train,
        test_set,
        model,
        loss_mod,
        make_optimizers(model, loss_mod, cfg),
        loss_fn=loss_fn,
        lambda_s=torch.tensor(cfg.lambda_s, dtype=torch.float64, device=dev),
        dist=dist,
    )
    if cfg.lambda_kd > 0:  # the --init network itself, frozen (init_weights copied its tensors, not shared them)
        run.teacher = frozen_teacher(src, dev)
        if cfg.kd_offline:
            t0 = time.perf_counter()
            run.t_logits = teacher_logits(run.teacher, x_train, cfg.kd_teacher_bf16)
            print(
                f"offline distillation: teacher logits of {len(y_train)} images and their mirrors in "
                f"{time.perf_counter() - t0:.1f} s",
                flush=True,
            )
    return run, train_set


def resume_from(run: Run, ckpt_dir: Path) -> None:
    """Continue from OUT/checkpoint: module and optimizer state, lambda_s, history; the settings must be the same."""
    meta = load_checkpoint(ckpt_dir, run.modules, run.optimizers, run.dev)
    now = json.loads(json.dumps({"train": run.cfg.to_dict(), "model": run.model_cfg.to_dict()}))  # tuples -> lists
    # the model record through ModelConfig: a field the checkpoint lacks reads as its default
    then = {
        "train": saved_config(meta["train"]),
        "model": json.loads(json.dumps(ModelConfig.from_dict(meta["model"]).to_dict())),
    }
    if then != now:
        diff = [
            f"{part} {k}: checkpoint {then[part].get(k, '(absent)')!r}, this command {now[part].get(k, '(absent)')!r}"
            for part in ("train", "model")
            for k in sorted(set(then[part]) | set(now[part]))
            if then[part].get(k, "(absent)") != now[part].get(k, "(absent)")
        ]
        raise ValueError(f"{ckpt_dir} was written with other settings; resume with the same flags ({'; '.join(diff)})")
    run.start_epoch, run.history = meta["epoch"] + 1, meta["history"]
    run.lambda_s = torch.tensor(meta["lambda_s"], dtype=torch.float64, device=run.dev)
    print(f"resuming after epoch {meta['epoch'] + 1}/{run.cfg.epochs}")
