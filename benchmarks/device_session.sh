#!/usr/bin/env bash
# A GPU session's prepared work (issue 15) on the device tool's H200, in two `run`
# calls that each stay under the 10-minute limit of one command; everything goes to $OUT:
#
#   bash benchmarks/device_session.sh build   # sm_90 build, then every CUDA test      (~5 min)
#   bash benchmarks/device_session.sh bench   # benchmarks/gpu.py's parts and a profile (~8 min)
#
# The machine keeps the installed build between the two while it stays warm (30 s idle);
# bench rebuilds when faceops is not importable there.  pytorch-metric-learning is not in
# the machine's image: put its wheel in .whl (the device tool's README says how) and name
# .whl in `carry`; bench then runs the pml peer too.
set -uo pipefail
out="${OUT:?run this through the device tool, which sets OUT}"
stage="${1:?usage: device_session.sh build|bench}"

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi

build() {
  nvidia-smi >"$out/nvidia-smi.txt" 2>&1
  FACEOPS_CUDA=ON CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90" CMAKE_BUILD_PARALLEL_LEVEL=16 \
    timeout 360 python3 -m pip install -v --no-build-isolation --no-deps . >"$out/build.log" 2>&1 \
    || { tail -n 40 "$out/build.log"; exit 1; }
  python3 -c "import faceops; assert faceops.cuda_available(), 'no CUDA kernels'; print('faceops CUDA ok')"
}

case "$stage" in
  build)
    build
    # The CUDA tests: tests/test_cuda.py, tests/test_torch_cuda.py and every test
    # parametrised over the device (ids with "cuda").
    timeout 220 python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_cuda.py tests/test_torch_cuda.py >"$out/cuda_tests.txt" 2>&1
    timeout 120 python3 -m pytest -q -n 8 -p no:cacheprovider -k cuda tests \
      --deselect tests/test_cuda.py --deselect tests/test_torch_cuda.py >>"$out/cuda_tests.txt" 2>&1
    grep -E "passed|failed|error" "$out/cuda_tests.txt" | tail -n 4
    ;;
  bench)
    python3 -c "import faceops; assert faceops.cuda_available()" 2>/dev/null || build
    timeout 240 python3 benchmarks/gpu_pairwise.py --out "$out/gpu_pairwise.json" >"$out/gpu_pairwise.log" 2>&1
    timeout 60 python3 benchmarks/gpu.py --only center >"$out/center.txt" 2>&1
    timeout 120 python3 benchmarks/gpu.py --only margin_softmax >"$out/margin_softmax.txt" 2>&1
    timeout 90 python3 benchmarks/gpu.py --only torch_step --quick >"$out/torch_step.txt" 2>&1
    # Speed of light of each faceops kernel at N = 1024, D = 128 (docs/profiling.md says how to read it).
    timeout 90 ncu --clock-control none --kernel-name regex:'_kernel$' --launch-count 40 --section SpeedOfLight \
      --csv python3 benchmarks/gpu_pairwise.py --sizes quick --repeats 1 --no-compile --out /tmp/profiled.json \
      >"$out/ncu_speed_of_light.csv" 2>"$out/ncu.log"
    python3 - "$out/gpu_pairwise.json" <<'EOF'
import json, sys
for row in json.load(open(sys.argv[1]))["rows"]:
    ms = lambda name: row.get(name, {}).get("ms", float("nan"))
    diff = row.get("tf32x3_max_rel_diff")
    print(f"{row['loss']:17s} N={row['n']:6d} D={row['d']:4d} faceops fp32 {ms('faceops_fp32'):8.3f} ms "
          f"tf32x3 {ms('faceops_fp32_tf32x3'):8.3f} (diff {float('nan') if diff is None else diff:.1e}) "
          f"bf16 {ms('faceops_bf16'):8.3f} | x{row.get('ratio_fp32', float('nan')):.2f} fp32, "
          f"x{row.get('ratio_bf16', float('nan')):.2f} bf16 | bound fp32 {row['bound_ms']['float32']:.3f} ms")
EOF
    tail -n 3 "$out"/center.txt "$out"/margin_softmax.txt
    ;;
  *)
    echo "usage: device_session.sh build|bench" >&2
    exit 2
    ;;
esac
