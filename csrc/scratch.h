// Per-thread scratch kept between calls.  A large buffer allocated and freed
// at every call costs page faults (about 1 us per 4 KB page) whenever the
// allocator gives its memory back to the OS -- glibc trims the heap top, and
// with mmap every call maps fresh pages -- and in a multithreaded process each
// give-back also interrupts the other cores to flush their TLBs.  So the
// kernels' O(N D) scratch grows to the largest call and stays.
#pragma once

#include <cstddef>
#include <vector>

namespace faceops {
namespace detail {

// One buffer per (type, slot, thread), at least `count` long; its contents
// are whatever the last user left.  A caller must not use one slot twice at once.
enum ScratchSlot : int {
  kGramNorms,
  kGramTransposed,
  kPrivateGradients,
  kDistanceTile,
  kCoefficientTile,
  kCoefficientTileTransposed,
  kColumnSums,
  kNegativeTileByRow,
  kNegativeTileByColumn,
  kReferenceNorms,
  kReferenceTransposed,
};

template <typename T, ScratchSlot kSlot>
T* thread_scratch(size_t count) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}

}  // namespace detail
}  // namespace faceops
