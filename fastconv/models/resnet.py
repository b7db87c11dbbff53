"""ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv:1512.03385),
table 1, built from fastconv layers.

Module and parameter names are torchvision's (conv1, bn1, relu, maxpool, layer1..layer4 of
BasicBlock/Bottleneck with conv1/bn1/conv2/bn2[/conv3/bn3]/downsample.0/.1, avgpool, fc), so a
torchvision ResNet state_dict loads with strict=True. `groups` and `width_per_group` give ResNeXt
(Xie et al. 2017) and Wide ResNet (Zagoruyko & Komodakis 2016) as torchvision defines them.
"""

from __future__ import annotations

from typing import List, Optional, Type, Union

import torch
from torch import Tensor, nn

from fastconv.models._registry import maybe_fused, register_model
from fastconv.modules import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, MaxPool2d

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
           "resnext50_32x4d", "wide_resnet50_2"]

_STRIDE_ON = ("3x3", "1x1")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> Conv2d:
    return Conv2d(in_planes, out_planes, 3, stride=stride, padding=dilation, groups=groups, bias=False,
                  dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> Conv2d:
    return Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34): relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1, stride_on: str = "3x3") -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("fastconv.models.BasicBlock: only supports groups=1 and width_per_group=64")
        if dilation > 1:
            raise NotImplementedError("fastconv.models.BasicBlock: dilation > 1 is not supported")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4), ResNet-50/101/152. The downsampling stride sits on the
    3x3 (stride_on="3x3": torchvision's "ResNet v1.5", the default) or on the first 1x1 as in the
    paper (stride_on="1x1")."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1, stride_on: str = "3x3") -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        s1, s3 = (stride, 1) if stride_on == "1x1" else (1, stride)
        self.conv1 = conv1x1(inplanes, width, s1)
        self.bn1 = BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, s3, groups, dilation)
        self.bn2 = BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """conv1 7x7/2 (64) -> 3x3/2 max-pool -> layer1..layer4 (64/128/256/512 planes at 56/28/14/7 for a
    224x224 input) -> global average pool -> fc. Input Tensor[N, 3, H, W] -> logits Tensor[N, num_classes];
    any H, W >= 32 works (global pooling)."""

    def __init__(self, block: Type[Union[BasicBlock, Bottleneck]], layers: List[int], num_classes: int = 1000,
                 zero_init_residual: bool = False, groups: int = 1, width_per_group: int = 64,
                 replace_stride_with_dilation: Optional[List[bool]] = None, stride_on: str = "3x3") -> None:
        super().__init__()
        if stride_on not in _STRIDE_ON:
            raise ValueError(f"fastconv.models.ResNet: stride_on must be one of {_STRIDE_ON}, got {stride_on!r}")
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("fastconv.models.ResNet: replace_stride_with_dilation should be None or a 3-element "
                             f"list, got {replace_stride_with_dilation}")
        self.inplanes = 64
        self.dilation = 1
        self.groups = groups
        self.base_width = width_per_group
        self.stride_on = stride_on
        self.conv1 = Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        # torchvision's initialisation (He et al. 2015 "fan_out" for convs, BN at identity).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            # Each residual branch starts as zero, so each block starts as the identity (Goyal et al. 2017).
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block: Type[Union[BasicBlock, Bottleneck]], planes: int, blocks: int, stride: int = 1,
                    dilate: bool = False) -> nn.Sequential:
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation,
                        self.stride_on)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation, stride_on=self.stride_on))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model
def resnet18(fused: bool = False, **kwargs) -> ResNet:
    """ResNet-18 (He et al. 2015, table 1): basic blocks [2, 2, 2, 2]. Input 224x224.
    11,689,512 parameters; 1.814 G multiply-adds (conv + fc) at 224x224.
    kwargs: num_classes, zero_init_residual, replace_stride_with_dilation."""
    return maybe_fused(ResNet(BasicBlock, [2, 2, 2, 2], **kwargs), fused, "resnet18")


@register_model
def resnet34(fused: bool = False, **kwargs) -> ResNet:
    """ResNet-34 (He et al. 2015, table 1): basic blocks [3, 4, 6, 3]. Input 224x224.
    21,797,672 parameters; 3.664 G multiply-adds at 224x224."""
    return maybe_fused(ResNet(BasicBlock, [3, 4, 6, 3], **kwargs), fused, "resnet34")


@register_model
def resnet50(fused: bool = False, **kwargs) -> ResNet:
    """ResNet-50 (He et al. 2015, table 1): bottleneck blocks [3, 4, 6, 3]. Input 224x224.
    25,557,032 parameters; 4.089 G multiply-adds at 224x224 (stride_on="3x3"; the paper's
    stride_on="1x1" has the same parameters and 3.858 G, table 1's "3.8 x 10^9 FLOPs").
    kwargs: num_classes, zero_init_residual, groups, width_per_group, replace_stride_with_dilation, stride_on."""
    return maybe_fused(ResNet(Bottleneck, [3, 4, 6, 3], **kwargs), fused, "resnet50")


@register_model
def resnet101(fused: bool = False, **kwargs) -> ResNet:
    """ResNet-101 (He et al. 2015, table 1): bottleneck blocks [3, 4, 23, 3]. Input 224x224.
    44,549,160 parameters; 7.801 G multiply-adds at 224x224."""
    return maybe_fused(ResNet(Bottleneck, [3, 4, 23, 3], **kwargs), fused, "resnet101")


@register_model
def resnet152(fused: bool = False, **kwargs) -> ResNet:
    """ResNet-152 (He et al. 2015, table 1): bottleneck blocks [3, 8, 36, 3]. Input 224x224.
    60,192,808 parameters; 11.514 G multiply-adds at 224x224."""
    return maybe_fused(ResNet(Bottleneck, [3, 8, 36, 3], **kwargs), fused, "resnet152")


@register_model
def resnext50_32x4d(fused: bool = False, **kwargs) -> ResNet:
    """ResNeXt-50 32x4d (Xie et al. 2017): resnet50(groups=32, width_per_group=4). Input 224x224.
    25,028,904 parameters; 4.230 G multiply-adds at 224x224."""
    kwargs.setdefault("groups", 32)
    kwargs.setdefault("width_per_group", 4)
    return maybe_fused(ResNet(Bottleneck, [3, 4, 6, 3], **kwargs), fused, "resnext50_32x4d")


@register_model
def wide_resnet50_2(fused: bool = False, **kwargs) -> ResNet:
    """Wide ResNet-50-2 (Zagoruyko & Komodakis 2016): resnet50(width_per_group=128). Input 224x224.
    68,883,240 parameters; 11.398 G multiply-adds at 224x224."""
    kwargs.setdefault("width_per_group", 128)
    return maybe_fused(ResNet(Bottleneck, [3, 4, 6, 3], **kwargs), fused, "wide_resnet50_2")
