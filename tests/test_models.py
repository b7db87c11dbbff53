"""fastconv.models: parameter and multiply-add counts against published numbers, forward shapes,
train steps, state_dict round trips with the torch.nn twins built by revert(), parity against
independent torch.nn implementations (ResNet-18, GoogLeNet) and, where torchvision is importable,
against torchvision's own models (CPU here; CUDA fp32 and AMP tests are marked `cuda`).

Full-size counts run on the meta device (shapes only), so every model is checked at its published
input size without a real forward; real forwards use small inputs to keep the suite fast.
"""

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastconv
import fastconv.models as M
from helpers import assert_close

ALL = ["alexnet", "densenet121", "googlenet", "inception_v3", "lenet5", "resnet101", "resnet152", "resnet18",
       "resnet34", "resnet50", "resnext50_32x4d", "vgg16", "vgg16_bn", "wide_resnet50_2"]
INPUT = {"lenet5": (1, 32, 32), "alexnet": (3, 227, 227), "inception_v3": (3, 299, 299)}


def meta_model(name, **kw):
    with torch.device("meta"):
        return M.get_model(name, **kw).eval()


# (name, kwargs, parameters, MACs, rel. tolerance on MACs, source). Sources:
#  [tv]  torchvision's model documentation tables ("Params", "GFLOPS" = 1e9 multiply-adds, 2 decimals),
#        which are the models as torchvision defines them (ResNet v1.5, GoogLeNet with 3x3 "5x5" branches);
#  [He]  He et al. 2015, table 1 ("FLOPs" = multiply-adds: 1.8, 3.6, 3.8, 7.6, 11.3 x 10^9, the paper's
#        stride-on-1x1 ResNet);
#  [hand] computed by hand below from the paper's layer shapes.
# AlexNet (227 input, single tower, 96-256-384-384-256): parameters
#   conv1 96*3*11*11+96 = 34,944; conv2 256*96*5*5+256 = 614,656; conv3 384*256*9+384 = 885,120;
#   conv4 384*384*9+384 = 1,327,488; conv5 256*384*9+256 = 884,992; fc6 9216*4096+4096 = 37,752,832;
#   fc7 4096*4096+4096 = 16,781,312; fc8 4096*1000+1000 = 4,097,000  -> 62,378,344 (the paper: "60 million").
# multiply-adds: 55^2*96*363 + 27^2*256*2400 + 13^2*384*2304 + 13^2*384*3456 + 13^2*256*3456
#   + 9216*4096 + 4096*4096 + 4096*1000 = 1,135,256,096.
# LeNet-5 (C3 fully connected): parameters 156 + 2,416 + 48,120 + 10,164 + 850 = 61,706;
#   multiply-adds 28^2*6*25 + 10^2*16*150 + 120*400 + 84*120 + 10*84 = 416,520.
COUNTS = [
    ("resnet18", {}, 11_689_512, 1.81e9, 0.005, "tv"),
    ("resnet34", {}, 21_797_672, 3.66e9, 0.005, "tv"),
    ("resnet50", {}, 25_557_032, 4.09e9, 0.005, "tv"),
    ("resnet101", {}, 44_549_160, 7.80e9, 0.005, "tv"),
    ("resnet152", {}, 60_192_808, 11.51e9, 0.005, "tv"),
    ("resnet18", {"stride_on": "1x1"}, 11_689_512, 1.8e9, 0.03, "He"),
    ("resnet34", {"stride_on": "1x1"}, 21_797_672, 3.6e9, 0.03, "He"),
    ("resnet50", {"stride_on": "1x1"}, 25_557_032, 3.8e9, 0.03, "He"),
    ("resnet101", {"stride_on": "1x1"}, 44_549_160, 7.6e9, 0.03, "He"),
    ("resnet152", {"stride_on": "1x1"}, 60_192_808, 11.3e9, 0.03, "He"),
    ("resnext50_32x4d", {}, 25_028_904, 4.23e9, 0.005, "tv"),
    ("wide_resnet50_2", {}, 68_883_240, 11.40e9, 0.005, "tv"),
    ("googlenet", {"torchvision_compat": True}, 6_624_904, 1.50e9, 0.005, "tv"),
    ("inception_v3", {}, 27_161_264, 5.71e9, 0.005, "tv"),
    ("vgg16", {}, 138_357_544, 15.47e9, 0.005, "tv"),
    ("vgg16_bn", {}, 138_365_992, 15.47e9, 0.005, "tv"),
    ("densenet121", {}, 7_978_856, 2.83e9, 0.005, "tv"),
    ("alexnet", {}, 62_378_344, 1_135_256_096, 0.0, "hand"),
    ("lenet5", {}, 61_706, 416_520, 0.0, "hand"),
]


@pytest.mark.parametrize("name,kw,params,macs,rtol,source", COUNTS,
                         ids=[f"{c[0]}{'-' + '-'.join(map(str, c[1].values())) if c[1] else ''}" for c in COUNTS])
def test_parameter_and_mac_counts(name, kw, params, macs, rtol, source):
    model = meta_model(name, **kw)
    assert sum(p.numel() for p in model.parameters()) == params
    prof = M.profile(model, INPUT.get(name, (3, 224, 224)))
    assert prof.params == params
    assert abs(prof.macs - macs) <= rtol * macs, (prof.macs, macs, source)
    assert prof.layers[-1].output_shape == (1, 1000 if name != "lenet5" else 10)
    # Every parameter sits in a leaf layer that ran (an eval-mode Inception-v3 skips its aux head).
    aux = sum(p.numel() for n, p in model.named_parameters() if n.startswith("AuxLogits."))
    assert sum(r.params for r in prof.layers) == params - aux


# Szegedy et al. 2014, table 1, "params" (K = 1024 weights, biases excluded) and "ops" (M = 1e6
# multiply-adds) per inception module, for the published 5x5 branches at 224x224. Three printed
# entries disagree with the table's own widths and are checked against those instead: 4c params
# (463K printed; 509,440 weights = 497.5K), 5a params (1072K; 1,042,432 = 1018K) and 5a ops (54M;
# 1,042,432 x 7 x 7 = 51.1M).
GOOGLENET_TABLE1 = {"3a": (159, 128), "3b": (380, 304), "4a": (364, 73), "4b": (437, 88), "4c": (497.5, 100),
                    "4d": (580, 119), "4e": (840, 170), "5a": (1018, 51.1), "5b": (1388, 71)}


def test_googlenet_matches_table1():
    model = meta_model("googlenet", batch_norm=False)
    prof = M.profile(model, (3, 224, 224))
    for block, (kparams, mops) in GOOGLENET_TABLE1.items():
        rows = [r for r in prof.layers if r.name.startswith(f"inception{block}.")]
        weights = sum(m.weight.numel() for n, m in model.named_modules()
                      if n.startswith(f"inception{block}.") and isinstance(m, nn.Conv2d))
        assert abs(weights / 1024 - kparams) <= 0.02 * kparams, (block, weights / 1024)
        assert abs(sum(r.macs for r in rows) / 1e6 - mops) <= 0.01 * mops, (block, sum(r.macs for r in rows))
    # Published 5x5 branches: the model's fc is 1024 -> 1000 as in the table (1000K parameters, 1M ops).
    assert model.fc.weight.shape == (1000, 1024)
    assert isinstance(model.inception3a.branch3[1].conv, nn.Conv2d) and model.inception3a.branch3[1].conv.kernel_size == (5, 5)
    assert model.inception3a.branch1.bn is None and model.inception3a.branch1.conv.bias is not None


def test_googlenet_widths_and_variants():
    model = meta_model("googlenet")
    widths = {b: getattr(model, f"inception{b}") for b in GOOGLENET_TABLE1}
    # Output channels per module: 256, 480, 512, 512, 512, 528, 832, 832, 1024 (table 1 "depth" column sums).
    outs = [w.branch1.conv.out_channels + w.branch2[1].conv.out_channels + w.branch3[1].conv.out_channels
            + w.branch4[1].conv.out_channels for w in widths.values()]
    assert outs == [256, 480, 512, 512, 512, 528, 832, 832, 1024]
    assert model.inception4e.branch3[1].conv.kernel_size == (5, 5) and model.maxpool4.kernel_size == 3
    tv = meta_model("googlenet", torchvision_compat=True)
    assert tv.inception4e.branch3[1].conv.kernel_size == (3, 3) and tv.maxpool4.kernel_size == 2
    assert sum(p.numel() for p in meta_model("googlenet", torchvision_compat=True, aux_logits=True).parameters()) \
        == 13_004_888  # torchvision GoogLeNet(aux_logits=True, init_weights=True): 6,624,904 + 2 aux heads


def test_lenet5_and_alexnet_layers_match_papers():
    lenet = meta_model("lenet5")
    convs = [m for m in lenet.modules() if isinstance(m, nn.Conv2d)]
    # LeCun 1998 section II.B: C1 156 trainable parameters, C5 48,120, F6 10,164.
    assert sum(p.numel() for p in convs[0].parameters()) == 156
    assert sum(p.numel() for p in convs[2].parameters()) == 48_120
    assert sum(p.numel() for p in lenet.classifier[0].parameters()) == 10_164
    alex = meta_model("alexnet")
    convs = [m for m in alex.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert [c.kernel_size[0] for c in convs] == [11, 5, 3, 3, 3] and convs[0].stride == (4, 4)
    pools = [m for m in alex.modules() if isinstance(m, nn.MaxPool2d)]
    assert all(p.kernel_size == 3 and p.stride == 2 for p in pools)  # overlapping pooling, section 3.4
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in alex.modules()) == 2
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in meta_model("alexnet", lrn=False).modules())
    assert [type(m) for m in alex.classifier].count(nn.Dropout) == 2


def test_every_conv_bn_and_pool_is_fastconv():
    for name in ALL:
        model = meta_model(name)
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                assert type(m).__module__ == "fastconv.modules", (name, type(m))


def test_registry():
    assert M.list_models() == sorted(ALL)
    assert M.get_model("resnet18", num_classes=7).fc.out_features == 7
    with pytest.raises(ValueError, match="unknown model"):
        M.get_model("resnet19")
    for name in ALL:
        doc = getattr(M, name).__doc__
        assert "Input" in doc and "parameters" in doc and "multiply-adds" in doc, name


def test_resnet_options():
    r = meta_model("resnet50", stride_on="1x1")
    assert r.layer2[0].conv1.stride == (2, 2) and r.layer2[0].conv2.stride == (1, 1)
    r = meta_model("resnet50")
    assert r.layer2[0].conv1.stride == (1, 1) and r.layer2[0].conv2.stride == (2, 2)
    assert meta_model("resnext50_32x4d").layer1[0].conv2.groups == 32
    with pytest.raises(ValueError, match="stride_on"):
        M.resnet50(stride_on="7x7")
    z = M.resnet18(zero_init_residual=True)
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for layer in (z.layer1, z.layer4) for b in layer)


# Names as torchvision lays them out (torchvision/models/{resnet,googlenet,inception,vgg,densenet}.py).
TORCHVISION_KEYS = {
    ("resnet50", ()): (320, ["conv1.weight", "bn1.num_batches_tracked", "layer1.0.downsample.0.weight",
                             "layer1.0.downsample.1.running_var", "layer4.2.conv3.weight", "layer4.2.bn3.bias",
                             "fc.weight", "fc.bias"]),
    ("resnet18", ()): (122, ["layer2.0.downsample.1.weight", "layer4.1.bn2.running_mean", "fc.bias"]),
    ("googlenet", (("torchvision_compat", True), ("aux_logits", True))): (
        None, ["conv1.conv.weight", "conv1.bn.running_mean", "conv3.bn.weight", "inception3a.branch1.conv.weight",
               "inception3a.branch2.1.conv.weight", "inception5b.branch4.1.bn.num_batches_tracked",
               "aux1.conv.conv.weight", "aux1.fc1.weight", "aux2.fc2.bias", "fc.weight"]),
    ("inception_v3", ()): (None, ["Conv2d_1a_3x3.conv.weight", "Conv2d_4a_3x3.bn.running_var",
                                  "Mixed_5b.branch_pool.conv.weight", "Mixed_6a.branch3x3dbl_3.bn.bias",
                                  "Mixed_6e.branch7x7dbl_5.conv.weight", "Mixed_7a.branch7x7x3_4.conv.weight",
                                  "Mixed_7c.branch3x3dbl_3b.bn.weight", "AuxLogits.conv0.conv.weight",
                                  "AuxLogits.conv1.conv.weight", "AuxLogits.fc.weight", "fc.bias"]),
    ("vgg16", ()): (32, ["features.0.weight", "features.28.weight", "classifier.0.weight", "classifier.6.bias"]),
    ("vgg16_bn", ()): (None, ["features.1.running_mean", "features.40.weight", "features.41.weight"]),
    ("densenet121", ()): (None, ["features.conv0.weight", "features.norm0.weight",
                                 "features.denseblock1.denselayer1.norm1.weight",
                                 "features.denseblock4.denselayer16.conv2.weight", "features.transition3.norm.bias",
                                 "features.transition1.conv.weight", "features.norm5.running_var",
                                 "classifier.weight"]),
}


@pytest.mark.parametrize("key", list(TORCHVISION_KEYS), ids=lambda k: k[0])
def test_torchvision_state_dict_names(key):
    name, kw = key
    count, names = TORCHVISION_KEYS[key]
    sd = meta_model(name, **dict(kw)).state_dict()
    if count is not None:
        assert len(sd) == count
    missing = [n for n in names if n not in sd]
    assert not missing


# Small real runs: (name, kwargs, input [C, H, W]).
SMALL = [
    ("resnet18", {"num_classes": 10}, (3, 64, 64)),
    ("resnet50", {"num_classes": 10, "stride_on": "1x1"}, (3, 64, 64)),
    ("googlenet", {"num_classes": 10, "aux_logits": True, "torchvision_compat": True}, (3, 96, 96)),
    ("inception_v3", {"num_classes": 10, "aux_logits": False, "init_weights": False}, (3, 75, 75)),
    ("lenet5", {}, (1, 32, 32)),
    ("alexnet", {"num_classes": 10}, (3, 67, 67)),
    ("vgg16_bn", {"num_classes": 10}, (3, 32, 32)),
    ("densenet121", {"num_classes": 10}, (3, 32, 32)),
]


def _logits(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name,kw,size", SMALL, ids=[s[0] for s in SMALL])
def test_train_step_and_revert_twin(name, kw, size):
    model = M.get_model(name, **kw)
    x = torch.randn(2, *size)
    target = torch.tensor([1, 3])
    out = model(x)
    if kw.get("aux_logits"):
        assert isinstance(out, tuple) and all(o.shape == (2, 10) for o in out)
        loss = F.cross_entropy(out[0], target) + 0.3 * sum(F.cross_entropy(o, target) for o in out[1:])
    else:
        assert out.shape == (2, 10)
        loss = F.cross_entropy(out, target)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # Batch 2 with 1x1 maps late in the net makes batch statistics degenerate: clip as recipes do.
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())

    # state_dict round trip with the torch.nn twin (reverted in place: no copy of the big ones).
    model.eval()
    with torch.no_grad():
        y = model(x)
    assert torch.isfinite(y).all()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    twin = fastconv.revert(model, inplace=True)
    assert not any(type(m).__module__ == "fastconv.modules" for m in twin.modules())
    assert list(twin.state_dict()) == list(state)
    twin.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert_close(twin(x), y)
    back = fastconv.convert(twin, inplace=True)
    back.load_state_dict(twin.state_dict(), strict=True)


def test_aux_outputs_at_published_sizes():
    # Shapes only (meta): the paper's 5x5/3 aux pools need 4a/4d at 14x14, i.e. a 224 input.
    g = fastconv.revert(meta_model("googlenet", aux_logits=True), inplace=True).train()
    out = g(torch.empty(2, 3, 224, 224, device="meta"))
    assert isinstance(out, M.GoogLeNetOutputs) and all(o.shape == (2, 1000) for o in out)
    assert g.eval()(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 1000)
    i = fastconv.revert(meta_model("inception_v3"), inplace=True).train()
    out = i(torch.empty(2, 3, 299, 299, device="meta"))
    assert isinstance(out, M.InceptionOutputs) and out.logits.shape == out.aux_logits.shape == (2, 1000)


def test_profile_user_model_and_real_device():
    net = nn.Sequential(fastconv.Conv2d(3, 8, 3, padding=1, groups=1), fastconv.BatchNorm2d(8), nn.ReLU(),
                        fastconv.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    p = M.profile(net, (3, 8, 8))
    assert [r.macs for r in p.layers] == [8 * 8 * 8 * 27, 0, 0, 0, 0, 5 * 128]
    assert [r.params for r in p.layers] == [8 * 27 + 8, 16, 0, 0, 0, 128 * 5 + 5]
    assert p.params == sum(q.numel() for q in net.parameters()) and p.macs == 8 * 8 * 8 * 27 + 640
    real = M.profile(net.eval(), (2, 3, 8, 8), device="cpu")
    assert real.macs == 2 * p.macs and real.layers[0].output_shape == (2, 8, 8, 8)
    assert net[0].weight.device.type == "cpu" and type(net[0]) is fastconv.Conv2d  # the model is untouched
    assert "total" in str(p)


# ---- parity with independent torch.nn implementations (written as torchvision writes them) ----

class RefBasicBlock(nn.Module):
    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class RefResNet18(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, layers = 64, []
        for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            down = None
            if stride != 1 or cin != planes:
                down = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
            layers.append(nn.Sequential(RefBasicBlock(cin, planes, stride, down), RefBasicBlock(planes, planes)))
            cin = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class RefConv(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class RefInception(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, pp):
        super().__init__()
        self.branch1 = RefConv(cin, c1, kernel_size=1)
        self.branch2 = nn.Sequential(RefConv(cin, c3r, kernel_size=1), RefConv(c3r, c3, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(RefConv(cin, c5r, kernel_size=1), RefConv(c5r, c5, kernel_size=5, padding=2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), RefConv(cin, pp, kernel_size=1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class RefGoogLeNet(nn.Module):
    """Szegedy et al. 2014 table 1 with BN, written out independently of fastconv.models."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = RefConv(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = RefConv(64, 64, kernel_size=1)
        self.conv3 = RefConv(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception3a = RefInception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = RefInception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a = RefInception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = RefInception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = RefInception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = RefInception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = RefInception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception5a = RefInception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = RefInception(832, 384, 192, 384, 48, 128, 128)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        for b in "abcde":
            x = getattr(self, f"inception4{b}")(x)
        x = self.inception5b(self.inception5a(self.maxpool4(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _parity(ours, ref, x):
    ref.load_state_dict(ours.state_dict(), strict=True)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    assert_close(ya, yb)
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    assert_close(xa.grad, xb.grad, msg="input gradient")
    pb = dict(ref.named_parameters())
    for n, p in ours.named_parameters():
        assert_close(p.grad, pb[n].grad, msg=n)
    for (n, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert_close(a.double(), b.double(), msg=n)  # running statistics updated alike


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_resnet18_matches_torch_nn(mode):
    ours = M.resnet18(num_classes=10).double()
    for m in ours.modules():  # non-trivial statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    ref = RefResNet18(10).double()
    ours.train(mode == "train")
    ref.train(mode == "train")
    size = 48 if mode == "train" else 32
    _parity(ours, ref, torch.randn(2, 3, size, size, dtype=torch.float64))


def test_googlenet_matches_torch_nn():
    ours = M.googlenet(num_classes=10, dropout=0.0).double()
    _parity(ours, RefGoogLeNet(10).double(), torch.randn(2, 3, 48, 48, dtype=torch.float64))


# ---- torchvision (skipped where it is not importable) ----

def _tv_pairs():
    # (torchvision builder, kwargs, fastconv builder, kwargs, input size)
    return [
        ("resnet18", {}, "resnet18", {}, 64),
        ("resnet50", {}, "resnet50", {}, 64),
        ("resnext50_32x4d", {}, "resnext50_32x4d", {}, 64),
        ("googlenet", {"aux_logits": True, "init_weights": True}, "googlenet",
         {"aux_logits": True, "torchvision_compat": True}, 96),
        ("inception_v3", {"aux_logits": True, "init_weights": True}, "inception_v3", {}, 75),
        ("vgg16_bn", {}, "vgg16_bn", {}, 32),
        ("densenet121", {}, "densenet121", {}, 32),
    ]


@pytest.mark.parametrize("i", range(7), ids=[p[0] for p in _tv_pairs()])
def test_torchvision_state_dict_loads_strict(i):
    tvm = pytest.importorskip("torchvision.models")
    tv_name, tv_kw, name, kw, size = _tv_pairs()[i]
    tv = getattr(tvm, tv_name)(weights=None, **tv_kw).eval()
    ours = M.get_model(name, **kw).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(tv.state_dict())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert_close(ours(x), tv(x))


def test_convert_torchvision_resnet18_outputs_and_grads():
    tvm = pytest.importorskip("torchvision.models")
    tv = tvm.resnet18(weights=None).double()
    conv = fastconv.convert(tv)
    assert not any(type(m) is nn.Conv2d for m in conv.modules())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = conv(xa), tv(xb)
    assert_close(ya, yb)
    ya.sum().backward()
    yb.sum().backward()
    assert_close(xa.grad, xb.grad)
    for (n, a), b in zip(conv.named_parameters(), tv.parameters()):
        assert_close(a.grad, b.grad, msg=n)


# ---- CUDA: parity against torchvision on cuDNN, fp32 and AMP ----

def _err(y, ref):
    return (y.double() - ref).abs().max().item()


@pytest.mark.cuda
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
@pytest.mark.parametrize("i", [0, 3], ids=["resnet18", "googlenet"])
def test_cuda_parity_with_torchvision(i, amp):
    """Ours and torchvision's on CUDA against the float64 CPU result of the same weights: our error is
    at most twice torchvision's own (plus a float32 floor), for the output and every gradient."""
    tvm = pytest.importorskip("torchvision.models")
    tv_name, tv_kw, name, kw, size = _tv_pairs()[i]
    if "aux_logits" in kw:
        tv_kw, kw = dict(tv_kw, aux_logits=False), dict(kw, aux_logits=False)
    tv = getattr(tvm, tv_name)(weights=None, **tv_kw)
    ours = M.get_model(name, **kw)
    ours.load_state_dict(tv.state_dict(), strict=True)
    for m in list(tv.modules()) + list(ours.modules()):
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # training-mode forwards must be deterministic to compare
    ref = fastconv.revert(ours).double()
    x = torch.randn(4, 3, size, size, dtype=torch.float64)
    outs, grads = [], []
    for net, dev in [(ref, "cpu"), (tv.cuda(), "cuda"), (ours.cuda(), "cuda")]:
        net.train()
        xi = x.to(dev, torch.float32 if dev == "cuda" else torch.float64).requires_grad_()
        with torch.autocast("cuda", enabled=amp and dev == "cuda"):
            y = net(xi)
        y.float().sum().backward() if dev == "cuda" else y.sum().backward()
        outs.append(y.detach().double().cpu())
        grads.append([xi.grad.double().cpu()] + [p.grad.double().cpu() for p in net.parameters()])
    floor = 1e-4 if not amp else 1e-3
    scale = outs[0].abs().max().item()
    assert _err(outs[2], outs[0]) <= 2 * _err(outs[1], outs[0]) + floor * scale
    for k, (r, t, o) in enumerate(zip(*grads)):
        s = max(1.0, r.abs().max().item())
        assert _err(o, r) <= 2 * _err(t, r) + floor * s, k


# ---- fused=True (issue 15 item 4): every builder, through fastconv.fuse_for_training ------------------


def test_every_builder_takes_fused():
    for name in ALL:
        p = inspect.signature(getattr(M, name)).parameters.get("fused")
        assert p is not None and p.default is False and p.kind is p.POSITIONAL_OR_KEYWORD, name
    r = meta_model("resnet18", fused=False)  # fused=False: the unfused model, BN layers and all
    assert sum(isinstance(m, nn.BatchNorm2d) for m in r.modules()) == 20
    f = meta_model("resnet18", fused=True)  # fused=True: conv+BN(+ReLU, +residual) as ConvBNAct2d each
    assert sum(isinstance(m, fastconv.fused.ConvBNAct2d) for m in f.modules()) == 20


def _random_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial statistics and affine parameters, so folding is not a no-op
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def _pair(name, **kw):
    torch.manual_seed(0)
    ref = _random_bn(M.get_model(name, num_classes=10, **kw).double())
    fused = M.get_model(name, num_classes=10, fused=True, **kw).double()
    fused.load_state_dict(ref.state_dict())  # strict: fusion keeps the unfused parameter and buffer names
    return ref, fused


def _rel(a, b):
    a, b = (a[0] if isinstance(a, tuple) else a), (b[0] if isinstance(b, tuple) else b)
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.mark.parametrize("name, size, kw", [
    ("resnet18", 32, {}), ("resnet50", 32, {}), ("resnext50_32x4d", 32, {}), ("googlenet", 48, {}),
    ("inception_v3", 75, {"aux_logits": False}),
])
def test_fused_model_matches_unfused_in_float64_eval(name, size, kw):
    ref, fused = _pair(name, **kw)
    assert any(type(m).__name__ == "ConvBNAct2d" for m in fused.modules()), "nothing was fused"
    assert getattr(fused, "fastconv_fusion_summary", None) is not None
    ref.eval()
    fused.eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(ref(x), fused(x)) <= 1e-10


def test_fused_resnet18_trains_like_unfused():
    ref, fused = _pair("resnet18")
    ref.train()
    fused.train()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ya, yb = ref(x), fused(x)
    assert _rel(ya, yb) <= 1e-10
    ya.square().sum().backward()
    yb.square().sum().backward()
    pa, pb = dict(ref.named_parameters()), dict(fused.named_parameters())
    assert set(pa) == set(pb)
    for n, p in pa.items():
        assert _rel(p.grad, pb[n].grad) <= 1e-8, n
    sb = fused.state_dict()
    for n, v in ref.state_dict().items():  # running statistics updated alike
        assert torch.allclose(v.double(), sb[n].double(), rtol=1e-10, atol=1e-12), n
