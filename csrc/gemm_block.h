// C += A * B for the small row-major blocks of the pairwise losses: a
// register-blocked micro-kernel (kRows rows x two SIMD vectors of columns,
// GCC/Clang vector extensions, so it compiles to AVX-512, AVX2 or SSE FMAs
// as the target allows).  No BLAS dependency.
#pragma once

#include <cstdint>

#include "simd.h"

namespace faceops {
namespace detail {

// Rows of the micro-kernel: its 2 * kRows accumulators and the two vectors of
// B must stay in registers (32 with AVX-512, 16 with AVX2 and SSE).
#if defined(FACEOPS_KERNEL_VARIANT) && FACEOPS_KERNEL_VARIANT == 2 && !defined(FACEOPS_CUDA_EMULATION)
constexpr int kGemmRows = 6;
#else
constexpr int kGemmRows = 8;
#endif

// C[0:kRows, 0:2*kLanes] += A[0:kRows, 0:depth] * B[0:depth, 0:2*kLanes].
template <typename T, int kRows>
inline void gemm_micro_kernel(int64_t depth, const T* __restrict a, int64_t lda,
                              const T* __restrict b, int64_t ldb, T* __restrict c, int64_t ldc) {
  using S = Simd<T>;
  typename S::Vector acc0[kRows], acc1[kRows];
  for (int r = 0; r < kRows; ++r) acc0[r] = acc1[r] = typename S::Vector{};
  for (int64_t p = 0; p < depth; ++p) {
    const typename S::Vector b0 = S::load(b + p * ldb), b1 = S::load(b + p * ldb + S::kLanes);
    for (int r = 0; r < kRows; ++r) {
      const T a_value = a[r * lda + p];
      acc0[r] += a_value * b0;
      acc1[r] += a_value * b1;
    }
  }
  for (int r = 0; r < kRows; ++r) {
    S::add_to(c + r * ldc, acc0[r]);
    S::add_to(c + r * ldc + S::kLanes, acc1[r]);
  }
}

template <typename T>
inline void gemm_scalar(int64_t m, int64_t n, int64_t depth, const T* a, int64_t lda, const T* b,
                        int64_t ldb, T* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      T sum = 0;
      for (int64_t p = 0; p < depth; ++p) sum += a[i * lda + p] * b[p * ldb + j];
      c[i * ldc + j] += sum;
    }
}

template <typename T>
void gemm_accumulate(int64_t m, int64_t n, int64_t depth, const T* a, int64_t lda, const T* b,
                     int64_t ldb, T* c, int64_t ldc) {
  constexpr int64_t kRows = kGemmRows, kCols = 2 * Simd<T>::kLanes;
  const int64_t n_vector = n - n % kCols;
  int64_t i = 0;
  for (; i + kRows <= m; i += kRows)
    for (int64_t j = 0; j < n_vector; j += kCols)
      gemm_micro_kernel<T, kRows>(depth, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc);
  for (; i < m; ++i)
    for (int64_t j = 0; j < n_vector; j += kCols)
      gemm_micro_kernel<T, 1>(depth, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc);
  if (n_vector < n)
    gemm_scalar(m, n - n_vector, depth, a, lda, b + n_vector, ldb, c + n_vector, ldc);
}

}  // namespace detail
}  // namespace faceops
