"""The one public entry point: `load_detector(bundle)` -> Detector, used by the CLI, the evaluation and the service.

det = load_detector("models/resnet20-decoupled")
out = det.predict(x)          # x: float (N, 3, S, S) in [0, 1]; S = det.image_shape[1] (32 here)
out.labels, out.probs, out.scores, out.is_adversarial, out.per_layer
"""

from __future__ import annotations

import copy
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .bundle import CONFIG, METRICS, file_sha256, load_model, read_config, read_json_or_none, training_summary
from .consistency import PRECISIONS, TRANSFORMS, run_stacked, stack
from .features import PathLikelihood
from .inputs import StackedOutput, images_per_chunk, score_inputs
from .networks import GatedNetwork
from .prediction import Prediction, check_images
from .profiles import PROFILES, PathProfiles, load_profiles
from .runtime import native_bf16


class Detector:
    """A decoupled model plus its class path profiles, fitted `path` scorer and threshold."""

    def __init__(
        self,
        model: GatedNetwork,
        profiles: PathProfiles,
        bundle: Path,
        threshold: float | None = None,
        engine: str = "masked",
    ) -> None:
        if profiles.scorer is None or "threshold" not in profiles.meta:
            raise ValueError(
                f"{bundle / PROFILES} has profiles but no calibrated scorer; "
                f"run `dnd profiles --model {bundle} --data ROOT` to build and calibrate it"
            )
        self.model, self.profiles, self.bundle = model, profiles, bundle
        self.signatures = profiles.signatures()
        self.spec = profiles.spec  # read once: every batch stacks the images with these transforms
        self.likelihood = PathLikelihood.from_freq(profiles.freq)  # built once: one matmul per batch
        self.calibrated_threshold = float(profiles.meta["threshold"])
        self.threshold = self.calibrated_threshold if threshold is None else float(threshold)
        self.classes = list(model.cfg.classes)
        self.weights_sha256 = profiles.meta["model_weights_sha256"]
        self.device = next(model.parameters()).device
        if profiles.scorer.trees is not None:
            profiles.scorer.trees.compile()  # at load (the service's readiness), not in the first request
        self._modules = list(model.modules())  # predict checks their modes: model.eval() itself costs ~0.3 ms a call
        self._traced: torch.jit.ScriptModule | None = None
        # "masked": the network computes every filter and masks the closed ones; "sparse": only the open ones
        # (open_filters_engine). Same numbers; which is faster depends on the network (detector/engines.py).
        self._check_engine(engine)
        self.engine = engine
        self.engine_timing: dict[str, Any] | None = None  # set by engines.pick_engine: what the choice measured
        self._sparse: torch.nn.Module | None = None
        self._paths: _Paths | None = None  # the masked forward as a tuple, built once (see _network)
        # engine -> (float32 graph, bfloat16 graph of the transformed copies or None); see trace()
        self._traced_by_engine: dict[str, tuple[torch.jit.ScriptModule, torch.jit.ScriptModule | None]] = {}
        self._traced_low: torch.jit.ScriptModule | None = None
        if self.spec.transforms and self.spec.precision == "bfloat16" and not native_bf16(self.device):
            warnings.warn(
                f"{bundle / PROFILES} runs the consistency copies in bfloat16, which {self.device} emulates: scoring "
                "is slower here than with float32 profiles (`dnd profiles --transform-precision float32`)",
                stacklevel=2,
            )
        # the bundle's metrics and training record as loaded (GET /v1/model serves them without touching the disk)
        self._metrics = read_json_or_none(bundle / METRICS)
        self._training = training_summary(read_json_or_none(bundle / CONFIG) or {})

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(3, S, S): what predict takes (S = the network's input size; the service resizes images to it)."""
        size = self.model.cfg.input_size
        return (3, size, size)

    def info(self) -> dict[str, Any]:
        """What a client needs to know about the loaded bundle (served as /v1/model)."""
        return {
            "name": self.name,
            "classes": self.classes,
            "input_shape": list(self.image_shape),
            "threshold": self.threshold,
            "calibrated_threshold": self.calibrated_threshold,
            "target_fpr": self.profiles.meta.get("target_fpr"),
            "weights_sha256": self.weights_sha256,
            "profiles_sha256": self.profiles.meta.get("file_sha256"),
            "profiles_created": self.profiles.meta.get("created"),
            "calibration": self.profiles.meta.get("calibration"),
            "score_reads": self.score_reads(),
            "engine": {"name": self.engine, "traced": self._traced is not None, "timing": self.engine_timing},
            "metrics": copy.deepcopy(self._metrics),
            "training": copy.deepcopy(self._training),
        }

    def score_reads(self) -> dict[str, Any]:
        """What the served score reads: its feature families and, for consistency, the transforms."""
        spec = self.spec
        return {
            "families": spec.families(),
            "transforms": {t: TRANSFORMS[t][2] for t in spec.transforms},
            "confidence": spec.confidence,
            "residual": spec.residual,
            "transform_precision": spec.precision,
            "features": int(self.profiles.scorer.mean.numel()) if self.profiles.scorer is not None else 0,
        }

    @staticmethod
    def _check_engine(engine: str) -> None:
        if engine not in ("masked", "sparse"):
            raise ValueError(f"engine: expected masked or sparse, got {engine!r}")

    def supports(self, engine: str) -> bool:
        """Whether this detector's network can run `engine` (every family but a foreign GatedNetwork has both)."""
        self._check_engine(engine)
        if engine == "masked":
            return True
        try:
            self._network("sparse")
        except ValueError:
            return False
        return True

    def use_engine(self, engine: str) -> Detector:
        """Run `engine` from now on (traced if the detector is traced; each engine is traced once)."""
        self._check_engine(engine)
        if engine != self.engine:
            self.engine = engine
            if self._traced is not None:
                self._traced = None
                self.trace()
        return self

    def trace(self) -> Detector:
        """Run the forward pass through TorchScript (torch.jit.trace) from now on. Same numbers (a test checks it);
        the point is serving: TorchScript runs without holding Python's GIL, so the HTTP event loop keeps parsing
        requests while a batch runs. Not frozen: torch.jit.freeze changed results at other batch sizes (measured).
        torch.jit.trace keeps ~8 MB per call for the life of the process (its compilation unit is never freed;
        measured over 25 calls), so each architecture is traced once per process and later detectors deep-copy that
        graph and load their own weights into it: a service reloading its bundle stays flat in memory.
        Profiles whose transformed copies run in bfloat16 get a second graph, traced under autocast: it records the
        casts, so it runs in bfloat16 by itself (the same values as eager autocast, measured)."""
        if self.engine not in self._traced_by_engine:
            net = self._network()
            low = PRECISIONS[self.spec.precision] if self.spec.transforms else None
            main = self._trace_one(net, None)
            self._traced_by_engine[self.engine] = (main, self._trace_one(net, low) if low is not None else None)
        self._traced, self._traced_low = self._traced_by_engine[self.engine]
        return self

    def _trace_one(self, net: torch.nn.Module, dtype: torch.dtype | None) -> torch.jit.ScriptModule:
        key = (self.model.cfg, str(self.device), self.engine, dtype)
        template = _TRACED.get(key)
        if template is not None:
            traced = copy.deepcopy(template)
            traced.load_state_dict(net.state_dict(), strict=True)
            return traced
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about list outputs
            example = torch.rand(8, *self.image_shape, device=self.device)
            with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                _TRACED[key] = torch.jit.trace(net, example, check_trace=False)
        return _TRACED[key]

    def _network(self, engine: str | None = None) -> torch.nn.Module:
        """The forward the detector runs (`engine`, else its own): (logits, features, z, s) from images. The
        open-filters engine is built once, on first use."""
        if any(m.training for m in self._modules):  # model.eval() walks every module (~0.3 ms a call): only if needed
            self.model.eval()
        if (engine or self.engine) == "sparse":
            if self._sparse is None:
                self._sparse = open_filters_engine(self.model)
            return self._sparse
        if self._paths is None:
            self._paths = _Paths(self.model)
        return self._paths

    def score_inputs(self, out: StackedOutput) -> Tensor:
        """The scorer's inputs (N, F) from one forward of the stacked batch (detector/inputs.py), against this
        bundle's profiles and their predicted classes."""
        return score_inputs(out, self.profiles, signatures=self.signatures, likelihood=self.likelihood)

    @torch.inference_mode()
    def predict(self, x: Tensor, batch_size: int | None = None) -> Prediction:
        """Classify and score float images x (N, 3, S, S) in [0, 1] (S = image_shape[1]), batch_size images per
        forward (default: detector/inputs.py STACKED_ROWS stacked rows). Results do not depend on batch_size, up to
        float rounding: a gate logit within ~1e-5 of 0 may open or close its filter in a batch of another size."""
        check_images(x, self.model.cfg.input_size)
        batch_size = batch_size or images_per_chunk(self.spec)
        parts = [self._predict_batch(x[i : i + batch_size]) for i in range(0, len(x), batch_size)] or [
            self._predict_batch(x)
        ]
        return parts[0] if len(parts) == 1 else Prediction.concat(parts)

    def _predict_batch(self, xb: Tensor) -> Prediction:
        n = len(xb)
        xb = xb.to(self.device, torch.float32)
        xs = stack(xb, self.spec)  # the images, then each transform of them
        auto = self._traced is not None and torch.get_num_threads() == 1
        beside = self.device.type == "cpu" and (auto if COPIES_BESIDE is None else COPIES_BESIDE)
        pool = _copies_pool() if beside else None
        if self._traced is not None:
            logits, features, z_float, s = run_stacked(self._traced, xs, n, self.spec, self._traced_low, pool)
        else:
            logits, features, z_float, s = run_stacked(self._network(), xs, n, self.spec, pool=pool)
        z = [zl.bool() for zl in z_float]
        inputs = self.score_inputs(StackedOutput(n, logits, features, z, s, xb))
        logits, features, z, s = logits[:n], features[:n], [zl[:n] for zl in z], [sl[:n] for sl in s]
        labels = logits.argmax(1)
        n_layers = len(z)
        ham, jac = inputs[:, :n_layers], inputs[:, n_layers : 2 * n_layers]  # the per-layer distances lead
        scores = self.profiles.scorer.score(inputs)
        return Prediction(
            labels=labels.cpu(),
            probs=logits.softmax(1).cpu(),
            scores=scores.cpu(),
            is_adversarial=(scores > self.threshold).cpu(),
            per_layer=ham.cpu(),
            per_layer_jaccard=jac.cpu(),
            paths=[zl.cpu() for zl in z],
            features=features.cpu(),
            logits=logits.cpu(),
            gate_logits=[sl.cpu() for sl in s],
            inputs=inputs.cpu(),
        )


# Profiles with bfloat16 copies run two forwards per batch (detector/consistency.run_stacked). A traced detector
# called on one torch thread (the service's batches under DND_PARALLEL_MIN_BATCH images) runs the copies'
# forward in a helper thread (one per process, one torch thread) beside the images' own: 1.4x faster at batch 1,
# 1.6-1.7x at 8 to 64 on 2 cores (`python bench/scoring.py --copies-beside`). On more threads the two would fight
# for the cores (0.7-0.8x at 2 threads), and eager calls hold Python's GIL (0.9x at batch 1): there they run one
# after the other.
COPIES_BESIDE: bool | None = None  # None: that rule; True / False: always / never (bench/scoring.py)
_COPIES_POOL: list[ThreadPoolExecutor] = []


def _copies_pool() -> ThreadPoolExecutor:
    if not _COPIES_POOL:
        _COPIES_POOL.append(ThreadPoolExecutor(1, "dnd-copies", initializer=torch.set_num_threads, initargs=(1,)))
    return _COPIES_POOL[0]


# (model config, device, engine, autocast dtype) -> the first traced graph of that architecture in this process
# (see Detector.trace)
_TRACED: dict[tuple[Any, ...], torch.jit.ScriptModule] = {}


def open_filters_engine(model: GatedNetwork) -> torch.nn.Module:
    """The forward that computes only open filters: the hand-written one of the CIFAR ResNets (detector/sparse.py),
    the graph rewrite of any decouple()d network (detector/networks/open_filters.py)."""
    from .networks import CifarResNet, GatedNet

    if isinstance(model, CifarResNet):
        from .sparse import SparseNet

        return SparseNet(model)
    if isinstance(model, GatedNet):
        from .networks.open_filters import OpenFilterNet

        return OpenFilterNet(model)
    raise ValueError(f"no open-filters engine for {type(model).__name__}; use engine='masked'")


class _Paths(torch.nn.Module):
    """forward_paths as a plain (logits, features, z, s) tuple, which torch.jit.trace can record."""

    def __init__(self, model: GatedNetwork) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        out = self.model.forward_paths(x)
        return out.logits, out.features, out.z, out.s


def load_detector(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    threshold: float | None = None,
    engine: str = "masked",
) -> Detector:
    """Load BUNDLE (model.safetensors + config.json + profiles.safetensors); `threshold` overrides the calibrated
    one."""
    bundle = Path(path)
    cfg = read_config(bundle)
    if not cfg["model"].get("decoupled"):
        raise ValueError(f"{bundle} is a dense model: path-based detection needs a decoupled bundle (with gates)")
    model = load_model(bundle, device)
    profiles = load_profiles(bundle)
    profiles.meta["file_sha256"] = file_sha256(bundle / PROFILES)
    return Detector(model, profiles, bundle, threshold, engine)


__all__ = ["Detector", "Prediction", "check_images", "load_detector"]
