"""fuse_for_inference: BatchNorm folded into the preceding conv; the fused model matches the unfused
one (an eval-mode torch reference), on plain torch.nn models and on fastconv.models."""

import pytest
import torch
from torch import nn

import fastconv
import fastconv.models as M
from helpers import assert_close


def randomise_bn(model):
    """Non-trivial running statistics and affine parameters, so folding changes every weight."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                    m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


def test_plain_sequential():
    model = randomise_bn(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.BatchNorm2d(8, affine=False),
        nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6, eps=1e-2), nn.Flatten(), nn.Linear(6 * 8 * 8, 3))).double().eval()
    fused = fastconv.fuse_for_inference(model)
    assert count(fused, nn.BatchNorm2d) == 0 and count(fused, nn.Identity) == 3
    assert count(model, nn.BatchNorm2d) == 3 and model[0].bias is None  # the original is untouched
    assert fused[0].bias is not None
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert_close(fused(x), model(x))


def test_inplace_and_batch_norm_relu():
    model = randomise_bn(nn.Sequential(fastconv.Conv2d(3, 4, 3), fastconv.BatchNormReLU2d(4))).eval()
    x = torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        expected = model(x)
    conv = model[0]
    out = fastconv.fuse_for_inference(model, inplace=True)
    assert out is model and out[0] is conv and type(out[1]) is nn.ReLU
    with torch.no_grad():
        assert_close(out(x), expected)


def test_refuses_training_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(RuntimeError, match="training mode"):
        fastconv.fuse_for_inference(model)
    model.eval()
    model[1].train()
    with pytest.raises(RuntimeError, match="training mode"):
        fastconv.fuse_for_inference(model)


class Branchy(nn.Module):
    """Cases that must not fold: the conv's raw output also feeds a skip; BN before a conv; a shared
    conv; a BN without running statistics. Only conv_ok -> bn_ok folds."""

    def __init__(self):
        super().__init__()
        self.conv_used_twice = nn.Conv2d(3, 3, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(3)
        self.bn_pre = nn.BatchNorm2d(3)
        self.conv_after = nn.Conv2d(3, 3, 1)
        self.shared = nn.Conv2d(3, 3, 1)
        self.bn_shared = nn.BatchNorm2d(3)
        self.conv_nostats = nn.Conv2d(3, 3, 1)
        self.bn_nostats = nn.BatchNorm2d(3, track_running_stats=False)
        self.conv_ok = nn.Conv2d(3, 3, 1)
        self.bn_ok = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv_used_twice(x)
        x = self.bn_a(y) + y
        x = self.conv_after(self.bn_pre(x))
        x = self.bn_shared(self.shared(x)) + self.shared(x)
        x = self.bn_nostats(self.conv_nostats(x))
        return self.bn_ok(self.conv_ok(x))


def test_only_true_conv_bn_pairs_fold():
    model = randomise_bn(Branchy()).double().eval()
    fused = fastconv.fuse_for_inference(model)
    assert [n for n, m in fused.named_modules() if isinstance(m, nn.Identity)] == ["bn_ok"]
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert_close(fused(x), model(x))


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so the structural fallback is used."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.block = M.BasicConv2d(4, 4, kernel_size=3, padding=1)

    def forward(self, x):
        x = self.stem(x)
        return self.block(x) if x.sum() > 0 else -self.block(x)


def test_fallback_without_fx():
    model = randomise_bn(Untraceable()).double().eval()
    with pytest.warns(UserWarning, match="could not trace"):
        fused = fastconv.fuse_for_inference(model)
    assert count(fused, nn.BatchNorm2d) == 0
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert_close(fused(x), model(x))


@pytest.mark.parametrize("name,kw,size,n_bn", [
    ("resnet18", {"num_classes": 10}, 64, 20),
    ("googlenet", {"num_classes": 10}, 64, 57),
])
def test_fastconv_models(name, kw, size, n_bn):
    model = randomise_bn(M.get_model(name, **kw)).double().eval()
    assert count(model, nn.BatchNorm2d) == n_bn
    fused = fastconv.fuse_for_inference(model)
    assert count(fused, nn.BatchNorm2d) == 0
    assert all(type(m).__module__ == "fastconv.modules" for m in fused.modules() if isinstance(m, nn.Conv2d))
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        assert_close(fused(x), model(x))


def test_torch_nn_resnet_float32():
    # A plain torch.nn ResNet-18 (fastconv's reverted to torch.nn), in float32.
    model = randomise_bn(fastconv.revert(M.resnet18(num_classes=10))).eval()
    assert not any(type(m).__module__ == "fastconv.modules" for m in model.modules())
    fused = fastconv.fuse_for_inference(model)
    assert count(fused, nn.BatchNorm2d) == 0 and type(fused.conv1) is nn.Conv2d
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_densenet_folds_only_post_conv_norms():
    # DenseNet's norm1 and transition norms follow a concatenation (pre-activation): not foldable.
    with torch.device("meta"):
        model = M.densenet121().eval()
    fused = fastconv.fuse_for_inference(model)
    folded = {n for n, m in fused.named_modules() if isinstance(m, nn.Identity)}
    assert "features.norm0" in folded and "features.denseblock1.denselayer1.norm2" in folded
    assert len(folded) == 1 + 58  # norm0 + every dense layer's norm2
    assert isinstance(fused.features.denseblock1.denselayer1.norm1, nn.BatchNorm2d)
