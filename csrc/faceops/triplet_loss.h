// Triplet loss with in-batch mining.  d_ij = ||x_i - x_j||^2 when `squared`,
// else ||x_i - x_j||; positives share the anchor's label, negatives do not.
//
//  kSemihard (Schroff, Kalenichenko, Philbin, "FaceNet", CVPR 2015, sec. 3.2,
//            with TensorFlow's triplet_semihard_loss semantics): for every
//            ordered (a, p), a != p, n* = argmin {d_an : d_an > d_ap}, or, if
//            none is farther, argmax d_an; L = mean over (a, p) of
//            max(0, d_ap - d_an* + margin).  Pairs whose anchor has no
//            negative in the batch are left out of the mean.
//  kHard     (Hermans, Beyer, Leibe, "In Defense of the Triplet Loss", 2017,
//            eq. 5): L = mean over anchors with a positive and a negative of
//            max(0, margin + max_p d_ap - min_n d_an).
//  kAll      (batch-all, ibid. eq. 6 with the mean over all valid triplets):
//            L = mean over (a, p, n) of max(0, d_ap - d_an + margin).
//
// Ties go to the lowest index.  No valid pair or triplet: loss 0, zero dx.
// Each pair has one distance whichever role it plays: a mining decision or a
// hinge's sign that rounding of the kernels' Gram form could flip is taken on
// ||x_i - x_j||^2 summed from the differences, so exact duplicates follow
// these rules (a negative equal to a positive is not farther than it, a
// hinge at exactly 0 is inactive).
// Overflow: when a row's squared norm exceeds a quarter of the dtype's largest
// value, some squared distance may overflow (||x_i - x_j||^2 <= 2 ||x_i||^2 +
// 2 ||x_j||^2) and the Gram form turns inf - inf into NaN, which the mining
// would read as "no candidate"; the loss and every entry of dx are then NaN
// (as the float64 reference gives), never a clean 0.
// Reference sets (triplet_loss_ref; pytorch-metric-learning's ref_emb):
// anchors are the rows of x (n, d) with `labels`; positives and negatives
// are rows of ref (m, d) with `ref_labels` only -- x's own rows are no
// candidates.  self_index (n,), nullable: self_index[a] is the row of ref
// that is anchor a's own copy (e.g. after an all-gather), or -1; that row is
// neither a positive nor a negative of a (it must carry a's label, and a ref
// row is at most one anchor's copy), and stays a candidate of every other
// anchor; without self_index a copy of x_a in ref is an ordinary candidate.  The definitions above then hold with "the batch" read as "ref
// less a's own copy" and indices as ref rows (ties, lowest index, the
// exact-distance rule); the mean is over this call's terms -- semihard: pairs
// (a, p) whose anchor has a negative; hard: anchors with a positive and a
// negative; all: valid (a, p, n) -- and *count receives their number (0:
// loss 0, zero gradients).  dx (n, d) and dref (m, d) are gradients of that
// mean.  A batch cut into chunks x_k (rows o_k .. o_k + n_k - 1) gives
// exactly the in-batch op's terms with ref = the batch and self_index = o_k +
// arange(n_k): sum_k count_k loss_k / sum_k count_k is its loss, and dx_k
// plus the sum over k of dref_k's rows its dx.  Overflow as above, over the
// rows of x and ref: loss, count, dx and dref all NaN.
// Explicit triplets (happynear's caffe-windows form, three bottoms):
//   L = 1/(2N) sum_i max(0, margin + ||a_i - p_i||^2 - ||a_i - n_i||^2).
#pragma once

#include <cstdint>

#include "faceops/hostdevice.h"

namespace faceops {

enum class TripletMining : int { kSemihard = 0, kHard = 1, kAll = 2 };

template <typename T>
FACEOPS_HD T triplet_hinge(T anchor_positive, T anchor_negative, T margin) {
  const T h = anchor_positive - anchor_negative + margin;
  return h > T(0) ? h : T(0);
}

// The largest squared row norm for which every squared distance stays finite.
template <typename T>
FACEOPS_HD T largest_safe_squared_norm();
template <>
FACEOPS_HD float largest_safe_squared_norm<float>() { return 3.40282347e38f / 4; }
template <>
FACEOPS_HD double largest_safe_squared_norm<double>() { return 1.7976931348623157e308 / 4; }

template <typename T>
FACEOPS_HD bool squared_norm_overflows(T squared_norm) {
  return !(squared_norm <= largest_safe_squared_norm<T>());
}

// An explicit triplet's hinge (triplet_hinge of its direct squared distances), NaN
// when both overflowed to inf: inf - inf has no sign, so the loss and that row's
// gradients are NaN, never a clean 0 (as for mined triplets).
template <typename T>
FACEOPS_HD T explicit_triplet_hinge(T anchor_positive, T anchor_negative, T margin) {
  const T largest = largest_safe_squared_norm<T>() * T(4);  // the dtype's largest finite value
  if (anchor_positive > largest && anchor_negative > largest) return T(0) / T(0);
  return triplet_hinge(anchor_positive, anchor_negative, margin);
}

// The gradient coefficient of an explicit triplet's hinge: scale where it is active,
// NaN where it is NaN, else 0.
template <typename T>
FACEOPS_HD T explicit_triplet_coefficient(T hinge, T scale) {
  return hinge > T(0) ? scale : (hinge == hinge ? T(0) : hinge);
}

// Bound on |Gram-form value - direct value| of a distance `value` between two
// rows whose squared norms sum to norm_sum, in dimension d (Higham, "Accuracy
// and Stability of Numerical Algorithms", eq. 3.5, for each dot product, with
// room for the direct sum's own rounding): (4 d + 8) epsilon norm_sum for
// squared distances, min(sqrt(e), e / value) for their roots.  A decision
// whose margin is within the windows is taken on the direct values.
template <typename T>
FACEOPS_HD T triplet_epsilon();
template <>
FACEOPS_HD float triplet_epsilon<float>() { return 1.1920929e-7f; }
template <>
FACEOPS_HD double triplet_epsilon<double>() { return 2.220446049250313e-16; }

template <typename T>
FACEOPS_HD T distance_rounding_window(T norm_sum, int64_t d, T value, bool squared) {
  const T e = static_cast<T>(4 * d + 8) * triplet_epsilon<T>() * norm_sum;
  if (squared) return e;
  return (value * value > e ? e / value : distance_from_squared(e, false)) +
         T(4) * triplet_epsilon<T>() * value;
}

// Orders candidates (distance, index): smaller distance first, then lower index.
template <typename T>
FACEOPS_HD bool closer_candidate(T distance, int64_t index, T best_distance, int64_t best_index) {
  return distance < best_distance || (distance == best_distance && index < best_index);
}

namespace cpu {
// dx (n, d) overwritten when non-null.
template <typename T>
void triplet_loss(const T* x, const int64_t* labels, int64_t n, int64_t d, T margin,
                  TripletMining mining, bool squared, T* loss, T* dx);
// Anchors x (n, d), candidates ref (m, d) (see "Reference sets" above);
// self_index nullable; loss, count, dx (n, d), dref (m, d) written when non-null.
template <typename T>
void triplet_loss_ref(const T* x, const int64_t* labels, int64_t n, int64_t d, const T* ref,
                      const int64_t* ref_labels, int64_t m, const int64_t* self_index, T margin,
                      TripletMining mining, bool squared, T* loss, T* count, T* dx, T* dref);
// Explicit (anchor, positive, negative) rows; da, dp, dn overwritten when non-null.
template <typename T>
void triplet_loss_explicit(const T* anchor, const T* positive, const T* negative, int64_t n,
                           int64_t d, T margin, T* loss, T* da, T* dp, T* dn);
}  // namespace cpu

namespace cuda {
template <typename T>
void triplet_loss(const T* x, const int64_t* labels, int64_t n, int64_t d, T margin,
                  TripletMining mining, bool squared, T* loss, T* dx, void* stream);
template <typename T>
void triplet_loss_ref(const T* x, const int64_t* labels, int64_t n, int64_t d, const T* ref,
                      const int64_t* ref_labels, int64_t m, const int64_t* self_index, T margin,
                      TripletMining mining, bool squared, T* loss, T* count, T* dx, T* dref,
                      void* stream);
template <typename T>
void triplet_loss_explicit(const T* anchor, const T* positive, const T* negative, int64_t n,
                           int64_t d, T margin, T* loss, T* da, T* dp, T* dn, void* stream);
}  // namespace cuda

}  // namespace faceops
