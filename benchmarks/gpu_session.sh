#!/usr/bin/env bash
# One call on a lent GPU machine: build against its torch, run every test (GPU-marked ones
# included), then the benchmark; results land in $OUT (or benchmarks/results/tmp-gpu).
#   bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/tmp-gpu}"
mkdir -p "$out"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$out/env.txt" 2>&1
pip install --no-build-isolation -e . > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
# C++ kernel tests against a CPU computation (tests/cpp/*.cu), when cmake is there.
if command -v cmake > /dev/null; then
  { cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
      -DCMAKE_PREFIX_PATH="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')" &&
    cmake --build build/cmake -j "$MAX_JOBS" &&
    ctest --test-dir build/cmake --output-on-failure; } > "$out/ctest.log" 2>&1
  echo "ctest rc=$?" >> "$out/ctest.log"
  tail -3 "$out/ctest.log"
fi
python -m pytest -q -p no:warnings > "$out/tests.log" 2>&1
echo "tests rc=$?" >> "$out/tests.log"
tail -5 "$out/tests.log"
python benchmarks/bench_loss.py --device cuda --json "$out/bench.json" > "$out/bench.md" 2> "$out/bench.err"
cat "$out/env.txt" "$out/bench.md"
