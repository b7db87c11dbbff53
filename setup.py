"""Build fastconv._C: CPU kernels always; CUDA kernels when torch is a CUDA build and nvcc exists.

Environment overrides:
  FASTCONV_CUDA=0|1          force the CUDA kernels off / on (1 fails loudly if impossible)
  FASTCONV_CUDA_ARCH="8.0;9.0a"  archs to compile for (default: TORCH_CUDA_ARCH_LIST, else 8.0;9.0a)
  MAX_JOBS                   parallel compile jobs (ninja)
"""

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(msg: str) -> None:
    print(f"[fastconv build] {msg}", file=sys.stderr, flush=True)


def _cuda_decision():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    env = os.environ.get("FASTCONV_CUDA", "").strip()
    torch_cuda = torch.version.cuda
    nvcc = None
    if CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        nvcc = os.path.join(CUDA_HOME, "bin", "nvcc")
    elif shutil.which("nvcc"):
        nvcc = shutil.which("nvcc")
    capable = torch_cuda is not None and nvcc is not None
    why = f"torch {torch.__version__} (CUDA {torch_cuda}), nvcc {'at ' + nvcc if nvcc else 'not found'}"
    if env == "0":
        return False, f"FASTCONV_CUDA=0 ({why})"
    if env == "1":
        if not capable:
            raise RuntimeError(f"FASTCONV_CUDA=1 but CUDA kernels cannot be built: {why}")
        return True, f"FASTCONV_CUDA=1 ({why})"
    return capable, why


def _extensions():
    import torch  # noqa: F401  (the build needs torch: pip install --no-build-isolation)
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    with_cuda, why = _cuda_decision()
    sources = sorted(glob.glob("csrc/torch/ops.cpp") + glob.glob("csrc/torch/cpu_*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc", "torch")]
    cxx = ["-O3", "-fopenmp"]  # the C++ standard is the one torch asks for
    define_macros = []
    if with_cuda:
        archs = os.environ.get("FASTCONV_CUDA_ARCH") or os.environ.get("TORCH_CUDA_ARCH_LIST") or "8.0;9.0a"
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        sources += sorted(glob.glob("csrc/torch/cuda_*.cpp") + glob.glob("csrc/cuda/*.cu"))
        define_macros += [("FASTCONV_WITH_CUDA", None), ("FASTCONV_CUDA_ARCHS", f'"{archs}"')]
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr",
                "-Xptxas=--warn-on-spills"]
        _log(f"building CPU + CUDA kernels for archs {archs}: {why}")
        ext = CUDAExtension("fastconv._C", sources, include_dirs=include_dirs, define_macros=define_macros,
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"])
    else:
        _log(f"building CPU kernels only: {why}")
        ext = CppExtension("fastconv._C", sources, include_dirs=include_dirs, define_macros=define_macros,
                           extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    return [ext]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(ext_modules=_extensions(), cmdclass=_cmdclass())
