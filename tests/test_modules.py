"""Drop-in modules: same constructor, parameters, buffers, init, state_dict and repr as torch.nn,
same outputs and gradients."""

import pytest
import torch
from torch import nn

import fastconv
from helpers import assert_close

PAIRS = [
    (fastconv.Conv2d, nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2)),
    (fastconv.Conv2d, nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=(3, 2), padding="same", bias=False)),
    (fastconv.MaxPool2d, nn.MaxPool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    (fastconv.AvgPool2d, nn.AvgPool2d, dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    (fastconv.AdaptiveAvgPool2d, nn.AdaptiveAvgPool2d, dict(output_size=(2, 3))),
    (fastconv.BatchNorm2d, nn.BatchNorm2d, dict(num_features=4)),
]


@pytest.mark.parametrize("ours_cls,torch_cls,kw", PAIRS)
def test_module_is_a_drop_in(ours_cls, torch_cls, kw):
    torch.manual_seed(1)
    ours = ours_cls(**kw)
    torch.manual_seed(1)
    ref = torch_cls(**kw)
    assert isinstance(ours, torch_cls)
    assert repr(ours) == repr(ref)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():  # same init under the same seed
        assert torch.equal(ours.state_dict()[k], v), k
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    c = kw.get("in_channels", kw.get("num_features", 4))
    x = torch.randn(2, c, 9, 8)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    assert_close(ya, yb)
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    assert_close(xa.grad, xb.grad)
    for (name, pa), (_, pb) in zip(ours.named_parameters(), ref.named_parameters()):
        assert_close(pa.grad, pb.grad, msg=name)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_conv2d_padding_modes(mode):
    torch.manual_seed(0)
    ref = nn.Conv2d(3, 5, 3, padding=(2, 1), padding_mode=mode, dtype=torch.float64)
    ours = fastconv.Conv2d(3, 5, 3, padding=(2, 1), padding_mode=mode, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    assert_close(ours(x), ref(x))


def test_conv2d_algo_keyword_and_repr():
    conv = fastconv.Conv2d(4, 4, 1, algo="gemm1x1")
    assert conv.algo == "gemm1x1"
    assert "algo='gemm1x1'" in repr(conv)
    conv3 = fastconv.Conv2d(4, 4, 3, algo="gemm1x1")
    with pytest.raises(NotImplementedError, match="gemm1x1"):
        conv3(torch.randn(1, 4, 5, 5))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine,track", [(True, True), (False, True), (True, False), (False, False)])
def test_batchnorm2d_train_eval(momentum, affine, track):
    ref = nn.BatchNorm2d(3, momentum=momentum, affine=affine, track_running_stats=track, dtype=torch.float64)
    ours = fastconv.BatchNorm2d(3, momentum=momentum, affine=affine, track_running_stats=track, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    for step in range(3):
        x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * (step + 1) + step
        assert_close(ours(x), ref(x))
    for k, v in ref.state_dict().items():
        assert torch.allclose(ours.state_dict()[k].double(), v.double()), k
    ours.eval()
    ref.eval()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    assert_close(ours(x), ref(x))


def test_batchnorm_relu_module():
    ref = nn.BatchNorm2d(3)
    ours = fastconv.BatchNormReLU2d(3)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 5, 5)
    assert_close(ours(x), torch.relu(ref(x)))
    assert_close(ours.running_var, ref.running_var)


def test_batchnorm2d_rejects_wrong_rank():
    with pytest.raises(ValueError, match="4D"):
        fastconv.BatchNorm2d(3)(torch.randn(4, 3))
