#include "kernel_variant.h"  // first: sets the instruction-set variant's namespace
#include "faceops/center_loss.h"

#include <omp.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "checks.h"

namespace faceops {
namespace cpu {
namespace {

template <typename T>
void check_center_inputs(const T* x, const int64_t* labels, const T* centers, int64_t n,
                         int64_t d, int64_t num_classes) {
  detail::check_batch("x", n, d);
  detail::require(num_classes > 0, "centers: expected at least one class (C > 0)");
  detail::check_labels_in_range("labels", labels, n, num_classes);
  detail::check_finite("x", x, n * d);
  detail::check_rows_finite("centers", centers, labels, n, d);
}

// Rows grouped by class: rows_by_class[group_begin[g] .. group_begin[g + 1])
// are the batch rows of one class.  O(N log N), independent of num_classes.
struct ClassGroups {
  std::vector<int64_t> rows_by_class;
  std::vector<int64_t> group_begin;
};

inline ClassGroups group_rows_by_class(const int64_t* labels, int64_t n) {
  ClassGroups groups;
  groups.rows_by_class.resize(n);
  std::iota(groups.rows_by_class.begin(), groups.rows_by_class.end(), int64_t(0));
  std::stable_sort(groups.rows_by_class.begin(), groups.rows_by_class.end(),
                   [labels](int64_t a, int64_t b) { return labels[a] < labels[b]; });
  for (int64_t k = 0; k < n; ++k)
    if (k == 0 || labels[groups.rows_by_class[k]] != labels[groups.rows_by_class[k - 1]])
      groups.group_begin.push_back(k);
  groups.group_begin.push_back(n);
  return groups;
}

// Calls fn(class, direction_row) with class j's eq. 4 direction, for every
// class present in the batch, in parallel over classes.
template <typename T, typename Fn>
void for_each_class_direction(const T* x, const int64_t* labels, const T* centers, int64_t n,
                              int64_t d, Fn fn) {
  const ClassGroups groups = group_rows_by_class(labels, n);
  const int64_t class_count = static_cast<int64_t>(groups.group_begin.size()) - 1;
#pragma omp parallel if (n * d > detail::kParallelWork)
  {
    std::vector<T> direction(d);
#pragma omp for schedule(dynamic, 16)
    for (int64_t g = 0; g < class_count; ++g) {
      const int64_t begin = groups.group_begin[g], end = groups.group_begin[g + 1];
      const int64_t cls = labels[groups.rows_by_class[begin]];
      const T* center = centers + cls * d;
      const T inv_one_plus_count = T(1) / static_cast<T>(1 + end - begin);
      std::fill(direction.begin(), direction.end(), T(0));
      for (int64_t k = begin; k < end; ++k) {
        const T* x_row = x + groups.rows_by_class[k] * d;
        for (int64_t e = 0; e < d; ++e)
          direction[e] += center_update_term(x_row[e], center[e], inv_one_plus_count);
      }
      fn(cls, direction.data());
    }
  }
}

}  // namespace

template <typename T>
void center_loss(const T* x, const int64_t* labels, const T* centers, int64_t n, int64_t d,
                 int64_t num_classes, T* loss, T* dx, T* dcenters) {
  check_center_inputs(x, labels, centers, n, d, num_classes);
  const T inv_n = T(1) / static_cast<T>(n);
  // Each thread owns a slice of the feature columns, so the scatter-add into
  // dcenters is race-free under repeated labels without atomics; its partial
  // loss is added in thread order (reproducible).
  std::vector<double> partial(omp_get_max_threads(), 0.0);
#pragma omp parallel if (n * d > detail::kParallelWork)
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t slice = (d + threads - 1) / threads;
    const int64_t e0 = std::min(d, t * slice), e1 = std::min(d, e0 + slice);
    for (int64_t i = 0; i < n; ++i) {
      const T* x_row = x + i * d;
      const T* center = centers + labels[i] * d;
      T row_sum = 0;
      for (int64_t e = e0; e < e1; ++e) {
        const T g = center_loss_element(x_row[e], center[e], inv_n, &row_sum);
        if (dx) dx[i * d + e] = g;
        if (dcenters) dcenters[labels[i] * d + e] -= g;
      }
      partial[t] += row_sum;
    }
  }
  const double loss_sum = std::accumulate(partial.begin(), partial.end(), 0.0);
  *loss = static_cast<T>(loss_sum) * inv_n / T(2);
}

template <typename T>
void center_update_direction(const T* x, const int64_t* labels, const T* centers, int64_t n,
                             int64_t d, int64_t num_classes, T* direction) {
  check_center_inputs(x, labels, centers, n, d, num_classes);
  for_each_class_direction(x, labels, centers, n, d, [&](int64_t cls, const T* delta) {
    T* out = direction + cls * d;
    for (int64_t e = 0; e < d; ++e) out[e] += delta[e];
  });
}

template <typename T>
void center_update(const T* x, const int64_t* labels, T* centers, int64_t n, int64_t d,
                   int64_t num_classes, T alpha) {
  detail::require(std::isfinite(alpha), "alpha: expected a finite number");
  check_center_inputs(x, labels, centers, n, d, num_classes);
  for_each_class_direction(x, labels, centers, n, d, [&](int64_t cls, const T* delta) {
    T* center = centers + cls * d;
    for (int64_t e = 0; e < d; ++e) center[e] -= alpha * delta[e];
  });
}

#define FACEOPS_INSTANTIATE_CENTER(T)                                                          \
  template void center_loss<T>(const T*, const int64_t*, const T*, int64_t, int64_t, int64_t,  \
                               T*, T*, T*);                                                    \
  template void center_update_direction<T>(const T*, const int64_t*, const T*, int64_t,        \
                                           int64_t, int64_t, T*);                              \
  template void center_update<T>(const T*, const int64_t*, T*, int64_t, int64_t, int64_t, T);
FACEOPS_INSTANTIATE_CENTER(float)
FACEOPS_INSTANTIATE_CENTER(double)

}  // namespace cpu
}  // namespace faceops
