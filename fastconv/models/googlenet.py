"""GoogLeNet (Szegedy et al., "Going Deeper with Convolutions", CVPR 2015, arXiv:1409.4842), table 1,
built from fastconv layers.

Attribute names are torchvision's (conv1..conv3 as BasicConv2d with .conv/.bn, maxpool1..4,
inception3a..inception5b with branch1..branch4, aux1/aux2 with conv/fc1/fc2, fc). Two documented
differences between the paper and torchvision's implementation are switches here:

- the paper's third branch is 1x1 reduce -> 5x5; torchvision (a known bug kept for its pretrained
  weights) uses a 3x3 there, and its maxpool4 is 2x2/2 instead of the paper's 3x3/2;
  `torchvision_compat=True` builds torchvision's variant, whose state_dict loads with strict=True;
- the auxiliary classifiers pool with a 5x5/3 average pool as in the paper (14x14 -> 4x4 at a 224
  input); torchvision (and `torchvision_compat=True`) uses an adaptive 4x4 average pool.

BatchNorm after every conv (eps=1e-3, as torchvision) is the default, as today's training recipes do;
`batch_norm=False` gives the 2014 original (convs with bias, no normalisation; the paper's local
response normalisation layers are not included).
"""

from __future__ import annotations

from collections import namedtuple
from typing import Optional

import torch
from torch import Tensor, nn

from fastconv.models._registry import maybe_fused, register_model
from fastconv.modules import AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, MaxPool2d

__all__ = ["GoogLeNet", "GoogLeNetOutputs", "BasicConv2d", "Inception", "InceptionAux", "googlenet"]

GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])



def transform_input(x: Tensor) -> Tensor:
    """torchvision's transform_input: ImageNet mean/std-normalised input -> the (x - 0.5) / 0.5
    scaling its GoogLeNet and Inception-v3 weights were trained with."""
    x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
    x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
    x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
    return torch.cat((x_ch0, x_ch1, x_ch2), 1)

class BasicConv2d(nn.Module):
    """relu(bn(conv(x))) (conv without bias), or relu(conv(x)) with a biased conv when batch_norm=False."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True, **kwargs) -> None:
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, bias=not batch_norm, **kwargs)
        self.bn = BatchNorm2d(out_channels, eps=0.001) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return torch.relu(x)


class Inception(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 (3x3 with
    torchvision_compat) | 3x3/1 max-pool -> 1x1. Output channels ch1x1 + ch3x3 + ch5x5 + pool_proj."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int, batch_norm: bool = True, torchvision_compat: bool = False) -> None:
        super().__init__()
        k5 = 3 if torchvision_compat else 5
        self.branch1 = BasicConv2d(in_channels, ch1x1, batch_norm, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(in_channels, ch3x3red, batch_norm, kernel_size=1),
                                     BasicConv2d(ch3x3red, ch3x3, batch_norm, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(in_channels, ch5x5red, batch_norm, kernel_size=1),
                                     BasicConv2d(ch5x5red, ch5x5, batch_norm, kernel_size=k5, padding=k5 // 2))
        self.branch4 = nn.Sequential(MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(in_channels, pool_proj, batch_norm, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: 4x4 average pool -> 1x1 conv 128 -> fc 1024 + ReLU -> dropout 70% -> fc."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7, batch_norm: bool = True,
                 adaptive_pool: bool = False) -> None:
        super().__init__()
        self.pool = AdaptiveAvgPool2d((4, 4)) if adaptive_pool else AvgPool2d(kernel_size=5, stride=3)
        self.conv = BasicConv2d(in_channels, 128, batch_norm, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.conv(self.pool(x)), 1)
        x = self.dropout(torch.relu(self.fc1(x)))
        return self.fc2(x)


# Szegedy et al. 2014, table 1: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
_TABLE1 = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


class GoogLeNet(nn.Module):
    """conv 7x7/2 -> maxpool 3x3/2 -> conv 1x1 64 -> conv 3x3 192 -> maxpool -> 3a, 3b -> maxpool ->
    4a..4e -> maxpool -> 5a, 5b -> global average pool (7x7 at 224) -> dropout -> fc.
    Input Tensor[N, 3, H, W] (224x224 in the paper; any size >= 32 works without aux classifiers)
    -> logits Tensor[N, num_classes], or GoogLeNetOutputs(logits, aux_logits2, aux_logits1) in
    training mode with aux_logits=True."""

    def __init__(self, num_classes: int = 1000, aux_logits: bool = False, transform_input: bool = False,
                 batch_norm: bool = True, torchvision_compat: bool = False, dropout: float = 0.4,
                 dropout_aux: float = 0.7, init_weights: Optional[bool] = True) -> None:
        super().__init__()
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        bn, tv = batch_norm, torchvision_compat

        def inception(in_channels: int, name: str) -> Inception:
            return Inception(in_channels, *_TABLE1[name], batch_norm=bn, torchvision_compat=tv)

        self.conv1 = BasicConv2d(3, 64, bn, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, bn, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, bn, kernel_size=3, padding=1)
        self.maxpool2 = MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = inception(192, "3a")
        self.inception3b = inception(256, "3b")
        self.maxpool3 = MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = inception(480, "4a")
        self.inception4b = inception(512, "4b")
        self.inception4c = inception(512, "4c")
        self.inception4d = inception(512, "4d")
        self.inception4e = inception(528, "4e")
        self.maxpool4 = MaxPool2d(2, stride=2, ceil_mode=True) if tv else MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception5a = inception(832, "5a")
        self.inception5b = inception(832, "5b")
        if aux_logits:
            self.aux1 = InceptionAux(512, num_classes, dropout_aux, bn, adaptive_pool=tv)
            self.aux2 = InceptionAux(528, num_classes, dropout_aux, bn, adaptive_pool=tv)
        else:
            self.aux1 = None
            self.aux2 = None
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)

        if init_weights:  # torchvision's scheme: truncated normal, std 0.01
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    def _transform_input(self, x: Tensor) -> Tensor:
        return transform_input(x) if self.transform_input else x

    def forward(self, x: Tensor):
        x = self._transform_input(x)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        x = self.dropout(torch.flatten(self.avgpool(x), 1))
        x = self.fc(x)
        if self.training and self.aux_logits:
            return GoogLeNetOutputs(x, aux2, aux1)
        return x


@register_model
def googlenet(fused: bool = False, **kwargs) -> GoogLeNet:
    """GoogLeNet / Inception-v1 (Szegedy et al. 2014, table 1). Input 224x224.
    Number of parameters (without / with the two aux heads, aux_logits=True):
      default (BatchNorm, published 5x5 branches)    7,005,832 / 13,385,816
      batch_norm=False (the 2014 original)          6,998,552 / 13,378,280
      torchvision_compat=True (3x3 "5x5" branches)  6,624,904 / 13,004,888 (torchvision's counts)
    Number of multiply-adds at 224x224 (main path): 1.583 G (5x5 branches; table 1 sums to about 1.5 G, its conv1
    row counting 34M where 7x7x3x64 at 112x112 is 118M), 1.498 G with torchvision_compat=True.
    kwargs: num_classes, aux_logits, transform_input, batch_norm, torchvision_compat, dropout,
    dropout_aux, init_weights."""
    return maybe_fused(GoogLeNet(**kwargs), fused, "googlenet")
