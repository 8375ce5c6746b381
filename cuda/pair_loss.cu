// Multibatch pair loss on the GPU; math in csrc/faceops/pair_loss.h.  Each
// block owns kTileRows rows and streams over every splits-th candidate tile
// once: loss, dL/dtheta and (because y_ij and D_ij are symmetric) the gradient
// of its own rows from those candidates.  With one split (N >= 32768) dx needs
// no atomics and is deterministic; smaller batches are split over more blocks
// and add into dx with atomics.  The loss is reduced in a fixed order.
// Memory: O(N) (squared norms and per-block partial sums).
#include "faceops/pair_loss.h"

#include "launch.cuh"
#include "pairwise.cuh"

namespace faceops {
namespace cuda {
namespace detail {

template <typename T>
__global__ void __launch_bounds__(kThreads)
    pair_loss_tile_kernel(const T* __restrict__ x, const T* __restrict__ norms,
                          const int64_t* __restrict__ labels, int n, int64_t d, T theta,
                          T inv_pairs, int splits, T* dx, double* partial_loss,
                          double* partial_dsquared) {
  __shared__ DistanceTile<T> tile;
  __shared__ double reduce[kThreads];
  const int a0 = (blockIdx.x / splits) * kTileRows, split = blockIdx.x % splits;
  double loss = 0, dsquared = 0;
  for (int c0 = split * kTileCols; c0 < n; c0 += splits * kTileCols) {
    compute_distance_tile(x, norms, n, d, a0, c0, tile);
    bool any_active = false;
    for (int e = threadIdx.x; e < kTileRows * kTileCols; e += kThreads) {
      const int m = e / kTileCols, j = e % kTileCols;
      const int i = a0 + m, jj = c0 + j;
      T coef = T(0);
      if (i < n && jj < n && i != jj) {
        T dterm = T(0);
        loss += pair_term(tile.value[m][j], labels[i] == labels[jj], theta, &dterm);
        dsquared += dterm;
        // Both ordered pairs (i, j) and (j, i) carry dterm; dD/dx_i = 2 (x_i - x_j).
        coef = T(4) * dterm * inv_pairs;
      }
      tile.value[m][j] = coef;
      any_active = any_active || coef != T(0);
    }
    // A tile of inactive hinges adds nothing to dx: skip its product.
    const bool tile_active = __syncthreads_or(any_active);
    if (dx && tile_active) {
      if (splits > 1) {
        accumulate_row_gradient<T, true>(x, n, d, a0, c0, tile, dx);
      } else {
        accumulate_row_gradient<T, false>(x, n, d, a0, c0, tile, dx);
      }
    }
  }
  loss = block_sum(loss, reduce);
  dsquared = block_sum(dsquared, reduce);
  if (threadIdx.x == 0) {
    partial_loss[blockIdx.x] = loss;
    partial_dsquared[blockIdx.x] = dsquared;
  }
}

}  // namespace detail

template <typename T>
void pair_loss(const T* x, const int64_t* labels, int64_t n, int64_t d, T theta, T* loss, T* dx,
               T* dtheta, void* stream_handle) {
  faceops::detail::check_batch("x", n, d);
  detail::check_rows_fit_int("x", n);
  detail::NvtxRange range("faceops::pair_loss");
  const cudaStream_t stream = detail::as_stream(stream_handle);
  const double pair_count = static_cast<double>(n) * static_cast<double>(n - 1);
  const double inv_pairs = pair_count > 0 ? 1.0 / pair_count : 0.0;
  const int64_t splits = detail::candidate_splits(n);
  const int64_t blocks = (n + detail::kTileRows - 1) / detail::kTileRows * splits;

  detail::DeviceArray<T> norms(n, stream);
  detail::DeviceArray<double> partial(2 * blocks, stream);
  if (dx) detail::zero_async(dx, n * d * int64_t(sizeof(T)), stream);
  detail::launch("pairwise_norms_kernel", detail::pairwise_norms_kernel<T>, detail::grid_for(n),
                 stream, x, static_cast<int>(n), d, norms.get());
  detail::launch("pair_loss_tile_kernel", detail::pair_loss_tile_kernel<T>, blocks, stream, x,
                 norms.get(), labels, static_cast<int>(n), d, theta, static_cast<T>(inv_pairs),
                 static_cast<int>(splits), dx, partial.get(), partial.get() + blocks);
  detail::launch("finalize_sum_kernel", detail::finalize_sum_kernel<T>, 1, stream, partial.get(),
                 nullptr, blocks, inv_pairs, loss, nullptr);
  if (dtheta)
    detail::launch("finalize_sum_kernel", detail::finalize_sum_kernel<T>, 1, stream,
                   partial.get() + blocks, nullptr, blocks, -inv_pairs, dtheta, nullptr);
}

template void pair_loss<float>(const float*, const int64_t*, int64_t, int64_t, float, float*,
                               float*, float*, void*);
template void pair_loss<double>(const double*, const int64_t*, int64_t, int64_t, double, double*,
                                double*, double*, void*);

}  // namespace cuda
}  // namespace faceops
