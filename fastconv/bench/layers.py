"""Layer tables: every distinct convolution, pooling and batch-norm layer of ResNet-50 and GoogLeNet
at 224x224, derived here (in one place) from the architecture definitions in the papers.

Sources:
- ResNet: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, Table 1
  (bottleneck stages conv2_x..conv5_x with 3, 4, 6, 3 blocks for ResNet-50; 3, 8, 36, 3 for
  ResNet-152; basic 3x3 blocks 2, 2, 2, 2 for ResNet-18). Every conv is followed by batch norm.
  Downsampling uses the stride on the 3x3 conv of the first block of a stage and a strided 1x1
  projection shortcut ("ResNet v1.5", as torchvision and NVIDIA's reference implementations do; the
  paper's v1 puts the stride on the first 1x1 instead).
- GoogLeNet: Szegedy et al., "Going Deeper with Convolutions", CVPR 2015, Table 1 (inception 3a..5b
  with their #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj widths) and Section 5 (the two
  auxiliary classifiers: 5x5/3 average pool, 1x1 conv with 128 filters). As published: real 5x5
  branches, max pools 3x3/2 with Caffe's ceil rounding, no batch norm, no LRN here (it is not a
  conv/pool/BN layer).

Each table entry is one distinct layer shape with `count`, how many times the network uses it, and
`names`, where.

Every other model of fastconv.models (`python -m fastconv bench --model vgg16`, ...) has its table
traced from the built network: one forward pass on the meta device (shapes only, no memory, no
compute) with a hook on each Conv2d, BatchNorm2d and pooling layer (`traced_layers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple, Union

MODELS = ("resnet18", "resnet50", "resnet152", "googlenet")  # the models with a table derived from the paper
LAYER_MODELS = ("resnet50", "googlenet")  # the models whose layers the pytest-benchmark layer suite times by default
# Input sizes (C, H, W) of the zoo's models that do not take 3x224x224.
INPUT_SHAPES = {"lenet5": (1, 32, 32), "alexnet": (3, 227, 227), "inception_v3": (3, 299, 299)}

Pair = Union[int, Tuple[int, int]]


def input_shape(model: str) -> Tuple[int, int, int]:
    """(C, H, W) of one input image of `model`."""
    return INPUT_SHAPES.get(model, (3, 224, 224))


def _pair(v: Pair) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass
class LayerSpec:
    """One layer shape at batch 1. kind: conv | maxpool | avgpool | adaptive_avgpool | bn.
    conv: C -> K channels, R x S kernel; pools: kernel R x S over C channels; bn: C channels.
    stride and padding: one int, or (height, width) when they differ (Inception-v3's 1x7 convs)."""

    kind: str
    C: int
    H: int
    W: int
    K: int = 0
    R: int = 1
    S: int = 1
    stride: Pair = 1
    padding: Pair = 0
    groups: int = 1
    ceil_mode: bool = False
    count: int = 1
    names: List[str] = field(default_factory=list)

    def key(self) -> Tuple:
        return (self.kind, self.C, self.H, self.W, self.K, self.R, self.S, self.strides, self.pads, self.groups,
                self.ceil_mode)

    @property
    def strides(self) -> Tuple[int, int]:
        return _pair(self.stride)

    @property
    def pads(self) -> Tuple[int, int]:
        return _pair(self.padding)

    @property
    def P(self) -> int:
        return _out(self.H, self.R, self.strides[0], self.pads[0], self.ceil_mode) if self.kind != "bn" else self.H

    @property
    def Q(self) -> int:
        return _out(self.W, self.S, self.strides[1], self.pads[1], self.ceil_mode) if self.kind != "bn" else self.W

    @property
    def out_channels(self) -> int:
        return self.K if self.kind == "conv" else self.C

    def label(self) -> str:
        """A short shape label, e.g. 'conv 3x3/2 128->128 @56' or 'maxpool 3x3/2 64 @112'."""
        sh, sw = self.strides
        stride = str(sh) if sh == sw else f"{sh}x{sw}"
        at = f"@{self.H}" if self.H == self.W else f"@{self.H}x{self.W}"
        if self.kind == "conv":
            s = f"conv {self.R}x{self.S}" + (f"/{stride}" if stride != "1" else "")
            return f"{s} {self.C}->{self.K} {at}" + (f" g{self.groups}" if self.groups != 1 else "")
        if self.kind == "bn":
            return f"bn {self.C} {at}"
        if self.kind == "adaptive_avgpool":
            return f"adaptive_avgpool {self.C} {at}->{self.P}"
        return f"{self.kind} {self.R}x{self.S}/{stride} {self.C} {at}"

    def as_dict(self) -> Dict:
        return {"kind": self.kind, "C": self.C, "H": self.H, "W": self.W, "K": self.K, "R": self.R, "S": self.S,
                "stride": self.stride, "padding": self.padding, "groups": self.groups, "ceil_mode": self.ceil_mode,
                "P": self.P, "Q": self.Q}


def _out(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    span = size + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:  # PyTorch's rule: the last window starts inside the input
        out -= 1
    return out


class _Table:
    """Collects layers while walking an architecture, merging repeats of the same shape."""

    def __init__(self) -> None:
        self.layers: Dict[Tuple, LayerSpec] = {}

    def add(self, name: str, spec: LayerSpec) -> LayerSpec:
        k = spec.key()
        if k in self.layers:
            self.layers[k].count += 1
            self.layers[k].names.append(name)
        else:
            spec.names = [name]
            self.layers[k] = spec
        return spec

    def conv(self, name: str, C: int, H: int, K: int, k: int, stride: int = 1, padding: int = 0, bn: bool = False) -> int:
        spec = self.add(name, LayerSpec("conv", C, H, H, K, k, k, stride, padding))
        if bn:
            self.add(name + ".bn", LayerSpec("bn", K, spec.P, spec.P))
        return spec.P


def _resnet(blocks: Tuple[int, ...], bottleneck: bool) -> List[LayerSpec]:
    t = _Table()
    h = t.conv("conv1", 3, 224, 64, 7, 2, 3, bn=True)                       # 112
    mp = t.add("maxpool", LayerSpec("maxpool", 64, h, h, R=3, S=3, stride=2, padding=1))
    h, c = mp.P, 64                                                          # 56
    expansion = 4 if bottleneck else 1
    for stage, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
        for b in range(n):
            stride = 2 if (b == 0 and stage > 0) else 1
            pre = f"layer{stage + 1}.{b}"
            out = width * expansion
            if bottleneck:
                t.conv(pre + ".conv1", c, h, width, 1, bn=True)
                h2 = t.conv(pre + ".conv2", width, h, width, 3, stride, 1, bn=True)
                t.conv(pre + ".conv3", width, h2, out, 1, bn=True)
            else:
                h2 = t.conv(pre + ".conv1", c, h, width, 3, stride, 1, bn=True)
                t.conv(pre + ".conv2", width, h2, out, 3, 1, 1, bn=True)
            if stride != 1 or c != out:
                t.conv(pre + ".downsample", c, h, out, 1, stride, 0, bn=True)
            c, h = out, h2
    t.add("avgpool", LayerSpec("adaptive_avgpool", c, h, h, R=h, S=h))
    return list(t.layers.values())


# GoogLeNet Table 1: name -> (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
_INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


def _googlenet() -> List[LayerSpec]:
    t = _Table()

    def maxpool(name: str, c: int, h: int) -> int:
        return t.add(name, LayerSpec("maxpool", c, h, h, R=3, S=3, stride=2, ceil_mode=True)).P

    h = t.conv("conv1", 3, 224, 64, 7, 2, 3)                                 # 112
    h = maxpool("maxpool1", 64, h)                                           # 56
    t.conv("conv2.reduce", 64, h, 64, 1)
    t.conv("conv2", 64, h, 192, 3, 1, 1)
    h, c = maxpool("maxpool2", 192, h), 192                                   # 28
    for name, (n1, r3, n3, r5, n5, pp) in _INCEPTION.items():
        if name == "4a":
            h = maxpool("maxpool3", c, h)                                    # 14
        if name == "5a":
            h = maxpool("maxpool4", c, h)                                    # 7
        pre = f"inception{name}"
        t.conv(pre + ".1x1", c, h, n1, 1)
        t.conv(pre + ".3x3_reduce", c, h, r3, 1)
        t.conv(pre + ".3x3", r3, h, n3, 3, 1, 1)
        t.conv(pre + ".5x5_reduce", c, h, r5, 1)
        t.conv(pre + ".5x5", r5, h, n5, 5, 1, 2)
        t.add(pre + ".pool", LayerSpec("maxpool", c, h, h, R=3, S=3, stride=1, padding=1))
        t.conv(pre + ".pool_proj", c, h, pp, 1)
        if name in ("4a", "4d"):  # the auxiliary classifiers sit on 4a's and 4d's outputs
            aux = "aux1" if name == "4a" else "aux2"
            c_out = n1 + n3 + n5 + pp
            ap = t.add(aux + ".avgpool", LayerSpec("avgpool", c_out, h, h, R=5, S=5, stride=3))
            t.conv(aux + ".conv", c_out, ap.P, 128, 1)
        c = n1 + n3 + n5 + pp
    t.add("avgpool", LayerSpec("adaptive_avgpool", c, h, h, R=h, S=h))
    return list(t.layers.values())


def model_layers(model: str) -> List[LayerSpec]:
    """Distinct layers of `model`, batch 1, in network order: the paper tables for MODELS (at 224x224),
    traced from fastconv.models' network (at `input_shape(model)`) for every other model of the zoo."""
    if model == "resnet50":
        return _resnet((3, 4, 6, 3), bottleneck=True)
    if model == "resnet152":
        return _resnet((3, 8, 36, 3), bottleneck=True)
    if model == "resnet18":
        return _resnet((2, 2, 2, 2), bottleneck=False)
    if model == "googlenet":
        return _googlenet()
    try:
        from fastconv.models import get_model, list_models
    except ImportError:
        raise ValueError(f"unknown model '{model}'; choose one of {', '.join(MODELS)}") from None
    if model not in list_models():
        raise ValueError(f"unknown model '{model}'; choose one of {', '.join(sorted(set(MODELS) | set(list_models())))}")
    import torch

    with torch.device("meta"):  # shapes only: no parameter memory, no initialisation cost
        net = get_model(model)
    return traced_layers(net, input_shape(model))


def _traced_spec(m, x, y) -> "LayerSpec | None":
    """The LayerSpec of one call of layer `m` (input x, output y), or None when the benchmark cases
    cannot express it (dilation, 'same' padding, non-zero padding modes, avg-pool options other than
    count_include_pad=True, adaptive pools onto a size that does not divide the input)."""
    from torch import nn

    _, C, H, W = x.shape
    P, Q = y.shape[-2:]
    if isinstance(m, nn.Conv2d):
        if m.dilation != (1, 1) or isinstance(m.padding, str) or m.padding_mode != "zeros":
            return None
        spec = LayerSpec("conv", C, H, W, m.out_channels, *m.kernel_size, stride=_flat(m.stride),
                         padding=_flat(m.padding), groups=m.groups)
    elif isinstance(m, nn.BatchNorm2d):
        spec = LayerSpec("bn", C, H, W)
    elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        if isinstance(m, nn.MaxPool2d) and _pair(m.dilation) != (1, 1):
            return None
        if isinstance(m, nn.AvgPool2d) and (not m.count_include_pad or m.divisor_override is not None):
            return None
        R, S = _pair(m.kernel_size)
        spec = LayerSpec("maxpool" if isinstance(m, nn.MaxPool2d) else "avgpool", C, H, W, R=R, S=S,
                         stride=_flat(_pair(m.stride or m.kernel_size)), padding=_flat(_pair(m.padding)),
                         ceil_mode=m.ceil_mode)
    elif isinstance(m, nn.AdaptiveAvgPool2d):
        if (P, Q) == (1, 1):  # the paper tables' convention: one window over the whole map
            spec = LayerSpec("adaptive_avgpool", C, H, W, R=H, S=W)
        elif H % P == 0 and W % Q == 0:
            spec = LayerSpec("adaptive_avgpool", C, H, W, R=H // P, S=W // Q, stride=_flat((H // P, W // Q)))
        else:
            return None
    else:
        return None
    return spec if (spec.P, spec.Q) == (P, Q) else None


def _flat(v) -> Pair:
    h, w = _pair(v)
    return h if h == w else (h, w)


def traced_layers(model, input_shape: Tuple[int, int, int]) -> List[LayerSpec]:
    """Distinct conv / pool / BN layers of a built network (torch.nn or fastconv layers), in call
    order, from one eval-mode forward pass at batch 1 on the meta device; layers the benchmark cases
    cannot express (see _traced_spec) are left out."""
    import torch
    from torch import nn

    import fastconv

    net = fastconv.revert(model).to("meta").eval()  # a copy: the caller's model is untouched
    t = _Table()
    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)

    def hook(name):
        def record(m, args, out):
            spec = _traced_spec(m, args[0], out[0] if isinstance(out, tuple) else out)
            if spec is not None:
                t.add(name, spec)
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in net.named_modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            net(torch.empty(1, *input_shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return list(t.layers.values())


# --quick: a few representative ResNet-50 layers that run in seconds on a 2-core CPU.
QUICK_LAYERS = ("conv1", "layer1.0.conv1", "layer1.0.conv2", "layer3.1.conv2", "layer4.0.downsample", "maxpool",
                "layer1.0.conv1.bn")


def quick_layers(model: str) -> List[LayerSpec]:
    """The --quick subset of `model`'s layers (first-use name match), in network order."""
    layers = model_layers(model)
    if model != "resnet50":
        convs = [s for s in layers if s.kind == "conv"]
        others = [s for s in layers if s.kind != "conv"]
        return convs[:4] + others[:2]
    return [s for s in layers if s.names[0] in QUICK_LAYERS]
