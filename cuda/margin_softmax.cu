// Combined-margin softmax on the GPU; math in csrc/faceops/margin_softmax.h.
//
// margin_softmax_loss never holds the n x C logits.  Its cosines come in
// tiles of pairwise.cuh's geometry: a 256-thread block computes a 32-row x
// 64-class tile x̂_i . ŵ_j, staging 16 features of both matrices at a time in
// shared memory, each thread a 2 x 4 micro-tile (about 30 KB for double).
// The passes:
//   1. x̂ and ŵ ((n + C) d scratch; 32 rows per block, 8 threads per row)
//      and each row's target logit s psi(c_iy) and dpsi/dc (one dot product
//      per row, used wherever the target entry appears, so every pass sees
//      the same value);
//   2. log-sum-exp: grid (row blocks x class splits); thread (m, lane) keeps an
//      online (max, sum) of row m over every 8th column of its split's tiles;
//      lanes, then splits, are merged in a fixed order; loss = mean of lse_i
//      minus the target logit;
//   3. dX̂ += G Ŵ: grid (row blocks x class splits), each tile's logits
//      recomputed and turned into G in place, added into the block's own rows
//      of a per-split partial (no two blocks write the same element);
//   4. dŴ += Gᵀ X̂: grid (class blocks x row splits), the same tiles (bitwise
//      the same cosines), into per-split partials of dŴ;
//   5. partials summed in split order, then the normalisation backward (one
//      thread per row, normalized_row_gradient).
// With the tensor-core Gram (float, tensor_cores.cuh) the cosine tiles and the
// products of passes 3 and 4 run on mma_3xtf32, every pass on the same Gram.
// Splits let small batches fill the GPU; the partial gradients they need are
// capped at kMaxPartialBytes each.  No atomics: the results are bitwise
// reproducible for fixed shapes.
//
// The shard entries run the same passes over one shard's classes: pass 1
// and 2 for margin_softmax_shard_forward (the merged (max, sum) of each row
// instead of its lse), pass 1 and 3-5 for margin_softmax_shard_backward (the
// caller's lse and loss scale).
//
// Labels must lie in [0, num_classes) (python/faceops checks them on the
// device).  A row whose label does not (a shard's -1) has no target entry
// (target logit 0) rather than a read out of bounds.
#include "faceops/margin_softmax.h"

#include <cmath>
#include <string>

#include "launch.cuh"
#include "pairwise.cuh"

namespace faceops {
namespace cuda {
namespace detail {

// Blocks a call aims for when it splits the class (or row) walk: about one
// wave on an H100 (132 SMs x 4 blocks of 256 threads at 64 registers); and
// the most scratch the per-split partial gradients of one matrix may take.
constexpr int64_t kSoftmaxTargetBlocks = 512;
constexpr int64_t kMaxPartialBytes = int64_t(64) << 20;
// Threads per tile row in the log-sum-exp pass.
constexpr int kLanes = kThreads / kTileRows;
static_assert(kLanes * kTileRows == kThreads, "each tile row gets the same number of lanes");

// -inf as a start for running maxima (numeric_limits is host-only for nvcc).
template <typename T>
__device__ __forceinline__ T minus_infinity() {
  return -static_cast<T>(HUGE_VAL);
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Blocks of a kernel that takes 32 rows at a time.
inline int64_t row_group_blocks(int64_t rows) {
  const int64_t groups = ceil_div(rows, kTileRows);
  return groups < kMaxBlocks ? groups : kMaxBlocks;
}

// The walk over `tiles` tiles, split for `owners` blocks that each walk it:
// tiles per split (the last split may have fewer, none has zero).
// partial_bytes: scratch each split costs (0: none).
inline int64_t tiles_per_split(int64_t owners, int64_t tiles, int64_t partial_bytes) {
  int64_t splits = ceil_div(kSoftmaxTargetBlocks, owners);
  if (partial_bytes > 0) {
    const int64_t fit = kMaxPartialBytes / partial_bytes;
    splits = splits < fit ? splits : fit;
  }
  splits = splits < 1 ? 1 : (splits > tiles ? tiles : splits);
  return ceil_div(tiles, splits);
}

template <typename T>
struct CosineTile {
  alignas(16) T rows[kTileDepth][kTileRows + kPad<T>];  // x̂[r0 + m][k0 + k] at [k][m]
  alignas(16) T cols[kTileDepth][kTileCols + kPad<T>];  // ŵ[c0 + j][k0 + k] at [k][j]
  T value[kTileRows][kTileCols + 1];                    // cosine of (r0 + m, c0 + j), then G_mj
};

// tile.value = x̂[r0 + m] . ŵ[c0 + j]; 0 outside the matrices.  Every thread
// must call it; it ends with a barrier.
template <Gram G, typename T>
__device__ void compute_cosine_tile(const T* __restrict__ xn, int n, const T* __restrict__ wn,
                                    int num_classes, int64_t d, int r0, int c0,
                                    CosineTile<T>& tile) {
  T acc[kMicroRows][kMicroCols];
  tile_dot_products<G>(xn, n, r0, wn, num_classes, c0, d, tile.rows, tile.cols, acc);
  for (int r = 0; r < kMicroRows; ++r)
    for (int c = 0; c < kMicroCols; ++c) tile.value[tile_row<G>(r)][tile_col<G>(c)] = acc[r][c];
  __syncthreads();
}

// Per-row state of the gradient passes.
template <typename T>
struct RowTerms {
  const int64_t* labels;
  const T* target_logit;       // s psi(c_iy)
  const T* target_derivative;  // dpsi/dc at c_iy
  const T* lse;                // log sum_j exp(logit_ij)
};

// tile.value (cosines) -> G_mj = dL/dc = (softmax - [target]) s (dpsi/dc or 1) / n; 0 outside
// the batch.  Every thread must call it; it ends with a barrier.
template <typename T>
__device__ void cosines_to_coefficients(RowTerms<T> rows, int n, int num_classes, int r0, int c0,
                                        T scale, T inv_n, CosineTile<T>& tile) {
  for (int e = threadIdx.x; e < kTileRows * kTileCols; e += kThreads) {
    const int m = e / kTileCols, j = e % kTileCols;
    const int i = r0 + m, c = c0 + j;
    T g = T(0);
    if (i < n && c < num_classes) {
      const bool is_target = c == rows.labels[i];
      const T logit = is_target ? rows.target_logit[i] : scale * tile.value[m][j];
      g = margin_softmax_cosine_gradient(logit, rows.lse[i], is_target, rows.target_derivative[i],
                                         scale, inv_n);
    }
    tile.value[m][j] = g;
  }
  __syncthreads();
}

// Sum of `value` over the kLanes threads of each row of a 32-row group, in
// lane order (deterministic); every thread must call it, and every thread
// gets its row's sum.  scratch: kThreads.
template <typename T>
__device__ T row_group_sum(T value, T* scratch) {
  scratch[threadIdx.x] = value;
  __syncthreads();
  const int first = threadIdx.x - threadIdx.x % kLanes;
  T sum = T(0);
  for (int l = 0; l < kLanes; ++l) sum += scratch[first + l];
  __syncthreads();
  return sum;
}

// out = x / max(||x||, kNormFloor) row by row; norms gets the unfloored norms
// when non-null.  out may alias x.  A block takes 32 rows at a time, kLanes
// threads per row.  row_group_sum's steps are spelled out: where the sum
// overflowed, every lane of the row reads the whole row again (row_norm)
// before the second barrier, so that no lane has yet overwritten it in place.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    normalize_rows_kernel(const T* x, int64_t n, int64_t d, T* out, T* norms) {
  __shared__ T reduce[kThreads];
  const int m = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  for (int64_t r0 = blockIdx.x * int64_t(kTileRows); r0 < n; r0 += int64_t(gridDim.x) * kTileRows) {
    const int64_t i = r0 + m;
    const T* row = x + i * d;
    T sum = T(0);
    if (i < n)
      for (int64_t k = lane; k < d; k += kLanes) sum += row[k] * row[k];
    reduce[threadIdx.x] = sum;
    __syncthreads();
    sum = T(0);
    for (int l = 0; l < kLanes; ++l) sum += reduce[threadIdx.x - lane + l];
    RowNorm<T> norm{};
    if (i < n) norm = row_norm(row, d, sum);
    __syncthreads();
    if (i >= n) continue;
    write_normalized_row(row, lane, kLanes, d, norm, out + i * d);
    if (lane == 0 && norms) norms[i] = norm.norm;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    normalize_rows_backward_kernel(const T* __restrict__ normalized, const T* __restrict__ norms,
                                   const T* __restrict__ d_out, int64_t n, int64_t d, T* d_x) {
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kThreads)
    normalized_row_gradient(normalized + i * d, norms[i], d_out + i * d, d, d_x + i * d);
}

// c_iy = x̂_i . ŵ_{y_i} (32 rows per block, kLanes threads per row), then
// s psi(c_iy) and dpsi/dc.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    margin_softmax_target_kernel(const T* __restrict__ xn, const int64_t* __restrict__ labels,
                                 const T* __restrict__ wn, int64_t n, int64_t d,
                                 int64_t num_classes, T scale, T m1, T m2, T m3, T* target_logit,
                                 T* target_derivative) {
  __shared__ T reduce[kThreads];
  const int m = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  for (int64_t r0 = blockIdx.x * int64_t(kTileRows); r0 < n; r0 += int64_t(gridDim.x) * kTileRows) {
    const int64_t i = r0 + m, label = i < n ? labels[i] : -1;
    const bool in_range = label >= 0 && label < num_classes;
    T dot = T(0);
    if (in_range)
      for (int64_t k = lane; k < d; k += kLanes) dot += xn[i * d + k] * wn[label * d + k];
    dot = row_group_sum(dot, reduce);
    if (i < n && lane == 0) {
      T derivative = T(0);
      const T psi = margin_target_cosine(dot, m1, m2, m3, &derivative);
      target_logit[i] = in_range ? scale * psi : T(0);
      target_derivative[i] = in_range ? derivative : T(0);
    }
  }
}

// Adds (max, sum) of exp(logit - max) of another part into (*max, *sum).
template <typename T>
__device__ __forceinline__ void merge_exp_sum(T other_max, T other_sum, T* max, T* sum) {
  if (other_sum == T(0)) return;
  if (other_max > *max) {
    *sum = *sum * math::exp(*max - other_max) + other_sum;
    *max = other_max;
  } else {
    *sum += other_sum * math::exp(other_max - *max);
  }
}

// Block (row block b, split s): (max, sum exp) of every row of b over the
// classes of s, into partial_*[s n + i].
template <typename T, Gram G>
__global__ void __launch_bounds__(kThreads)
    margin_softmax_lse_kernel(const T* __restrict__ xn, const int64_t* __restrict__ labels,
                              const T* __restrict__ wn, const T* __restrict__ target_logit, int n,
                              int num_classes, int64_t d, T scale, int64_t row_blocks,
                              int64_t class_tiles_per_split, T* partial_max, T* partial_sum) {
  __shared__ CosineTile<T> tile;
  __shared__ T lane_max[kThreads], lane_sum[kThreads];
  const int64_t split = blockIdx.x / row_blocks;
  const int r0 = static_cast<int>((blockIdx.x % row_blocks) * kTileRows);
  const int64_t class_tiles = ceil_div(num_classes, kTileCols);
  const int64_t first = split * class_tiles_per_split;
  const int64_t last =
      first + class_tiles_per_split < class_tiles ? first + class_tiles_per_split : class_tiles;
  const int m = threadIdx.x / kLanes, lane = threadIdx.x % kLanes, i = r0 + m;
  const int64_t label = i < n ? labels[i] : -1;
  T max = minus_infinity<T>(), sum = T(0);
  for (int64_t t = first; t < last; ++t) {
    const int c0 = static_cast<int>(t * kTileCols);
    compute_cosine_tile<G>(xn, n, wn, num_classes, d, r0, c0, tile);
    for (int j = lane; i < n && j < kTileCols && c0 + j < num_classes; j += kLanes) {
      const T logit = c0 + j == label ? target_logit[i] : scale * tile.value[m][j];
      if (logit > max) {  // online log-sum-exp: rescale the sum to the new max
        sum = sum * math::exp(max - logit) + T(1);
        max = logit;
      } else {
        sum += math::exp(logit - max);
      }
    }
    __syncthreads();  // the next tile overwrites tile.value
  }
  lane_max[threadIdx.x] = max;
  lane_sum[threadIdx.x] = sum;
  __syncthreads();
  if (lane == 0 && i < n) {
    T row_max = minus_infinity<T>(), row_sum = T(0);
    for (int l = 0; l < kLanes; ++l)
      merge_exp_sum(lane_max[threadIdx.x + l], lane_sum[threadIdx.x + l], &row_max, &row_sum);
    partial_max[split * n + i] = row_max;
    partial_sum[split * n + i] = row_sum;
  }
}

// Per row, from the splits' partials (in split order): lse_i and its loss
// term into lse and row_loss, or (a shard's part) the merged (max, sum) into
// row_max and row_sum; the other pair is null.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    margin_softmax_rows_kernel(const T* __restrict__ partial_max, const T* __restrict__ partial_sum,
                               int64_t splits, int64_t n, const T* __restrict__ target_logit,
                               T* lse, double* row_loss, T* row_max, T* row_sum) {
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kThreads) {
    T max = minus_infinity<T>(), sum = T(0);
    for (int64_t s = 0; s < splits; ++s)
      merge_exp_sum(partial_max[s * n + i], partial_sum[s * n + i], &max, &sum);
    if (row_max) {
      row_max[i] = max;
      row_sum[i] = sum;
      continue;
    }
    lse[i] = max + math::log(sum);
    row_loss[i] = static_cast<double>(lse[i]) - static_cast<double>(target_logit[i]);
  }
}

// dxn[r0 + m][k0 + k] += sum_j G_mj ŵ_(c0 + j)(k0 + k) for the staged features
// k < kTileDepth (tile.value = G, tile.cols = ŵ's features), on FMA or the
// tensor cores (for_row_products).  Every thread must call it.
template <Gram G, typename T>
__device__ void add_row_products(CosineTile<T>& tile, int n, int64_t d, int r0, int64_t k0,
                                 T* dxn) {
  if constexpr (G == Gram::kFma) {
    const int k = threadIdx.x % kTileDepth, m0 = threadIdx.x / kTileDepth;
    const int64_t col = k0 + k;
    for (int m = m0; m < kTileRows; m += kThreads / kTileDepth) {
      const int64_t row = int64_t(r0) + m;
      if (row >= n || col >= d) continue;
      T sum = T(0);
      for (int j = 0; j < kTileCols; ++j) sum += tile.value[m][j] * tile.cols[k][j];
      dxn[row * d + col] += sum;
    }
  } else {
    for_row_products(tile, [&](int m, int k, T product) {
      const int64_t row = int64_t(r0) + m, col = k0 + k;
      if (row < n && col < d) dxn[row * d + col] += product;
    });
  }
}

// dwn[c0 + j][k0 + k] += sum_m G_mj x̂_(r0 + m)(k0 + k) for the staged features
// k < kTileDepth (tile.value = G, tile.rows = x̂'s features), on FMA or the
// tensor cores (for_column_products).  Every thread must call it.
template <Gram G, typename T>
__device__ void add_column_products(CosineTile<T>& tile, int num_classes, int64_t d, int c0,
                                    int64_t k0, T* dwn) {
  if constexpr (G == Gram::kFma) {
    const int k = threadIdx.x % kTileDepth, j0 = threadIdx.x / kTileDepth;
    const int64_t col = k0 + k;
    for (int j = j0; j < kTileCols; j += kThreads / kTileDepth) {
      const int64_t c = int64_t(c0) + j;
      if (c >= num_classes || col >= d) continue;
      T sum = T(0);
      for (int m = 0; m < kTileRows; ++m) sum += tile.value[m][j] * tile.rows[k][m];
      dwn[c * d + col] += sum;
    }
  } else {
    for_column_products(tile, [&](int j, int k, T product) {
      const int64_t cls = int64_t(c0) + j, col = k0 + k;
      if (cls < num_classes && col < d) dwn[cls * d + col] += product;
    });
  }
}

// Block (row block b, split s): partial[s] rows of b += G Ŵ over the classes
// of s.  partial starts zeroed.
template <typename T, Gram G>
__global__ void __launch_bounds__(kThreads)
    margin_softmax_dx_kernel(const T* __restrict__ xn, const T* __restrict__ wn, RowTerms<T> rows,
                             int n, int num_classes, int64_t d, T scale, T inv_n,
                             int64_t row_blocks, int64_t class_tiles_per_split, T* partial) {
  __shared__ CosineTile<T> tile;
  const int64_t split = blockIdx.x / row_blocks;
  const int r0 = static_cast<int>((blockIdx.x % row_blocks) * kTileRows);
  const int64_t class_tiles = ceil_div(num_classes, kTileCols);
  const int64_t first = split * class_tiles_per_split;
  const int64_t last =
      first + class_tiles_per_split < class_tiles ? first + class_tiles_per_split : class_tiles;
  T* dxn = partial + split * int64_t(n) * d;
  for (int64_t t = first; t < last; ++t) {
    const int c0 = static_cast<int>(t * kTileCols);
    compute_cosine_tile<G>(xn, n, wn, num_classes, d, r0, c0, tile);
    cosines_to_coefficients(rows, n, num_classes, r0, c0, scale, inv_n, tile);
    for (int64_t k0 = 0; k0 < d; k0 += kTileDepth) {
      stage_rows<T, kTileCols>(wn, num_classes, d, c0, k0, tile.cols);
      __syncthreads();
      add_row_products<G>(tile, n, d, r0, k0, dxn);
      __syncthreads();
    }
  }
}

// Block (class block b, split s): partial[s] rows of b += Gᵀ X̂ over the
// batch rows of s.  partial starts zeroed.
template <typename T, Gram G>
__global__ void __launch_bounds__(kThreads)
    margin_softmax_dw_kernel(const T* __restrict__ xn, const T* __restrict__ wn, RowTerms<T> rows,
                             int n, int num_classes, int64_t d, T scale, T inv_n,
                             int64_t class_blocks, int64_t row_tiles_per_split, T* partial) {
  __shared__ CosineTile<T> tile;
  const int64_t split = blockIdx.x / class_blocks;
  const int c0 = static_cast<int>((blockIdx.x % class_blocks) * kTileCols);
  const int64_t row_tiles = ceil_div(n, kTileRows);
  const int64_t first = split * row_tiles_per_split;
  const int64_t last =
      first + row_tiles_per_split < row_tiles ? first + row_tiles_per_split : row_tiles;
  T* dwn = partial + split * int64_t(num_classes) * d;
  for (int64_t t = first; t < last; ++t) {
    const int r0 = static_cast<int>(t * kTileRows);
    compute_cosine_tile<G>(xn, n, wn, num_classes, d, r0, c0, tile);
    cosines_to_coefficients(rows, n, num_classes, r0, c0, scale, inv_n, tile);
    for (int64_t k0 = 0; k0 < d; k0 += kTileDepth) {
      stage_rows<T, kTileRows>(xn, n, d, r0, k0, tile.rows);
      __syncthreads();
      add_column_products<G>(tile, num_classes, d, c0, k0, dwn);
      __syncthreads();
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    target_margin_forward_kernel(const T* cosine, const int64_t* __restrict__ labels, int64_t n,
                                 int64_t num_classes, T m1, T m2, T m3, T* out) {
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n * num_classes;
       e += int64_t(gridDim.x) * kThreads) {
    T value = cosine[e];
    if (e % num_classes == labels[e / num_classes]) {
      T derivative;
      value = margin_target_cosine(value, m1, m2, m3, &derivative);
    }
    out[e] = value;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    target_margin_backward_kernel(const T* __restrict__ cosine, const int64_t* __restrict__ labels,
                                  const T* d_out, int64_t n, int64_t num_classes, T m1, T m2, T m3,
                                  T* d_cosine) {
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n * num_classes;
       e += int64_t(gridDim.x) * kThreads) {
    T g = d_out[e];
    if (e % num_classes == labels[e / num_classes]) {
      T derivative = T(0);
      margin_target_cosine(cosine[e], m1, m2, m3, &derivative);
      g *= derivative;
    }
    d_cosine[e] = g;
  }
}

// Labels and NaN/Inf live on the device and are checked by python/faceops.
inline void check_margin_softmax_inputs(int64_t n, int64_t d, int64_t num_classes, double scale,
                                        double m1, double m2, double m3) {
  faceops::detail::check_batch("x", n, d);
  faceops::detail::require(num_classes > 0, "weight: expected at least one class (C > 0)");
  faceops::detail::check_margin(scale, m1, m2, m3);
  check_rows_fit_int("x", n);
  check_rows_fit_int("weight", num_classes);
}

// The normalised rows of `matrix` and their norms, on `stream`.
template <typename T>
class NormalizedRows {
 public:
  NormalizedRows(const T* matrix, int64_t rows, int64_t d, cudaStream_t stream)
      : values_(rows * d, stream), norms_(rows, stream) {
    launch("normalize_rows_kernel", normalize_rows_kernel<T>, row_group_blocks(rows), stream,
           matrix, rows, d, values_.get(), norms_.get());
  }
  const T* values() const { return values_.get(); }
  const T* norms() const { return norms_.get(); }

 private:
  DeviceArray<T> values_, norms_;
};

// gradient = the normalisation backward of partial's first `rows` x d block,
// after the splits are summed into it.
template <typename T>
void finish_gradient(const NormalizedRows<T>& normalized, T* partial, int64_t splits, int64_t rows,
                     int64_t d, T* gradient, cudaStream_t stream) {
  if (splits > 1)
    launch("sum_splits_kernel", sum_splits_kernel<T>, grid_for(rows * d), stream, partial,
           partial + rows * d, splits - 1, rows * d);
  launch("normalize_rows_backward_kernel", normalize_rows_backward_kernel<T>, grid_for(rows),
         stream, normalized.values(), normalized.norms(), partial, rows, d, gradient);
}

// The passes over one set of classes (all of them, or a shard's), sharing
// pass 1: x̂, ŵ and the rows' target terms (target_logit into the caller's
// array when given).
template <typename T>
class MarginSoftmaxPasses {
 public:
  MarginSoftmaxPasses(const T* x, const int64_t* labels, const T* weight, int64_t n, int64_t d,
                      int64_t num_classes, T scale, T m1, T m2, T m3, T* target_logit,
                      cudaStream_t stream)
      : labels_(labels), n_(n), d_(d), num_classes_(num_classes), scale_(scale), stream_(stream),
        xn_(x, n, d, stream), wn_(weight, num_classes, d, stream),
        own_target_logit_(target_logit ? 0 : n, stream), target_derivative_(n, stream),
        target_logit_(target_logit ? target_logit : own_target_logit_.get()),
        gram_(gram_for<T>()) {
    launch("margin_softmax_target_kernel", margin_softmax_target_kernel<T>, row_group_blocks(n),
           stream, xn_.values(), labels, wn_.values(), n, d, num_classes, scale, m1, m2, m3,
           target_logit_, target_derivative_.get());
  }

  // Pass 2; writes (lse, row_loss) or (row_max, row_sum), as margin_softmax_rows_kernel.
  void log_sum_exp(T* lse, double* row_loss, T* row_max, T* row_sum) const {
    const int64_t row_tiles = ceil_div(n_, kTileRows);
    const int64_t class_tiles = ceil_div(num_classes_, kTileCols);
    const int64_t per_split = tiles_per_split(row_tiles, class_tiles, 0);
    const int64_t splits = ceil_div(class_tiles, per_split);
    DeviceArray<T> partial_max(splits * n_, stream_), partial_sum(splits * n_, stream_);
    launch("margin_softmax_lse_kernel",
           pick_gram(gram_, margin_softmax_lse_kernel<T, Gram::kFma>,
                     margin_softmax_lse_kernel<T, kTensorCoreGram<T>>),
           row_tiles * splits, stream_, xn_.values(), labels_, wn_.values(), target_logit_,
           static_cast<int>(n_), static_cast<int>(num_classes_), d_, scale_, row_tiles, per_split,
           partial_max.get(), partial_sum.get());
    launch("margin_softmax_rows_kernel", margin_softmax_rows_kernel<T>, grid_for(n_), stream_,
           partial_max.get(), partial_sum.get(), splits, n_, target_logit_, lse, row_loss, row_max,
           row_sum);
  }

  // Passes 3-5 with every G scaled by loss_scale; dx and dweight may be null.
  void gradients(const T* lse, T loss_scale, T* dx, T* dweight) const {
    const RowTerms<T> terms{labels_, target_logit_, target_derivative_.get(), lse};
    const int rows = static_cast<int>(n_), classes = static_cast<int>(num_classes_);
    const int64_t row_tiles = ceil_div(n_, kTileRows);
    const int64_t class_tiles = ceil_div(num_classes_, kTileCols);
    if (dx) {
      const int64_t per_split =
          tiles_per_split(row_tiles, class_tiles, n_ * d_ * int64_t(sizeof(T)));
      const int64_t splits = ceil_div(class_tiles, per_split);
      DeviceArray<T> partial(splits * n_ * d_, stream_);
      zero_async(partial.get(), splits * n_ * d_ * int64_t(sizeof(T)), stream_);
      launch("margin_softmax_dx_kernel",
             pick_gram(gram_, margin_softmax_dx_kernel<T, Gram::kFma>,
                       margin_softmax_dx_kernel<T, kTensorCoreGram<T>>),
             row_tiles * splits, stream_, xn_.values(), wn_.values(), terms, rows, classes, d_,
             scale_, loss_scale, row_tiles, per_split, partial.get());
      finish_gradient(xn_, partial.get(), splits, n_, d_, dx, stream_);
    }
    if (dweight) {
      const int64_t per_split =
          tiles_per_split(class_tiles, row_tiles, num_classes_ * d_ * int64_t(sizeof(T)));
      const int64_t splits = ceil_div(row_tiles, per_split);
      DeviceArray<T> partial(splits * num_classes_ * d_, stream_);
      zero_async(partial.get(), splits * num_classes_ * d_ * int64_t(sizeof(T)), stream_);
      launch("margin_softmax_dw_kernel",
             pick_gram(gram_, margin_softmax_dw_kernel<T, Gram::kFma>,
                       margin_softmax_dw_kernel<T, kTensorCoreGram<T>>),
             class_tiles * splits, stream_, xn_.values(), wn_.values(), terms, rows, classes, d_,
             scale_, loss_scale, class_tiles, per_split, partial.get());
      finish_gradient(wn_, partial.get(), splits, num_classes_, d_, dweight, stream_);
    }
  }

 private:
  const int64_t* labels_;
  int64_t n_, d_, num_classes_;
  T scale_;
  cudaStream_t stream_;
  NormalizedRows<T> xn_, wn_;
  DeviceArray<T> own_target_logit_, target_derivative_;
  T* target_logit_;
  Gram gram_;  // one for every pass: the gradient passes recompute the lse pass's cosines
};

}  // namespace detail

template <typename T>
void normalize_rows(const T* x, int64_t n, int64_t d, T* out, T* norms, void* stream_handle) {
  faceops::detail::check_batch("x", n, d);
  detail::NvtxRange range("faceops::normalize_rows");
  detail::launch("normalize_rows_kernel", detail::normalize_rows_kernel<T>,
                 detail::row_group_blocks(n), detail::as_stream(stream_handle), x, n, d, out,
                 norms);
}

template <typename T>
void normalize_rows_backward(const T* normalized, const T* norms, const T* d_out, int64_t n,
                             int64_t d, T* d_x, void* stream_handle) {
  faceops::detail::check_batch("normalized", n, d);
  detail::NvtxRange range("faceops::normalize_rows_backward");
  detail::launch("normalize_rows_backward_kernel", detail::normalize_rows_backward_kernel<T>,
                 detail::grid_for(n), detail::as_stream(stream_handle), normalized, norms, d_out, n,
                 d, d_x);
}

template <typename T>
void margin_softmax_loss(const T* x, const int64_t* labels, const T* weight, int64_t n, int64_t d,
                         int64_t num_classes, T scale, T m1, T m2, T m3, T* loss, T* dx, T* dweight,
                         void* stream_handle) {
  using namespace detail;
  check_margin_softmax_inputs(n, d, num_classes, scale, m1, m2, m3);
  NvtxRange range("faceops::margin_softmax_loss");
  const cudaStream_t stream = as_stream(stream_handle);
  const MarginSoftmaxPasses<T> passes(x, labels, weight, n, d, num_classes, scale, m1, m2, m3,
                                      nullptr, stream);
  DeviceArray<T> lse(n, stream);
  {
    DeviceArray<double> row_loss(n, stream);
    passes.log_sum_exp(lse.get(), row_loss.get(), nullptr, nullptr);
    launch("finalize_sum_kernel", finalize_sum_kernel<T>, 1, stream, row_loss.get(), nullptr, n,
           1.0 / static_cast<double>(n), loss, nullptr);
  }
  passes.gradients(lse.get(), T(1) / static_cast<T>(n), dx, dweight);
}

template <typename T>
void margin_softmax_shard_forward(const T* x, const int64_t* labels, const T* weight, int64_t n,
                                  int64_t d, int64_t num_classes, T scale, T m1, T m2, T m3,
                                  T* row_max, T* row_sum, T* target_logit, void* stream_handle) {
  using namespace detail;
  check_margin_softmax_inputs(n, d, num_classes, scale, m1, m2, m3);
  NvtxRange range("faceops::margin_softmax_shard_forward");
  const MarginSoftmaxPasses<T> passes(x, labels, weight, n, d, num_classes, scale, m1, m2, m3,
                                      target_logit, as_stream(stream_handle));
  passes.log_sum_exp(nullptr, nullptr, row_max, row_sum);
}

template <typename T>
void margin_softmax_shard_backward(const T* x, const int64_t* labels, const T* weight, int64_t n,
                                   int64_t d, int64_t num_classes, T scale, T m1, T m2, T m3,
                                   const T* log_sum_exp, T loss_scale, T* dx, T* dweight,
                                   void* stream_handle) {
  using namespace detail;
  check_margin_softmax_inputs(n, d, num_classes, scale, m1, m2, m3);
  faceops::detail::require(std::isfinite(static_cast<double>(loss_scale)),
                           "loss_scale: expected a finite number");
  NvtxRange range("faceops::margin_softmax_shard_backward");
  const MarginSoftmaxPasses<T> passes(x, labels, weight, n, d, num_classes, scale, m1, m2, m3,
                                      nullptr, as_stream(stream_handle));
  passes.gradients(log_sum_exp, loss_scale, dx, dweight);
}

template <typename T>
void target_margin_forward(const T* cosine, const int64_t* labels, int64_t n, int64_t num_classes,
                           T m1, T m2, T m3, T* out, void* stream_handle) {
  faceops::detail::check_batch("cosine", n, num_classes);
  faceops::detail::check_margin(1.0, m1, m2, m3);
  detail::NvtxRange range("faceops::target_margin_forward");
  detail::launch("target_margin_forward_kernel", detail::target_margin_forward_kernel<T>,
                 detail::grid_for(n * num_classes), detail::as_stream(stream_handle), cosine,
                 labels, n, num_classes, m1, m2, m3, out);
}

template <typename T>
void target_margin_backward(const T* cosine, const int64_t* labels, const T* d_out, int64_t n,
                            int64_t num_classes, T m1, T m2, T m3, T* d_cosine,
                            void* stream_handle) {
  faceops::detail::check_batch("cosine", n, num_classes);
  faceops::detail::check_margin(1.0, m1, m2, m3);
  detail::NvtxRange range("faceops::target_margin_backward");
  detail::launch("target_margin_backward_kernel", detail::target_margin_backward_kernel<T>,
                 detail::grid_for(n * num_classes), detail::as_stream(stream_handle), cosine,
                 labels, d_out, n, num_classes, m1, m2, m3, d_cosine);
}

#define FACEOPS_INSTANTIATE_MARGIN_SOFTMAX(T)                                                      \
  template void normalize_rows<T>(const T*, int64_t, int64_t, T*, T*, void*);                      \
  template void normalize_rows_backward<T>(const T*, const T*, const T*, int64_t, int64_t, T*,     \
                                           void*);                                                 \
  template void margin_softmax_loss<T>(const T*, const int64_t*, const T*, int64_t, int64_t,       \
                                       int64_t, T, T, T, T, T*, T*, T*, void*);                    \
  template void margin_softmax_shard_forward<T>(const T*, const int64_t*, const T*, int64_t,        \
                                                int64_t, int64_t, T, T, T, T, T*, T*, T*, void*);  \
  template void margin_softmax_shard_backward<T>(const T*, const int64_t*, const T*, int64_t,       \
                                                 int64_t, int64_t, T, T, T, T, const T*, T, T*,    \
                                                 T*, void*);                                       \
  template void target_margin_forward<T>(const T*, const int64_t*, int64_t, int64_t, T, T, T, T*,  \
                                         void*);                                                   \
  template void target_margin_backward<T>(const T*, const int64_t*, const T*, int64_t, int64_t, T, \
                                          T, T, T*, void*);
FACEOPS_INSTANTIATE_MARGIN_SOFTMAX(float)
FACEOPS_INSTANTIATE_MARGIN_SOFTMAX(double)

}  // namespace cuda
}  // namespace faceops
