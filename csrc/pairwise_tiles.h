// Streaming engine of the pairwise losses on the CPU.  Squared distances are
// computed tile by tile as ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j (clamped at 0,
// the diagonal exactly 0); no N x N matrix is ever held: each thread works
// on one kTileRows x kTileRows tile of a block pair at a time.
//
// Gradients of a loss that depends on the distances go through a coefficient
// tile: with dx_i = sum_j C_ij (x_i - x_j), a tile adds
// rowsum(C) * x_I - C * X_J to the rows it owns.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "checks.h"
#include "faceops/hostdevice.h"
#include "gemm_block.h"
#include "scratch.h"

namespace faceops {
namespace detail {

constexpr int64_t kTileRows = 64;

// The rows of x with what the tiles need, computed once per call: squared
// norms and a transposed copy (the tiles' right-hand GEMM operand, so no tile
// packs its columns; its leading dimension is padded off powers of two, which
// would alias in the cache).
// A reference set's rows (`reference_set`) have scratch of their own, beside
// the anchors'.
template <typename T>
struct GramRows {
  GramRows(const T* x_, int64_t n_, int64_t d_, bool reference_set = false)
      : x(x_), n(n_), d(d_), ld((n_ + 15) / 16 * 16 + 16),
        norms(reference_set ? thread_scratch<T, kReferenceNorms>(n_)
                            : thread_scratch<T, kGramNorms>(n_)),
        transposed(reference_set ? thread_scratch<T, kReferenceTransposed>(d_ * ld)
                                 : thread_scratch<T, kGramTransposed>(d_ * ld)) {
    constexpr int64_t kBlock = 32;
#pragma omp parallel for schedule(static) if (n * d > kParallelWork)
    for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
      for (int64_t i = i0; i < std::min(n, i0 + kBlock); ++i)
        norms[i] = dot(x + i * d, x + i * d, d);
      for (int64_t k0 = 0; k0 < d; k0 += kBlock)
        for (int64_t k = k0; k < std::min(d, k0 + kBlock); ++k)
          for (int64_t i = i0; i < std::min(n, i0 + kBlock); ++i) transposed[k * ld + i] = x[i * d + k];
    }
  }

  T squared_distance(int64_t i, int64_t j) const {
    if (i == j) return T(0);
    return refined_squared_distance(norms[i], norms[j], dot(x + i * d, x + j * d, d),
                                    x + i * d, x + j * d, d);
  }

  const T* x;
  int64_t n, d, ld;
  T* norms;
  T* transposed;
};

// The squared distance of row i of a and row j of b, as DistanceTile gives it
// to rounding (a SIMD dot product instead of the GEMM's).
template <typename T>
T cross_squared_distance(const GramRows<T>& a, int64_t i, const GramRows<T>& b, int64_t j) {
  const int64_t d = a.d;
  return refined_squared_distance(a.norms[i], b.norms[j], dot(a.x + i * d, b.x + j * d, d),
                                  a.x + i * d, b.x + j * d, d);
}

// Per-thread buffers: one distance tile and one coefficient tile (and its transpose).
template <typename T>
class DistanceTile {
 public:
  explicit DistanceTile(int64_t d)
      : d_(d), distance_(thread_scratch<T, kDistanceTile>(kTileRows * kTileRows)),
        coefficient_(thread_scratch<T, kCoefficientTile>(kTileRows * kTileRows)),
        coefficient_t_(thread_scratch<T, kCoefficientTileTransposed>(kTileRows * kTileRows)),
        column_sum_(thread_scratch<T, kColumnSums>(kTileRows)) {}

  // distance_row(r)[c] = squared distance of rows i0 + r and j0 + c.
  void compute(const GramRows<T>& g, int64_t i0, int64_t rows, int64_t j0, int64_t cols) {
    compute(g, i0, rows, g, j0, cols);
    for (int64_t r = 0; r < rows; ++r)
      if (i0 + r >= j0 && i0 + r < j0 + cols) distance_[r * kTileRows + i0 + r - j0] = T(0);
  }

  // distance_row(r)[c] = squared distance of row i0 + r of a and row j0 + c
  // of b (a reference set: no diagonal).
  void compute(const GramRows<T>& a, int64_t i0, int64_t rows, const GramRows<T>& b, int64_t j0,
               int64_t cols) {
    for (int64_t r = 0; r < rows; ++r) std::fill_n(distance_ + r * kTileRows, cols, T(0));
    gemm_accumulate<T>(rows, cols, d_, a.x + i0 * d_, d_, b.transposed + j0, b.ld,
                       distance_, kTileRows);
    for (int64_t r = 0; r < rows; ++r) {
      T* row = distance_ + r * kTileRows;
      const T norm_i = a.norms[i0 + r];
      // A vectorised pass, then the rare near-duplicates (refined_squared_distance's rule).
      int near_duplicates = 0;
      for (int64_t c = 0; c < cols; ++c) {
        row[c] = gram_squared_distance(norm_i, b.norms[j0 + c], row[c]);
        near_duplicates |= near_duplicate(norm_i, b.norms[j0 + c], row[c]);
      }
      for (int64_t c = 0; near_duplicates && c < cols; ++c)
        if (near_duplicate(norm_i, b.norms[j0 + c], row[c]))
          row[c] = direct_squared_distance(a.x + (i0 + r) * d_, b.x + (j0 + c) * d_, d_);
    }
  }

  const T* distance_row(int64_t r) const { return distance_ + r * kTileRows; }
  T* coefficients() { return coefficient_; }

  // dx rows [i0, i0 + rows) += rowsum(C) * x_i - C * X_J, C = coefficients();
  // with `columns_too`, also dx rows [j0, j0 + cols) += colsum(C) * x_j - C^T * X_I
  // (a tile of a symmetric loss standing for its mirror tile as well).
  void accumulate_gradient(const T* x, int64_t i0, int64_t rows, int64_t j0, int64_t cols, T* dx,
                           bool columns_too = false) {
    accumulate_gradient(x, i0, rows, x, j0, cols, dx, columns_too ? dx : nullptr);
  }

  // The same between rows of a (gradient da) and rows of b (gradient db), each
  // skipped when null: da_i += sum_j C_ij (a_i - b_j), db_j += sum_i C_ij (b_j - a_i).
  void accumulate_gradient(const T* a, int64_t i0, int64_t rows, const T* b, int64_t j0,
                           int64_t cols, T* da, T* db) {
    T* coef = coefficient_;
    T* coef_t = coefficient_t_;
    if (db) {
      std::fill_n(column_sum_, cols, T(0));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          column_sum_[c] += coef[r * kTileRows + c];
          coef_t[c * kTileRows + r] = -coef[r * kTileRows + c];
        }
    }
    if (da) {
      for (int64_t r = 0; r < rows; ++r) {
        T row_sum = 0;
        for (int64_t c = 0; c < cols; ++c) {
          row_sum += coef[r * kTileRows + c];
          coef[r * kTileRows + c] = -coef[r * kTileRows + c];
        }
        add_scaled_row(row_sum, a + (i0 + r) * d_, da + (i0 + r) * d_);
      }
      gemm_accumulate<T>(rows, d_, cols, coef, kTileRows, b + j0 * d_, d_, da + i0 * d_, d_);
    }
    if (!db) return;
    for (int64_t c = 0; c < cols; ++c)
      add_scaled_row(column_sum_[c], b + (j0 + c) * d_, db + (j0 + c) * d_);
    gemm_accumulate<T>(cols, d_, rows, coef_t, kTileRows, a + i0 * d_, d_, db + j0 * d_, d_);
  }

 private:
  void add_scaled_row(T scale, const T* x_row, T* dx_row) const {
    for (int64_t k = 0; k < d_; ++k) dx_row[k] += scale * x_row[k];
  }

  int64_t d_;
  T* distance_;  // the calling thread's scratch (scratch.h)
  T* coefficient_;
  T* coefficient_t_;
  T* column_sum_;
};

// The upper triangle of a blocks x blocks grid in row-major order: row bi
// starts at pair bi * blocks - bi (bi - 1) / 2; a pair's row is the root of
// that quadratic, corrected for rounding.
inline int64_t upper_triangle_row_start(int64_t bi, int64_t blocks) {
  return bi * blocks - bi * (bi - 1) / 2;
}

inline int64_t upper_triangle_row(int64_t pair, int64_t blocks) {
  const double b = 2.0 * static_cast<double>(blocks) + 1.0;
  int64_t bi = static_cast<int64_t>((b - std::sqrt(b * b - 8.0 * static_cast<double>(pair))) / 2);
  bi = std::max<int64_t>(0, std::min(bi, blocks - 1));
  while (bi > 0 && upper_triangle_row_start(bi, blocks) > pair) --bi;
  while (bi + 1 < blocks && upper_triangle_row_start(bi + 1, blocks) <= pair) ++bi;
  return bi;
}

// For losses whose gradient coefficients are symmetric (C_ij = C_ji): calls
// tile_fn(tile, i0, rows, j0, cols, dx_private) once per kTileRows x kTileRows
// block pair with j0 >= i0, in parallel; dx_private is the calling thread's own
// (n, d) gradient buffer, summed into dx at the end in thread order; the
// static schedule makes the result bitwise reproducible for a fixed thread
// count.  Each block pair is computed once: half the distance work of
// scanning every anchor's row.
template <typename T, typename TileFn>
void for_each_symmetric_tile(int64_t n, int64_t d, T* dx, TileFn tile_fn) {
  const int64_t blocks = (n + kTileRows - 1) / kTileRows;
  const int64_t pairs = blocks * (blocks + 1) / 2;
  const int threads = n * n * d > kParallelWork * 16 ? omp_get_max_threads() : 1;
  const size_t private_size = dx ? static_cast<size_t>(threads - 1) * n * d : 0;
  T* dx_private = thread_scratch<T, kPrivateGradients>(private_size);
  std::fill_n(dx_private, private_size, T(0));
  if (dx) std::fill(dx, dx + n * d, T(0));
#pragma omp parallel num_threads(threads)
  {
    DistanceTile<T> tile(d);
    const int t = omp_get_thread_num();
    T* own_dx = !dx ? nullptr : t == 0 ? dx : dx_private + static_cast<size_t>(t - 1) * n * d;
#pragma omp for schedule(static)
    for (int64_t pair = 0; pair < pairs; ++pair) {
      const int64_t bi = upper_triangle_row(pair, blocks);
      const int64_t bj = bi + (pair - upper_triangle_row_start(bi, blocks));
      const int64_t i0 = bi * kTileRows, j0 = bj * kTileRows;
      tile_fn(tile, i0, std::min(kTileRows, n - i0), j0, std::min(kTileRows, n - j0), own_dx);
    }
  }
  if (!dx) return;
#pragma omp parallel for schedule(static) if (threads > 1 && n * d > kParallelWork)
  for (int64_t e = 0; e < n * d; ++e)
    for (int t = 1; t < threads; ++t) dx[e] += dx_private[static_cast<size_t>(t - 1) * n * d + e];
}

// For losses between anchor rows (n of them) and the rows of a reference set
// (m): calls tile_fn(tile, i0, rows, j0, cols, own_dx, own_dref) once per
// kTileRows x kTileRows block pair of the n x m grid, in parallel.  Each thread
// takes whole blocks of the side with more blocks (static schedule) against
// every block of the other side, so it writes that side's gradient in place and
// alone; only the other side's gradient -- the shorter one -- is a private
// buffer per thread past the first, summed in at the end in thread order, as
// for_each_symmetric_tile.  A gradient not asked for (null) gets no buffer: a
// reference set of a million rows without one costs no m x d buffer per thread.
// Shapes whose longer side has fewer blocks than threads use fewer threads.
template <typename T, typename TileFn>
void for_each_cross_tile(int64_t n, int64_t m, int64_t d, T* dx, T* dref, TileFn tile_fn) {
  const int64_t row_blocks = (n + kTileRows - 1) / kTileRows;
  const int64_t col_blocks = (m + kTileRows - 1) / kTileRows;
  const bool split_rows = row_blocks >= col_blocks;
  const int64_t split_blocks = split_rows ? row_blocks : col_blocks;
  const int64_t other_blocks = split_rows ? col_blocks : row_blocks;
  const int threads = n * m * d > kParallelWork * 16
                          ? static_cast<int>(std::min<int64_t>(omp_get_max_threads(), split_blocks))
                          : 1;
  T* shared = split_rows ? dref : dx;  // the gradient that every thread adds to
  const int64_t shared_size = shared ? (split_rows ? m : n) * d : 0;
  const size_t private_size = static_cast<size_t>(threads - 1) * shared_size;
  T* private_gradients = thread_scratch<T, kPrivateGradients>(private_size);
  std::fill_n(private_gradients, private_size, T(0));
  if (dx) std::fill(dx, dx + n * d, T(0));
  if (dref) std::fill(dref, dref + m * d, T(0));
#pragma omp parallel num_threads(threads)
  {
    DistanceTile<T> tile(d);
    const int t = omp_get_thread_num();
    T* own_shared = !shared ? nullptr : t == 0 ? shared : private_gradients + static_cast<size_t>(t - 1) * shared_size;
    T* own_dx = split_rows ? dx : own_shared;
    T* own_dref = split_rows ? own_shared : dref;
#pragma omp for schedule(static)
    for (int64_t split = 0; split < split_blocks; ++split)
      for (int64_t other = 0; other < other_blocks; ++other) {
        const int64_t i0 = (split_rows ? split : other) * kTileRows;
        const int64_t j0 = (split_rows ? other : split) * kTileRows;
        tile_fn(tile, i0, std::min(kTileRows, n - i0), j0, std::min(kTileRows, m - j0), own_dx, own_dref);
      }
  }
  if (shared_size == 0) return;
#pragma omp parallel for schedule(static) if (threads > 1 && shared_size > kParallelWork)
  for (int64_t e = 0; e < shared_size; ++e)
    for (int t = 1; t < threads; ++t) shared[e] += private_gradients[static_cast<size_t>(t - 1) * shared_size + e];
}

}  // namespace detail
}  // namespace faceops
