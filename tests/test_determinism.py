"""Determinism on the CPU. Under torch.use_deterministic_algorithms(True) every fastconv op runs
(none needs a nondeterministic fallback) and repeated runs are bitwise identical. direct and im2col
convolution, pooling and batch norm split work at fixed boundaries, so their results also do not
depend on torch.set_num_threads; gemm1x1 hands whole GEMMs to torch's BLAS, whose summation order
may depend on the thread count, so for it only run-to-run determinism is claimed."""

import pytest
import torch

import fastconv.functional as FF
from integ_models import pair

ops = torch.ops.fastconv

THREAD_INDEPENDENT = ["direct", "im2col"]


@pytest.fixture(autouse=True)
def _deterministic():
    before, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)
    torch.set_num_threads(threads)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _conv_results(algo, channels_last):
    k, pad, stride = (1, 0, 2) if algo == "gemm1x1" else (3, 1, 1)
    x = torch.randn(6, 24, 15, 14, generator=_gen(1), dtype=torch.float32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 12, k, k, generator=_gen(2))  # groups=2
    y = ops.conv2d(x, w, None, [stride] * 2, [pad] * 2, [1, 1], 2, algo)
    gy = torch.randn(y.shape, generator=_gen(3)).contiguous(memory_format=torch.channels_last if channels_last
                                                             else torch.contiguous_format)
    dx = ops.conv2d_dgrad(gy, w, list(x.shape), [stride] * 2, [pad] * 2, [1, 1], 2, algo)
    dw = ops.conv2d_wgrad(gy, x, list(w.shape), [stride] * 2, [pad] * 2, [1, 1], 2, algo)
    return [y, dx, dw]


def _pool_bn_results():
    x = torch.randn(6, 10, 13, 12, generator=_gen(4), requires_grad=True)
    w, b = torch.randn(10, generator=_gen(5), requires_grad=True), torch.randn(10, generator=_gen(6), requires_grad=True)
    rm, rv = torch.zeros(10), torch.ones(10)
    outs = [
        FF.max_pool2d(x, 3, 2, 1, ceil_mode=True),
        FF.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
        FF.adaptive_avg_pool2d(x, (5, 4)),
        FF.batch_norm(x, rm, rv, w, b, True),
        FF.batch_norm_relu(x, rm, rv, w, b, False),
    ]
    results = [rm, rv]
    for i, y in enumerate(outs):
        g = torch.randn(y.shape, generator=_gen(10 + i))
        results += [y.detach()] + list(torch.autograd.grad(y, (x, w, b), g, allow_unused=True))
    return [r for r in results if r is not None]


def _assert_bitwise(a, b):
    assert len(a) == len(b)
    for i, (s, t) in enumerate(zip(a, b)):
        assert torch.equal(s, t), f"result {i} differs"


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("algo", ["direct", "im2col", "gemm1x1"])
def test_conv_repeatable(algo, channels_last):
    _assert_bitwise(_conv_results(algo, channels_last), _conv_results(algo, channels_last))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("algo", THREAD_INDEPENDENT)
def test_conv_independent_of_thread_count(algo, channels_last):
    results = []
    for n in (1, 2, 4):
        torch.set_num_threads(n)
        results.append(_conv_results(algo, channels_last))
    _assert_bitwise(results[0], results[1])
    _assert_bitwise(results[0], results[2])


def test_pool_and_batch_norm_repeatable_and_independent_of_thread_count():
    results = []
    for n in (2, 2, 1, 4):
        torch.set_num_threads(n)
        results.append(_pool_bn_results())
    for r in results[1:]:
        _assert_bitwise(results[0], r)


def test_training_run_repeatable():
    def run():
        torch.manual_seed(0)
        _, model = pair("inception_like")
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for step in range(2):
            x = torch.randn(4, 3, 16, 16, generator=_gen(step))
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        return list(model.state_dict().values())

    _assert_bitwise(run(), run())
