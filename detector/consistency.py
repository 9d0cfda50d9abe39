"""Path consistency and output confidence: the score's two feature families beside the path features.

Consistency: how far an image's own calculation path moves under a small, fixed input transform T. A clean image
sits well inside its class's region, so re-encoding or smoothing it barely moves its path; an adversarial
perturbation is a fragile, high-frequency pattern that T partly removes, so the path (and the prediction) moves
back towards the source class. The transforms run in the same forward pass as the image: x and its transforms are
stacked into one batch (N images, T transforms -> one forward of N (1 + T) rows), so one request stays one call.

Every transform is deterministic (the noise is one fixed pattern per image size), so an image's features do not
depend on its batch. JPEG has no gradient; `transform(..., bpda=True)` passes the identity's gradient through it
(BPDA, Athalye et al. 2018), which is how the adaptive attack differentiates the features.

Confidence: max softmax probability, energy (logsumexp), top-1 minus top-2 logit margin and the penultimate
feature's norm: how sure the network is, which minimal attacks (CW, DeepFool) leave just across the boundary.

Residual: quantiles of the image's own median-filter residual |x - median3(x)|, read from the input, not the network.
An Linf attack moves nearly every pixel by up to its budget, flat regions included, where a clean (here JPEG q75)
image carries almost no fine detail: the residual's low and middle quantiles rise. Noisy clean images raise them too,
but leave the path where it was; the trees read the two together.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .corruptions import jpeg
from .features import layer_sums

# The 19 compare-exchanges that leave the median of 9 values in position 4 (Paeth's network, as in Devillard's
# opt_med9): each is an element-wise min / max over whole images.
_MEDIAN9 = (
    (1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
    (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2),
)  # fmt: skip


def median3(x: Tensor) -> Tensor:
    """3 x 3 median filter per channel, reflect-padded: (N, C, H, W) -> same. Differentiable (through min / max).
    A sorting network over the nine shifted views: the same values as stacking them and taking torch.median (a test
    checks it), ~15x faster on 2 cores (0.23 ms per CIFAR image that way, a tenth of `det.predict` at batch 64)."""
    h, w = x.shape[-2:]
    xp = F.pad(x, (1, 1, 1, 1), mode="reflect")
    v = [xp[..., i : i + h, j : j + w] for i in range(3) for j in range(3)]
    for a, b in _MEDIAN9:
        v[a], v[b] = torch.minimum(v[a], v[b]), torch.maximum(v[a], v[b])
    return v[4]


@functools.cache
def _noise_pattern(c: int, h: int, w: int) -> Tensor:
    with torch.inference_mode(False):  # cached: may serve autograd later
        return torch.randn(c, h, w, generator=torch.Generator().manual_seed(0))


RESIDUAL_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
CONFIDENCE_COLUMNS = 4  # confidence_features
RESIDUAL_COLUMNS = len(RESIDUAL_QUANTILES) + 1  # residual_features: the quantiles, then the mean


def residual_features(x: Tensor) -> Tensor:
    """(N, 3, H, W) images in [0, 1] -> (N, 6): the 10, 25, 50, 75 and 90% quantiles and the mean of |x - median3(x)|
    over each image's pixels and channels. Per image (batch-independent) and differentiable."""
    r = (x.float() - median3(x.float())).abs().flatten(1)
    if len(r) == 0:  # torch.quantile refuses an empty input
        return r.new_zeros(0, RESIDUAL_COLUMNS)
    q = torch.quantile(r, torch.tensor(RESIDUAL_QUANTILES, device=r.device), dim=1).T  # (N, 5)
    return torch.cat([q, r.mean(1, keepdim=True)], 1)


def fixed_noise(x: Tensor, sigma: float) -> Tensor:
    """x plus one fixed Gaussian pattern (seed 0) of std sigma, clipped to [0, 1]: the same for every image."""
    return (x + sigma * _noise_pattern(*x.shape[1:]).to(x)).clamp(0, 1)


def quantise(x: Tensor, bits: int) -> Tensor:
    """Each pixel rounded to 2**bits levels (feature squeezing's bit-depth reduction)."""
    levels = 2**bits - 1
    return torch.round(x * levels) / levels


TRANSFORMS: dict[str, tuple[Callable[[Tensor], Tensor], bool, str]] = {  # fn, differentiable, description
    "jpeg75": (lambda x: jpeg(x, 75), False, "JPEG re-encoding at quality 75"),
    "jpeg50": (lambda x: jpeg(x, 50), False, "JPEG re-encoding at quality 50"),
    "median": (median3, True, "3 x 3 median filter"),
    "noise": (lambda x: fixed_noise(x, 0.02), True, "a fixed Gaussian noise pattern, sigma 0.02"),
    "bits4": (lambda x: quantise(x, 4), False, "bit depth reduced to 4 bits"),
    "shift": (lambda x: torch.roll(x, (1, 1), (2, 3)), True, "1-pixel diagonal shift (wrap-around)"),
    "shift2": (lambda x: torch.roll(x, (2, 2), (2, 3)), True, "2-pixel diagonal shift (wrap-around)"),
    # the networks train on mirrored images (crop + flip), so a clean image's path should barely notice its mirror
    "flip": (lambda x: x.flip(3), True, "horizontal mirror"),
}


def transform(name: str, x: Tensor, bpda: bool = False) -> Tensor:
    """x (N, 3, H, W) in [0, 1] under transform `name`. bpda=True: a transform without a gradient returns its value
    with the identity's gradient (x + (T(x) - x).detach())."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; expected one of {sorted(TRANSFORMS)}")
    fn, differentiable, _ = TRANSFORMS[name]
    if differentiable:
        return fn(x)
    if bpda and x.requires_grad:
        return x + (fn(x.detach()) - x).detach()
    return fn(x.detach())


@dataclass(frozen=True)
class FeatureSpec:
    """Which families the score reads beside the path features; recorded in the profiles with the scorer."""

    transforms: tuple[str, ...] = ()  # consistency under these TRANSFORMS, in order
    confidence: bool = False  # the 4 output-confidence columns
    residual: bool = False  # the 6 median-residual columns of the input (residual_features)
    # The transformed copies' forward: "float32", or "bfloat16" autocast (the images themselves always run in float32,
    # so labels and paths are the network's own). bfloat16 runs the copies ~2.5x faster where the CPU has native
    # bf16 matrix units (AMX); the features then include its rounding, so profiles built one way serve only that way.
    precision: str = "float32"

    def check(self) -> None:
        unknown = [t for t in self.transforms if t not in TRANSFORMS]
        if unknown or len(set(self.transforms)) != len(self.transforms):
            raise ValueError(
                f"transforms {','.join(self.transforms)}: expected distinct names among {', '.join(TRANSFORMS)}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")

    def extra_columns(self, layers: int) -> int:
        """Columns after the path features: per transform 2 L + 2, then 4 for confidence, then 6 for the residual."""
        conf, res = CONFIDENCE_COLUMNS if self.confidence else 0, RESIDUAL_COLUMNS if self.residual else 0
        return len(self.transforms) * (2 * layers + 2) + conf + res

    def columns_in(self, wider: FeatureSpec, n_path: int, layers: int) -> list[int]:
        """Indices of the columns this spec reads within the inputs `wider` lays out: the n_path path features, then
        2 L + 2 per transform in wider's order, then the 4 confidence columns, then the 6 residual columns. How a fit
        on fewer families (an ablation, a candidate of the selection study) reads the inputs of a wider one."""
        if (
            any(t not in wider.transforms for t in self.transforms)
            or (self.confidence and not wider.confidence)
            or (self.residual and not wider.residual)
        ):
            raise ValueError(f"{self} reads families that {wider} does not lay out")
        per = 2 * layers + 2
        cols = list(range(n_path))
        for t in self.transforms:
            k = wider.transforms.index(t)
            cols += range(n_path + k * per, n_path + (k + 1) * per)
        start = n_path + len(wider.transforms) * per
        if self.confidence:
            cols += range(start, start + CONFIDENCE_COLUMNS)
        if self.residual:
            start += CONFIDENCE_COLUMNS if wider.confidence else 0
            cols += range(start, start + RESIDUAL_COLUMNS)
        return cols

    def families(self) -> list[str]:
        return (
            ["path"]
            + (["consistency"] if self.transforms else [])
            + (["confidence"] if self.confidence else [])
            + (["residual"] if self.residual else [])
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object] | None) -> FeatureSpec:
        d = d or {}
        # profiles written before `precision` existed ran everything in float32; before `residual`, read none
        return cls(
            tuple(d.get("transforms", ())),  # type: ignore[arg-type]
            bool(d.get("confidence", False)),
            bool(d.get("residual", False)),
            str(d.get("precision", "float32")),
        )


def stack(x: Tensor, spec: FeatureSpec, bpda: bool = False) -> Tensor:
    """(N, 3, H, W) -> (N (1 + T), 3, H, W): x, then x under each transform, in spec order."""
    if not spec.transforms:
        return x
    return torch.cat([x, *(transform(t, x, bpda) for t in spec.transforms)])


PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


def run_stacked(
    forward: Callable[[Tensor], tuple],
    xs: Tensor,
    n: int,
    spec: FeatureSpec,
    forward_low: Callable[[Tensor], tuple] | None = None,
    pool: Executor | None = None,
) -> tuple:
    """forward(xs) for the stacked batch xs (N (1 + T) rows, the images first): one call in float32, or with
    spec.precision bfloat16 two calls, the N images in float32 and the N T transformed copies under bfloat16
    autocast (or through `forward_low`, a graph traced under it). With a `pool`, the copies' call runs in one of its
    threads while this thread runs the images' (the same numbers; at small batches neither call keeps two cores
    busy). `forward` returns (logits, features, z list, s list); what comes back is that, in float32, rows in xs's
    order."""
    low = PRECISIONS[spec.precision]
    if low is None or len(xs) == n:
        return forward(xs)
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def copies() -> tuple:
        # grad, inference and autocast modes are per thread: the caller's, in whichever thread this runs
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            if forward_low is not None:
                return forward_low(xs[n:])
            with torch.autocast(xs.device.type, dtype=low):
                return forward(xs[n:])

    if pool is None:
        head, tail = forward(xs[:n]), copies()
    else:
        pending = pool.submit(copies)
        head = forward(xs[:n])
        tail = pending.result()

    def cat(a: Tensor | list[Tensor], b: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
        if isinstance(a, list):
            return [torch.cat([u, v.to(u.dtype)]) for u, v in zip(a, b)]
        return torch.cat([a, b.to(a.dtype)])

    return tuple(cat(a, b) for a, b in zip(head, tail))


def consistency_features(
    z: list[Tensor], s: list[Tensor], logits: Tensor, n: int, labels: Tensor, transforms: int
) -> Tensor:
    """From one forward of the stacked batch (rows: N images, then N per transform): paths z and gate logits s,
    L x (N (1 + T), C_l), and logits (N (1 + T), K); labels (N,) the images' predicted classes -> (N, T (2 L + 2)).
    Per transform: per layer the share of filters whose state changed (soft z: mean |z - z_T|), per layer the mean
    absolute change of the gate logits, the L1 distance between the softmax outputs, and the margin of the image's
    predicted class under T (its logit minus the best other; negative = the label flipped). All differentiable.
    All layers at once: per-layer sums of the concatenated paths are one matmul with a block matrix (4 L T small
    ops, one per layer and transform, cost ~1 ms of a 10 ms batch-1 det.predict)."""
    cols = []
    widths = tuple(zl.shape[1] for zl in z)
    sums, w = layer_sums(widths).to(logits), logits.new_tensor(widths)  # (sum C_l, L): cat(.) @ sums = layer sums
    zc = torch.cat([zl.to(logits.dtype) for zl in z], 1)  # (N (1 + T), sum C_l)
    sc = torch.cat(s, 1).to(logits.dtype)
    p = logits.softmax(1)
    idx = labels.view(-1, 1)
    for t in range(1, transforms + 1):
        rows = slice(t * n, (t + 1) * n)
        cols.append((zc[:n] - zc[rows]).abs() @ sums / w)
        cols.append((sc[:n] - sc[rows]).abs() @ sums / w)
        cols.append((p[:n] - p[rows]).abs().sum(1, keepdim=True))
        lt = logits[rows]
        cols.append(lt.gather(1, idx) - lt.scatter(1, idx, float("-inf")).amax(1, keepdim=True))
    return torch.cat(cols, 1) if cols else logits.new_zeros(n, 0)


def confidence_features(logits: Tensor, features: Tensor) -> Tensor:
    """(N, K) logits, (N, D) penultimate features -> (N, 4): max softmax probability, logsumexp of the logits
    (negative energy), top-1 minus top-2 logit, penultimate feature norm."""
    top2 = logits.topk(2, 1).values
    return torch.stack(
        [logits.softmax(1).amax(1), logits.logsumexp(1), top2[:, 0] - top2[:, 1], features.norm(dim=1)], 1
    )


def extra_features(
    spec: FeatureSpec,
    z: list[Tensor],
    s: list[Tensor],
    logits: Tensor,
    features: Tensor,
    n: int,
    labels: Tensor,
    x: Tensor | None = None,
) -> Tensor:
    """The consistency, confidence and residual columns (N, spec.extra_columns(L)) from one forward of
    stack(x, spec); x (N, 3, H, W), the images themselves, for the residual."""
    cols = [consistency_features(z, s, logits, n, labels, len(spec.transforms))] if spec.transforms else []
    if spec.confidence:
        cols.append(confidence_features(logits[:n], features[:n]))
    if spec.residual:
        if x is None:
            raise ValueError("the residual columns read the images: pass x")
        cols.append(residual_features(x).to(logits))
    return torch.cat(cols, 1) if cols else logits.new_zeros(n, 0)
