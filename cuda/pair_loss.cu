// Multibatch pair loss on the GPU; math in csrc/faceops/pair_loss.h.  Each
// block owns kTileRows rows and streams over every splits-th candidate tile
// once: loss, dL/dtheta and (because y_ij and D_ij are symmetric) the gradient
// of its own rows from those candidates.  With one split (N >= 32768) the
// block adds into dx directly; smaller batches are split over more blocks,
// each of which adds into its own slice of a scratch, summed into dx in split
// order (SplitPartials).  No atomics: loss, dtheta and dx are bitwise
// reproducible.  Memory: O(N) (squared norms and per-block partial sums) plus,
// for N < 32768, fewer than 32768 x D elements of split slices.  Against a
// reference set (pair_loss_ref) the candidates are the rows of ref less each
// anchor's own copy; each pair also moves its candidate: when dref is asked
// for, a second pass (pair_loss_column_kernel) has blocks own candidate tiles
// and walk the anchors, recomputing the same distance tiles (twice the
// distance work), split the same way (fewer than 65536 x D scratch elements
// for M < 65536).  dx, dref are scaled by 1 / (number of pairs) on the device;
// all of it is bitwise reproducible too.
#include "faceops/pair_loss.h"

#include "launch.cuh"
#include "pairwise.cuh"

namespace faceops {
namespace cuda {
namespace detail {

// A block's share of the loss, the dterm sum and the pair count.
struct PairSums {
  double loss = 0, dsquared = 0;
  long long pairs = 0;
};

// Overwrites tile (a0, c0)'s distances with the pairs' coefficients
// pair_weight * dterm (0 outside the batch and for own copies) and, unless
// sums is null, adds this thread's share of the loss, the dterm sum and the
// pair count to it.  Returns, in every thread, whether any coefficient is
// non-zero.  Every thread must call it.
template <typename T>
__device__ bool pair_coefficients(const int64_t* __restrict__ labels, int n,
                                  const Candidates<T>& cand, int a0, int c0, T theta,
                                  T pair_weight, DistanceTile<T>& tile, PairSums* sums) {
  bool any_active = false;
  for (int e = threadIdx.x; e < kTileRows * kTileCols; e += kThreads) {
    const int m = e / kTileCols, j = e % kTileCols;
    const int i = a0 + m, jj = c0 + j;
    T coef = T(0);
    if (i < n && jj < cand.count && jj != cand.own_copy(i)) {
      T dterm = T(0);
      const T term = pair_term(tile.value[m][j], labels[i] == cand.labels[jj], theta, &dterm);
      if (sums) {
        sums->loss += term;
        sums->dsquared += dterm;
        ++sums->pairs;
      }
      coef = pair_weight * dterm;
    }
    tile.value[m][j] = coef;
    any_active = any_active || coef != T(0);
  }
  return __syncthreads_or(any_active);
}

// Within the batch a pair's coefficient is pair_weight * dterm for its row
// only (the block of the other row adds the mirror); against a reference set
// partial_count receives the block's number of pairs, and the candidates'
// gradient comes from pair_loss_column_kernel.
template <typename T, Gram G>
__global__ void __launch_bounds__(kThreads)
    pair_loss_tile_kernel(const T* __restrict__ x, const T* __restrict__ norms,
                          const int64_t* __restrict__ labels, int n, Candidates<T> cand, int64_t d,
                          const T* __restrict__ theta, T pair_weight, int splits, T* dx,
                          T* dx_partial, double* partial_loss, double* partial_dsquared,
                          long long* partial_count) {
  __shared__ DistanceTile<T> tile;
  __shared__ double reduce[kThreads];
  __shared__ long long reduce_count[kThreads];
  const int a0 = (blockIdx.x / splits) * kTileRows, split = blockIdx.x % splits;
  const T theta_value = *theta;
  PairSums sums;
  for (int c0 = split * kTileCols; c0 < cand.count; c0 += splits * kTileCols) {
    compute_distance_tile<G>(x, norms, n, cand, d, a0, c0, tile);
    // A tile of inactive hinges adds nothing to dx: skip its product.
    if (pair_coefficients(labels, n, cand, a0, c0, theta_value, pair_weight, tile, &sums) && dx)
      accumulate_row_gradient<G>(x, n, cand.rows, cand.count, d, a0, c0, tile,
                              PlainSum<T>{split_rows(dx, dx_partial, split, n, d)});
  }
  const double loss = block_sum(sums.loss, reduce);
  const double dsquared = block_sum(sums.dsquared, reduce);
  const long long pairs = partial_count ? block_sum(sums.pairs, reduce_count) : 0;
  if (threadIdx.x == 0) {
    partial_loss[blockIdx.x] = loss;
    partial_dsquared[blockIdx.x] = dsquared;
    if (partial_count) partial_count[blockIdx.x] = pairs;
  }
}

// The candidates' gradient against a reference set: block (candidate tile,
// split) walks every splits-th anchor tile, recomputes the tiles of
// pair_loss_tile_kernel (bitwise the same distances and coefficients) and
// adds into its own candidates' rows of its split's slice (split_rows).
template <typename T, Gram G>
__global__ void __launch_bounds__(kThreads)
    pair_loss_column_kernel(const T* __restrict__ x, const T* __restrict__ norms,
                            const int64_t* __restrict__ labels, int n, Candidates<T> cand,
                            int64_t d, const T* __restrict__ theta, T pair_weight, int splits,
                            T* dcand, T* dcand_partial) {
  __shared__ DistanceTile<T> tile;
  const int c0 = (blockIdx.x / splits) * kTileCols, split = blockIdx.x % splits;
  const T theta_value = *theta;
  for (int a0 = split * kTileRows; a0 < n; a0 += splits * kTileRows) {
    compute_distance_tile<G>(x, norms, n, cand, d, a0, c0, tile);
    if (pair_coefficients(labels, n, cand, a0, c0, theta_value, pair_weight, tile, nullptr))
      accumulate_column_gradient<G>(
          x, n, cand.rows, cand.count, d, a0, c0, tile,
          PlainSum<T>{split_rows(dcand, dcand_partial, split, cand.count, d)});
  }
}

}  // namespace detail

template <typename T>
void pair_loss(const T* x, const int64_t* labels, int64_t n, int64_t d, const T* theta, T* loss,
               T* dx, T* dtheta, void* stream_handle) {
  faceops::detail::check_batch("x", n, d);
  faceops::detail::check_theta_address(theta);
  detail::check_rows_fit_int("x", n);
  detail::NvtxRange range("faceops::pair_loss");
  const cudaStream_t stream = detail::as_stream(stream_handle);
  const double pair_count = static_cast<double>(n) * static_cast<double>(n - 1);
  const double inv_pairs = pair_count > 0 ? 1.0 / pair_count : 0.0;
  const int64_t splits = detail::candidate_splits(n);
  const int64_t blocks = (n + detail::kTileRows - 1) / detail::kTileRows * splits;

  detail::DeviceArray<T> norms(n, stream);
  detail::DeviceArray<double> partial(2 * blocks, stream);
  const detail::SplitPartials<T> dx_partial(dx, n, d, splits, stream);
  if (dx) detail::zero_async(dx, n * d * int64_t(sizeof(T)), stream);
  detail::launch("pairwise_norms_kernel", detail::pairwise_norms_kernel<T>, detail::grid_for(n),
                 stream, x, static_cast<int>(n), d, norms.get());
  const detail::Candidates<T> batch{x, norms.get(), labels, static_cast<int>(n), nullptr, true};
  // Both ordered pairs (i, j) and (j, i) carry dterm; dD/dx_i = 2 (x_i - x_j).
  const detail::Gram gram = detail::gram_for<T>();
  detail::launch("pair_loss_tile_kernel",
                 detail::pick_gram(gram, detail::pair_loss_tile_kernel<T, detail::Gram::kFma>,
                                   detail::pair_loss_tile_kernel<T, detail::kTensorCoreGram<T>>),
                 blocks, stream, x, norms.get(), labels, static_cast<int>(n), batch, d, theta,
                 static_cast<T>(4 * inv_pairs), static_cast<int>(splits), dx, dx_partial.get(),
                 partial.get(), partial.get() + blocks, nullptr);
  dx_partial.sum_into(stream);
  detail::launch("finalize_sum_kernel", detail::finalize_sum_kernel<T>, 1, stream, partial.get(),
                 nullptr, blocks, inv_pairs, loss, nullptr);
  if (dtheta)
    detail::launch("finalize_sum_kernel", detail::finalize_sum_kernel<T>, 1, stream,
                   partial.get() + blocks, nullptr, blocks, -inv_pairs, dtheta, nullptr);
}

template <typename T>
void pair_loss_ref(const T* x, const int64_t* labels, int64_t n, int64_t d, const T* ref,
                   const int64_t* ref_labels, int64_t m, const int64_t* self_index,
                   const T* theta, T* loss, T* count, T* dx, T* dref, T* dtheta, void* stream_handle) {
  faceops::detail::check_batch("x", n, d);
  faceops::detail::check_theta_address(theta);
  faceops::detail::check_batch("ref", m, d);
  detail::check_rows_fit_int("x", n);
  detail::check_rows_fit_int("ref", m);
  detail::NvtxRange range("faceops::pair_loss_ref");
  const cudaStream_t stream = detail::as_stream(stream_handle);
  const int64_t splits = detail::candidate_splits(n, m);
  const int64_t blocks = (n + detail::kTileRows - 1) / detail::kTileRows * splits;

  detail::DeviceArray<T> norms(n, stream), ref_norms(m, stream), scalars(2, stream);
  detail::DeviceArray<double> partial(2 * blocks, stream);
  detail::DeviceArray<long long> partial_count(blocks, stream);
  const detail::SplitPartials<T> dx_partial(dx, n, d, splits, stream);
  // Only the gradients asked for are written: no m x d buffer when dref is null.
  detail::zero_async(dx, n * d * int64_t(sizeof(T)), stream);
  detail::zero_async(dref, m * d * int64_t(sizeof(T)), stream);
  detail::launch("pairwise_norms_kernel", detail::pairwise_norms_kernel<T>, detail::grid_for(n),
                 stream, x, static_cast<int>(n), d, norms.get());
  detail::launch("pairwise_norms_kernel", detail::pairwise_norms_kernel<T>, detail::grid_for(m),
                 stream, ref, static_cast<int>(m), d, ref_norms.get());
  const detail::Candidates<T> candidates{ref, ref_norms.get(), ref_labels, static_cast<int>(m),
                                         self_index, false};
  // One ordered pair (anchor, candidate); dD/dx_a = 2 (x_a - ref_j); scaled by
  // 1 / (number of pairs) below.
  // Both kernels on one Gram: the column pass recomputes the tile pass's bits.
  const detail::Gram gram = detail::gram_for<T>();
  detail::launch("pair_loss_tile_kernel",
                 detail::pick_gram(gram, detail::pair_loss_tile_kernel<T, detail::Gram::kFma>,
                                   detail::pair_loss_tile_kernel<T, detail::kTensorCoreGram<T>>),
                 blocks, stream, x, norms.get(), labels, static_cast<int>(n), candidates, d, theta,
                 T(2), static_cast<int>(splits), dx, dx_partial.get(), partial.get(),
                 partial.get() + blocks, partial_count.get());
  dx_partial.sum_into(stream);
  if (dref) {
    const int64_t column_splits = detail::candidate_splits(m, n, detail::kTileCols,
                                                           detail::kTileRows);
    const detail::SplitPartials<T> dref_partial(dref, m, d, column_splits, stream);
    detail::launch("pair_loss_column_kernel",
                   detail::pick_gram(
                       gram, detail::pair_loss_column_kernel<T, detail::Gram::kFma>,
                       detail::pair_loss_column_kernel<T, detail::kTensorCoreGram<T>>),
                   (m + detail::kTileCols - 1) / detail::kTileCols * column_splits, stream, x,
                   norms.get(), labels, static_cast<int>(n), candidates, d, theta, T(2),
                   static_cast<int>(column_splits), dref, dref_partial.get());
    dref_partial.sum_into(stream);
  }
  T* inv_count = scalars.get();
  detail::launch("finalize_sum_kernel", detail::finalize_sum_kernel<T>, 1, stream, partial.get(),
                 partial_count.get(), blocks, 1.0, loss ? loss : scalars.get() + 1, inv_count);
  if (dtheta)
    detail::launch("finalize_sum_kernel", detail::finalize_sum_kernel<T>, 1, stream,
                   partial.get() + blocks, partial_count.get(), blocks, -1.0, dtheta, nullptr);
  if (count)
    detail::launch("total_count_kernel", detail::total_count_kernel<T>, 1, stream,
                   partial_count.get(), blocks, count);
  if (dx)
    detail::launch("scale_by_device_scalar_kernel", detail::scale_by_device_scalar_kernel<T>,
                   detail::grid_for(n * d), stream, dx, n * d, inv_count);
  if (dref)
    detail::launch("scale_by_device_scalar_kernel", detail::scale_by_device_scalar_kernel<T>,
                   detail::grid_for(m * d), stream, dref, m * d, inv_count);
}

template void pair_loss<float>(const float*, const int64_t*, int64_t, int64_t, const float*, float*,
                               float*, float*, void*);
template void pair_loss<double>(const double*, const int64_t*, int64_t, int64_t, const double*,
                                double*, double*, double*, void*);
template void pair_loss_ref<float>(const float*, const int64_t*, int64_t, int64_t, const float*,
                                   const int64_t*, int64_t, const int64_t*, const float*, float*,
                                   float*, float*, float*, float*, void*);
template void pair_loss_ref<double>(const double*, const int64_t*, int64_t, int64_t, const double*,
                                    const int64_t*, int64_t, const int64_t*, const double*, double*,
                                    double*, double*, double*, double*, void*);

}  // namespace cuda
}  // namespace faceops
