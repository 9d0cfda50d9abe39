"""`dnd train`: dense ResNet from scratch, or (decouple=True) the gated network fine-tuned from a dense bundle.

Resumable: a checkpoint is written after every epoch; data order, augmentation and gate noise are seeded
per epoch, so a resumed run continues exactly where it stopped.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

from detector.bundle import file_sha256, load_model, read_config, save_bundle, write_json, WEIGHTS
from detector.config import ModelConfig
from detector.data import Split, load_split, to_unit_float
from detector.losses import DecouplingLoss
from detector.model import CifarResNet, PathOutput, build_model
from detector.stats import collect_paths, dense_macs, filter_states, macs_per_sample

from .checkpoint import META, load_checkpoint, save_checkpoint
from .config import TrainConfig, check_config, saved_config

HISTORY = "train_history.json"


def crop_flip_params(b: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random augmentation draws for b images: crop offsets (b, 2) in [0, 8] and mirror flags (b,) bool.
    Drawn on the CPU from the run's seeded generator (the same draws on any device, so a resumed run repeats them)."""
    ij = torch.randint(0, 9, (b, 2), generator=gen)
    return ij, torch.rand(b, generator=gen) < 0.5


def augment(xb: torch.Tensor, ij: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """32x32 crops at offsets ij (B, 2) of the 4-pixel zero-padded images xb (B, 3, 32, 32), mirrored where flip (B,).
    One gather on xb's device (a per-image slicing loop cost ~1.5 ms of host time per step, which a GPU waits for);
    a mirrored crop is the crop's columns in reverse order."""
    dev, b = xb.device, xb.shape[0]
    padded = F.pad(xb, (4, 4, 4, 4))
    ar = torch.arange(32, device=dev)
    ij, flip = ij.to(dev, non_blocking=True), flip.to(dev, non_blocking=True)
    rows, cols = ij[:, :1] + ar, ij[:, 1:] + ar  # (B, 32) each
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    return padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(3, device=dev)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def cutout_params(b: int, gen: torch.Generator) -> torch.Tensor:
    """Cutout centres (b, 2) in [0, 31], drawn on the CPU from the run's seeded generator (as crop_flip_params)."""
    return torch.randint(0, 32, (b, 2), generator=gen)


def cutout(xb: torch.Tensor, centre: torch.Tensor, size: int) -> torch.Tensor:
    """xb (B, C, S, S) (square images) with the size x size square at each image's centre (B, 2) set to 0, clipped at the border.
    The square spans rows centre - size // 2 ... centre - size // 2 + size - 1 (DeVries & Taylor 2017)."""
    lo = centre.to(xb.device)[:, :, None] - size // 2  # (B, 2, 1): first row / column of the square
    ar = torch.arange(xb.shape[-1], device=xb.device)
    inside = (ar >= lo) & (ar < lo + size)  # (B, 2, S): rows / columns the square covers
    keep = ~(inside[:, 0, :, None] & inside[:, 1, None, :])  # (B, S, S)
    return xb * keep[:, None].to(xb.dtype)


def frozen_teacher(src: CifarResNet, device: torch.device) -> CifarResNet:
    """The distillation teacher: `src` in eval mode, frozen, channels_last, with every BatchNorm folded into the conv
    before it (W' = W * g / sqrt(v + eps), b' = beta - mu * g / sqrt(v + eps)), which eval-mode BN allows. The logits
    are the same up to float rounding (a test checks), and the teacher's forward at batch 128 on 2 cores is shorter
    (bench/teacher_precision.py: bf16 autocast 42.0 -> 37.3 ms, float32 72.7 -> 68.8 ms; ~1.5% of a fine-tune step).
    Modifies `src`."""
    src = src.eval().requires_grad_(False)
    src.stem[0], src.stem[1] = fuse_conv_bn_eval(src.stem[0], src.stem[1]), nn.Identity()
    for u in src.units():
        u.conv, u.bn = fuse_conv_bn_eval(u.conv, u.bn), nn.Identity()
    return src.to(device, memory_format=torch.channels_last).requires_grad_(False)


def teacher_forward(teacher: CifarResNet, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    """The distillation teacher's logits (B, K), float32. bf16: the forward runs under bfloat16 autocast (convs and
    the FC in bf16). Measured with the shipped bundles (bench/teacher_precision.py, 5,000 augmented training views,
    T = 4): 1.83x faster on these 2 CPU cores (AVX512-BF16); top-1 agreement 99.96%; the soft targets move by L1 5.2e-3
    on average, 2.2% of the distillation signal |p_s - p_t|, and KL(fp32 || bf16) = 3.6e-5 against the fine-tune's
    final KL of ~0.07. Callers hold no_grad."""
    if not bf16:
        return teacher(x)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        return teacher(x).float()


@torch.no_grad()  # not inference_mode: the logits are a target inside the autograd graph of every step
def teacher_logits(teacher: CifarResNet, x: torch.Tensor, bf16: bool = False, batch_size: int = 1000) -> torch.Tensor:
    """The teacher's logits for each image and for its mirror image, (2, N, K) on x's device: the targets of
    offline distillation (kd_offline), computed once per run instead of a teacher forward every step."""
    teacher.eval()
    plain, mirrored = [], []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        plain.append(teacher_forward(teacher, xb.contiguous(memory_format=torch.channels_last), bf16).float())
        mirrored.append(teacher_forward(teacher, xb.flip(3).contiguous(memory_format=torch.channels_last), bf16).float())
    return torch.stack([torch.cat(plain), torch.cat(mirrored)])


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def make_optimizers(model: CifarResNet, loss: DecouplingLoss | None, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """SGD for the network (weight decay on conv/FC weights only); Adam for gates and MI heads, if any."""
    decay, no_decay, gates = [], [], []
    for name, p in model.named_parameters():
        (gates if ".gate." in name else decay if p.ndim > 1 else no_decay).append(p)
    sgd = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay, "peak": cfg.lr},
                           {"params": no_decay, "weight_decay": 0.0, "peak": cfg.lr}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=True, foreach=True)
    if loss is None:
        return [sgd]
    adam = torch.optim.Adam([{"params": gates + list(loss.parameters()), "peak": cfg.gate_lr}], lr=cfg.gate_lr, foreach=True)
    return [sgd, adam]


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean over the batch; logits (B, K)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean", log_target=True) * t * t


def float_paths(res: PathOutput) -> PathOutput:
    """A forward pass's outputs cast to float32 (autograd flows through the casts)."""
    def f(ts: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        return None if ts is None else [t.float() for t in ts]
    return PathOutput(res.logits.float(), res.features.float(), f(res.z), f(res.s), f(res.energy))


def step_loss(model: CifarResNet, loss_mod: DecouplingLoss | None, xb: torch.Tensor, yb: torch.Tensor,
              cfg: TrainConfig, lambda_s: float | torch.Tensor, dense: int,
              teacher: CifarResNet | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward pass and every loss term of one step: (total loss, detached terms for the log). This is the part
    `--compile` hands to torch.compile; backward and the optimizer steps stay in train_step.
    teacher: a network run on xb (online distillation) or its precomputed logits (B, K) (kd_offline)."""
    with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        res = model.forward_paths(xb, energy=loss_mod is not None)
    if cfg.bf16:  # the losses in float32: bf16's 8 mantissa bits would round the small MI / KL / L1 terms
        res = float_paths(res)
    ce = F.cross_entropy(res.logits, yb)
    terms = {"ce": ce.detach()}
    loss = ce
    if teacher is not None:
        if torch.is_tensor(teacher):
            t_logits = teacher
        else:
            with torch.no_grad():
                t_logits = teacher_forward(teacher, xb, cfg.kd_teacher_bf16)
        kd = distill_loss(res.logits, t_logits, cfg.kd_temperature)
        loss = loss + cfg.lambda_kd * kd
        terms["kd"] = kd.detach()
    if loss_mod is not None:
        d = loss_mod(res, yb)
        lam_s = lambda_s.to(d["l1"].dtype) if torch.is_tensor(lambda_s) else lambda_s
        loss = loss + cfg.lambda_m * d["mi"] + cfg.lambda_k * d["kl"] + lam_s * d["l1"]
        with torch.no_grad():  # the cost the model would have at eval time (z = 1(s > 0))
            flops = macs_per_sample(model, [s > 0 for s in res.s]).mean() / dense
        terms.update({k: v.detach() for k, v in d.items()}, flops=flops)
    terms["acc"] = (res.logits.argmax(1) == yb).float().mean()
    return loss, terms


def compiled_step_loss() -> Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """step_loss through torch.compile (inductor; on CPU it needs a C++ compiler). It fuses the gates' many small
    element-wise ops and the masks into few kernels (bench/train_epoch.py --compile). Gate noise then comes from
    inductor's own seeded generator: the same noise law, other draws than eager."""
    return torch.compile(step_loss)


def train_step(model: CifarResNet, loss_mod: DecouplingLoss | None, optimizers: list[torch.optim.Optimizer],
               xb: torch.Tensor, yb: torch.Tensor, cfg: TrainConfig, lambda_s: float | torch.Tensor, dense: int,
               teacher: CifarResNet | torch.Tensor | None = None, loss_fn: Callable[..., Any] = step_loss
               ) -> dict[str, torch.Tensor]:
    """One optimisation step; returns the detached loss terms (and, decoupled, the eval-time FLOPs ratio)."""
    loss, terms = loss_fn(model, loss_mod, xb, yb, cfg, lambda_s, dense, teacher)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()
    return terms


def evaluate(model: CifarResNet, test: Split, device: torch.device) -> dict[str, Any]:
    logits, z = collect_paths(model, test.x, 500, device)
    res: dict[str, Any] = {"test_accuracy": float((logits.argmax(1) == test.y).float().mean())}
    if z:
        res["flops_ratio"] = float(macs_per_sample(model, z).mean()) / dense_macs(model)
        res["density"] = [round(float(zl.float().mean()), 4) for zl in z]
        res["filter_states"] = filter_states(z)
    return res


def init_weights(model: CifarResNet, src: CifarResNet, init_dir: Path) -> None:
    """Start from a bundle's model `src`: a dense one gives every non-gate weight (the gates are the only new
    parameters; for a dense `model`, everything); a decoupled one gives everything, strictly (a second stage, e.g.
    more epochs on eval-time paths)."""
    if src.cfg.decoupled or not model.cfg.decoupled:
        if src.cfg != model.cfg:
            raise ValueError(f"--init {init_dir} has another architecture: {src.cfg} vs {model.cfg}")
        model.load_state_dict(src.state_dict(), strict=True)
        return
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    bad = [k for k in missing if ".gate." not in k]
    if bad or unexpected:
        raise ValueError(f"--init {init_dir} does not fit this architecture: missing {bad[:5]}, unexpected {unexpected[:5]}")


def train(data: str | Path, out: str | Path, cfg: TrainConfig, decouple: bool = False, init: str | Path | None = None,
          resume: bool = False, device: str = "cpu", model_cfg: ModelConfig | None = None, compile_step: bool = False) -> Path:
    """Train and write a bundle to `out` (weights, config.json, train_history.json). Returns `out`.

    compile_step: run the forward + losses through torch.compile (an execution setting like `device`, so a run may be
    resumed with or without it)."""
    out, dev = Path(out), torch.device(device)
    ckpt_dir = out / "checkpoint"
    if decouple and init is None:
        raise ValueError("--decouple needs --init DIR: a trained dense bundle to fine-tune from")
    if cfg.lambda_kd > 0 and init is None:  # checked before the data is loaded
        raise ValueError("--lambda-kd distils from the --init bundle; pass --init DIR")
    check_config(cfg)  # e.g. --cutout -4, --epochs 0: refused here, before the data is loaded
    if (ckpt_dir / META).exists() and not resume:
        raise FileExistsError(f"{ckpt_dir} holds an earlier run; pass --resume to continue it or choose another --out")
    if (out / WEIGHTS).exists() and not (ckpt_dir / META).exists():
        # A finished run whose checkpoint is gone (the committed bundles keep none): training would start from
        # scratch and, hours later, overwrite the bundle and leave any profiles beside it stale.
        raise FileExistsError(f"{out} holds a finished bundle ({WEIGHTS}) and no checkpoint to resume "
                              f"({ckpt_dir / META} is missing); choose another --out, or remove the bundle to retrain it")
    if model_cfg is None:
        model_cfg = replace(ModelConfig.from_dict(read_config(init)["model"]), decoupled=True) if decouple else ModelConfig()

    torch.manual_seed(cfg.seed)
    train_set, test_set = load_split(data, "train"), load_split(data, "test")
    x_train, y_train = train_set.x, train_set.y
    if cfg.limit:
        idx = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.limit]
        x_train, y_train = x_train[idx], y_train[idx]
    if cfg.eval_limit:
        idx = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.eval_limit]
        test_set = Split(test_set.x[idx], test_set.y[idx], test_set.classes, test_set.fingerprint)
    # The training set lives on the device (600 MB as float; a GPU then needs no per-step host copy of images).
    x_train, y_train = to_unit_float(x_train.to(dev)), y_train.to(dev)

    model = build_model(model_cfg)
    src = load_model(Path(init)) if init is not None else None
    if src is not None:  # dense --init: a warm restart (new LR cycle) from those weights; --decouple: the fine-tune
        init_weights(model, src, Path(init))
    model = model.to(dev, memory_format=torch.channels_last)
    loss_mod = DecouplingLoss([u.cout for u in model.units()], model_cfg.num_classes).to(dev) if decouple else None
    teacher, t_logits = None, None
    if cfg.lambda_kd > 0:  # the --init network itself, frozen (init_weights copied its tensors, not shared them)
        teacher = frozen_teacher(src, dev)
        if cfg.kd_offline:
            t0 = time.perf_counter()
            t_logits = teacher_logits(teacher, x_train, cfg.kd_teacher_bf16)  # (2, N, K): [plain, mirrored]
            print(f"offline distillation: teacher logits of {len(y_train)} images and their mirrors in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
    optimizers = make_optimizers(model, loss_mod, cfg)
    loss_fn = compiled_step_loss() if compile_step else step_loss
    modules = {"model": model, **({"loss": loss_mod} if loss_mod else {})}

    steps_per_epoch = len(y_train) // cfg.batch_size  # drop the ragged last batch
    total_steps, warmup = steps_per_epoch * cfg.epochs, int(cfg.warmup_epochs * steps_per_epoch)
    dense = dense_macs(model)
    # lambda_s and the running sums stay on the device: a host read per step would stall a GPU's launch queue.
    start_epoch, lambda_s, history = 0, torch.tensor(cfg.lambda_s, dtype=torch.float64, device=dev), []
    if resume and (ckpt_dir / META).exists():
        meta = load_checkpoint(ckpt_dir, modules, optimizers, dev)
        now = json.loads(json.dumps({"train": cfg.to_dict(), "model": model_cfg.to_dict()}))  # tuples -> lists
        then = {"train": saved_config(meta["train"]), "model": meta["model"]}
        if then != now:
            diff = [f"{part} {k}: checkpoint {then[part].get(k, '(absent)')!r}, this command {now[part].get(k, '(absent)')!r}"
                    for part in ("train", "model") for k in sorted(set(then[part]) | set(now[part]))
                    if then[part].get(k, "(absent)") != now[part].get(k, "(absent)")]
            raise ValueError(f"{ckpt_dir} was written with other settings; resume with the same flags ({'; '.join(diff)})")
        start_epoch, history = meta["epoch"] + 1, meta["history"]
        lambda_s = torch.tensor(meta["lambda_s"], dtype=torch.float64, device=dev)
        print(f"resuming after epoch {meta['epoch'] + 1}/{cfg.epochs}")

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        if decouple and epoch >= cfg.epochs - cfg.hard_epochs:
            model.set_gate_training(noise_std=0.0, p_hard=1.0)
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # gate noise
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        perm_dev = torch.randperm(len(y_train), generator=gen).to(dev)
        sums: dict[str, torch.Tensor] = {}
        t0 = time.perf_counter()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", mininterval=5)
        for it in bar:
            step = epoch * steps_per_epoch + it
            frac = lr_at(step, total_steps, warmup, 1.0)  # schedule shape, scaled by each group's peak
            for opt in optimizers:
                for g in opt.param_groups:
                    g["lr"] = frac * g["peak"]
            idx = perm_dev[it * cfg.batch_size:(it + 1) * cfg.batch_size]
            ij, flip = crop_flip_params(len(idx), gen)
            ij, flip = ij.to(dev, non_blocking=True), flip.to(dev, non_blocking=True)
            xb = augment(x_train[idx], ij, flip)
            if cfg.cutout:  # drawn only when on, so a run without it keeps its random stream
                xb = cutout(xb, cutout_params(len(idx), gen), cfg.cutout)
            xb = xb.contiguous(memory_format=torch.channels_last)
            yb = y_train[idx]
            # offline: the teacher's logits of this image, mirrored as the view is (the crop shift is not modelled)
            t_in = teacher if t_logits is None else t_logits[flip.long(), idx]
            terms = train_step(model, loss_mod, optimizers, xb, yb, cfg, lambda_s, dense, t_in, loss_fn)
            if loss_mod is not None and cfg.target_flops > 0:
                ramp = min(1.0, step / max(cfg.target_ramp_epochs * steps_per_epoch, 1))
                target = 1.0 - ramp * (1.0 - cfg.target_flops)
                lambda_s = (lambda_s + cfg.dual_lr * (terms["flops"] - target) / steps_per_epoch).clamp_min(0.0)
            for k, v in terms.items():
                sums[k] = sums[k] + v.double() if k in sums else v.double()
            if it % 20 == 0:
                bar.set_postfix({k: f"{float(v) / (it + 1):.3f}" for k, v in sums.items()} | ({"lam_s": f"{float(lambda_s):.3f}"} if loss_mod else {}))
        bar.close()
        record = {"epoch": epoch + 1, "lr_end": frac * cfg.lr, "seconds": round(time.perf_counter() - t0, 1),
                  **{f"train_{k}": round(float(v) / steps_per_epoch, 5) for k, v in sums.items()},
                  **({"lambda_s": round(float(lambda_s), 5)} if loss_mod else {}), **evaluate(model, test_set, dev)}
        history.append(record)
        msg = f"epoch {epoch + 1}: test acc {record['test_accuracy']:.4f}, train acc {record['train_acc']:.4f}"
        if "filter_states" in record:
            fs = record["filter_states"]
            msg += (f", flops {record['flops_ratio']:.3f}, filters act/sil/dyn {fs['activated']}/{fs['silent']}/"
                    f"{fs['dynamic']} of {fs['total']}, MI {record['train_mi']:.3f}")
        print(msg, flush=True)
        save_checkpoint(ckpt_dir, modules, optimizers, {"epoch": epoch, "lambda_s": float(lambda_s), "history": history,
                                                  "train": cfg.to_dict(), "model": model_cfg.to_dict()})

    gates_moved = None
    if decouple:  # the failure this project already paid for: every gate open (or shut) at eval time
        fs = history[-1]["filter_states"]
        gates_moved = fs["dynamic"] > 0 and history[-1]["flops_ratio"] < 0.99
        if not gates_moved:
            print(f"WARNING: the gates did not move (filter states {fs}, FLOPs ratio {history[-1]['flops_ratio']:.3f}): "
                  "this bundle does not decouple anything; do not use it for path-based detection", flush=True)
    extra = {"phase": "decoupled" if decouple else "dense", "gates_moved": gates_moved, "train": cfg.to_dict(), "seed": cfg.seed,
             "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev), "compiled": compile_step,
             "data": {"root": str(data), "train_fingerprint": train_set.fingerprint,
                      "test_fingerprint": test_set.fingerprint, "train_images": len(y_train)},
             "init": {"path": str(init), "weights_sha256": file_sha256(Path(init) / WEIGHTS)} if init else None,
             "final_lambda_s": float(lambda_s) if decouple else None}
    save_bundle(model.cpu().to(memory_format=torch.contiguous_format), out, extra)
    write_json(out / HISTORY, history)
    from .plots import plot_history  # matplotlib only when a run finishes

    plot_history(history, out / "training.png")
    print(f"wrote bundle {out}")
    return out
