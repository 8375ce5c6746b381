#include "faceops/triplet_loss.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "checks.h"
#include "pairwise_tiles.h"

namespace faceops {
namespace cpu {
namespace {

// Every anchor's positives (rows with its label, itself excluded), sorted by
// (distance, index): anchor a owns entries [begin[a], begin[a + 1]).  State is
// O(sum over classes of K_c^2), O(N K) for P x K batches.
template <typename T>
struct AnchorPositives {
  std::vector<int64_t> begin;
  std::vector<int64_t> index;
  std::vector<T> distance;
  std::vector<int64_t> negative_count;  // rows with another label, per anchor

  int64_t count(int64_t a) const { return begin[a + 1] - begin[a]; }
  // Number of a's positives whose distance is < value (or <= value when `inclusive`):
  // a branch-free count for the few positives of P x K batches, else a binary search.
  int64_t rank(int64_t a, T value, bool inclusive) const {
    const T* first = distance.data() + begin[a];
    const T* last = distance.data() + begin[a + 1];
    if (last - first <= 16) {
      int64_t below = 0;
      for (const T* p = first; p < last; ++p) below += inclusive ? *p <= value : *p < value;
      return below;
    }
    return (inclusive ? std::upper_bound(first, last, value) : std::lower_bound(first, last, value)) -
           first;
  }
};

template <typename T>
AnchorPositives<T> find_positives(const detail::GramRows<T>& gram, const int64_t* labels,
                                  bool squared) {
  const int64_t n = gram.n;
  std::vector<int64_t> by_label(n);
  std::iota(by_label.begin(), by_label.end(), int64_t(0));
  std::stable_sort(by_label.begin(), by_label.end(),
                   [labels](int64_t a, int64_t b) { return labels[a] < labels[b]; });
  std::vector<int64_t> group_first(n), group_size(n);
  for (int64_t k = 0; k < n;) {
    int64_t end = k;
    while (end < n && labels[by_label[end]] == labels[by_label[k]]) ++end;
    for (int64_t m = k; m < end; ++m) {
      group_first[by_label[m]] = k;
      group_size[by_label[m]] = end - k;
    }
    k = end;
  }
  AnchorPositives<T> positives;
  positives.begin.assign(n + 1, 0);
  positives.negative_count.resize(n);
  for (int64_t a = 0; a < n; ++a) {
    positives.begin[a + 1] = positives.begin[a] + group_size[a] - 1;
    positives.negative_count[a] = n - group_size[a];
  }
  positives.index.resize(positives.begin[n]);
  positives.distance.resize(positives.begin[n]);
#pragma omp parallel if (positives.begin[n] * gram.d > detail::kParallelWork)
  {
    std::vector<std::pair<T, int64_t>> sorted;
#pragma omp for schedule(dynamic, 64)
    for (int64_t a = 0; a < n; ++a) {
      sorted.clear();
      for (int64_t m = group_first[a]; m < group_first[a] + group_size[a]; ++m) {
        const int64_t p = by_label[m];
        if (p == a) continue;
        sorted.emplace_back(
            distance_from_squared(gram.squared_distance(a, p), squared), p);
      }
      std::sort(sorted.begin(), sorted.end());
      for (size_t t = 0; t < sorted.size(); ++t) {
        positives.distance[positives.begin[a] + t] = sorted[t].first;
        positives.index[positives.begin[a] + t] = sorted[t].second;
      }
    }
  }
  return positives;
}

// Calls visit(a, j, d_aj) for every anchor a with positives and every negative j
// of it, j ascending for each anchor; anchors are split over threads by blocks,
// so visit may update anchor a's state without synchronisation.
template <typename T, typename Visit>
void for_each_negative(const detail::GramRows<T>& gram, const int64_t* labels, bool squared,
                       const AnchorPositives<T>& pos, Visit visit) {
  const int64_t n = gram.n;
  detail::for_each_anchor_block<T>(n, gram.d, [&](detail::DistanceTile<T>& tile, int64_t i0,
                                                  int64_t rows) {
    for (int64_t j0 = 0; j0 < n; j0 += detail::kTileCols) {
      const int64_t cols = std::min(detail::kTileCols, n - j0);
      tile.compute(gram, i0, rows, j0, cols);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t a = i0 + r;
        if (pos.count(a) == 0) continue;
        for (int64_t c = 0; c < cols; ++c)
          if (labels[j0 + c] != labels[a])
            visit(a, j0 + c, distance_from_squared(tile.distance(r, c), squared));
      }
    }
  });
}

// dx_i += coef (x_i - x_j) and dx_j += coef (x_j - x_i): the gradient of
// coef' * d_ij where coef = coef' * distance_gradient_scale(d_ij).
template <typename T>
void add_pair_gradient(const T* x, int64_t d, int64_t i, int64_t j, T coef, T* dx) {
  for (int64_t e = 0; e < d; ++e) {
    const T g = coef * (x[i * d + e] - x[j * d + e]);
    dx[i * d + e] += g;
    dx[j * d + e] -= g;
  }
}

// One selected triplet of the sparse miners and the weight of its hinge.
template <typename T>
struct ActiveTriplet {
  int64_t anchor, positive, negative;
  T anchor_positive, anchor_negative;
};

template <typename T>
void sparse_triplet_gradient(const T* x, int64_t d, bool squared,
                          const std::vector<ActiveTriplet<T>>& active, T weight, T* dx) {
  for (const ActiveTriplet<T>& t : active) {
    add_pair_gradient(x, d, t.anchor, t.positive,
                      weight * distance_gradient_scale(t.anchor_positive, squared), dx);
    add_pair_gradient(x, d, t.anchor, t.negative,
                      -weight * distance_gradient_scale(t.anchor_negative, squared), dx);
  }
}

// FaceNet semi-hard: per anchor, cand[t] holds the closest negative whose
// distance lies in (d_t, d_{t+1}] for the sorted positives d_0 <= d_1 <= ...;
// a suffix minimum then gives each positive its closest farther negative.
template <typename T>
T semihard(const detail::GramRows<T>& gram, const int64_t* labels, T margin,
           bool squared, const AnchorPositives<T>& pos, T* dx) {
  const T* x = gram.x;
  const int64_t n = gram.n, d = gram.d;
  std::vector<T> cand_distance(pos.begin[n]);
  std::vector<int64_t> cand_index(pos.begin[n], -1);
  std::vector<T> far_distance(n);
  std::vector<int64_t> far_index(n, -1);
  for_each_negative(gram, labels, squared, pos, [&](int64_t a, int64_t j, T v) {
    if (far_index[a] < 0 || v > far_distance[a]) {
      far_distance[a] = v;
      far_index[a] = j;
    }
    const int64_t below = pos.rank(a, v, false);
    if (below == 0) return;
    const int64_t slot = pos.begin[a] + below - 1;
    if (cand_index[slot] < 0 || v < cand_distance[slot]) {
      cand_distance[slot] = v;
      cand_index[slot] = j;
    }
  });
  double loss_sum = 0;
  int64_t pair_count = 0;
  std::vector<ActiveTriplet<T>> active;
  for (int64_t a = 0; a < n; ++a) {
    if (pos.negative_count[a] == 0) continue;
    T best_distance = 0;
    int64_t best_index = -1;
    for (int64_t s = pos.begin[a + 1] - 1; s >= pos.begin[a]; --s) {
      if (cand_index[s] >= 0 &&
          (best_index < 0 ||
           closer_candidate(cand_distance[s], cand_index[s], best_distance, best_index))) {
        best_distance = cand_distance[s];
        best_index = cand_index[s];
      }
      const bool semihard_found = best_index >= 0;
      const T an = semihard_found ? best_distance : far_distance[a];
      const int64_t negative = semihard_found ? best_index : far_index[a];
      const T hinge = triplet_hinge(pos.distance[s], an, margin);
      loss_sum += hinge;
      ++pair_count;
      if (hinge > T(0)) active.push_back({a, pos.index[s], negative, pos.distance[s], an});
    }
  }
  if (pair_count == 0) return T(0);
  if (dx) sparse_triplet_gradient(x, d, squared, active, T(1) / static_cast<T>(pair_count), dx);
  return static_cast<T>(loss_sum / static_cast<double>(pair_count));
}

// Batch-hard: the farthest positive and the closest negative of each anchor.
template <typename T>
T batch_hard(const detail::GramRows<T>& gram, const int64_t* labels, T margin,
             bool squared, const AnchorPositives<T>& pos, T* dx) {
  const T* x = gram.x;
  const int64_t n = gram.n, d = gram.d;
  std::vector<T> near_distance(n);
  std::vector<int64_t> near_index(n, -1);
  for_each_negative(gram, labels, squared, pos, [&](int64_t a, int64_t j, T v) {
    if (near_index[a] < 0 || v < near_distance[a]) {
      near_distance[a] = v;
      near_index[a] = j;
    }
  });
  double loss_sum = 0;
  int64_t anchor_count = 0;
  std::vector<ActiveTriplet<T>> active;
  for (int64_t a = 0; a < n; ++a) {
    if (pos.count(a) == 0 || near_index[a] < 0) continue;
    // Sorted by (distance, index): the first entry at the largest distance.
    int64_t far = pos.begin[a + 1] - 1;
    while (far > pos.begin[a] && pos.distance[far - 1] == pos.distance[far]) --far;
    const T hinge = triplet_hinge(pos.distance[far], near_distance[a], margin);
    loss_sum += hinge;
    ++anchor_count;
    if (hinge > T(0))
      active.push_back({a, pos.index[far], near_index[a], pos.distance[far], near_distance[a]});
  }
  if (anchor_count == 0) return T(0);
  if (dx) sparse_triplet_gradient(x, d, squared, active, T(1) / static_cast<T>(anchor_count), dx);
  return static_cast<T>(loss_sum / static_cast<double>(anchor_count));
}

// Batch-all.  For an anchor with sorted positives d_0 <= ... and a negative at
// distance v, the active positives are those with d_t > v - margin: a suffix
// found by binary search.  Pass 1 sums the hinges and counts, per positive,
// its active negatives; pass 2 recomputes the tiles for the negatives' dense
// gradient.  O(N^2 log K) beyond the distances.
template <typename T>
T batch_all(const detail::GramRows<T>& gram, const int64_t* labels, T margin,
            bool squared, const AnchorPositives<T>& pos, T* dx) {
  const T* x = gram.x;
  const int64_t n = gram.n, d = gram.d;
  const int64_t total_positives = pos.begin[n];
  std::vector<double> suffix_sum(total_positives + n);  // anchor a: [begin[a] + a, begin[a+1] + a]
  std::vector<int64_t> first_active(total_positives + n, 0);
  double triplet_count = 0;
  for (int64_t a = 0; a < n; ++a) {
    const int64_t base = pos.begin[a] + a;
    suffix_sum[base + pos.count(a)] = 0;
    for (int64_t t = pos.count(a) - 1; t >= 0; --t)
      suffix_sum[base + t] = suffix_sum[base + t + 1] + pos.distance[pos.begin[a] + t];
    triplet_count += static_cast<double>(pos.count(a)) * static_cast<double>(pos.negative_count[a]);
  }
  if (triplet_count == 0) return T(0);
  std::vector<double> anchor_loss(n, 0.0);
  for_each_negative(gram, labels, squared, pos, [&](int64_t a, int64_t, T v) {
    const int64_t count = pos.count(a), base = pos.begin[a] + a;
    const T threshold = v - margin;
    const int64_t s = pos.rank(a, threshold, true);
    anchor_loss[a] += suffix_sum[base + s] - static_cast<double>(count - s) * threshold;
    ++first_active[base + s];
  });
  const double loss_sum = std::accumulate(anchor_loss.begin(), anchor_loss.end(), 0.0);
  if (!dx) return static_cast<T>(loss_sum / triplet_count);

  const T weight = static_cast<T>(1.0 / triplet_count);
  // The negatives' coefficients are symmetric: C_ij sums anchor i's and anchor j's terms.
  detail::for_each_symmetric_tile<T>(n, d, dx, [&](detail::DistanceTile<T>& tile, int64_t i0,
                                                   int64_t rows, int64_t j0, int64_t cols,
                                                   T* own_dx) {
    tile.compute(gram, i0, rows, j0, cols);
    T* coef = tile.coefficients();
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r;
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t j = j0 + c;
        T value = 0;
        if (labels[i] != labels[j]) {
          const T v = distance_from_squared(tile.distance(r, c), squared);
          const int64_t active_for_i = pos.count(i) - pos.rank(i, v - margin, true);
          const int64_t active_for_j = pos.count(j) - pos.rank(j, v - margin, true);
          value = -weight * static_cast<T>(active_for_i + active_for_j) *
                  distance_gradient_scale(v, squared);
        }
        coef[r * detail::kTileCols + c] = value;
      }
    }
    tile.accumulate_gradient(x, i0, rows, j0, cols, own_dx, i0 != j0);
  });
  for (int64_t a = 0; a < n; ++a) {
    int64_t active_negatives = 0;
    for (int64_t t = 0; t < pos.count(a); ++t) {
      active_negatives += first_active[pos.begin[a] + a + t];
      const T dap = pos.distance[pos.begin[a] + t];
      add_pair_gradient(x, d, a, pos.index[pos.begin[a] + t],
                        weight * static_cast<T>(active_negatives) *
                            distance_gradient_scale(dap, squared),
                        dx);
    }
  }
  return static_cast<T>(loss_sum / triplet_count);
}

}  // namespace

template <typename T>
void triplet_loss(const T* x, const int64_t* labels, int64_t n, int64_t d, T margin,
                  TripletMining mining, bool squared, T* loss, T* dx) {
  detail::check_batch("x", n, d);
  detail::check_finite("x", x, n * d);
  const detail::GramRows<T> gram(x, n, d);
  const AnchorPositives<T> positives = find_positives(gram, labels, squared);
  if (dx) std::fill(dx, dx + n * d, T(0));
  switch (mining) {
    case TripletMining::kSemihard:
      *loss = semihard(gram, labels, margin, squared, positives, dx);
      return;
    case TripletMining::kHard:
      *loss = batch_hard(gram, labels, margin, squared, positives, dx);
      return;
    case TripletMining::kAll:
      *loss = batch_all(gram, labels, margin, squared, positives, dx);
      return;
  }
  throw std::invalid_argument("mining: expected semihard, hard or all");
}

template <typename T>
void triplet_loss_explicit(const T* anchor, const T* positive, const T* negative, int64_t n,
                           int64_t d, T margin, T* loss, T* da, T* dp, T* dn) {
  detail::check_batch("anchor", n, d);
  detail::check_finite("anchor", anchor, n * d);
  detail::check_finite("positive", positive, n * d);
  detail::check_finite("negative", negative, n * d);
  const T weight = T(1) / static_cast<T>(2 * n);
  const T scale = weight * distance_gradient_scale(T(0), true);
  const double loss_sum = detail::reproducible_sum(n, n * d, [&](int64_t i) {
    const T *a = anchor + i * d, *p = positive + i * d, *q = negative + i * d;
    T dap = 0, dan = 0;
    for (int64_t e = 0; e < d; ++e) {
      dap += (a[e] - p[e]) * (a[e] - p[e]);
      dan += (a[e] - q[e]) * (a[e] - q[e]);
    }
    const T hinge = triplet_hinge(dap, dan, margin);
    const T g = hinge > T(0) ? scale : T(0);
    for (int64_t e = 0; e < d; ++e) {
      if (da) da[i * d + e] = g * (q[e] - p[e]);
      if (dp) dp[i * d + e] = g * (p[e] - a[e]);
      if (dn) dn[i * d + e] = g * (a[e] - q[e]);
    }
    return static_cast<double>(hinge);
  });
  *loss = static_cast<T>(loss_sum) * weight;
}

#define FACEOPS_INSTANTIATE_TRIPLET(T)                                                          \
  template void triplet_loss<T>(const T*, const int64_t*, int64_t, int64_t, T, TripletMining,   \
                                bool, T*, T*);                                                  \
  template void triplet_loss_explicit<T>(const T*, const T*, const T*, int64_t, int64_t, T, T*, \
                                         T*, T*, T*);
FACEOPS_INSTANTIATE_TRIPLET(float)
FACEOPS_INSTANTIATE_TRIPLET(double)

}  // namespace cpu
}  // namespace faceops
