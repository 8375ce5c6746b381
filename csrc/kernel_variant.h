// First include of every CPU kernel source (csrc/<loss>.cpp): puts the
// kernels into the namespace of one instruction-set variant, and for the AVX2
// and AVX-512 variants under its `#pragma GCC target`.
//
// Each kernel source is compiled once per variant: on its own for the
// baseline (faceops_baseline::cpu), and included by csrc/<loss>_avx2.cpp and
// csrc/<loss>_avx512.cpp (faceops_avx2::cpu, faceops_avx512::cpu), one
// translation unit per source as in a -march=native build, so that GCC
// inlines alike (the five sources in one unit left the GEMM micro-kernel out
// of line, 30% slower).  csrc/dispatch.cpp defines the public faceops::cpu
// functions, which call the variant the CPU can run.
//
// The variant's namespace is set by defining the token `faceops` as that
// namespace for the rest of the translation unit, so that every inline
// function and template of faceops' internal headers (simd.h, gemm_block.h,
// pairwise_tiles.h, ...) gets a symbol of its own per variant.  With one
// symbol the linker keeps one of the copies for every caller: the AVX-512
// copy, say, on the baseline path, and SIGILL on CPUs without AVX-512.
// The system headers and the public headers (csrc/faceops/*.h: the types and
// the host-device math all variants share) are included before the rename
// and outside any target pragma: GCC compiles a template for the target in
// force where it is defined, not where it is instantiated, so their copies
// (std::vector, std::sort, ...) are baseline code in every variant and the
// linker may merge them.  A kernel source that includes a system header not
// listed here gets it under the variant's target: add the header here.
#ifndef FACEOPS_KERNEL_VARIANT_H_
#define FACEOPS_KERNEL_VARIANT_H_

// Scheduling tuned for Zen 3 in every variant (and in the headers below, so
// that GCC still inlines them into the kernels): with GCC 12's generic tuning
// the AVX2 path ran 1.3x slower than -march=native on a Zen 3 machine, with
// this tuning as fast (benchmarks/portable.py).  Tuning never adds
// instructions: each variant still runs on every CPU of its instruction set.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FACEOPS_NATIVE)
#pragma GCC target("tune=znver3")
#endif

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu_features.h"
#include "faceops/faceops.h"

// The variant's namespace sees the shared (public) faceops names: the kernels
// name them unqualified, as faceops::..., or as detail::... .
#define FACEOPS_KERNEL_VARIANT_NAMESPACE(variant)  \
  namespace variant {                              \
  using namespace ::faceops;                       \
  namespace detail {                               \
  using namespace ::faceops::detail;               \
  }                                                \
  }

#endif  // FACEOPS_KERNEL_VARIANT_H_

// FACEOPS_KERNEL_VARIANT: 0 baseline (a kernel source compiled on its own),
// 2 AVX2 + FMA, 3 AVX-512 (the csrc/<loss>_avx2.cpp, _avx512.cpp wrappers).
#ifndef faceops  // not yet set in this translation unit
#ifndef FACEOPS_KERNEL_VARIANT
#define FACEOPS_KERNEL_VARIANT 0
#endif
#if FACEOPS_KERNEL_VARIANT == 0
FACEOPS_KERNEL_VARIANT_NAMESPACE(faceops_baseline)
#define faceops faceops_baseline
#elif FACEOPS_CPU_VARIANTS && FACEOPS_KERNEL_VARIANT == 2
FACEOPS_KERNEL_VARIANT_NAMESPACE(faceops_avx2)
#pragma GCC target("avx2,fma")
#define faceops faceops_avx2
#elif FACEOPS_CPU_VARIANTS && FACEOPS_KERNEL_VARIANT == 3
FACEOPS_KERNEL_VARIANT_NAMESPACE(faceops_avx512)
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#define faceops faceops_avx512
#endif
#endif
