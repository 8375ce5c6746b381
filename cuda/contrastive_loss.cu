// Contrastive loss on the GPU; math in csrc/faceops/contrastive_loss.h.  One
// block per pair row (grid-stride over rows): the block sums the row's squared
// distance in a fixed order, then writes the row's gradients.  No atomics;
// deterministic.  Memory: one double per block.
#include "faceops/contrastive_loss.h"

#include "launch.cuh"

namespace faceops {
namespace cuda {
namespace detail {

template <typename T>
__global__ void __launch_bounds__(kThreads)
    contrastive_loss_forward_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                    const int64_t* __restrict__ similar, int64_t n, int64_t d,
                                    T margin, bool legacy, T inv_n, T* da, T* db, double* partial) {
  __shared__ T reduce[kThreads];
  __shared__ double reduce_loss[kThreads];
  double loss = 0;  // thread 0's
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const T* a_row = a + i * d;
    const T* b_row = b + i * d;
    T squared_distance = T(0);
    for (int64_t k = threadIdx.x; k < d; k += kThreads)
      squared_distance += (a_row[k] - b_row[k]) * (a_row[k] - b_row[k]);
    squared_distance = block_sum(squared_distance, reduce);
    T dterm = T(0);
    const T term = contrastive_term(squared_distance, similar[i] != 0, margin, legacy, &dterm);
    if (threadIdx.x == 0) loss += term;
    // d(1/(2N) term)/da_i = dterm/d(d^2) * 2 (a_i - b_i) / (2N).
    const T scale = dterm * inv_n;
    for (int64_t k = threadIdx.x; k < d; k += kThreads) {
      const T g = scale * (a_row[k] - b_row[k]);
      if (da) da[i * d + k] = g;
      if (db) db[i * d + k] = -g;
    }
  }
  loss = block_sum(loss, reduce_loss);
  if (threadIdx.x == 0) partial[blockIdx.x] = loss;
}

}  // namespace detail

template <typename T>
void contrastive_loss(const T* a, const T* b, const int64_t* similar, int64_t n, int64_t d,
                      T margin, bool legacy, T* loss, T* da, T* db, void* stream_handle) {
  faceops::detail::check_batch("a", n, d);
  detail::NvtxRange range("faceops::contrastive_loss");
  const cudaStream_t stream = detail::as_stream(stream_handle);
  const int64_t blocks = n < detail::kMaxBlocks ? n : detail::kMaxBlocks;
  detail::DeviceArray<double> partial(blocks, stream);
  detail::launch("contrastive_loss_forward_kernel", detail::contrastive_loss_forward_kernel<T>,
                 blocks, stream, a, b, similar, n, d, margin, legacy, T(1) / static_cast<T>(n), da,
                 db, partial.get());
  detail::launch("finalize_sum_kernel", detail::finalize_sum_kernel<T>, 1, stream, partial.get(),
                 nullptr, blocks, 0.5 / static_cast<double>(n), loss, nullptr);
}

template void contrastive_loss<float>(const float*, const float*, const int64_t*, int64_t, int64_t,
                                      float, bool, float*, float*, float*, void*);
template void contrastive_loss<double>(const double*, const double*, const int64_t*, int64_t,
                                       int64_t, double, bool, double*, double*, double*, void*);

}  // namespace cuda
}  // namespace faceops
