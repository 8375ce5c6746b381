// The math of happynear's NormFace layers and fields (Wang et al., "NormFace:
// L2 Hypersphere Embedding for Face Verification", ACM MM 2017), as its Caffe
// fork (happynear/caffe-windows) computes it, for faceops' compatibility
// layers (caffe_layers/): the Accuracy ranking with min_is_better, the
// Scale clamp, InnerDistance, GeneralContrastiveLoss and GeneralTripletLoss.  Where the fork
// departs from the exact derivative, the function says so.
#pragma once

#include <cmath>
#include <cstdint>

#include "faceops/margin_softmax.h"

namespace faceops {
namespace normface {

// Whether the true class is among the top_k best of n scores (stride apart):
// with min_is_better the smallest score is best.  A class ranks before the
// true class when its score is better, or equal with a smaller index (the
// fork's partial_sort of (score, index) pairs).
template <typename T>
bool in_top_k(const T* scores, int64_t n, int64_t stride, int64_t label, int64_t top_k,
              bool min_is_better) {
  const T target = scores[label * stride];
  int64_t ahead = 0;
  for (int64_t k = 0; k < n && ahead < top_k; ++k) {
    const T s = scores[k * stride];
    const bool better = min_is_better ? s < target : s > target;
    if (better || (s == target && k < label)) ++ahead;
  }
  return ahead < top_k;
}

// scale_param { min_value max_value }: v clamped to [lower, upper] where set.
template <typename T>
T clamp_scale(T v, bool has_lower, T lower, bool has_upper, T upper) {
  if (has_lower && v < lower) v = lower;
  if (has_upper && v > upper) v = upper;
  return v;
}

// ---- InnerDistance: top(m, n) = ||x_m - w_n||^2 ("L2") or ||x_m - w_n||_1 ----

enum class Distance { kL2, kL1 };

template <typename T>
T inner_distance(const T* x, const T* w, int64_t k, Distance type) {
  T sum = T(0);
  for (int64_t i = 0; i < k; ++i) {
    const T d = x[i] - w[i];
    sum += type == Distance::kL2 ? d * d : std::fabs(d);
  }
  return sum;
}

// InnerDistance's normalize: row <- row / sqrt(||row||^2 + 1e-6) (the fork's
// epsilon for this layer).
template <typename T>
void inner_distance_normalize_row(T* row, int64_t k) {
  write_normalized_row(row, 0, 1, k, epsilon_row_norm(row, k, T(1e-6)), row);
}

// d top(m, n) / d x_m[i] = 2 (x_m[i] - w_n[i]) (L2) or sign(x_m[i] - w_n[i])
// (L1, 0 at 0 as in the fork); the weight's is its negative.
template <typename T>
T inner_distance_slope(T x, T w, Distance type) {
  const T d = x - w;
  if (type == Distance::kL2) return T(2) * d;
  return T((T(0) < d) - (d < T(0)));
}

// ---- GeneralContrastiveLoss (NormFace sec. 4.2, "C-contrastive") ----
//
// Over a distance matrix d (num x dim) and labels y, the fork's forward puts
// into v (num x dim) the positive term pw min(thresh, max(0, d_iy - pm)) and
// the negative terms nw max(0, nm - d_ij) (nw exp(-d_ij) with
// exp_negative_weight) where d_ij < nm, and the loss is sum |v| / num.  Its
// quirks, kept here:
//  - positive_first: a row whose positive distance exceeds
//    positive_upper_bound loses its negative terms; Backward then gives the
//    positive the gradient pw even where its term is flat.
//  - max_positive_only keeps the positive term of one row only, the one with
//    the SMALLEST term (the fork's comparison), row 0 when all tie.
//  - max_negative_only keeps, per row, the negative with the largest term,
//    starting its search at class 0: for a row of label 0 that is the
//    positive itself, whose term a negative must exceed.
//  - Backward's positive gradient is pw for pm < d_iy < thresh (the forward
//    flattens at d_iy - pm = thresh instead: the same when pm = 0).
//  - square is not read.
template <typename T>
struct ContrastiveParams {
  T positive_margin, negative_margin, positive_weight, negative_weight;
  bool normalize_negative_set;
  T normalize_negative, positive_outlier_thresh;
  bool max_negative_only, max_positive_only, positive_first;
  T positive_upper_bound;
  bool exp_negative_weight;
};

// Returns the loss; v (num x dim), max_negative (num) are scratch the
// backward pass reads; *max_positive, *positive_sum, *negative_sum are the
// fork's bookkeeping (the second top: positive_sum / num and
// negative_sum / num / (dim - 1)).
template <typename T>
T general_contrastive_forward(const T* d, const int64_t* y, int64_t num, int64_t dim,
                              const ContrastiveParams<T>& p, T* v, int64_t* max_negative,
                              int64_t* max_positive, T* positive_sum, T* negative_sum) {
  *positive_sum = T(0);
  *negative_sum = T(0);
  *max_positive = 0;
  for (int64_t i = 0; i < num; ++i) {
    const T* row = d + i * dim;
    T* out = v + i * dim;
    max_negative[i] = 0;
    for (int64_t j = 0; j < dim; ++j) {
      if (j == y[i]) {
        T term = row[j] - p.positive_margin;
        if (term < T(0)) term = T(0);
        if (term > p.positive_outlier_thresh) term = p.positive_outlier_thresh;
        out[j] = term * p.positive_weight;
        *positive_sum += term;
        if (p.max_positive_only && out[j] < v[*max_positive * dim + y[*max_positive]]) {
          *max_positive = i;
        }
      } else if (row[j] < p.negative_margin) {
        out[j] = (p.exp_negative_weight ? std::exp(-row[j]) : p.negative_margin - row[j]) *
                 p.negative_weight;
        *negative_sum += p.negative_margin - row[j];
        if (p.max_negative_only && out[j] > out[max_negative[i]]) max_negative[i] = j;
      } else {
        out[j] = T(0);
      }
    }
    if (p.positive_first && row[y[i]] > p.positive_upper_bound) {
      for (int64_t j = 0; j < dim; ++j) {
        if (j != y[i]) out[j] = T(0);
      }
    }
  }
  T loss = T(0);
  for (int64_t i = 0; i < num; ++i) {
    for (int64_t j = 0; j < dim; ++j) {
      const bool dropped = j == y[i] ? (p.max_positive_only && i != *max_positive)
                                     : (p.max_negative_only && j != max_negative[i]);
      if (!dropped) loss += std::fabs(v[i * dim + j]);
    }
  }
  return loss / T(num);
}

// add_intra_mae: the running mean positive distance the fork adds to
// negative_margin, updated after each forward pass (capped at
// max_negative_margin).
template <typename T>
T intra_mae_update(T intra_mae, T positive_sum, int64_t num, T max_negative_margin) {
  const T updated = T(0.99) * intra_mae + T(0.01) * positive_sum / T(num);
  return updated > max_negative_margin ? max_negative_margin : updated;
}

// g (num x dim) = d loss / d d, times scale (the loss weight), as the fork's
// Backward computes it (see above).
template <typename T>
void general_contrastive_backward(const T* d, const int64_t* y, int64_t num, int64_t dim,
                                  const ContrastiveParams<T>& p, const int64_t* max_negative,
                                  int64_t max_positive, T scale, T* g) {
  T negative_sum = T(0);
  for (int64_t i = 0; i < num; ++i) {
    const T* row = d + i * dim;
    T* out = g + i * dim;
    if (p.positive_first && row[y[i]] > p.positive_upper_bound) {
      for (int64_t j = 0; j < dim; ++j) out[j] = j == y[i] ? p.positive_weight : T(0);
      continue;
    }
    for (int64_t j = 0; j < dim; ++j) {
      if (j == y[i]) {
        const bool active = row[j] > p.positive_margin && row[j] < p.positive_outlier_thresh &&
                            !(p.max_positive_only && i != max_positive);
        out[j] = active ? p.positive_weight : T(0);
      } else if (row[j] < p.negative_margin && !(p.max_negative_only && j != max_negative[i])) {
        const T weight = p.exp_negative_weight ? std::exp(-row[j]) * p.negative_weight
                                               : p.negative_weight;
        out[j] = -weight;
        negative_sum += weight;
      } else {
        out[j] = T(0);
      }
    }
  }
  if (p.normalize_negative_set) {
    // The negatives' mean gradient magnitude over normalize_negative.
    const T ratio = std::fabs(negative_sum) / p.normalize_negative / T(num);
    if (ratio > p.positive_weight) {
      for (int64_t i = 0; i < num; ++i) {
        for (int64_t j = 0; j < dim; ++j) {
          if (j != y[i]) g[i * dim + j] /= ratio;
        }
      }
    }
  }
  for (int64_t k = 0; k < num * dim; ++k) g[k] *= scale / T(num);
}

// ---- GeneralTripletLoss (NormFace's normalized_Euclidean_triplet) ----
//
// Over distances d (num x dim) to the class centres and labels y: each
// negative j != y gets the triplet hinge v_ij = nw max(0, d_iy + margin -
// d_ij) (the centre of the own class as positive, the other centres as
// negatives); loss = sum |v| / num.  hardest_only keeps, per row, the
// negative with the largest positive term (none when no hinge is active);
// positive_first drops a row's negatives when d_iy > positive_upper_bound.
// The fork's Backward, kept here, is not the derivative of that loss:
//  - the positive gets pw once per row (where the hinges give nw per active
//    negative), and with add_center_loss it gets pw even with no active
//    hinge, a centre-loss gradient for a term the loss does not contain;
//  - with hardest_only the kept negative gets -nw, except when its distance
//    is exactly 0, where it keeps its forward term;
//  - positive_first rows get pw on the positive and nothing else.
// With hardest_only, add_center_loss false, pw = nw and every row's hinge
// active (or none), it is the exact gradient.
template <typename T>
struct TripletParams {
  T margin;
  bool add_center_loss, hardest_only, positive_first;
  T positive_upper_bound, positive_weight, negative_weight;
};

// Returns the loss; v (num x dim) and hardest (num, -1 for none) are the
// backward pass's scratch; *positive_sum / *negative_sum are the sums of the
// positive and negative distances (the second top: / num, / num / (dim - 1)).
template <typename T>
T general_triplet_forward(const T* d, const int64_t* y, int64_t num, int64_t dim,
                          const TripletParams<T>& p, T* v, int64_t* hardest, T* positive_sum,
                          T* negative_sum) {
  *positive_sum = T(0);
  *negative_sum = T(0);
  T loss = T(0);
  for (int64_t i = 0; i < num; ++i) {
    const T* row = d + i * dim;
    T* out = v + i * dim;
    const T same = row[y[i]];
    *positive_sum += same;
    hardest[i] = -1;
    for (int64_t j = 0; j < dim; ++j) {
      if (j == y[i]) {
        out[j] = T(0);
        continue;
      }
      const T hinge = same + p.margin - row[j];
      out[j] = (hinge > T(0) ? hinge : T(0)) * p.negative_weight;
      *negative_sum += row[j];
      if (p.hardest_only && out[j] > T(0) && (hardest[i] < 0 || out[j] > out[hardest[i]])) {
        hardest[i] = j;
      }
    }
    const bool drop_all = p.positive_first && same > p.positive_upper_bound;
    for (int64_t j = 0; j < dim; ++j) {
      if (j == y[i]) continue;
      if (drop_all || (p.hardest_only && hardest[i] >= 0 && j != hardest[i])) out[j] = T(0);
      loss += std::fabs(out[j]);
    }
  }
  return loss / T(num);
}

// g (num x dim), the fork's gradient (see above) times scale / num.
template <typename T>
void general_triplet_backward(const T* d, const int64_t* y, int64_t num, int64_t dim,
                              const TripletParams<T>& p, const T* v, const int64_t* hardest,
                              T scale, T* g) {
  for (int64_t i = 0; i < num; ++i) {
    const T* row = d + i * dim;
    T* out = g + i * dim;
    const T same = row[y[i]];
    if (p.positive_first && same > p.positive_upper_bound) {
      for (int64_t j = 0; j < dim; ++j) out[j] = j == y[i] ? p.positive_weight : T(0);
      continue;
    }
    int64_t active = 0;
    if (p.hardest_only) {
      for (int64_t j = 0; j < dim; ++j) out[j] = v[i * dim + j];
      if (hardest[i] >= 0 && row[hardest[i]] != T(0)) {
        out[hardest[i]] = -p.negative_weight;
        ++active;
      }
    } else {
      out[y[i]] = T(0);
      for (int64_t j = 0; j < dim; ++j) {
        if (j == y[i]) continue;
        const bool hinge = same + p.margin > row[j];
        out[j] = hinge ? -p.negative_weight : T(0);
        active += hinge;
      }
    }
    if (p.add_center_loss || active > 0) out[y[i]] = p.positive_weight;
  }
  for (int64_t k = 0; k < num * dim; ++k) g[k] *= scale / T(num);
}

}  // namespace normface
}  // namespace faceops
