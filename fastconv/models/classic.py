"""The classic CNNs of the lecture material this project grew from, built from fastconv layers:
LeNet-5 (LeCun et al. 1998), AlexNet (Krizhevsky et al. 2012), VGG-16 (Simonyan & Zisserman 2015)
and DenseNet-121 (Huang et al. 2017). VGG and DenseNet use torchvision's module names, so their
torchvision state_dicts load with strict=True.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Sequence, Union

import torch
from torch import Tensor, nn

from fastconv.models._registry import maybe_fused, register_model
from fastconv.modules import AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, MaxPool2d

__all__ = ["LeNet5", "AlexNet", "VGG", "DenseNet", "lenet5", "alexnet", "vgg16", "vgg16_bn", "densenet121"]


class LeNet5(nn.Module):
    """LeCun et al., "Gradient-Based Learning Applied to Document Recognition", Proc. IEEE 1998, fig. 2:
    C1 conv 5x5 6 (32 -> 28) -> S2 2x2 average pool -> C3 conv 5x5 16 (14 -> 10) -> S4 2x2 average pool
    -> C5 conv 5x5 120 (5 -> 1) -> F6 fc 84 -> output fc 10, tanh after every conv and F6.
    Input Tensor[N, 1, 32, 32] -> Tensor[N, num_classes].

    Simplifications, documented: C3 connects to all six S2 maps (the paper's table I connects each to
    3-6 of them: 1,516 parameters instead of 2,416); S2/S4 are plain average pools (the paper's have a
    trainable coefficient, bias and sigmoid per map); plain tanh instead of 1.7159 tanh(2/3 a); the
    output is a linear layer instead of the paper's Euclidean RBF units."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            Conv2d(in_channels, 6, kernel_size=5), nn.Tanh(), AvgPool2d(2),
            Conv2d(6, 16, kernel_size=5), nn.Tanh(), AvgPool2d(2),
            Conv2d(16, 120, kernel_size=5), nn.Tanh(),
        )
        self.classifier = nn.Sequential(nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class AlexNet(nn.Module):
    """Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional Neural Networks",
    NIPS 2012, section 3.5 / figure 2, as one tower (the paper splits conv2, conv4, conv5 across two
    GPUs; here every conv sees all channels). conv 11x11/4 96 -> LRN -> maxpool 3x3/2 -> conv 5x5 256
    -> LRN -> maxpool -> conv 3x3 384 -> 3x3 384 -> 3x3 256 -> maxpool -> dropout -> fc6 4096 ->
    dropout -> fc7 4096 -> fc8 1000. Overlapping pools (3x3, stride 2). Input Tensor[N, 3, 227, 227]
    -> Tensor[N, num_classes]; an adaptive 6x6 average pool before fc6 (the identity at 227x227, as
    torchvision) lets smaller inputs through. torchvision's alexnet differs: 64 first-layer filters,
    no LRN.

    lrn=True: local response normalisation with the paper's k=2, n=5, alpha=1e-4, beta=0.75 (torch's
    LocalResponseNorm divides alpha by n, so it is given alpha * n). lrn=False puts nn.Identity in
    its place, so state_dict keys do not change."""

    def __init__(self, num_classes: int = 1000, lrn: bool = True, dropout: float = 0.5, init_weights: bool = True) -> None:
        super().__init__()

        def norm() -> nn.Module:
            return nn.LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0) if lrn else nn.Identity()

        self.features = nn.Sequential(
            Conv2d(3, 96, kernel_size=11, stride=4), nn.ReLU(inplace=True), norm(), MaxPool2d(3, 2),
            Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(inplace=True), norm(), MaxPool2d(3, 2),
            Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True), MaxPool2d(3, 2),
        )
        self.avgpool = AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        if init_weights:
            # Section 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden fc layers, else 0.
            ones = {self.features[4], self.features[10], self.features[12], self.classifier[1], self.classifier[4]}
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.normal_(m.weight, 0.0, 0.01)
                    nn.init.constant_(m.bias, 1.0 if m in ones else 0.0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


_VGG_CFG = {"D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]}


def _vgg_layers(cfg: Sequence[Union[int, str]], batch_norm: bool) -> nn.Sequential:
    layers: List[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(Conv2d(in_channels, int(v), kernel_size=3, padding=1))
            if batch_norm:
                layers.append(BatchNorm2d(int(v)))
            layers.append(nn.ReLU(inplace=True))
            in_channels = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
    ICLR 2015, table 1: stacks of 3x3 convs (pad 1) and 2x2/2 max-pools, adaptive 7x7 average pool
    (the identity at 224x224), fc 4096 -> 4096 -> num_classes with dropout. torchvision's names
    (features.<i>, classifier.<i>). Input Tensor[N, 3, 224, 224] -> Tensor[N, num_classes]."""

    def __init__(self, features: nn.Module, num_classes: int = 1000, init_weights: bool = True,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        self.avgpool = AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class _DenseLayer(nn.Module):
    """BN -> ReLU -> 1x1 conv (bn_size * growth) -> BN -> ReLU -> 3x3 conv (growth), on the
    concatenation of every earlier feature map of the block."""

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        self.norm1 = BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop = nn.Dropout(p=float(drop_rate))

    def forward(self, features: List[Tensor]) -> Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        x = self.conv2(self.relu2(self.norm2(x)))
        return self.drop(x)


class _DenseBlock(nn.ModuleDict):
    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int,
                 drop_rate: float) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}",
                            _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate))

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """Huang et al., "Densely Connected Convolutional Networks", CVPR 2017, table 1 (DenseNet-BC):
    conv 7x7/2 -> maxpool 3x3/2 -> dense blocks separated by transitions (BN, 1x1 conv halving the
    channels, 2x2/2 average pool) -> BN -> ReLU -> global average pool -> fc. torchvision's names
    (features.conv0, features.denseblock1.denselayer1.norm1, ..., classifier).
    Input Tensor[N, 3, 224, 224] -> Tensor[N, num_classes]."""

    def __init__(self, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16), num_init_features: int = 64,
                 bn_size: int = 4, drop_rate: float = 0.0, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}",
                                     _DenseBlock(num_layers, num_features, bn_size, growth_rate, drop_rate))
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(num_features, num_features // 2))
                num_features = num_features // 2
        self.features.add_module("norm5", BatchNorm2d(num_features))
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.features(x))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


@register_model
def lenet5(fused: bool = False, **kwargs) -> LeNet5:
    """LeNet-5 (LeCun et al. 1998). Input 1x32x32. 61,706 parameters; 416,520 multiply-adds.
    kwargs: num_classes (10), in_channels (1)."""
    return maybe_fused(LeNet5(**kwargs), fused, "lenet5")


@register_model
def alexnet(fused: bool = False, **kwargs) -> AlexNet:
    """AlexNet (Krizhevsky et al. 2012), single tower with 96 first-layer filters. Input 227x227.
    62,378,344 parameters; 1.135 G multiply-adds at 227x227. kwargs: num_classes, lrn, dropout, init_weights."""
    return maybe_fused(AlexNet(**kwargs), fused, "alexnet")


@register_model
def vgg16(fused: bool = False, **kwargs) -> VGG:
    """VGG-16 (Simonyan & Zisserman 2015, configuration D). Input 224x224.
    138,357,544 parameters; 15.470 G multiply-adds at 224x224. kwargs: num_classes, init_weights, dropout."""
    return maybe_fused(VGG(_vgg_layers(_VGG_CFG["D"], batch_norm=False), **kwargs), fused, "vgg16")


@register_model
def vgg16_bn(fused: bool = False, **kwargs) -> VGG:
    """VGG-16 with BatchNorm after every conv (torchvision's vgg16_bn). Input 224x224.
    138,365,992 parameters; 15.470 G multiply-adds at 224x224."""
    return maybe_fused(VGG(_vgg_layers(_VGG_CFG["D"], batch_norm=True), **kwargs), fused, "vgg16_bn")


@register_model
def densenet121(fused: bool = False, **kwargs) -> DenseNet:
    """DenseNet-121 (Huang et al. 2017): growth 32, blocks 6-12-24-16, bn_size 4. Input 224x224.
    7,978,856 parameters; 2.834 G multiply-adds at 224x224. kwargs: num_classes, drop_rate, ..."""
    return maybe_fused(DenseNet(32, (6, 12, 24, 16), 64, **kwargs), fused, "densenet121")
