// C += A * B for the small row-major blocks of the pairwise losses.  A
// register-blocked micro-kernel (4 rows x two SIMD vectors of columns) that
// the compiler vectorises; no BLAS dependency.
#pragma once

#include <cstdint>

namespace faceops {
namespace detail {

template <typename T, int kRows, int kCols>
inline void gemm_micro_kernel(int64_t depth, const T* __restrict a, int64_t lda,
                              const T* __restrict b, int64_t ldb, T* __restrict c,
                              int64_t ldc) {
  T acc[kRows][kCols] = {};
  for (int64_t p = 0; p < depth; ++p) {
    const T* b_row = b + p * ldb;
    for (int r = 0; r < kRows; ++r) {
      const T a_value = a[r * lda + p];
      for (int j = 0; j < kCols; ++j) acc[r][j] += a_value * b_row[j];
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int j = 0; j < kCols; ++j) c[r * ldc + j] += acc[r][j];
}

template <typename T>
void gemm_accumulate(int64_t m, int64_t n, int64_t depth, const T* a, int64_t lda, const T* b,
                     int64_t ldb, T* c, int64_t ldc) {
  constexpr int kCols = 128 / static_cast<int>(sizeof(T));  // two 512-bit vectors
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) {
    int64_t j = 0;
    for (; j + kCols <= n; j += kCols)
      gemm_micro_kernel<T, 4, kCols>(depth, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc);
    for (; j < n; ++j)
      gemm_micro_kernel<T, 4, 1>(depth, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc);
  }
  for (; i < m; ++i) {
    int64_t j = 0;
    for (; j + kCols <= n; j += kCols)
      gemm_micro_kernel<T, 1, kCols>(depth, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc);
    for (; j < n; ++j)
      gemm_micro_kernel<T, 1, 1>(depth, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc);
  }
}

}  // namespace detail
}  // namespace faceops
