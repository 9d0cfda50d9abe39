"""The VGG of network slimming (Liu et al. 2017), the VGGNet of the DND paper's Table 1: 3x3 conv + BatchNorm + ReLU
stages with a 2x2 max-pool between them, global average pooling and one Linear classifier. A plain dense nn.Module;
the registry passes it through decouple() (every conv but the first and the last gated)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

# convs per stage of each depth; the widths are (64, 128, 256, 512, 512) for all of them
STAGE_DEPTHS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)


class VGG(nn.Module):
    def __init__(self, widths: tuple[int, ...], stage_depths: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        if len(widths) != len(stage_depths) or not widths:
            raise ValueError(f"VGG: one width per stage, found widths {widths} and stage depths {stage_depths}")
        layers: list[nn.Module] = []
        cin = 3
        for stage, (w, d) in enumerate(zip(widths, stage_depths)):
            if stage:
                layers.append(nn.MaxPool2d(2))
            for _ in range(d):
                layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # network slimming's AvgPool2d(2) on its 2 x 2 map at 32 x 32 input
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images (N, 3, S, S) -> logits (N, K)."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
