#!/usr/bin/env bash
# One-shot GPU validation for a lent GPU (an H200 with 15 device-minutes per session, start-up
# included): one call must finish in <= 8 minutes so that a rerun still fits. Order = most telling
# first, cheapest first:
#   1. the prebuilt torch-free harnesses (csrc/build/gpu/dev/*: built on the CPU machine with
#      `make -C csrc gpu-bins` for sm_90a and carried): correctness + timings of every kernel family
#      and the PTX conformance test (hardware vs the ISA tables the emulator follows) in the first
#      minute, even if the extension build fails;
#   2. the extension, built for this GPU's arch only (FASTCONV_CUDA=1, no emulated device);
#   3. the `cuda` tests (the rest of the suite is CPU-only and runs in CI);
#   4. compute-sanitizer memcheck/racecheck on tiny cases;  5. the quick benchmark (on an sm_90 GPU instead:
#      the Hopper engine vs implicit_gemm vs cuDNN on every ResNet-50 layer, fprop, bf16, batch 256).
# Every step runs under `timeout` (its own cap, and never past the overall budget) and the script
# carries on after a failure; it exits non-zero at the end if any step failed or ran out of time.
# Outputs (8 files, one folder level) go to $OUT if set, else ./gpu_results/:
#   harness.log (harnesses + compute-sanitizer)  build.log (build + `fastconv info`)  pytest.log
#   junit.xml  summary.json  bench/ (results.json, report.md, bench.log)
#
# The device call (README "Building with CUDA"): run(command="bash scripts/gpu_check.sh",
#   carry=["csrc/build/gpu/dev"], timeout_s=540).
# GPU_CHECK_DRY_RUN=1 checks here, without a GPU, everything up to the first GPU use.
# Env: TORCH_CUDA_ARCH_LIST (default: this GPU's arch), MAX_JOBS (default 16), PYTHON (python),
# GPU_CHECK_BUDGET_S (default 470: the whole run, summary included).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
RES="${OUT:-$ROOT/gpu_results}"
mkdir -p "$RES"
export MAX_JOBS="${MAX_JOBS:-16}"
export PYTHONUNBUFFERED=1

declare -A STEP_STATUS=()
FAILED=0
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECK_BUDGET_S:-470}))
SUMMARY_RESERVE_S=20

# run_step NAME TIMEOUT_S LOG cmd...  (appends to LOG; records pass/fail/timeout). The timeout is
# cut to what is left of the budget so later steps (and the summary) always get to run.
run_step() {
  local name="$1" limit="$2" log="$3"
  shift 3
  local t0 rc left
  t0=$(date +%s)
  left=$((DEADLINE - SUMMARY_RESERVE_S - t0))
  if [ "$left" -lt "$limit" ]; then limit="$left"; fi
  if [ "$limit" -lt 5 ]; then
    echo "=== [$name] skipped: out of time budget" | tee -a "$log"
    STEP_STATUS[$name]="timeout(no budget left)"
    FAILED=1
    return
  fi
  echo "=== [$name] $* (timeout ${limit}s)" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then
    STEP_STATUS[$name]="pass"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    STEP_STATUS[$name]="timeout"
    FAILED=1
  else
    STEP_STATUS[$name]="fail(rc=$rc)"
    FAILED=1
  fi
  echo "=== [$name] ${STEP_STATUS[$name]} in $(($(date +%s) - t0))s" | tee -a "$log"
}

# ---- dry run (on the CPU machine): what the device call needs is here and small enough ------------------
if [ "${GPU_CHECK_DRY_RUN:-0}" = "1" ]; then
  ok=0
  bins=$(find "$ROOT/csrc/build/gpu/dev" -maxdepth 1 -type f -perm -u+x 2>/dev/null | sort)
  [ -n "$bins" ] || { echo "dry run: no prebuilt harnesses in csrc/build/gpu/dev (make -C csrc gpu-bins)"; ok=1; }
  for b in $bins; do
    if command -v cuobjdump >/dev/null 2>&1 && ! cuobjdump --list-elf "$b" 2>/dev/null | grep -q sm_90a; then
      echo "dry run: $b has no sm_90a code"; ok=1
    else
      echo "dry run: prebuilt $(basename "$b") ($(du -h "$b" | cut -f1))"
    fi
  done
  tree_kb=$(( $(git ls-files -z | xargs -0 du -k 2>/dev/null | awk '{s+=$1} END {print s}') + $(du -sk csrc/build/gpu/dev 2>/dev/null | cut -f1 || echo 0) ))
  echo "dry run: tracked tree + carried binaries ~ ${tree_kb} KiB (limit 65536)"
  [ "$tree_kb" -lt 65536 ] || ok=1
  bash -n "$0" && echo "dry run: script syntax ok"
  "$PYTHON" -c "import fastconv, sys; print('dry run: fastconv imports; the summary step will run')" || ok=1
  [ $ok -eq 0 ] && echo "dry run: ready for the device call" || echo "dry run: NOT ready"
  exit $ok
fi

# ---- 0. the machine ---------------------------------------------------------------------------------
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST="$("$PYTHON" -c 'import torch
major, minor = torch.cuda.get_device_capability()
# sm_90 gets the arch-specific 9.0a (wgmma/TMA) variant, like the default build list.
print(f"{major}.{minor}" + ("a" if (major, minor) == (9, 0) else ""))' 2>/dev/null || true)"
fi
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  echo "gpu_check: could not query the GPU's compute capability (no GPU or CPU-only torch?)" >&2
  TORCH_CUDA_ARCH_LIST="8.0;9.0a"
fi
export TORCH_CUDA_ARCH_LIST
echo "gpu_check: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS results in $RES"

# ---- 1. the prebuilt harnesses: no build, no torch -------------------------------------------------
: >"$RES/harness.log"
HARNESSES=$(find "$ROOT/csrc/build/gpu/dev" -maxdepth 1 -type f -perm -u+x 2>/dev/null | sort)
if [ -z "$HARNESSES" ]; then
  echo "no prebuilt harnesses in csrc/build/gpu/dev (carry them: make -C csrc gpu-bins)" | tee -a "$RES/harness.log"
  STEP_STATUS[harnesses]="skipped(not carried)"
else
  for h in $HARNESSES; do
    run_step "harness_$(basename "$h")" 60 "$RES/harness.log" "$h"
  done
  STEP_STATUS[harnesses]="pass"
  for h in $HARNESSES; do
    case "${STEP_STATUS[harness_$(basename "$h")]}" in pass) ;; *) STEP_STATUS[harnesses]="fail" ;; esac
  done
fi

# ---- 2. build for this GPU only (CUDA kernels forced on: a silent CPU-only build skips every GPU test) --
: >"$RES/build.log"
FASTCONV_CUDA=1 FASTCONV_EMU=0 run_step build 200 "$RES/build.log" \
  "$PYTHON" -m pip install --no-deps --no-build-isolation -v -e .

# ---- 2. what was built ---------------------------------------------------------------------------------
run_step info 30 "$RES/build.log" "$PYTHON" -m fastconv info

# ---- 3. full test suite, cuda tests included --------------------------------------------------------
: >"$RES/pytest.log"
run_step pytest 120 "$RES/pytest.log" \
  "$PYTHON" -m pytest tests -m cuda -q -rfEs --durations=15 --junitxml="$RES/junit.xml" -p no:cacheprovider

# ---- 4. compute-sanitizer on tiny cases -------------------------------------------------------------
SANITIZER="$(command -v compute-sanitizer || true)"
if [ -z "$SANITIZER" ]; then
  for d in "${CUDA_HOME:-}" /usr/local/cuda; do
    if [ -n "$d" ] && [ -x "$d/bin/compute-sanitizer" ]; then SANITIZER="$d/bin/compute-sanitizer"; break; fi
  done
fi
if [ -n "$SANITIZER" ]; then
  # Without caching every tensor is its own cudaMalloc, so an out-of-bounds access inside one of
  # torch's pooled blocks is caught too. --error-exitcode fails the step even if pytest passed.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_step memcheck 50 "$RES/harness.log" \
    "$SANITIZER" --tool memcheck --error-exitcode 99 --target-processes all \
    "$PYTHON" -m pytest tests/test_cuda_ops.py -q -p no:cacheprovider -k sanitize_subset
  # The kernels that use shared memory: the conv algorithms (tiled GEMMs) and the batch-norm
  # reductions.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_step racecheck 40 "$RES/harness.log" \
    "$SANITIZER" --tool racecheck --racecheck-report hazard --error-exitcode 99 --target-processes all \
    "$PYTHON" -m pytest tests/test_cuda_ops.py -q -p no:cacheprovider -k "sanitize_subset and (conv or batch_norm)"
else
  echo "compute-sanitizer not found: memcheck and racecheck skipped" | tee -a "$RES/harness.log"
  STEP_STATUS[memcheck]="skipped(no compute-sanitizer)"
  STEP_STATUS[racecheck]="skipped(no compute-sanitizer)"
fi

# ---- 5. quick benchmark, if the CLI has one ---------------------------------------------------------
if "$PYTHON" -m fastconv --help 2>/dev/null | grep -qw bench; then
  # bench writes results.json, report.md and bench.log; no PNGs, and its console output goes to
  # pytest.log, so the whole run stays within the 8 files the device tool brings back.
  mkdir -p "$RES/bench"
  if [ "$TORCH_CUDA_ARCH_LIST" = "9.0a" ]; then
    # An H100/H200: the Hopper engine's per-layer comparison with cuDNN (issue 16): every ResNet-50
    # layer, fprop, bf16 NHWC, batch 256, the sm_80 and sm_90 tensor-core paths beside cuDNN.
    run_step bench 60 "$RES/pytest.log" "$PYTHON" -m fastconv bench --model resnet50 --batch 256 --dtype bf16 \
      --layout nhwc --passes fprop --algos implicit_gemm,implicit_gemm_sm90 --rounds 5 --max-time 0.5 \
      --no-plots --no-progress --out "$RES/bench"
  else
    run_step bench 45 "$RES/pytest.log" "$PYTHON" -m fastconv bench --quick --no-plots --out "$RES/bench"
  fi
else
  STEP_STATUS[bench]="skipped(no 'python -m fastconv bench')"
  echo "gpu_check: 'python -m fastconv bench' not available, benchmark skipped"
fi

# ---- 6. summary --------------------------------------------------------------------------------------
STEPS_JSON="{"
sep=""
for k in harnesses build info pytest memcheck racecheck bench; do
  STEPS_JSON+="$sep\"$k\": \"${STEP_STATUS[$k]:-not run}\""
  sep=", "
done
STEPS_JSON+="}"
GIT_COMMIT="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
GIT_DIRTY="$(git status --porcelain 2>/dev/null | head -c1 | wc -c)"
RES="$RES" STEPS_JSON="$STEPS_JSON" GIT_COMMIT="$GIT_COMMIT" GIT_DIRTY="$GIT_DIRTY" \
ELAPSED="$(($(date +%s) - START))" ARCHS="$TORCH_CUDA_ARCH_LIST" FAILED="$FAILED" \
timeout 60 "$PYTHON" - <<'EOF' || FAILED=1
import datetime, json, os, platform
import xml.etree.ElementTree as ET

res = os.environ["RES"]
summary = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "git_commit": os.environ["GIT_COMMIT"],
    "git_dirty": os.environ["GIT_DIRTY"] != "0",
    "host": platform.node(),
    "torch_cuda_arch_list": os.environ["ARCHS"],
    "elapsed_s": int(os.environ["ELAPSED"]),
    "steps": json.loads(os.environ["STEPS_JSON"]),
    "ok": os.environ["FAILED"] == "0",
}
try:
    import torch
    summary["torch"] = torch.__version__
    summary["torch_cuda"] = torch.version.cuda
    summary["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if torch.cuda.is_available():
        summary["device"] = torch.cuda.get_device_name(0)
        summary["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        summary["driver_cuda"] = getattr(torch._C, "_cuda_getDriverVersion", lambda: None)()
except Exception as e:  # report, never fail the summary on it
    summary["torch_error"] = repr(e)
try:
    import fastconv._ext as ext
    summary["fastconv_built_with_cuda"] = ext.built_with_cuda()
    summary["fastconv_cuda_archs"] = ext.cuda_arch_list()
except Exception as e:
    summary["fastconv_error"] = repr(e)
counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
try:
    root = ET.parse(os.path.join(res, "junit.xml")).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    for s in suites:
        for k in ("tests", "failures", "errors", "skipped"):
            counts[{"failures": "failed"}.get(k, k)] += int(s.get(k, 0))
    counts["passed"] = counts["tests"] - counts["failed"] - counts["errors"] - counts["skipped"]
except Exception as e:
    counts["junit_error"] = repr(e)
summary["pytest"] = counts
n_files = sum(len(files) for _, _, files in os.walk(res)) + (0 if os.path.exists(os.path.join(res, "summary.json")) else 1)
summary["output_files"] = n_files
if n_files > 8:
    summary["warning"] = f"{n_files} output files: over the 8-file transfer limit, some may not come back"
with open(os.path.join(res, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(json.dumps(summary, indent=2))
EOF

echo "gpu_check: results in $RES ($(find "$RES" -type f | wc -l) files)"
if [ "$FAILED" -ne 0 ]; then
  echo "gpu_check: FAILED steps: $STEPS_JSON" >&2
  exit 1
fi
echo "gpu_check: all steps passed"
