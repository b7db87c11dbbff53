"""Autograd formulas for torch.ops.fastconv.*, registered with torch.library.register_autograd.

Each backward computes only the gradients that ctx.needs_input_grad asks for. The backward ops of
convolution and pooling are themselves registered, so double backward (gradient penalties,
gradgradcheck) works: conv dgrad and wgrad are linear in each argument and map onto each other.
"""

from __future__ import annotations

import torch

from fastconv.algorithms import backward_algo

ops = torch.ops.fastconv


def _register(name, backward, setup_context):
    torch.library.register_autograd("fastconv::" + name, backward, setup_context=setup_context)


# ---- conv2d ------------------------------------------------------------------------------------
def _conv_setup(ctx, inputs, output):
    x, w, bias, stride, padding, dilation, groups, algo = inputs
    algo = backward_algo(algo, x.device.type)
    ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, w if ctx.needs_input_grad[0] else None)
    ctx.params = (stride, padding, dilation, groups, algo)
    ctx.x_shape, ctx.w_shape = x.shape, w.shape


def _conv_backward(ctx, gy):
    x, w = ctx.saved_tensors
    stride, padding, dilation, groups, algo = ctx.params
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        gx = ops.conv2d_dgrad(gy, w, list(ctx.x_shape), stride, padding, dilation, groups, algo)
    if ctx.needs_input_grad[1]:
        gw = ops.conv2d_wgrad(gy, x, list(ctx.w_shape), stride, padding, dilation, groups, algo)
    if ctx.needs_input_grad[2]:
        gb = gy.sum((0, 2, 3))
    return gx, gw, gb, None, None, None, None, None


def _dgrad_setup(ctx, inputs, output):
    gy, w, input_size, stride, padding, dilation, groups, algo = inputs
    ctx.save_for_backward(gy if ctx.needs_input_grad[1] else None, w if ctx.needs_input_grad[0] else None)
    ctx.params = (stride, padding, dilation, groups, algo)


def _dgrad_backward(ctx, g):
    # dgrad(gy, w) is linear in gy and in w: its adjoints are fprop(g, w) and wgrad(gy, g).
    gy, w = ctx.saved_tensors
    stride, padding, dilation, groups, algo = ctx.params
    d_gy = d_w = None
    if ctx.needs_input_grad[0]:
        d_gy = ops.conv2d(g, w, None, stride, padding, dilation, groups, algo)
    if ctx.needs_input_grad[1]:
        d_w = ops.conv2d_wgrad(gy, g, list(w.shape), stride, padding, dilation, groups, algo)
    return d_gy, d_w, None, None, None, None, None, None


def _wgrad_setup(ctx, inputs, output):
    gy, x, weight_size, stride, padding, dilation, groups, algo = inputs
    ctx.save_for_backward(gy if ctx.needs_input_grad[1] else None, x if ctx.needs_input_grad[0] else None)
    ctx.params = (stride, padding, dilation, groups, algo)
    ctx.x_shape = x.shape


def _wgrad_backward(ctx, g):
    # wgrad(gy, x) is linear in gy and in x: its adjoints are fprop(x, g) and dgrad(gy, g).
    gy, x = ctx.saved_tensors
    stride, padding, dilation, groups, algo = ctx.params
    d_gy = d_x = None
    if ctx.needs_input_grad[0]:
        d_gy = ops.conv2d(x, g, None, stride, padding, dilation, groups, algo)
    if ctx.needs_input_grad[1]:
        d_x = ops.conv2d_dgrad(gy, g, list(ctx.x_shape), stride, padding, dilation, groups, algo)
    return d_gy, d_x, None, None, None, None, None, None


# ---- pooling -----------------------------------------------------------------------------------
def _max_pool_setup(ctx, inputs, output):
    x, kernel_size, stride, padding, dilation, ceil_mode = inputs
    _, idx = output
    ctx.mark_non_differentiable(idx)
    ctx.save_for_backward(x, idx)
    ctx.params = (kernel_size, stride, padding, dilation, ceil_mode)


def _max_pool_backward(ctx, gy, _gidx):
    x, idx = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None
    gx = ops.max_pool2d_backward(gy, x, idx, *ctx.params)
    return gx, None, None, None, None, None


def _max_pool_bwd_setup(ctx, inputs, output):
    gy, x, idx, *params = inputs
    ctx.save_for_backward(idx)


def _max_pool_bwd_backward(ctx, g):
    # max_pool2d_backward is linear in grad_output: its adjoint gathers g at the argmax positions.
    (idx,) = ctx.saved_tensors
    d_gy = None
    if ctx.needs_input_grad[0]:
        n, c = idx.shape[:2]
        d_gy = g.reshape(n, c, -1).gather(2, idx.reshape(n, c, -1)).reshape(idx.shape)
    return d_gy, None, None, None, None, None, None, None


def _avg_pool_setup(ctx, inputs, output):
    x, *params = inputs
    ctx.save_for_backward(x)
    ctx.params = tuple(params)


def _avg_pool_backward(ctx, gy):
    (x,) = ctx.saved_tensors
    gx = ops.avg_pool2d_backward(gy, x, *ctx.params) if ctx.needs_input_grad[0] else None
    return gx, None, None, None, None, None, None


def _avg_pool_bwd_setup(ctx, inputs, output):
    gy, x, *params = inputs
    ctx.params = tuple(params)


def _avg_pool_bwd_backward(ctx, g):
    # avg_pool2d_backward is linear in grad_output with avg_pool2d as its adjoint.
    d_gy = ops.avg_pool2d(g, *ctx.params) if ctx.needs_input_grad[0] else None
    return d_gy, None, None, None, None, None, None, None


def _adaptive_setup(ctx, inputs, output):
    x, output_size = inputs
    ctx.save_for_backward(x)


def _adaptive_backward(ctx, gy):
    (x,) = ctx.saved_tensors
    gx = ops.adaptive_avg_pool2d_backward(gy, x) if ctx.needs_input_grad[0] else None
    return gx, None


def _adaptive_bwd_setup(ctx, inputs, output):
    gy, x = inputs
    ctx.out_size = list(gy.shape[-2:])


def _adaptive_bwd_backward(ctx, g):
    d_gy = ops.adaptive_avg_pool2d(g, ctx.out_size) if ctx.needs_input_grad[0] else None
    return d_gy, None


# ---- batch norm --------------------------------------------------------------------------------
def _bn_train_setup(ctx, inputs, output):
    x, w, b, eps, relu = inputs
    y, mean, invstd, var = output
    ctx.mark_non_differentiable(mean, invstd, var)
    ctx.save_for_backward(x, y if relu else None, w, mean, invstd)
    ctx.relu, ctx.eps = relu, eps
    ctx.param_shapes = _shapes(w, b)


def _shapes(w, b):
    # weight / bias may be any shape with C elements, as in torch: gradients come back in it.
    return (None if w is None else w.shape, None if b is None else b.shape)


def _bn_train_backward(ctx, gy, _gm, _gi, _gv):
    x, y, w, mean, invstd = ctx.saved_tensors
    return _bn_backward(ctx, gy, x, y, w, mean, invstd, True) + (None, None)


def _bn_eval_setup(ctx, inputs, output):
    x, w, b, running_mean, running_var, eps, relu = inputs
    invstd = torch.rsqrt(running_var.detach() + eps)
    ctx.save_for_backward(x, output if relu else None, w, running_mean, invstd)
    ctx.relu, ctx.eps = relu, eps
    ctx.param_shapes = _shapes(w, b)


def _bn_eval_backward(ctx, gy):
    x, y, w, mean, invstd = ctx.saved_tensors
    return _bn_backward(ctx, gy, x, y, w, mean, invstd, False) + (None, None, None, None)


def _bn_backward(ctx, gy, x, y, w, mean, invstd, train):
    gx, gw, gb = _bn_backward_flat(ctx, gy, x, y, w, mean, invstd, train)
    w_shape, b_shape = ctx.param_shapes
    return (gx, gw.reshape(w_shape) if gw is not None else None, gb.reshape(b_shape) if gb is not None else None)


def _bn_backward_flat(ctx, gy, x, y, w, mean, invstd, train):
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    if not (need_x or need_w or need_b):
        return None, None, None
    if w is not None and w.dim() != 1:
        w = w.reshape(-1)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (gy, x, w)):
        # create_graph=True (gradient penalties, gradgradcheck): the kernel is not differentiable,
        # so the same gradients are computed with differentiable torch ops instead.
        gx, gw, gb = _bn_backward_composite(gy, x, y, w, mean, invstd, train, ctx.relu, ctx.eps)
        return (gx if need_x else None, gw if need_w and w is not None else None, gb if need_b else None)
    mask = [bool(need_x), bool(need_w and w is not None), bool(need_b)]
    # dbias needs no weight; when weight is None the op treats it as ones.
    gx, gw, gb = ops.batch_norm_backward(gy, x, y, w, mean, invstd, train, ctx.relu, mask)
    return (gx if need_x else None, gw if mask[1] else None, gb if need_b else None)


def _bn_backward_composite(gy, x, y, w, mean, invstd, train, relu, eps):
    # x is [N, C, H, W]. In training the statistics are recomputed from x so that their dependence
    # on x is differentiated too; in evaluation they are constants (the running statistics).
    dims, shape = (0, 2, 3), (1, -1, 1, 1)
    if relu:
        gy = torch.where(y > 0, gy, torch.zeros_like(gy))
    if train:
        mean = x.mean(dims, keepdim=True)
        invstd = torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
    else:
        mean, invstd = mean.reshape(shape), invstd.reshape(shape)
    xhat = (x - mean) * invstd
    gb = gy.sum(dims)
    gw = (gy * xhat).sum(dims)
    scale = invstd if w is None else w.reshape(shape) * invstd
    if train:
        m = x.numel() // x.shape[1]
        gx = scale * (gy - gb.reshape(shape) / m - xhat * gw.reshape(shape) / m)
    else:
        gx = scale * gy
    return gx.to(x.dtype), gw, gb


def register_all() -> None:
    _register("conv2d", _conv_backward, _conv_setup)
    _register("conv2d_dgrad", _dgrad_backward, _dgrad_setup)
    _register("conv2d_wgrad", _wgrad_backward, _wgrad_setup)
    _register("max_pool2d", _max_pool_backward, _max_pool_setup)
    _register("max_pool2d_backward", _max_pool_bwd_backward, _max_pool_bwd_setup)
    _register("avg_pool2d", _avg_pool_backward, _avg_pool_setup)
    _register("avg_pool2d_backward", _avg_pool_bwd_backward, _avg_pool_bwd_setup)
    _register("adaptive_avg_pool2d", _adaptive_backward, _adaptive_setup)
    _register("adaptive_avg_pool2d_backward", _adaptive_bwd_backward, _adaptive_bwd_setup)
    _register("batch_norm_train", _bn_train_backward, _bn_train_setup)
    _register("batch_norm_eval", _bn_eval_backward, _bn_eval_setup)


register_all()
