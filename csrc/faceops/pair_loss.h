// Multibatch pair loss (Tadmor, Wexler, Rosenwein, Shalev-Shwartz, Shashua,
// "Learning a Metric Embedding for Face Recognition using the Multibatch
// Method", NIPS 2016):
//
//   y_ij = +1 if labels equal else -1
//   L = 1/(N^2 - N) sum_{i != j} max(0, 1 - y_ij (theta - ||x_i - x_j||^2))
//
// theta is a learned threshold.  Shapes: x (n, d), labels (n,).
#pragma once

#include <cstdint>

#include "faceops/hostdevice.h"

namespace faceops {

// Hinge of one ordered pair: returns its loss term and writes dterm/d(D_ij)
// (D_ij the squared distance); dterm/dtheta = -dterm/d(D_ij).
template <typename T>
FACEOPS_HD T pair_term(T squared_distance, bool same_label, T theta, T* dterm_dsquared) {
  const T y = same_label ? T(1) : T(-1);
  const T hinge = T(1) - y * (theta - squared_distance);
  *dterm_dsquared = hinge > T(0) ? y : T(0);
  return hinge > T(0) ? hinge : T(0);
}

namespace cpu {
// dx (n, d) overwritten and *dtheta written when non-null.
template <typename T>
void pair_loss(const T* x, const int64_t* labels, int64_t n, int64_t d, T theta, T* loss, T* dx,
               T* dtheta);
}  // namespace cpu

namespace cuda {
template <typename T>
void pair_loss(const T* x, const int64_t* labels, int64_t n, int64_t d, T theta, T* loss, T* dx,
               T* dtheta, void* stream);
}  // namespace cuda

}  // namespace faceops
