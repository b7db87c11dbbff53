"""torch.autocast on the CPU: fastconv follows torch's casting policy (conv2d to the autocast dtype,
pooling and batch norm in their input's dtype, BN parameters and statistics in float32), computing
in float32 where its CPU kernels have no low-precision path. CUDA autocast: test_cuda_integration.py."""

import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FF
from integ_models import pair

LOW = [torch.bfloat16, torch.float16]


def _tol(dtype):
    # Half-precision outputs: a couple of units in the last place at the output's magnitude.
    return dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("algo", ["direct", "im2col", "gemm1x1"])
def test_conv2d_casts_like_torch(dtype, algo):
    k = 1 if algo == "gemm1x1" else 3
    x = torch.randn(2, 4, 9, 8)
    w = torch.randn(6, 4, k, k, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        ours = FF.conv2d(x, w, b, stride=2, algo=algo)
        ref = F.conv2d(x, w, b, stride=2)
    assert ours.dtype == ref.dtype == dtype
    torch.testing.assert_close(ours.float(), ref.float(), **_tol(dtype))
    g = torch.randn_like(ref)
    gw, gb = torch.autograd.grad(ours, (w, b), g)
    rw, rb = torch.autograd.grad(ref, (w, b), g)
    assert gw.dtype == gb.dtype == torch.float32  # gradients in the parameters' dtype, as torch
    torch.testing.assert_close(gw, rw, rtol=3e-2, atol=3e-2 * rw.abs().max().item())
    torch.testing.assert_close(gb, rb, rtol=1e-2, atol=1e-2)


def test_float64_is_not_cast():
    x, w = torch.randn(1, 2, 5, 5, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = FF.conv2d(x, w)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, F.conv2d(x, w))


@pytest.mark.parametrize("dtype", LOW)
def test_pool_and_batch_norm_keep_input_dtype(dtype):
    x = torch.randn(2, 3, 8, 7).to(dtype)
    rm, rv, w, b = torch.randn(3), torch.rand(3) + 0.5, torch.randn(3), torch.randn(3)
    cases = [
        (lambda t: FF.max_pool2d(t, 3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1)),
        (lambda t: FF.avg_pool2d(t, 2, ceil_mode=True), lambda t: F.avg_pool2d(t, 2, ceil_mode=True)),
        (lambda t: FF.adaptive_avg_pool2d(t, (3, 2)), lambda t: F.adaptive_avg_pool2d(t, (3, 2))),
        (lambda t: FF.batch_norm(t, rm.clone(), rv.clone(), w, b, False),
         lambda t: F.batch_norm(t, rm.clone(), rv.clone(), w, b, False)),
    ]
    for ours, ref in cases:
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype):
            ya, yb = ours(xa), ref(xb)
        assert ya.dtype == yb.dtype == dtype
        torch.testing.assert_close(ya.float(), yb.float(), **_tol(dtype))
        g = torch.randn_like(yb)
        ga, = torch.autograd.grad(ya, xa, g)
        gb, = torch.autograd.grad(yb, xb, g)
        assert ga.dtype == dtype
        torch.testing.assert_close(ga.float(), gb.float(), **_tol(dtype))
    # Batch norm in training: float32 running statistics stay float32 and match torch's update.
    ra, va, rb, vb = rm.clone(), rv.clone(), rm.clone(), rv.clone()
    with torch.autocast("cpu", dtype=dtype):
        ya = FF.batch_norm(x, ra, va, w, b, True)
        yb = F.batch_norm(x, rb, vb, w, b, True)
    assert ya.dtype == yb.dtype == dtype and ra.dtype == torch.float32
    torch.testing.assert_close(ra, rb, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(va, vb, rtol=1e-3, atol=1e-3)


def test_half_on_cpu_outside_autocast_still_raises():
    with pytest.raises(NotImplementedError):
        FF.max_pool2d(torch.randn(1, 1, 4, 4, dtype=torch.bfloat16), 2)
    with pytest.raises(NotImplementedError):
        FF.conv2d(torch.randn(1, 1, 4, 4, dtype=torch.bfloat16), torch.randn(1, 1, 3, 3, dtype=torch.bfloat16))


@pytest.mark.parametrize("name", ["resnet_like", "inception_like"])
def test_model_training_step_under_autocast(name):
    ref, ours = pair(name)
    x = torch.randn(4, 3, 16, 16)
    outs, grads = [], []
    for model in (ours, ref):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
        y.float().square().mean().backward()
        outs.append(y)
        grads.append([p.grad for p in model.parameters()])
    assert outs[0].dtype == outs[1].dtype == torch.bfloat16
    torch.testing.assert_close(outs[0].float(), outs[1].float(), rtol=5e-2, atol=5e-2)
    scale = max(g.abs().max().item() for g in grads[1])  # judge every gradient at the model's scale
    for ga, gb in zip(*grads):
        assert ga.dtype == torch.float32
        torch.testing.assert_close(ga, gb, rtol=0.1, atol=0.05 * scale)
    for m in ours.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.weight.dtype == m.running_mean.dtype == m.running_var.dtype == torch.float32
    for (k, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        if "running" in k:
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_autocast_inside_compiled_model():
    ref, ours = pair("resnet_like")

    def step(model, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    x = torch.randn(2, 3, 12, 12)
    y = torch.compile(step, fullgraph=True, backend="aot_eager")(ours, x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), step(ref, x).float(), rtol=5e-2, atol=5e-2)
    y.float().sum().backward()


def test_fused_conv_under_autocast():
    from fastconv.fused import conv2d_bias_act

    x, w, scale, bias = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.rand(6) + 0.5, torch.randn(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv2d_bias_act(x, w, scale, bias, None, padding=1, relu=True)
    # Reference: the bf16-rounded activation and weight, scale and bias kept in float32.
    ref = F.conv2d(x.bfloat16().float(), w.bfloat16().float(), padding=1)
    ref = torch.relu(ref * scale[:, None, None] + bias[:, None, None])
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=1e-2)
