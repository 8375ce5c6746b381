// Center loss on the GPU; math in csrc/faceops/center_loss.h.
//
// Rows are grouped by label in an open-addressing table of 2N..4N slots, so
// time and scratch memory do not depend on num_classes; the rows of each slot
// are then laid out in row order (ItemGroups, grouping.cuh: which slot and
// segment a class gets depends on the order threads run in, what a segment
// holds does not).  One thread per (class, feature) then sums that class's
// rows in row order, as the CPU kernels do (the same bits): dcenters, the
// eq. 4 direction, and center_update's new centre (the only thread that
// reads or writes that element).  center_loss's loss is reduced in a fixed
// order, dx is elementwise.  No float atomics: every result is bitwise
// reproducible.  Scratch O(N); time O(N D + sum_j n_j^2) (the grouping's
// sort), and a class's sum is one thread's loop over its n_j rows.
//
// Labels must lie in [0, num_classes) (python/faceops checks them; the CPU
// path throws).  Rows whose label does not are skipped rather than written
// out of bounds.
#include "faceops/center_loss.h"

#include "grouping.cuh"
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
                                           int64_t num_classes, T inv_n, T* dx,
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
  }
  loss = block_sum(loss, reduce);
  if (threadIdx.x == 0) partial[blockIdx.x] = loss;
}

// Inserts every row's label into the table (keys, all-ones at the start) and
// gives each row its slot (-1 for a label out of range).
__global__ void center_group_kernel(const int64_t* __restrict__ labels, int64_t n,
                                    int64_t num_classes, unsigned long long* keys,
                                    int64_t table_mask, int64_t* slot_of_row) {
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
  }
}

// The rows of one class in row order: sorted[p .. p + n_j), for the p where
// the class's segment begins.
struct ClassRows {
  const int64_t* sorted;
  const int64_t* slot_of_row;
  const int64_t* begin;
  const int* size;

  // Whether position p starts a class; then *rows = n_j.
  __device__ __forceinline__ bool starts_class(int64_t p, int64_t* rows) const {
    const int64_t i = sorted[p];
    if (i < 0) return false;
    const int64_t slot = slot_of_row[i];
    if (begin[slot] != p) return false;
    *rows = size[slot];
    return true;
  }
};

// dcenters[j] -= row i's dx, over the rows of class j in row order (the CPU
// kernel's order).
template <typename T>
__global__ void center_dcenters_kernel(const T* __restrict__ x, const int64_t* __restrict__ labels,
                                       const T* __restrict__ centers, int64_t n, int64_t d,
                                       ClassRows classes, T inv_n, T* dcenters) {
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n * d;
       e += int64_t(gridDim.x) * kThreads) {
    const int64_t p = e / d, k = e % d;
    int64_t rows = 0;
    if (!classes.starts_class(p, &rows)) continue;
    const int64_t c = labels[classes.sorted[p]] * d + k;
    T sum = dcenters[c], unused = T(0);
    for (int64_t q = p; q < p + rows; ++q)
      sum -= center_loss_element(x[classes.sorted[q] * d + k], centers[c], inv_n, &unused);
    dcenters[c] = sum;
  }
}

// Class j's eq. 4 direction, its rows added in row order, then added into
// direction[j] (center_update_direction, null centers_out) or moved into
// centers_out[j] -= alpha direction (center_update; centers_out may be
// centers: element (j, k) is read and written by this thread alone).
template <typename T>
__global__ void center_direction_kernel(const T* x, const int64_t* __restrict__ labels,
                                        const T* centers, int64_t n, int64_t d, ClassRows classes,
                                        T* direction, T alpha, T* centers_out) {
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n * d;
       e += int64_t(gridDim.x) * kThreads) {
    const int64_t p = e / d, k = e % d;
    int64_t rows = 0;
    if (!classes.starts_class(p, &rows)) continue;
    const int64_t c = labels[classes.sorted[p]] * d + k;
    const T inv_one_plus_count = T(1) / static_cast<T>(1 + rows);
    T sum = T(0);
    for (int64_t q = p; q < p + rows; ++q)
      sum += center_update_term(x[classes.sorted[q] * d + k], centers[c], inv_one_plus_count);
    if (centers_out) {
      centers_out[c] -= alpha * sum;
    } else {
      direction[c] += sum;
    }
  }
}

// The label table of one call and each class's rows in row order: ready
// (queued on the stream) once the constructor returns.
class LabelGroups {
 public:
  LabelGroups(const int64_t* labels, int64_t n, int64_t num_classes, cudaStream_t stream)
      : table_size_(table_size(n)),
        keys_(table_size_, stream),
        slot_of_row_(n, stream),
        rows_(n, table_size_, stream) {
    check(cudaMemsetAsync(keys_.get(), 0xff, table_size_ * sizeof(unsigned long long), stream),
          "cudaMemsetAsync");
    launch("center_group_kernel", center_group_kernel, grid_for(n), stream, labels, n, num_classes,
           keys_.get(), table_size_ - 1, slot_of_row_.get());
    rows_.group(slot_of_row_.get(), stream);
  }
  ClassRows rows() const {
    return ClassRows{rows_.sorted(), slot_of_row_.get(), rows_.begin(), rows_.size()};
  }

 private:
  // A power of two >= 2N: linear probing stays short at load <= 1/2.
  static int64_t table_size(int64_t n) {
    int64_t size = 2;
    while (size < 2 * n) size *= 2;
    return size;
  }
  int64_t table_size_;
  DeviceArray<unsigned long long> keys_;
  DeviceArray<int64_t> slot_of_row_;
  ItemGroups<int64_t> rows_;
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
  const T inv_n = T(1) / static_cast<T>(n);
  detail::DeviceArray<double> partial(blocks, stream);
  detail::launch("center_loss_forward_kernel", detail::center_loss_forward_kernel<T>, blocks,
                 stream, x, labels, centers, n, d, num_classes, inv_n, dx, partial.get());
  detail::launch("finalize_sum_kernel", detail::finalize_sum_kernel<T>, 1, stream, partial.get(),
                 nullptr, blocks, 0.5 / static_cast<double>(n), loss, nullptr);
  if (dcenters) {
    const detail::LabelGroups groups(labels, n, num_classes, stream);
    detail::launch("center_dcenters_kernel", detail::center_dcenters_kernel<T>, blocks, stream, x,
                   labels, centers, n, d, groups.rows(), inv_n, dcenters);
  }
}

template <typename T>
void center_update_direction(const T* x, const int64_t* labels, const T* centers, int64_t n,
                             int64_t d, int64_t num_classes, T* direction, void* stream_handle) {
  detail::check_center_inputs(n, d, num_classes);
  detail::NvtxRange range("faceops::center_update_direction");
  const cudaStream_t stream = detail::as_stream(stream_handle);
  const detail::LabelGroups groups(labels, n, num_classes, stream);
  detail::launch("center_direction_kernel", detail::center_direction_kernel<T>,
                 detail::grid_for(n * d), stream, x, labels, centers, n, d, groups.rows(),
                 direction, T(0), static_cast<T*>(nullptr));
}

template <typename T>
void center_update(const T* x, const int64_t* labels, T* centers, int64_t n, int64_t d,
                   int64_t num_classes, T alpha, void* stream_handle) {
  detail::check_center_inputs(n, d, num_classes);
  detail::NvtxRange range("faceops::center_update");
  const cudaStream_t stream = detail::as_stream(stream_handle);
  const detail::LabelGroups groups(labels, n, num_classes, stream);
  detail::launch("center_direction_kernel", detail::center_direction_kernel<T>,
                 detail::grid_for(n * d), stream, x, labels, centers, n, d, groups.rows(),
                 static_cast<T*>(nullptr), alpha, centers);
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
