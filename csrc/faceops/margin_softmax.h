// Combined margin softmax (insightface's combined margin: Deng, Guo, Xue,
// Zafeiriou, "ArcFace", CVPR 2019, sec. 2.3 and eq. 4).  With x̂_i = x_i/||x_i||
// and ŵ_j = w_j/||w_j|| (each norm floored at kNormFloor, as F.normalize does),
// c_ij = x̂_i . ŵ_j = cos(theta_ij), and
//
//   logit_ij = s * c_ij                                  for j != y_i
//   logit_iy = s * psi(c_iy)
//   L = 1/N sum_i [ log sum_j exp(logit_ij) - logit_iy ]   (mean cross-entropy)
//
// psi(c) = cos(m1 theta + m2) - m3 while m1 theta + m2 <= pi.  Past pi cos is
// no longer decreasing in theta; we continue it as SphereFace does (Liu et
// al., CVPR 2017, eq. 7) with k = floor((m1 theta + m2) / pi):
//   psi = (-1)^k cos(m1 theta + m2) - 2k - m3,
// which is continuous and strictly decreasing on [0, pi] for every m1 > 0,
// m2 >= 0.  (insightface instead jumps to c - m2 sin(m2) past theta = pi - m2,
// a discontinuous fallback; the two agree wherever m1 theta + m2 <= pi.)
// m1 = 1, m2 = 0.5, m3 = 0: ArcFace.  m1 = 1, m2 = 0, m3 = 0.35: CosFace /
// AM-softmax (psi(c) = c - m3 exactly, no arccos).  m1 = 4: SphereFace.
//
// Gradients are exact: dpsi/dc = (-1)^k m1 sin(m1 theta + m2) / sin(theta),
// with sin(theta) floored at margin_sin_floor<T>() = sqrt(epsilon of T)
// (3.45e-4 in float32, 1.49e-8 in float64), which bounds |dpsi/dc| by
// m1 / sqrt(epsilon).  The derivative is infinite at c = +-1 for m2 > 0, and
// near there the cosine's own rounding (epsilon) is all that tells theta from
// 0: every c != +-1 of T has sin(theta) >= about sqrt(epsilon), so the floor
// only acts at |c| = 1 (and within an ulp of it), where it amplifies a
// rounding error of the cosine at most to sqrt(epsilon), not a million-fold
// as a fixed 1e-6 floor did in float32.
//
// Shapes: x (n, d), labels (n,) in [0, num_classes), weight (num_classes, d).
#pragma once

#include <cstdint>

#include "faceops/hostdevice.h"

namespace faceops {

constexpr double kNormFloor = 1e-12;

template <typename T>
FACEOPS_HD T margin_sin_floor();
template <>
FACEOPS_HD float margin_sin_floor<float>() { return 3.4526698e-4f; }  // sqrt(FLT_EPSILON)
template <>
FACEOPS_HD double margin_sin_floor<double>() { return 1.4901161193847656e-8; }  // sqrt(DBL_EPSILON)

// psi(c) of the target class, and dpsi/dc in *derivative.  c is clamped to
// [-1, 1] first (cosines of normalised rows can exceed 1 by round-off).
template <typename T>
FACEOPS_HD T margin_target_cosine(T c, T m1, T m2, T m3, T* derivative) {
  if (m1 == T(1) && m2 == T(0)) {
    *derivative = T(1);
    return c - m3;
  }
  const T clamped = c > T(1) ? T(1) : (c < T(-1) ? T(-1) : c);
  const T theta = math::acos(clamped);
  const T angle = m1 * theta + m2;
  const T k = math::floor(angle / T(3.14159265358979323846));
  const T sign = (static_cast<int64_t>(k) % 2 == 0) ? T(1) : T(-1);
  const T sin_squared = T(1) - clamped * clamped;
  const T sin_theta = distance_from_squared(sin_squared, false);
  const T sin_floored = sin_theta > margin_sin_floor<T>() ? sin_theta : margin_sin_floor<T>();
  *derivative = sign * m1 * math::sin(angle) / sin_floored;
  return sign * math::cos(angle) - T(2) * k - m3;
}

// dL/dc of one cosine, from its logit and its row's log-sum-exp:
// (softmax - [j == y_i]) * s / n, times dpsi/dc for the target.
template <typename T>
FACEOPS_HD T margin_softmax_cosine_gradient(T logit, T log_sum_exp, bool is_target,
                                            T target_derivative, T scale, T inv_n) {
  const T softmax = math::exp(logit - log_sum_exp);
  return is_target ? (softmax - T(1)) * scale * target_derivative * inv_n
                   : softmax * scale * inv_n;
}

// A row's norm and how to divide by it (x̂_k = ldexp(x_k, -exponent) *
// inverse): the plain root of the sum of squares, unless that sum overflowed
// with every entry finite (float32 rows near 1e19, float64 near 1e154): then
// the norm is recomputed from the row scaled by 2^-e, e = ilogb(max |x_k|)
// (exact; the largest entry in [1, 2), so the sum cannot overflow and the
// squares that matter do not underflow), and the root scaled back by 2^e.
// Dividing the scaled row by the scaled root keeps 1 / ||x|| normal up to
// the largest finite norm.  Where the norm itself lies past T's range (or an
// entry is inf) there is no answer in T: norm = inf and inverse = NaN, so x̂,
// the loss and the gradients are NaN, never the clean zero that
// x / inf would give.
template <typename T>
struct RowNorm {
  T norm;      // unfloored, for normalized_row_gradient
  T inverse;   // 1 / max(norm, kNormFloor), of the row scaled by 2^-exponent
  int exponent;  // 0 on the common path (a recomputed row has exponent >= 32)
};

// sum_of_squares: the caller's sum of row[k]^2 (its own order; the common
// path uses it as it is).
template <typename T>
FACEOPS_HD RowNorm<T> row_norm(const T* row, int64_t d, T sum_of_squares) {
  const T infinity = static_cast<T>(HUGE_VAL);
  if (!(sum_of_squares == infinity)) {
    const T norm = math::sqrt(sum_of_squares);
    return {norm, T(1) / (norm < T(kNormFloor) ? T(kNormFloor) : norm), 0};
  }
  T largest = T(0);
  for (int64_t k = 0; k < d; ++k) {
    const T magnitude = row[k] < T(0) ? -row[k] : row[k];
    if (magnitude > largest) largest = magnitude;
  }
  if (!(largest < infinity)) return {infinity, static_cast<T>(NAN), 0};
  const int exponent = math::ilogb(largest);
  T scaled_sum = T(0);
  for (int64_t k = 0; k < d; ++k) {
    const T scaled = math::ldexp(row[k], -exponent);
    scaled_sum += scaled * scaled;
  }
  const T scaled_norm = math::sqrt(scaled_sum);  // >= 1
  const T norm = math::ldexp(scaled_norm, exponent);
  if (norm == infinity) return {infinity, static_cast<T>(NAN), 0};
  return {norm, T(1) / scaled_norm, exponent};
}

// The Caffe forks' norm sqrt(||row||^2 + epsilon) (no floor), with row_norm's
// rescue where the sum of squares overflowed: there epsilon is below one ulp
// of the sum, and x / inf would have given a silent zero row.
template <typename T>
FACEOPS_HD RowNorm<T> epsilon_row_norm(const T* row, int64_t d, T epsilon) {
  T sum_of_squares = T(0);
  for (int64_t k = 0; k < d; ++k) sum_of_squares += row[k] * row[k];
  if (sum_of_squares == static_cast<T>(HUGE_VAL)) return row_norm(row, d, sum_of_squares);
  const T norm = math::sqrt(sum_of_squares + epsilon);
  return {norm, T(1) / norm, 0};
}

// value / ||row|| from the row's RowNorm.
template <typename T>
FACEOPS_HD T divide_by_norm(T value, const RowNorm<T>& norm) {
  return norm.exponent == 0 ? value * norm.inverse : math::ldexp(value * norm.inverse, -norm.exponent);
}

// out[k] = x̂_k for k = first, first + step, ... < d.  out may alias row.
template <typename T>
FACEOPS_HD void write_normalized_row(const T* row, int64_t first, int64_t step, int64_t d,
                                     const RowNorm<T>& norm, T* out) {
  if (norm.exponent == 0) {
    for (int64_t k = first; k < d; k += step) out[k] = row[k] * norm.inverse;
  } else {
    for (int64_t k = first; k < d; k += step)
      out[k] = math::ldexp(row[k], -norm.exponent) * norm.inverse;
  }
}

// One row's gradient through x̂ = x / max(||x||, kNormFloor), given x̂, the
// unfloored norm and dL/dx̂: (g - x̂ (x̂ . g)) / ||x||, or g / kNormFloor
// where the floor applies (as autograd of F.normalize gives).
template <typename T>
FACEOPS_HD void normalized_row_gradient(const T* normalized, T norm, const T* d_normalized,
                                        int64_t d, T* d_row) {
  if (norm <= T(kNormFloor)) {
    for (int64_t k = 0; k < d; ++k) d_row[k] = d_normalized[k] / T(kNormFloor);
    return;
  }
  T projection = T(0);
  for (int64_t k = 0; k < d; ++k) projection += normalized[k] * d_normalized[k];
  for (int64_t k = 0; k < d; ++k) d_row[k] = (d_normalized[k] - normalized[k] * projection) / norm;
}

namespace cpu {
// out = rows of x (n, d) over max(||x_i||, kNormFloor); norms (n,) gets the
// unfloored norms when non-null.  out may alias x.
template <typename T>
void normalize_rows(const T* x, int64_t n, int64_t d, T* out, T* norms);
// d_x from normalize_rows' output, its norms and d_out (normalized_row_gradient).
template <typename T>
void normalize_rows_backward(const T* normalized, const T* norms, const T* d_out, int64_t n,
                             int64_t d, T* d_x);
// Writes the mean cross-entropy to *loss; dx (n, d) and dweight
// (num_classes, d) are overwritten when non-null.  No n x C matrix: the
// logits are computed in class blocks for a log-sum-exp pass, then either
// recomputed for the gradients or, when dweight is wanted and n <= d, read
// back from dweight's own rows, where the first pass left them.  Memory is
// O(n d) plus O(threads * block) beyond the outputs.
template <typename T>
void margin_softmax_loss(const T* x, const int64_t* labels, const T* weight, int64_t n, int64_t d,
                         int64_t num_classes, T scale, T m1, T m2, T m3, T* loss, T* dx,
                         T* dweight);
// One shard of a class-sharded margin softmax (model-parallel Partial FC):
// weight holds num_classes of the classes, labels index them, -1 marking a
// row whose class lives on another shard.  Per row i over these classes:
// row_max = max_j logit_ij, row_sum = sum_j exp(logit_ij - row_max), and
// target_logit = s psi(c_iy) when y_i is here, else 0.  The shards combine
// into the row's log-sum-exp M + log sum_r row_sum_r exp(row_max_r - M)
// with M the maximum of the shards' row_max (numerically stable).  With
// margin_softmax_loss's memory, and the same arithmetic (its first pass).
template <typename T>
void margin_softmax_shard_forward(const T* x, const int64_t* labels, const T* weight, int64_t n,
                                  int64_t d, int64_t num_classes, T scale, T m1, T m2, T m3,
                                  T* row_max, T* row_sum, T* target_logit);
// The shard's part of the gradient of loss_scale * sum_i (lse_i - target
// logit_i), lse being the rows' log-sum-exp over every shard: dx (n, d) from
// these classes only (the shards' dx add up to the whole), dweight
// (num_classes, d) complete; either may be null.  loss_scale = 1/N over a
// global batch of N rows gives margin_softmax_loss's gradients.
template <typename T>
void margin_softmax_shard_backward(const T* x, const int64_t* labels, const T* weight, int64_t n,
                                   int64_t d, int64_t num_classes, T scale, T m1, T m2, T m3,
                                   const T* log_sum_exp, T loss_scale, T* dx, T* dweight);
// The margin alone, on an (n, num_classes) matrix of cosines (the legacy
// Caffe layers that put it between a normalised InnerProduct and
// SoftmaxWithLoss): out = cosine except out[i, labels[i]] = psi(cosine[i, labels[i]]).
// out may alias cosine.
template <typename T>
void target_margin_forward(const T* cosine, const int64_t* labels, int64_t n,
                           int64_t num_classes, T m1, T m2, T m3, T* out);
// d_cosine = d_out, except d_cosine[i, labels[i]] = d_out[i, labels[i]] *
// dpsi/dc at cosine[i, labels[i]].  d_cosine may alias d_out.
template <typename T>
void target_margin_backward(const T* cosine, const int64_t* labels, const T* d_out, int64_t n,
                            int64_t num_classes, T m1, T m2, T m3, T* d_cosine);
}  // namespace cpu

namespace cuda {
// Same contracts as faceops::cpu; device pointers (`loss` too), queued on
// `stream` (a cudaStream_t).
template <typename T>
void normalize_rows(const T* x, int64_t n, int64_t d, T* out, T* norms, void* stream);
template <typename T>
void normalize_rows_backward(const T* normalized, const T* norms, const T* d_out, int64_t n,
                             int64_t d, T* d_x, void* stream);
template <typename T>
void margin_softmax_loss(const T* x, const int64_t* labels, const T* weight, int64_t n, int64_t d,
                         int64_t num_classes, T scale, T m1, T m2, T m3, T* loss, T* dx,
                         T* dweight, void* stream);
template <typename T>
void margin_softmax_shard_forward(const T* x, const int64_t* labels, const T* weight, int64_t n,
                                  int64_t d, int64_t num_classes, T scale, T m1, T m2, T m3,
                                  T* row_max, T* row_sum, T* target_logit, void* stream);
template <typename T>
void margin_softmax_shard_backward(const T* x, const int64_t* labels, const T* weight, int64_t n,
                                   int64_t d, int64_t num_classes, T scale, T m1, T m2, T m3,
                                   const T* log_sum_exp, T loss_scale, T* dx, T* dweight,
                                   void* stream);
template <typename T>
void target_margin_forward(const T* cosine, const int64_t* labels, int64_t n,
                           int64_t num_classes, T m1, T m2, T m3, T* out, void* stream);
template <typename T>
void target_margin_backward(const T* cosine, const int64_t* labels, const T* d_out, int64_t n,
                            int64_t num_classes, T m1, T m2, T m3, T* d_cosine, void* stream);
}  // namespace cuda

}  // namespace faceops
