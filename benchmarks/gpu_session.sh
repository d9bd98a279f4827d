#!/usr/bin/env bash
# One call on a lent GPU machine (an H100/H200 with torch, Triton, nvcc, no registry):
# build, the GPU tests in parallel, the benchmarks and a per-kernel profile, in one go.
#
#   bash benchmarks/gpu_session.sh            # everything, < 8 minutes on an H200
#   bash benchmarks/gpu_session.sh --quick    # tuning round: build, loss-kernel GPU tests,
#                                             # the loss benchmark at paper size (< 4 min)
#   bash benchmarks/gpu_session.sh --triage   # also benchmarks/gpu_triage.py (~1 min)
#   bash benchmarks/gpu_session.sh --dry-run  # no GPU: check the tools import, print the plan
#
# Results go to $OUT (the device tool's folder) or benchmarks/results/tmp-gpu: summary.md
# (versions, one line per step with its status and time, the tests' summary line, the
# tables), the benchmark JSON, and session.tgz with every log. Each step has a time limit
# so that a hang cannot eat the machine's time; a failed step does not stop the others.
# PIXCONTRAST_COMMIT names the commit where the copy has no .git.
set -uo pipefail
cd "$(dirname "$0")/.."

quick=0 dry=0 triage=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --dry-run) dry=1 ;;
    --triage) triage=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_session.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

out="${OUT:-benchmarks/results/tmp-gpu}"
work="$(mktemp -d)"
mkdir -p "$out"
# Written as it goes, straight to $out: a session cut short still says how far it got.
summary="$out/summary.md"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
export PYTHONUNBUFFERED=1 PIXCONTRAST_COMMIT="${PIXCONTRAST_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
unset TRITON_INTERPRET
py=python3
t_start=$(date +%s)

# step NAME LIMIT_S CMD...: run with a time limit, log to $work/NAME.log, one summary line.
step() {
  local name=$1 limit=$2 t0 rc
  shift 2
  if [ "$dry" = 1 ]; then
    echo "- plan: $name (limit ${limit} s): $*" | tee -a "$summary"
    return 0
  fi
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$work/$name.log" 2>&1
  rc=$?
  local status=ok
  [ $rc = 124 ] || [ $rc = 137 ] && status="TIMEOUT after ${limit} s"
  [ $rc != 0 ] && [ "$status" = ok ] && status="FAILED (rc=$rc)"
  printf -- '- %s: %s, %d s (at %d s)\n' "$name" "$status" "$(( $(date +%s) - t0 ))" \
    "$(( $(date +%s) - t_start ))" | tee -a "$summary"
  for f in "$work"/*.json "$work"/*.xml; do [ -f "$f" ] && cp "$f" "$out/"; done
  return $rc
}

{
  echo "# pixcontrast GPU session $(date -u +%Y-%m-%dT%H:%MZ), commit $PIXCONTRAST_COMMIT"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | head -3
  $py -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__)" 2>&1
  nvcc --version 2>&1 | tail -1
  $py -m pip --version 2>&1
  echo "cpus $(nproc); TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS; mode: quick=$quick triage=$triage dry=$dry"
  echo '```'
  echo
} > "$summary"
cat "$summary"

if [ "$dry" = 1 ]; then
  # What CI checks on a machine without a GPU: the scripts parse and import.
  for tool in benchmarks/bench_loss.py benchmarks/bench_sampling.py \
              benchmarks/bench_memory_bank.py benchmarks/profile_loss.py \
              benchmarks/gpu_triage.py benchmarks/aot_kernels.py; do
    $py "$tool" --help > /dev/null || { echo "dry run: $tool --help failed" >&2; exit 1; }
  done
  echo "- dry run: the session's tools import and parse their options" | tee -a "$summary"
fi

# 1. Build against the machine's torch (pyproject.toml: PEP 660 editable, no registry).
step build 300 $py -m pip install --no-build-isolation --no-deps --no-index -e . ||
  { tail -30 "$work/build.log"; tar czf "$out/session.tgz" -C "$work" .; exit 1; }

# 2. The C++ kernel tests (tests/cpp/*.cu) build in the background while the tests run.
if [ "$quick" = 0 ] && command -v cmake > /dev/null; then
  prefix=$($py -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null)
  if [ "$dry" = 1 ]; then
    echo "- plan: ctest (cmake -DCMAKE_CUDA_ARCHITECTURES=90, built in the background)" | tee -a "$summary"
  else
    ( cmake -S . -B build/gpu-cmake -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DCMAKE_PREFIX_PATH="$prefix" && cmake --build build/gpu-cmake -j 6 ) \
        > "$work/cmake.log" 2>&1 &
    cmake_pid=$!
  fi
fi

# 3. Optional triage of a CUDA fault (each probe in a fresh process).
if [ "$triage" = 1 ]; then
  step triage 150 $py benchmarks/gpu_triage.py --timeout 60
  [ "$dry" = 1 ] || cat "$work/triage.log"
fi

# 4. GPU tests, 8 workers; a worker whose CUDA context a fault killed is replaced
#    (tests/conftest.py charges the fault to the test that caused it).
if [ "$quick" = 1 ]; then tests=(tests/test_infonce_gpu.py tests/test_infonce_triton_kernels.py); limit=150; else tests=(tests); limit=240; fi
step gpu-tests "$limit" $py -m pytest -m gpu -n 8 --max-worker-restart 32 -q -p no:cacheprovider \
  -rfE --junitxml="$work/gpu-tests.xml" "${tests[@]}"
[ "$dry" = 1 ] || { echo '```'; grep -E '^(FAILED|ERROR) ' "$work/gpu-tests.log" | head -40;
                    tail -1 "$work/gpu-tests.log"; echo '```'; } | tee -a "$summary"
# 4b. If a cuda-backend loss test failed: the same tests without the band kernel (issue 15
#     v2.2, never run on a GPU before), to tell its faults from the rest.
if [ "$dry" = 1 ] || grep -qE '^(FAILED|ERROR) .*cuda' "$work/gpu-tests.log"; then
  PIXCONTRAST_CUDA_BAND=0 step gpu-tests-no-band 120 $py -m pytest -m gpu -n 8 \
    --max-worker-restart 32 -q -p no:cacheprovider -rfE -k 'cuda and (infonce or supcon)' tests
  [ "$dry" = 1 ] || { echo '```'; grep -E '^(FAILED|ERROR) ' "$work/gpu-tests-no-band.log" |
                      head -20; tail -1 "$work/gpu-tests-no-band.log"; echo '```'; } | tee -a "$summary"
fi

if [ "$quick" = 0 ]; then
  # 5. Sampling, the bank update, and both in one step, eager.
  step bench-sampling 90 $py benchmarks/bench_sampling.py --device cuda \
    --json "$work/bench-sampling.json"
  [ "$dry" = 1 ] || cat "$work/bench-sampling.log" >> "$summary"
  step bench-memory-bank 60 $py benchmarks/bench_memory_bank.py --device cuda \
    --json "$work/bench-memory-bank.json"
  [ "$dry" = 1 ] || cat "$work/bench-memory-bank.log" >> "$summary"
  # 6. Where one loss step's time goes, per kernel, per GPU backend (bf16).
  step profile 100 $py benchmarks/profile_loss.py --device cuda --dtype bfloat16 \
    --json "$work/profile.json" --md "$work/profile.md"
  [ "$dry" = 1 ] || cat "$work/profile.md" >> "$summary" 2>/dev/null
fi

if [ "$quick" = 0 ]; then
  # 7. The C++ kernel tests (built in the background since step 2).
  if [ -n "${cmake_pid:-}" ]; then
    # at most a minute more for the background build
    timeout 60 tail --pid="$cmake_pid" -f /dev/null
    if kill -0 "$cmake_pid" 2> /dev/null; then
      kill "$cmake_pid"; echo "- ctest: not run, the CMake build did not finish in time" | tee -a "$summary"
    else
      wait "$cmake_pid"; echo "cmake build rc=$?" >> "$work/cmake.log"
      step ctest 60 ctest --test-dir build/gpu-cmake --output-on-failure
    fi
    [ -f "$work/ctest.log" ] && tail -3 "$work/ctest.log" >> "$summary"
  fi
fi


# 8. The loss benchmark at paper size, every mode (strict fp32, TF32, bf16), against the
#    unfused formulation and the GEMM rate of each mode measured in the same run.
if [ "$quick" = 1 ]; then wl=(--workload paper-bank); else
  wl=(--workload paper-bank --workload paper-mem-config); fi
step bench-loss 200 $py benchmarks/bench_loss.py --device cuda "${wl[@]}" \
  --provider unfused --provider pixcontrast-triton --provider pixcontrast-cuda \
  --json "$work/bench-loss.json"
[ "$dry" = 1 ] || { grep -v '^\[' "$work/bench-loss.log" | grep -v '^timing round' ; } >> "$summary"

if [ "$quick" = 0 ]; then
  # 9. Mining and SupCon (docs/design.md §2.8) at N = 120, bf16, Triton: predicted 10-170 ms
  #    a call at paper size, so the small workload and few repeats.
  step bench-mining 90 $py benchmarks/bench_loss.py --device cuda --workload paper-mem-config \
    --dtype bfloat16 --provider pixcontrast-triton --variant hardest --variant semi-hard \
    --variant supcon --repeats 5 --json "$work/bench-mining.json"
  [ "$dry" = 1 ] || { grep -v '^\[' "$work/bench-mining.log" | grep -v '^timing round' ; } >> "$summary"
fi

echo "- total: $(( $(date +%s) - t_start )) s" | tee -a "$summary"
tar czf "$out/session.tgz" -C "$work" .
echo
cat "$summary"
