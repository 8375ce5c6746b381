// Internal to the CUDA kernels: error checks, launches, stream-ordered scratch
// memory, NVTX ranges and the deterministic block reductions every loss uses.
// Nothing here knows any loss's math.
#pragma once

#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include "checks.h"

namespace faceops {
namespace cuda {
namespace detail {

// Every loss kernel runs 256-thread blocks: the tile geometry of pairwise.cuh
// and the reductions below are written for it.
constexpr int kThreads = 256;
// Grid-stride kernels stop at this many blocks; more gives no more occupancy.
constexpr int64_t kMaxBlocks = 4096;

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("faceops CUDA: ") + what +
                             " failed: " + cudaGetErrorString(status));
}
#define FACEOPS_CUDA_CHECK(call) ::faceops::cuda::detail::check((call), #call)

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// kernel<<<grid, kThreads, 0, stream>>>(args...), then the launch check.  An
// empty grid launches nothing.
template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), int64_t grid, cudaStream_t stream,
            Args&&... args) {
  if (grid <= 0) return;
#ifdef FACEOPS_CUDA_EMULATION  // cuda/emulation: the kernels on CPU threads, for tests
  emulated_launch(kernel, static_cast<unsigned>(grid), kThreads, std::forward<Args>(args)...);
#else
  kernel<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(std::forward<Args>(args)...);
#endif
  check(cudaGetLastError(), name);
}

// Blocks of a grid-stride kernel over `count` items.
inline int64_t grid_for(int64_t count) {
  const int64_t blocks = (count + kThreads - 1) / kThreads;
  return blocks < kMaxBlocks ? blocks : kMaxBlocks;
}

// count elements of U from the stream-ordered pool, freed on the same stream
// (after the kernels queued before the free), also when an exception unwinds.
template <typename U>
class DeviceArray {
 public:
  DeviceArray(int64_t count, cudaStream_t stream) : stream_(stream) {
    if (count > 0)
      check(cudaMallocAsync(reinterpret_cast<void**>(&data_),
                            static_cast<size_t>(count) * sizeof(U), stream),
            "cudaMallocAsync");
  }
  ~DeviceArray() {
    if (data_) cudaFreeAsync(data_, stream_);  // no throw from a destructor
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  U* get() const { return data_; }

 private:
  U* data_ = nullptr;
  cudaStream_t stream_;
};

inline void zero_async(void* data, int64_t bytes, cudaStream_t stream) {
  if (data && bytes > 0)
    check(cudaMemsetAsync(data, 0, static_cast<size_t>(bytes), stream), "cudaMemsetAsync");
}

// The range "faceops::<loss>" around the host code that queues one op.
class NvtxRange {
 public:
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

// The pairwise kernels keep row indices in int.
inline void check_rows_fit_int(const char* name, int64_t n) {
  faceops::detail::require(
      n <= std::numeric_limits<int>::max(),
      std::string(name) + ": at most 2^31 - 1 rows on the GPU, got " + std::to_string(n));
}

// Sum of `value` over the block, in a fixed order (deterministic); every
// thread must call it, and every thread gets the sum.  scratch: kThreads.
template <typename T>
__device__ T block_sum(T value, T* scratch) {
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (static_cast<int>(threadIdx.x) < stride)
      scratch[threadIdx.x] += scratch[threadIdx.x + stride];
    __syncthreads();
  }
  const T sum = scratch[0];
  __syncthreads();
  return sum;
}

// One block: *out = scale * sum of partial[0 .. count), in a fixed order.
// With `counts` non-null the scale is multiplied by 1 / sum(counts) (0 when
// that is 0), and *inv_count receives 1 / sum(counts) for the gradient
// scaling that follows.
// Partial sums are double (as the CPU accumulates its losses).
template <typename T>
__global__ void finalize_sum_kernel(const double* partial, const long long* counts, int64_t count,
                                    double scale, T* out, T* inv_count) {
  __shared__ double sums[kThreads];
  __shared__ long long totals[kThreads];
  double sum = 0;
  long long total = 0;
  for (int64_t b = threadIdx.x; b < count; b += kThreads) {
    sum += partial[b];
    if (counts) total += counts[b];
  }
  sum = block_sum(sum, sums);
  total = block_sum(total, totals);
  if (threadIdx.x == 0) {
    if (counts) {
      const double inv = total > 0 ? 1.0 / static_cast<double>(total) : 0.0;
      *out = static_cast<T>(sum * inv * scale);
      if (inv_count) *inv_count = static_cast<T>(inv);
    } else {
      *out = static_cast<T>(sum * scale);
    }
  }
}

// One block: *out = sum of counts[0 .. count) (the number of terms of a mean).
template <typename T>
__global__ void total_count_kernel(const long long* counts, int64_t count, T* out) {
  __shared__ long long totals[kThreads];
  long long total = 0;
  for (int64_t b = threadIdx.x; b < count; b += kThreads) total += counts[b];
  total = block_sum(total, totals);
  if (threadIdx.x == 0) *out = static_cast<T>(total);
}

// x[0 .. count) *= *factor (a device scalar, written by finalize_sum_kernel).
template <typename T>
__global__ void scale_by_device_scalar_kernel(T* x, int64_t count, const T* factor) {
  const T f = *factor;
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < count;
       e += int64_t(gridDim.x) * kThreads)
    x[e] *= f;
}

// first[e] += rest[e] + rest[count + e] + ... (`more` arrays of count after
// first), added in that order: the partial sums of split blocks, reduced the
// same way whatever order the blocks ran in.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    sum_splits_kernel(T* first, const T* rest, int64_t more, int64_t count) {
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < count;
       e += int64_t(gridDim.x) * kThreads) {
    T sum = first[e];
    for (int64_t s = 0; s < more; ++s) sum += rest[s * count + e];
    first[e] = sum;
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace faceops
