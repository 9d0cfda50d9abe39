"""Training hyper-parameters: one commented block; every field is a `dnd train --field-name` override."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# Convention: a new field's class default reproduces the behaviour from before the field existed, so that a checkpoint
# written then (its saved settings lack the field) resumes as what it was (see saved_config).


@dataclass(frozen=True)
class TrainConfig:
    # ---- optimisation: SGD + nesterov momentum, linear warm-up then cosine decay to 0 (per step) ----
    # Dense from scratch: the recipe of the dense bundle shipped in sessions 15-30 (87.82%, ~80 s per epoch, 2.7 h on
    # 2 CPU cores; 88.57% on an H200). Until session 15: 30 epochs, batch 128, lr 0.1, warm-up 1 -> 87.10% in ~1 h.
    # The dense bundle shipped since session 31 (90.01%) overrides three settings: --epochs 200 --bf16 --cutout 16
    # (`make train-dense`; ~55 s per epoch, ~3 h).
    epochs: int = 120
    batch_size: int = 256
    lr: float = 0.2                  # peak learning rate
    warmup_epochs: float = 2.0
    momentum: float = 0.9
    weight_decay: float = 5e-4       # conv/FC weights only; BN parameters and biases are not decayed
    # Cutout (DeVries & Taylor 2017): after crop + flip, one size x size square of each image is set to 0 (black, as the
    # crop's padding), its centre uniform over the image, so it may be clipped at the border. 0 = off. Aimed at the dense
    # run's gap: the 200-epoch bf16 run ended at 99.5% train / 88.2% test accuracy (runs/b256-bf16-e200-dense).
    cutout: int = 0
    # ---- decoupling (only with --decouple): loss = CE + lambda_m*L_mi + lambda_k*L_kl + lambda_s*L_s ----
    # MI: per-layer classifiers on z, averaged over the 18 layers (see losses.py). Full 10-epoch fine-tunes (test acc,
    # path AUROC FGSM/PGD): 0.5 -> 77.3%, 0.806/0.837; 2.0 -> 79.5%, 0.829/0.881; 5.0 -> 80.9%, 0.860/0.909;
    # 10.0 -> 80.4%, 0.839/0.893. Paths carry more class information and the noisy phase loses less accuracy.
    lambda_m: float = 5.0
    lambda_k: float = 1.0            # KL between z and the pooled activation energy, averaged over layers
    lambda_s: float = 0.0            # L1 (density) weight at the start; adapted by dual ascent if target_flops > 0
    target_flops: float = 0.65       # eval-mode conv MACs / dense MACs that lambda_s steers to (0 = fixed lambda_s)
    target_ramp_epochs: float = 3.0  # the target falls linearly from 1.0 to target_flops over these epochs
    dual_lr: float = 20.0            # lambda_s += dual_lr * (batch FLOPs ratio - target) / steps_per_epoch, each step
    # Gates and MI heads get their own Adam: their gradients are ~1e-4 of the conv weights' (measured), so SGD at
    # the network's LR left every gate open after 3 epochs; Adam's per-parameter step does not depend on that scale.
    gate_lr: float = 3e-3            # peak Adam LR of gates and MI heads (same warm-up/cosine shape)
    # Final epochs train on eval-time paths (no noise, z = 1(s > 0), still v1's gradient): with noisy, half-soft
    # paths to the end, BN statistics did not match eval and test accuracy fell to 27% (train 50%) in a trial.
    hard_epochs: float = 4.0         # 2 in the first shipped run: the hard epochs came when the LR was already ~0
    # Distillation from the --init bundle (the dense network, in eval mode): loss += lambda_kd * T^2 * KL(teacher_T ||
    # student_T) on softened logits (Hinton et al. 2015). 0 = off. The gated network's accuracy deficit is not
    # sparsity alone (after epoch 1, at 0.97 x FLOPs, it was already 9 points below dense): the noisy gates drop
    # channels at random, and the teacher tells the student what each image's full prediction was.
    # Full fine-tunes (lambda_m 5, test acc / path AUROC FGSM, PGD on 5,000 eval images, fgsm+pgd-only report):
    # off, 10 epochs -> 80.9%, 0.860 / 0.909; 1.0, 10 epochs -> 84.6%, 0.865 / 0.912; 1.0, 20 epochs -> 85.8%,
    # 0.865 / 0.921. Costs one no-grad teacher forward per step (bench/train_epoch.py). On for --decouple (below).
    lambda_kd: float = 0.0
    kd_temperature: float = 4.0
    # The teacher's forward under bfloat16 autocast (its logits in float32). Only the soft targets change: by 2.2% of
    # the distillation signal |p_s - p_t| (L1, shipped bundles, bench/teacher_precision.py), and the teacher's forward
    # is 1.83x faster on these 2 cores (AVX512-BF16; AMX CPUs and recent GPUs also run bf16 natively). On CPUs without
    # native bf16 it can be slower: --no-kd-teacher-bf16.
    # On for --decouple (below) since session 17 (the decoupled bundle shipped in sessions 15-30 had an fp32 teacher;
    # the one shipped since session 31 a bf16 one).
    kd_teacher_bf16: bool = False
    # Offline distillation: the teacher's logits of every training image and of its mirror image are computed once
    # per run (2 x 50,000 forwards, on 2 cores ~1 min), and each step distils the pair member its view's flip picked
    # (the random crop shift is not modelled). Saves the teacher forward of every step (bench/train_epoch.py: 1.38x
    # dense instead of 1.72x on 2 cores), but in the one A/B run (H200, batch 512, 40 epochs) it reached 87.07% against
    # 88.06% with the per-step teacher, so it is off by default.
    kd_offline: bool = False
    # ---- numerics ----
    # The trained network's forward (convs, FC, gates) under bfloat16 autocast; weights, optimizer state, BN running
    # statistics and every loss term stay float32, and the bundle is float32 (inference is unchanged). On these 2 CPU
    # cores (AVX512-BF16) a dense step at batch 256 took 303 ms instead of 474 (0.64x), at batch 128 153 ms instead of
    # 210-216 (bench/train_epoch.py --bf16 [--batch-size 256]); the gated step with distillation gains less (0.75x at
    # batch 256, session 32): its extra element-wise passes and small ops shrink little under bf16.
    # Off by default. The dense bundle shipped since session 31 trained with it (90.01%); every shipped decoupled bundle
    # trained in float32 (the bf16 fine-tune candidate: docs/training-log.md, session 32).
    bf16: bool = False
    # ---- run ----
    seed: int = 0                    # data order, augmentation, gate noise and init all derive from it
    limit: int = 0                   # train on this many training images only (0 = all); for smoke runs
    eval_limit: int = 0              # evaluate each epoch on this many test images only (0 = all)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Fine-tuning the decoupled network starts from trained dense weights: fewer epochs and a lower peak LR.
# Distillation from the --init bundle is on: 10 / 20 / 30 epochs reached 84.6 / 85.8 / 86.4% (MI at the end of 20
# and 30: 1.21 / 1.15) from the 87.10% dense; from the 87.82% one, 30 epochs reached 88.06% (MI 1.21): the bundle
# shipped in sessions 15-30 (~2.5 min per epoch on 2 cores, 75 min in all). The one shipped since session 31 (89.08%
# from the 90.01% dense) overrides three settings: --epochs 50 --target-flops 0.69 --hard-epochs 10
# (`make train-decoupled`; ~145 s per epoch, ~2 h).
DECOUPLE_DEFAULTS: dict[str, Any] = {"epochs": 30, "batch_size": 128, "lr": 0.03, "warmup_epochs": 0.5, "lambda_kd": 1.0,
                                     "kd_teacher_bf16": True}


def make_config(decouple: bool, overrides: dict[str, Any]) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown training settings {sorted(unknown)}; known: {sorted(names)}")
    base = replace(TrainConfig(), **DECOUPLE_DEFAULTS) if decouple else TrainConfig()
    return replace(base, **overrides)


def check_config(cfg: TrainConfig) -> None:
    """Refuse settings no run can use, before any data is loaded or file written; the message names the flag, the
    allowed range and the value found (e.g. --epochs 0 used to train nothing and then fail writing the plot)."""
    rules = [  # (field, whether its value is allowed, the allowed range in words)
        ("epochs", cfg.epochs >= 1, "at least 1"),
        ("batch_size", cfg.batch_size >= 1, "at least 1"),
        ("lr", cfg.lr >= 0, "0 or more"),  # 0 freezes the weights (a test of --init relies on it)
        ("gate_lr", cfg.gate_lr >= 0, "0 or more"),
        ("warmup_epochs", cfg.warmup_epochs >= 0, "0 or more"),  # may exceed a short smoke run's --epochs
        ("momentum", 0 <= cfg.momentum < 1, "0 to below 1"),
        ("weight_decay", cfg.weight_decay >= 0, "0 or more"),
        ("cutout", 0 <= cfg.cutout <= 32, "the side of the square in pixels, 0 (off) to 32"),
        ("lambda_m", cfg.lambda_m >= 0, "0 or more"),
        ("lambda_k", cfg.lambda_k >= 0, "0 or more"),
        ("lambda_s", cfg.lambda_s >= 0, "0 or more"),
        ("lambda_kd", cfg.lambda_kd >= 0, "0 or more"),
        ("target_flops", 0 <= cfg.target_flops <= 1, "a FLOPs ratio, 0 (fixed --lambda-s) to 1"),
        ("target_ramp_epochs", cfg.target_ramp_epochs >= 0, "0 or more"),
        ("dual_lr", cfg.dual_lr >= 0, "0 or more"),
        ("hard_epochs", cfg.hard_epochs >= 0, "0 or more"),  # more than --epochs: every epoch on eval-time paths
        ("kd_temperature", cfg.kd_temperature > 0, "above 0"),
        ("limit", cfg.limit >= 0, "0 (all) or more"),
        ("eval_limit", cfg.eval_limit >= 0, "0 (all) or more"),
    ]
    bad = [f"--{name.replace('_', '-')}: expected {allowed}, got {getattr(cfg, name)}" for name, ok, allowed in rules
           if not ok]
    if bad:
        raise ValueError("; ".join(bad))


def saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """Training settings as saved in a checkpoint or bundle, with the fields added since then at their class defaults
    (the behaviour the run had). Unknown names are kept, so a comparison with the current settings fails on them."""
    return TrainConfig().to_dict() | saved
