// Items grouped by key on the GPU, each group in item order: what a sum over
// a group needs to come out the same whatever order threads run in.  Items
// [0, count) have key_of[i] in [0, keys), or < 0 for none.  Each key with
// items gets a segment of `sorted` (integer atomics decide where segments
// lie and the order items land in them), then each segment is sorted by item
// index (an item's rank is the number of items of its segment below it), so
// what a segment holds, in what order, depends on the keys alone.  Scratch
// O(count + keys); time O(count + keys + sum over keys of size^2), the sort,
// which suits groups of a few to a few hundred items.  Used by the centre
// loss (rows by class) and batch-hard (pairs by candidate row).
#pragma once

#include <cstdint>

#include "launch.cuh"

namespace faceops {
namespace cuda {
namespace detail {

template <typename Key>
__global__ void group_count_kernel(const Key* __restrict__ key_of, int64_t count, int* size) {
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * kThreads)
    if (key_of[i] >= 0) atomicAdd(size + key_of[i], 1);
}

// A template, as every kernel of a header: one definition across the files.
template <typename Size>
__global__ void group_segment_kernel(const Size* __restrict__ size, int64_t keys,
                                     unsigned long long* cursor, int64_t* begin) {
  for (int64_t key = blockIdx.x * int64_t(kThreads) + threadIdx.x; key < keys;
       key += int64_t(gridDim.x) * kThreads)
    if (size[key] > 0)
      begin[key] =
          static_cast<int64_t>(atomicAdd(cursor, static_cast<unsigned long long>(size[key])));
}

// Every item into its key's segment, in any order.  filled starts zero.
template <typename Key>
__global__ void group_fill_kernel(const Key* __restrict__ key_of, int64_t count,
                                  const int64_t* __restrict__ begin, int* filled,
                                  int64_t* members) {
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * kThreads)
    if (key_of[i] >= 0) members[begin[key_of[i]] + atomicAdd(filled + key_of[i], 1)] = i;
}

// sorted = members with each segment in item order.  Entries past the
// grouped items stay -1 in both.
template <typename Key>
__global__ void group_sort_kernel(const Key* __restrict__ key_of, int64_t count,
                                  const int64_t* __restrict__ begin, const int* __restrict__ size,
                                  const int64_t* __restrict__ members, int64_t* sorted) {
  for (int64_t p = blockIdx.x * int64_t(kThreads) + threadIdx.x; p < count;
       p += int64_t(gridDim.x) * kThreads) {
    const int64_t i = members[p];
    if (i < 0) continue;
    const int64_t first = begin[key_of[i]], end = first + size[key_of[i]];
    int64_t rank = 0;
    for (int64_t q = first; q < end; ++q) rank += members[q] < i;
    sorted[first + rank] = i;
  }
}

// The groups of one call: storage for `count` items and `keys` keys, filled
// by group() (queued on the stream).
template <typename Key>
class ItemGroups {
 public:
  ItemGroups(int64_t count, int64_t keys, cudaStream_t stream)
      : count_(count),
        keys_(keys),
        size_(keys, stream),
        filled_(keys, stream),
        begin_(keys, stream),
        cursor_(1, stream),
        members_(count, stream),
        sorted_(count, stream) {}
  void group(const Key* key_of, cudaStream_t stream) {
    zero_async(size_.get(), keys_ * int64_t(sizeof(int)), stream);
    zero_async(filled_.get(), keys_ * int64_t(sizeof(int)), stream);
    zero_async(cursor_.get(), int64_t(sizeof(unsigned long long)), stream);
    check(cudaMemsetAsync(members_.get(), 0xff, count_ * sizeof(int64_t), stream),
          "cudaMemsetAsync");
    check(cudaMemsetAsync(sorted_.get(), 0xff, count_ * sizeof(int64_t), stream),
          "cudaMemsetAsync");
    launch("group_count_kernel", group_count_kernel<Key>, grid_for(count_), stream, key_of,
           count_, size_.get());
    launch("group_segment_kernel", group_segment_kernel<int>, grid_for(keys_), stream, size_.get(),
           keys_, cursor_.get(), begin_.get());
    launch("group_fill_kernel", group_fill_kernel<Key>, grid_for(count_), stream, key_of, count_,
           begin_.get(), filled_.get(), members_.get());
    launch("group_sort_kernel", group_sort_kernel<Key>, grid_for(count_), stream, key_of, count_,
           begin_.get(), size_.get(), members_.get(), sorted_.get());
  }
  const int* size() const { return size_.get(); }        // items per key
  const int64_t* begin() const { return begin_.get(); }  // where size > 0
  const int64_t* sorted() const { return sorted_.get(); }

 private:
  int64_t count_, keys_;
  DeviceArray<int> size_, filled_;
  DeviceArray<int64_t> begin_;
  DeviceArray<unsigned long long> cursor_;
  DeviceArray<int64_t> members_, sorted_;
};

}  // namespace detail
}  // namespace cuda
}  // namespace faceops
