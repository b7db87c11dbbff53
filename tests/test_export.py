"""ONNX export of fastconv models (fastconv.onnx: dynamo and legacy exporters), run in onnxruntime
against torch.nn's numbers; torch.jit.script's refusal message. The export tests skip without onnx
and onnxruntime (the dynamo ones also without onnxscript)."""

import contextlib
import importlib
import sys
import warnings

import pytest
import torch
from torch import nn

import fastconv
import fastconv.fused
import fastconv.onnx
from fastconv import functional as FF
from integ_models import pair


def _optional(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


onnx, ort, onnxscript = _optional("onnx"), _optional("onnxruntime"), _optional("onnxscript")
needs_ort = pytest.mark.skipif(onnx is None or ort is None, reason="needs onnx and onnxruntime")
needs_onnxscript = pytest.mark.skipif(onnxscript is None, reason="the dynamo exporter needs onnxscript")
EXPORTERS = [pytest.param(True, id="dynamo", marks=needs_onnxscript), pytest.param(False, id="legacy")]


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning, TracerWarnings
        yield


def _export(model, args, path, dynamo, **kwargs):
    with _quiet():
        fastconv.onnx.export(model, args, str(path), dynamo=dynamo, **kwargs)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node), {n.domain for n in proto.graph.node}
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, *xs):
    names = [i.name for i in session.get_inputs()]
    return [torch.from_numpy(o) for o in session.run(None, {n: x.numpy() for n, x in zip(names, xs)})]


def _close(got, want, atol=1e-5, rtol=1e-5):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, (i, g.shape, w.shape)
        if w.dtype == torch.int64:
            assert torch.equal(g, w), i
        else:
            torch.testing.assert_close(g, w.to(g.dtype), atol=atol, rtol=rtol, msg=f"output {i}")


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


class Layers(nn.Module):
    """Every layer convert() swaps, in several configurations, one output per branch."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=(2, 1), dilation=(2, 1), groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(8, affine=False)
        self.c3 = nn.Conv2d(8, 4, 1, stride=(1, 2), padding_mode="zeros")
        self.c4 = nn.Conv2d(8, 4, 3, padding=1, padding_mode="reflect")
        self.pools = nn.ModuleList([
            nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.MaxPool2d((2, 3), (1, 2), (1, 0), (2, 1)),
            nn.MaxPool2d(2, 2, 1, ceil_mode=True),  # H 7: ceil_mode's last window would start in the padding
            nn.AvgPool2d(3, 2, 1), nn.AvgPool2d(3, 2, 1, ceil_mode=True), nn.AvgPool2d(2, 2, 1, ceil_mode=True),
            nn.AvgPool2d(3, 2, 0, ceil_mode=True),  # W 6: the last window runs past the input (divisor 2)
            nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), nn.AvgPool2d((2, 3), (2, 1), (1, 1)),
            nn.AvgPool2d(2, 1, 1, ceil_mode=True, divisor_override=3),
            nn.AvgPool2d(3, 2, 0, ceil_mode=True, divisor_override=2),
            nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d((2, 3)), nn.AdaptiveAvgPool2d((3, 2)),
            nn.AdaptiveAvgPool2d((None, 4)),
        ])

    def forward(self, x):
        y = torch.relu(self.bn1(self.c1(x)))
        y = self.bn2(self.c2(y))
        return (self.c3(y), self.c4(y), *(p(y) for p in self.pools))


@needs_ort
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_export_every_layer_matches_torch(tmp_path, dynamo):
    ref = Layers()
    _randomise_bn(ref)
    ref.eval()
    ours = fastconv.convert(ref)
    x = torch.randn(2, 3, 13, 11)
    session = _export(ours, (x,), tmp_path / "m.onnx", dynamo)
    with torch.no_grad():
        _close(_run(session, x), list(ref(x)))


class Fused(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.scale = nn.Parameter(torch.rand(6) + 0.5)
        self.shift = nn.Parameter(torch.randn(6))
        self.bnrelu = fastconv.BatchNormReLU2d(6)

    def forward(self, x, residual):
        a = fastconv.fused.conv2d_bias_act(x, self.conv.weight, self.scale, self.shift, residual, padding=1, relu=True)
        b = fastconv.fused.conv2d_bias_act(x, self.conv.weight, None, self.shift, None, padding=1)
        c = fastconv.fused.conv2d_bias_act(x, self.conv.weight, self.scale.double(), None, residual, padding=1)
        return a, b, c, self.bnrelu(residual)

    def reference(self, x, residual):
        conv = nn.functional.conv2d(x, self.conv.weight, padding=1)
        s, t = self.scale.view(1, -1, 1, 1), self.shift.view(1, -1, 1, 1)
        bn = self.bnrelu
        ref_bn = nn.functional.batch_norm(residual, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return torch.relu(conv * s + t + residual), conv + t, conv * s + residual, torch.relu(ref_bn)


@needs_ort
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_export_fused_conv_and_bn_relu(tmp_path, dynamo):
    model = Fused()
    _randomise_bn(model)
    model.eval()
    x, r = torch.randn(2, 4, 7, 6), torch.randn(2, 6, 7, 6)
    session = _export(model, (x, r), tmp_path / "m.onnx", dynamo)
    with torch.no_grad():
        _close(_run(session, x, r), list(model.reference(x, r)))


class PoolIndices(nn.Module):
    def forward(self, x):
        a = FF.max_pool2d(x, 3, 2, 1, return_indices=True)
        b = FF.max_pool2d(x, (2, 3), (2, 1), 1, (1, 2), ceil_mode=True, return_indices=True)
        return (*a, *b)


@needs_ort
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_export_max_pool_indices_are_torchs(tmp_path, dynamo):
    x = torch.randn(2, 3, 9, 8)
    session = _export(PoolIndices(), (x,), tmp_path / "m.onnx", dynamo)
    want = [*nn.functional.max_pool2d(x, 3, 2, 1, return_indices=True),
            *nn.functional.max_pool2d(x, (2, 3), (2, 1), 1, (1, 2), ceil_mode=True, return_indices=True)]
    _close(_run(session, x), want)


@needs_ort
@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_export_batch_statistics_bn(tmp_path, dynamo):
    # track_running_stats=False: batch statistics even in eval (fastconv's batch_norm_train op)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
                        nn.BatchNorm2d(4, affine=False, track_running_stats=False)).eval()
    x = torch.randn(3, 3, 6, 7)
    session = _export(fastconv.convert(ref), (x,), tmp_path / "m.onnx", dynamo)
    with torch.no_grad():
        _close(_run(session, x), [ref(x)], atol=1e-4)


@needs_ort
@needs_onnxscript
def test_export_dynamo_dynamic_batch_and_mode_restored(tmp_path):
    ref, model = pair("resnet_like")
    _randomise_bn(ref)
    model.load_state_dict(ref.state_dict())
    model[4].bn1.eval()  # a mixed mode (the rest is training), restored as it was
    x = torch.randn(2, 3, 16, 16)
    batch = torch.export.Dim("batch", min=1, max=8)
    session = _export(model, (x,), tmp_path / "m.onnx", True, dynamic_shapes=({0: batch},))
    assert model.training and not model[4].bn1.training and model[4].bn2.training
    x3 = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        _close(_run(session, x3), [ref.eval()(x3)], atol=1e-4, rtol=1e-4)


@needs_ort
@needs_onnxscript
def test_translation_table_with_torch_onnx_export(tmp_path):
    ref = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1))
    _randomise_bn(ref)
    ref.eval()
    x = torch.randn(1, 3, 8, 8)
    with _quiet():
        program = torch.onnx.export(fastconv.convert(ref), (x,), dynamo=True,
                                    custom_translation_table=fastconv.onnx.translation_table())
    program.save(str(tmp_path / "m.onnx"))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        _close(_run(session, x), [ref(x)])


def test_legacy_export_needs_opset_15(tmp_path):
    model = fastconv.convert(nn.Sequential(nn.Conv2d(3, 4, 3))).eval()
    with pytest.raises(ValueError, match="opset_version >= 15"):
        fastconv.onnx.export(model, (torch.randn(1, 3, 5, 5),), str(tmp_path / "m.onnx"), dynamo=False, opset_version=13)


def test_dynamo_without_onnxscript_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    with pytest.raises(ImportError, match="needs onnxscript and onnx"):
        fastconv.onnx.translation_table()


# ---- TorchScript ------------------------------------------------------------------------------------

_NO_SCRIPT_DEPRECATION = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.mark.parametrize("make", [
    lambda: fastconv.Conv2d(3, 4, 3),
    lambda: fastconv.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))),
    lambda: nn.Sequential(fastconv.AvgPool2d(2)),
    lambda: fastconv.AdaptiveAvgPool2d(1),
    lambda: fastconv.BatchNormReLU2d(3),
], ids=["Conv2d", "converted", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNormReLU2d"])
@_NO_SCRIPT_DEPRECATION
def test_jit_script_refuses_with_alternatives(make):
    with pytest.raises(RuntimeError, match=r"torch\.jit\.script.*torch\.jit\.trace.*torch\.export.*revert"):
        torch.jit.script(make())


@_NO_SCRIPT_DEPRECATION
def test_jit_script_of_reverted_model_and_trace_still_work():
    model = fastconv.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.MaxPool2d(2))).eval()
    x = torch.randn(1, 3, 8, 8)
    scripted = torch.jit.script(fastconv.revert(model))
    with _quiet():
        traced = torch.jit.trace(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
        torch.testing.assert_close(traced(x), model(x))
