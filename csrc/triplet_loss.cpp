#include "kernel_variant.h"  // first: sets the instruction-set variant's namespace
#include "faceops/triplet_loss.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "checks.h"
#include "pairwise_tiles.h"

namespace faceops {
namespace cpu {
namespace {

using detail::broadcast;
using detail::kTileRows;  // the symmetric tiles are kTileRows x kTileRows

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


// The SIMD loops of the miners run over rows of kTileRows distances.
template <typename T>
using Vector = typename detail::Simd<T>::Vector;
template <typename T>
constexpr int64_t kLanes = detail::Simd<T>::kLanes;
static_assert(kTileRows % kLanes<double> == 0 && kTileRows % kLanes<float> == 0,
              "a tile row is whole SIMD vectors");

// One kTileRows x kTileRows tile of anchor-to-negative distances and, for a
// tile off the diagonal, its transpose (the same pairs with the columns as
// anchors).  Entries that are not negatives (same label, beyond the batch)
// are NaN: every comparison of the miners is false on them, so their SIMD
// loops need no label mask.
template <typename T>
class NegativeTile {
 public:
  NegativeTile()
      : by_row_(detail::thread_scratch<T, detail::kNegativeTileByRow>(kTileRows * kTileRows)),
        by_column_(detail::thread_scratch<T, detail::kNegativeTileByColumn>(kTileRows * kTileRows)) {}

  void compute(detail::DistanceTile<T>& tile, const detail::GramRows<T>& gram,
               const int64_t* labels, bool squared, int64_t i0, int64_t rows, int64_t j0,
               int64_t cols) {
    tile.compute(gram, i0, rows, j0, cols);
    keep_negatives(tile, labels + i0, rows, labels + j0, cols, squared);
    if (i0 == j0) return;
    for (int64_t r = 0; r < kTileRows; ++r)
      for (int64_t c = 0; c < kTileRows; ++c)
        by_column_[c * kTileRows + r] = by_row_[r * kTileRows + c];
  }

  // Anchors i0 + r of `anchors` against candidates j0 + c of a reference set
  // (rows only: the candidates are no anchors).  An anchor's own copy carries
  // its label (check_self_index), so it is no negative.
  void compute(detail::DistanceTile<T>& tile, const detail::GramRows<T>& anchors,
               const int64_t* labels, const detail::GramRows<T>& candidates,
               const int64_t* candidate_labels, bool squared, int64_t i0, int64_t rows, int64_t j0,
               int64_t cols) {
    tile.compute(anchors, i0, rows, candidates, j0, cols);
    keep_negatives(tile, labels + i0, rows, candidate_labels + j0, cols, squared);
  }

  // Distances from anchor i0 + r to rows j0, j0 + 1, ...
  const T* row(int64_t r) const { return by_row_ + r * kTileRows; }
  // Distances from anchor j0 + c to rows i0, i0 + 1, ... (off-diagonal tiles).
  const T* column(int64_t c) const { return by_column_ + c * kTileRows; }

 private:
  void keep_negatives(const detail::DistanceTile<T>& tile, const int64_t* row_labels, int64_t rows,
                      const int64_t* column_labels, int64_t cols, bool squared) {
    const T absent = std::numeric_limits<T>::quiet_NaN();
    std::fill_n(by_row_, kTileRows * kTileRows, absent);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t label = row_labels[r];
      T* out = by_row_ + r * kTileRows;
      for (int64_t c = 0; c < cols; ++c)
        out[c] = column_labels[c] != label ? distance_from_squared(tile.distance_row(r)[c], squared)
                                           : absent;
    }
  }

  T* by_row_;  // the calling thread's scratch (scratch.h)
  T* by_column_;
};

// Calls tile_fn(tile, negatives, i0, rows, j0, cols, own_state, own_dx) for
// every symmetric tile (j0 >= i0), in parallel; own_state is the calling thread's
// element of `states` (merged by the caller), own_dx as in
// for_each_symmetric_tile.  Each pair of rows is computed once: half the
// distance work of scanning every anchor's row.
template <typename T, typename State, typename TileFn>
void for_each_negative_tile(const detail::GramRows<T>& gram, const int64_t* labels, bool squared,
                            std::vector<State>& states, T* dx, TileFn tile_fn) {
  detail::for_each_symmetric_tile<T>(
      gram.n, gram.d, dx,
      [&](detail::DistanceTile<T>& tile, int64_t i0, int64_t rows, int64_t j0, int64_t cols,
          T* own_dx) {
        NegativeTile<T> negatives;  // this thread's scratch
        negatives.compute(tile, gram, labels, squared, i0, rows, j0, cols);
        tile_fn(tile, negatives, i0, rows, j0, cols, states[omp_get_thread_num()], own_dx);
      });
}

// Calls visit(anchor, distances, first, by_column) for every anchor of a
// tile, with the tile's distances from it to rows first, first + 1, ...;
// by_column: the anchor is one of the tile's columns.
template <typename T, typename Visit>
void for_each_tile_anchor(const NegativeTile<T>& negatives, int64_t i0, int64_t rows, int64_t j0,
                          int64_t cols, Visit visit) {
  for (int64_t r = 0; r < rows; ++r) visit(i0 + r, negatives.row(r), j0, false);
  if (i0 != j0)
    for (int64_t c = 0; c < cols; ++c) visit(j0 + c, negatives.column(c), i0, true);
}

// The miners' decisions within rounding.  A pair's distance reaches the miners
// by two code paths, the tiles' Gram form (GEMM dot products) and the
// positives' (a SIMD dot product), which differ by rounding: an exact
// duplicate (a negative equal to a positive, two equal candidates) could be
// split by an ulp against the header's rules.  Every comparison whose outcome
// that rounding could flip (a candidate against the positive's distance, two
// candidates for the lowest (distance, index), a hinge against 0) is decided on
// exact(): the squared differences summed directly, one value per pair
// whichever role it plays.  Elsewhere the computed values decide, and agree
// with it.  The Gram form's error is at most about 2 d epsilon (||x_a||^2 +
// ||x_j||^2) (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd
// ed., eq. 3.5, for each dot product), the direct sum's d epsilon of a value
// at most twice as large; kappa = (4 d + 8) epsilon covers both.
template <typename T>
class TieBreaker {
 public:
  TieBreaker(const detail::GramRows<T>& gram, bool squared) : TieBreaker(gram, gram, squared) {}

  // Anchors are rows of `anchors`, candidates rows of `candidates` (a reference set).
  TieBreaker(const detail::GramRows<T>& anchors, const detail::GramRows<T>& candidates, bool squared)
      : anchors_(anchors), candidates_(candidates), squared_(squared), error_(anchors.n),
        root_(anchors.n) {
    const T kappa = static_cast<T>(4 * anchors.d + 8) * std::numeric_limits<T>::epsilon();
    const T largest_norm = *std::max_element(candidates.norms, candidates.norms + candidates.n);
    for (int64_t a = 0; a < anchors.n; ++a) {
      error_[a] = kappa * (anchors.norms[a] + largest_norm);
      root_[a] = std::sqrt(error_[a]);
    }
  }

  // The distance of anchor i and candidate j from their differences.
  T exact(int64_t i, int64_t j) const {
    if (&anchors_ == &candidates_ && i == j) return T(0);
    const int64_t d = anchors_.d;
    return distance_from_squared(
        detail::squared_difference(anchors_.x + i * d, candidates_.x + j * d, d), squared_);
  }

  // Bound on the rounding of a squared distance from anchor a.
  T squared_error(int64_t a) const { return error_[a]; }

  // Bound on |computed - exact| of a distance `value` from anchor a: e for
  // squared distances, min(sqrt(e), e / value) for their roots (|sqrt(u) -
  // sqrt(v)| <= |u - v| / sqrt(u)), plus the root's own rounding.
  T window(int64_t a, T value) const {
    const T e = error_[a];
    if (squared_) return e;
    const T root = root_[a];
    return (value * root > e ? e / value : root) + T(4) * std::numeric_limits<T>::epsilon() * value;
  }

  // Half-width of the band around `value` outside which every other distance
  // from a compares with it as its exact value does (window(value) plus the
  // largest window of a distance in the band).
  T band(int64_t a, T value) const {
    const T own = window(a, value);
    if (squared_) return own + error_[a];
    const T root = root_[a];
    return value > T(2) * (own + root) ? own + window(a, value / T(2)) : own + root;
  }

  // (u, i) comes before (v, j) in (exact distance, index) order; u, v are the
  // computed distances from a to i and j.
  bool nearer(int64_t a, T u, int64_t i, T v, int64_t j) const {
    const T gap = window(a, u) + window(a, v);
    if (u + gap < v) return true;
    if (v + gap < u) return false;
    return closer_candidate(exact(a, i), i, exact(a, j), j);
  }
  // The same in (farther first, then lower index) order.
  bool farther(int64_t a, T u, int64_t i, T v, int64_t j) const {
    const T gap = window(a, u) + window(a, v);
    if (u > v + gap) return true;
    if (u + gap < v) return false;
    const T exact_u = exact(a, i), exact_v = exact(a, j);
    return exact_u > exact_v || (exact_u == exact_v && i < j);
  }
  // exact d_aj > exact d_ap.
  bool strictly_farther(int64_t a, T u, int64_t j, T v, int64_t p) const {
    const T gap = window(a, u) + window(a, v);
    if (u > v + gap) return true;
    if (u + gap < v) return false;
    return exact(a, j) > exact(a, p);
  }
  // max(0, d_ap - d_an + margin), on the exact distances when the computed
  // ones leave its sign to rounding.
  T hinge(int64_t a, int64_t p, T anchor_positive, int64_t q, T anchor_negative, T margin) const {
    const T h = anchor_positive - anchor_negative + margin;
    if (std::abs(h) > window(a, anchor_positive) + window(a, anchor_negative))
      return h > T(0) ? h : T(0);
    return triplet_hinge(exact(a, p), exact(a, q), margin);
  }

  bool squared() const { return squared_; }

 private:
  const detail::GramRows<T>& anchors_;
  const detail::GramRows<T>& candidates_;
  bool squared_;
  std::vector<T> error_, root_;  // per anchor: squared-distance error bound, its root
};

// A negative chosen for an anchor (or an (anchor, positive) pair); index -1: none yet.
template <typename T>
struct Choice {
  T distance;
  int64_t index;
  T reach;  // distance plus (nearer) or minus (farther) its TieBreaker::band

  // Ties (in exact distance) go to the lowest index, whatever order threads
  // and tiles offer them in.
  void offer_nearer(const TieBreaker<T>& ties, int64_t anchor, T candidate, int64_t candidate_index) {
    if (index < 0 || ties.nearer(anchor, candidate, candidate_index, distance, index)) {
      distance = candidate;
      index = candidate_index;
      reach = candidate + ties.band(anchor, candidate);
    }
  }
  void offer_farther(const TieBreaker<T>& ties, int64_t anchor, T candidate, int64_t candidate_index) {
    if (index < 0 || ties.farther(anchor, candidate, candidate_index, distance, index)) {
      distance = candidate;
      index = candidate_index;
      reach = candidate - ties.band(anchor, candidate);
    }
  }
};

template <typename T>
int64_t first_index_of(const T* distances, T value) {
  int64_t c = 0;
  while (distances[c] != value) ++c;
  return c;
}

// A positive's distance as a threshold: entries in [lowest, above] are within
// rounding of it (TieBreaker::band); for batch-hard there is none.
template <typename T>
struct Threshold {
  Threshold(const TieBreaker<T>& ties, int64_t a, int64_t p_, T distance_)
      : p(p_), distance(distance_), lowest(distance_ - ties.band(a, distance_)),
        above(distance_ + ties.band(a, distance_)) {}
  Threshold() : p(-1), distance(0), lowest(-std::numeric_limits<T>::infinity()), above(lowest) {}
  int64_t p;
  T distance, lowest, above;
};

// Offers `choice` the nearest entry of anchor a's tile row farther than the
// threshold's positive (every entry for the empty threshold).  A first SIMD
// pass only looks for an entry that could win: once the choice is close,
// nearly every row has none and costs no horizontal reduction.  Entries within
// rounding of the threshold or of the row's nearest are offered one by one.
template <typename T>
void offer_nearest_farther(const T* distances, int64_t first, const TieBreaker<T>& ties, int64_t a,
                           const Threshold<T>& threshold, Choice<T>& choice) {
  constexpr T kInfinity = std::numeric_limits<T>::infinity();
  const int64_t p = threshold.p;
  const T lowest_s = threshold.lowest, above_s = threshold.above;
  const Vector<T> lowest = broadcast(lowest_s), above = broadcast(above_s);
  const Vector<T> bound = broadcast(choice.index < 0 ? kInfinity : choice.reach);
  decltype(above < bound) could_win{}, undecided{};
  for (int64_t c = 0; c < kTileRows; c += kLanes<T>) {
    const Vector<T> v = detail::Simd<T>::load(distances + c);
    could_win |= v >= lowest && v <= bound;
  }
  if (!detail::any_lane(could_win)) return;
  Vector<T> nearest = broadcast(kInfinity);
  for (int64_t c = 0; c < kTileRows; c += kLanes<T>) {
    const Vector<T> v = detail::Simd<T>::load(distances + c);
    nearest = v > above && v < nearest ? v : nearest;
    if (p >= 0) undecided |= v >= lowest && v <= above;
  }
  if (detail::any_lane(undecided))
    for (int64_t c = 0; c < kTileRows; ++c) {
      const T v = distances[c];
      if (v >= lowest_s && v <= above_s && ties.strictly_farther(a, v, first + c, threshold.distance, p))
        choice.offer_nearer(ties, a, v, first + c);
    }
  const T distance = detail::fold_lanes<T>(nearest, [](T x, T y) { return std::min(x, y); });
  if (distance == kInfinity) return;
  // The row's entries within rounding of its nearest: usually the nearest alone.
  const Vector<T> last = broadcast(distance + ties.band(a, distance));
  Vector<T> crowd{};
  for (int64_t c = 0; c < kTileRows; c += kLanes<T>) {
    const Vector<T> v = detail::Simd<T>::load(distances + c);
    crowd += v > above && v <= last ? broadcast(T(1)) : Vector<T>{};
  }
  if (detail::fold_lanes<T>(crowd, [](T x, T y) { return x + y; }) == T(1)) {
    choice.offer_nearer(ties, a, distance, first + first_index_of(distances, distance));
    return;
  }
  for (int64_t c = 0; c < kTileRows; ++c) {
    const T v = distances[c];
    if (v > above_s && v <= last[0]) choice.offer_nearer(ties, a, v, first + c);
  }
}

// The same for the farthest entry of a tile row (NaN entries are not offered).
template <typename T>
void offer_farthest(const T* distances, int64_t first, const TieBreaker<T>& ties, int64_t a,
                    Choice<T>& choice) {
  const Vector<T> bound = broadcast(choice.index < 0 ? -std::numeric_limits<T>::infinity() : choice.reach);
  decltype(bound < bound) could_win{};
  for (int64_t c = 0; c < kTileRows; c += kLanes<T>)
    could_win |= detail::Simd<T>::load(distances + c) >= bound;
  if (!detail::any_lane(could_win)) return;
  Vector<T> farthest = broadcast(-std::numeric_limits<T>::infinity());
  for (int64_t c = 0; c < kTileRows; c += kLanes<T>) {
    const Vector<T> v = detail::Simd<T>::load(distances + c);
    farthest = v > farthest ? v : farthest;
  }
  const T distance = detail::fold_lanes<T>(farthest, [](T x, T y) { return std::max(x, y); });
  const T lowest = distance - ties.band(a, distance);
  for (int64_t c = 0; c < kTileRows; ++c)
    if (distances[c] >= lowest) choice.offer_farther(ties, a, distances[c], first + c);
}

// da_i += coef (a_i - b_j) and db_j += coef (b_j - a_i): the gradient of
// coef' * d_ij where coef = coef' * distance_gradient_scale(d_ij), for row i
// of a and row j of b (a = b, da = db within one batch).
template <typename T>
void add_pair_gradient(const T* a, int64_t i, const T* b, int64_t j, int64_t d, T coef, T* da,
                       T* db) {
  if (da && db) {
    for (int64_t e = 0; e < d; ++e) {
      const T g = coef * (a[i * d + e] - b[j * d + e]);
      da[i * d + e] += g;
      db[j * d + e] -= g;
    }
  } else if (da) {
    for (int64_t e = 0; e < d; ++e) da[i * d + e] += coef * (a[i * d + e] - b[j * d + e]);
  } else if (db) {
    for (int64_t e = 0; e < d; ++e) db[j * d + e] -= coef * (a[i * d + e] - b[j * d + e]);
  }
}

template <typename T>
void add_pair_gradient(const T* x, int64_t d, int64_t i, int64_t j, T coef, T* dx) {
  add_pair_gradient(x, i, x, j, d, coef, dx, dx);
}

// One selected triplet of the sparse miners and the weight of its hinge.
template <typename T>
struct ActiveTriplet {
  int64_t anchor, positive, negative;
  T anchor_positive, anchor_negative;
};

// Anchors are rows of x (gradient dx), positives and negatives rows of
// candidates (gradient dcandidates; x and dx themselves within one batch);
// a null gradient is skipped.
template <typename T>
void sparse_triplet_gradient(const T* x, const T* candidates, int64_t d, bool squared,
                             const std::vector<ActiveTriplet<T>>& active, T weight, T* dx,
                             T* dcandidates) {
  for (const ActiveTriplet<T>& t : active) {
    add_pair_gradient(x, t.anchor, candidates, t.positive, d,
                      weight * distance_gradient_scale(t.anchor_positive, squared), dx, dcandidates);
    add_pair_gradient(x, t.anchor, candidates, t.negative, d,
                      -weight * distance_gradient_scale(t.anchor_negative, squared), dx, dcandidates);
  }
}

// The mean of the loss over `count` terms (their sum loss_sum) of the active
// triplets, and its gradient (dx, dcandidates as in sparse_triplet_gradient).
template <typename T>
T active_triplet_mean(const T* x, const T* candidates, int64_t d, bool squared,
                      const std::vector<ActiveTriplet<T>>& active, double loss_sum, int64_t count, T* dx,
                      T* dcandidates) {
  if (count == 0) return T(0);
  if (dx || dcandidates)
    sparse_triplet_gradient(x, candidates, d, squared, active, T(1) / static_cast<T>(count), dx, dcandidates);
  return static_cast<T>(loss_sum / static_cast<double>(count));
}

// FaceNet semi-hard: per (anchor, positive) the nearest negative farther than
// the positive, and per anchor the farthest negative (the fallback).
template <typename T>
struct SemihardChoices {
  explicit SemihardChoices(const AnchorPositives<T>& pos)
      : nearest_farther(pos.index.size(), Choice<T>{0, -1, 0}),
        farthest(pos.negative_count.size(), Choice<T>{0, -1, 0}) {}
  std::vector<Choice<T>> nearest_farther, farthest;
};

template <typename T>
std::vector<Threshold<T>> semihard_thresholds(const TieBreaker<T>& ties, const AnchorPositives<T>& pos) {
  std::vector<Threshold<T>> thresholds(pos.index.size());
  for (int64_t a = 0; a + 1 < static_cast<int64_t>(pos.begin.size()); ++a)
    for (int64_t s = pos.begin[a]; s < pos.begin[a + 1]; ++s)
      thresholds[s] = Threshold<T>(ties, a, pos.index[s], pos.distance[s]);
  return thresholds;
}

// Anchor a's candidates among one tile row (distances to candidates first, first + 1, ...).
template <typename T>
void offer_semihard(const T* row, int64_t first, const TieBreaker<T>& ties, int64_t a,
                    const AnchorPositives<T>& pos, const std::vector<Threshold<T>>& thresholds,
                    SemihardChoices<T>& own) {
  if (pos.count(a) == 0) return;
  for (int64_t s = pos.begin[a]; s < pos.begin[a + 1]; ++s)
    offer_nearest_farther(row, first, ties, a, thresholds[s], own.nearest_farther[s]);
  offer_farthest(row, first, ties, a, own.farthest[a]);
}

// The threads' choices merged; returns the loss sum, writes the number of
// (anchor, positive) pairs and the active triplets.
template <typename T>
double semihard_finish(const TieBreaker<T>& ties, const AnchorPositives<T>& pos, T margin,
                       std::vector<SemihardChoices<T>>& threads, int64_t& pair_count,
                       std::vector<ActiveTriplet<T>>& active) {
  const int64_t n = static_cast<int64_t>(pos.negative_count.size());
  SemihardChoices<T>& merged = threads[0];
  for (size_t t = 1; t < threads.size(); ++t)
    for (int64_t a = 0; a < n; ++a) {
      for (int64_t s = pos.begin[a]; s < pos.begin[a + 1]; ++s) {
        const Choice<T>& other = threads[t].nearest_farther[s];
        if (other.index >= 0) merged.nearest_farther[s].offer_nearer(ties, a, other.distance, other.index);
      }
      const Choice<T>& other = threads[t].farthest[a];
      if (other.index >= 0) merged.farthest[a].offer_farther(ties, a, other.distance, other.index);
    }
  double loss_sum = 0;
  pair_count = 0;
  for (int64_t a = 0; a < n; ++a) {
    if (pos.negative_count[a] == 0) continue;
    for (int64_t s = pos.begin[a]; s < pos.begin[a + 1]; ++s) {
      const Choice<T>& negative =
          merged.nearest_farther[s].index >= 0 ? merged.nearest_farther[s] : merged.farthest[a];
      const T hinge = ties.hinge(a, pos.index[s], pos.distance[s], negative.index, negative.distance, margin);
      loss_sum += hinge;
      ++pair_count;
      if (hinge > T(0))
        active.push_back({a, pos.index[s], negative.index, pos.distance[s], negative.distance});
    }
  }
  return loss_sum;
}

template <typename T>
T semihard(const detail::GramRows<T>& gram, const int64_t* labels, T margin, bool squared,
           const AnchorPositives<T>& pos, T* dx) {
  const TieBreaker<T> ties(gram, squared);
  const std::vector<Threshold<T>> thresholds = semihard_thresholds(ties, pos);
  std::vector<SemihardChoices<T>> threads(omp_get_max_threads(), SemihardChoices<T>(pos));
  for_each_negative_tile<T>(gram, labels, squared, threads, nullptr,
                            [&](detail::DistanceTile<T>&, const NegativeTile<T>& negatives, int64_t i0,
                                int64_t rows, int64_t j0, int64_t cols, SemihardChoices<T>& own, T*) {
    for_each_tile_anchor(negatives, i0, rows, j0, cols, [&](int64_t a, const T* row, int64_t first, bool) {
      offer_semihard(row, first, ties, a, pos, thresholds, own);
    });
  });
  int64_t pair_count = 0;
  std::vector<ActiveTriplet<T>> active;
  const double loss_sum = semihard_finish(ties, pos, margin, threads, pair_count, active);
  return active_triplet_mean(gram.x, gram.x, gram.d, squared, active, loss_sum, pair_count, dx, dx);
}

// Batch-hard: the farthest positive and the nearest negative of each anchor.
// The threads' nearest negatives merged; returns the loss sum, writes the
// number of anchors with a positive and a negative and the active triplets.
template <typename T>
double batch_hard_finish(const TieBreaker<T>& ties, const AnchorPositives<T>& pos, T margin,
                         std::vector<std::vector<Choice<T>>>& threads, int64_t& anchor_count,
                         std::vector<ActiveTriplet<T>>& active) {
  const int64_t n = static_cast<int64_t>(pos.negative_count.size());
  std::vector<Choice<T>>& nearest = threads[0];
  for (size_t t = 1; t < threads.size(); ++t)
    for (int64_t a = 0; a < n; ++a)
      if (threads[t][a].index >= 0) nearest[a].offer_nearer(ties, a, threads[t][a].distance, threads[t][a].index);
  double loss_sum = 0;
  anchor_count = 0;
  for (int64_t a = 0; a < n; ++a) {
    if (pos.count(a) == 0 || nearest[a].index < 0) continue;
    // Sorted by (distance, index): the farthest, first by index among equals,
    // is the last entry or one within rounding of it.
    int64_t far = pos.begin[a + 1] - 1;
    const T lowest = pos.distance[far] - ties.band(a, pos.distance[far]);
    for (int64_t s = far - 1; s >= pos.begin[a]; --s) {
      if (pos.distance[s] < lowest) break;
      if (ties.farther(a, pos.distance[s], pos.index[s], pos.distance[far], pos.index[far])) far = s;
    }
    const T hinge = ties.hinge(a, pos.index[far], pos.distance[far], nearest[a].index, nearest[a].distance, margin);
    loss_sum += hinge;
    ++anchor_count;
    if (hinge > T(0))
      active.push_back({a, pos.index[far], nearest[a].index, pos.distance[far], nearest[a].distance});
  }
  return loss_sum;
}

template <typename T>
T batch_hard(const detail::GramRows<T>& gram, const int64_t* labels, T margin, bool squared,
             const AnchorPositives<T>& pos, T* dx) {
  const TieBreaker<T> ties(gram, squared);
  std::vector<std::vector<Choice<T>>> threads(omp_get_max_threads(),
                                              std::vector<Choice<T>>(gram.n, Choice<T>{0, -1, 0}));
  for_each_negative_tile<T>(gram, labels, squared, threads, nullptr,
                            [&](detail::DistanceTile<T>&, const NegativeTile<T>& negatives, int64_t i0,
                                int64_t rows, int64_t j0, int64_t cols, std::vector<Choice<T>>& nearest, T*) {
    for_each_tile_anchor(negatives, i0, rows, j0, cols, [&](int64_t a, const T* row, int64_t first, bool) {
      if (pos.count(a) > 0)
        offer_nearest_farther(row, first, ties, a, Threshold<T>(), nearest[a]);
    });
  });
  int64_t anchor_count = 0;
  std::vector<ActiveTriplet<T>> active;
  const double loss_sum = batch_hard_finish(ties, pos, margin, threads, anchor_count, active);
  return active_triplet_mean(gram.x, gram.x, gram.d, squared, active, loss_sum, anchor_count, dx, dx);
}

// Batch-all, one pass over the symmetric tiles.  A triplet (a, p, n) is
// active when d_ap - d_an + margin > 0.  Per anchor row of a tile, each of
// its positives adds its active hinges to the anchor's loss and counts its
// active negatives (the weight of its own gradient term); each negative
// counts the positives it is active with, and the tile's negative
// coefficients (anchor i's count plus anchor j's, the loss being symmetric in
// the pair's gradient) go through the dense tile gradient.
template <typename T>
struct BatchAllSums {
  BatchAllSums(int64_t anchors, int64_t positives)
      : anchor_loss(anchors), active_negatives(positives), row_counts(kTileRows * kTileRows),
        column_counts(kTileRows * kTileRows) {}
  // Per anchor and per positive, kept in SIMD lanes (summed once, at the end).
  detail::SimdVectors<T> anchor_loss, active_negatives;
  std::vector<T> row_counts, column_counts;  // per tile: active positives per (anchor, negative)
};

// Anchor a's triplets with the negatives of one tile row (distances to
// candidates first, first + 1, ...; NaN where not a negative): their active
// hinges go to own.anchor_loss[a], each positive's count of active negatives
// to own.active_negatives, each negative's count of active positives to
// negative_counts.
template <typename T>
void batch_all_anchor_row(const TieBreaker<T>& ties, const AnchorPositives<T>& pos, T margin,
                          bool squared, int64_t a, const T* row, int64_t first, T* negative_counts,
                          BatchAllSums<T>& own) {
  // A hinge within rounding of 0 is decided on the exact distances (TieBreaker):
  // |h| <= window(d_ap) + window(d_an), the latter min(sqrt(e), e / d_an) for roots.
  const T e = ties.squared_error(a), root = std::sqrt(e);
  for (int64_t s = pos.begin[a]; s < pos.begin[a + 1]; ++s) {
    const Vector<T> anchor_positive = broadcast(pos.distance[s]);
    const T positive_window = ties.window(a, pos.distance[s]);
    Vector<T> hinges{}, actives{};
    decltype(hinges < hinges) undecided{};
    for (int64_t c = 0; c < kTileRows; c += kLanes<T>) {
      const Vector<T> v = detail::Simd<T>::load(row + c);
      const Vector<T> hinge = (anchor_positive - v) + margin;
      const Vector<T> active = hinge > T(0) ? broadcast(T(1)) : Vector<T>{};
      hinges += hinge > T(0) ? hinge : Vector<T>{};
      actives += active;
      detail::Simd<T>::add_to(negative_counts + c, active);
      const Vector<T> magnitude = hinge < T(0) ? -hinge : hinge;
      if (squared)
        undecided |= magnitude <= positive_window + e;
      else  // the same times d_an, without a division
        undecided |= magnitude * v <= (positive_window + T(4) * std::numeric_limits<T>::epsilon() * v) * v +
                                          (v * root < e ? v * root : broadcast(e));
    }
    own.anchor_loss[a] += hinges;
    own.active_negatives[s] += actives;
    if (!detail::any_lane(undecided)) continue;
    for (int64_t c = 0; c < kTileRows; ++c) {
      const T v = row[c];
      if (!(v == v)) continue;  // not a negative
      const T computed = triplet_hinge(pos.distance[s], v, margin);
      const T decided = ties.hinge(a, pos.index[s], pos.distance[s], first + c, v, margin);
      const T change = T(decided > T(0)) - T(computed > T(0));
      own.anchor_loss[a][0] += decided - computed;
      own.active_negatives[s][0] += change;
      negative_counts[c] += change;
    }
  }
}

template <typename T>
T batch_all(const detail::GramRows<T>& gram, const int64_t* labels, T margin, bool squared,
            const AnchorPositives<T>& pos, T* dx) {
  const T* x = gram.x;
  const int64_t n = gram.n, d = gram.d;
  double triplet_count = 0;
  for (int64_t a = 0; a < n; ++a)
    triplet_count += static_cast<double>(pos.count(a)) * static_cast<double>(pos.negative_count[a]);
  if (triplet_count == 0) return T(0);
  const T weight = static_cast<T>(1.0 / triplet_count);
  const TieBreaker<T> ties(gram, squared);
  std::vector<BatchAllSums<T>> threads(omp_get_max_threads(), BatchAllSums<T>(n, pos.begin[n]));
  for_each_negative_tile<T>(gram, labels, squared, threads, dx,
                            [&](detail::DistanceTile<T>& tile, const NegativeTile<T>& negatives,
                                int64_t i0, int64_t rows, int64_t j0, int64_t cols,
                                BatchAllSums<T>& own, T* own_dx) {
    T* counts = own.row_counts.data();
    std::fill(own.row_counts.begin(), own.row_counts.end(), T(0));
    std::fill(own.column_counts.begin(), own.column_counts.end(), T(0));
    for_each_tile_anchor(negatives, i0, rows, j0, cols, [&](int64_t a, const T* row, int64_t first, bool by_column) {
      T* negative_counts = by_column ? own.column_counts.data() + (a - j0) * kTileRows
                                     : own.row_counts.data() + (a - i0) * kTileRows;
      batch_all_anchor_row(ties, pos, margin, squared, a, row, first, negative_counts, own);
    });
    if (!own_dx) return;
    const T* column_counts = i0 == j0 ? counts : own.column_counts.data();
    T* coef = tile.coefficients();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const T active = counts[r * kTileRows + c] + column_counts[c * kTileRows + r];
        coef[r * kTileRows + c] =
            active > T(0) ? -weight * active * distance_gradient_scale(negatives.row(r)[c], squared)
                          : T(0);
      }
    tile.accumulate_gradient(x, i0, rows, j0, cols, own_dx, i0 != j0);
  });
  double loss_sum = 0;
  for (const BatchAllSums<T>& own : threads)
    for (const Vector<T>& lanes : own.anchor_loss)
      for (int lane = 0; lane < kLanes<T>; ++lane) loss_sum += lanes[lane];
  if (!dx) return static_cast<T>(loss_sum / triplet_count);
  for (int64_t a = 0; a < n; ++a)
    for (int64_t s = pos.begin[a]; s < pos.begin[a + 1]; ++s) {
      double active_negatives = 0;
      for (const BatchAllSums<T>& own : threads)
        for (int lane = 0; lane < kLanes<T>; ++lane) active_negatives += own.active_negatives[s][lane];
      add_pair_gradient(x, d, a, pos.index[s],
                        weight * static_cast<T>(active_negatives) *
                            distance_gradient_scale(pos.distance[s], squared),
                        dx);
    }
  return static_cast<T>(loss_sum / triplet_count);
}

// ------------------------------------------------------------ reference sets

// Anchors: the rows of x; candidates: the rows of a reference set, less each
// anchor's own copy (self_index, nullable).
template <typename T>
struct ReferenceSet {
  const detail::GramRows<T>& anchors;
  const int64_t* labels;
  const detail::GramRows<T>& candidates;
  const int64_t* candidate_labels;
  const int64_t* self_index;

  int64_t own_copy(int64_t a) const { return self_index ? self_index[a] : -1; }
};

// Every anchor's positives among the candidates, sorted by (distance, index),
// as find_positives.
template <typename T>
AnchorPositives<T> find_reference_positives(const ReferenceSet<T>& set, bool squared) {
  const int64_t n = set.anchors.n, m = set.candidates.n;
  std::vector<int64_t> by_label(m);
  std::iota(by_label.begin(), by_label.end(), int64_t(0));
  const int64_t* candidate_labels = set.candidate_labels;
  std::stable_sort(by_label.begin(), by_label.end(), [candidate_labels](int64_t a, int64_t b) {
    return candidate_labels[a] < candidate_labels[b];
  });
  std::vector<int64_t> sorted_labels(m), group_first(n), group_size(n);
  for (int64_t k = 0; k < m; ++k) sorted_labels[k] = candidate_labels[by_label[k]];
  AnchorPositives<T> positives;
  positives.begin.assign(n + 1, 0);
  positives.negative_count.resize(n);
  for (int64_t a = 0; a < n; ++a) {
    const auto group = std::equal_range(sorted_labels.begin(), sorted_labels.end(), set.labels[a]);
    group_first[a] = group.first - sorted_labels.begin();
    group_size[a] = group.second - group.first;
    // The own copy has the anchor's label (check_self_index): one positive less.
    positives.begin[a + 1] = positives.begin[a] + group_size[a] - (set.own_copy(a) >= 0 ? 1 : 0);
    positives.negative_count[a] = m - group_size[a];
  }
  positives.index.resize(positives.begin[n]);
  positives.distance.resize(positives.begin[n]);
#pragma omp parallel if (positives.begin[n] * set.anchors.d > detail::kParallelWork)
  {
    std::vector<std::pair<T, int64_t>> sorted;
#pragma omp for schedule(dynamic, 64)
    for (int64_t a = 0; a < n; ++a) {
      sorted.clear();
      for (int64_t k = group_first[a]; k < group_first[a] + group_size[a]; ++k) {
        const int64_t p = by_label[k];
        if (p == set.own_copy(a)) continue;
        sorted.emplace_back(distance_from_squared(
                                detail::cross_squared_distance(set.anchors, a, set.candidates, p), squared),
                            p);
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

// Calls tile_fn(tile, negatives, i0, rows, j0, cols, own_state, own_dx,
// own_dref) for every anchors x candidates tile, in parallel, as
// for_each_negative_tile (detail::for_each_cross_tile).
template <typename T, typename State, typename TileFn>
void for_each_reference_negative_tile(const ReferenceSet<T>& set, bool squared,
                                      std::vector<State>& states, T* dx, T* dref, TileFn tile_fn) {
  detail::for_each_cross_tile<T>(
      set.anchors.n, set.candidates.n, set.anchors.d, dx, dref,
      [&](detail::DistanceTile<T>& tile, int64_t i0, int64_t rows, int64_t j0, int64_t cols,
          T* own_dx, T* own_dref) {
        NegativeTile<T> negatives;  // this thread's scratch
        negatives.compute(tile, set.anchors, set.labels, set.candidates, set.candidate_labels,
                          squared, i0, rows, j0, cols);
        tile_fn(tile, negatives, i0, rows, j0, cols, states[omp_get_thread_num()], own_dx, own_dref);
      });
}

// The miners against a reference set: the loss, and in `terms` the number of
// terms of its mean; dx (n, d) and dref (m, d) each null (not asked for) or zeroed.
template <typename T>
T semihard_reference(const ReferenceSet<T>& set, T margin, bool squared,
                     const AnchorPositives<T>& pos, T* dx, T* dref, double& terms) {
  const TieBreaker<T> ties(set.anchors, set.candidates, squared);
  const std::vector<Threshold<T>> thresholds = semihard_thresholds(ties, pos);
  std::vector<SemihardChoices<T>> threads(omp_get_max_threads(), SemihardChoices<T>(pos));
  for_each_reference_negative_tile<T>(set, squared, threads, nullptr, nullptr,
                                      [&](detail::DistanceTile<T>&, const NegativeTile<T>& negatives,
                                          int64_t i0, int64_t rows, int64_t j0, int64_t,
                                          SemihardChoices<T>& own, T*, T*) {
    for (int64_t r = 0; r < rows; ++r) offer_semihard(negatives.row(r), j0, ties, i0 + r, pos, thresholds, own);
  });
  int64_t pair_count = 0;
  std::vector<ActiveTriplet<T>> active;
  const double loss_sum = semihard_finish(ties, pos, margin, threads, pair_count, active);
  terms = static_cast<double>(pair_count);
  return active_triplet_mean(set.anchors.x, set.candidates.x, set.anchors.d, squared, active, loss_sum, pair_count, dx,
                             dref);
}

template <typename T>
T batch_hard_reference(const ReferenceSet<T>& set, T margin, bool squared,
                       const AnchorPositives<T>& pos, T* dx, T* dref, double& terms) {
  const TieBreaker<T> ties(set.anchors, set.candidates, squared);
  std::vector<std::vector<Choice<T>>> threads(
      omp_get_max_threads(), std::vector<Choice<T>>(set.anchors.n, Choice<T>{0, -1, 0}));
  for_each_reference_negative_tile<T>(set, squared, threads, nullptr, nullptr,
                                      [&](detail::DistanceTile<T>&, const NegativeTile<T>& negatives,
                                          int64_t i0, int64_t rows, int64_t j0, int64_t,
                                          std::vector<Choice<T>>& nearest, T*, T*) {
    for (int64_t r = 0; r < rows; ++r)
      if (pos.count(i0 + r) > 0)
        offer_nearest_farther(negatives.row(r), j0, ties, i0 + r, Threshold<T>(), nearest[i0 + r]);
  });
  int64_t anchor_count = 0;
  std::vector<ActiveTriplet<T>> active;
  const double loss_sum = batch_hard_finish(ties, pos, margin, threads, anchor_count, active);
  terms = static_cast<double>(anchor_count);
  return active_triplet_mean(set.anchors.x, set.candidates.x, set.anchors.d, squared, active, loss_sum, anchor_count, dx,
                             dref);
}

// Batch-all over anchors x candidates tiles: as batch_all, with the anchors
// on the rows only, so a negative's coefficient is its anchor row's count.
template <typename T>
T batch_all_reference(const ReferenceSet<T>& set, T margin, bool squared,
                      const AnchorPositives<T>& pos, T* dx, T* dref, double& terms) {
  const T* x = set.anchors.x;
  const T* ref = set.candidates.x;
  const int64_t n = set.anchors.n, d = set.anchors.d;
  double triplet_count = 0;
  for (int64_t a = 0; a < n; ++a)
    triplet_count += static_cast<double>(pos.count(a)) * static_cast<double>(pos.negative_count[a]);
  terms = triplet_count;
  if (triplet_count == 0) return T(0);
  const T weight = static_cast<T>(1.0 / triplet_count);
  const TieBreaker<T> ties(set.anchors, set.candidates, squared);
  std::vector<BatchAllSums<T>> threads(omp_get_max_threads(), BatchAllSums<T>(n, pos.begin[n]));
  for_each_reference_negative_tile<T>(set, squared, threads, dx, dref,
                                      [&](detail::DistanceTile<T>& tile, const NegativeTile<T>& negatives,
                                          int64_t i0, int64_t rows, int64_t j0, int64_t cols,
                                          BatchAllSums<T>& own, T* own_dx, T* own_dref) {
    T* counts = own.row_counts.data();
    std::fill(own.row_counts.begin(), own.row_counts.end(), T(0));
    for (int64_t r = 0; r < rows; ++r)
      batch_all_anchor_row(ties, pos, margin, squared, i0 + r, negatives.row(r), j0,
                           counts + r * kTileRows, own);
    if (!own_dx && !own_dref) return;
    T* coef = tile.coefficients();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const T active = counts[r * kTileRows + c];
        coef[r * kTileRows + c] =
            active > T(0) ? -weight * active * distance_gradient_scale(negatives.row(r)[c], squared)
                          : T(0);
      }
    tile.accumulate_gradient(x, i0, rows, ref, j0, cols, own_dx, own_dref);
  });
  double loss_sum = 0;
  for (const BatchAllSums<T>& own : threads)
    for (const Vector<T>& lanes : own.anchor_loss)
      for (int lane = 0; lane < kLanes<T>; ++lane) loss_sum += lanes[lane];
  if (!dx && !dref) return static_cast<T>(loss_sum / triplet_count);
  for (int64_t a = 0; a < n; ++a)
    for (int64_t s = pos.begin[a]; s < pos.begin[a + 1]; ++s) {
      double active_negatives = 0;
      for (const BatchAllSums<T>& own : threads)
        for (int lane = 0; lane < kLanes<T>; ++lane) active_negatives += own.active_negatives[s][lane];
      add_pair_gradient(x, a, ref, pos.index[s], d,
                        weight * static_cast<T>(active_negatives) *
                            distance_gradient_scale(pos.distance[s], squared),
                        dx, dref);
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
  if (std::any_of(gram.norms, gram.norms + n, squared_norm_overflows<T>)) {
    *loss = std::numeric_limits<T>::quiet_NaN();
    if (dx) std::fill(dx, dx + n * d, std::numeric_limits<T>::quiet_NaN());
    return;
  }
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
    const T dap = detail::squared_difference(a, p, d), dan = detail::squared_difference(a, q, d);
    const T hinge = explicit_triplet_hinge(dap, dan, margin);
    const T g = explicit_triplet_coefficient(hinge, scale);
    for (int64_t e = 0; e < d; ++e) {
      if (da) da[i * d + e] = g * (q[e] - p[e]);
      if (dp) dp[i * d + e] = g * (p[e] - a[e]);
      if (dn) dn[i * d + e] = g * (a[e] - q[e]);
    }
    return static_cast<double>(hinge);
  });
  *loss = static_cast<T>(loss_sum) * weight;
}


template <typename T>
void triplet_loss_ref(const T* x, const int64_t* labels, int64_t n, int64_t d, const T* ref,
                      const int64_t* ref_labels, int64_t m, const int64_t* self_index, T margin,
                      TripletMining mining, bool squared, T* loss, T* count, T* dx, T* dref) {
  detail::check_batch("x", n, d);
  detail::check_batch("ref", m, d);
  detail::check_finite("x", x, n * d);
  detail::check_finite("ref", ref, m * d);
  detail::check_self_index(self_index, n, m, labels, ref_labels);
  detail::require(mining == TripletMining::kSemihard || mining == TripletMining::kHard ||
                      mining == TripletMining::kAll,
                  "mining: expected semihard, hard or all");
  const detail::GramRows<T> anchors(x, n, d), candidates(ref, m, d, true);
  if (std::any_of(anchors.norms, anchors.norms + n, squared_norm_overflows<T>) ||
      std::any_of(candidates.norms, candidates.norms + m, squared_norm_overflows<T>)) {
    const T nan = std::numeric_limits<T>::quiet_NaN();
    if (loss) *loss = nan;
    if (count) *count = nan;
    if (dx) std::fill(dx, dx + n * d, nan);
    if (dref) std::fill(dref, dref + m * d, nan);
    return;
  }
  // Only the gradients asked for are written: no m x d buffer when dref is null.
  if (dx) std::fill(dx, dx + n * d, T(0));
  if (dref) std::fill(dref, dref + m * d, T(0));
  const ReferenceSet<T> set{anchors, labels, candidates, ref_labels, self_index};
  const AnchorPositives<T> positives = find_reference_positives(set, squared);
  double terms = 0;
  T value = T(0);
  switch (mining) {
    case TripletMining::kSemihard:
      value = semihard_reference(set, margin, squared, positives, dx, dref, terms);
      break;
    case TripletMining::kHard:
      value = batch_hard_reference(set, margin, squared, positives, dx, dref, terms);
      break;
    case TripletMining::kAll:
      value = batch_all_reference(set, margin, squared, positives, dx, dref, terms);
      break;
  }
  if (loss) *loss = value;
  if (count) *count = static_cast<T>(terms);
}

#define FACEOPS_INSTANTIATE_TRIPLET(T)                                                          \
  template void triplet_loss<T>(const T*, const int64_t*, int64_t, int64_t, T, TripletMining,   \
                                bool, T*, T*);                                                  \
  template void triplet_loss_explicit<T>(const T*, const T*, const T*, int64_t, int64_t, T, T*, \
                                         T*, T*, T*);                                           \
  template void triplet_loss_ref<T>(const T*, const int64_t*, int64_t, int64_t, const T*,       \
                                    const int64_t*, int64_t, const int64_t*, T, TripletMining,  \
                                    bool, T*, T*, T*, T*);
FACEOPS_INSTANTIATE_TRIPLET(float)
FACEOPS_INSTANTIATE_TRIPLET(double)

}  // namespace cpu
}  // namespace faceops
