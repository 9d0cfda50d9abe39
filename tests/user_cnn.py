"""A user's own CNN, declared only here, for `decouple()` and `dnd train --arch tests.user_cnn:small_cnn`: a residual
add, a conv without BatchNorm (its bias is masked with it), a strided conv, and a 1x1 last conv before the classifier.
"""

import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)  # no BatchNorm
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = F.relu(h + self.bn1(self.conv1(h)))  # conv2 reads a sum: its input is dense
        h = F.relu(self.conv2(h))
        h = F.relu(self.bn3(self.conv3(h)))  # conv3 reads conv2's open filters only; head reads conv3's
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.head(h), 1), 1))


def small_cnn(num_classes: int = 10) -> SmallCNN:
    return SmallCNN(num_classes)
