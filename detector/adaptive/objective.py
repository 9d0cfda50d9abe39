"""What a detector-aware attacker optimises, and how the real detector judges the result.

`DetectorObjective(det)(x, target, relax)` runs the network with gates relaxed for differentiation (`relax`: "st",
the exact eval-time paths with SemHash v1's gradient; or a temperature T, z = sigmoid(s / T)) and returns the logits
and the scorer's differentiable surrogate (its logistic model on the same path features; the gradient-boosted trees
have none), centred on the surrogate's own threshold. `broken` asks the real detector, on the real eval-time path:
an attack succeeds on an image only if it is misclassified *and* not flagged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..api import Detector
from ..features import PathLikelihood
from ..inputs import forward_stacked, score_inputs
from ..profiles import PathProfiles


class DetectorObjective:
    def __init__(self, det: Detector) -> None:
        self.det, dev = det, det.device
        self.freq = [f.to(dev) for f in det.profiles.freq]
        self.sig, self.nb = [f >= 0.5 for f in self.freq], PathLikelihood.from_freq(self.freq)
        gm = None if det.profiles.gate_mean is None else [g.to(dev) for g in det.profiles.gate_mean]
        self.profiles = PathProfiles(self.freq, det.profiles.counts, det.profiles.meta, gate_mean=gm)  # on det.device
        sc = det.profiles.scorer
        # trees: descend on the logistic surrogate at its own threshold (BPDA-style); a linear scorer is the real score
        self.threshold = det.threshold if sc.trees is None or sc.surrogate_threshold is None else sc.surrogate_threshold

    def __call__(self, x: Tensor, target: Tensor, relax: str | float) -> tuple[Tensor, Tensor]:
        """Images x (N, 3, S, S) -> logits (N, K) and surrogate score minus its threshold (N,), both
        differentiable in x, the path judged against the profile of class `target` (N,). The consistency
        features see x and its transforms in one stacked forward, as the detector does; a transform without a
        gradient (JPEG, bit depth) passes the identity's (BPDA)."""
        model = self.det.model.eval()
        with model.relaxed_paths(relax):
            out = forward_stacked(model, x, self.det.profiles.spec, bpda=True)
            f = score_inputs(out, self.profiles, target, self.sig, self.nb)
        return out.logits[: len(x)], self.det.profiles.scorer.surrogate(f) - self.threshold

    @torch.no_grad()
    def broken(self, x: Tensor, y: Tensor) -> Tensor:
        """(N,) bool: the real detector misclassifies x and does not flag it."""
        p = self.det.predict(x)
        return ((p.labels != y.cpu()) & ~p.is_adversarial).to(x.device)
