#!/usr/bin/env bash
# Syntax-check the CUDA torch binding (csrc/torch/cuda_*.cpp: cuda_conv.cpp, cuda_pool_bn.cpp, cuda_fused.cpp) without a
# CUDA build of torch.
#
# The real build compiles these files only against a CUDA torch; this check runs where only a CPU
# build exists (CI, laptops) so binding mistakes surface before anyone reaches a GPU. It needs the
# CUDA toolkit headers (cuda_runtime_api.h, cuda_fp16.h, cuda_bf16.h) but no GPU and no libraries.
#
# A CPU build of torch ships c10/cuda/*.h but not the generated c10/cuda/impl/cuda_cmake_macros.h
# they include, so a one-line stand-in is put on the include path AFTER torch's own (a CUDA torch's
# real header wins when present).
#
# Env: PYTHON (default python3), CXX (default g++), CXXSTD (default c++17), CUDA_HOME (default:
# from nvcc's location, else /usr/local/cuda).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
CXX="${CXX:-g++}"
CXXSTD="${CXXSTD:-c++17}"

mapfile -t TORCH_INC < <("$PYTHON" -c 'import torch.utils.cpp_extension as c; print("\n".join(c.include_paths()))')
if [ "${#TORCH_INC[@]}" -eq 0 ]; then
  echo "check_cuda_binding: could not get torch include paths from $PYTHON" >&2
  exit 1
fi

# CUDA include dir: $CUDA_HOME, else the toolkit that owns nvcc (following wrapper scripts and
# symlinks via the TOP that `nvcc --dryrun` reports), else /usr/local/cuda.
cuda_include() {
  if [ -n "${CUDA_HOME:-}" ] && [ -f "$CUDA_HOME/include/cuda_runtime_api.h" ]; then
    echo "$CUDA_HOME/include"; return
  fi
  if command -v nvcc >/dev/null 2>&1; then
    local top
    top="$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n1 || true)"
    if [ -n "$top" ] && [ -f "$top/include/cuda_runtime_api.h" ]; then
      (cd "$top/include" && pwd); return
    fi
    local bin
    bin="$(dirname "$(readlink -f "$(command -v nvcc)")")"
    if [ -f "$bin/../include/cuda_runtime_api.h" ]; then
      (cd "$bin/../include" && pwd); return
    fi
  fi
  if [ -f /usr/local/cuda/include/cuda_runtime_api.h ]; then
    echo /usr/local/cuda/include; return
  fi
  return 1
}
if ! CUDA_INC="$(cuda_include)"; then
  echo "check_cuda_binding: CUDA toolkit headers not found (set CUDA_HOME)" >&2
  exit 1
fi

SHIM="$(mktemp -d)"
trap 'rm -rf "$SHIM"' EXIT
mkdir -p "$SHIM/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$SHIM/c10/cuda/impl/cuda_cmake_macros.h"

# torch and CUDA headers as system headers: their own warnings are not ours to fix; ours are errors.
SYS_INC=()
PY_INC="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
for d in "${TORCH_INC[@]}" "$CUDA_INC" "$SHIM" "$PY_INC"; do SYS_INC+=(-isystem "$d"); done

# Every csrc/torch/cuda_*.cpp is checked; these must exist (a missing one would otherwise pass silently).
for required in csrc/torch/cuda_conv.cpp csrc/torch/cuda_pool_bn.cpp csrc/torch/cuda_fused.cpp; do
  if [ ! -f "$required" ]; then
    echo "check_cuda_binding: missing $required" >&2
    exit 1
  fi
done

shopt -s nullglob
# ops.cpp too: on a CUDA build it exposes the binding's cuda_conv_query (csrc/torch/cuda_query_py.h).
SRCS=(csrc/torch/cuda_*.cpp csrc/torch/ops.cpp)
if [ "${#SRCS[@]}" -eq 0 ]; then
  echo "check_cuda_binding: no csrc/torch/cuda_*.cpp to check" >&2
  exit 1
fi

status=0
for src in "${SRCS[@]}"; do
  echo "check_cuda_binding: $CXX -std=$CXXSTD -fsyntax-only $src (CUDA headers: $CUDA_INC)"
  if ! "$CXX" -std="$CXXSTD" -fsyntax-only -Wall -Wextra -Werror -DFASTCONV_WITH_CUDA \
      "${SYS_INC[@]}" -Icsrc/include -Icsrc/torch "$src"; then
    echo "check_cuda_binding: FAILED $src" >&2
    status=1
  fi
done
[ "$status" -eq 0 ] && echo "check_cuda_binding: OK (${#SRCS[@]} file(s))"
exit "$status"
