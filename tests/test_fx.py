"""torch.fx.symbolic_trace over fastconv models and functions, and revert().

fastconv's layers trace as call_module leaves, exactly like their torch.nn twins (so a traced
model still switches BatchNorm between train and eval), and fastconv.functional calls trace as
call_function nodes (the functions honour __torch_function__, like torch.nn.functional)."""

import torch
import torch.fx

import fastconv
import fastconv.functional as FF
import fastconv.modules as fm
from integ_models import pair


def test_converted_model_traces_with_fastconv_leaves():
    ref, ours = pair("resnet_like")
    gm = torch.fx.symbolic_trace(ours)
    leaves = [gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"]
    assert any(type(m) is fm.Conv2d for m in leaves) and any(type(m) is fm.BatchNorm2d for m in leaves)
    assert not any(n.op == "call_function" and "fastconv" in str(n.target) for n in gm.graph.nodes)
    x = torch.randn(2, 3, 12, 12)
    for train in (True, False, True):
        gm.train(train), ref.train(train)
        torch.testing.assert_close(gm(x), ref(x), rtol=1e-4, atol=1e-5)
    # The traced module shares the original layers: running statistics moved in ours too.
    torch.testing.assert_close(ours[1].running_mean, ref[1].running_mean)
    assert int(ours[1].num_batches_tracked) == 2


def test_functional_calls_trace_as_call_function():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 3, 3, 3))
            self.register_buffer("rm", torch.zeros(4))
            self.register_buffer("rv", torch.ones(4))

        def forward(self, x):
            y = FF.conv2d(x, self.w, None, 1, "same", algo="im2col")
            y = FF.batch_norm_relu(y, self.rm, self.rv, None, None, False)
            y = FF.max_pool2d(y, 2) + FF.avg_pool2d(y, 2)
            return FF.adaptive_avg_pool2d(y, 1)

    net = Net()
    gm = torch.fx.symbolic_trace(net)
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert {FF.conv2d, FF.batch_norm_relu, FF.max_pool2d, FF.avg_pool2d, FF.adaptive_avg_pool2d} <= targets
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(gm(x), net(x))
    assert "fastconv.functional.conv2d" in gm.code or "conv2d" in gm.code


def test_revert_traced_and_plain_models():
    ref, ours = pair("inception_like")
    x = torch.randn(2, 3, 16, 16)
    back = fastconv.revert(ours)
    assert all(not type(m).__module__.startswith("fastconv") for m in back.modules())
    ref.eval(), back.eval()
    torch.testing.assert_close(back(x), ref(x))
    for a, b in zip(back.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    # A traced GraphModule holds the layers: revert() turns them back too, and it still runs.
    gm = fastconv.revert(torch.fx.symbolic_trace(ours).eval())
    assert not any(type(m).__module__.startswith("fastconv") for m in gm.modules())
    torch.testing.assert_close(gm(x), ref(x), rtol=1e-4, atol=1e-5)
