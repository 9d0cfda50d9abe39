"""Square attack (Andriushchenko et al. 2020, torchattacks' implementation) against the whole detector: a
score-based black box that queries only what the service answers, the label, the attack score and the flag, so no
obfuscated gradient can help the defence. Its objective per image is

    m = max(logit_y - max_{j != y} logit_j,  attack_score - threshold),

which is <= 0 exactly when the image is misclassified and not flagged (the attack's success); the random search
keeps a square of noise when it lowers m."""

from __future__ import annotations

import torch
import torchattacks
from torch import Tensor

from ..api import Detector


class DetectorAwareSquare(torchattacks.Square):
    def __init__(self, det: Detector, **kwargs: object) -> None:
        super().__init__(det.model, **kwargs)
        self.det = det

    def margin_and_loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        p = self.det.predict(x)
        logits = p.logits.to(x.device).clone()
        u = torch.arange(len(x), device=x.device)
        own = logits[u, y].clone()
        logits[u, y] = -float("inf")
        m = torch.maximum(own - logits.max(1).values, p.scores.to(x.device) - self.det.threshold)
        return m, m
