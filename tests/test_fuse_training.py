"""Training fusion over many steps and on the big models (issue 15's done-when): a conv -> BN -> ReLU
net fused with fastconv.fuse_for_training, trained 50 SGD steps in float64 beside the same net in
torch.nn, keeps the same parameters and the same BatchNorm running statistics (momentum and the
cumulative average); one training step of fused ResNet-50 and GoogLeNet matches torch.nn to 1e-10."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastconv
import fastconv.models as M


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / max(1.0, b.abs().max().item())).item()


def _net(momentum):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8, momentum=momentum), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8, momentum=momentum), nn.ReLU(),
        nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6, momentum=momentum),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).double()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_fused_training_matches_torch_nn_for_50_steps(momentum):
    torch.manual_seed(0)
    reference = _net(momentum)
    fused = fastconv.fuse_for_training(copy.deepcopy(reference))
    assert fused.fastconv_fusion_summary.counts["conv+bn+relu"] == 2
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (reference, fused)]
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        x = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64) * 2 + 0.5
        target = torch.randint(0, 4, (4,), generator=g)
        for m, opt in zip((reference, fused), opts):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), target).backward()
            opt.step()
    ref_state, fused_state = reference.state_dict(), fused.state_dict()
    assert ref_state.keys() == fused_state.keys()
    for k, v in ref_state.items():
        if k.endswith("num_batches_tracked"):
            assert fused_state[k].item() == v.item() == 50, k
        else:
            assert _rel(fused_state[k], v) <= 1e-9, (k, _rel(fused_state[k], v))
    reference.eval(), fused.eval()
    x = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    assert _rel(fused(x), reference(x)) <= 1e-9


@pytest.mark.parametrize("name, size", [("resnet50", 32), ("googlenet", 64)])
def test_fused_training_step_of_big_models(name, size):
    torch.manual_seed(0)
    model = M.get_model(name, num_classes=10).double().train()
    reference = fastconv.revert(copy.deepcopy(model))  # torch.nn layers, torch's kernels
    fused = fastconv.fuse_for_training(model)
    x = torch.randn(4, 3, size, size, dtype=torch.float64)
    outs, grads = [], []
    for m in (reference, fused):
        torch.manual_seed(5)  # the same dropout masks in both
        y = m(x)
        y = y[0] if isinstance(y, tuple) else y
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append({n: p.grad for n, p in m.named_parameters()})
    # float64 to 1e-10 relative (measured: ResNet-50 output 1e-12, gradients 2.3e-11, exactly what the
    # unfused fastconv model shows against torch.nn too; GoogLeNet 2e-14 / 2e-13).
    assert _rel(outs[1], outs[0]) <= 1e-10
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert _rel(grads[1][n], grads[0][n]) <= 1e-10, n
    rs, fs = reference.state_dict(), fused.state_dict()
    for k in rs:
        if "running" in k:
            assert _rel(fs[k], rs[k]) <= 1e-9, k
