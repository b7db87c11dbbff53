"""explain() of a mismatched conv, of a whole model and of layers it does not explain; profile() of a
training-mode model."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastconv
import fastconv.models as M
from fastconv import backends


def _torch_error(x_shape, w_shape, groups):
    with pytest.raises(RuntimeError) as info:
        F.conv2d(torch.empty(x_shape), torch.empty(w_shape), groups=groups)
    return str(info.value)


@pytest.mark.parametrize("x_shape,w_shape,groups", [
    ((1, 4, 8, 8), (4, 3, 3, 3), 1),   # channels: weight says 3
    ((1, 4, 8, 8), (4, 1, 3, 3), 2),   # grouped: 2 x 1 channels
    ((1, 4, 8, 8), (3, 2, 3, 3), 2),   # K not divisible by groups
])
def test_explain_rejects_mismatched_shapes_like_torch(x_shape, w_shape, groups):
    want = _torch_error(x_shape, w_shape, groups)
    conv = nn.Conv2d(w_shape[1] * groups, w_shape[0], w_shape[2:], groups=groups) if w_shape[0] % groups == 0 else None
    forms = [(w_shape, x_shape), (torch.empty(w_shape), torch.empty(x_shape))] + ([(conv, x_shape)] if conv else [])
    for w, x in forms:
        with pytest.raises(RuntimeError) as info:
            fastconv.explain(w, x, groups=groups, verbose=False)
        assert str(info.value) == f"fastconv.explain: {want}"


@pytest.mark.parametrize("what", [nn.MaxPool2d(2), nn.BatchNorm2d(4), nn.Sequential(nn.ReLU(), nn.AvgPool2d(2)), 3,
                                  "conv", None], ids=["MaxPool2d", "BatchNorm2d", "no-conv-model", "int", "str", "None"])
def test_explain_says_what_it_accepts(what):
    with pytest.raises(TypeError, match="fastconv.explain accepts a torch.nn.Conv2d"):
        fastconv.explain(what, (1, 4, 8, 8), verbose=False)


def test_explain_model_without_input():
    with pytest.raises(TypeError, match=r"give the input of the Sequential .*explain\(model, \(1, 3, 224, 224\)\)"):
        fastconv.explain(nn.Sequential(nn.Conv2d(3, 4, 3)))


class Net(nn.Module):
    """A conv called twice at two sizes, a reflect-padded conv, a 1x1 grouped conv, a forced algorithm."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, padding_mode="reflect")
        self.pool = nn.MaxPool2d(2)
        self.shared = fastconv.Conv2d(8, 8, 3, padding=1, algo="direct")
        self.proj = nn.Conv2d(8, 16, 1, groups=2)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x):
        y = self.stem(x)
        y = self.shared(y) + self.shared(y)  # same size twice: one row
        y = self.shared(self.pool(y))       # another size: another row
        return self.bn(self.proj(y))


@pytest.mark.parametrize("train", [False, True])
def test_explain_model_every_conv_as_single_explains(capsys, train):
    model = Net().train(train)
    with backends.flags(autotune=False):
        ex = fastconv.explain(model, (2, 3, 32, 30))
        printed = capsys.readouterr().out
        assert str(ex) in printed and "4 convolutions" in printed
        assert [name for name, _ in ex.layers] == ["stem", "shared", "shared", "proj"]
        # each row is what explain(layer, its input size) says
        sizes = [(2, 3, 32, 30), (2, 8, 16, 15), (2, 8, 8, 7), (2, 8, 8, 7)]
        for (name, got), size in zip(ex.layers, sizes):
            want = fastconv.explain(getattr(model, name), size, verbose=False)
            assert got.problem == want.problem and got.choice == want.choice and got.source == want.source, name
        assert ex.layers[1][1].source == "forced" and ex.layers[1][1].choice == "direct"
        # the input sizes are torch's: the conv's output shapes follow from them
        with torch.no_grad():
            x = torch.randn(2, 3, 32, 30)
            assert fastconv.revert(model)(x).shape == (2, 16, 8, 7)
        # a tensor input gives its dtype and layout; the model's parameters and mode are untouched
        x = torch.randn(1, 3, 16, 16, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        ex = fastconv.explain(model.double(), x, verbose=False)
        assert ex.layers[0][1].problem.dtype == torch.float64 and ex.layers[0][1].problem.layout == "NHWC"
        assert model.training == train and model.stem.weight.device.type == "cpu"


def test_explain_model_zoo_on_meta():
    with torch.device("meta"):
        model = M.resnet18()
    with backends.flags(autotune=False):
        ex = fastconv.explain(model, (1, 3, 64, 64), verbose=False)
    assert len(ex.layers) == sum(isinstance(m, nn.Conv2d) for m in model.modules())  # 20 convs, each once
    assert ex.layers[0][0] == "conv1" and ex.layers[0][1].problem.P == 32


def test_profile_training_mode_model_runs_in_eval_and_restores_mode():
    with torch.device("meta"):
        model = M.inception_v3()  # train mode: its aux head sees a 1x1 map (1 value per channel at batch 1)
    model.AuxLogits.conv0.eval()
    prof = M.profile(model, (3, 299, 299))
    assert prof.layers[-1].output_shape == (1, 1000)
    assert not any(r.name.startswith("AuxLogits.") for r in prof.layers)  # eval mode: the aux head does not run
    assert model.training and not model.AuxLogits.conv0.training and model.AuxLogits.conv1.training
    # real-device path: the model itself runs, in eval, and gets its modes back
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4)).train()
    prof = M.profile(net, (3, 8, 8), device="cpu")
    assert prof.layers[-1].output_shape == (1, 4, 1, 1) and net.training and net[2].training
    assert int(net[2].num_batches_tracked) == 0  # eval: no running-statistics update
