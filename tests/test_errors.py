"""Bad input raises the exception type torch raises, with a message naming the problem."""

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FF


def _raises_like_torch(ours, ref, match=None):
    with pytest.raises(Exception) as ref_exc:
        ref()
    with pytest.raises(type(ref_exc.value), match=match):
        ours()


X = torch.randn(2, 4, 6, 6)
W = torch.randn(8, 4, 3, 3)


@pytest.mark.parametrize("case", [
    dict(x=torch.randn(4, 6), w=W),                         # wrong rank
    dict(x=torch.randn(2, 3, 6, 6), w=W),                   # channel mismatch
    dict(x=X, w=torch.randn(8, 2, 3, 3), groups=3),         # groups do not divide
    dict(x=X, w=W, b=torch.randn(5)),                       # bias size
    dict(x=torch.randn(2, 4, 2, 2), w=W),                   # output too small
    dict(x=X, w=W, stride=0),                               # bad stride
    dict(x=X, w=W, padding=-1),                             # negative padding
    dict(x=X, w=W, padding="same", stride=2),               # same + stride
    dict(x=X, w=W.double()),                                # dtype mix
])
def test_conv2d_bad_input(case):
    args = (case["x"], case["w"], case.get("b"), case.get("stride", 1), case.get("padding", 0), 1, case.get("groups", 1))
    _raises_like_torch(lambda: FF.conv2d(*args), lambda: F.conv2d(*args))


def test_conv2d_unknown_and_refusing_algorithms():
    with pytest.raises(ValueError, match="unknown algo 'winograd9'"):
        FF.conv2d(X, W, algo="winograd9")
    with pytest.raises(NotImplementedError, match="gemm1x1.*1x1"):
        FF.conv2d(X, W, algo="gemm1x1")
    with pytest.raises(NotImplementedError, match="gemm1x1.*padding"):
        FF.conv2d(X, torch.randn(8, 4, 1, 1), padding=1, algo="gemm1x1")


def test_half_on_cpu_is_a_clear_type_error():
    with pytest.raises(TypeError, match="float16"):
        FF.conv2d(X.half(), W.half())
    with pytest.raises(TypeError, match="Half|float16"):
        FF.max_pool2d(X.half(), 2)
    with pytest.raises(TypeError, match="Half|float16"):
        FF.batch_norm(X.half(), None, None, training=True)


def test_pool_bad_input():
    _raises_like_torch(lambda: FF.max_pool2d(X, 3, 1, 2), lambda: F.max_pool2d(X, 3, 1, 2), match="pad")
    _raises_like_torch(lambda: FF.max_pool2d(torch.randn(6), 2), lambda: F.max_pool2d(torch.randn(6), 2))
    _raises_like_torch(lambda: FF.avg_pool2d(X, 8), lambda: F.avg_pool2d(X, 8))
    _raises_like_torch(lambda: FF.avg_pool2d(X, 2, divisor_override=0), lambda: F.avg_pool2d(X, 2, divisor_override=0))


def test_batch_norm_bad_input():
    _raises_like_torch(lambda: FF.batch_norm(X, torch.zeros(3), torch.ones(3)),
                       lambda: F.batch_norm(X, torch.zeros(3), torch.ones(3)))
    _raises_like_torch(lambda: FF.batch_norm(torch.randn(1, 4, 1, 1), None, None, training=True),
                       lambda: F.batch_norm(torch.randn(1, 4, 1, 1), None, None, training=True))


def test_convert_rejects_non_modules():
    with pytest.raises(TypeError):
        fastconv.convert([1, 2])
