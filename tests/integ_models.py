"""Small torch.nn models for the integration tests (compile, AMP, DDP, FX, CUDA graphs): a
ResNet-like and an Inception-like network built from every layer fastconv.convert swaps."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


def resnet_like(num_classes: int = 5, width: int = 8) -> nn.Module:
    """stem conv 3x3 + BN + ReLU + max-pool, two basic blocks (one strided, 1x1 downsample), global pool."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        BasicBlock(width, width, 1), BasicBlock(width, 2 * width, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))


class InceptionBlock(nn.Module):
    def __init__(self, cin: int, c: int) -> None:
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(cin, c, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(cin, c, 1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, groups=2))
        self.b3 = nn.Sequential(nn.Conv2d(cin, c, 3, padding=2, dilation=2), nn.BatchNorm2d(c), nn.ReLU())
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), nn.Conv2d(cin, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


def inception_like(num_classes: int = 5, width: int = 4) -> nn.Module:
    """stem conv 5x5/2, an Inception block of four branches (1x1, 1x1->grouped 3x3, dilated 3x3,
    max-pool->1x1), average pool with count_include_pad=False, global pool."""
    return nn.Sequential(
        nn.Conv2d(3, 2 * width, 5, 2, 2), nn.BatchNorm2d(2 * width), nn.ReLU(),
        InceptionBlock(2 * width, width), nn.AvgPool2d(3, 2, 1, count_include_pad=False),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(4 * width, num_classes))


MODELS = {"resnet_like": resnet_like, "inception_like": inception_like}


def pair(name: str, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0):
    """(torch.nn model, fastconv-converted copy with identical parameters and buffers)."""
    import fastconv

    torch.manual_seed(seed)
    ref = MODELS[name]().to(device=device, dtype=dtype)
    return ref, fastconv.convert(ref)
