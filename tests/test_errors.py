"""Bad input raises the exception type torch raises, with a message naming the problem, on every
device (cpu, the emulated CUDA device, cuda): the reference is torch on the CPU with the same
arguments. Sizes whose arithmetic would overflow are refused (never a hang or a wrong answer)."""

import types

import pytest
import torch
import torch.nn.functional as F
from _devices import DEVICE_PARAMS

import fastconv
import fastconv.functional as FF


def pytest_generate_tests(metafunc):  # noqa: D103  (the device parameter of every test here)
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICE_PARAMS)


def _on(device, args):
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def _raises_like_torch(ours, ref, args, device, match=None):
    """ref(*args) on the CPU raises; ours(*args on device) raises the same type (matching `match`)."""
    with pytest.raises(Exception) as ref_exc:
        ref(*args)
    with pytest.raises(type(ref_exc.value), match=match) as our_exc:
        ours(*_on(device, args))
    assert "fastconv" in str(our_exc.value) or type(our_exc.value) is TypeError, str(our_exc.value)


X = torch.randn(2, 4, 6, 6)
W = torch.randn(8, 4, 3, 3)

CONV_CASES = {
    "wrong_rank": dict(x=torch.randn(4, 6), w=W),
    "weight_rank": dict(x=X, w=torch.randn(8, 4, 3)),
    "channel_mismatch": dict(x=torch.randn(2, 3, 6, 6), w=W),
    "groups_do_not_divide": dict(x=X, w=torch.randn(8, 2, 3, 3), groups=3),
    "groups_zero": dict(x=X, w=W, groups=0),
    "bias_size": dict(x=X, w=W, b=torch.randn(5)),
    "output_too_small": dict(x=torch.randn(2, 4, 2, 2), w=W),
    "stride_zero": dict(x=X, w=W, stride=0),
    "dilation_zero": dict(x=X, w=W, dilation=0),
    "negative_padding": dict(x=X, w=W, padding=-1),
    "same_with_stride": dict(x=X, w=W, padding="same", stride=2),
    "dtype_mix": dict(x=X, w=W.double()),
    "padding_overflows": dict(x=torch.randn(1, 1, 2, 2), w=torch.randn(1, 1, 1, 1), padding=2**63 - 1),
    "zero_filters": dict(x=torch.randn(1, 1, 4, 4), w=torch.randn(0, 1, 3, 3)),
    "empty_height_padded": dict(x=torch.randn(1, 1, 0, 4), w=torch.randn(2, 1, 1, 1), padding=1),
    "bool_input": dict(x=torch.ones(1, 1, 3, 3, dtype=torch.bool), w=torch.ones(1, 1, 1, 1, dtype=torch.bool)),
}


@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv2d_bad_input(device, name):
    case = CONV_CASES[name]
    args = (case["x"], case["w"], case.get("b"), case.get("stride", 1), case.get("padding", 0),
            case.get("dilation", 1), case.get("groups", 1))
    _raises_like_torch(FF.conv2d, F.conv2d, args, device)


def test_conv2d_integer_input_is_not_implemented(device):
    # torch's CPU has a slow int64 convolution; fastconv has no integer kernels and says so.
    x, w = torch.ones(1, 1, 3, 3, dtype=torch.long), torch.ones(1, 1, 1, 1, dtype=torch.long)
    with pytest.raises(NotImplementedError, match="int64|Long"):
        FF.conv2d(x.to(device), w.to(device))


def test_conv2d_huge_stride_and_dilation_are_computed_not_wrapped(device):
    # torch accepts these; the output size is computed without int64 overflow.
    x, w = torch.randn(1, 1, 2, 2), torch.randn(1, 1, 1, 1)
    for kw in (dict(stride=2**63 - 1), dict(dilation=2**62)):
        torch.testing.assert_close(FF.conv2d(x.to(device), w.to(device), **kw).cpu(), F.conv2d(x, w, **kw))


def test_conv2d_without_input_channels_is_the_bias(device):
    # A sum over no channels: every output is the bias (torch returns an oddly shaped empty tensor
    # here; fastconv returns the value the convolution defines, on every device).
    x, w, b = torch.randn(2, 0, 4, 4), torch.randn(3, 0, 3, 3), torch.randn(3)
    y = FF.conv2d(x.to(device), w.to(device), b.to(device), padding=1)
    assert y.shape == (2, 3, 4, 4)
    torch.testing.assert_close(y.cpu(), b.view(1, 3, 1, 1).expand(2, 3, 4, 4))
    assert FF.conv2d(x.to(device), w.to(device)).abs().sum().item() == 0


def test_conv2d_unknown_and_refusing_algorithms(device):
    x, w = X.to(device), W.to(device)
    with pytest.raises(ValueError, match="unknown algo 'winograd9'"):
        FF.conv2d(x, w, algo="winograd9")
    with pytest.raises(NotImplementedError, match="gemm1x1.*1x1"):
        FF.conv2d(x, w, algo="gemm1x1")
    with pytest.raises(NotImplementedError, match="gemm1x1.*padding"):
        FF.conv2d(x, torch.randn(8, 4, 1, 1, device=device), padding=1, algo="gemm1x1")


def test_unknown_algo_lists_only_this_devices_algorithms():
    with pytest.raises(ValueError) as e:
        FF.conv2d(X, W, algo="winograd9")
    listed = str(e.value).split("choose one of")[1]
    assert "'direct'" in listed and "'im2col'" in listed
    assert "implicit_gemm" not in listed  # a CUDA algorithm: not a choice for a CPU tensor
    with pytest.raises(ValueError, match="exists for another device"):
        FF.conv2d(X, W, algo="implicit_gemm")


def test_low_precision_on_cpu_is_not_implemented():
    # torch's type for a dtype a kernel lacks ("... not implemented for 'Half'").
    with pytest.raises(NotImplementedError, match="float16"):
        FF.conv2d(X.half(), W.half())
    with pytest.raises(NotImplementedError, match="Half"):
        FF.max_pool2d(X.half(), 2)
    with pytest.raises(NotImplementedError, match="Half"):
        FF.batch_norm(X.half(), None, None, training=True)


POOL_CASES = {
    "max_pad_too_big": (lambda M, x: M.max_pool2d(x, 3, 1, 2), X),
    "max_1d": (lambda M, x: M.max_pool2d(x, 2), torch.randn(6)),
    "max_2d": (lambda M, x: M.max_pool2d(x, 2), torch.randn(4, 4)),
    "max_kernel_overflows": (lambda M, x: M.max_pool2d(x, 2**41, 1, 2**40), torch.randn(1, 1, 2, 2)),
    "max_dilation_pad": (lambda M, x: M.max_pool2d(x, 3, 1, 2, dilation=2), X),
    "avg_too_small": (lambda M, x: M.avg_pool2d(x, 8), X),
    "avg_divisor_zero": (lambda M, x: M.avg_pool2d(x, 2, divisor_override=0), X),
    "avg_divisor_float": (lambda M, x: M.avg_pool2d(x, 2, divisor_override=2.5), X),
    "avg_kernel_overflows": (lambda M, x: M.avg_pool2d(x, 2**33, 1, 2**32), torch.randn(1, 1, 2, 2)),
    "avg_2d": (lambda M, x: M.avg_pool2d(x, 2), torch.randn(4, 4)),
    "avg_1d": (lambda M, x: M.avg_pool2d(x, 2), torch.randn(4)),
    "adaptive_1d": (lambda M, x: M.adaptive_avg_pool2d(x, 1), torch.randn(4)),
    "adaptive_negative": (lambda M, x: M.adaptive_avg_pool2d(x, (-1, 2)), X),
    "adaptive_empty_plane": (lambda M, x: M.adaptive_avg_pool2d(x, 2), torch.randn(1, 2, 0, 3)),
    "adaptive_2d_pair": (lambda M, x: M.adaptive_avg_pool2d(x, (2, 3)), torch.randn(6, 5)),
}


@pytest.mark.parametrize("name", list(POOL_CASES))
def test_pool_bad_input(device, name):
    fn, x = POOL_CASES[name]
    _raises_like_torch(lambda x: fn(FF, x), lambda x: fn(F, x), (x,), device)


def test_max_pool2d_integer_input(device):
    x = torch.randint(-50, 50, (2, 3, 7, 6))
    if device != "cpu":  # CUDA kernels are floating point only (README's dtype table)
        with pytest.raises(NotImplementedError, match="Long"):
            FF.max_pool2d(x.to(device), 3, 2, 1)
        return
    for dt in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        xi = x.abs().to(dt) if dt == torch.uint8 else x.to(dt)
        y, i = FF.max_pool2d(xi, 3, 2, 1, return_indices=True)
        ry, ri = F.max_pool2d(xi, 3, 2, 1, return_indices=True)
        assert y.dtype == dt and torch.equal(y, ry) and torch.equal(i, ri)


def test_adaptive_avg_pool2d_of_other_ranks(device):
    # torch averages the last two dimensions of a 2-D or 5-D input to 1x1 (other sizes: 3-D/4-D only).
    for shape in ((6, 5), (2, 3, 2, 6, 5)):
        x = torch.randn(shape, dtype=torch.float64)
        torch.testing.assert_close(FF.adaptive_avg_pool2d(x.to(device), 1).cpu(), F.adaptive_avg_pool2d(x, 1))
        _raises_like_torch(lambda x: FF.adaptive_avg_pool2d(x, 2), lambda x: F.adaptive_avg_pool2d(x, 2), (x,), device)
    # An empty plane: fastconv refuses for every output size; torch returns NaN for output size 1 only.
    with pytest.raises(RuntimeError, match="non-zero size"):
        FF.adaptive_avg_pool2d(torch.randn(1, 2, 0, 3, device=device), 1)


def test_adaptive_avg_pool2d_accumulates_accurately(device):
    # A large mean makes a plain float32 sum lose digits with the element count (a 2048x2048 plane
    # lost 3.6e-5; 2^31 elements, 5%): the error must stay within 2x torch's own float32 error.
    g = torch.Generator().manual_seed(4)
    for shape in ((1, 2, 256, 256), (1, 1, 96, 700)):
        x = torch.randn(shape, generator=g, dtype=torch.float64) + 1000.0
        ref = x.mean((2, 3), keepdim=True)
        theirs = F.adaptive_avg_pool2d(x.float(), 1).double()
        for layout in (torch.contiguous_format, torch.channels_last):
            ours = FF.adaptive_avg_pool2d(x.float().contiguous(memory_format=layout).to(device), 1).cpu().double()
            err = ((ours - ref).abs().max() / ref.abs().max()).item()
            terr = ((theirs - ref).abs().max() / ref.abs().max()).item()
            assert err <= 2 * terr + 1e-7, (shape, layout, err, terr)


BN_CASES = {
    "stats_size": (lambda M, x: M.batch_norm(x, torch.zeros(3), torch.ones(3)), X),
    "one_value_per_channel": (lambda M, x: M.batch_norm(x, None, None, training=True), torch.randn(1, 4, 1, 1)),
    "mean_without_var": (lambda M, x: M.batch_norm(x, torch.zeros(4), None, training=True), X),
    "var_without_mean": (lambda M, x: M.batch_norm(x, None, torch.ones(4), training=True), X),
    "eps_zero_training": (lambda M, x: M.batch_norm(x, None, None, training=True, eps=0.0), X),
    "eps_negative_training": (lambda M, x: M.batch_norm(x, None, None, training=True, eps=-1.0), X),
    "weight_dtype_mix": (lambda M, x: M.batch_norm(x, None, None, torch.ones(4, dtype=torch.float64),
                                                   training=True), X),
    "weight_dtype_mix_eval": (lambda M, x: M.batch_norm(x, torch.zeros(4), torch.ones(4),
                                                        torch.ones(4, dtype=torch.float64)), X),
    "running_dtype_mix": (lambda M, x: M.batch_norm(x, torch.zeros(4, dtype=torch.float64),
                                                    torch.ones(4, dtype=torch.float64), training=True), X),
    "running_c1_training": (lambda M, x: M.batch_norm(x, torch.zeros(4, 1), torch.ones(4, 1), training=True), X),
    "running_c1_eval": (lambda M, x: M.batch_norm(x, torch.zeros(4, 1), torch.ones(4, 1)), X),
    "input_1d_training": (lambda M, x: M.batch_norm(x, None, None, training=True), torch.randn(4)),
    "input_1d_eval": (lambda M, x: M.batch_norm(x, torch.zeros(4), torch.ones(4)), torch.randn(4)),
    "eval_without_stats": (lambda M, x: M.batch_norm(x, None, None), X),
    "integer_input": (lambda M, x: M.batch_norm(x, None, None, training=True), torch.ones(2, 4, 3, 3, dtype=torch.long)),
}


@pytest.mark.parametrize("name", list(BN_CASES))
def test_batch_norm_bad_input(device, name):
    fn, x = BN_CASES[name]

    def to_x(x, v):
        return v.to(x.device) if isinstance(v, torch.Tensor) else v

    # fastconv.functional with the parameters moved to the input's device.
    mod = types.SimpleNamespace(batch_norm=lambda x, *a, **k: FF.batch_norm(
        x, *(to_x(x, v) for v in a), **{n: to_x(x, v) for n, v in k.items()}))
    ours = lambda x: fn(mod, x)  # noqa: E731
    _raises_like_torch(ours, lambda x: fn(F, x), (x,), device)


def test_batch_norm_weight_of_shape_1_c_is_accepted(device):
    x, w = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.rand(1, 3, dtype=torch.float64) + 0.5
    torch.testing.assert_close(FF.batch_norm(x.to(device), None, None, w.to(device), training=True).cpu(),
                               F.batch_norm(x, None, None, w, training=True))


def test_convert_rejects_non_modules():
    with pytest.raises(TypeError):
        fastconv.convert([1, 2])
