"""The benchmark runs behind `python -m fastconv bench`: per-layer (fastconv algorithms vs torch on
every distinct layer of a model) and per-model (inference or one SGD training step; fastconv vs torch
eager vs torch.compile). Each produces records in the results schema (fastconv.bench.results)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch

from fastconv.bench import cases
from fastconv.bench.layers import LayerSpec, model_layers, quick_layers
from fastconv.bench.timing import measure


class BenchError(Exception):
    """A bad request (unknown model, dtype the device cannot run, missing module): a clear message
    and a non-zero exit, no traceback."""


@dataclass
class Settings:
    mode: str = "layers"
    model: str = "resnet50"
    batches: List[int] = field(default_factory=lambda: [1])
    dtype: str = "fp32"
    layout: str = "nchw"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    quick: bool = False
    algos: List[str] = field(default_factory=lambda: ["all"])
    passes: List[str] = field(default_factory=lambda: list(cases.CONV_PASSES))
    kinds: List[str] = field(default_factory=lambda: ["conv", "maxpool", "avgpool", "adaptive_avgpool", "bn"])
    tf32: bool = False
    compile: bool = True
    # timing
    warmup: int = 2
    rounds: int = 10
    max_total_s: float = 2.0

    def as_dict(self) -> Dict[str, Any]:
        return {"mode": self.mode, "model": self.model, "batches": self.batches, "dtype": self.dtype,
                "layout": self.layout, "device": str(self.device), "quick": self.quick, "algos": self.algos,
                "passes": self.passes, "tf32": self.tf32, "warmup": self.warmup, "rounds": self.rounds,
                "max_total_s_per_measurement": self.max_total_s}


def _progress(total: int, desc: str, enabled: bool = True):
    """tqdm on stderr when available (and asked for), else a minimal counter."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False, dynamic_ncols=True)
    except ImportError:
        class _Plain:
            def __init__(self) -> None:
                self.n = 0

            def update(self, k: int = 1) -> None:
                self.n += k
                if enabled:
                    print(f"\r{desc}: {self.n}/{total}", end="", file=sys.stderr, flush=True)

            def set_postfix_str(self, s: str) -> None:
                pass

            def close(self) -> None:
                if enabled:
                    print(file=sys.stderr)

        return _Plain()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _record(base: Dict[str, Any], impl: str, algo: str, stats, flops: int, nbytes: int, **extra) -> Dict[str, Any]:
    rec = dict(base, impl=impl, algo=algo, flops=flops, bytes=nbytes, **extra)
    if stats is not None:
        rec["stats"] = stats.as_dict()
        rec["tflops"] = flops / stats.median / 1e12 if flops else None
        rec["gbps"] = nbytes / stats.median / 1e9 if nbytes else None
    return rec


def select_layers(s: Settings) -> List[LayerSpec]:
    layers = quick_layers(s.model) if s.quick else model_layers(s.model)
    return [spec for spec in layers if spec.kind in s.kinds]


def run_layers(s: Settings, progress: bool = True, log: Callable[[str], None] = lambda m: None) -> List[Dict[str, Any]]:
    """Times every (layer, pass) of `s.model` for each fastconv algorithm and torch."""
    dtype = cases.DTYPES[s.dtype]
    layers = select_layers(s)
    jobs = []
    for batch in s.batches:
        for spec in layers:
            for pss in cases.passes_for(spec, s.passes):
                jobs.append((batch, spec, pss))
    bar = _progress(len(jobs), f"layers {s.model}", progress)
    records: List[Dict[str, Any]] = []
    for batch, spec, pss in jobs:
        name = spec.names[0]
        bar.set_postfix_str(f"{name} {pss}")
        base = {"kind": "layer", "model": s.model, "layer": name, "label": spec.label(), "layer_kind": spec.kind,
                "count": spec.count, "uses": spec.names, "pass": pss, "batch": batch, "dtype": s.dtype,
                "layout": s.layout, "device": str(s.device), "shape": spec.as_dict(),
                "group": f"{s.model}/{name}/{pss}/b{batch}/{s.dtype}/{s.layout}"}
        algos = cases.fastconv_algos(spec, batch, dtype, s.device, s.layout, s.algos)
        torch_case = None
        if not algos:
            prob = cases.conv_problem(spec, batch, dtype, s.device, s.layout)
            from fastconv import algorithms

            why = algorithms.why_not("direct", prob) or "no requested algorithm can implement it"
            records.append(_record(base, "fastconv", "-", None, 0, 0, skipped=why))
        for algo in algos or ["-"]:
            case = cases.make_case(spec, pss, algo, batch, dtype, s.layout, s.device)
            torch_case = case
            if not algos:
                break
            if case.fastconv is None:
                records.append(_record(base, "fastconv", algo, None, case.flops, case.bytes, skipped=case.skip))
                continue
            try:
                err = cases.max_rel_error(case.fastconv(), case.torch())
            except (TypeError, NotImplementedError, RuntimeError, ValueError) as e:
                records.append(_record(base, "fastconv", algo, None, case.flops, case.bytes,
                                       skipped=f"{type(e).__name__}: {e}"))
                continue
            st = measure(case.fastconv, s.device, warmup=s.warmup, rounds=s.rounds, max_total_s=s.max_total_s)
            records.append(_record(base, "fastconv", algo, st, case.flops, case.bytes, max_rel_err=err))
        if torch_case is not None:
            st = measure(torch_case.torch, s.device, warmup=s.warmup, rounds=s.rounds, max_total_s=s.max_total_s)
            backend = "cuDNN" if s.device.type == "cuda" else "ATen/oneDNN"
            records.append(_record(base, "torch", backend, st, torch_case.flops, torch_case.bytes))
        bar.update(1)
    bar.close()
    return records


# ---- whole models ----------------------------------------------------------------------------------
def get_model(name: str) -> torch.nn.Module:
    try:
        from fastconv.models import get_model as _get
    except ImportError as e:
        raise BenchError(f"--mode inference/train needs fastconv.models (ResNet/GoogLeNet builders), which this "
                         f"checkout does not have yet ({e}); use --mode layers") from None
    try:
        return _get(name)
    except (KeyError, ValueError) as e:
        raise BenchError(f"fastconv.models.get_model('{name}') failed: {e}") from None


def _fused(model: torch.nn.Module, train: bool) -> Optional[torch.nn.Module]:
    """fastconv's converted model with each BN folded into its conv (inference only: folding
    freezes the BN statistics)."""
    import fastconv

    if train:
        return None
    return fastconv.fuse_for_inference(fastconv.convert(model).eval())


def _variants(model: torch.nn.Module, s: Settings) -> Iterable[tuple]:
    import copy

    import fastconv

    # fastconv.models builds fastconv layers: the torch baseline is the same network reverted to torch.nn.
    model = fastconv.revert(model)
    yield "torch", "eager", model
    yield "fastconv", "converted", fastconv.convert(model)
    fused = _fused(model, s.mode == "train")
    if fused is not None:
        yield "fastconv", "converted+fused", fused
    if s.compile and not s.quick:
        try:
            yield "torch", "torch.compile", torch.compile(copy.deepcopy(model))
        except Exception as e:  # noqa: BLE001  (reported as skipped)
            yield "torch", "torch.compile", e


def run_models(s: Settings, progress: bool = True, log: Callable[[str], None] = lambda m: None) -> List[Dict[str, Any]]:
    """Times inference or one training step (forward + cross-entropy + backward + SGD) per variant."""
    dtype = cases.DTYPES[s.dtype]
    train = s.mode == "train"
    base_model = get_model(s.model).to(device=s.device, dtype=dtype)
    if s.layout == "nhwc":
        base_model = base_model.to(memory_format=torch.channels_last)
    variants = list(_variants(base_model, s))
    bar = _progress(len(variants) * len(s.batches), f"{s.mode} {s.model}", progress)
    records: List[Dict[str, Any]] = []
    for batch in s.batches:
        x = torch.randn(batch, 3, 224, 224, device=s.device, dtype=dtype)
        if s.layout == "nhwc":
            x = x.contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 1000, (batch,), device=s.device)
        ref_out = None
        for impl, variant, model in variants:
            bar.set_postfix_str(f"b{batch} {variant}")
            base = {"kind": "model", "model": s.model, "layer": s.model, "label": f"{s.model} {s.mode}",
                    "pass": s.mode, "batch": batch, "dtype": s.dtype, "layout": s.layout, "device": str(s.device),
                    "group": f"{s.model}/{s.mode}/b{batch}/{s.dtype}/{s.layout}", "variant": variant}
            if isinstance(model, Exception):
                records.append(_record(base, impl, variant, None, 0, 0, skipped=f"{type(model).__name__}: {model}"))
                bar.update(1)
                continue
            if train:
                model.train()
                opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
                state = copy_state(model)

                def step(model=model, opt=opt, x=x, labels=labels):
                    opt.zero_grad(set_to_none=True)
                    out = model(x)
                    out = out[0] if isinstance(out, tuple) else out
                    torch.nn.functional.cross_entropy(out.float(), labels).backward()
                    opt.step()
                fn: Callable[[], object] = step
            else:
                model.eval()

                def fn(model=model, x=x):
                    with torch.no_grad():
                        return model(x)
            try:
                model.eval()
                with torch.no_grad():
                    out = model(x)
                out = out[0] if isinstance(out, tuple) else out
                if ref_out is None:  # torch eager runs first: the reference
                    ref_out = out
                err = cases.max_rel_error(out, ref_out)
                if train:
                    model.train()
                st = measure(fn, s.device, warmup=s.warmup, rounds=s.rounds, max_total_s=s.max_total_s)
                if train:
                    model.load_state_dict(state)
            except Exception as e:  # noqa: BLE001  (torch.compile failures surface here; report them)
                records.append(_record(base, impl, variant, None, 0, 0, skipped=f"{type(e).__name__}: {e}"[:300]))
                bar.update(1)
                continue
            rec = _record(base, impl, variant, st, 0, 0, max_rel_err=err)
            rec["images_per_s"] = batch / st.median
            records.append(rec)
            bar.update(1)
    bar.close()
    return records


def copy_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
