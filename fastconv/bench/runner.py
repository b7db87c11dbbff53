"""The benchmark runs behind `python -m fastconv bench`: per-layer (fastconv algorithms vs torch on
every distinct layer of a model) and per-model (inference or one SGD training step; torch eager,
fastconv, fastconv fused and torch.compile). Each produces records in the results schema
(fastconv.bench.results)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, TextIO

import torch

from fastconv.bench import cases
from fastconv.bench.layers import MODELS, LayerSpec, input_shape, model_layers, quick_layers
from fastconv.bench.results import VARIANT_IMPL, VARIANT_NAMES, VARIANTS  # noqa: F401  (VARIANT_NAMES: re-exported)
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


class _Quiet:
    def update(self, k: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


class _Lines:
    """Progress for a stream that is not a terminal (a log file, a pipe, CI): no carriage returns, one
    plain line each time another quarter of the jobs is done."""

    STEPS = 4

    def __init__(self, total: int, desc: str, stream: TextIO) -> None:
        self.total, self.desc, self.stream = total, desc, stream
        self.n, self.shown, self.what, self.t0 = 0, 0, "", time.perf_counter()

    def update(self, k: int = 1) -> None:
        self.n += k
        step = self.n * self.STEPS // max(1, self.total)
        if step > self.shown:
            self.shown = step
            print(f"{self.desc}: {self.n}/{self.total} done ({time.perf_counter() - self.t0:.1f} s; last: {self.what})",
                  file=self.stream, flush=True)

    def set_postfix_str(self, s: str) -> None:
        self.what = s

    def close(self) -> None:
        pass


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _progress(total: int, desc: str, enabled: bool = True, stream: Optional[TextIO] = None):
    """A progress bar on stderr (tqdm when installed) when it is a terminal; when it is not (redirected
    to a log), a line per quarter of the jobs instead of a redrawn bar; nothing when not enabled."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        return _Quiet()
    if not _isatty(stream):
        return _Lines(total, desc, stream)
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, file=stream, leave=False, dynamic_ncols=True)
    except ImportError:
        class _Counter(_Quiet):
            def __init__(self) -> None:
                self.n = 0

            def update(self, k: int = 1) -> None:
                self.n += k
                print(f"\r{desc}: {self.n}/{total}", end="", file=stream, flush=True)

            def close(self) -> None:
                print(file=stream)

        return _Counter()


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
def model_names() -> List[str]:
    """Every model `--model` accepts: fastconv.models' zoo, and the paper tables of fastconv.bench.layers."""
    try:
        from fastconv.models import list_models
    except ImportError:
        return list(MODELS)
    return sorted(set(list_models()) | set(MODELS))


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


def fastconv_layers(model: torch.nn.Module) -> List[str]:
    """Names of the submodules of `model` that are fastconv layers (fastconv.modules classes)."""
    from fastconv import modules as fm

    return [name for name, m in model.named_modules() if type(m).__module__ == fm.__name__]


# How long torch.compile took here (2-core shared CPU VM, torch 2.13 CPU, inductor): ResNet-18 at
# batch 2, 64x64, first call 23 s for inference and 52 s for a training step, against 0.05 s per
# compiled call afterwards. That is more than the whole --quick run, so --quick skips it (and says so).
COMPILE_QUICK_SKIP = ("--quick skips it: compiling takes longer than the whole quick run (ResNet-18, batch 2, 64x64, "
                      "2 CPU cores: 23 s inference, 52 s training step); run without --quick")


def compile_unavailable(device: torch.device) -> Optional[str]:
    """Why torch.compile cannot run here, or None: dynamo unsupported on this Python, or (on the CPU,
    where inductor compiles C++) no C++ compiler on PATH."""
    try:
        import torch._dynamo as dynamo
    except Exception as e:  # noqa: BLE001
        return f"torch.compile unavailable: torch._dynamo does not import ({type(e).__name__}: {e})"
    if hasattr(dynamo, "is_dynamo_supported") and not dynamo.is_dynamo_supported():
        return "torch.compile unavailable: torch._dynamo does not support this Python/platform"
    if device.type == "cpu":
        cxx = [c for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c]
        if not any(shutil.which(c) for c in cxx):
            return "torch.compile unavailable: inductor needs a C++ compiler for the CPU and none is on PATH"
    return None


def fusion_info(model: torch.nn.Module) -> Optional[Dict[str, Any]]:
    """Which pass fused `model` and its fastconv_fusion_summary (counts per pattern), when it has one."""
    summary = getattr(model, "fastconv_fusion_summary", None)
    if summary is None:
        return None
    if hasattr(summary, "counts"):  # fastconv.fuse.FusionSummary
        return {"mode": getattr(summary, "mode", None), "counts": dict(summary.counts),
                "left_unfused": len(getattr(summary, "left", {}) or {})}
    return {"summary": summary if isinstance(summary, (dict, list, str, int)) else str(summary)}


def build_variant(model: torch.nn.Module, variant: str, train: bool) -> Optional[torch.nn.Module]:
    """`model` (fastconv.models builds fastconv layers; a torch.nn network works too) as benchmark
    variant `variant`, a new module on the same device and dtype. The one place the variants are made.

        eager          "torch eager": the network reverted to torch.nn, no fastconv layer in it
        converted      "fastconv": fastconv.convert() of that baseline (unfused)
        fused          "fastconv fused": converted, then fastconv.fuse_for_training (train=True) or
                       fastconv.fuse_for_inference (train=False, on the eval model): conv -> BN (-> ReLU)
                       and ResNet's relu(bn(conv(x)) + shortcut) as fastconv.fused.ConvBNAct2d
        torch.compile  torch.compile() of the baseline

    Raises NotImplementedError for fused with train=True while fastconv has no fuse_for_training
    (the runs report it as skipped, with this reason). The name before issue 15, converted+fused, is
    still accepted with its old meaning: fused for inference, None (does not apply) for training."""
    import fastconv

    if variant == "converted+fused":
        if train:
            return None
        variant = "fused"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant '{variant}'; choose one of {', '.join(VARIANTS)}")
    baseline = fastconv.revert(model)
    if variant == "eager":
        return baseline
    if variant == "converted":
        return fastconv.convert(baseline)
    if variant == "fused":
        converted = fastconv.convert(baseline)
        if not train:
            return fastconv.fuse_for_inference(converted.eval())
        fuse = getattr(fastconv, "fuse_for_training", None)
        if fuse is None:
            raise NotImplementedError("fastconv.fuse_for_training does not exist in this build yet (issue 15), so "
                                      "there is no fused training variant")
        return fuse(converted)
    return torch.compile(baseline)


def _variants(model: torch.nn.Module, s: Settings) -> List[tuple]:
    """(impl, variant, the module, or why not: the exception building it raised or a sentence) for
    every variant; torch.compile is left out only with --no-compile."""
    out = []
    for variant in VARIANTS:
        if variant == "torch.compile":
            if not s.compile:
                continue
            why = compile_unavailable(s.device) or (COMPILE_QUICK_SKIP if s.quick else None)
            if why:
                out.append((VARIANT_IMPL[variant], variant, why))
                continue
        try:
            built = build_variant(model, variant, s.mode == "train")
        except Exception as e:  # noqa: BLE001  (reported as skipped)
            built = e
        if built is not None:
            out.append((VARIANT_IMPL[variant], variant, built))
    return out


def run_models(s: Settings, progress: bool = True, log: Callable[[str], None] = lambda m: None) -> List[Dict[str, Any]]:
    """Times inference or one training step (forward + cross-entropy + backward + SGD) per variant."""
    dtype = cases.DTYPES[s.dtype]
    train = s.mode == "train"
    base_model = get_model(s.model).to(device=s.device, dtype=dtype)
    if s.layout == "nhwc":
        base_model = base_model.to(memory_format=torch.channels_last)
    variants = _variants(base_model, s)
    del base_model
    bar = _progress(len(variants) * len(s.batches), f"{s.mode} {s.model}", progress)
    records: List[Dict[str, Any]] = []
    for batch in s.batches:
        x = torch.randn(batch, *input_shape(s.model), device=s.device, dtype=dtype)
        if s.layout == "nhwc":
            x = x.contiguous(memory_format=torch.channels_last)
        ref_out, labels = None, None
        for impl, variant, model in variants:
            bar.set_postfix_str(f"b{batch} {variant}")
            base = {"kind": "model", "model": s.model, "layer": s.model, "label": f"{s.model} {s.mode}",
                    "pass": s.mode, "batch": batch, "dtype": s.dtype, "layout": s.layout, "device": str(s.device),
                    "group": f"{s.model}/{s.mode}/b{batch}/{s.dtype}/{s.layout}", "variant": variant}
            if isinstance(model, (Exception, str)):
                why = model if isinstance(model, str) else f"{type(model).__name__}: {model}"
                records.append(_record(base, impl, variant, None, 0, 0, skipped=why))
                bar.update(1)
                continue
            if variant == "fused":
                info = fusion_info(model) or {}
                base["fusion"] = dict(info, fuse="fuse_for_training" if train else "fuse_for_inference")
            try:
                model.eval()
                with torch.no_grad():
                    out = model(x)
                out = out[0] if isinstance(out, tuple) else out
                if variant == "eager":  # torch eager runs first: the reference
                    ref_out = out
                if labels is None:
                    labels = torch.randint(0, out.shape[-1], (batch,), device=s.device)
                err = cases.max_rel_error(out, ref_out) if ref_out is not None else None
                if train:
                    model.train()
                    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
                    state = copy_state(model)

                    def fn(model=model, opt=opt, x=x, labels=labels):
                        opt.zero_grad(set_to_none=True)
                        y = model(x)
                        y = y[0] if isinstance(y, tuple) else y
                        torch.nn.functional.cross_entropy(y.float(), labels).backward()
                        opt.step()
                else:
                    def fn(model=model, x=x):
                        with torch.no_grad():
                            return model(x)
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
