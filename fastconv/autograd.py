"""Autograd formulas for torch.ops.fastconv.*: backward (registered with torch.library.register_autograd),
forward-mode (jvp) and vmap rules, so torch.func transforms compose with every op.

Each backward computes only the gradients that ctx.needs_input_grad asks for. The backward ops of
convolution and pooling are themselves registered, so double backward (gradient penalties,
gradgradcheck) works: conv dgrad and wgrad are linear in each argument and map onto each other.

torch.func (grad, vjp, jacrev, jvp, vmap of any of them) and forward-mode AD: the Autograd kernel
that torch.library.register_autograd installs serves torch.autograd, torch.compile and export, but
torch.func refuses it and forward-mode AD passes through it with a zero tangent (torch's limitation
for custom ops, not fastconv's). So each op also has an autograd.Function twin with the same
setup_context and backward plus a jvp, and `call(name, *args)` -- what fastconv.functional and
fastconv.fused call -- goes through the twin while a torch.func transform or a forward-AD dual level
is active, else straight to the op (not always through the twin: torch.compile graph-breaks on an
autograd.Function with a custom jvp, and compile/export graphs should hold the ops). vmap rules are
registered on the ops themselves (torch.library.register_vmap): they fold the vmapped dimension into
N where the op is independent per image (pooling, convolution with a shared weight, eval batch
norm), into C for training batch norm, and into groups for a vmapped weight (per-sample gradients:
wgrad of B examples is one B-group wgrad); the twins derive their vmap rules from them
(generate_vmap_rule).
"""

from __future__ import annotations

import dataclasses

import torch

from fastconv import algorithms
from fastconv.algorithms import backward_algo

ops = torch.ops.fastconv


def _register(name, backward, setup_context):
    torch.library.register_autograd("fastconv::" + name, backward, setup_context=setup_context)


# ---- conv2d ------------------------------------------------------------------------------------
def _conv_setup(ctx, inputs, output):
    x, w, bias, stride, padding, dilation, groups, algo = inputs
    ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, w if ctx.needs_input_grad[0] else None)
    ctx.params = (stride, padding, dilation, groups)
    # Each direction on the forward's algorithm where its kernels implement it, else its fallback.
    px, pw = plain(x), plain(w)
    ctx.algos = (algorithms.direction_algo(algo, 1, px, pw, stride, padding, dilation, groups),
                 algorithms.direction_algo(algo, 2, px, pw, stride, padding, dilation, groups))
    ctx.x_shape, ctx.w_shape = x.shape, w.shape


def _conv_backward(ctx, gy):
    x, w = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.params
    dgrad_algo, wgrad_algo = ctx.algos
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        gx = call("conv2d_dgrad", gy, w, list(ctx.x_shape), stride, padding, dilation, groups, dgrad_algo)
    if ctx.needs_input_grad[1]:
        gw = call("conv2d_wgrad", gy, x, list(ctx.w_shape), stride, padding, dilation, groups, wgrad_algo)
    if ctx.needs_input_grad[2]:
        gb = gy.sum((0, 2, 3))
    return gx, gw, gb, None, None, None, None, None


def _dgrad_setup(ctx, inputs, output):
    gy, w, input_size, stride, padding, dilation, groups, algo = inputs
    ctx.save_for_backward(gy if ctx.needs_input_grad[1] else None, w if ctx.needs_input_grad[0] else None)
    ctx.params = (stride, padding, dilation, groups, backward_algo(algo, gy.device.type))


def _dgrad_backward(ctx, g):
    # dgrad(gy, w) is linear in gy and in w: its adjoints are fprop(g, w) and wgrad(gy, g).
    gy, w = ctx.saved_tensors
    stride, padding, dilation, groups, algo = ctx.params
    d_gy = d_w = None
    if ctx.needs_input_grad[0]:
        d_gy = call("conv2d", g, w, None, stride, padding, dilation, groups, algo)
    if ctx.needs_input_grad[1]:
        d_w = call("conv2d_wgrad", gy, g, list(w.shape), stride, padding, dilation, groups, algo)
    return d_gy, d_w, None, None, None, None, None, None


def _wgrad_setup(ctx, inputs, output):
    gy, x, weight_size, stride, padding, dilation, groups, algo = inputs
    ctx.save_for_backward(gy if ctx.needs_input_grad[1] else None, x if ctx.needs_input_grad[0] else None)
    ctx.params = (stride, padding, dilation, groups, backward_algo(algo, gy.device.type))
    ctx.x_shape = x.shape


def _wgrad_backward(ctx, g):
    # wgrad(gy, x) is linear in gy and in x: its adjoints are fprop(x, g) and dgrad(gy, g).
    gy, x = ctx.saved_tensors
    stride, padding, dilation, groups, algo = ctx.params
    d_gy = d_x = None
    if ctx.needs_input_grad[0]:
        d_gy = call("conv2d", x, g, None, stride, padding, dilation, groups, algo)
    if ctx.needs_input_grad[1]:
        d_x = call("conv2d_dgrad", gy, g, list(ctx.x_shape), stride, padding, dilation, groups, algo)
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
    gx = call("max_pool2d_backward", gy, x, idx, *ctx.params)
    return gx, None, None, None, None, None


def _max_pool_bwd_setup(ctx, inputs, output):
    gy, x, idx, *params = inputs
    ctx.save_for_backward(idx)


def _max_pool_bwd_backward(ctx, g):
    # max_pool2d_backward is linear in grad_output: its adjoint gathers g at the argmax positions.
    (idx,) = ctx.saved_tensors
    d_gy = None
    if ctx.needs_input_grad[0]:
        d_gy = _gather_at(g, idx)
    return d_gy, None, None, None, None, None, None, None


def _avg_pool_setup(ctx, inputs, output):
    x, *params = inputs
    ctx.save_for_backward(x)
    ctx.params = tuple(params)


def _avg_pool_backward(ctx, gy):
    (x,) = ctx.saved_tensors
    gx = call("avg_pool2d_backward", gy, x, *ctx.params) if ctx.needs_input_grad[0] else None
    return gx, None, None, None, None, None, None


def _avg_pool_bwd_setup(ctx, inputs, output):
    gy, x, *params = inputs
    ctx.params = tuple(params)


def _avg_pool_bwd_backward(ctx, g):
    # avg_pool2d_backward is linear in grad_output with avg_pool2d as its adjoint.
    d_gy = call("avg_pool2d", g, *ctx.params) if ctx.needs_input_grad[0] else None
    return d_gy, None, None, None, None, None, None, None


def _adaptive_setup(ctx, inputs, output):
    x, output_size = inputs
    ctx.save_for_backward(x)


def _adaptive_backward(ctx, gy):
    (x,) = ctx.saved_tensors
    gx = call("adaptive_avg_pool2d_backward", gy, x) if ctx.needs_input_grad[0] else None
    return gx, None


def _adaptive_bwd_setup(ctx, inputs, output):
    gy, x = inputs
    ctx.out_size = list(gy.shape[-2:])


def _adaptive_bwd_backward(ctx, g):
    d_gy = call("adaptive_avg_pool2d", g, ctx.out_size) if ctx.needs_input_grad[0] else None
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
    if _transformed() or (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (gy, x, w))):
        # create_graph=True (gradient penalties, gradgradcheck) or under a torch.func transform
        # (which differentiates or vmaps this backward too): the kernel is not differentiable, so the
        # same gradients are computed with differentiable torch ops instead.
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


# ---- torch.func and forward-mode AD: the autograd.Function twins ---------------------------------------
def _transformed() -> bool:
    """True while a torch.func transform or a forward-mode AD dual level is active. Never while
    torch.compile traces: it sees the ops themselves, with their registered autograd."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0


def call(name: str, *args):
    """torch.ops.fastconv.<name>(*args), through the op's autograd.Function twin while torch.func or
    forward-mode AD needs one (see the module docstring)."""
    if _transformed():
        return _TWINS[name].apply(*args)
    return getattr(ops, name)(*args)


def plain(t):
    """t without torch.func's wrappers: grad levels peeled off and example 0 of each vmap level
    taken, so a plain tensor with t's logical shape, dtype, device and memory format (or t itself,
    or None). For choosing an algorithm: functorch's wrappers cannot say whether they are
    channels_last (NYI inside vmap) and the autotuner must time kernels on real tensors."""
    if t is None or torch.compiler.is_compiling():
        return t
    bdims = []
    while torch._C._functorch.is_functorch_wrapped_tensor(t):
        bdims.append(torch._C._functorch.maybe_get_bdim(t))  # -1: a grad level, not batched
        t = torch._C._functorch.get_unwrapped(t)
    for bdim in reversed(bdims):  # the innermost wrapper's batch dim was added last
        if bdim >= 0:
            t = t.select(bdim, 0)
    return t


_TWINS: dict = {}  # op name -> its autograd.Function twin


def register_twin(name: str, setup_context, backward, jvp_setup, jvp) -> None:
    """Defines torch.ops.fastconv.<name>'s autograd.Function twin: forward runs the op; setup_context
    and backward are the ones registered with the op; jvp_setup(ctx, inputs, output) saves what the
    forward-mode formula jvp(ctx, *input_tangents) reads. vmap comes from the op's vmap rule."""
    op = getattr(ops, name).default

    def setup(ctx, inputs, output):
        setup_context(ctx, inputs, output)
        jvp_setup(ctx, inputs, output)

    _TWINS[name] = type(f"fastconv_{name}", (torch.autograd.Function,), {
        "generate_vmap_rule": True,
        "forward": staticmethod(lambda *args: op(*args)),
        "setup_context": staticmethod(setup),
        "backward": staticmethod(backward),
        "jvp": staticmethod(jvp),
    })


def _add(a, b):
    return b if a is None else a if b is None else a + b


# Every formula below is linear in the tangents, and calls the ops through call() so that it can be
# differentiated or vmapped again (jacfwd of jacrev, vmap of jvp, ...).
def _conv_jvp_setup(ctx, inputs, output):
    x, w, b, *cfg = inputs
    ctx.save_for_forward(x, w, output)
    ctx.fwd = cfg  # stride, padding, dilation, groups and the forward algorithm


def _conv_jvp(ctx, dx, dw, db, *_):
    # conv(x, w) + b is bilinear in (x, w): d = conv(dx, w) + conv(x, dw) + db.
    x, w, y = ctx.saved_tensors
    t = None
    if dx is not None:
        t = call("conv2d", dx, w, None, *ctx.fwd)
    if dw is not None:
        t = _add(t, call("conv2d", x, dw, None, *ctx.fwd))
    if db is not None:
        t = (torch.zeros_like(y) if t is None else t) + db.reshape(1, -1, 1, 1)
    return t


def _conv_bwd_jvp_setup(ctx, inputs, output):
    a, b, size, *cfg = inputs
    ctx.save_for_forward(a, b)
    ctx.fwd = (size, *cfg)


def _conv_bwd_jvp(name):
    def jvp(ctx, da, db, *_):
        # dgrad(gy, w) and wgrad(gy, x) are bilinear too.
        a, b = ctx.saved_tensors
        t = None if da is None else call(name, da, b, *ctx.fwd)
        return _add(t, None if db is None else call(name, a, db, *ctx.fwd))

    return jvp


def _gather_at(t, idx):
    """t[n, c] read at the flat positions idx[n, c, p, q] (max pooling's argmax indices h·W + w)."""
    n, c = idx.shape[:2]
    return t.reshape(n, c, -1).gather(2, idx.reshape(n, c, -1)).reshape(idx.shape)


def _max_pool_jvp_setup(ctx, inputs, output):
    ctx.save_for_forward(output[1])


def _max_pool_jvp(ctx, dx, *_):
    # Each output is the input at its argmax: its tangent is the input tangent there.
    (idx,) = ctx.saved_tensors
    return _gather_at(dx, idx), None


def _max_pool_bwd_jvp_setup(ctx, inputs, output):
    gy, x, idx, *params = inputs
    ctx.save_for_forward(x, idx)
    ctx.fwd = params


def _max_pool_bwd_jvp(ctx, d_gy, *_):
    x, idx = ctx.saved_tensors  # linear in grad_output; piecewise constant in x
    return None if d_gy is None else call("max_pool2d_backward", d_gy, x, idx, *ctx.fwd)


def _no_jvp_setup(ctx, inputs, output):
    pass


def _avg_pool_jvp(ctx, dx, *_):
    return call("avg_pool2d", dx, *ctx.params)  # linear


def _save_x_for_jvp(ctx, inputs, output):
    ctx.save_for_forward(inputs[1])


def _avg_pool_bwd_jvp(ctx, d_gy, *_):
    (x,) = ctx.saved_tensors
    return None if d_gy is None else call("avg_pool2d_backward", d_gy, x, *ctx.params)


def _adaptive_jvp_setup(ctx, inputs, output):
    ctx.out_size = inputs[1]


def _adaptive_jvp(ctx, dx, *_):
    return call("adaptive_avg_pool2d", dx, ctx.out_size)


def _adaptive_bwd_jvp(ctx, d_gy, *_):
    (x,) = ctx.saved_tensors
    return None if d_gy is None else call("adaptive_avg_pool2d_backward", d_gy, x)


def _bn_train_jvp_setup(ctx, inputs, output):
    y, mean, invstd, _var = output
    ctx.save_for_forward(inputs[0], inputs[1], y, mean, invstd)


def _bn_train_jvp(ctx, dx, dw, db, *_):
    return (_bn_tangent(ctx, dx, dw, db, True), None, None, None)


def _bn_eval_jvp_setup(ctx, inputs, output):
    x, w, b, running_mean, running_var, eps, relu = inputs
    ctx.save_for_forward(x, w, output, running_mean, torch.rsqrt(running_var + eps))


def _bn_eval_jvp(ctx, dx, dw, db, *_):
    # The running statistics are constants, as in torch (and in the backward above).
    return _bn_tangent(ctx, dx, dw, db, False)


def _bn_tangent(ctx, dx, dw, db, train):
    """Tangent of y = relu?(x̂·w + b), x̂ = (x − μ)·σ⁻¹, over x [N, C, H, W]. In training μ and
    σ² = mean((x − μ)²) depend on x: dμ = mean(dx), dσ⁻¹ = −σ⁻³·mean((x − μ)·dx), so
    dx̂ = σ⁻¹·(dx − mean(dx) − x̂·mean(x̂·dx)); in evaluation dx̂ = σ⁻¹·dx."""
    x, w, y, mean, invstd = ctx.saved_tensors
    dims, shape = (0, 2, 3), (1, -1, 1, 1)
    mean, invstd = mean.reshape(shape), invstd.reshape(shape)
    xhat = (x - mean) * invstd
    t = torch.zeros_like(xhat)
    if dx is not None:
        if train:
            dx = dx - dx.mean(dims, keepdim=True) - xhat * (xhat * dx).mean(dims, keepdim=True)
        t = dx * (invstd if w is None else w.reshape(shape) * invstd)
    if dw is not None:
        t = t + xhat * dw.reshape(shape)
    if db is not None:
        t = t + db.reshape(shape)
    if ctx.relu:
        t = torch.where(y > 0, t, torch.zeros_like(t))  # as torch's threshold_backward: 0 where y <= 0
    return t.to(x.dtype)


# ---- vmap rules (torch.library.register_vmap), on the ops ----------------------------------------------
# A rule gets the tensors with their vmapped dimension where in_dims says (None: not vmapped) and
# returns the outputs with theirs. All of them turn the B problems into one problem of the same op.
def _front(t, bdim, batch):
    """t with its vmapped dimension first, an unvmapped t expanded to the batch (None stays None)."""
    if t is None:
        return None
    return t.movedim(bdim, 0) if bdim is not None else t.expand(batch, *t.shape)


def _into_n(t, bdim, batch):
    """[.., B, ..] (or unbatched) -> [B·N, ...]: the vmapped dimension folded into the first."""
    t = _front(t, bdim, batch)
    return None if t is None else t.flatten(0, 1)


def _into_c(t, bdim, batch):
    """[.., B, ..] (or unbatched) [N, C, H, W] -> [N, B·C, H, W]: folded into the channels."""
    t = _front(t, bdim, batch)
    return None if t is None else t.movedim(0, 1).flatten(1, 2)


def _per_channel(t, bdim, batch):
    """A per-channel parameter or statistic (any shape with C elements) -> [B·C]."""
    t = _front(t, bdim, batch)
    return None if t is None else t.reshape(-1)


def _each(batch, fn, *args_and_dims):
    """Fallback: fn on each example, stacked along dim 0."""
    args, dims = args_and_dims[::2], args_and_dims[1::2]
    pick = lambda t, d, i: t if t is None or d is None else t.select(d, i)  # noqa: E731
    outs = [fn(*(pick(t, d, i) for t, d in zip(args, dims))) for i in range(batch)]
    return torch.stack(outs), 0


def _groups_ok(algo: str, t, sizes, stride, padding, dilation, groups: int, direction: int) -> bool:
    """Whether `algo` implements the grouped problem that a vmapped weight turns B problems into
    (sizes N, C, H, W, K, R, S; t the activation whose dtype, device and layout the kernel sees;
    direction 0 fprop, 1 dgrad, 2 wgrad). When not, the rule runs the B problems one by one."""
    t = plain(t)
    problem = algorithms.ConvProblem.from_tensors(t, t, stride, padding, dilation, groups)
    problem = dataclasses.replace(problem, **dict(zip("NCHWKRS", sizes)))
    if algorithms.why_not(algo, problem) is not None:
        return False
    answer = algorithms.kernel_query(algo, problem, direction) if problem.device_type == "cuda" else None
    return answer is None or bool(answer[0])


def _conv_vmap(info, in_dims, x, w, b, stride, padding, dilation, groups, algo):
    xd, wd, bd = in_dims[:3]
    batch, cfg = info.batch_size, (stride, padding, dilation)
    if wd is None:
        # A shared weight: the B batches are one batch of B·N images; a vmapped bias is added after.
        xn = x if xd is None else _into_n(x, xd, batch)
        y = ops.conv2d(xn, w, b if bd is None else None, *cfg, groups, algo)
        y = y.unsqueeze(0) if xd is None else y.unflatten(0, (batch, -1))
        return (y if bd is None else y + _front(b, bd, batch)[:, None, :, None, None]), 0
    # A vmapped weight: B convolutions side by side are one with B·groups groups.
    xc, wn = _into_c(x, xd, batch), _into_n(w, wd, batch)
    if not _groups_ok(algo, xc, (*xc.shape, *wn.shape[:1], *wn.shape[2:]), *cfg, batch * groups, 0):
        return _each(batch, lambda *a: ops.conv2d(*a, *cfg, groups, algo), x, xd, w, wd, b, bd)
    y = ops.conv2d(xc, wn, _per_channel(b, bd, batch), *cfg, batch * groups, algo)
    return y.unflatten(1, (batch, -1)), 1


def _dgrad_vmap(info, in_dims, gy, w, input_size, stride, padding, dilation, groups, algo):
    gd, wd = in_dims[:2]
    batch, (n, c, h, wd_) = info.batch_size, input_size
    cfg = (stride, padding, dilation)
    if wd is None:
        gx = ops.conv2d_dgrad(_into_n(gy, gd, batch), w, [batch * n, c, h, wd_], *cfg, groups, algo)
        return gx.unflatten(0, (batch, -1)), 0
    gc, wn = _into_c(gy, gd, batch), _into_n(w, wd, batch)
    if not _groups_ok(algo, gc, (n, batch * c, h, wd_, wn.shape[0], *wn.shape[2:]), *cfg, batch * groups, 1):
        return _each(batch, lambda g, w_: ops.conv2d_dgrad(g, w_, input_size, *cfg, groups, algo), gy, gd, w, wd)
    gx = ops.conv2d_dgrad(gc, wn, [n, batch * c, h, wd_], *cfg, batch * groups, algo)
    return gx.unflatten(1, (batch, -1)), 1


def _wgrad_vmap(info, in_dims, gy, x, weight_size, stride, padding, dilation, groups, algo):
    # Per-example weight gradients (vmap over grad): B wgrads are one wgrad with B·groups groups.
    gd, xd = in_dims[:2]
    batch, (k, cg, r, s) = info.batch_size, weight_size
    cfg = (stride, padding, dilation)
    gc, xc = _into_c(gy, gd, batch), _into_c(x, xd, batch)
    if not _groups_ok(algo, xc, (*xc.shape, batch * k, r, s), *cfg, batch * groups, 2):
        return _each(batch, lambda g, x_: ops.conv2d_wgrad(g, x_, weight_size, *cfg, groups, algo), gy, gd, x, xd)
    gw = ops.conv2d_wgrad(gc, xc, [batch * k, cg, r, s], *cfg, batch * groups, algo)
    return gw.unflatten(0, (batch, -1)), 0


def _pool_vmap(name):
    # Pooling is per image and channel: the B batches are one batch of B·N images. Tensor arguments
    # come first (the input; for the backward ops grad_output, the input and the indices).
    op = getattr(ops, name).default

    def rule(info, in_dims, *args):
        batch = info.batch_size
        n_tensors = sum(isinstance(a, torch.Tensor) for a in args)
        folded = [_into_n(a, d, batch) for a, d in zip(args[:n_tensors], in_dims)]
        out = op(*folded, *args[n_tensors:])
        if isinstance(out, tuple):
            return tuple(o.unflatten(0, (batch, -1)) for o in out), (0,) * len(out)
        return out.unflatten(0, (batch, -1)), 0

    return rule


def _bn_train_vmap(info, in_dims, x, w, b, eps, relu):
    # Statistics are per example and channel: the B batches are one batch with B·C channels.
    batch = info.batch_size
    y, *stats = ops.batch_norm_train(_into_c(x, in_dims[0], batch), _per_channel(w, in_dims[1], batch),
                                     _per_channel(b, in_dims[2], batch), eps, relu)
    return (y.unflatten(1, (batch, -1)), *(t.unflatten(0, (batch, -1)) for t in stats)), (1, 0, 0, 0)


def _bn_eval_vmap(info, in_dims, x, w, b, running_mean, running_var, eps, relu):
    batch, xd = info.batch_size, in_dims[0]
    if all(d is None for d in in_dims[1:5]):  # shared parameters and statistics: B·N images
        y = ops.batch_norm_eval(_into_n(x, xd, batch), w, b, running_mean, running_var, eps, relu)
        return y.unflatten(0, (batch, -1)), 0
    params = [_per_channel(t, d, batch) for t, d in zip((w, b, running_mean, running_var), in_dims[1:5])]
    y = ops.batch_norm_eval(_into_c(x, xd, batch), *params, eps, relu)
    return y.unflatten(1, (batch, -1)), 1


def _bn_backward_vmap(info, in_dims, gy, x, y, w, mean, invstd, train, relu, output_mask):
    batch = info.batch_size
    acts = [_into_c(t, d, batch) for t, d in zip((gy, x, y), in_dims[:3])]
    chans = [_per_channel(t, d, batch) for t, d in zip((w, mean, invstd), in_dims[3:6])]
    dx, dw, db = ops.batch_norm_backward(*acts, *chans, train, relu, output_mask)
    outs = (dx.unflatten(1, (batch, -1)) if output_mask[0] else dx,
            dw.unflatten(0, (batch, -1)) if output_mask[1] else dw,
            db.unflatten(0, (batch, -1)) if output_mask[2] else db)
    return outs, tuple(d if m else None for d, m in zip((1, 0, 0), output_mask))


def _bn_update_vmap(info, in_dims, running_mean, running_var, save_mean, batch_var, count, factor):
    if in_dims[0] is None or in_dims[1] is None:
        # torch's own message for F.batch_norm under vmap.
        raise RuntimeError(
            "Batch norm got a batched tensor as input while the running_mean or running_var, which will be "
            "updated in place, were not batched.\nIf you are using a module and do not need eval mode, please "
            "set `track_running_stats` to be False.")
    # Each example's buffers are updated in place through a view of them.
    pick = lambda t, d, i: t if d is None else t.select(d, i)  # noqa: E731
    for i in range(info.batch_size):
        ops.batch_norm_update_running_stats_(*(pick(t, d, i) for t, d in zip(
            (running_mean, running_var, save_mean, batch_var), in_dims)), count, factor)
    return None, None


def register_all() -> None:
    for name, backward, setup, jvp_setup, jvp in (
            ("conv2d", _conv_backward, _conv_setup, _conv_jvp_setup, _conv_jvp),
            ("conv2d_dgrad", _dgrad_backward, _dgrad_setup, _conv_bwd_jvp_setup, _conv_bwd_jvp("conv2d_dgrad")),
            ("conv2d_wgrad", _wgrad_backward, _wgrad_setup, _conv_bwd_jvp_setup, _conv_bwd_jvp("conv2d_wgrad")),
            ("max_pool2d", _max_pool_backward, _max_pool_setup, _max_pool_jvp_setup, _max_pool_jvp),
            ("max_pool2d_backward", _max_pool_bwd_backward, _max_pool_bwd_setup, _max_pool_bwd_jvp_setup,
             _max_pool_bwd_jvp),
            ("avg_pool2d", _avg_pool_backward, _avg_pool_setup, _no_jvp_setup, _avg_pool_jvp),
            ("avg_pool2d_backward", _avg_pool_bwd_backward, _avg_pool_bwd_setup, _save_x_for_jvp, _avg_pool_bwd_jvp),
            ("adaptive_avg_pool2d", _adaptive_backward, _adaptive_setup, _adaptive_jvp_setup, _adaptive_jvp),
            ("adaptive_avg_pool2d_backward", _adaptive_bwd_backward, _adaptive_bwd_setup, _save_x_for_jvp,
             _adaptive_bwd_jvp),
            ("batch_norm_train", _bn_train_backward, _bn_train_setup, _bn_train_jvp_setup, _bn_train_jvp),
            ("batch_norm_eval", _bn_eval_backward, _bn_eval_setup, _bn_eval_jvp_setup, _bn_eval_jvp)):
        _register(name, backward, setup)
        register_twin(name, setup, backward, jvp_setup, jvp)
    vmap_rules = {"conv2d": _conv_vmap, "conv2d_dgrad": _dgrad_vmap, "conv2d_wgrad": _wgrad_vmap,
                  "batch_norm_train": _bn_train_vmap, "batch_norm_eval": _bn_eval_vmap,
                  "batch_norm_backward": _bn_backward_vmap, "batch_norm_update_running_stats_": _bn_update_vmap}
    for name in ("max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "adaptive_avg_pool2d",
                 "adaptive_avg_pool2d_backward"):
        vmap_rules[name] = _pool_vmap(name)
    for name, rule in vmap_rules.items():
        torch.library.register_vmap("fastconv::" + name, rule)


register_all()


# ---- conv2d_bn_train (training conv -> BN -> ReLU with the statistics from the conv) ------------------
# Backward: batch_norm_backward(train=True) over the saved conv_out gives d conv_out (plus any gradient
# arriving at conv_out itself), d bn_weight and d bn_bias; then conv2d_dgrad / conv2d_wgrad. The batch
# statistics are not differentiable outputs (as batch_norm_train's). No torch.func twin: under a
# transform torch refuses the op's registered autograd with its own message.
def _conv_bn_train_setup(ctx, inputs, output):
    x, w, bn_w, bn_b, stride, padding, dilation, groups, eps, relu, algo = inputs
    out, conv_out, mean, invstd, var = output
    ctx.mark_non_differentiable(mean, invstd, var)
    need_x, need_w = ctx.needs_input_grad[:2]
    ctx.save_for_backward(x if need_w else None, w if need_x else None, conv_out, out if relu else None, bn_w,
                          mean, invstd)
    ctx.params = (stride, padding, dilation, groups)
    ctx.algos = (algorithms.direction_algo(algo, 1, x, w, stride, padding, dilation, groups),
                 algorithms.direction_algo(algo, 2, x, w, stride, padding, dilation, groups))
    ctx.x_shape, ctx.w_shape = x.shape, w.shape
    ctx.relu, ctx.eps = relu, eps
    ctx.param_shapes = _shapes(bn_w, bn_b)


def _conv_bn_train_backward(ctx, g_out, g_conv, _gm, _gi, _gv):
    x, w, conv, out, bn_w, mean, invstd = ctx.saved_tensors
    need_x, need_w, need_bw, need_bb = ctx.needs_input_grad[:4]
    need_conv = need_x or need_w
    gc = gbw = gbb = None
    if g_out is not None and (need_conv or need_bw or need_bb):
        w_flat = bn_w.reshape(-1) if bn_w is not None else None
        if _transformed() or (torch.is_grad_enabled() and any(
                t is not None and t.requires_grad for t in (g_out, conv, w_flat))):
            gc, gbw, gbb = _bn_backward_composite(g_out, conv, out, w_flat, mean, invstd, True, ctx.relu, ctx.eps)
        else:
            mask = [bool(need_conv), bool(need_bw and bn_w is not None), bool(need_bb)]
            gc, gbw, gbb = ops.batch_norm_backward(g_out, conv, out, bn_w, mean, invstd, True, ctx.relu, mask)
            gc = gc if mask[0] else None
        w_shape, b_shape = ctx.param_shapes
        gbw = gbw.reshape(w_shape) if need_bw and bn_w is not None else None
        gbb = gbb.reshape(b_shape) if need_bb else None
    if g_conv is not None and need_conv:
        gc = g_conv if gc is None else gc + g_conv
    gx = gw = None
    if need_conv and gc is not None:
        stride, padding, dilation, groups = ctx.params
        dgrad_algo, wgrad_algo = ctx.algos
        gc = gc.to(conv.dtype)
        if need_x:
            gx = call("conv2d_dgrad", gc, w, list(ctx.x_shape), stride, padding, dilation, groups, dgrad_algo)
        if need_w:
            gw = call("conv2d_wgrad", gc, x, list(ctx.w_shape), stride, padding, dilation, groups, wgrad_algo)
    return gx, gw, gbw, gbb, None, None, None, None, None, None, None


_register("conv2d_bn_train", _conv_bn_train_backward, _conv_bn_train_setup)
