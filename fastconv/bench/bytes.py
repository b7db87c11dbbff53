"""Device-memory bytes and roofline time of one inference forward and one training step, unfused vs
fused (issue 15): predictions, to be checked against a GPU run.

    from fastconv.bench import bytes as B
    ks = B.count_kernels(B.trace("resnet50", batch=256), "fp16", fused=True, train=True)
    B.totals(ks)                         # {"bytes": ..., "flops": ..., "t_bytes_s": ..., ...}
    print(B.format_table(B.predict("resnet50", batch=256, dtype="fp16")))
    python -m fastconv bench --bytes resnet50 --batch 256 --dtype fp16

The model is traced once with torch.fx on the meta device (shapes only, no memory, no compute), after
fastconv.revert (torch.nn layers trace as leaf modules). Each graph node then becomes the kernels that
would run it, and each kernel is charged its compulsory DRAM traffic: every tensor it reads or writes,
once (perfect on-chip reuse inside a kernel, no L2 hits between kernels), weights included.

    unfused   every conv, BN statistics pass, BN apply pass, ReLU and residual add is its own kernel
    fused     each conv -> BN (-> add) (-> ReLU) chain (what fastconv.fuse_for_* turn into one
              ConvBNAct2d) is
              inference  one conv2d_fused kernel: reads x, w, the 4 BN vectors (folded on the fly) and
                         the residual; writes y
              training   fwd: conv with a statistics epilogue (reads x, w; writes conv_out and per-tile
                         partial sums), a finalize (partials -> mean, invstd, running stats), one
                         apply(+add)(+ReLU) pass (reads conv_out (+ residual); writes out);
                         bwd: BN backward as a reduce pass and an elementwise pass, each reading dy and
                         conv_out (and out, for the ReLU mask, when there is a residual; without one the
                         mask is recomputed from conv_out), the second writing d conv_out (and the
                         residual's gradient), then conv dgrad and wgrad

Both variants count the same for everything else: pools, flatten (free), linear, concatenation, the
gradient sum of a tensor with several consumers (one add kernel per extra consumer), no dgrad into the
input image. Not counted: the loss, the optimizer step, workspaces, autocast casts. Activations and
conv/linear weights are in the compute dtype; BN parameters, statistics and partial sums in float32
(as torch keeps them under autocast); max-pool indices int64 (torch's). A kernel's roofline time is
max(bytes / bandwidth, flops / tensor peak); conv and linear FLOPs are 2 * multiply-adds.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

# H200 SXM datasheet: HBM3e bandwidth and dense FP16/BF16 tensor-core peak.
H200_GBPS = 4800.0
H200_TFLOPS = 989.0
STATS_TILE_ROWS = 128  # output rows (N*P*Q) per CTA of the fused conv: one partial (sum, sum of squares) each
F32, I64 = 4, 8

_ELEM = {"fp32": 4, "fp16": 2, "bf16": 2, "fp64": 8}


def elem_size(dtype: Union[str, torch.dtype]) -> int:
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    try:
        return _ELEM[dtype]
    except KeyError:
        raise ValueError(f"fastconv.bench.bytes: unknown dtype {dtype!r}; choose one of {', '.join(_ELEM)}") from None


@dataclass
class Node:
    """One op of the traced graph. kind: input | conv | bn | relu | add | maxpool | avgpool | linear |
    view | cat | other. `shape` is the output's; `ins` index earlier nodes."""

    name: str
    kind: str
    shape: Tuple[int, ...]
    ins: List[int]
    users: int = 0
    weight: int = 0      # weight elements (conv, linear), channels (bn)
    macs: int = 0        # multiply-adds (conv, linear)
    bias: int = 0        # bias elements

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Kernel:
    """One kernel launch and its compulsory DRAM traffic."""

    name: str
    op: str
    phase: str  # forward | backward
    read: int
    written: int
    flops: int = 0

    @property
    def bytes(self) -> int:
        return self.read + self.written

    def time_s(self, gbps: float = H200_GBPS, tflops: float = H200_TFLOPS) -> float:
        return max(self.bytes / (gbps * 1e9), self.flops / (tflops * 1e12))


# ---- tracing ----------------------------------------------------------------------------------------
def _conv_macs(m: nn.Conv2d, out: Sequence[int]) -> int:
    return math.prod(out) * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]


def trace(model: Union[str, nn.Module], batch: int = 1, input_shape: Optional[Tuple[int, int, int]] = None
          ) -> List[Node]:
    """The nodes of `model` (a fastconv.models name or a module) at `batch` x input_shape (the model's
    own input size for a zoo name). Built and run on the meta device: nothing is allocated."""
    import fastconv
    from fastconv.bench.layers import input_shape as zoo_shape

    if isinstance(model, str):
        from fastconv.models import get_model

        input_shape = input_shape or zoo_shape(model)
        with torch.device("meta"):
            model = get_model(model)
    elif input_shape is None:
        raise ValueError("fastconv.bench.bytes.trace: pass input_shape=(C, H, W) with a module")
    model = fastconv.revert(model).to("meta").eval()
    gm = torch.fx.symbolic_trace(model)
    from torch.fx.passes.shape_prop import ShapeProp

    ShapeProp(gm).propagate(torch.empty(batch, *input_shape, device="meta"))
    nodes: List[Node] = []
    index: Dict[Any, int] = {}
    mods = dict(gm.named_modules())
    for n in gm.graph.nodes:
        if n.op == "output":
            continue
        tm = n.meta.get("tensor_meta")
        if tm is None or not hasattr(tm, "shape"):
            raise NotImplementedError(f"fastconv.bench.bytes: node {n.name} ({n.target}) does not give one tensor")
        ins = [index[a] for a in n.all_input_nodes if a in index]
        node = Node(n.name, "other", tuple(tm.shape), ins)
        if n.op == "placeholder":
            node.kind = "input"
        elif n.op == "call_module":
            m = mods[n.target]
            node.name = n.target
            if isinstance(m, nn.Conv2d):
                node.kind, node.weight, node.macs = "conv", m.weight.numel(), _conv_macs(m, tm.shape)
                node.bias = m.bias.numel() if m.bias is not None else 0
            elif isinstance(m, nn.BatchNorm2d):
                node.kind, node.weight = "bn", m.num_features
            elif isinstance(m, nn.ReLU):
                node.kind = "relu"
            elif isinstance(m, nn.MaxPool2d):
                node.kind = "maxpool"
            elif isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                node.kind = "avgpool"
            elif isinstance(m, nn.Linear):
                node.kind, node.weight = "linear", m.weight.numel()
                node.macs = math.prod(tm.shape) * m.in_features
                node.bias = m.bias.numel() if m.bias is not None else 0
            elif isinstance(m, (nn.Dropout, nn.Identity, nn.Flatten)):
                node.kind = "view"
        elif n.op == "call_function" and n.target in (operator.add, torch.add) and len(ins) == 2:
            node.kind = "add"
        elif n.op == "call_function" and n.target in (torch.flatten, torch.reshape) or \
                n.op == "call_method" and n.target in ("view", "flatten", "reshape", "size"):
            node.kind = "view"
        elif n.op == "call_function" and n.target is torch.cat:
            node.kind = "cat"
        elif n.op == "call_function" and n.target in (torch.relu, torch.nn.functional.relu):
            node.kind = "relu"
        index[n] = len(nodes)
        nodes.append(node)
    for node in nodes:
        for i in node.ins:
            nodes[i].users += 1
    return nodes


# ---- fusion groups ------------------------------------------------------------------------------------
@dataclass
class Group:
    """A conv -> BN (-> add residual) (-> ReLU) chain: the nodes one ConvBNAct2d replaces."""

    conv: int
    bn: int
    add: Optional[int] = None
    residual: Optional[int] = None
    relu: Optional[int] = None

    @property
    def last(self) -> int:
        return self.relu if self.relu is not None else (self.add if self.add is not None else self.bn)


def fusion_groups(nodes: List[Node]) -> Dict[int, Group]:
    """{conv index: Group} for each conv whose only consumer is a BN (then optionally an add whose
    other operand is computed first, then a ReLU), the patterns fastconv.fuse_for_* rewrite."""
    consumers: Dict[int, List[int]] = {}
    for j, node in enumerate(nodes):
        for i in node.ins:
            consumers.setdefault(i, []).append(j)

    def only(i: int, kind: str) -> Optional[int]:
        c = consumers.get(i, [])
        return c[0] if len(c) == 1 and nodes[c[0]].kind == kind else None

    groups: Dict[int, Group] = {}
    for i, node in enumerate(nodes):
        if node.kind != "conv":
            continue
        bn = only(i, "bn")
        if bn is None:
            continue
        g = Group(i, bn)
        add = only(bn, "add")
        if add is not None:
            other = [k for k in nodes[add].ins if k != bn]
            if len(other) == 1 and other[0] < i:  # the residual exists before the conv runs
                g.add, g.residual = add, other[0]
        g.relu = only(g.last, "relu")
        if g.add is not None and g.relu is None:
            g.add = g.residual = None  # fastconv fuses the residual only before a ReLU (ResNet's pattern)
            g.relu = only(bn, "relu")
        groups[i] = g
    return groups


# ---- kernels ----------------------------------------------------------------------------------------
def count_kernels(nodes: List[Node], dtype: Union[str, torch.dtype] = "fp16", fused: bool = False,
                  train: bool = False, stats_tile_rows: int = STATS_TILE_ROWS) -> List[Kernel]:
    """The kernels of one inference forward (train=False) or one training step's forward and backward
    (train=True), unfused or fused, with the bytes each reads and writes (see the module docstring)."""
    e = elem_size(dtype)
    groups = fusion_groups(nodes) if fused else {}
    member = {}
    for g in groups.values():
        for k in (g.bn, g.add, g.relu):
            if k is not None:
                member[k] = g
    fwd: List[Kernel] = []
    bwd: List[Kernel] = []

    def act(i: int) -> int:
        return nodes[i].numel * e

    def needs_grad(i: int) -> bool:
        return nodes[i].kind != "input"

    def conv_backward(i: int) -> None:
        """dgrad (unless the conv's input is the image) and wgrad; both read the conv output's gradient."""
        nd, x = nodes[i], nodes[i].ins[0]
        w, flops = nd.weight * e, 2 * nd.macs
        if needs_grad(x):
            bwd.append(Kernel(f"{nd.name} dgrad", "conv dgrad", "backward", act(i) + w, act(x), flops))
        bwd.append(Kernel(f"{nd.name} wgrad", "conv wgrad", "backward", act(i) + act(x), w + nd.bias * e, flops))

    for i, nd in enumerate(nodes):
        k = nd.kind
        if k in ("input", "view"):
            continue
        if i in member:
            continue  # emitted with its group's conv
        if k == "conv" and i in groups:
            g = groups[i]
            out = g.last
            C = nodes[g.bn].weight
            x = nd.ins[0]
            w = nd.weight * e
            res = act(g.residual) if g.residual is not None else 0
            if not train:
                fwd.append(Kernel(f"{nd.name} conv2d_fused", "conv+BN(+add)(+ReLU)", "forward",
                                  act(x) + w + 4 * C * F32 + res, act(out), 2 * nd.macs))
                continue
            tiles = math.ceil(nd.numel / nd.shape[1] / stats_tile_rows)
            partials = 2 * C * tiles * F32
            fwd.append(Kernel(f"{nd.name} conv+stats", "conv+stats", "forward", act(x) + w, act(i) + partials,
                              2 * nd.macs))
            fwd.append(Kernel(f"{nodes[g.bn].name} finalize", "BN finalize", "forward", partials + 2 * C * F32,
                              4 * C * F32))
            fwd.append(Kernel(f"{nodes[g.bn].name} apply", "BN apply(+add)(+ReLU)", "forward",
                              act(i) + 4 * C * F32 + res, act(out)))
            # backward: dy is the gradient of the group's output; the ReLU mask comes from out when a
            # residual was added (it is not recomputable from conv_out alone), else from conv_out.
            mask = act(out) if (g.relu is not None and g.residual is not None) else 0
            bwd.append(Kernel(f"{nodes[g.bn].name} bwd reduce", "BN bwd reduce", "backward",
                              act(out) + act(i) + mask + 4 * C * F32, 2 * C * F32))
            dres = act(g.residual) if g.residual is not None and needs_grad(g.residual) else 0
            bwd.append(Kernel(f"{nodes[g.bn].name} bwd dx", "BN bwd dx(+ReLU)", "backward",
                              act(out) + act(i) + mask + 6 * C * F32, act(i) + dres))
            conv_backward(i)
            continue
        if k == "conv":
            x = nd.ins[0]
            w = nd.weight * e
            fwd.append(Kernel(f"{nd.name} fprop", "conv fprop", "forward", act(x) + w + nd.bias * e, act(i),
                              2 * nd.macs))
            if train:
                conv_backward(i)
        elif k == "bn":
            x, C = nd.ins[0], nd.weight
            if train:
                fwd.append(Kernel(f"{nd.name} stats", "BN stats", "forward", act(x) + 2 * C * F32, 4 * C * F32))
                fwd.append(Kernel(f"{nd.name} apply", "BN apply", "forward", act(x) + 4 * C * F32, act(i)))
                bwd.append(Kernel(f"{nd.name} bwd reduce", "BN bwd reduce", "backward",
                                  act(i) + act(x) + 2 * C * F32, 2 * C * F32))
                bwd.append(Kernel(f"{nd.name} bwd dx", "BN bwd dx", "backward", act(i) + act(x) + 6 * C * F32,
                                  act(x)))
            else:
                fwd.append(Kernel(f"{nd.name} apply", "BN apply", "forward", act(x) + 4 * C * F32, act(i)))
        elif k == "relu":
            fwd.append(Kernel(f"{nd.name} relu", "ReLU", "forward", act(nd.ins[0]), act(i)))
            if train:  # threshold_backward(dy, out)
                bwd.append(Kernel(f"{nd.name} relu bwd", "ReLU bwd", "backward", 2 * act(i), act(i)))
        elif k == "add":
            fwd.append(Kernel(f"{nd.name}", "add", "forward", sum(act(j) for j in nd.ins), act(i)))
            # backward: the gradient passes unchanged to both operands, no kernel
        elif k == "maxpool":
            x = nd.ins[0]
            fwd.append(Kernel(f"{nd.name}", "max pool", "forward", act(x),
                              act(i) + (nd.numel * I64 if train else 0)))
            if train and needs_grad(x):
                bwd.append(Kernel(f"{nd.name} bwd", "max pool bwd", "backward", act(i) + nd.numel * I64, act(x)))
        elif k == "avgpool":
            x = nd.ins[0]
            fwd.append(Kernel(f"{nd.name}", "avg pool", "forward", act(x), act(i)))
            if train and needs_grad(x):
                bwd.append(Kernel(f"{nd.name} bwd", "avg pool bwd", "backward", act(i), act(x)))
        elif k == "linear":
            x = nd.ins[0]
            w = (nd.weight + nd.bias) * e
            fwd.append(Kernel(f"{nd.name}", "linear", "forward", act(x) + w, act(i), 2 * nd.macs))
            if train:
                if needs_grad(x):
                    bwd.append(Kernel(f"{nd.name} dgrad", "linear dgrad", "backward", act(i) + nd.weight * e, act(x),
                                      2 * nd.macs))
                bwd.append(Kernel(f"{nd.name} wgrad", "linear wgrad", "backward", act(i) + act(x), w, 2 * nd.macs))
        else:  # cat and anything else: read every input, write the output; backward: the reverse
            ins = sum(act(j) for j in nd.ins)
            fwd.append(Kernel(f"{nd.name}", k, "forward", ins, act(i)))
            if train:
                bwd.append(Kernel(f"{nd.name} bwd", f"{k} bwd", "backward", act(i), ins))
    if train:
        # A tensor with several consumers gets its gradients summed: one add per extra consumer (the
        # same in both variants: a fused chain's inner tensors have one consumer each).
        for i, nd in enumerate(nodes):
            if nd.users > 1 and needs_grad(i):
                for _ in range(nd.users - 1):
                    bwd.append(Kernel(f"{nd.name} grad sum", "grad sum", "backward", 2 * act(i), act(i)))
    return fwd + bwd


def totals(kernels: Sequence[Kernel], gbps: float = H200_GBPS, tflops: float = H200_TFLOPS) -> Dict[str, float]:
    """Summed bytes and FLOPs; t_bytes_s = bytes / bandwidth, t_flops_s = FLOPs / tensor peak,
    t_roofline_s = the sum over kernels of max(each kernel's two)."""
    b = sum(k.bytes for k in kernels)
    f = sum(k.flops for k in kernels)
    return {"kernels": len(kernels), "bytes": b, "flops": f, "t_bytes_s": b / (gbps * 1e9),
            "t_flops_s": f / (tflops * 1e12), "t_roofline_s": sum(k.time_s(gbps, tflops) for k in kernels)}


def predict(model: Union[str, nn.Module] = "resnet50", batch: int = 256, dtype: str = "fp16",
            input_shape: Optional[Tuple[int, int, int]] = None, gbps: float = H200_GBPS,
            tflops: float = H200_TFLOPS) -> List[Dict[str, Any]]:
    """One row per (pass, variant): inference and training step, unfused and fused, with totals()."""
    nodes = trace(model, batch, input_shape)
    rows = []
    for train in (False, True):
        for fused in (False, True):
            t = totals(count_kernels(nodes, dtype, fused=fused, train=train), gbps, tflops)
            rows.append(dict(t, model=model if isinstance(model, str) else type(model).__name__, batch=batch,
                             dtype=dtype, pass_="train step" if train else "inference", fused=fused,
                             gbps=gbps, tflops=tflops))
    return rows


COLUMNS = ["pass", "variant", "kernels", "GB moved", "saved", "bytes time ms", "conv+fc FLOP time ms",
           "roofline ms (sum of per-kernel max)"]


def table_rows(rows: List[Dict[str, Any]]) -> List[List[str]]:
    base = {r["pass_"]: r["bytes"] for r in rows if not r["fused"]}
    out = []
    for r in rows:
        saved = "-" if not r["fused"] else f"{1 - r['bytes'] / base[r['pass_']]:.0%}"
        out.append([r["pass_"], "fused" if r["fused"] else "unfused", str(r["kernels"]), f"{r['bytes'] / 1e9:.2f}",
                    saved, f"{r['t_bytes_s'] * 1e3:.2f}", f"{r['t_flops_s'] * 1e3:.2f}",
                    f"{r['t_roofline_s'] * 1e3:.2f}"])
    return out


def format_table(rows: List[Dict[str, Any]]) -> str:
    from fastconv.bench.report import text_table

    r0 = rows[0]
    head = (f"{r0['model']}, batch {r0['batch']}, {r0['dtype']}: predicted device-memory bytes and roofline time "
            f"at {r0['gbps']:.0f} GB/s and {r0['tflops']:.0f} TFLOP/s (H200 SXM datasheet, dense tensor peak); "
            "predictions, not measurements")
    return head + "\n" + text_table(COLUMNS, table_rows(rows))
