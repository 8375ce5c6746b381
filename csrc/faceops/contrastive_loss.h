// Contrastive loss (Hadsell, Chopra, LeCun, CVPR 2006) as in BVLC Caffe's
// ContrastiveLossLayer:
//
//   L = 1/(2N) sum_i [ s_i d_i^2 + (1 - s_i) max(margin - d_i, 0)^2 ],  d_i = ||a_i - b_i||
//   legacy: max(margin - d_i^2, 0) in place of max(margin - d_i, 0)^2
//
// Gradients are exact in both forms (Caffe's GPU legacy path is not).
// Shapes: a, b (n, d); similar (n,), non-zero = similar pair.
#pragma once

#include <cstdint>

#include "faceops/hostdevice.h"

namespace faceops {

// Returns the row's loss term (before the 1/(2N)) and writes dterm/d(d_i^2).
template <typename T>
FACEOPS_HD T contrastive_term(T squared_distance, bool similar, T margin, bool legacy,
                              T* dterm_dsquared) {
  if (similar) {
    *dterm_dsquared = T(1);
    return squared_distance;
  }
  if (legacy) {
    const T gap = margin - squared_distance;
    *dterm_dsquared = gap > T(0) ? T(-1) : T(0);
    return gap > T(0) ? gap : T(0);
  }
  const T distance = distance_from_squared(squared_distance, false);
  const T gap = margin - distance;
  // d/d(s) of (m - sqrt(s))^2 = -(m - d) / d; taken as 0 at d = 0.
  *dterm_dsquared = (gap > T(0) && distance > T(0)) ? -gap / distance : T(0);
  return gap > T(0) ? gap * gap : T(0);
}

namespace cpu {
// da, db (n, d) overwritten when non-null.
template <typename T>
void contrastive_loss(const T* a, const T* b, const int64_t* similar, int64_t n, int64_t d,
                      T margin, bool legacy, T* loss, T* da, T* db);
}  // namespace cpu

namespace cuda {
template <typename T>
void contrastive_loss(const T* a, const T* b, const int64_t* similar, int64_t n, int64_t d,
                      T margin, bool legacy, T* loss, T* da, T* db, void* stream);
}  // namespace cuda

}  // namespace faceops
