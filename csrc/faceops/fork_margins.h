// The per-element math of the Caffe forks' face layers, as each fork computes
// it, for faceops' compatibility layers (caffe_layers/): one definition for
// the CPU loops and the CUDA kernels.  Where a fork's behaviour departs from
// the exact derivative, the function says so; the layers document it.
//
//  - weight-normalised InnerProduct (inner_product_param { normalize: true },
//    happynear's caffe-windows and the forks built on it): each forward pass
//    rescales the weight rows in place to w / sqrt(||w||^2 + 1e-12).
//  - A-Softmax (wy1iu/sphereface's MarginInnerProduct; Liu et al., "SphereFace",
//    CVPR 2017, eq. 6-7): psi(theta) = (-1)^k cos(m theta) - 2k on
//    [k pi / m, (k + 1) pi / m], written as (-1)^k T_m(cos theta) - 2k with
//    the Chebyshev polynomial T_m, and the lambda annealing of the target logit.
//  - AM-Softmax's LabelSpecificAdd (happynear): cos + bias where cos > -bias,
//    with the bias annealed by iteration.
//  - xialuxi/arcface-caffe's CosinAddm (ArcFace with insightface's fallback),
//    and from its AdaCos/ directory NormL2 and AdaCosAddmScale's scale.
//  - the FocalLoss of xialuxi/arcface-caffe's prototxts
//    (zimenglan-sysu-512/Focal-Loss's layer, over a softmax).
//  - happynear's (caffe-windows) GlobalLSEMargin, AM-Softmax's "auto" net: a
//    margin estimated from the batch, and Flip (NormFace's mirror-face net).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "faceops/hostdevice.h"
#include "faceops/margin_softmax.h"

namespace faceops {
namespace fork {

// caffe-windows adds 1e-12 to the squared norm of each weight row.
constexpr double kWeightNormEpsilon = 1e-12;

// row <- row / sqrt(||row||^2 + 1e-12).  A zero row stays zero.
template <typename T>
FACEOPS_HD void normalize_weight_row(T* row, int64_t d) {
  write_normalized_row(row, 0, 1, d, epsilon_row_norm(row, d, T(kWeightNormEpsilon)), row);
}

// The gradient with respect to the stored weight row w of a function of
// w / ||w||, at a unit row: the radial part removed, diff - (w . diff) w.
template <typename T>
FACEOPS_HD void project_out_radial(T* diff, const T* unit_row, int64_t d) {
  T radial = T(0);
  for (int64_t k = 0; k < d; ++k) radial += unit_row[k] * diff[k];
  for (int64_t k = 0; k < d; ++k) diff[k] -= radial * unit_row[k];
}

// ---- A-Softmax (sphereface), m in {1, 2, 3, 4} ----

// k = floor(m theta / pi) from c = cos(theta), by the thresholds cos(j pi / m)
// (the fork's sign tests).  c outside [-1, 1] counts as the nearest end.
template <typename T>
FACEOPS_HD int sphereface_k(T c, int m) {
  switch (m) {
    case 2: return c < T(0) ? 1 : 0;
    case 3: return (c < T(0.5) ? 1 : 0) + (c < T(-0.5) ? 1 : 0);
    case 4: {
      const T half_sqrt2 = T(0.70710678118654752440);
      return (c < half_sqrt2 ? 1 : 0) + (c < T(0) ? 1 : 0) + (c < -half_sqrt2 ? 1 : 0);
    }
    default: return 0;
  }
}

// psi(c) = (-1)^k T_m(c) - 2k; *dpsi = (-1)^k T_m'(c).
template <typename T>
FACEOPS_HD T sphereface_psi(T c, int m, T* dpsi) {
  T chebyshev, derivative;
  const T c2 = c * c;
  switch (m) {
    case 2: chebyshev = T(2) * c2 - T(1); derivative = T(4) * c; break;
    case 3: chebyshev = (T(4) * c2 - T(3)) * c; derivative = T(12) * c2 - T(3); break;
    case 4:
      chebyshev = (T(8) * c2 - T(8)) * c2 + T(1);
      derivative = (T(32) * c2 - T(16)) * c;
      break;
    default: chebyshev = c; derivative = T(1); break;
  }
  const int k = sphereface_k(c, m);
  const T sign = (k % 2) ? T(-1) : T(1);
  *dpsi = sign * derivative;
  return sign * chebyshev - T(2 * k);
}

// The target logit's gradient with respect to the feature x, for
// f(x) = ||x|| psi(c), c = x . w / ||x||, ||w|| = 1:
//   df/dx = coeff_w w + coeff_x x,  coeff_w = psi'(c),
//   coeff_x = (psi(c) - c psi'(c)) / ||x||.
// as_fork: sphereface rescales (coeff_w, coeff_x) to unit length (CPU and GPU
// alike), which is not the derivative; a zero pair stays zero.
template <typename T>
FACEOPS_HD void sphereface_feature_coefficients(T c, T x_norm, int m, bool as_fork,
                                                T* coeff_w, T* coeff_x) {
  T dpsi;
  const T psi = sphereface_psi(c, m, &dpsi);
  *coeff_w = dpsi;
  *coeff_x = (psi - c * dpsi) / x_norm;
  if (as_fork) {
    const T length = math::sqrt(*coeff_w * *coeff_w + *coeff_x * *coeff_x);
    if (length > T(0)) {
      *coeff_w /= length;
      *coeff_x /= length;
    }
  }
}

// The layer's output: the target logit (||x|| psi(c) + lambda x . w) /
// (1 + lambda) from x . w and ||x|| > 0; c = x . w / ||x||.  The other logits
// are x . w.
template <typename T>
FACEOPS_HD T sphereface_target_logit(T inner_product, T x_norm, int m, T lambda) {
  T dpsi;
  const T psi = sphereface_psi(inner_product / x_norm, m, &dpsi);
  return (x_norm * psi + lambda * inner_product) / (T(1) + lambda);
}

// Backward of the target logit, given its top diff g: the feature's diff gets
// g_w w + g_x x beyond the g w that the plain inner product gives, and the
// weight row's diff g_weight x instead of g x.
//   g_w = g ((coeff_w + lambda) / (1 + lambda) - 1), g_x = g coeff_x / (1 + lambda),
//   g_weight = g (psi'(c) + lambda) / (1 + lambda), exactly;
// as_fork: the coefficients rescaled (sphereface_feature_coefficients) and
// g_weight = g (the fork differentiates the weight as a plain inner product).
template <typename T>
FACEOPS_HD void sphereface_target_backward(T g, T inner_product, T x_norm, int m, T lambda,
                                           bool as_fork, T* g_w, T* g_x, T* g_weight) {
  const T c = inner_product / x_norm;
  T coeff_w, coeff_x;
  sphereface_feature_coefficients(c, x_norm, m, as_fork, &coeff_w, &coeff_x);
  *g_w = g * ((coeff_w + lambda) / (T(1) + lambda) - T(1));
  *g_x = g * coeff_x / (T(1) + lambda);
  T dpsi;
  sphereface_psi(c, m, &dpsi);
  *g_weight = as_fork ? g : g * (dpsi + lambda) / (T(1) + lambda);
}

// lambda = max(base (1 + gamma iteration)^-power, lambda_min), with iteration
// the forward passes so far counting the current one (the fork increments
// before it computes).
template <typename T>
T sphereface_lambda(T base, T gamma, T power, T lambda_min, T iteration) {
  const T lambda = base * std::pow(T(1) + gamma * iteration, -power);
  return lambda > lambda_min ? lambda : lambda_min;
}

// ---- AM-Softmax's LabelSpecificAdd (happynear) ----

// bias = clamp(bias_base + (1 + bias_gamma iteration)^bias_power - 1,
//              bias_min, bias_max), iteration counted from 0.
template <typename T>
T annealed_bias(T bias_base, T bias_gamma, T bias_power, T bias_min, T bias_max, T iteration) {
  T bias = bias_base + std::pow(T(1) + bias_gamma * iteration, bias_power) - T(1);
  bias = bias > bias_min ? bias : bias_min;
  return bias < bias_max ? bias : bias_max;
}

// The target cosine plus bias (bias <= 0), only where c > -bias; elsewhere
// unchanged.  The derivative is 1 either way.
template <typename T>
FACEOPS_HD T label_specific_add(T c, T bias) {
  return c > -bias ? c + bias : c;
}

// ---- xialuxi/arcface-caffe's CosinAddm (CPU path) ----
// psi(c) = cos(theta + m) = c cos m - sin(theta) sin m while theta < pi - m,
// else c - m sin m (insightface's fallback).  c > 1 is taken as 1.

template <typename T>
FACEOPS_HD T cosin_addm_forward(T c, T m) {
  if (c > T(1)) c = T(1);
  if (c <= -math::cos(m)) return c - m * math::sin(m);
  return c * math::cos(m) -
         math::sqrt(T(1) - c * c) * math::sin(m);
}

// dpsi/dc as the fork back-propagates it: cos m + sin m c / sin(theta), and 1
// where it is not finite or not that branch: c >= 1 (including c > 1, which
// the forward pass clamped: the fork's gradient there is 1, not 0) and the
// fallback branch c <= cos(pi - m).  Near c = 1 it grows as 1 / sin(theta),
// as in the fork.
template <typename T>
FACEOPS_HD T cosin_addm_derivative(T c, T m) {
  if (c >= T(1) || c <= -math::cos(m)) return T(1);
  const T sin_theta = math::sqrt(T(1) - c * c);
  if (!(sin_theta > T(0))) return T(1);
  return math::cos(m) + math::sin(m) * c / sin_theta;
}

// ---- xialuxi/arcface-caffe's NormL2 (AdaCos/) ----
// y = x / sqrt(||x||^2 + 1e-7): a zero row stays zero, with a finite gradient.

constexpr double kNormL2Epsilon = 1e-7;

template <typename T>
FACEOPS_HD void norml2_row(const T* x, int64_t d, T* y) {
  write_normalized_row(x, 0, 1, d, epsilon_row_norm(x, d, T(kNormL2Epsilon)), y);
}

// The exact derivative of norml2_row (the fork's too):
// dx = (dy - (y . dy) y) / sqrt(||x||^2 + 1e-7).
template <typename T>
FACEOPS_HD void norml2_row_backward(const T* x, const T* y, const T* dy, int64_t d, T* dx) {
  const RowNorm<T> norm = epsilon_row_norm(x, d, T(kNormL2Epsilon));
  T radial = T(0);
  for (int64_t k = 0; k < d; ++k) radial += y[k] * dy[k];
  for (int64_t k = 0; k < d; ++k) dx[k] = divide_by_norm(dy[k] - radial * y[k], norm);
}

// ---- xialuxi/arcface-caffe's AdaCosAddmScale (AdaCos/) ----
// The target cosine gets CosinAddm's margin (cosin_addm_forward/derivative
// above: the fork's code is the same), then every logit is multiplied by a
// scale s recomputed at each forward pass from the previous one (AdaCos,
// Zhang et al., CVPR 2019, eq. 15-16), as the fork computes it:
//   s = log(B) / cos(min(theta_mean, pi / 4)),
//   B = 1/N sum_i (1 + sum_{j != y_i} exp(s_previous c_ij)),
// theta_mean the mean of arccos(c_ij) over all N x C cosines, targets
// included.  Two departures of the fork from the paper, kept here: the
// paper's theta_med is the median of the target angles, and its B_avg sums
// the non-target terms only (the fork's target term exp(0) = 1 adds 1 per
// sample).  The backward pass takes s as a constant, as the paper does.
// The fork takes arccos of the raw input, NaN (and s NaN for the rest of
// the run) once a cosine rounds above 1; here arccos sees it clamped to
// [-1, 1].  B is summed in double, shifted by its largest exponent.

// s before the first pass: sqrt(2) log(num_classes - 1) (eq. 11).
inline double adacos_initial_scale(double num_classes) {
  return std::sqrt(2.0) * std::log(num_classes - 1.0);
}

template <typename T>
double adacos_scale(const T* cosine, const int64_t* labels, int64_t n, int64_t num_classes,
                    double previous_scale) {
  const double pi = 3.14159265358979323846;
  double theta_sum = 0.0, largest = 0.0;  // largest exponent, >= 0 (the target's exp(0))
  for (int64_t i = 0; i < n * num_classes; ++i) {
    const double c = static_cast<double>(cosine[i]);
    theta_sum += std::acos(std::min(1.0, std::max(-1.0, c)));
    if (i % num_classes != labels[i / num_classes]) largest = std::max(largest, previous_scale * c);
  }
  double shifted_sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    shifted_sum += std::exp(-largest);  // the target's term exp(0)
    for (int64_t j = 0; j < num_classes; ++j) {
      if (j != labels[i])
        shifted_sum += std::exp(previous_scale * static_cast<double>(cosine[i * num_classes + j]) -
                                largest);
    }
  }
  const double log_b = largest + std::log(shifted_sum) - std::log(static_cast<double>(n));
  const double theta = std::min(theta_sum / static_cast<double>(n * num_classes), pi / 4);
  return log_b / std::cos(theta);
}

// ---- FocalLoss (zimenglan-sysu-512/Focal-Loss, as xialuxi's prototxts use it) ----
// Over p = softmax(x) along the class axis, for the target's probability p:
//   FL(p) = -alpha (1 - p)^gamma log(max(p, FLT_MIN))   (Lin et al., eq. 5)

constexpr double kFocalLogFloor = 1.17549435082228750797e-38;  // FLT_MIN, as the fork
constexpr double kFocalOneMinusFloor = 1e-10;                    // the fork's max(1 - p, 1e-10)

template <typename T>
FACEOPS_HD T focal_loss_term(T p, T alpha, T gamma) {
  const T floored = p > T(kFocalLogFloor) ? p : T(kFocalLogFloor);
  return -alpha * math::pow(T(1) - p, gamma) * math::log(floored);
}

// q = -p dFL/dp, so that dFL/dx_j = q (p - 1) for the target j and q p_j for
// the others:
//   q = alpha (1 - p)^gamma - gamma alpha (1 - p)^gamma p log(p) / max(1 - p, 1e-10),
// the fork's gradient.  The fork computes it as (alpha (1 - p)^gamma / p) p,
// NaN when p underflows to 0; the product is taken first here (its limit).
template <typename T>
FACEOPS_HD T focal_loss_logit_scale(T p, T alpha, T gamma) {
  const T power = alpha * math::pow(T(1) - p, gamma);
  const T floored = p > T(kFocalLogFloor) ? p : T(kFocalLogFloor);
  const T one_minus = T(1) - p > T(kFocalOneMinusFloor) ? T(1) - p : T(kFocalOneMinusFloor);
  return power - gamma * power * p * math::log(floored) / one_minus;
}

// ---- GlobalLSEMargin (happynear's caffe-windows, AM-Softmax's prototxt/auto) ----
// Per sample i with scale s_i (the layer's s, or the feature norm of its
// third bottom): LSE_i = (1/s_i) log sum_{j != y_i} exp(s_i x_ij), the soft
// maximum of the non-target logits, and the sample's margin x_iy - LSE_i.
// Summed in double, shifted by the largest non-target logit.  The fork shifts
// by max(-1, that logit) (the same value for cosines); that floored maximum
// is what it reports, so global_lse_max_negative returns it.
template <typename T>
T global_lse_max_negative(const T* row, int64_t dim, int64_t target) {
  T largest = T(-1);
  for (int64_t j = 0; j < dim; ++j)
    if (j != target && row[j] > largest) largest = row[j];
  return largest;
}

template <typename T>
double global_lse_negatives(const T* row, int64_t dim, int64_t target, double scale) {
  double largest = -HUGE_VAL;
  for (int64_t j = 0; j < dim; ++j)
    if (j != target) largest = std::max(largest, static_cast<double>(row[j]));
  double sum = 0.0;
  for (int64_t j = 0; j < dim; ++j)
    if (j != target) sum += std::exp(scale * (static_cast<double>(row[j]) - largest));
  return largest + std::log(sum) / scale;
}

// The batch's mean margin.
inline double global_lse_mean(const double* margins, int64_t n) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += margins[i];
  return sum / static_cast<double>(n);
}

// The fork's MeanShift: from mu, `loops` times mu = the mean of the margins
// within 0.1 of mu, stopping when mu moves by less than 0.001.  When no
// margin is within 0.1, mu restarts once from the mean of all margins, and
// that iteration is not counted.  Where the fork would restart forever (no
// margin within 0.1 of that mean either, or a NaN margin), the mean of all
// margins is returned.
inline double global_lse_mean_shift(const double* margins, int64_t n, double mu, int loops) {
  const double mean = global_lse_mean(margins, n);
  bool restarted = false;
  double last = mu;
  while (loops-- > 0) {
    double sum = 0.0;
    int64_t count = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (std::fabs(margins[i] - mu) < 0.1) {
        sum += margins[i];
        ++count;
      }
    }
    if (count == 0) {
      if (restarted) return mean;
      restarted = true;
      mu = last = mean;
      ++loops;
      continue;
    }
    mu = sum / static_cast<double>(count);
    if (std::fabs(last - mu) < 0.001) break;
    last = mu;
  }
  return mu;
}

// The margin after a forward pass, from the previous one m (0 before the
// first): m == 0 starts from the batch's mean-shift mode (20 iterations from
// the mean margin); otherwise m moves a tenth of the way to the mode found in
// one iteration from m.  A NaN mode leaves m unchanged.
inline double global_lse_margin_update(const double* margins, int64_t n, double m) {
  if (m == 0.0) {
    const double mode = global_lse_mean_shift(margins, n, global_lse_mean(margins, n), 20);
    return std::isnan(mode) ? m : mode;
  }
  const double mode = global_lse_mean_shift(margins, n, m, 1);
  return std::isnan(mode) ? m : 0.9 * m + 0.1 * mode;
}

// The layer's output is s_i times this: the cosine, less the margin m on the
// target class once m is positive.
template <typename T>
FACEOPS_HD T global_lse_cosine(T cosine, bool target, T m) {
  return target && m > T(0) ? cosine - m : cosine;
}

// ---- Flip (happynear's caffe-windows, NormFace's example_of_mirror_face) ----
// The element of an (N, C, H, W) blob that element `index` of the flipped
// blob comes from: w -> W - 1 - w with flip_width, h -> H - 1 - h with
// flip_height.  The map is its own inverse, so the backward pass uses it too.
FACEOPS_HD int64_t flip_source(int64_t index, int64_t height, int64_t width,
                              bool flip_height, bool flip_width) {
  const int64_t w = index % width;
  const int64_t h = (index / width) % height;
  const int64_t plane = index - h * width - w;
  return plane + (flip_height ? height - 1 - h : h) * width + (flip_width ? width - 1 - w : w);
}

}  // namespace fork
}  // namespace faceops
