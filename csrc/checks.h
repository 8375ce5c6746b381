// Argument checks shared by the CPU entry points.  They throw
// std::invalid_argument naming the argument, which pybind11 turns into a
// Python ValueError and the Caffe layers into a CHECK failure.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "simd.h"

namespace faceops {
namespace detail {

// Work (in multiply-adds) below which a loop runs on the calling thread:
// waking the OpenMP team costs more than it saves, and on a loaded machine a
// descheduled worker can stall the whole region for a scheduler tick.
constexpr int64_t kParallelWork = int64_t(1) << 18;

inline void require(bool condition, const std::string& message) {
  if (!condition) throw std::invalid_argument(message);
}

inline void check_batch(const char* name, int64_t n, int64_t d) {
  require(n > 0, std::string(name) + ": empty batch (N = 0); expected at least one row");
  require(d > 0, std::string(name) + ": expected a feature dimension D > 0, got " +
                     std::to_string(d));
}

template <typename T>
void check_finite(const char* name, const T* values, int64_t count) {
  const int64_t chunks = (count + kParallelWork - 1) / kParallelWork;
  bool finite = true;
#pragma omp parallel for reduction(&& : finite) schedule(static) if (chunks > 4)
  for (int64_t c = 0; c < chunks; ++c)
    finite = finite && all_finite(values + c * kParallelWork, std::min(kParallelWork, count - c * kParallelWork));
  require(finite, std::string(name) + ": contains NaN or Inf; expected finite values");
}

// The pair loss's threshold, one value by address: present (the CUDA entries,
// whose theta is in device memory, check only this) and finite.
inline void check_theta_address(const void* theta) {
  require(theta != nullptr, "theta: expected the address of one value, got null");
}

template <typename T>
T check_theta(const T* theta) {
  check_theta_address(theta);
  require(std::isfinite(static_cast<double>(*theta)), "theta: expected a finite number, got " +
                                                         std::to_string(static_cast<double>(*theta)));
  return *theta;
}

// The rows of a (classes, d) matrix that a batch reads: O(n d) whatever the
// number of classes (labels must be in range).
template <typename T>
void check_rows_finite(const char* name, const T* rows, const int64_t* labels, int64_t n,
                       int64_t d) {
  bool finite = true;
  for (int64_t i = 0; i < n && finite; ++i) finite = all_finite(rows + labels[i] * d, d);
  require(finite, std::string(name) + ": the rows of the batch's labels contain NaN or Inf; "
                                      "expected finite values");
}

inline void check_labels_in_range(const char* name, const int64_t* labels, int64_t n,
                                  int64_t num_classes) {
  for (int64_t i = 0; i < n; ++i) {
    require(labels[i] >= 0 && labels[i] < num_classes,
            std::string(name) + ": label " + std::to_string(labels[i]) + " at index " +
                std::to_string(i) + " is out of range; expected 0 <= label < " +
                std::to_string(num_classes));
  }
}

// A reference set's self_index (nullable, n entries): -1 or a row of the m
// reference rows, whose label is the anchor's, each row at most one anchor's
// own copy.  Returns the number of anchors with an own copy.
inline int64_t check_self_index(const int64_t* self_index, int64_t n, int64_t m,
                                const int64_t* labels, const int64_t* ref_labels) {
  if (!self_index) return 0;
  std::vector<int64_t> owner(static_cast<size_t>(m), -1);
  int64_t copies = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = self_index[i];
    if (j == -1) continue;
    require(j >= 0 && j < m, "self_index: entry " + std::to_string(j) + " at index " +
                                 std::to_string(i) + " is out of range; expected -1 (no own copy) "
                                 "or a row of ref, 0 <= entry < " + std::to_string(m));
    require(ref_labels[j] == labels[i],
            "self_index: anchor " + std::to_string(i) + "'s own copy, ref row " +
                std::to_string(j) + ", has label " + std::to_string(ref_labels[j]) +
                " but labels[" + std::to_string(i) + "] = " + std::to_string(labels[i]) +
                "; an own copy carries its anchor's label");
    require(owner[j] < 0, "self_index: anchors " + std::to_string(owner[j]) + " and " +
                              std::to_string(i) + " both name ref row " + std::to_string(j) +
                              " as their own copy; a ref row is at most one anchor's copy");
    owner[j] = i;
    ++copies;
  }
  return copies;
}

// The margin softmax's hyperparameters (csrc/faceops/margin_softmax.h).
inline void check_margin(double scale, double m1, double m2, double m3) {
  require(std::isfinite(scale) && scale > 0,
          "s: expected a finite scale > 0, got " + std::to_string(scale));
  require(std::isfinite(m1) && m1 > 0,
          "m1: expected a finite multiplicative margin > 0, got " + std::to_string(m1));
  require(std::isfinite(m2), "m2: expected a finite additive angular margin");
  require(std::isfinite(m3), "m3: expected a finite additive cosine margin");
}

// Sums term(i) for i in [0, count) over threads with a static schedule and
// adds the per-thread partials in thread order: bitwise reproducible for a
// fixed thread count (a reduction clause combines in arrival order).
// `work` is the total cost, to stay on one thread for small inputs.
template <typename Term>
double reproducible_sum(int64_t count, int64_t work, Term term) {
  std::vector<double> partial(omp_get_max_threads(), 0.0);
#pragma omp parallel if (work > kParallelWork)
  {
    double sum = 0;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < count; ++i) sum += term(i);
    partial[omp_get_thread_num()] = sum;
  }
  return std::accumulate(partial.begin(), partial.end(), 0.0);
}

}  // namespace detail
}  // namespace faceops
