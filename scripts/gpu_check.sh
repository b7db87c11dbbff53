#!/usr/bin/env bash
# One-shot GPU validation: build with CUDA kernels, run every test (cuda ones included), run
# compute-sanitizer memcheck/racecheck on tiny cases, quick benchmark. Meant for a GPU machine
# with a CUDA build of torch already installed and no network; fits in one 10-minute call on an H100.
#
# Every step runs under `timeout` (its own cap, and never past the overall budget) and the script
# carries on after a failure; it exits non-zero at the end if any step failed or ran out of time.
# Outputs (at most 8 files, one folder level) go to $OUT if set, else ./gpu_results/:
#   build.log (build + `fastconv info`)  pytest.log  junit.xml  sanitizer.log  summary.json
#   bench.log  bench/ (the benchmark's own files; keep them to 2)
#
# Env: TORCH_CUDA_ARCH_LIST (default: this GPU's arch), MAX_JOBS (default 16), PYTHON (python),
# GPU_CHECK_BUDGET_S (default 560: the whole run, summary included, within a 10-minute call).
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
DEADLINE=$((START + ${GPU_CHECK_BUDGET_S:-560}))
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

# ---- 1. build (CUDA kernels forced on: a silent CPU-only build would skip every GPU test) -----------
: >"$RES/build.log"
FASTCONV_CUDA=1 run_step build 270 "$RES/build.log" \
  "$PYTHON" -m pip install --no-deps --no-build-isolation -v -e .

# ---- 2. what was built ---------------------------------------------------------------------------------
run_step info 30 "$RES/build.log" "$PYTHON" -m fastconv info

# ---- 3. full test suite, cuda tests included --------------------------------------------------------
: >"$RES/pytest.log"
run_step pytest 170 "$RES/pytest.log" \
  "$PYTHON" -m pytest tests -q -rfEs --durations=15 --junitxml="$RES/junit.xml" -p no:cacheprovider

# ---- 4. compute-sanitizer on tiny cases -------------------------------------------------------------
: >"$RES/sanitizer.log"
SANITIZER="$(command -v compute-sanitizer || true)"
if [ -z "$SANITIZER" ]; then
  for d in "${CUDA_HOME:-}" /usr/local/cuda; do
    if [ -n "$d" ] && [ -x "$d/bin/compute-sanitizer" ]; then SANITIZER="$d/bin/compute-sanitizer"; break; fi
  done
fi
if [ -n "$SANITIZER" ]; then
  # Without caching every tensor is its own cudaMalloc, so an out-of-bounds access inside one of
  # torch's pooled blocks is caught too. --error-exitcode fails the step even if pytest passed.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_step memcheck 80 "$RES/sanitizer.log" \
    "$SANITIZER" --tool memcheck --error-exitcode 99 --target-processes all \
    "$PYTHON" -m pytest tests/test_cuda_ops.py -q -p no:cacheprovider -k sanitize_subset
  # The kernels that use shared memory: the conv algorithms (tiled GEMMs) and the batch-norm
  # reductions.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_step racecheck 60 "$RES/sanitizer.log" \
    "$SANITIZER" --tool racecheck --racecheck-report hazard --error-exitcode 99 --target-processes all \
    "$PYTHON" -m pytest tests/test_cuda_ops.py -q -p no:cacheprovider -k "sanitize_subset and (conv or batch_norm)"
else
  echo "compute-sanitizer not found: memcheck and racecheck skipped" | tee -a "$RES/sanitizer.log"
  STEP_STATUS[memcheck]="skipped(no compute-sanitizer)"
  STEP_STATUS[racecheck]="skipped(no compute-sanitizer)"
fi

# ---- 5. quick benchmark, if the CLI has one ---------------------------------------------------------
if "$PYTHON" -m fastconv --help 2>/dev/null | grep -qw bench; then
  # bench writes results.json, report.md and bench.log; no PNGs, and its console output goes to
  # pytest.log, so the whole run stays within the 8 files the device tool brings back.
  mkdir -p "$RES/bench"
  run_step bench 90 "$RES/pytest.log" "$PYTHON" -m fastconv bench --quick --no-plots --out "$RES/bench"
else
  STEP_STATUS[bench]="skipped(no 'python -m fastconv bench')"
  echo "gpu_check: 'python -m fastconv bench' not available, benchmark skipped"
fi

# ---- 6. summary --------------------------------------------------------------------------------------
STEPS_JSON="{"
sep=""
for k in build info pytest memcheck racecheck bench; do
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
