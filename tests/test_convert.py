"""convert() / revert() on real models: same outputs and gradients, parameters, hooks and mode kept."""

import torch
from torch import nn

import fastconv
from helpers import assert_close


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.down(x))


def tiny_resnet():
    return nn.Sequential(
        nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        BasicBlock(8, 16, 2), nn.AvgPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


def _compare(model_a, model_b, x):
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = model_a(xa), model_b(xb)
    assert_close(ya, yb)
    ya.sum().backward()
    yb.sum().backward()
    assert_close(xa.grad, xb.grad)
    for (name, pa), (_, pb) in zip(model_a.named_parameters(), model_b.named_parameters()):
        assert_close(pa.grad, pb.grad, msg=name)


def test_convert_small_resnet_train_and_eval():
    ref = tiny_resnet().double()
    ours = fastconv.convert(ref)
    kinds = {type(m) for m in ours.modules()}
    assert {fastconv.Conv2d, fastconv.BatchNorm2d, fastconv.MaxPool2d, fastconv.AvgPool2d,
            fastconv.AdaptiveAvgPool2d} <= kinds
    assert not any(type(m) in (nn.Conv2d, nn.BatchNorm2d) for m in ours.modules())
    assert all(type(m) is nn.Conv2d for m in ref.modules() if isinstance(m, nn.Conv2d))  # original untouched
    x = torch.randn(2, 3, 32, 30, dtype=torch.float64)
    _compare(ours, ref, x)  # training mode: batch stats and running-stat updates
    for (k, va), vb in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(va.double(), vb.double()), k
    ours.eval()
    ref.eval()
    _compare(ours, ref, x)


def test_convert_keeps_hooks_mode_and_sharing_inplace():
    model = tiny_resnet().eval()
    calls = []
    model[0].register_forward_hook(lambda m, i, o: calls.append(type(m)))
    weight = model[0].weight
    out = fastconv.convert(model, inplace=True)
    assert out is model and model[0].weight is weight
    assert not model.training and not model[1].training
    model(torch.randn(1, 3, 16, 16))
    assert calls == [fastconv.Conv2d]
    back = fastconv.revert(model, inplace=True)
    assert type(back[0]) is nn.Conv2d and back[0].weight is weight
    assert not hasattr(back[0], "algo")


def test_convert_leaves_unsupported_and_subclasses_alone():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(3, 3, 3), nn.Conv1d(3, 3, 3), nn.SyncBatchNorm(3), nn.LayerNorm(3))
    out = fastconv.convert(model)
    assert [type(m) for m in out] == [MyConv, nn.Conv1d, nn.SyncBatchNorm, nn.LayerNorm]


def test_convert_sets_algo_and_state_dict_round_trip():
    ref = tiny_resnet()
    ours = fastconv.convert(ref, algo="direct")
    assert all(m.algo == "direct" for m in ours.modules() if isinstance(m, fastconv.Conv2d))
    plain = fastconv.revert(ours)
    plain.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
