// Streaming engine of the pairwise losses on the GPU (the counterpart of
// csrc/pairwise_tiles.h).  A block owns kTileRows anchors and walks over all
// rows in tiles of kTileCols candidates; squared distances come from
// ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j (from the differences for near-duplicate
// rows; the diagonal exactly 0), one kTileRows x kTileCols tile in shared
// memory at a time: no N x N matrix.  The tile's dot products run on FP32/FP64
// FMA micro-tiles or, for float and where the kernel asks (Gram, see
// tensor_cores.cuh), on the tensor cores.
//
// Gradients go through the same tile: the loss overwrites the distances with
// coefficients C_ij and accumulate_*_gradient add dx_i += sum_j C_ij (x_i - x_j)
// (rows) or dx_j += sum_i C_ij (x_j - x_i) (columns).  When a row tile's
// candidates are split over several blocks, each split adds its rows into a
// slice of its own (SplitPartials, plain stores) and the slices are summed
// in split order afterwards: the row gradient does not depend on the order
// the blocks run in.  Rows that any block may add into (batch-all's columns
// and split rows, semi-hard's pairs) are summed in fixed point instead
// (FixedPointSum, fixed_point.cuh).
#pragma once

#include <cmath>
#include <cstdint>

#include "fixed_point.cuh"
#include "launch.cuh"
#include "tensor_cores.cuh"

namespace faceops {
namespace cuda {
namespace detail {

constexpr int kTileRows = 32;   // anchors per block
constexpr int kTileCols = 64;   // candidates per tile
constexpr int kTileDepth = 16;  // features per staging step
// The distance micro-tile: thread (ty, tx) of a 16 x 16 grid computes the
// adjacent rows kMicroRows ty + r and columns kMicroCols tx + c of the tile,
// so that each step of its product is two vector loads from shared memory.
constexpr int kMicroRows = kTileRows / 16;
constexpr int kMicroCols = kTileCols / 16;
static_assert(kThreads == 256, "the micro-tile grid is 16 x 16 threads");
static_assert(kTileDepth == 16, "the gradient passes map threads to 16 features");

// The rows the anchors (rows of x) are paired with: the batch itself
// (`in_batch`: candidate a is anchor a, its own copy) or a reference set,
// whose row self_index[a] (nullable; -1: none) is anchor a's own copy.  An
// own copy is neither a positive nor a negative of its anchor.
template <typename T>
struct Candidates {
  const T* rows;
  const T* norms;
  const int64_t* labels;
  int count;
  const int64_t* self_index;
  bool in_batch;

  __device__ __forceinline__ int own_copy(int a) const {
    return in_batch ? a : self_index ? static_cast<int>(self_index[a]) : -1;
  }
};

// Blocks that small batches are split into (anchor blocks x candidate
// splits) so that they still fill the GPU; from N = 32768 every anchor block
// walks all candidates alone.
// The same split the other way round (owners: candidate tiles of kTileCols,
// walking anchor tiles of kTileRows) serves the column passes.
constexpr int64_t kTargetBlocks = 1024;
inline int64_t candidate_splits(int64_t n, int64_t m, int64_t owner_rows = kTileRows,
                                int64_t walked_rows = kTileCols) {
  const int64_t row_blocks = (n + owner_rows - 1) / owner_rows;
  const int64_t tiles = (m + walked_rows - 1) / walked_rows;
  const int64_t splits = (kTargetBlocks + row_blocks - 1) / row_blocks;
  return splits < 1 ? 1 : splits > tiles ? tiles : splits;
}
inline int64_t candidate_splits(int64_t n) { return candidate_splits(n, n); }

// The gradient of a grid of (tile, split) blocks, each tile owning rows of
// out (anchors: dx; candidates in a column pass: dref): split 0 adds into out
// itself, split s > 0 into slice s - 1 of the scratch, each block into its
// own rows (no two blocks write one element); sum_into then adds the slices
// into out in split order.  Scratch: (splits - 1) rows d elements, fewer than
// kTargetBlocks x (rows per owner tile) x d whatever the rows (splits - 1 <
// kTargetBlocks / owner tiles): 32768 d for dx, 65536 d for dref; none for
// one split (from 32768 anchors, 65536 candidates) or a null out.
template <typename T>
class SplitPartials {
 public:
  SplitPartials(T* out, int64_t rows, int64_t d, int64_t splits, cudaStream_t stream)
      : out_(out), count_(rows * d), more_(out ? splits - 1 : 0), partial_(more_ * count_, stream) {
    zero_async(partial_.get(), more_ * count_ * int64_t(sizeof(T)), stream);
  }
  T* get() const { return partial_.get(); }
  void sum_into(cudaStream_t stream) const {
    if (more_ > 0)
      launch("sum_splits_kernel", sum_splits_kernel<T>, grid_for(count_), stream, out_,
             partial_.get(), more_, count_);
  }

 private:
  T* out_;
  int64_t count_, more_;
  DeviceArray<T> partial_;
};

// The rows split `split` adds into (see SplitPartials).
template <typename T>
__device__ __forceinline__ T* split_rows(T* dx, T* partial, int split, int n, int64_t d) {
  return split == 0 ? dx : partial + int64_t(split - 1) * n * d;
}

// The pairwise kernels' shared memory (about 30 KB for double).  Rows of the
// staging arrays are padded by 16 bytes: aligned for vector loads, and the
// transposing stores spread over the banks.
template <typename T>
constexpr int kPad = 16 / int(sizeof(T));
template <typename T>
struct DistanceTile {
  alignas(16) T rows[kTileDepth][kTileRows + kPad<T>];  // x[a0 + m][k0 + k] at [k][m]
  alignas(16) T cols[kTileDepth][kTileCols + kPad<T>];  // x[c0 + j][k0 + k] at [k][j]
  T value[kTileRows][kTileCols + 1];  // squared distance of (a0 + m, c0 + j), then C_mj
  T row_sum[kTileRows], column_sum[kTileCols];  // of C, for the gradient on the tensor cores
};

// The squared distance of rows i and j, bit for bit what compute_distance_tile
// on the FMA Gram gives for them (the same fused products in the same order,
// math::fma written out whatever the compiler contracts): for the few pairs
// known in advance, without a tile.
template <typename T>
__device__ T pair_squared_distance(const T* __restrict__ x, const T* __restrict__ norms,
                                   const Candidates<T>& cand, int64_t d, int i, int j) {
  if (cand.in_batch && i == j) return T(0);
  const T* x_i = x + int64_t(i) * d;
  const T* x_j = cand.rows + int64_t(j) * d;
  T dot = T(0);
  for (int64_t k = 0; k < d; ++k) dot = math::fma(x_i[k], x_j[k], dot);
  return refined_squared_distance(norms[i], cand.norms[j], dot, x_i, x_j, d);
}

template <typename T>
__global__ void pairwise_norms_kernel(const T* __restrict__ x, int n, int64_t d,
                                      T* __restrict__ norms) {
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kThreads) {
    const T* row = x + i * d;
    T sum = 0;
    for (int64_t k = 0; k < d; ++k) sum += row[k] * row[k];
    norms[i] = sum;
  }
}

// Stages features [k0, k0 + kTileDepth) of rows [r0, r0 + R) at dst[k][r];
// zero outside the matrix.
template <typename T, int R, int Pitch>
__device__ __forceinline__ void stage_rows(const T* __restrict__ x, int n, int64_t d, int r0,
                                           int64_t k0, T (*dst)[Pitch]) {
  for (int e = threadIdx.x; e < kTileDepth * R; e += kThreads) {
    const int k = e % kTileDepth, r = e / kTileDepth;
    const int64_t row = int64_t(r0) + r, col = k0 + k;
    dst[k][r] = (row < n && col < d) ? x[row * d + col] : T(0);
  }
}

// acc += the staged features' products on the tensor cores (mma_3xtf32): for
// each half of the kTileDepth features, the warp's A = a_stage rows
// 16 (w / 4) + [0, 16) times its two B = b_stage columns 16 (w % 4) + 8 q + [0, 8).
template <int PitchA, int PitchB>
__device__ __forceinline__ void tensor_core_step(float (*a_stage)[PitchA], float (*b_stage)[PitchB],
                                                 float (&acc)[kMicroRows][kMicroCols]) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int row0 = 16 * int(threadIdx.x / 128), col0 = 16 * int(threadIdx.x / 32 % 4);
#pragma unroll
  for (int k8 = 0; k8 < kTileDepth; k8 += 8) {
    float a[4];
    for (int i = 0; i < 4; ++i) a[i] = a_stage[k8 + t + 4 * (i / 2)][row0 + g + 8 * (i % 2)];
    for (int q = 0; q < 2; ++q) {
      float b[2];
      for (int i = 0; i < 2; ++i) b[i] = b_stage[k8 + t + 4 * i][col0 + 8 * q + g];
      float c[4] = {acc[0][2 * q], acc[0][2 * q + 1], acc[1][2 * q], acc[1][2 * q + 1]};
      mma_3xtf32(c, a, b);
      acc[0][2 * q] = c[0], acc[0][2 * q + 1] = c[1];
      acc[1][2 * q] = c[2], acc[1][2 * q + 1] = c[3];
    }
  }
}

// Where the calling thread's acc[r][c] of tile_dot_products lies in the tile:
// row tile_row<G>(r), column tile_col<G>(c).  FMA: thread (tx, ty) = (t % 16,
// t / 16) holds the adjacent rows kMicroRows ty + r and columns
// kMicroCols tx + c.  Tensor cores: warp w holds rows 16 (w / 4) + [0, 16) and
// columns 16 (w % 4) + [0, 16) as two m16n8 accumulators, c / 2 the one, and
// lane (g, t) = (lane / 4, lane % 4) their elements at rows g + 8 r, columns
// 2 t + c % 2 (the PTX ISA's accumulator layout, tensor_cores.cuh).
template <Gram G>
__device__ __forceinline__ int tile_row(int r) {
  if constexpr (G == Gram::kFma) return kMicroRows * int(threadIdx.x / 16) + r;
  return 16 * int(threadIdx.x / 128) + int(threadIdx.x % 32) / 4 + 8 * r;
}
template <Gram G>
__device__ __forceinline__ int tile_col(int c) {
  if constexpr (G == Gram::kFma) return kMicroCols * int(threadIdx.x % 16) + c;
  return 16 * int(threadIdx.x / 32 % 4) + 8 * (c / 2) + 2 * int(threadIdx.x % 4) + c % 2;
}
static_assert(kTileRows == 2 * 16 && kTileCols == 4 * 16 && kMicroRows == 2 && kMicroCols == 4,
              "the tensor-core tile is 2 x 4 warps of 16 x 16, two m16n8 accumulators each");

// acc[r][c] = a[r0 + tile_row<G>(r)] . b[c0 + tile_col<G>(c)] over all d
// features, staged kTileDepth at a time in a_stage and b_stage (rows outside
// a or b count as zero).  Every thread of the block must call it; it ends
// with a barrier.
template <Gram G, typename T, int PitchA, int PitchB>
__device__ __forceinline__ void tile_dot_products(const T* __restrict__ a, int na, int r0,
                                                  const T* __restrict__ b, int nb, int c0,
                                                  int64_t d, T (*a_stage)[PitchA],
                                                  T (*b_stage)[PitchB],
                                                  T (&acc)[kMicroRows][kMicroCols]) {
  static_assert(G == Gram::kFma || sizeof(T) == sizeof(float), "tensor-core Gram tiles are float");
  for (int r = 0; r < kMicroRows; ++r)
    for (int c = 0; c < kMicroCols; ++c) acc[r][c] = T(0);
  for (int64_t k0 = 0; k0 < d; k0 += kTileDepth) {
    stage_rows<T, kTileRows>(a, na, d, r0, k0, a_stage);
    stage_rows<T, kTileCols>(b, nb, d, c0, k0, b_stage);
    __syncthreads();
    if constexpr (G == Gram::kFma) {
#pragma unroll
      for (int k = 0; k < kTileDepth; ++k) {
        T a_k[kMicroRows], b_k[kMicroCols];
        for (int r = 0; r < kMicroRows; ++r) a_k[r] = a_stage[k][tile_row<G>(r)];
        for (int c = 0; c < kMicroCols; ++c) b_k[c] = b_stage[k][tile_col<G>(c)];
        for (int r = 0; r < kMicroRows; ++r)
          for (int c = 0; c < kMicroCols; ++c) acc[r][c] = math::fma(a_k[r], b_k[c], acc[r][c]);
      }
    } else {
      tensor_core_step(a_stage, b_stage, acc);
    }
    __syncthreads();
  }
}

// tile.value = squared distances of anchors [a0, a0 + kTileRows) and
// candidates [c0, c0 + kTileCols); 0 outside the batch (callers mask by index).
// Every thread of the block must call it; it ends with a barrier.
template <Gram G = Gram::kFma, typename T>
__device__ void compute_distance_tile(const T* __restrict__ x, const T* __restrict__ norms, int n,
                                      const Candidates<T>& cand, int64_t d, int a0, int c0,
                                      DistanceTile<T>& tile) {
  T acc[kMicroRows][kMicroCols];
  tile_dot_products<G>(x, n, a0, cand.rows, cand.count, c0, d, tile.rows, tile.cols, acc);
  for (int r = 0; r < kMicroRows; ++r) {
    for (int c = 0; c < kMicroCols; ++c) {
      const int m = tile_row<G>(r), j = tile_col<G>(c);
      const int i = a0 + m, jj = c0 + j;
      T v = T(0);
      if (i < n && jj < cand.count && !(cand.in_batch && i == jj))
        v = refined_squared_distance(norms[i], cand.norms[jj], acc[r][c], x + int64_t(i) * d,
                                     cand.rows + int64_t(jj) * d, d);
      tile.value[m][j] = v;
    }
  }
  __syncthreads();
}

// The products of a tile's coefficients (tile.value, kTileRows x kTileCols)
// with one staged kTileDepth-feature slice on the tensor cores (mma_3xtf32),
// f(i, k, sum) for each of the calling thread's outputs.  Every thread must
// call them; they end without a barrier.
//
// Rows: P_mk = sum_j value[m][j] cols[k][j].  Warp w multiplies rows
// 16 (w % 4 / 2) + [0, 16) by features 8 (w % 2) + [0, 8) over columns
// 32 (w / 4) + [0, 32); the second half's sums go through tile.rows (not
// staged by a row pass) and are added to the first's.
template <typename Tile, typename F>
__device__ void for_row_products(Tile& tile, F&& f) {
  static_assert(kTileRows == 32 && kTileCols == 64 && kTileDepth == 16, "4 outputs x 2 halves");
  static_assert(sizeof(tile.rows) >= 4 * 32 * 4 * sizeof(float), "room for one half's sums");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int row0 = 16 * (warp % 4 / 2), feature0 = 8 * (warp % 2), half = warp / 4;
  float c[4] = {0, 0, 0, 0};
  for (int k8 = 32 * half; k8 < 32 * half + 32; k8 += 8) {
    float a[4], b[2];
    for (int i = 0; i < 4; ++i) a[i] = tile.value[row0 + g + 8 * (i % 2)][k8 + t + 4 * (i / 2)];
    for (int i = 0; i < 2; ++i) b[i] = tile.cols[feature0 + g][k8 + t + 4 * i];
    mma_3xtf32(c, a, b);
  }
  float* second_half = &tile.rows[0][0] + (warp % 4 * 32 + lane) * 4;
  if (half == 1)
    for (int i = 0; i < 4; ++i) second_half[i] = c[i];
  __syncthreads();
  for (int i = 0; half == 0 && i < 4; ++i)
    f(row0 + g + 8 * (i / 2), feature0 + 2 * t + i % 2, c[i] + second_half[i]);
}

// Columns: Q_jk = sum_m value[m][j] rows[k][m].  Warp w multiplies columns
// 16 (w / 2) + [0, 16) by features 8 (w % 2) + [0, 8) over the 32 rows.
template <typename Tile, typename F>
__device__ void for_column_products(Tile& tile, F&& f) {
  static_assert(kTileRows == 32 && kTileCols == 64 && kTileDepth == 16, "8 outputs, one per warp");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int col0 = 16 * (warp / 2), feature0 = 8 * (warp % 2);
  float c[4] = {0, 0, 0, 0};
  for (int k8 = 0; k8 < kTileRows; k8 += 8) {
    float a[4], b[2];
    for (int i = 0; i < 4; ++i) a[i] = tile.value[k8 + t + 4 * (i / 2)][col0 + g + 8 * (i % 2)];
    for (int i = 0; i < 2; ++i) b[i] = tile.rows[feature0 + g][k8 + t + 4 * i];
    mma_3xtf32(c, a, b);
  }
  for (int i = 0; i < 4; ++i) f(col0 + g + 8 * (i / 2), feature0 + 2 * t + i % 2, c[i]);
}

// Rows that only the calling block adds into (one split, or its split's
// slice: split_rows): plain stores.  Rows that other blocks add into too go
// through a FixedPointSum (fixed_point.cuh) instead.
template <typename T>
struct PlainSum {
  T* out;
  __device__ void add(int64_t element, T value) const { out[element] += value; }
};

// dx[a0 + m] += sum_j tile.value[m][j] * (x[a0 + m] - y[c0 + j]), y the
// candidates' rows (ny of them), through dx.add (PlainSum or FixedPointSum).
// The caller zeroes the coefficients of pairs outside the batch.  FMA sums
// the differences; the tensor cores take x_i sum_j C_ij - sum_j C_ij y_j.
// Every thread must call it; it ends with a barrier.
template <Gram G = Gram::kFma, typename T, typename Sum>
__device__ void accumulate_row_gradient(const T* __restrict__ x, int n, const T* __restrict__ y,
                                        int ny, int64_t d, int a0, int c0, DistanceTile<T>& tile,
                                        const Sum& dx) {
  if constexpr (G != Gram::kFma) {
    for (int m = threadIdx.x; m < kTileRows; m += kThreads) {
      T sum = T(0);
      for (int j = 0; j < kTileCols; ++j) sum += tile.value[m][j];
      tile.row_sum[m] = sum;
    }
    for (int64_t k0 = 0; k0 < d; k0 += kTileDepth) {
      stage_rows<T, kTileCols>(y, ny, d, c0, k0, tile.cols);
      __syncthreads();
      for_row_products(tile, [&](int m, int k, T product) {
        const int64_t row = int64_t(a0) + m, col = k0 + k;
        if (row < n && col < d) dx.add(row * d + col, x[row * d + col] * tile.row_sum[m] - product);
      });
      __syncthreads();
    }
    return;
  }
  const int k = threadIdx.x % kTileDepth, m0 = threadIdx.x / kTileDepth;
  for (int64_t k0 = 0; k0 < d; k0 += kTileDepth) {
    stage_rows<T, kTileCols>(y, ny, d, c0, k0, tile.cols);
    __syncthreads();
    const int64_t col = k0 + k;
    for (int m = m0; m < kTileRows; m += kThreads / kTileDepth) {
      const int64_t row = int64_t(a0) + m;
      if (row < n && col < d) {
        const T xa = x[row * d + col];
        T sum = 0;
        for (int j = 0; j < kTileCols; ++j) sum += tile.value[m][j] * (xa - tile.cols[k][j]);
        dx.add(row * d + col, sum);
      }
    }
    __syncthreads();
  }
}

// dy[c0 + j] += sum_m tile.value[m][j] * (y[c0 + j] - x[a0 + m]), through
// dy.add (PlainSum in a column pass, which owns its columns; FixedPointSum
// under batch-all); on the tensor cores as y_j sum_m C_mj - sum_m C_mj x_m.
// Every thread must call it; it ends with a barrier.
template <Gram G = Gram::kFma, typename T, typename Sum>
__device__ void accumulate_column_gradient(const T* __restrict__ x, int n, const T* __restrict__ y,
                                           int ny, int64_t d, int a0, int c0, DistanceTile<T>& tile,
                                           const Sum& dy) {
  if constexpr (G != Gram::kFma) {
    for (int j = threadIdx.x; j < kTileCols; j += kThreads) {
      T sum = T(0);
      for (int m = 0; m < kTileRows; ++m) sum += tile.value[m][j];
      tile.column_sum[j] = sum;
    }
    for (int64_t k0 = 0; k0 < d; k0 += kTileDepth) {
      stage_rows<T, kTileRows>(x, n, d, a0, k0, tile.rows);
      __syncthreads();
      for_column_products(tile, [&](int j, int k, T product) {
        const int64_t row = int64_t(c0) + j, col = k0 + k;
        if (row < ny && col < d)
          dy.add(row * d + col, y[row * d + col] * tile.column_sum[j] - product);
      });
      __syncthreads();
    }
    return;
  }
  const int k = threadIdx.x % kTileDepth, j0 = threadIdx.x / kTileDepth;
  for (int64_t k0 = 0; k0 < d; k0 += kTileDepth) {
    stage_rows<T, kTileRows>(x, n, d, a0, k0, tile.rows);
    __syncthreads();
    const int64_t col = k0 + k;
    for (int j = j0; j < kTileCols; j += kThreads / kTileDepth) {
      const int64_t row = int64_t(c0) + j;
      if (row < ny && col < d) {
        const T yj = y[row * d + col];
        T sum = 0;
        for (int m = 0; m < kTileRows; ++m) sum += tile.value[m][j] * (yj - tile.rows[k][m]);
        dy.add(row * d + col, sum);
      }
    }
    __syncthreads();
  }
}

// dx_i += coef (x_i - y_j), dy_j -= coef (x_i - y_j), y the candidates' rows:
// the gradient of coef' * d_ij with coef = coef' * distance_gradient_scale(d_ij);
// a null dx or dy is skipped.  All threads of the block share the features;
// fixed point since any block may touch any row (semi-hard's pairs).
template <typename T>
__device__ void scatter_pair_gradient(const T* __restrict__ x, const T* __restrict__ y, int64_t d,
                                      int i, int j, T coef, const FixedPointSum<T>& dx,
                                      const FixedPointSum<T>& dy) {
  for (int64_t k = threadIdx.x; k < d; k += kThreads) {
    const T g = coef * (x[int64_t(i) * d + k] - y[int64_t(j) * d + k]);
    if (dx) dx.add(int64_t(i) * d + k, g);
    if (dy) dy.add(int64_t(j) * d + k, -g);
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace faceops
