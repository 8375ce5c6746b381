// Which instruction-set variant of the CPU kernels runs.  A portable build
// (the default) compiles the kernels three times -- x86-64 baseline (SSE2),
// AVX2 + FMA, AVX-512 (F, DQ, BW, VL) -- and each faceops::cpu call runs the
// fastest variant the CPU can run (csrc/dispatch.cpp, csrc/kernel_variant.h).
// FACEOPS_NATIVE=ON instead compiles one variant with -march=native, which
// runs only on CPUs with the build machine's instruction set.
#pragma once

#include <string>
#include <utility>
#include <vector>

// The AVX2 and AVX-512 variants need GCC's `#pragma GCC target` on x86-64;
// elsewhere (another compiler, another architecture) only the baseline exists.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FACEOPS_NATIVE)
#define FACEOPS_CPU_VARIANTS 1
#else
#define FACEOPS_CPU_VARIANTS 0
#endif

namespace faceops {

enum class CpuPath { baseline, avx2, avx512 };

struct CpuFeatures {
  std::string path;                    // the variant that runs: baseline, avx2, avx512 or native
  std::vector<std::string> compiled;   // the variants in this build
  std::vector<std::string> supported;  // those of them this CPU can run
  std::vector<std::pair<std::string, bool>> cpu;  // the CPU features the choice looks at
  std::string requested;               // $FACEOPS_CPU_PATH, empty when unset
};

// Throws std::runtime_error when $FACEOPS_CPU_PATH asks for a variant this
// build lacks or this CPU cannot run.
CpuFeatures cpu_features();

namespace detail {
// The variant every faceops::cpu call runs, chosen once (same errors).
CpuPath cpu_path();
}  // namespace detail

}  // namespace faceops
