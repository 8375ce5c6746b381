// Shared by the CPU loops and the CUDA kernels: each loss's per-element math is
// written once as FACEOPS_HD functions and called from both.
#pragma once

#if defined(__CUDACC__)
#define FACEOPS_HD __host__ __device__ __forceinline__
#else
#define FACEOPS_HD inline
#endif

#include <cmath>
#include <cstdint>

namespace faceops {

// The math functions of the FACEOPS_HD code under one name: device code calls
// CUDA's global overloads (::sqrt, ...), the host and cuda/emulation the
// standard library's.  Each forwards its arguments unchanged (fma stays one
// fused rounding).
namespace math {
#if defined(__CUDA_ARCH__)
#define FACEOPS_MATH_FUNCTION(name) \
  template <typename... Args>       \
  FACEOPS_HD auto name(Args... args) { return ::name(args...); }
#else
#define FACEOPS_MATH_FUNCTION(name) \
  template <typename... Args>       \
  FACEOPS_HD auto name(Args... args) { return std::name(args...); }
#endif
FACEOPS_MATH_FUNCTION(sqrt)
FACEOPS_MATH_FUNCTION(exp)
FACEOPS_MATH_FUNCTION(log)
FACEOPS_MATH_FUNCTION(pow)
FACEOPS_MATH_FUNCTION(cos)
FACEOPS_MATH_FUNCTION(sin)
FACEOPS_MATH_FUNCTION(acos)
FACEOPS_MATH_FUNCTION(floor)
FACEOPS_MATH_FUNCTION(fma)
FACEOPS_MATH_FUNCTION(ldexp)
FACEOPS_MATH_FUNCTION(llrint)
FACEOPS_MATH_FUNCTION(ilogb)
#undef FACEOPS_MATH_FUNCTION
}  // namespace math

// Distance between two rows from their squared distance.  When `squared`,
// d = s; otherwise d = sqrt(s).  Negative s (Gram-formula round-off) is 0.
template <typename T>
FACEOPS_HD T distance_from_squared(T squared_distance, bool squared) {
  const T s = squared_distance > T(0) ? squared_distance : T(0);
  return squared ? s : math::sqrt(s);
}

// dd/dx_i = scale * (x_i - x_j).  For d = ||.||^2 the scale is 2; for
// d = ||.|| it is 1/d, taken as 0 at d = 0 (where d is not differentiable).
template <typename T>
FACEOPS_HD T distance_gradient_scale(T distance, bool squared) {
  if (squared) return T(2);
  return distance > T(0) ? T(1) / distance : T(0);
}

// Squared distance of rows x_i, x_j from the Gram form ||x_i||^2 + ||x_j||^2 -
// 2 x_i.x_j, as the CPU and CUDA distance tiles compute it.  The Gram form
// cancels for near-duplicate rows, and 1/d in the non-squared gradients would
// amplify that: below 1e-2 of the norms it is recomputed from the differences.
template <typename T>
FACEOPS_HD T gram_squared_distance(T norm_i, T norm_j, T dot) {
#if defined(__CUDA_ARCH__)
  return math::fma(T(-2), dot, norm_i + norm_j);
#else
  return norm_i + norm_j - T(2) * dot;
#endif
}

template <typename T>
FACEOPS_HD bool near_duplicate(T norm_i, T norm_j, T gram_squared) {
  return !(gram_squared > T(1e-2) * (norm_i + norm_j));
}

template <typename T>
FACEOPS_HD T direct_squared_distance(const T* x_i, const T* x_j, int64_t d) {
  T sum = T(0);
  for (int64_t k = 0; k < d; ++k) {
    const T difference = x_i[k] - x_j[k];
    sum += difference * difference;
  }
  return sum;
}

template <typename T>
FACEOPS_HD T refined_squared_distance(T norm_i, T norm_j, T dot, const T* x_i, const T* x_j,
                                      int64_t d) {
  const T s = gram_squared_distance(norm_i, norm_j, dot);
  return near_duplicate(norm_i, norm_j, s) ? direct_squared_distance(x_i, x_j, d) : s;
}

}  // namespace faceops
