// Gradients that any block may add into (semi-hard's pairs, batch-all's tiles),
// summed in fixed point so that the result does not depend on the order the
// blocks run in: each term v becomes the integer k = round(v 2^-e), and
// integer addition is associative, so integer atomics give the same bits in
// any order (plain fixed-point accumulation, with one exponent e for the
// whole call, as the first stage of Demmel and Nguyen, "Fast reproducible
// floating-point summation", ARITH 2013, without their error-free split).
//
// e comes from bounds, computed on the device (no host sync): every term is
// a sum of c * g over pairs, g one component of dd/dx of one distance and c
// a count of triplets or pairs, so |g| <= G (fixed_point_exponent_kernel)
// and the |terms| added into one element sum to at most G W, W the largest
// total count of one row (from n and m alone: the caller's `weight`).
// Rounding at most doubles a nonzero term's integer (|k| <= 2 |v| 2^-e), and
// a factor 2 more covers the floating-point rounding of the bounds and of
// the partial sums, so:
//  one word    (float, W <= 2^29) 2^e > G W 2^-59: the sum stays below 2^61,
//              it cannot wrap.  Each term is off by at most 2^(e-1) <= G W
//              2^-59 <= 2^-30 G (batch-all within a batch of N = 4,096: 2^-33
//              G), 2^-6 of the float rounding of a running sum of G.
//  two words   (double; float past W = 2^29, e.g. batch-all within a batch
//              of N > 13,377) a 128-bit integer (low word; the carry and the
//              high part of a term go into the high word), 2^e > G 2^-61 and
//              2^e > G W 2^-123: the sum stays below 2^125.  Each term is off
//              by at most G 2^-61 (W < 2^62), 2^-8 of a double ulp of G.  A
//              term within the bound of one pair (semi-hard's; batch-all's
//              small tile sums) fits the low word, so the high word is added
//              to only when the low word's running sum wraps (crosses zero,
//              say); the low word's add returns its old value, for the carry.
#pragma once

#include <cmath>
#include <cstdint>

#include "faceops/hostdevice.h"
#include "launch.cuh"

namespace faceops {
namespace cuda {
namespace detail {

// int64 words per element for rows of at most `weight` terms (see the top):
// one for float up to 2^29, else two (low, high: a 128-bit integer).
template <typename T>
inline int fixed_point_words(double weight) {
  return sizeof(T) == 4 && weight <= 0x1p29 ? 1 : 2;
}

// The elements of one gradient in fixed point: words[i] (and words[count +
// i], the high words, with two words per element) with value words *
// 2^*exponent.  A null `words` is a gradient not asked for.
template <typename T>
struct FixedPointSum {
  unsigned long long* words;
  int64_t count;
  int words_per_element;  // fixed_point_words
  const int* exponent;

  __device__ explicit operator bool() const { return words != nullptr; }

  // element += value (rounded to a multiple of 2^exponent).
  __device__ void add(int64_t element, T value) const {
    const double w = math::ldexp(static_cast<double>(value), -*exponent);
    if (words_per_element == 1) {  // |w| < 2^61 (see the top)
      atomicAdd(words + element, static_cast<unsigned long long>(math::llrint(w)));
      return;
    }
    // w rounded, as high * 2^64 + low, low in [0, 2^64).  From |w| >= 2^63 on
    // w is a multiple of 2^11, so low (< 2^64) has at most 53 bits: exact.
    long long high;
    unsigned long long low;
    if (w > -0x1p63 && w < 0x1p63) {
      const long long k = math::llrint(w);
      high = k < 0 ? -1 : 0;
      low = static_cast<unsigned long long>(k);
    } else {
      const double h = math::floor(w * 0x1p-64);
      high = static_cast<long long>(h);
      low = static_cast<unsigned long long>(w - h * 0x1p64);
    }
    const unsigned long long before = atomicAdd(words + element, low);
    high += before + low < before;  // the carry out of the low word
    if (high != 0) atomicAdd(words + count + element, static_cast<unsigned long long>(high));
  }

  __device__ double value(int64_t element) const {
    const int e = *exponent;
    if (words_per_element == 1)
      return math::ldexp(static_cast<double>(static_cast<long long>(words[element])), e);
    // high * 2^64 + low with low signed (|low| <= 2^63): a value that fits
    // in int64 is then rounded once, with no cancellation against high.
    long long high = static_cast<long long>(words[count + element]);
    const long long low = static_cast<long long>(words[element]);
    if (low < 0) ++high;
    return math::ldexp(static_cast<double>(high), e + 64) +
           math::ldexp(static_cast<double>(low), e);
  }
};

// A bound for math::ilogb: 1 for none (no terms, or all zero), the
// largest double past it (overflowing norms: the results are NaN anyway).
__device__ __forceinline__ double finite_positive(double bound) {
  if (!(bound > 0)) return 1;
  return bound < 1.7976931348623157e308 ? bound : 1.7976931348623157e308;
}

// One block: *exponent for the terms of a call whose |dd/dx_k| are at most G
// and whose rows take at most `weight` of them each (see the top).  G:
// squared distances, |2 (x_a - y_b)_k| <= 2 (max ||x|| + max ||y||);
// distances, |(x_a - y_b)_k| / d_ab <= sqrt(true d^2 / computed d^2) <=
// sqrt(1 + 100 (4 D + 8) eps): a Gram-form value is more than 1e-2 of the
// norm sum and off by at most (4 D + 8) eps of it (distance_rounding_window,
// refined_squared_distance), a direct one is off by less (D eps < 1/4).
template <typename T>
__global__ void fixed_point_exponent_kernel(const T* __restrict__ norms, int n,
                                            const T* __restrict__ cand_norms, int m, bool squared,
                                            int64_t d, double weight, int words, int* exponent) {
  __shared__ double largest[2][kThreads];
  double x_max = 0, y_max = 0;
  if (squared) {
    for (int i = threadIdx.x; i < n; i += kThreads)
      x_max = static_cast<double>(norms[i]) > x_max ? static_cast<double>(norms[i]) : x_max;
    for (int j = threadIdx.x; j < m; j += kThreads)
      y_max = static_cast<double>(cand_norms[j]) > y_max ? static_cast<double>(cand_norms[j])
                                                         : y_max;
  }
  largest[0][threadIdx.x] = x_max;
  largest[1][threadIdx.x] = y_max;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int t = 1; t < kThreads; ++t) {
      x_max = largest[0][t] > x_max ? largest[0][t] : x_max;
      y_max = largest[1][t] > y_max ? largest[1][t] : y_max;
    }
    const double eps = sizeof(T) == 4 ? 0x1p-23 : 0x1p-52;
    const double g = squared ? 2 * (math::sqrt(x_max) + math::sqrt(y_max))
                             : math::sqrt(1 + 100 * (4 * double(d) + 8) * eps);
    const int sum_exponent =
        math::ilogb(finite_positive(g * weight)) + 1 - (words == 1 ? 59 : 123);
    const int term_exponent = math::ilogb(finite_positive(g)) + 1 - 61;
    *exponent = words == 1 || sum_exponent > term_exponent ? sum_exponent : term_exponent;
  }
}

// out[i] = T(value of element i) * *factor.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    fixed_point_to_gradient_kernel(FixedPointSum<T> sum, const T* factor, T* out) {
  const T f = *factor;
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < sum.count;
       i += int64_t(gridDim.x) * kThreads)
    out[i] = static_cast<T>(sum.value(i)) * f;
}

// The words of one gradient of `count` elements, zeroed on the stream.
template <typename T>
class FixedPointGradient {
 public:
  FixedPointGradient(int64_t count, int words, const int* exponent, cudaStream_t stream)
      : count_(count),
        words_per_element_(words),
        exponent_(exponent),
        words_(count * words, stream) {
    zero_async(words_.get(), count * words * int64_t(sizeof(unsigned long long)), stream);
  }
  FixedPointSum<T> sum() const { return {words_.get(), count_, words_per_element_, exponent_}; }
  // out = the sums times *factor (a device scalar).
  void write(T* out, const T* factor, cudaStream_t stream) const {
    if (count_ > 0)
      launch("fixed_point_to_gradient_kernel", fixed_point_to_gradient_kernel<T>,
             grid_for(count_), stream, sum(), factor, out);
  }

 private:
  int64_t count_;
  int words_per_element_;
  const int* exponent_;
  DeviceArray<unsigned long long> words_;
};

}  // namespace detail
}  // namespace cuda
}  // namespace faceops
