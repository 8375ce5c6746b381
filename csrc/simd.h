// SIMD vectors through GCC/Clang vector extensions (512 bits, or one 256-bit
// register on AVX2 targets),
// and the reductions of the CPU kernels over rows: several accumulators in
// lanes, summed at the end, so that they vectorise without -ffast-math.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

// The kernels pass these vectors between inline functions; where a vector is
// wider than the ABI's argument registers GCC notes, at the first
// such call of each file, an ABI difference that no call here crosses.  The
// note is switched off for the rest of the file: only faceops' own kernel
// sources include this header.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace faceops {
namespace detail {

// One register of the AVX2 and AVX-512 targets: GCC lowers a vector wider than
// the target's registers through the stack (a 512-bit vector on AVX2 ran the
// GEMM micro-kernel about 40x slower than one 256-bit register at a time).  The
// baseline path keeps 512-bit vectors: it is the arithmetic the CUDA emulation
// check compares against (a lane count changes how row sums are grouped, and
// 128-bit lanes made one batch-all hinge near 0 differ from the CUDA kernel).
// (simd.h is read before kernel_variant.h's target pragma, so the variant
// number, not __AVX__, says which path this is; the CUDA emulation check keeps
// 512 bits, the arithmetic its CPU-CUDA comparisons were settled on.)
#if defined(FACEOPS_KERNEL_VARIANT) && FACEOPS_KERNEL_VARIANT == 2 && !defined(FACEOPS_CUDA_EMULATION)
constexpr int kSimdBytes = 32;
#else
constexpr int kSimdBytes = 64;
#endif

template <typename T>
struct Simd {
  static constexpr int kLanes = kSimdBytes / sizeof(T);
  typedef T Vector __attribute__((vector_size(kSimdBytes)));
  static Vector load(const T* p) {
    Vector v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void add_to(T* p, Vector v) {
    Vector old;
    std::memcpy(&old, p, sizeof(old));
    old += v;
    std::memcpy(p, &old, sizeof(old));
  }
};

template <typename T>
typename Simd<T>::Vector broadcast(T value) {
  return typename Simd<T>::Vector{} + value;
}

// Folds the lanes of v by halving, combine(a, b) being +, min or max.
template <typename T, typename Combine>
T fold_lanes(typename Simd<T>::Vector v, Combine combine) {
  T lanes[Simd<T>::kLanes];
  std::memcpy(lanes, &v, sizeof(lanes));
  for (int width = Simd<T>::kLanes / 2; width > 0; width /= 2)
    for (int lane = 0; lane < width; ++lane) lanes[lane] = combine(lanes[lane], lanes[lane + width]);
  return lanes[0];
}

template <typename T>
T sum_lanes(typename Simd<T>::Vector v) {
  return fold_lanes<T>(v, [](T a, T b) { return a + b; });
}

// Whether any lane of a comparison's result is set: an OR of its 64-bit
// words, which GCC folds in vector registers (a per-lane test it does not).
template <typename Mask>
bool any_lane(Mask mask) {
  uint64_t words[sizeof(Mask) / sizeof(uint64_t)];
  std::memcpy(words, &mask, sizeof(words));
  uint64_t any = 0;
  for (const uint64_t word : words) any |= word;
  return any != 0;
}

// sum_k f(a[k], b[k]) for f(u, v) = u * v or (u - v)^2, two vectors at a time.
template <typename T, bool kDifference>
T sum_of_products(const T* a, const T* b, int64_t d) {
  using S = Simd<T>;
  typename S::Vector sum0{}, sum1{};
  int64_t k = 0;
  for (; k + 2 * S::kLanes <= d; k += 2 * S::kLanes) {
    typename S::Vector u0 = S::load(a + k), u1 = S::load(a + k + S::kLanes);
    typename S::Vector v0 = S::load(b + k), v1 = S::load(b + k + S::kLanes);
    if (kDifference) {
      u0 -= v0;
      u1 -= v1;
      v0 = u0;
      v1 = u1;
    }
    sum0 += u0 * v0;
    sum1 += u1 * v1;
  }
  T sum = sum_lanes<T>(sum0 + sum1);
  for (; k < d; ++k) sum += kDifference ? (a[k] - b[k]) * (a[k] - b[k]) : a[k] * b[k];
  return sum;
}

template <typename T>
T dot(const T* a, const T* b, int64_t d) {
  return sum_of_products<T, false>(a, b, d);
}

template <typename T>
T squared_difference(const T* a, const T* b, int64_t d) {
  return sum_of_products<T, true>(a, b, d);
}

// No NaN or Inf among `count` values: an exponent field of all ones, tested
// on the bits (an integer OR reduction, which vectorises).
template <typename T>
bool all_finite(const T* values, int64_t count) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  constexpr Bits kExponent = sizeof(T) == 4 ? Bits(0x7f800000u) : Bits(0x7ff0000000000000ull);
  Bits non_finite = 0;
  for (int64_t i = 0; i < count; ++i) {
    Bits bits;
    std::memcpy(&bits, values + i, sizeof(bits));
    non_finite |= Bits((bits & kExponent) == kExponent);
  }
  return non_finite == 0;
}

// A std::vector of SIMD vectors.  GCC aligns a vector type as the target
// allows (16, 32 or 64 bytes for SSE, AVX, AVX-512), so std::vector<Vector>
// code differs between the instruction-set variants (kernel_variant.h) under
// one symbol, and the linker's pick could allocate 16-byte-aligned rows for
// AVX code.  This allocator is a type of the variant's own namespace, which
// gives each variant its own std::vector code, allocating 64-byte-aligned rows.
template <typename V>
struct SimdAllocator {
  using value_type = V;
  SimdAllocator() = default;
  template <typename U>
  SimdAllocator(const SimdAllocator<U>&) {}
  V* allocate(size_t count) {
    return static_cast<V*>(::operator new(count * sizeof(V), std::align_val_t(64)));
  }
  void deallocate(V* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  friend bool operator==(SimdAllocator, SimdAllocator) { return true; }
  friend bool operator!=(SimdAllocator, SimdAllocator) { return false; }
};

template <typename T>
using SimdVectors = std::vector<typename Simd<T>::Vector, SimdAllocator<typename Simd<T>::Vector>>;

}  // namespace detail
}  // namespace faceops
