// Center loss on the GPU; math in csrc/faceops/center_loss.h.
//
// Rows are grouped by label in an open-addressing table of 2N..4N slots, so
// time and scratch memory do not depend on num_classes: a slot counts its
// rows (n_j) and keeps its first row; each class's rows are then laid out
// in a segment of a row list and sorted there by row index (rank = rows of
// the segment below it).  Which slot and segment a class gets depends on the
// order threads run in; what a segment holds, and so every sum, does not.
// One thread per (class, feature) then sums that class's rows in row order,
// as the CPU kernels do (the same bits): dcenters, the eq. 4 direction, and
// center_update's new centre (the only thread that reads or writes that
// element).  center_loss's loss is reduced in a fixed order, dx is
// elementwise.  No float atomics: every result is bitwise reproducible.
// Scratch O(N) (table and row lists); time O(N D + sum_j n_j^2) (the sort),
// and a class's sum is one thread's loop over its n_j rows.
//
// Labels must lie in [0, num_classes) (python/faceops checks them; the CPU
// path throws).  Rows whose label does not are skipped rather than written
// out of bounds.
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

// Each slot with rows gets a segment of `count` entries of the row list.
__global__ void center_segment_kernel(const int* __restrict__ count, int64_t table_size,
                                      unsigned long long* cursor, int64_t* begin) {
  for (int64_t slot = blockIdx.x * int64_t(kThreads) + threadIdx.x; slot < table_size;
       slot += int64_t(gridDim.x) * kThreads)
    if (count[slot] > 0)
      begin[slot] = static_cast<int64_t>(
          atomicAdd(cursor, static_cast<unsigned long long>(count[slot])));
}

// Every row into its class's segment, in any order.  filled starts zero.
__global__ void center_fill_kernel(int64_t n, const int64_t* __restrict__ slot_of_row,
                                   const int64_t* __restrict__ begin, int* filled,
                                   int64_t* members) {
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kThreads) {
    const int64_t slot = slot_of_row[i];
    if (slot >= 0) members[begin[slot] + atomicAdd(filled + slot, 1)] = i;
  }
}

// sorted = members with each segment in row order.  Entries past the rows
// with a valid label stay -1 in both.
__global__ void center_sort_kernel(int64_t n, const int64_t* __restrict__ slot_of_row,
                                   const int64_t* __restrict__ begin,
                                   const int* __restrict__ count,
                                   const int64_t* __restrict__ members, int64_t* sorted) {
  for (int64_t p = blockIdx.x * int64_t(kThreads) + threadIdx.x; p < n;
       p += int64_t(gridDim.x) * kThreads) {
    const int64_t i = members[p];
    if (i < 0) continue;
    const int64_t slot = slot_of_row[i], first = begin[slot], end = first + count[slot];
    int64_t rank = 0;
    for (int64_t q = first; q < end; ++q) rank += members[q] < i;
    sorted[first + rank] = i;
  }
}

// The rows of one class in row order: sorted[p .. p + count), for the p that
// holds the class's first row.
struct ClassRows {
  const int64_t* sorted;
  const int64_t* slot_of_row;
  const int* count;
  const unsigned long long* first_row;

  // Whether position p starts a class; then *rows = n_j.
  __device__ __forceinline__ bool starts_class(int64_t p, int64_t* rows) const {
    const int64_t i = sorted[p];
    if (i < 0) return false;
    const int64_t slot = slot_of_row[i];
    if (static_cast<int64_t>(first_row[slot]) != i) return false;
    *rows = count[slot];
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
        first_row_(table_size_, stream),
        cursor_(1, stream),
        count_(table_size_, stream),
        filled_(table_size_, stream),
        slot_of_row_(n, stream),
        begin_(table_size_, stream),
        members_(n, stream),
        sorted_(n, stream) {
    fill_ones(keys_.get(), table_size_ * sizeof(unsigned long long), stream);
    fill_ones(first_row_.get(), table_size_ * sizeof(unsigned long long), stream);
    fill_ones(members_.get(), n * sizeof(int64_t), stream);
    fill_ones(sorted_.get(), n * sizeof(int64_t), stream);
    zero_async(cursor_.get(), int64_t(sizeof(unsigned long long)), stream);
    zero_async(count_.get(), table_size_ * int64_t(sizeof(int)), stream);
    zero_async(filled_.get(), table_size_ * int64_t(sizeof(int)), stream);
    launch("center_group_kernel", center_group_kernel, grid_for(n), stream, labels, n, num_classes,
           keys_.get(), table_size_ - 1, slot_of_row_.get(), count_.get(), first_row_.get());
    launch("center_segment_kernel", center_segment_kernel, grid_for(table_size_), stream,
           count_.get(), table_size_, cursor_.get(), begin_.get());
    launch("center_fill_kernel", center_fill_kernel, grid_for(n), stream, n, slot_of_row_.get(),
           begin_.get(), filled_.get(), members_.get());
    launch("center_sort_kernel", center_sort_kernel, grid_for(n), stream, n, slot_of_row_.get(),
           begin_.get(), count_.get(), members_.get(), sorted_.get());
  }
  ClassRows rows() const {
    return ClassRows{sorted_.get(), slot_of_row_.get(), count_.get(), first_row_.get()};
  }

 private:
  // A power of two >= 2N: linear probing stays short at load <= 1/2.
  static int64_t table_size(int64_t n) {
    int64_t size = 2;
    while (size < 2 * n) size *= 2;
    return size;
  }
  static void fill_ones(void* data, size_t bytes, cudaStream_t stream) {
    check(cudaMemsetAsync(data, 0xff, bytes, stream), "cudaMemsetAsync");
  }
  int64_t table_size_;
  DeviceArray<unsigned long long> keys_, first_row_, cursor_;
  DeviceArray<int> count_, filled_;
  DeviceArray<int64_t> slot_of_row_, begin_, members_, sorted_;
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
