"""Training hyper-parameters: one commented block; every field is a `dnd train --field-name` override.

A new field's default reproduces the behaviour from before the field existed, so that a checkpoint written then
(whose saved settings lack the field) resumes as what it was (see saved_config).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    # ---- optimisation: SGD + nesterov momentum, linear warm-up then cosine decay to 0 (per step) ----
    # Dense from scratch. 120 epochs at batch 256 reach ~87.8% on the JPEG copy of CIFAR-10; the shipped dense bundle
    # adds --epochs 200 --bf16 --cutout 16 (`make train-dense`, ~55 s per epoch on 2 cores): 90.0%.
    epochs: int = 120
    batch_size: int = 256
    lr: float = 0.2  # peak learning rate
    warmup_epochs: float = 2.0
    momentum: float = 0.9
    weight_decay: float = 5e-4  # conv/FC weights only; BN parameters and biases are not decayed
    # Cutout (DeVries & Taylor 2017): after crop + flip, one size x size square of each image is set to 0, its centre
    # uniform over the image (so it may be clipped at the border). 0 = off. Without it a 200-epoch run ended at 99.5%
    # train / 88.2% test accuracy; with 16 at 90.0% test.
    cutout: int = 0
    # ---- decoupling (only with --decouple): loss = CE + lambda_m*L_mi + lambda_k*L_kl + lambda_s*L_s ----
    # MI: per-layer classifiers on z, averaged over the 18 layers (detector/losses.py). 10-epoch fine-tunes (test
    # accuracy, path AUROC FGSM / PGD): 0.5 -> 77.3%, 0.806 / 0.837; 2.0 -> 79.5%, 0.829 / 0.881; 5.0 -> 80.9%,
    # 0.860 / 0.909; 10.0 -> 80.4%, 0.839 / 0.893: paths carry more class information and the noisy phase loses less.
    lambda_m: float = 5.0
    lambda_k: float = 1.0  # KL between z and the pooled activation energy, averaged over layers
    lambda_s: float = 0.0  # L1 (density) weight at the start; adapted by dual ascent if target_flops > 0
    # Eval-mode conv MACs / dense MACs that lambda_s steers to (0 = fixed lambda_s). A fixed lambda_s was either too
    # weak (gates only moved once it passed ~12) or too strong; the dual variable finds the balance.
    target_flops: float = 0.65
    target_ramp_epochs: float = 3.0  # the target falls linearly from 1.0 to target_flops over these epochs
    dual_lr: float = 20.0  # lambda_s += dual_lr * (batch FLOPs ratio - target) / steps_per_epoch, each step
    # Gates and MI heads get their own Adam: their gradients are ~1e-4 of the conv weights' (measured), so SGD at the
    # network's LR left every gate open after 3 epochs; Adam's per-parameter step does not depend on that scale.
    gate_lr: float = 3e-3  # peak Adam LR of gates and MI heads (same warm-up / cosine shape)
    # Final epochs train on eval-time paths (no noise, z = 1(s > 0), still v1's gradient), so that the BatchNorm
    # statistics are those of the binary paths the network is evaluated on, not of noisy, half-soft ones.
    hard_epochs: float = 4.0
    # Distillation from the --init bundle (the dense network, eval mode): loss += lambda_kd * T^2 * KL(teacher_T ||
    # student_T) (Hinton et al. 2015). 0 = off; on for --decouple (DECOUPLE_DEFAULTS): the noisy gates drop channels
    # at random during the fine-tune, and the teacher gives the student each image's full prediction to recover.
    lambda_kd: float = 0.0
    kd_temperature: float = 4.0
    # The teacher's forward under bfloat16 autocast (logits in float32): faster on CPUs with native bf16 (AVX512-BF16,
    # AMX), where the soft targets move by a few percent of the distillation signal; slower without it.
    kd_teacher_bf16: bool = False
    # Offline distillation: the teacher's logits of every training image and of its mirror, computed once per run;
    # each step distils the member its view's flip picked (the crop shift is not modelled). Saves the teacher forward
    # of every step, but the student then never sees the teacher's prediction of its own crop, so it is off by default.
    kd_offline: bool = False
    # ---- adversarial training (training/adversarial.py): every step trains on a perturbation of its batch ----
    # Linf radius in 8-bit pixel steps (8 = 8/255); 0 = off. With --decouple the fine-tune perturbs the gated network
    # (its noisy training paths) and distils the teacher's logits on the same perturbed batch.
    adv_eps: float = 0.0
    adv_steps: int = 1  # 1: FGSM from a uniform random start (Wong et al. 2020); k > 1: PGD with k steps (Madry et al.)
    adv_alpha: float = 0.0  # step in pixel steps; 0 = 1.25 x eps for one step, 2.5 x eps / steps for PGD
    adv_eval_limit: int = 1000  # test images for the per-epoch PGD-10 robust accuracy (catastrophic-overfitting watch)
    # ---- numerics ----
    # The trained network's forward under bfloat16 autocast; weights, optimizer state, BN running statistics and every
    # loss term stay float32, and the bundle is float32. On 2 AVX512-BF16 cores a dense step at batch 256 took 303 ms
    # instead of 474; the gated step with distillation gains less (0.75x): its element-wise passes barely shrink.
    bf16: bool = False
    # ---- run ----
    seed: int = 0  # data order, augmentation, gate noise and init all derive from it
    limit: int = 0  # train on this many training images only (0 = all); for smoke runs
    eval_limit: int = 0  # evaluate each epoch on this many test images only (0 = all)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Fine-tuning the decoupled network starts from trained dense weights: fewer epochs, a lower peak LR, distillation.
# 30 epochs reached 88.06% from an 87.82% dense; the shipped fine-tune adds --epochs 50 --target-flops 0.69
# --hard-epochs 10 (`make train-decoupled`, ~145 s per epoch on 2 cores): 89.08% from the 90.01% dense.
DECOUPLE_DEFAULTS: dict[str, Any] = {
    "epochs": 30,
    "batch_size": 128,
    "lr": 0.03,
    "warmup_epochs": 0.5,
    "lambda_kd": 1.0,
    "kd_teacher_bf16": True,
}


def make_config(decouple: bool, overrides: dict[str, Any]) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown training settings {sorted(unknown)}; known: {sorted(names)}")
    base = replace(TrainConfig(), **DECOUPLE_DEFAULTS) if decouple else TrainConfig()
    return replace(base, **overrides)


def check_config(cfg: TrainConfig) -> None:
    """Refuse settings no run can use, before any data is loaded or file written; the message names the flag, the
    allowed range and the value found."""
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
        ("adv_eps", 0 <= cfg.adv_eps <= 255, "a radius in pixel steps, 0 (off) to 255"),
        ("adv_steps", cfg.adv_steps >= 1, "at least 1"),
        ("adv_alpha", cfg.adv_alpha >= 0, "0 (the default step) or more"),
        ("adv_eval_limit", cfg.adv_eval_limit >= 0, "0 (none) or more"),
        ("kd_offline", not (cfg.kd_offline and cfg.adv_eps > 0), "off with --adv-eps (its targets are clean images)"),
        ("limit", cfg.limit >= 0, "0 (all) or more"),
        ("eval_limit", cfg.eval_limit >= 0, "0 (all) or more"),
    ]
    bad = [
        f"--{name.replace('_', '-')}: expected {allowed}, got {getattr(cfg, name)}"
        for name, ok, allowed in rules
        if not ok
    ]
    if bad:
        raise ValueError("; ".join(bad))


def saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """Training settings as saved in a checkpoint or bundle, with the fields added since then at their class defaults
    (the behaviour the run had). Unknown names are kept, so a comparison with the current settings fails on them."""
    return TrainConfig().to_dict() | saved
