#!/bin/sh
# Runs the CUDA kernels on the CPU (cuda_runtime.h here emulates the runtime)
# and checks them against the CPU implementation.  Needs g++ >= 11 and OpenMP;
# no GPU, no nvcc.  ./run.sh --tsan adds ThreadSanitizer (catches a missing
# __syncthreads; slower).  Usage: cuda/emulation/run.sh [--tsan]
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
flags="-std=c++20 -O1 -g -fopenmp -DFACEOPS_CUDA_EMULATION"
[ "${1:-}" = "--tsan" ] && flags="$flags -fsanitize=thread"
for f in "$root"/cuda/*.cu; do
  g++ $flags -x c++ -I"$root/cuda/emulation" -I"$root/csrc" -c "$f" -o "$build/cuda_$(basename "$f" .cu).o"
done
for f in "$root"/csrc/*.cpp; do  # the CPU kernels: the library's sources less its front ends
  case $(basename "$f") in bindings.cpp | without_cuda.cpp) continue ;; esac
  g++ $flags -I"$root/csrc" -c "$f" -o "$build/cpu_$(basename "$f" .cpp).o"
done
g++ $flags -I"$root/cuda/emulation" -I"$root/csrc" "$root/cuda/emulation/check_kernels.cpp" \
  "$build"/*.o -o "$build/check_kernels"
OMP_NUM_THREADS=1 "$build/check_kernels"
