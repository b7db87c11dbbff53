"""PyTorch integration on CUDA (all tests marked `cuda`): CUDA graph capture and replay of conv,
pooling and batch norm forward+backward, torch.compile (fullgraph, dynamic batch, and
mode="reduce-overhead"), no host synchronisation, autocast float16/bfloat16 (+ GradScaler),
deterministic repeats, and double backward."""

import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend
from torch.autograd import gradgradcheck

import fastconv.functional as FF
from integ_models import pair

pytestmark = pytest.mark.cuda

ALGOS = [("direct", 3, 1), ("im2col", 3, 1), ("gemm1x1", 1, 0)]


@pytest.fixture(autouse=True)
def _reset():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode(0)


def _close(a, b, tol=1e-4):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def _layer_fn(algo, k, pad):
    def fn(x, w, b, rm, rv, bw, bb):
        y = FF.conv2d(x, w, b, 1, pad, algo=algo)
        y = FF.batch_norm_relu(y, rm, rv, bw, bb, True)
        y = FF.max_pool2d(y, 3, 2, 1) + FF.avg_pool2d(y, 3, 2, 1)
        return FF.adaptive_avg_pool2d(y, 2)
    return fn


def _layer_inputs(k, seed, cl=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(4, 16, 14, 14, device="cuda", generator=g)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(24, 16, k, k, device="cuda", generator=g) * 0.1
    b, bw, bb = (torch.randn(24, device="cuda", generator=g) for _ in range(3))
    return [x, w, b, torch.zeros(24, device="cuda"), torch.ones(24, device="cuda"), bw, bb]


# ---- CUDA graphs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("algo,k,pad", ALGOS)
def test_cuda_graph_capture_ops_forward_backward(algo, k, pad, cl):
    fn = _layer_fn(algo, k, pad)
    static = _layer_inputs(k, 0, cl)
    for i in (0, 1, 2, 5, 6):
        static[i].requires_grad_()

    def step():
        y = fn(*static)
        return (y,) + torch.autograd.grad(y, [static[i] for i in (0, 1, 2, 5, 6)], torch.ones_like(y))

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for seed in (1, 2):
        new = _layer_inputs(k, seed, cl)
        with torch.no_grad():
            for t, v in zip(static, new):
                t.copy_(v)
        rm0, rv0 = static[3].clone(), static[4].clone()
        graph.replay()
        # Eager reference on the same inputs and the same pre-replay running statistics.
        ref_in = [t.detach().clone() for t in static]
        ref_in[3], ref_in[4] = rm0, rv0
        for i in (0, 1, 2, 5, 6):
            ref_in[i].requires_grad_()
        y = fn(*ref_in)
        ref = (y,) + torch.autograd.grad(y, [ref_in[i] for i in (0, 1, 2, 5, 6)], torch.ones_like(y))
        for a, b in zip(out, ref):
            _close(a, b)
        _close(static[3], ref_in[3])  # running statistics updated inside the graph
        _close(static[4], ref_in[4])


def test_cuda_graph_whole_training_step():
    _, model = pair("resnet_like", device="cuda")
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    static_x = torch.randn(8, 3, 16, 16, device="cuda")

    def step(m, o, x):
        o.zero_grad(set_to_none=True)
        loss = m(x).square().mean()
        loss.backward()
        o.step()
        return loss

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step(model, opt, static_x)
            step(ref, opt_ref, static_x)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = model(static_x).square().mean()
        static_loss.backward()
        opt.step()
    for _ in range(3):
        x = torch.randn(8, 3, 16, 16, device="cuda")
        static_x.copy_(x)
        graph.replay()
        loss = step(ref, opt_ref, x)
        _close(static_loss, loss)
        for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
            if a.is_floating_point():
                _close(a, b, 1e-3)


def test_no_host_synchronisation():
    _, model = pair("inception_like", device="cuda")
    x = torch.randn(4, 3, 16, 16, device="cuda")
    model(x).sum().backward()  # warm-up (first-call allocations, lazy init)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    for train in (True, False):
        model.train(train)
        model(x).square().mean().backward()
    torch.cuda.set_sync_debug_mode(0)


# ---- torch.compile ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet_like", "inception_like"])
def test_compile_fullgraph_train_dynamic_batch(name):
    ref, ours = pair(name, device="cuda")
    cnt = CompileCounterWithBackend("inductor")
    compiled = torch.compile(ours, fullgraph=True, backend=cnt)
    for n in (4, 6):
        x = torch.randn(n, 3, 16, 16, device="cuda")
        torch._dynamo.mark_dynamic(x, 0)
        _close(compiled(x), ref(x))
        g = [torch.autograd.grad(m(x).square().mean(), list(m.parameters())) for m in (compiled, ref)]
        for a, b in zip(*g):
            _close(a, b, 1e-3)
    assert cnt.frame_count == 1


@pytest.mark.parametrize("train", [False, True])
def test_compile_reduce_overhead(train):
    from torch._dynamo.utils import counters

    counters.clear()
    ref, ours = pair("resnet_like", device="cuda")
    ref.train(train), ours.train(train)
    compiled = torch.compile(ours, mode="reduce-overhead", fullgraph=True)
    for _ in range(4):  # cudagraph trees record on a later call, then replay
        torch.compiler.cudagraph_mark_step_begin()
        x = torch.randn(4, 3, 16, 16, device="cuda")
        if train:
            y = compiled(x)
            y.square().mean().backward()
            yr = ref(x)
            yr.square().mean().backward()
        else:
            with torch.no_grad():
                y, yr = compiled(x), ref(x)
        _close(y.clone(), yr)
    if train:
        for a, b in zip(ours.parameters(), ref.parameters()):
            _close(a.grad, b.grad, 1e-3)
        for a, b in zip(ours.buffers(), ref.buffers()):
            _close(a.float(), b.float(), 1e-3)
    assert counters["inductor"]["cudagraph_skips"] == 0


# ---- autocast ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_policy_matches_torch(dtype):
    x = torch.randn(2, 8, 10, 10, device="cuda")
    w = torch.randn(8, 8, 3, 3, device="cuda")
    rm, rv = torch.zeros(8, device="cuda"), torch.ones(8, device="cuda")
    bw, bb = torch.ones(8, device="cuda"), torch.zeros(8, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        y, yr = FF.conv2d(x, w, padding=1), torch.nn.functional.conv2d(x, w, padding=1)
        assert y.dtype == yr.dtype == dtype
        z = FF.batch_norm(y, rm, rv, bw, bb, True)
        zr = torch.nn.functional.batch_norm(yr, rm.clone(), rv.clone(), bw, bb, True)
        assert z.dtype == zr.dtype == dtype and rm.dtype == torch.float32
        p, pr = FF.max_pool2d(z, 2), torch.nn.functional.max_pool2d(zr, 2)
        assert p.dtype == pr.dtype == dtype
        q = FF.conv2d(x.double(), w.double())  # float64 is never cast
        assert q.dtype == torch.float64
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(p.float(), pr.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_training_with_grad_scaler(dtype):
    ref, ours = pair("resnet_like", device="cuda")
    results = []
    for model in (ours, ref):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        gen = torch.Generator(device="cuda").manual_seed(0)
        for _ in range(2):
            x = torch.randn(8, 3, 16, 16, device="cuda", generator=gen)
            opt.zero_grad()
            with torch.autocast("cuda", dtype=dtype):
                out = model(x)
                loss = out.float().square().mean()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        results.append((out, [p.detach().clone() for p in model.parameters()]))
    (oa, pa), (ob, pb) = results
    assert oa.dtype == ob.dtype
    torch.testing.assert_close(oa.float(), ob.float(), rtol=5e-2, atol=5e-2)
    for a, b in zip(pa, pb):
        assert a.dtype == torch.float32 and torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2)
    for m in ours.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean.dtype == m.running_var.dtype == m.weight.dtype == torch.float32


def test_autocast_inside_compile():
    ref, ours = pair("inception_like", device="cuda")

    def fwd(model, x):
        with torch.autocast("cuda", dtype=torch.float16):
            return model(x)

    x = torch.randn(4, 3, 16, 16, device="cuda")
    y = torch.compile(fwd, fullgraph=True)(ours, x)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), fwd(ref, x).float(), rtol=2e-2, atol=2e-2)


# ---- determinism and double backward -------------------------------------------------------------
@pytest.mark.parametrize("algo,k,pad", ALGOS)
def test_deterministic_repeats(algo, k, pad):
    fn = _layer_fn(algo, k, pad)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            inp = _layer_inputs(k, 3)
            for i in (0, 1, 2, 5, 6):
                inp[i].requires_grad_()
            y = fn(*inp)
            runs.append([y] + list(torch.autograd.grad(y, [inp[i] for i in (0, 1, 2, 5, 6)], torch.ones_like(y)))
                        + inp[3:5])
        for a, b in zip(*runs):
            assert torch.equal(a, b)
    finally:
        torch.use_deterministic_algorithms(before)


def test_double_backward_cuda():
    x = torch.randn(2, 4, 6, 5, device="cuda", dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, 3, 3, device="cuda", dtype=torch.float64, requires_grad=True)
    assert gradgradcheck(lambda x, w: FF.conv2d(x, w, None, 1, 1, 1, 2, algo="direct"), (x, w), fast_mode=True)
    assert gradgradcheck(lambda x: FF.max_pool2d(x, 2), (x,), fast_mode=True)
    b = torch.randn(4, device="cuda", dtype=torch.float64, requires_grad=True)
    assert gradgradcheck(lambda x, b: FF.batch_norm(x, None, None, None, b, True), (x, b), fast_mode=True)
