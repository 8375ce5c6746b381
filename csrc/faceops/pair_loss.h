// Multibatch pair loss (Tadmor, Wexler, Rosenwein, Shalev-Shwartz, Shashua,
// "Learning a Metric Embedding for Face Recognition using the Multibatch
// Method", NIPS 2016):
//
//   y_ij = +1 if labels equal else -1
//   L = 1/(N^2 - N) sum_{i != j} max(0, 1 - y_ij (theta - ||x_i - x_j||^2))
//
// theta is a learned threshold, passed by address (one value: host memory for
// the CPU kernels, device memory for the CUDA ones, so that a CUDA caller never
// reads it on the host).  Shapes: x (n, d), labels (n,).
//
// Reference sets (pair_loss_ref): the ordered pairs (x_i, ref_j), ref (m, d)
// with ref_labels (m,), less each anchor's own copy (self_index, nullable:
// self_index[i] the row of ref that is x_i's copy, or -1, with x_i's label,
// each ref row at most one anchor's copy, as triplet_loss.h):
//   L = 1/(n m - c) sum_{i, j != self_index[i]} max(0, 1 - y_ij (theta - ||x_i - ref_j||^2))
// with c the number of anchors with an own copy; *count receives n m - c (0:
// loss 0, zero gradients), so that with ref = the whole batch and self_index
// = the chunk's rows, chunks combined by sum_k count_k L_k / sum_k count_k
// give the in-batch 1/(N^2 - N) mean.
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
void pair_loss(const T* x, const int64_t* labels, int64_t n, int64_t d, const T* theta, T* loss,
               T* dx, T* dtheta);
// loss, count, dx (n, d), dref (m, d), dtheta written when non-null.
template <typename T>
void pair_loss_ref(const T* x, const int64_t* labels, int64_t n, int64_t d, const T* ref,
                   const int64_t* ref_labels, int64_t m, const int64_t* self_index,
                   const T* theta, T* loss, T* count, T* dx, T* dref, T* dtheta);
}  // namespace cpu

namespace cuda {
template <typename T>
void pair_loss(const T* x, const int64_t* labels, int64_t n, int64_t d, const T* theta, T* loss,
               T* dx, T* dtheta, void* stream);
template <typename T>
void pair_loss_ref(const T* x, const int64_t* labels, int64_t n, int64_t d, const T* ref,
                   const int64_t* ref_labels, int64_t m, const int64_t* self_index,
                   const T* theta, T* loss, T* count, T* dx, T* dref, T* dtheta, void* stream);
}  // namespace cuda

}  // namespace faceops
