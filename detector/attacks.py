"""Adversarial sets with torchattacks, attacking only correctly classified images.

Positives for detection are the *successful* attacks; negatives the clean, correctly classified images.
The model is attacked as is (logits from [0, 1] input; eval mode, so paths are the deterministic z = 1(s > 0)).
`ATTACKS` names every attack the project runs: those the `path` scorer is fitted on (FGSM, PGD, CW, DeepFool and PGD
transferred from another network), those that informed a recipe choice or share a budget with the fit, and three that
nothing ever looked at before the evaluation (another norm, another threat model, another transfer method).
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from .bundle import publish
from .data import to_unit_float
from .parallel import shard_map


@dataclass(frozen=True)
class AttackSpec:
    cls: str  # torchattacks class
    params: dict[str, Any]  # Linf budgets in [0, 1] pixel units
    what: str  # norm, threat model and budget, for reports
    transfer: bool = False  # crafted on another network (run_attack's `source`), judged on the attacked one
    # In a detector's fit, run at each of the generic radii CalibrationConfig.linf_eps (step a quarter of the radius)
    # rather than at the budget above: the fit's Linf attacks, not the evaluation-only ones.
    fit_radii: bool = False


ATTACKS: dict[str, AttackSpec] = {
    "fgsm": AttackSpec("FGSM", {"eps": 8 / 255}, "Linf 8/255, one gradient step", fit_radii=True),
    "pgd": AttackSpec(
        "PGD",
        {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10, "random_start": True},
        "Linf 8/255, 10 steps",
        fit_radii=True,
    ),
    "cw": AttackSpec("CW", {"c": 1.0, "kappa": 0.0, "steps": 50, "lr": 0.01}, "L2 minimal (Carlini-Wagner), 50 steps"),
    "deepfool": AttackSpec("DeepFool", {"steps": 50, "overshoot": 0.02}, "L2 minimal (DeepFool), 50 steps"),
    "pgdl2": AttackSpec(
        "PGDL2", {"eps": 0.5, "alpha": 0.1, "steps": 20, "random_start": True}, "L2 0.5, 20 steps (another norm)"
    ),
    "apgd-dlr": AttackSpec(
        "APGD",
        {"eps": 4 / 255, "steps": 100, "loss": "dlr", "n_restarts": 1},
        "Linf 4/255, APGD on the DLR loss, 100 steps (another budget, loss and step rule)",
    ),
    "square": AttackSpec(
        "Square",
        {"eps": 8 / 255, "n_queries": 1000, "n_restarts": 1, "loss": "margin"},
        "Linf 8/255, Square: score-based black box, 1,000 queries (no gradient)",
    ),
    "transfer": AttackSpec(
        "PGD",
        {"eps": 8 / 255, "alpha": 2 / 255, "steps": 20, "random_start": True},
        "Linf 8/255, 20-step PGD, transferred",
        transfer=True,
        fit_radii=True,
    ),
    # Transfer attacks built to transfer better: momentum (MI-FGSM, Dong et al. 2018), and momentum with random
    # resizing and translation-invariant (Gaussian-smoothed, 5 x 5 at 32 px) gradients (TI-DIM, Dong et al. 2019),
    # whose low-frequency perturbations look least like the PGD the fit sees.
    "transfer-mi": AttackSpec(
        "MIFGSM",
        {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10, "decay": 1.0},
        "Linf 8/255, MI-FGSM (momentum), transferred",
        transfer=True,
    ),
    "transfer-ti": AttackSpec(
        "TIFGSM",
        {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10, "decay": 1.0, "len_kernel": 5, "nsig": 3},
        "Linf 8/255, TI-DIM (smoothed gradients, random resizing, momentum), transferred",
        transfer=True,
    ),
    # Two families no recipe choice ever looked at: another norm (L1, sparse) and another threat model (L0 patches,
    # black box). EAD from an initial constant of 0.1, 4 x 50 steps: every image broken on the calibration check, at
    # a median L1 of ~3 (vs ~0 from torchattacks' default 0.001 within that budget).
    "eadl1": AttackSpec(
        "EADL1",
        {"kappa": 0, "lr": 0.01, "binary_search_steps": 4, "max_iterations": 50, "initial_const": 0.1},
        "L1 elastic-net (EAD, L1 rule), 4 x 50 steps (another norm: sparse)",
    ),
    "pixle": AttackSpec(
        "Pixle",
        {"x_dimensions": (0.1, 0.2), "restarts": 5, "max_iterations": 10},
        "Pixle: score-based black box that moves patches of pixels, 5 x 10 iterations (L0, no gradient)",
    ),
}


def split_name(name: str) -> tuple[str, str | None]:
    """ "transfer-ti@models/vgg19-dense" -> ("transfer-ti", "models/vgg19-dense"): a transferred attack crafted on the
    bundle after the "@" rather than on the run's --source (another architecture, say). A plain name -> (name, None)."""
    base, at, source = name.partition("@")
    return base, (source if at else None)


def file_stem(name: str) -> str:
    """An attack's name as one file name: NAME@PATH's path separators become "_"."""
    return re.sub(r"[^A-Za-z0-9@._-]", "_", name)


def attack_spec(name: str) -> AttackSpec:
    """The AttackSpec of `name` (a key of ATTACKS, or a transferred one with "@SOURCE"); a clear error otherwise."""
    base, source = split_name(name)
    if base not in ATTACKS:
        raise ValueError(f"unknown attack {base!r}; expected one of {sorted(ATTACKS)}")
    spec = ATTACKS[base]
    if source is not None and not (spec.transfer and source):
        transferred = sorted(n for n, a in ATTACKS.items() if a.transfer)
        raise ValueError(
            f"attack {name!r}: only a transferred attack ({', '.join(transferred)}) takes '@SOURCE', a bundle path"
        )
    return spec


def is_transfer(name: str) -> bool:
    """Whether attack `name` is crafted on another network (run_attack's `source`)."""
    base, _ = split_name(name)
    return base in ATTACKS and ATTACKS[base].transfer


def needs_run_source(name: str) -> bool:
    """Whether attack `name` is crafted on the run's --source: a transferred attack that names no bundle of its own."""
    return is_transfer(name) and split_name(name)[1] is None


def describe(name: str, source: str) -> str:
    """The attack's budget and threat model for reports; a transferred one also names the network it was crafted on
    (its "@SOURCE", else `source`, the run's)."""
    spec = attack_spec(name)
    return f"{spec.what} (crafted on {split_name(name)[1] or source})" if spec.transfer else spec.what


@dataclass
class AttackSet:
    name: str
    params: dict[str, Any]
    x_clean: Tensor  # (N, 3, S, S) float in [0, 1]: correctly classified clean images
    y: Tensor  # (N,) their true labels
    x_adv: Tensor  # (N, 3, S, S) float in [0, 1]: attacked versions
    success: Tensor  # (N,) bool: the attacked image is misclassified
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if len(self.success) else 0.0


@functools.cache
def _batched_jacobian_deepfool() -> type:
    """torchattacks.DeepFool with one change: its Jacobian (K logits x image) comes from a single pass, the image
    repeated K times, one forward and one backward with the identity as grad_outputs (row k = d logit_k / d x), instead
    of K backward passes through the batch-1 graph. The algorithm, its steps and its stopping are torchattacks' own.
    The model is in eval mode, so the K copies do not interact; the Jacobian agrees to float rounding (a test). One
    batched backward instead of K sequential ones is what makes it faster."""
    import torchattacks

    class DeepFool(torchattacks.DeepFool):
        def _construct_jacobian(self, y: Tensor, x: Tensor) -> Tensor:
            k = y.shape[0]  # y: (K,) logits of the single image x (1, 3, H, W)
            xr = x.detach().repeat(k, 1, 1, 1).requires_grad_()
            logits = self.get_logits(xr)  # (K, K)
            eye = torch.eye(k, dtype=logits.dtype, device=logits.device)
            (grad,) = torch.autograd.grad(logits, xr, grad_outputs=eye)
            return grad.reshape(*y.shape, *x.shape)  # (K, 1, 3, H, W), as torchattacks builds it

    return DeepFool


def make_attack(name: str, model: torch.nn.Module, **overrides: Any):
    import torchattacks

    spec = attack_spec(name)
    attack_cls = _batched_jacobian_deepfool() if spec.cls == "DeepFool" else getattr(torchattacks, spec.cls)
    return attack_cls(model, **{**spec.params, **overrides})


@torch.inference_mode()
def _predict(model: torch.nn.Module, x: Tensor, device: str | torch.device, batch_size: int = 500) -> Tensor:
    return torch.cat([model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def run_attack(
    model: torch.nn.Module,
    name: str,
    x: Tensor,
    y: Tensor,
    batch_size: int = 250,
    seed: int = 0,
    device: str | torch.device = "cpu",
    source: torch.nn.Module | None = None,
    **overrides: Any,
) -> AttackSet:
    """Attack the correctly classified images among x (N, 3, S, S; uint8 or [0,1] float) with labels y (N,).
    A transfer attack (ATTACKS[name].transfer) is crafted on `source` and judged on `model`; for "NAME@PATH" the
    caller passes PATH's network as `source` (detector/transfer.py)."""
    spec = attack_spec(name)
    if spec.transfer and source is None:
        raise ValueError(f"attack {name!r} is crafted on another network: pass source=")
    model = model.to(device).eval()
    x = to_unit_float(x)
    keep = _predict(model, x, device) == y
    x, y = x[keep], y[keep]
    attack = make_attack(name, (source.to(device).eval() if spec.transfer else model), **overrides)
    starts = list(range(0, len(x), batch_size))
    bar = tqdm(total=len(starts), desc=f"attack {name}", unit="batch", leave=False)

    def one(b: int) -> Tensor:
        torch.manual_seed(seed * 1_000_003 + b)  # random starts: per batch, so any split of the batches agrees
        i = starts[b]
        out = attack(x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)).detach().cpu()
        out = out.clamp(0, 1)  # EAD's iterates land up to ~6e-5 outside [0, 1] (float rounding of its projection)
        bar.update()
        return out

    advs = shard_map(one, len(starts))  # under torchrun, each process attacks its share of the batches
    bar.close()
    x_adv = torch.cat(advs) if advs else x.clone()
    adv_pred = _predict(model, x_adv, device) if len(x_adv) else y.clone()
    params = {**spec.params, **overrides}
    meta = {"seed": seed, "attacked": int(keep.sum()), "offered": len(keep)}
    return AttackSet(name, params, x, y, x_adv, adv_pred != y, meta)


def save_attack_set(s: AttackSet, path: str | os.PathLike) -> Path:
    """One safetensors file; name, parameters and meta in its metadata. Written to a temp file, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"name": s.name, "params": s.params, "meta": s.meta, "success_rate": s.success_rate}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(
        {"x_clean": s.x_clean.contiguous(), "y": s.y, "x_adv": s.x_adv.contiguous(), "success": s.success},
        str(tmp),
        metadata={"dnd_attack": json.dumps(meta)},
    )
    publish(tmp, path)
    return path


def to_uint8(x: Tensor) -> Tensor:
    """[0, 1] float images -> uint8 (0-255, rounded): what any image file, and so any HTTP client, delivers."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def write_pngs(
    s: AttackSet,
    model: torch.nn.Module,
    directory: str | os.PathLike,
    classes: tuple[str, ...],
    device: str | torch.device = "cpu",
) -> tuple[int, int]:
    """The successful attacks of s as lossless 8-bit PNGs, `DIR/NNNNN-<true class>-as-<predicted class>.png` (NNNNN:
    the image's row in s), predicted on the 8-bit image itself, as a service would see it: rounding to 8 bits moves
    each pixel by up to 0.5/255 and can undo a minimal attack (CW, DeepFool). Only images still misclassified after
    rounding are written. Returns (written, successful before rounding)."""
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    idx = torch.nonzero(s.success).flatten()
    if not len(idx):
        return 0, 0
    x8 = to_uint8(s.x_adv[idx])  # (M, 3, S, S) uint8
    # uncached: the rounded images are used once, and the cache would keep them alive for the process's lifetime
    pred = _predict.__wrapped__(model.to(device).eval(), x8.float() / 255, device)
    written = 0
    for i, img, p in zip(idx.tolist(), x8, pred.tolist()):
        t = int(s.y[i])
        if p == t:
            continue
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(directory / f"{i:05d}-{classes[t]}-as-{classes[p]}.png")
        written += 1
    return written, len(idx)


def load_attack_set(path: str | os.PathLike) -> AttackSet:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["dnd_attack"])
        t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    return AttackSet(meta["name"], meta["params"], t["x_clean"], t["y"], t["x_adv"], t["success"], meta["meta"])
