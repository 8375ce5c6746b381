// Center loss on the GPU; math in csrc/faceops/center_loss.h.
//
// center_loss: one elementwise pass over (N, D); dcenters is a scatter-add
// with atomics (correct under repeated labels), so only the rows of classes in
// the batch are touched.  center_update_direction / center_update need n_j,
// the batch count of each class: rows are grouped by label in an
// open-addressing table of 2N..4N slots, so time and scratch memory are
// O(N D), independent of num_classes.  center_update adds each class's eq. 4
// direction into the scratch row of its first batch row, then that row alone
// writes the class's centre (the centres are read before any is written).
//
// Labels must lie in [0, num_classes) (python/faceops checks them; the CPU
// path throws).  Rows whose label does not are skipped rather than written
// out of bounds.  Sums over rows use atomics: the gradients' last bits may
// vary from run to run; the loss is reduced in a fixed order.
#include "faceops/center_loss.h"

#include "launch.cuh"

namespace faceops {
namespace cuda {
namespace detail {

constexpr unsigned long long kEmptyKey = ~0ull;

// splitmix64's finaliser: consecutive labels spread over the table.
__device__ __forceinline__ unsigned long long hash_label(unsigned long long v) {
  v = (v ^ (v >> 30)) * 0xbf58476d1ce4e5b9ull;
  v = (v ^ (v >> 27)) * 0x94d049bb133111ebull;
  return v ^ (v >> 31);
}

__device__ __forceinline__ bool label_in_range(int64_t label, int64_t num_classes) {
  return label >= 0 && label < num_classes;
}

template <typename T>
__global__ void center_loss_forward_kernel(const T* __restrict__ x,
                                           const int64_t* __restrict__ labels,
                                           const T* __restrict__ centers, int64_t n, int64_t d,
                                           int64_t num_classes, T inv_n, T* dx, T* dcenters,
                                           double* partial) {
  __shared__ double reduce[kThreads];
  double loss = 0;
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n * d;
       e += int64_t(gridDim.x) * kThreads) {
    const int64_t i = e / d, k = e % d, label = labels[i];
    if (!label_in_range(label, num_classes)) {
      if (dx) dx[e] = T(0);
      continue;
    }
    T sum = T(0);
    const T g = center_loss_element(x[e], centers[label * d + k], inv_n, &sum);
    loss += sum;
    if (dx) dx[e] = g;
    if (dcenters) atomicAdd(dcenters + label * d + k, -g);
  }
  loss = block_sum(loss, reduce);
  if (threadIdx.x == 0) partial[blockIdx.x] = loss;
}

// Inserts every row's label into the table (keys), and per slot counts the
// rows (count) and keeps the first row (first_row).  keys and first_row start
// all-ones, count zero.
__global__ void center_group_kernel(const int64_t* __restrict__ labels, int64_t n,
                                    int64_t num_classes, unsigned long long* keys,
                                    int64_t table_mask, int64_t* slot_of_row, int* count,
                                    unsigned long long* first_row) {
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kThreads) {
    const int64_t label = labels[i];
    if (!label_in_range(label, num_classes)) {
      slot_of_row[i] = -1;
      continue;
    }
    const unsigned long long key = static_cast<unsigned long long>(label);
    int64_t slot =
        static_cast<int64_t>(hash_label(key) & static_cast<unsigned long long>(table_mask));
    // The table has at least 2N slots, so a free or matching slot exists.
    for (;;) {
      const unsigned long long previous = atomicCAS(keys + slot, kEmptyKey, key);
      if (previous == kEmptyKey || previous == key) break;
      slot = (slot + 1) & table_mask;
    }
    slot_of_row[i] = slot;
    atomicAdd(count + slot, 1);
    atomicMin(first_row + slot, static_cast<unsigned long long>(i));
  }
}

template <typename T>
__device__ __forceinline__ T inv_one_plus(int count) {
  return T(1) / static_cast<T>(1 + count);
}

template <typename T>
__global__ void center_update_direction_kernel(const T* __restrict__ x,
                                               const int64_t* __restrict__ labels,
                                               const T* __restrict__ centers, int64_t n, int64_t d,
                                               const int64_t* __restrict__ slot_of_row,
                                               const int* __restrict__ count, T* direction) {
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n * d;
       e += int64_t(gridDim.x) * kThreads) {
    const int64_t i = e / d, k = e % d, slot = slot_of_row[i];
    if (slot < 0) continue;
    const int64_t label = labels[i];
    atomicAdd(direction + label * d + k,
              center_update_term(x[e], centers[label * d + k], inv_one_plus<T>(count[slot])));
  }
}

// delta row first_row[slot] += row i's eq. 4 term (delta: N x D scratch).
template <typename T>
__global__ void center_update_accumulate_kernel(
    const T* __restrict__ x, const int64_t* __restrict__ labels, const T* __restrict__ centers,
    int64_t n, int64_t d, const int64_t* __restrict__ slot_of_row, const int* __restrict__ count,
    const unsigned long long* __restrict__ first_row, T* delta) {
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n * d;
       e += int64_t(gridDim.x) * kThreads) {
    const int64_t i = e / d, k = e % d, slot = slot_of_row[i];
    if (slot < 0) continue;
    const int64_t label = labels[i], first = static_cast<int64_t>(first_row[slot]);
    atomicAdd(delta + first * d + k,
              center_update_term(x[e], centers[label * d + k], inv_one_plus<T>(count[slot])));
  }
}

template <typename T>
__global__ void center_update_apply_kernel(const int64_t* __restrict__ labels, int64_t n, int64_t d,
                                           const int64_t* __restrict__ slot_of_row,
                                           const unsigned long long* __restrict__ first_row,
                                           const T* __restrict__ delta, T alpha, T* centers) {
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n * d;
       e += int64_t(gridDim.x) * kThreads) {
    const int64_t i = e / d, k = e % d, slot = slot_of_row[i];
    if (slot < 0 || static_cast<int64_t>(first_row[slot]) != i) continue;
    centers[labels[i] * d + k] -= alpha * delta[e];
  }
}

// The label table of one call: slot_of_row, count and first_row are ready
// (queued on the stream) once the constructor returns.
class LabelGroups {
 public:
  LabelGroups(const int64_t* labels, int64_t n, int64_t num_classes, cudaStream_t stream)
      : table_size_(table_size(n)),
        keys_(table_size_, stream),
        first_row_(table_size_, stream),
        count_(table_size_, stream),
        slot_of_row_(n, stream) {
    check(cudaMemsetAsync(keys_.get(), 0xff, table_size_ * sizeof(unsigned long long), stream),
          "cudaMemsetAsync");
    check(cudaMemsetAsync(first_row_.get(), 0xff, table_size_ * sizeof(unsigned long long), stream),
          "cudaMemsetAsync");
    zero_async(count_.get(), table_size_ * int64_t(sizeof(int)), stream);
    launch("center_group_kernel", center_group_kernel, grid_for(n), stream, labels, n, num_classes,
           keys_.get(), table_size_ - 1, slot_of_row_.get(), count_.get(), first_row_.get());
  }
  const int64_t* slot_of_row() const { return slot_of_row_.get(); }
  const int* count() const { return count_.get(); }
  const unsigned long long* first_row() const { return first_row_.get(); }

 private:
  // A power of two >= 2N: linear probing stays short at load <= 1/2.
  static int64_t table_size(int64_t n) {
    int64_t size = 2;
    while (size < 2 * n) size *= 2;
    return size;
  }
  int64_t table_size_;
  DeviceArray<unsigned long long> keys_, first_row_;
  DeviceArray<int> count_;
  DeviceArray<int64_t> slot_of_row_;
};

inline void check_center_inputs(int64_t n, int64_t d, int64_t num_classes) {
  faceops::detail::check_batch("x", n, d);
  faceops::detail::require(num_classes > 0, "centers: expected at least one class (C > 0)");
}

}  // namespace detail

template <typename T>
void center_loss(const T* x, const int64_t* labels, const T* centers, int64_t n, int64_t d,
                 int64_t num_classes, T* loss, T* dx, T* dcenters, void* stream_handle) {
  detail::check_center_inputs(n, d, num_classes);
  detail::NvtxRange range("faceops::center_loss");
  const cudaStream_t stream = detail::as_stream(stream_handle);
  const int64_t blocks = detail::grid_for(n * d);
  detail::DeviceArray<double> partial(blocks, stream);
  detail::launch("center_loss_forward_kernel", detail::center_loss_forward_kernel<T>, blocks,
                 stream, x, labels, centers, n, d, num_classes, T(1) / static_cast<T>(n), dx,
                 dcenters, partial.get());
  detail::launch("finalize_sum_kernel", detail::finalize_sum_kernel<T>, 1, stream, partial.get(),
                 nullptr, blocks, 0.5 / static_cast<double>(n), loss, nullptr);
}

template <typename T>
void center_update_direction(const T* x, const int64_t* labels, const T* centers, int64_t n,
                             int64_t d, int64_t num_classes, T* direction, void* stream_handle) {
  detail::check_center_inputs(n, d, num_classes);
  detail::NvtxRange range("faceops::center_update_direction");
  const cudaStream_t stream = detail::as_stream(stream_handle);
  const detail::LabelGroups groups(labels, n, num_classes, stream);
  detail::launch("center_update_direction_kernel", detail::center_update_direction_kernel<T>,
                 detail::grid_for(n * d), stream, x, labels, centers, n, d, groups.slot_of_row(),
                 groups.count(), direction);
}

template <typename T>
void center_update(const T* x, const int64_t* labels, T* centers, int64_t n, int64_t d,
                   int64_t num_classes, T alpha, void* stream_handle) {
  detail::check_center_inputs(n, d, num_classes);
  detail::NvtxRange range("faceops::center_update");
  const cudaStream_t stream = detail::as_stream(stream_handle);
  const detail::LabelGroups groups(labels, n, num_classes, stream);
  detail::DeviceArray<T> delta(n * d, stream);
  detail::zero_async(delta.get(), n * d * int64_t(sizeof(T)), stream);
  detail::launch("center_update_accumulate_kernel", detail::center_update_accumulate_kernel<T>,
                 detail::grid_for(n * d), stream, x, labels, centers, n, d, groups.slot_of_row(),
                 groups.count(), groups.first_row(), delta.get());
  detail::launch("center_update_apply_kernel", detail::center_update_apply_kernel<T>,
                 detail::grid_for(n * d), stream, labels, n, d, groups.slot_of_row(),
                 groups.first_row(), delta.get(), alpha, centers);
}

#define FACEOPS_INSTANTIATE_CENTER(T)                                                             \
  template void center_loss<T>(const T*, const int64_t*, const T*, int64_t, int64_t, int64_t, T*, \
                               T*, T*, void*);                                                    \
  template void center_update_direction<T>(const T*, const int64_t*, const T*, int64_t, int64_t,  \
                                           int64_t, T*, void*);                                   \
  template void center_update<T>(const T*, const int64_t*, T*, int64_t, int64_t, int64_t, T, void*);
FACEOPS_INSTANTIATE_CENTER(float)
FACEOPS_INSTANTIATE_CENTER(double)

}  // namespace cuda
}  // namespace faceops
