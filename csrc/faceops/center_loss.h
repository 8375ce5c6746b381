// Center loss (Wen, Zhang, Li, Qiao, "A Discriminative Feature Learning
// Approach for Deep Face Recognition", ECCV 2016).
//
//   L = 1/(2N) sum_i ||x_i - c_{y_i}||^2                       (eq. 2, batch mean as in caffe-face)
//   dL/dx_i = (x_i - c_{y_i}) / N,   dL/dc_j = -sum_{i: y_i = j} (x_i - c_j) / N
//   update direction (eq. 4):  delta_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)
//   center_update:  c_j <- c_j - alpha * delta_j   (classes absent from the batch untouched)
//
// Shapes: x (n, d), labels (n,) in [0, num_classes), centers (num_classes, d).
#pragma once

#include <cstdint>

#include "faceops/hostdevice.h"

namespace faceops {

// One element of row i: adds its loss term (before the 1/(2N)) to *loss_sum
// and returns dL/dx_i for that element.
template <typename T>
FACEOPS_HD T center_loss_element(T x, T center, T inv_n, T* loss_sum) {
  const T residual = x - center;
  *loss_sum += residual * residual;
  return residual * inv_n;
}

// One element of the Wen et al. eq. 4 update direction for class j.
template <typename T>
FACEOPS_HD T center_update_term(T x, T center, T inv_one_plus_count) {
  return (center - x) * inv_one_plus_count;
}

namespace cpu {
// Writes the loss to *loss.  dx (n, d) is overwritten when non-null;
// dcenters (num_classes, d) is accumulated into when non-null (only the rows of
// classes present in the batch are touched: zero it beforehand).
template <typename T>
void center_loss(const T* x, const int64_t* labels, const T* centers, int64_t n, int64_t d,
                 int64_t num_classes, T* loss, T* dx, T* dcenters);
// Accumulates delta_j (eq. 4) into direction rows of the classes in the batch.
template <typename T>
void center_update_direction(const T* x, const int64_t* labels, const T* centers, int64_t n,
                             int64_t d, int64_t num_classes, T* direction);
// centers -= alpha * delta, in place.
template <typename T>
void center_update(const T* x, const int64_t* labels, T* centers, int64_t n, int64_t d,
                   int64_t num_classes, T alpha);
}  // namespace cpu

namespace cuda {
// Same contracts as faceops::cpu; pointers are device pointers, `loss` too,
// and work is queued on `stream` (a cudaStream_t).
template <typename T>
void center_loss(const T* x, const int64_t* labels, const T* centers, int64_t n, int64_t d,
                 int64_t num_classes, T* loss, T* dx, T* dcenters, void* stream);
template <typename T>
void center_update_direction(const T* x, const int64_t* labels, const T* centers, int64_t n,
                             int64_t d, int64_t num_classes, T* direction, void* stream);
template <typename T>
void center_update(const T* x, const int64_t* labels, T* centers, int64_t n, int64_t d,
                   int64_t num_classes, T alpha, void* stream);
}  // namespace cuda

}  // namespace faceops
