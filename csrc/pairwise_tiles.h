// Streaming engine of the pairwise losses on the CPU.  Squared distances are
// computed tile by tile as ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j (clamped at 0,
// the diagonal exactly 0); no N x N matrix is ever held: each thread owns a
// block of kTileRows anchors and one kTileRows x kTileCols tile.
//
// Gradients of a loss that depends on the distances go through a coefficient
// tile: with dx_i = sum_j C_ij (x_i - x_j), a tile adds
// rowsum(C) * x_I - C * X_J to the rows it owns.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "gemm_block.h"

namespace faceops {
namespace detail {

constexpr int64_t kTileRows = 64;
constexpr int64_t kTileCols = 256;

template <typename T>
inline T dot_product(const T* a, const T* b, int64_t d) {
  T sum = 0;
  for (int64_t k = 0; k < d; ++k) sum += a[k] * b[k];
  return sum;
}

// Same expression, evaluated the same way, in the tiles and in the direct
// look-ups (positive pairs), so that mining compares consistent values.
template <typename T>
inline T gram_squared_distance(T norm_i, T norm_j, T dot) {
  const T s = norm_i + norm_j - T(2) * dot;
  return s > T(0) ? s : T(0);
}

template <typename T>
std::vector<T> squared_norms(const T* x, int64_t n, int64_t d) {
  std::vector<T> norms(n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) norms[i] = dot_product(x + i * d, x + i * d, d);
  return norms;
}

template <typename T>
inline T squared_distance_direct(const T* x, const T* norms, int64_t d, int64_t i, int64_t j) {
  if (i == j) return T(0);
  return gram_squared_distance(norms[i], norms[j], dot_product(x + i * d, x + j * d, d));
}

// Per-thread buffers: one distance tile, one coefficient tile, the packed
// (transposed) column block.
template <typename T>
class DistanceTile {
 public:
  explicit DistanceTile(int64_t d)
      : d_(d), packed_(d * kTileCols), distance_(kTileRows * kTileCols),
        coefficient_(kTileRows * kTileCols) {}

  // distance(r, c) = squared distance of rows i0 + r and j0 + c.
  void compute(const T* x, const T* norms, int64_t i0, int64_t rows, int64_t j0, int64_t cols) {
    for (int64_t k = 0; k < d_; ++k)
      for (int64_t c = 0; c < cols; ++c) packed_[k * kTileCols + c] = x[(j0 + c) * d_ + k];
    std::fill(distance_.begin(), distance_.end(), T(0));
    gemm_accumulate<T>(rows, cols, d_, x + i0 * d_, d_, packed_.data(), kTileCols,
                       distance_.data(), kTileCols);
    for (int64_t r = 0; r < rows; ++r) {
      T* row = distance_.data() + r * kTileCols;
      for (int64_t c = 0; c < cols; ++c) row[c] = gram_squared_distance(norms[i0 + r], norms[j0 + c], row[c]);
      if (i0 + r >= j0 && i0 + r < j0 + cols) row[i0 + r - j0] = T(0);
    }
  }

  T distance(int64_t r, int64_t c) const { return distance_[r * kTileCols + c]; }
  T* coefficients() { return coefficient_.data(); }

  // dx rows [i0, i0 + rows) += rowsum(C) * x_i - C * X_J, C = coefficients().
  void accumulate_gradient(const T* x, int64_t i0, int64_t rows, int64_t j0, int64_t cols, T* dx) {
    T* coef = coefficient_.data();
    for (int64_t r = 0; r < rows; ++r) {
      T row_sum = 0;
      for (int64_t c = 0; c < cols; ++c) {
        row_sum += coef[r * kTileCols + c];
        coef[r * kTileCols + c] = -coef[r * kTileCols + c];
      }
      const T* x_row = x + (i0 + r) * d_;
      T* dx_row = dx + (i0 + r) * d_;
      for (int64_t k = 0; k < d_; ++k) dx_row[k] += row_sum * x_row[k];
    }
    gemm_accumulate<T>(rows, d_, cols, coef, kTileCols, x + j0 * d_, d_, dx + i0 * d_, d_);
  }

 private:
  int64_t d_;
  std::vector<T> packed_, distance_, coefficient_;
};

// Calls block(tile, i0, rows) for every block of anchors, in parallel; each
// call owns rows [i0, i0 + rows) and a thread-private tile.
template <typename T, typename BlockFn>
void for_each_anchor_block(int64_t n, int64_t d, BlockFn block) {
  const int64_t blocks = (n + kTileRows - 1) / kTileRows;
#pragma omp parallel
  {
    DistanceTile<T> tile(d);
#pragma omp for schedule(dynamic)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t i0 = b * kTileRows;
      block(tile, i0, std::min(kTileRows, n - i0));
    }
  }
}

}  // namespace detail
}  // namespace faceops
