"""`dnd train`: dense ResNet from scratch, or (decouple=True) the gated network fine-tuned from a dense bundle.

Resumable: a checkpoint is written after every epoch; data order, augmentation and gate noise are seeded per epoch,
so a resumed run continues exactly where it stopped. `train` reads top-down: check the request, load the data,
build the run (model, losses, teacher, optimizers), resume it, run the epochs, write the bundle.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from detector.bundle import WEIGHTS, file_sha256, read_config, save_bundle, write_json
from detector.config import ModelConfig
from detector.data import Split
from detector.networks import GatedNetwork
from detector.stats import collect_paths, dense_macs, filter_states, macs_per_sample

from .adversarial import catastrophic_overfitting, pgd_test_accuracy
from .augment import augment, crop_flip_params, cutout, cutout_params
from .checkpoint import META, save_checkpoint
from .config import TrainConfig
from .distributed import init as init_distributed
from .setup import Run, build_run, check_request, init_weights, resume_from
from .step import lr_at, set_lr, train_step

__all__ = ["HISTORY", "evaluate", "init_weights", "run_epoch", "train"]

HISTORY = "train_history.json"


def run_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """Train one epoch; returns its history record (losses, LR, seconds, test figures)."""
    cfg, model, dev, spe = run.cfg, run.model, run.dev, run.steps_per_epoch
    model.train()
    if run.loss_mod is not None and epoch >= cfg.epochs - cfg.hard_epochs:
        model.set_gate_training(noise_std=0.0, p_hard=1.0)
    torch.manual_seed(cfg.seed * 100_003 + epoch)  # gate noise, adversarial random starts
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    perm = torch.randperm(len(run.y_train), generator=gen).to(dev)
    total, warmup, dense = spe * cfg.epochs, int(cfg.warmup_epochs * spe), dense_macs(model)
    sums: dict[str, torch.Tensor] = {}
    t0, frac = time.perf_counter(), 0.0
    bar = tqdm(
        range(spe), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", mininterval=5, disable=not run.dist.main
    )
    for it in bar:
        step = epoch * spe + it
        frac = lr_at(step, total, warmup, 1.0)  # schedule shape, scaled by each group's peak
        set_lr(run.optimizers, frac)
        idx = perm[it * cfg.batch_size : (it + 1) * cfg.batch_size]
        # the global batch's draws on every process, then this process's slice (training/distributed.py)
        size = run.x_train.shape[-1]
        ij, flip = crop_flip_params(len(idx), gen, size)
        centres = cutout_params(len(idx), gen, size) if cfg.cutout else None  # drawn only when on: the stream stays
        mine = run.dist.shard(torch.arange(len(idx)))
        idx, ij, flip = idx[mine.to(dev)], ij[mine], flip[mine]
        xb = augment(run.x_train[idx], ij.to(dev, non_blocking=True), flip.to(dev, non_blocking=True))
        if centres is not None:
            xb = cutout(xb, centres[mine], cfg.cutout)
        xb = xb.contiguous(memory_format=torch.channels_last)
        # offline: the teacher's logits of this image, mirrored as the view is (the crop shift is not modelled)
        t_in = run.teacher if run.t_logits is None else run.t_logits[flip.to(dev).long(), idx]
        terms = train_step(
            model, run.loss_mod, run.optimizers, xb, run.y_train[idx], cfg, run.lambda_s, dense, t_in, run.loss_fn
        )
        if run.dist.on:  # every process logs, and steers lambda_s with, the global batch's figures
            terms = dict(zip(terms, run.dist.mean(torch.stack([v.float() for v in terms.values()]))))
        if run.loss_mod is not None and cfg.target_flops > 0:  # dual ascent on lambda_s towards the FLOPs target
            ramp = min(1.0, step / max(cfg.target_ramp_epochs * spe, 1))
            target = 1.0 - ramp * (1.0 - cfg.target_flops)
            run.lambda_s = (run.lambda_s + cfg.dual_lr * (terms["flops"] - target) / spe).clamp_min(0.0)
        for k, v in terms.items():  # running sums stay on the device: a host read per step stalls a GPU
            sums[k] = sums[k] + v.double() if k in sums else v.double()
        if it % 20 == 0:
            post = {k: f"{float(v) / (it + 1):.3f}" for k, v in sums.items()}
            bar.set_postfix(post | ({"lam_s": f"{float(run.lambda_s):.3f}"} if run.loss_mod else {}))
    bar.close()
    return {
        "epoch": epoch + 1,
        "lr_end": frac * cfg.lr,
        "seconds": round(time.perf_counter() - t0, 1),
        **{f"train_{k}": round(float(v) / spe, 5) for k, v in sums.items()},
        **({"lambda_s": round(float(run.lambda_s), 5)} if run.loss_mod else {}),
        **(evaluate(model, run.test, dev, cfg) if run.dist.main else {}),
    }


def evaluate(model: GatedNetwork, test: Split, device: torch.device, cfg: TrainConfig | None = None) -> dict[str, Any]:
    """Test accuracy (and, decoupled, FLOPs ratio, per-layer density, filter states; adversarial, the PGD-10
    robust accuracy on the first adv_eval_limit test images)."""
    logits, z = collect_paths(model, test.x, 500, device)
    res: dict[str, Any] = {"test_accuracy": float((logits.argmax(1) == test.y).float().mean())}
    if z:
        res["flops_ratio"] = float(macs_per_sample(model, z).mean()) / dense_macs(model)
        res["density"] = [round(float(zl.float().mean()), 4) for zl in z]
        res["filter_states"] = filter_states(z)
    if cfg is not None and cfg.adv_eps > 0 and cfg.adv_eval_limit > 0:
        res["test_robust_accuracy"] = pgd_test_accuracy(model, test, cfg.adv_eps, cfg.adv_eval_limit, device)
    return res


def log_epoch(record: dict[str, Any], history: list[dict[str, Any]]) -> None:
    msg = f"epoch {record['epoch']}: test acc {record['test_accuracy']:.4f}, train acc {record['train_acc']:.4f}"
    if "filter_states" in record:
        fs = record["filter_states"]
        msg += (
            f", flops {record['flops_ratio']:.3f}, filters act/sil/dyn {fs['activated']}/{fs['silent']}/"
            f"{fs['dynamic']} of {fs['total']}, MI {record['train_mi']:.3f}"
        )
    if "test_robust_accuracy" in record:
        msg += f", PGD-10 robust acc {record['test_robust_accuracy']:.4f}"
    print(msg, flush=True)
    if catastrophic_overfitting(history):
        print(
            "WARNING: catastrophic overfitting: robust accuracy collapsed from its best "
            f"{max(h['test_robust_accuracy'] for h in history):.4f}; use more --adv-steps or a smaller --adv-alpha",
            flush=True,
        )


def finish(
    run: Run, out: Path, data: str | Path, train_set: Split, decouple: bool, init: str | Path | None, compile_step: bool
) -> Path:
    """Write the bundle (weights, config.json with provenance), the history and its plot."""
    last = run.history[-1]
    gates_moved = None
    if decouple:  # the failure to watch for: every gate open (or shut) at eval time
        gates_moved = last["filter_states"]["dynamic"] > 0 and last["flops_ratio"] < 0.99
        if not gates_moved:
            print(
                f"WARNING: the gates did not move (filter states {last['filter_states']}, FLOPs ratio "
                f"{last['flops_ratio']:.3f}): this bundle does not decouple anything; do not use it for path-based "
                "detection",
                flush=True,
            )
    dev = run.dev
    extra = {
        "phase": "decoupled" if decouple else "dense",
        "gates_moved": gates_moved,
        "train": run.cfg.to_dict(),
        "seed": run.cfg.seed,
        "compiled": compile_step,
        "processes": run.dist.world,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev),
        "data": {
            "root": str(data),
            "train_fingerprint": train_set.fingerprint,
            "test_fingerprint": run.test.fingerprint,
            "train_images": len(run.y_train),
        },
        "init": {"path": str(init), "weights_sha256": file_sha256(Path(init) / WEIGHTS)} if init else None,
        "final_lambda_s": float(run.lambda_s) if decouple else None,
    }
    if run.cfg.adv_eps > 0:
        extra["adversarial"] = {
            "catastrophic_overfitting": catastrophic_overfitting(run.history),
            "test_robust_accuracy": last.get("test_robust_accuracy"),
        }
    save_bundle(run.model.cpu().to(memory_format=torch.contiguous_format), out, extra)
    write_json(out / HISTORY, run.history)
    from .plots import plot_history  # matplotlib only when a run finishes

    plot_history(run.history, out / "training.png")
    print(f"wrote bundle {out}")
    return out


def train(
    data: str | Path,
    out: str | Path,
    cfg: TrainConfig,
    decouple: bool = False,
    init: str | Path | None = None,
    resume: bool = False,
    device: str = "cpu",
    model_cfg: ModelConfig | None = None,
    compile_step: bool = False,
    size: int | None = None,
) -> Path:
    """Train and write a bundle to `out` (weights, config.json, train_history.json, training.png). Returns `out`.

    compile_step: run the forward + losses through torch.compile (an execution setting like `device`, so a run may be
    resumed with or without it). size: the side a new network reads, every image resized to it (default: the data's
    own size; an --init bundle keeps its own)."""
    dist, device = init_distributed(device)
    out, dev = Path(out), torch.device(device)
    check_request(out, cfg, decouple, init, resume, dist.world)
    if model_cfg is None:  # the --init bundle's architecture (gated with --decouple), else ResNet-20
        base = ModelConfig.from_dict(read_config(init)["model"]) if init else ModelConfig()
        model_cfg = replace(base, decoupled=True) if decouple else base
    run, train_set = build_run(data, cfg, model_cfg, decouple, init, dev, compile_step, dist, size)
    model_cfg = run.model.cfg  # with the data's class names (a new network) or the --init bundle's
    ckpt_dir = out / "checkpoint"
    if resume and (ckpt_dir / META).exists():
        resume_from(run, ckpt_dir)
    for epoch in range(run.start_epoch, cfg.epochs):
        record = run_epoch(run, epoch)
        if dist.main:  # one writer: process 0 evaluates, logs and checkpoints; the others wait for it
            run.history.append(record)
            log_epoch(record, run.history)
            meta = {
                "epoch": epoch,
                "lambda_s": float(run.lambda_s),
                "history": run.history,
                "train": cfg.to_dict(),
                "model": model_cfg.to_dict(),
            }
            save_checkpoint(ckpt_dir, run.modules, run.optimizers, meta)
        dist.barrier()
    if not dist.main:
        dist.barrier()
        return out
    path = finish(run, out, data, train_set, decouple, init, compile_step)
    dist.barrier()
    return path
