#!/usr/bin/env bash
# The kernel sources differ between nvcc and the emulated CUDA device only through the seams:
# inline PTX lives in csrc/cuda/ptx.cuh alone, kernels launch through FC_LAUNCH and declare shared
# memory through FC_SHARED / FC_DYNAMIC_SHARED (csrc/cuda/seams.cuh). Fails listing every bypass.
set -euo pipefail
cd "$(dirname "$0")/../csrc"
fail=0
report() { echo "check_seams: $1"; echo "$2" | sed 's/^/  /'; fail=1; }
hits=$(grep -nE '\basm\b|__asm__' cuda/*.cu cuda/*.cuh dev/*.cu | grep -v '^cuda/ptx.cuh:' || true)
[ -z "$hits" ] || report "inline PTX outside csrc/cuda/ptx.cuh:" "$hits"
hits=$(grep -n '<<<' cuda/*.cu cuda/*.cuh | grep -v '^cuda/seams.cuh:' || true)
[ -z "$hits" ] || report "a kernel launch that bypasses FC_LAUNCH:" "$hits"
hits=$(grep -n '__shared__' cuda/*.cu cuda/*.cuh | grep -v '^cuda/seams.cuh:' || true)
[ -z "$hits" ] || report "shared memory declared without FC_SHARED / FC_DYNAMIC_SHARED:" "$hits"
[ $fail -eq 0 ] && echo "check_seams: no asm outside ptx.cuh, every launch through FC_LAUNCH, every __shared__ through FC_SHARED"
exit $fail
