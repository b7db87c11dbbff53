"""convert() / revert() on real models: same outputs and gradients, parameters, hooks and mode kept."""

import copy
import warnings

import pytest
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


# ---- what convert() leaves alone, and says so ----------------------------------------------------------

def _half_cpu_model(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Sequential(nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1))).to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_convert_half_cpu_model_warns_and_keeps_torch_layers(dtype):
    ref = _half_cpu_model(dtype)
    name = str(dtype).replace("torch.", "")
    with pytest.warns(UserWarning, match=rf"left 5 layers as torch's .*{name} on cpu"):
        ours = fastconv.convert(ref)
    # every layer stays torch's (the parameterless pools too: they see the block's dtype) and runs
    assert [type(m) for m in ours.modules()] == [type(m) for m in ref.modules()]
    x = torch.randn(2, 3, 8, 8).to(dtype)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
    assert set(ours.fastconv_summary.left) == {"0", "1", "3", "4.0", "4.1"}
    assert all(f"{name} on cpu" in why for why in ours.fastconv_summary.left.values())


def test_convert_float_model_no_warning_and_summary(capsys):
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(nn.Conv2d(3, 3, 3), nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 3, 1)),
                          MyConv(3, 3, 1), nn.SyncBatchNorm(3), nn.LazyConv2d(3, 1), fastconv.MaxPool2d(1),
                          nn.ReLU())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32 on the CPU: nothing to warn about
        out = fastconv.convert(model, inplace=True, verbose=True)
    printed = capsys.readouterr().out
    summary = out.fastconv_summary
    assert str(summary) in printed
    assert summary.converted == ["0", "5"]
    assert [d.reason for d in summary.layers if d.converted] == ["converted", "already fastconv"]
    left = summary.left
    assert set(left) == {"1", "2", "3", "4"}  # ReLU is not a candidate: not listed
    assert "parametrized" in left["1"] and "weight" in left["1"]
    assert "subclass of nn.Conv2d" in left["2"]
    assert "SyncBatchNorm" in left["3"]
    assert "lazy" in left["4"]
    assert type(out[0]) is fastconv.Conv2d and type(out[2]) is MyConv and type(out[4]) is nn.LazyConv2d
    assert not hasattr(fastconv.revert(out, inplace=True), "fastconv_summary")


def test_convert_lazy_model_copy_says_what_to_do():
    with pytest.raises(ValueError, match="run one forward first, or pass inplace=True"):
        fastconv.convert(nn.Sequential(nn.LazyConv2d(3, 1)))


def test_convert_hook_weight_norm_conv_matches_torch():
    # the older hook-based torch.nn.utils.weight_norm keeps nn.Conv2d (weight recomputed by a pre-hook):
    # converted, and still the same function
    base = nn.Conv2d(3, 4, 3, padding=1).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ref = nn.utils.weight_norm(copy.deepcopy(base))
        ours = nn.utils.weight_norm(copy.deepcopy(base))
    ours = fastconv.convert(ours, inplace=True)  # (such a module cannot be deep-copied: torch's limit)
    assert type(ours) is fastconv.Conv2d and ours.fastconv_summary.converted == [""]
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    _compare(ours, ref, x)
