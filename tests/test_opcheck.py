"""torch.library.opcheck for every fastconv op: schema, fake kernel, autograd registration and
AOT-dispatch consistency."""

import pytest
import torch

import fastconv  # noqa: F401

ops = torch.ops.fastconv


def _t(*shape, grad=False, cl=False, dtype=torch.float64):
    t = torch.randn(*shape, dtype=dtype)
    if cl:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(grad)


def _samples():
    x = _t(2, 4, 7, 6, grad=True)
    xcl = _t(2, 4, 7, 6, grad=True, cl=True)
    w3 = _t(6, 2, 3, 3, grad=True)
    w1 = _t(6, 4, 1, 1, grad=True)
    b = _t(6, grad=True)
    conv = [("direct", x, w3, b, [2, 1], [1, 1], [1, 2], 2), ("im2col", xcl, w3, None, [1, 1], [1, 0], [1, 1], 2),
            ("gemm1x1", x, w1, b, [2, 2], [0, 0], [1, 1], 1)]
    for algo, xi, wi, bi, s, p, d, g in conv:
        yield ops.conv2d, (xi, wi, bi, s, p, d, g, algo)
        y = ops.conv2d(xi.detach(), wi.detach(), None, s, p, d, g, algo)
        gy = torch.randn_like(y).requires_grad_()
        yield ops.conv2d_dgrad, (gy, wi, list(xi.shape), s, p, d, g, algo)
        yield ops.conv2d_wgrad, (gy, xi, list(wi.shape), s, p, d, g, algo)
    for xi in (x, xcl):
        y, idx = ops.max_pool2d(xi.detach(), [3, 3], [2, 2], [1, 1], [1, 1], True)
        yield ops.max_pool2d, (xi, [3, 3], [2, 2], [1, 1], [1, 1], True)
        yield ops.max_pool2d_backward, (torch.randn_like(y).requires_grad_(), xi, idx, [3, 3], [2, 2], [1, 1],
                                        [1, 1], True)
        yield ops.avg_pool2d, (xi, [3, 2], [2, 1], [1, 0], True, False, None)
        ya = ops.avg_pool2d(xi.detach(), [3, 2], [2, 1], [1, 0], True, False, None)
        yield ops.avg_pool2d_backward, (torch.randn_like(ya).requires_grad_(), xi, [3, 2], [2, 1], [1, 0], True,
                                        False, None)
        yield ops.adaptive_avg_pool2d, (xi, [3, 4])
        yield ops.adaptive_avg_pool2d_backward, (_t(2, 4, 3, 4, grad=True), xi)
        wb, bb = _t(4, grad=True), _t(4, grad=True)
        for relu in (False, True):
            yield ops.batch_norm_train, (xi, wb, bb, 1e-5, relu)
            yield ops.batch_norm_eval, (xi, wb, bb, _t(4), _t(4).abs() + 0.5, 1e-5, relu)
        y, mean, invstd, var = ops.batch_norm_train(xi.detach(), wb.detach(), bb.detach(), 1e-5, True)
        yield ops.batch_norm_backward, (torch.randn_like(y), xi.detach(), y, wb.detach(), mean, invstd, True, True,
                                        [True, True, True])
        yield ops.batch_norm_backward, (torch.randn_like(y), xi.detach(), None, None, mean, invstd, False, False,
                                        [True, False, True])
        yield ops.batch_norm_update_running_stats_, (_t(4), _t(4).abs(), mean, var, 84, 0.1)


SAMPLES = list(_samples())


IDS = [f"{op._qualified_op_name.split('::')[-1]}-{i}" for i, (op, _) in enumerate(SAMPLES)]


@pytest.mark.parametrize("op,args", SAMPLES, ids=IDS)
def test_opcheck(op, args):
    torch.library.opcheck(op, args)
