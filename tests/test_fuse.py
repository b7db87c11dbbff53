"""Epilogue fusion (fastconv.fuse_for_inference / fuse_for_training / unfuse): conv -> BN (-> ReLU) and
ResNet's relu(bn(conv(x)) + shortcut) as one fastconv.fused.ConvBNAct2d call. The fused model matches
the unfused torch.nn model (fastconv.revert of it) in eval and in training (outputs, gradients,
running statistics), keeps its state_dict keys, and unfuse restores it; on plain torch.nn models, on
fastconv.models, with torch.fx and with the structural fallback."""

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import fastconv
import fastconv.fuse as fuse
import fastconv.models as M
from fastconv.fused import AbsorbedBatchNorm2d, ConvBNAct2d
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


def counts(model):
    return model.fastconv_fusion_summary.counts


def assert_same_state(fused, model):
    assert list(fused.state_dict()) == list(model.state_dict())
    for (k, a), b in zip(fused.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_plain_sequential():
    model = randomise_bn(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.BatchNorm2d(8, affine=False),
        nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6, eps=1e-2), nn.Flatten(), nn.Linear(6 * 8 * 8, 3))).double().eval()
    fused = fastconv.fuse_for_inference(model)
    assert type(fused) is nn.Sequential  # a Sequential stays one (indexing works)
    assert [type(m).__name__ for m in fused][:7] == ["ConvBNAct2d", "AbsorbedBatchNorm2d", "AbsorbedReLU",
                                                     "ConvBNAct2d", "AbsorbedBatchNorm2d", "ConvBNAct2d",
                                                     "AbsorbedBatchNorm2d"]
    assert counts(fused) == {"conv+bn": 2, "conv+bn+relu": 1, "conv+bn+add": 0, "conv+bn+add+relu": 0}
    assert type(model[0]) is nn.Conv2d and type(model[1]) is nn.BatchNorm2d  # the original is untouched
    assert fused[0].bias is None and fused[0].bn is fused[1]  # nothing folded: the BN is read per call
    assert_same_state(fused, model)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert_close(fused(x), model(x))


def test_inplace_and_batch_norm_relu():
    model = randomise_bn(nn.Sequential(fastconv.Conv2d(3, 4, 3), fastconv.BatchNormReLU2d(4))).eval()
    x = torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        expected = model(x)
    bn = model[1]
    out = fastconv.fuse_for_inference(model, inplace=True)
    assert out is model and type(out[0]) is ConvBNAct2d and out[0].relu and out[1] is bn
    assert type(bn) is AbsorbedBatchNorm2d
    with torch.no_grad():
        assert_close(out(x), expected)
    back = fastconv.unfuse(out, inplace=True)
    assert back is model and type(back[0]) is fastconv.Conv2d and type(back[1]) is fastconv.BatchNormReLU2d


def test_refuses_training_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(RuntimeError, match="training mode"):
        fastconv.fuse_for_inference(model)
    model.eval()
    model[1].train()
    with pytest.raises(RuntimeError, match="training mode"):
        fastconv.fuse_for_inference(model)
    assert counts(fastconv.fuse_for_training(model))["conv+bn"] == 1


class Branchy(nn.Module):
    """Cases that must not fuse: the conv's raw output also feeds a skip; BN before a conv; a shared
    conv. conv_nostats -> bn_nostats (batch statistics even in eval) and conv_ok -> bn_ok fuse."""

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


def test_only_true_conv_bn_chains_fuse():
    model = randomise_bn(Branchy()).double().eval()
    fused = fastconv.fuse_for_inference(model)
    assert [n for n, m in fused.named_modules() if isinstance(m, ConvBNAct2d)] == ["conv_nostats", "conv_ok"]
    assert type(fused.bn_a) is nn.BatchNorm2d and type(fused.shared) is nn.Conv2d
    assert_same_state(fused, model)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert_close(fused(x), model(x))


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace the root; its children still fuse."""

    def __init__(self, direct=False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.block = M.BasicConv2d(4, 4, kernel_size=3, padding=1)
        self.direct = direct
        if direct:
            self.conv = nn.Conv2d(4, 4, 1)
            self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.stem(x)
        x = self.block(x) if x.sum() > 0 else -self.block(x)
        return self.bn(self.conv(x)) if self.direct else x


def test_untraceable_module_children_still_fuse():
    model = randomise_bn(Untraceable()).double().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused = fastconv.fuse_for_inference(model)
    assert counts(fused)["conv+bn+relu"] == 2 and type(fused) is Untraceable
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert_close(fused(x), model(x))
    model = randomise_bn(Untraceable(direct=True)).double().eval()
    with pytest.warns(UserWarning, match="could not trace"):
        fused = fastconv.fuse_for_inference(model)
    assert type(fused.conv) is nn.Conv2d and "" in fused.fastconv_fusion_summary.left
    with torch.no_grad():
        assert_close(fused(x), model(x))


# ---- torchvision's blocks (written here: torchvision is not a dependency) ----------------------------------

def _c3(i, o, s=1):
    return nn.Conv2d(i, o, 3, s, 1, bias=False)


class TVBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1, self.relu = _c3(inplanes, planes, stride), nn.BatchNorm2d(planes), nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _c3(planes, planes), nn.BatchNorm2d(planes)
        self.downsample, self.stride = downsample, stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TVBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _c3(planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.relu, self.downsample, self.stride = nn.ReLU(inplace=True), downsample, stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    """torchvision's ResNet layout with narrow layers: stem, one block per stage (with downsample)."""

    def __init__(self, block, width=4, momentum=0.1, conv_bias=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=conv_bias)
        self.bn1, self.relu = nn.BatchNorm2d(width, momentum=momentum), nn.ReLU(inplace=True)
        out = width * block.expansion
        down = nn.Sequential(nn.Conv2d(width, out, 1, 2, bias=False), nn.BatchNorm2d(out))
        self.layer1 = nn.Sequential(block(width, width, 2, down), block(out, width))
        self.fc = nn.Linear(out, 5)

    def forward(self, x):
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("block,n_relu", [(TVBasicBlock, 3), (TVBottleneck, 5)])
def test_torchvision_style_blocks(block, n_relu):
    model = randomise_bn(TinyResNet(block)).double().eval()
    fused = fastconv.fuse_for_inference(model)
    assert counts(fused) == {"conv+bn": 1, "conv+bn+relu": n_relu, "conv+bn+add": 0, "conv+bn+add+relu": 2}
    assert_same_state(fused, model)
    assert isinstance(fused.layer1[0], torch.fx.GraphModule) and type(fused.layer1) is nn.Sequential
    # the ReLU and add nodes are gone: each block's graph calls its convs only (and the downsample)
    assert all(n.op in ("placeholder", "call_module", "output") for n in fused.layer1[1].graph.nodes)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert_close(fused(x), model(x))


# ---- fastconv.models -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,size,expected", [
    ("resnet18", 64, {"conv+bn": 3, "conv+bn+relu": 9, "conv+bn+add": 0, "conv+bn+add+relu": 8}),
    ("resnet50", 64, {"conv+bn": 4, "conv+bn+relu": 33, "conv+bn+add": 0, "conv+bn+add+relu": 16}),
    ("googlenet", 64, {"conv+bn": 0, "conv+bn+relu": 57, "conv+bn+add": 0, "conv+bn+add+relu": 0}),
])
def test_fastconv_models(name, size, expected):
    model = randomise_bn(M.get_model(name, num_classes=10)).double().eval()
    reference = fastconv.revert(model)  # torch.nn layers, torch's kernels
    fused = fastconv.fuse_for_inference(model)
    assert counts(fused) == expected
    assert count(fused, ConvBNAct2d) == count(fused, AbsorbedBatchNorm2d) == sum(expected.values())
    assert count(fused, nn.BatchNorm2d) == count(model, nn.BatchNorm2d)
    assert_same_state(fused, model)
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        expected_out = reference(x)
        assert_close(fused(x), expected_out)
    back = fastconv.unfuse(fused)
    assert type(back) is type(model) and not fuse.is_fused(back)
    assert [type(m) for m in back.modules()] == [type(m) for m in model.modules()]
    assert_same_state(back, fused)
    if name != "resnet18":
        return
    # state_dicts load both ways, strictly; revert() of a fused model gives torch.nn layers
    other = randomise_bn(M.get_model(name, num_classes=10)).double().eval()
    fused.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert_close(fused(x), fastconv.revert(other)(x))
    other.load_state_dict(fastconv.fuse_for_inference(model).state_dict())
    plain = fastconv.revert(fastconv.fuse_for_inference(model))
    assert all(type(m).__module__.startswith("torch.nn") for m in plain.modules()
               if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)))
    with torch.no_grad():
        assert_close(plain(x), expected_out)


def test_summary_repr_copy_and_pickle():
    model = randomise_bn(M.resnet18(num_classes=10)).double().eval()
    fused = fastconv.fuse_for_inference(model)
    text = str(fused)
    assert text.splitlines()[1].strip().startswith("fastconv fusion (inference): 20 convs fused")
    assert "fused=conv+bn+add+relu, bn='layer1.0.bn2'" in text and "absorbed_by='layer1.0.conv2'" in text
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = fused(x)
    for clone in (copy.deepcopy(fused), _pickled(fused)):
        assert_same_state(clone, model)
        assert counts(clone) == counts(fused) and clone.inplanes == model.inplanes
        assert clone.layer1[0].conv2.bn is clone.layer1[0].bn2  # the reference follows the copy
        with torch.no_grad():
            assert_close(clone(x), expected)
        assert type(fastconv.unfuse(clone)) is M.ResNet


def _pickled(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_structural_fallback(monkeypatch):
    # Without torch.fx: known blocks get a fused forward, Sequentials fuse by neighbours, the ResNet
    # root (its stem chain is in its own forward) is reported and left.
    def refuse(module):
        raise RuntimeError("no fx here")

    monkeypatch.setattr(fuse, "_trace", refuse)
    model = randomise_bn(M.resnet18(num_classes=10)).double().eval()
    with pytest.warns(UserWarning, match="could not trace"):
        fused = fastconv.fuse_for_inference(model)
    assert counts(fused) == {"conv+bn": 3, "conv+bn+relu": 8, "conv+bn+add": 0, "conv+bn+add+relu": 8}
    assert type(fused.layer1[0]) is fuse.FusedBasicBlock and type(fused.conv1) is fastconv.Conv2d
    assert_same_state(fused, model)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert_close(fused(x), model(x))
    back = fastconv.unfuse(fused)
    assert type(back.layer1[0]) is M.BasicBlock and not fuse.is_fused(back)
    g = randomise_bn(M.googlenet(num_classes=10)).double().eval()
    fused = fastconv.fuse_for_inference(g)
    assert counts(fused)["conv+bn+relu"] == 57 and type(fused.conv1) is fuse.FusedBasicConv2d
    with torch.no_grad():
        assert_close(fused(x), g(x))


def test_torch_nn_resnet_float32():
    # A plain torch.nn ResNet-18 (fastconv's reverted to torch.nn), in float32.
    model = randomise_bn(fastconv.revert(M.resnet18(num_classes=10))).eval()
    assert not any(type(m).__module__ == "fastconv.modules" for m in model.modules())
    fused = fastconv.fuse_for_inference(model)
    assert type(fused.conv1) is ConvBNAct2d and type(fused.bn1) is AbsorbedBatchNorm2d
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert type(fastconv.unfuse(fused).conv1) is nn.Conv2d


def test_densenet_fuses_only_post_conv_norms():
    # DenseNet's norm1 and transition norms follow a concatenation (pre-activation): not fusable.
    with torch.device("meta"):
        model = M.densenet121().eval()
    fused = fastconv.fuse_for_inference(model)
    absorbed = {n for n, m in fused.named_modules() if isinstance(m, AbsorbedBatchNorm2d)}
    assert "features.norm0" in absorbed and "features.denseblock1.denselayer1.norm2" in absorbed
    assert len(absorbed) == 1 + 58  # norm0 + every dense layer's norm2
    assert counts(fused)["conv+bn+relu"] == 59
    assert type(fused.features.denseblock1.denselayer1.norm1) is fastconv.BatchNorm2d


def test_module_residual_broadcast_and_padding_mode():
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect").double()
    bn = randomise_bn(nn.BatchNorm2d(4)).double().eval()
    m = ConvBNAct2d(conv, bn, relu=True)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    for r in (torch.randn(2, 4, 5, 5, dtype=torch.float64), torch.randn(1, 4, 1, 1, dtype=torch.float64)):
        with torch.no_grad():
            assert_close(m(x, r), torch.relu(bn(conv(x)) + r))
    with pytest.raises(ValueError, match="expected 4D input"):
        m(x[0])
    assert type(m.to_conv()) is nn.Conv2d and not hasattr(m.to_conv(), "algo")


# ---- training --------------------------------------------------------------------------------------------------

needs_train_op = pytest.mark.skipif(not hasattr(torch.ops.fastconv, "conv2d_bn_train"),
                                    reason="fastconv.fused.conv2d_bn_train is not built")


def _train_steps(model, x, steps=2):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    outs = []
    for _ in range(steps):
        opt.zero_grad()
        out = model(x)
        (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out).cos()).sum().backward()
        outs.append(out.detach())
        opt.step()
    return outs, {n: p.grad for n, p in model.named_parameters()}


@needs_train_op
@pytest.mark.parametrize("block", [TVBasicBlock, TVBottleneck])
@pytest.mark.parametrize("momentum,conv_bias", [(0.1, False), (None, True)])
def test_training_matches_torch(block, momentum, conv_bias):
    model = TinyResNet(block, momentum=momentum, conv_bias=conv_bias).double().train()
    reference = copy.deepcopy(model)
    fused = fastconv.fuse_for_training(model)
    assert counts(fused)["conv+bn+add+relu"] == 2
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    outs, grads = _train_steps(fused, x)
    ref_outs, ref_grads = _train_steps(reference, x)
    for a, b in zip(outs, ref_outs):
        assert_close(a, b)
    for name, g in ref_grads.items():
        assert_close(grads[name], g, msg=name)
    assert list(fused.state_dict()) == list(reference.state_dict())
    for (k, a), b in zip(fused.state_dict().items(), reference.state_dict().values()):
        if a.is_floating_point():
            assert_close(a, b, msg=k)  # parameters after 2 SGD steps, running statistics
        else:
            assert torch.equal(a, b), k  # num_batches_tracked
    assert int(fused.bn1.num_batches_tracked) == 2
    fused.eval()
    reference.eval()
    with torch.no_grad():
        assert_close(fused(x), reference(x))


@needs_train_op
def test_training_fastconv_resnet18_step():
    # Batch 2 at 32x32 leaves 2 values per channel for layer4's batch norms: torch's own float64 gradients
    # move by ~1e-10 relative under a different summation order there, so the fused model is held to
    # the unfused fastconv model at 1e-10 and to torch.nn at 1e-8.
    model = M.resnet18(num_classes=10).double().train()
    reference, unfused = fastconv.revert(model), copy.deepcopy(model)
    fused = fastconv.fuse_for_training(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    (out,), grads = _train_steps(fused, x, steps=1)
    (ref_out,), ref_grads = _train_steps(reference, x, steps=1)
    (fc_out,), fc_grads = _train_steps(unfused, x, steps=1)
    assert_close(out, fc_out)
    torch.testing.assert_close(out, ref_out, rtol=1e-8, atol=1e-8 * ref_out.abs().max().item())
    for name, g in ref_grads.items():
        assert_close(grads[name], fc_grads[name], msg=name)
        torch.testing.assert_close(grads[name], g, rtol=1e-8, atol=1e-8 * g.abs().max().item(), msg=name)
    for (k, a), b in zip(fused.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8 * max(1.0, b.abs().max().item()), msg=k)


def test_training_without_the_fused_training_op(monkeypatch):
    # A build without conv2d_bn_train: the fused conv runs conv + fastconv batch norm, same numbers.
    monkeypatch.setattr(fastconv.fused, "_HAS_TRAIN_OP", False)
    model = TinyResNet(TVBasicBlock, momentum=None, conv_bias=True).double().train()
    reference = copy.deepcopy(model)
    fused = fastconv.fuse_for_training(model)
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    outs, grads = _train_steps(fused, x)
    ref_outs, ref_grads = _train_steps(reference, x)
    for a, b in zip(outs, ref_outs):
        assert_close(a, b)
    for name, g in ref_grads.items():
        assert_close(grads[name], g, msg=name)
    for (k, a), b in zip(fused.state_dict().items(), reference.state_dict().values()):
        assert_close(a.double(), b.double(), msg=k)
