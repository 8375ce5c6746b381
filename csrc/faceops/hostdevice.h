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

// Distance between two rows from their squared distance.  When `squared`,
// d = s; otherwise d = sqrt(s).  Negative s (Gram-formula round-off) is 0.
template <typename T>
FACEOPS_HD T distance_from_squared(T squared_distance, bool squared) {
  const T s = squared_distance > T(0) ? squared_distance : T(0);
  if (squared) return s;
#if defined(__CUDA_ARCH__)
  return ::sqrt(s);
#else
  return std::sqrt(s);
#endif
}

// dd/dx_i = scale * (x_i - x_j).  For d = ||.||^2 the scale is 2; for
// d = ||.|| it is 1/d, taken as 0 at d = 0 (where d is not differentiable).
template <typename T>
FACEOPS_HD T distance_gradient_scale(T distance, bool squared) {
  if (squared) return T(2);
  return distance > T(0) ? T(1) / distance : T(0);
}

}  // namespace faceops
