"""profile(model, input_size): parameters and multiply-adds (MACs) per layer, from shapes alone.

The model is copied onto the `meta` device (no data is copied, no arithmetic runs) with its fastconv
layers reverted to their torch.nn twins, and a forward pass records each leaf layer's input and
output shapes. MACs count the multiply-adds of convolutions (out.numel() * C_in/groups * kh * kw)
and linear layers (out.numel() * in_features), the convention behind the "GFLOPS" column of
torchvision's model tables; pooling, normalisation and activations are reported with 0 MACs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["profile", "Profile", "LayerProfile"]


@dataclass
class LayerProfile:
    name: str
    kind: str
    input_shape: Tuple[int, ...]
    output_shape: Tuple[int, ...]
    params: int
    macs: int


@dataclass
class Profile:
    """layers: one LayerProfile per call of a leaf module (in call order); params: the model's
    parameter count (shared parameters counted once); macs: the sum of the layers' MACs."""

    layers: List[LayerProfile] = field(default_factory=list)
    params: int = 0
    macs: int = 0

    def __str__(self) -> str:
        rows = [f"{'layer':<40} {'type':<18} {'output':<22} {'params':>12} {'MACs':>16}"]
        for r in self.layers:
            rows.append(f"{r.name:<40} {r.kind:<18} {str(list(r.output_shape)):<22} {r.params:>12,} {r.macs:>16,}")
        rows.append(f"{'total':<40} {'':<18} {'':<22} {self.params:>12,} {self.macs:>16,}")
        return "\n".join(rows)


def _macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        if module.transposed:  # every input element meets every kernel tap of its group
            return inp.numel() * (module.out_channels // module.groups) * kernel
        return out.numel() * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    if isinstance(module, nn.Bilinear):
        return out.numel() * module.in1_features * module.in2_features
    return 0


def _meta_copy(model: nn.Module) -> nn.Module:
    # deepcopy with every parameter and buffer pre-mapped to an empty meta tensor: no data is copied.
    memo = {}
    for t in list(model.parameters()) + list(model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def profile(model: nn.Module, input_size: Union[Sequence[int], torch.Size], device: Union[str, torch.device] = "meta",
            dtype: torch.dtype = torch.float32) -> Profile:
    """Parameters and MACs per leaf layer of `model` for one input of `input_size` ([C, H, W] is taken
    as batch 1; [N, C, H, W] counts the whole batch).

    device="meta" (default) runs on shapes only, on a meta copy whose fastconv layers are reverted to
    torch.nn; any other device runs a real forward of `model` itself under torch.no_grad() (for models
    whose forward needs data). The forward runs in eval mode (so batch norm works on a batch of 1 and
    training-only branches, such as Inception's auxiliary head, are not counted); the modes of
    `model`'s layers are restored afterwards."""
    from fastconv.convert import revert

    size = tuple(int(s) for s in input_size)
    if len(size) == 3:
        size = (1,) + size
    device = torch.device(device)
    if device.type == "meta":
        net = revert(_meta_copy(model), inplace=True)
    else:
        net = model
    names = {m: n for n, m in net.named_modules()}
    result = Profile(params=sum(p.numel() for p in net.parameters()))
    seen = set()

    def hook(module, inputs, output):
        inp = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        out = output[0] if isinstance(output, (tuple, list)) else output
        if inp is None or not isinstance(out, torch.Tensor):
            return
        own = 0 if module in seen else sum(p.numel() for p in module.parameters(recurse=False))
        seen.add(module)
        result.layers.append(LayerProfile(names.get(module, type(module).__name__), type(module).__name__,
                                          tuple(inp.shape), tuple(out.shape), own, _macs(module, inp, out)))

    handles = [m.register_forward_hook(hook) for m in net.modules() if next(m.children(), None) is None]
    modes = [(m, m.training) for m in net.modules()]
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(size, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    result.macs = sum(r.macs for r in result.layers)
    return result
