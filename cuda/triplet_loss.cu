// Triplet loss on the GPU; math and mining rules in csrc/faceops/triplet_loss.h.
//
// Each block owns kTileRows anchors and streams distance tiles over all rows
// (pairwise.cuh); kLanes threads serve each anchor.  State per anchor is O(1)
// plus kSlots positives at a time, so memory is O(N) whatever the labels:
//
//  hard      one pass: each lane keeps the farthest positive and the closest
//            negative of its columns; lanes merge by (distance, index).
//            Small batches split the candidates over several blocks (as the
//            pair loss), merged by a second kernel, which writes each
//            anchor's two pairs for the gradient's gather.
//  semihard  rounds of kSlots positives per anchor (positives in index order):
//            pass 1 finds the round's positives from the labels alone and
//            computes their few distances directly (bit-equal to the tiles'),
//            pass 2 streams the tiles and finds per positive the closest
//            negative farther than it, and per anchor the farthest negative.
//            P x K batches with K <= kSlots + 1 take one round: one pass over
//            the distance tiles, split over several blocks for small batches.
//  all       the same rounds; pass 2 sums the hinges, counts per positive its
//            active negatives, and turns per (anchor, negative) the count of
//            active positives into tile coefficients (rows and columns).  All
//            of it adds over negatives, so small batches split the tiles.
//
// Against a reference set (triplet_loss_ref) the same kernels run with the
// candidates (detail::Candidates) being the rows of ref instead of the batch,
// less each anchor's own copy; the candidates' gradient goes to dref.
//
// Ties go to the lowest index (closer_candidate).  Losses are reduced in a
// fixed order.  The gradients are accumulated unscaled, then scaled by 1 /
// (number of pairs, anchors or triplets), read on the device; all of them are
// bitwise reproducible.  Batch-hard's are gathered (triplet_hard_gradient_kernel:
// each row sums its terms in a fixed order; scratch O(N + M)).  Semi-hard's
// scattered pairs and batch-all's tiles, which any block may add into any
// row, are added as integers in fixed point (fixed_point.cuh: one int64 word
// per element for float up to about N = 13,000, two for double and beyond;
// scratch (N + M) D elements), one integer atomic add where a float one was
// (two words: the low word's add returns the old value, for the carry, and
// the high word is added to only when the low word wraps or a term is past
// one pair's bound), and converted and scaled at the end
// (fixed_point_to_gradient_kernel).
#include "faceops/triplet_loss.h"

#include "grouping.cuh"
#include "launch.cuh"
#include "pairwise.cuh"

namespace faceops {
namespace cuda {
namespace detail {

constexpr int kLanes = kThreads / kTileRows;  // threads per anchor
constexpr int kSlotsPerLane = 2;
constexpr int kSlots = kLanes * kSlotsPerLane;  // positives per anchor per round
static_assert(kThreads % kTileRows == 0, "whole lanes per anchor");

union BlockReduce {
  double sum[kThreads];
  long long count[kThreads];
};

// Writes the block's loss sum and count; every thread must call it.
__device__ __forceinline__ void write_partials(double loss, long long count, BlockReduce& reduce,
                                               double* partial_loss, long long* partial_count) {
  loss = block_sum(loss, reduce.sum);
  count = block_sum(count, reduce.count);
  if (threadIdx.x == 0) {
    partial_loss[blockIdx.x] = loss;
    partial_count[blockIdx.x] = count;
  }
}

// The farthest of two candidates; ties to the lower index.
template <typename T>
__device__ __forceinline__ bool farther_candidate(T distance, int index, T best_distance,
                                                  int best_index) {
  return best_index < 0 ||
         closer_candidate(-distance, int64_t(index), -best_distance, int64_t(best_index));
}

template <typename T>
__device__ __forceinline__ bool nearer_candidate(T distance, int index, T best_distance,
                                                 int best_index) {
  return best_index < 0 ||
         closer_candidate(distance, int64_t(index), best_distance, int64_t(best_index));
}

// ---------------------------------------------------------------- batch-hard

// Block (anchor block, split) walks every splits-th candidate tile; each lane
// keeps the farthest positive and the closest negative of its columns, lane 0
// merges the anchor's lanes and stores the result for (anchor, split).
template <typename T, Gram G>
__global__ void __launch_bounds__(kThreads)
    triplet_hard_mine_kernel(const T* __restrict__ x, const T* __restrict__ norms,
                             const int64_t* __restrict__ labels, int n, Candidates<T> cand,
                             int64_t d, bool squared, int splits, T* far_distance_out,
                             int* far_index_out,
                             T* near_distance_out, int* near_index_out) {
  __shared__ DistanceTile<T> tile;
  __shared__ T far_distance[kThreads], near_distance[kThreads];
  __shared__ int far_index[kThreads], near_index[kThreads];
  const int m = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int a0 = (blockIdx.x / splits) * kTileRows, split = blockIdx.x % splits, a = a0 + m;
  const int64_t label = a < n ? labels[a] : 0;
  const int own = a < n ? cand.own_copy(a) : -1;

  T far_d = T(0), near_d = T(0);
  int far_j = -1, near_j = -1;
  for (int c0 = split * kTileCols; c0 < cand.count; c0 += splits * kTileCols) {
    compute_distance_tile<G>(x, norms, n, cand, d, a0, c0, tile);
    if (a < n) {
      for (int j = lane; j < kTileCols && c0 + j < cand.count; j += kLanes) {
        const int b = c0 + j;
        if (b == own) continue;
        const T v = distance_from_squared(tile.value[m][j], squared);
        if (cand.labels[b] == label) {
          if (farther_candidate(v, b, far_d, far_j)) far_d = v, far_j = b;
        } else if (nearer_candidate(v, b, near_d, near_j)) {
          near_d = v, near_j = b;
        }
      }
    }
    __syncthreads();
  }
  far_distance[threadIdx.x] = far_d;
  far_index[threadIdx.x] = far_j;
  near_distance[threadIdx.x] = near_d;
  near_index[threadIdx.x] = near_j;
  __syncthreads();
  if (lane == 0 && a < n) {
    for (int l = 1; l < kLanes; ++l) {
      const int t = threadIdx.x + l;
      if (far_index[t] >= 0 && farther_candidate(far_distance[t], far_index[t], far_d, far_j))
        far_d = far_distance[t], far_j = far_index[t];
      if (near_index[t] >= 0 && nearer_candidate(near_distance[t], near_index[t], near_d, near_j))
        near_d = near_distance[t], near_j = near_index[t];
    }
    const int64_t out = int64_t(a) * splits + split;
    far_distance_out[out] = far_d;
    far_index_out[out] = far_j;
    near_distance_out[out] = near_d;
    near_index_out[out] = near_j;
  }
}

// Thread m < kTileRows merges anchor a0 + m's splits (ties to the lower
// index, so the order of the splits does not matter), takes its hinge and
// writes its two pairs for triplet_hard_gradient_kernel: pair_index[2a] the
// farthest positive, pair_index[2a + 1] the closest negative (-1 when the
// hinge is inactive), pair_coef their dL/dd times dd/dD.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    triplet_hard_finish_kernel(int n, T margin, bool squared, int splits,
                               const T* __restrict__ far_distance_in,
                               const int* __restrict__ far_index_in,
                               const T* __restrict__ near_distance_in,
                               const int* __restrict__ near_index_in, int* pair_index,
                               T* pair_coef, double* partial_loss, long long* partial_count) {
  __shared__ BlockReduce reduce;
  const int a0 = blockIdx.x * kTileRows;
  double loss = 0;
  long long count = 0;
  if (threadIdx.x < kTileRows && a0 + int(threadIdx.x) < n) {
    const int a = a0 + threadIdx.x;
    T far_d = T(0), near_d = T(0);
    int far_j = -1, near_j = -1;
    for (int split = 0; split < splits; ++split) {
      const int64_t in = int64_t(a) * splits + split;
      if (far_index_in[in] >= 0 &&
          farther_candidate(far_distance_in[in], far_index_in[in], far_d, far_j))
        far_d = far_distance_in[in], far_j = far_index_in[in];
      if (near_index_in[in] >= 0 &&
          nearer_candidate(near_distance_in[in], near_index_in[in], near_d, near_j))
        near_d = near_distance_in[in], near_j = near_index_in[in];
    }
    bool active = false;
    if (far_j >= 0 && near_j >= 0) {
      const T hinge = triplet_hinge(far_d, near_d, margin);
      loss = hinge;
      count = 1;
      active = hinge > T(0);
    }
    pair_index[2 * a] = active ? far_j : -1;
    pair_index[2 * a + 1] = active ? near_j : -1;
    pair_coef[2 * a] = distance_gradient_scale(far_d, squared);
    pair_coef[2 * a + 1] = -distance_gradient_scale(near_d, squared);
  }
  write_partials(loss, count, reduce, partial_loss, partial_count);
}

// The gradient of batch-hard's pairs (a, pair_index[t]), t = 2a, 2a + 1, with
// coefficients pair_coef[t]: dx_r = sum over row r's own pairs of
// coef (x_r - y_j), dy_r = -sum over the pairs whose candidate is r, in pair
// order (`by_candidate`: the pairs grouped by candidate, grouping.cuh), of
// coef (x_a - y_r); within the batch (dy == dx) the two add up in one
// element.  One block per row, its threads over the features: no two blocks
// write one element, so nothing depends on the order blocks run in.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    triplet_hard_gradient_kernel(const T* __restrict__ x, int n, const T* __restrict__ y, int ny,
                                 int64_t d, const int* __restrict__ pair_index,
                                 const T* __restrict__ pair_coef,
                                 const int64_t* __restrict__ group_begin,
                                 const int* __restrict__ group_size,
                                 const int64_t* __restrict__ by_candidate, T* dx, T* dy) {
  const int rows = dy && ny > n ? ny : n;
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t first = dy && r < ny && group_size[r] > 0 ? group_begin[r] : 0;
    const int64_t end = dy && r < ny ? first + group_size[r] : 0;
    for (int64_t k = threadIdx.x; k < d; k += kThreads) {
      T own = T(0), as_candidate = T(0);
      if (dx && r < n) {
        for (int t = 2 * r; t < 2 * r + 2; ++t)
          if (pair_index[t] >= 0)
            own += pair_coef[t] * (x[int64_t(r) * d + k] - y[int64_t(pair_index[t]) * d + k]);
      }
      for (int64_t q = first; q < end; ++q) {
        const int64_t t = by_candidate[q];
        as_candidate -= pair_coef[t] * (x[(t / 2) * d + k] - y[int64_t(r) * d + k]);
      }
      if (dx == dy) {
        dx[int64_t(r) * d + k] = own + as_candidate;
      } else {
        if (dx && r < n) dx[int64_t(r) * d + k] = own;
        if (dy && r < ny) dy[int64_t(r) * d + k] = as_candidate;
      }
    }
  }
}

// ------------------------------------------- rounds of positives per anchor

// tile.value <- d_ij (square roots unless `squared`), once per element rather
// than once per lane that reads it.  Every thread must call it.
template <typename T>
__device__ void take_square_roots(DistanceTile<T>& tile, bool squared) {
  if (squared) return;
  for (int e = threadIdx.x; e < kTileRows * kTileCols; e += kThreads)
    tile.value[e / kTileCols][e % kTileCols] =
        distance_from_squared(tile.value[e / kTileCols][e % kTileCols], false);
  __syncthreads();
}

template <typename T>
struct PositiveSlots {
  T distance[kTileRows][kSlots];  // d_ap of the round's positives
  int index[kTileRows][kSlots];   // p, or -1 for an empty slot
  int positive_count[kTileRows];  // other rows with the anchor's label
  int negative_count[kTileRows];  // rows with another label
  // Scratch of collect_positives.
  int64_t labels[kThreads];           // one chunk of labels
  int lane_count[kTileRows][kLanes];  // per lane: positives in its part of the chunk
};

// Fills `slots` with each anchor's positives of rank [first_rank, first_rank +
// kSlots) in index order and their distances, and counts positives and
// negatives.  Labels only: no distance tile (the distances of the few
// positives come from pair_squared_distance, equal to the tiles' bits).  Each
// lane scans a contiguous part of a chunk of kThreads labels, so the ranks
// follow from the lanes' counts.  Every thread must call it; it ends with a
// barrier.
template <typename T>
__device__ void collect_positives(const T* __restrict__ x, const T* __restrict__ norms,
                                  const int64_t* __restrict__ labels, int n,
                                  const Candidates<T>& cand, int64_t d, bool squared, int a0,
                                  int first_rank, PositiveSlots<T>& slots) {
  constexpr int kSpan = kThreads / kLanes;  // labels per lane per chunk
  const int m = threadIdx.x / kLanes, lane = threadIdx.x % kLanes, a = a0 + m;
  const int64_t label = a < n ? labels[a] : 0;
  const int own = a < n ? cand.own_copy(a) : -1;
  const int count = cand.count;
  for (int s = lane; s < kSlots; s += kLanes) slots.index[m][s] = -1;
  int seen = 0, negatives = 0;
  for (int c0 = 0; c0 < count; c0 += kThreads) {
    slots.labels[threadIdx.x] = c0 + int(threadIdx.x) < count ? cand.labels[c0 + threadIdx.x] : 0;
    __syncthreads();
    const int j0 = lane * kSpan, j1 = count - c0 < j0 + kSpan ? count - c0 : j0 + kSpan;
    int mine = 0;
    if (a < n) {
      for (int j = j0; j < j1; ++j) {
        if (c0 + j == own) continue;
        if (slots.labels[j] != label) {
          ++negatives;
        } else {
          ++mine;
        }
      }
    }
    slots.lane_count[m][lane] = mine;
    __syncthreads();
    int rank = seen;  // positives before this lane's part: earlier chunks and lanes
    for (int l = 0; l < lane; ++l) rank += slots.lane_count[m][l];
    for (int l = 0; l < kLanes; ++l) seen += slots.lane_count[m][l];
    if (a < n) {
      for (int j = j0; j < j1; ++j) {
        if (slots.labels[j] != label || c0 + j == own) continue;
        const int s = rank++ - first_rank;
        if (s >= 0 && s < kSlots) slots.index[m][s] = c0 + j;
      }
    }
    __syncthreads();  // the chunk and the lane counts are rewritten next
  }
  slots.lane_count[m][lane] = negatives;
  __syncthreads();
  if (lane == 0) {
    int total = 0;
    for (int l = 0; l < kLanes; ++l) total += slots.lane_count[m][l];
    slots.positive_count[m] = seen;
    slots.negative_count[m] = total;
  }
  for (int e = threadIdx.x; e < kTileRows * kSlots; e += kThreads) {
    const int mm = e / kSlots, s = e % kSlots, p = slots.index[mm][s];
    if (p >= 0)
      slots.distance[mm][s] =
          distance_from_squared(pair_squared_distance(x, norms, cand, d, a0 + mm, p), squared);
  }
  __syncthreads();
}

// The number of positives still to serve after `done` of them: the largest
// positive count over the block's anchors that have a negative (anchors
// without one contribute nothing).  Same value in every thread.
template <typename T>
__device__ int positives_left(const PositiveSlots<T>& slots, int done) {
  int most = 0;
  for (int m = 0; m < kTileRows; ++m)
    if (slots.negative_count[m] > 0 && slots.positive_count[m] > most)
      most = slots.positive_count[m];
  return most - done;
}

// ------------------------------------------------------------------ semihard

// One lane's semihard candidates: for each of its slots (lane + kLanes q) the
// closest negative farther than the slot's positive, and the anchor's
// farthest negative.
template <typename T>
struct SemihardCandidates {
  T best_d[kSlotsPerLane];
  int best_j[kSlotsPerLane];
  T far_d;
  int far_j;
};

template <typename T>
__device__ void no_semihard_candidates(SemihardCandidates<T>& c) {
  for (int q = 0; q < kSlotsPerLane; ++q) c.best_d[q] = T(0), c.best_j[q] = -1;
  c.far_d = T(0);
  c.far_j = -1;
}

// The candidates among the tiles c0 = first_col, first_col + col_step, ...
// Every thread must call it.
template <typename T>
__device__ void scan_semihard_negatives(const T* __restrict__ x, const T* __restrict__ norms,
                                        const int64_t* __restrict__ labels, int n,
                                        const Candidates<T>& cand, int64_t d, bool squared, int a0,
                                        int first_col, int col_step, DistanceTile<T>& tile,
                                        const PositiveSlots<T>& slots, SemihardCandidates<T>& c) {
  const int m = threadIdx.x / kLanes, lane = threadIdx.x % kLanes, a = a0 + m;
  const int64_t label = a < n ? labels[a] : 0;
  const int own = a < n ? cand.own_copy(a) : -1;
  no_semihard_candidates(c);
  for (int c0 = first_col; c0 < cand.count; c0 += col_step) {
    compute_distance_tile(x, norms, n, cand, d, a0, c0, tile);
    take_square_roots(tile, squared);
    if (a < n) {
      for (int j = 0; j < kTileCols && c0 + j < cand.count; ++j) {
        const int b = c0 + j;
        if (cand.labels[b] == label || b == own) continue;
        const T v = tile.value[m][j];
        if (farther_candidate(v, b, c.far_d, c.far_j)) c.far_d = v, c.far_j = b;
        for (int q = 0; q < kSlotsPerLane; ++q) {
          const int s = lane + kLanes * q;
          if (slots.index[m][s] >= 0 && v > slots.distance[m][s] &&
              nearer_candidate(v, b, c.best_d[q], c.best_j[q]))
            c.best_d[q] = v, c.best_j[q] = b;
        }
      }
    }
    __syncthreads();
  }
}

// Small batches: block (anchor block, split) finds the first round's
// candidates among every splits-th tile and stores them per (anchor, split);
// triplet_semihard_mine_kernel merges them (ties to the lower index, so the
// order of the splits does not matter).  Later rounds are not split.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    triplet_semihard_split_kernel(const T* __restrict__ x, const T* __restrict__ norms,
                                  const int64_t* __restrict__ labels, int n, Candidates<T> cand,
                                  int64_t d, bool squared, int splits, T* best_distance,
                                  int* best_index,
                                  T* far_distance, int* far_index) {
  __shared__ DistanceTile<T> tile;
  __shared__ PositiveSlots<T> slots;
  const int m = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int a0 = (blockIdx.x / splits) * kTileRows, split = blockIdx.x % splits, a = a0 + m;
  collect_positives(x, norms, labels, n, cand, d, squared, a0, 0, slots);
  if (positives_left(slots, 0) <= 0) return;  // the same test ends the mine kernel's loop
  SemihardCandidates<T> c;
  scan_semihard_negatives(x, norms, labels, n, cand, d, squared, a0, split * kTileCols,
                          splits * kTileCols, tile, slots, c);
  if (a < n) {
    const int64_t out = int64_t(a) * splits + split;
    for (int q = 0; q < kSlotsPerLane; ++q) {
      best_distance[out * kSlots + lane + kLanes * q] = c.best_d[q];
      best_index[out * kSlots + lane + kLanes * q] = c.best_j[q];
    }
    if (lane == 0) far_distance[out] = c.far_d, far_index[out] = c.far_j;
  }
}

// With splits > 1 the first round's candidates come from
// triplet_semihard_split_kernel; otherwise (and for later rounds) the block
// scans all tiles itself.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    triplet_semihard_mine_kernel(const T* __restrict__ x, const T* __restrict__ norms,
                                 const int64_t* __restrict__ labels, int n, Candidates<T> cand,
                                 int64_t d, T margin, bool squared, int splits,
                                 const T* __restrict__ split_best_distance,
                                 const int* __restrict__ split_best_index,
                                 const T* __restrict__ split_far_distance,
                                 const int* __restrict__ split_far_index,
                                 FixedPointSum<T> dx, FixedPointSum<T> dy,
                                 double* partial_loss, long long* partial_count) {
  __shared__ DistanceTile<T> tile;
  __shared__ PositiveSlots<T> slots;
  __shared__ T chosen_distance[kTileRows][kSlots];  // d_an* of an active pair
  __shared__ int chosen_index[kTileRows][kSlots];   // n*, or -1: no gradient
  __shared__ BlockReduce reduce;
  const int m = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int a0 = blockIdx.x * kTileRows, a = a0 + m;

  double loss = 0;
  long long pairs = 0;
  for (int first_rank = 0;; first_rank += kSlots) {
    collect_positives(x, norms, labels, n, cand, d, squared, a0, first_rank, slots);
    if (positives_left(slots, first_rank) <= 0) break;

    SemihardCandidates<T> c;
    if (first_rank == 0 && splits > 1) {
      no_semihard_candidates(c);
      for (int split = 0; a < n && split < splits; ++split) {
        const int64_t in = int64_t(a) * splits + split;
        for (int q = 0; q < kSlotsPerLane; ++q) {
          const int64_t slot = in * kSlots + lane + kLanes * q;
          if (split_best_index[slot] >= 0 &&
              nearer_candidate(split_best_distance[slot], split_best_index[slot], c.best_d[q],
                               c.best_j[q]))
            c.best_d[q] = split_best_distance[slot], c.best_j[q] = split_best_index[slot];
        }
        if (split_far_index[in] >= 0 &&
            farther_candidate(split_far_distance[in], split_far_index[in], c.far_d, c.far_j))
          c.far_d = split_far_distance[in], c.far_j = split_far_index[in];
      }
    } else {
      scan_semihard_negatives(x, norms, labels, n, cand, d, squared, a0, 0, kTileCols, tile, slots,
                              c);
    }

    for (int q = 0; q < kSlotsPerLane; ++q) {
      const int s = lane + kLanes * q;
      chosen_index[m][s] = -1;
      if (a < n && slots.index[m][s] >= 0 && slots.negative_count[m] > 0) {
        const bool semihard_found = c.best_j[q] >= 0;
        const T an = semihard_found ? c.best_d[q] : c.far_d;
        const T hinge = triplet_hinge(slots.distance[m][s], an, margin);
        loss += hinge;
        ++pairs;
        if (hinge > T(0)) {
          chosen_distance[m][s] = an;
          chosen_index[m][s] = semihard_found ? c.best_j[q] : c.far_j;
        }
      }
    }
    __syncthreads();
    if (dx || dy) {
      for (int e = 0; e < kTileRows * kSlots; ++e) {
        const int mm = e / kSlots, s = e % kSlots;
        if (chosen_index[mm][s] < 0) continue;
        scatter_pair_gradient(x, cand.rows, d, a0 + mm, slots.index[mm][s],
                              distance_gradient_scale(slots.distance[mm][s], squared), dx, dy);
        scatter_pair_gradient(x, cand.rows, d, a0 + mm, chosen_index[mm][s],
                              -distance_gradient_scale(chosen_distance[mm][s], squared), dx, dy);
      }
    }
    __syncthreads();  // slots are refilled next round
  }
  write_partials(loss, pairs, reduce, partial_loss, partial_count);
}

// ----------------------------------------------------------------- batch-all

// The hinge of (a, p, b), its sign taken on the direct distances where the
// tile values leave it to rounding (distance_rounding_window), as the CPU
// miners do: a hinge at exactly 0 stays off.
template <typename T>
__device__ __forceinline__ T decided_hinge(const T* __restrict__ x, const T* __restrict__ norms,
                                           const Candidates<T>& cand, int64_t d, bool squared,
                                           int a, int p, T anchor_positive, int b,
                                           T anchor_negative, T margin) {
  const T h = anchor_positive - anchor_negative + margin;
  const T window =
      distance_rounding_window(norms[a] + cand.norms[p], d, anchor_positive, squared) +
      distance_rounding_window(norms[a] + cand.norms[b], d, anchor_negative, squared);
  if ((h < T(0) ? -h : h) > window) return h > T(0) ? h : T(0);
  const T* x_a = x + int64_t(a) * d;
  return triplet_hinge(
      distance_from_squared(direct_squared_distance(x_a, cand.rows + int64_t(p) * d, d), squared),
      distance_from_squared(direct_squared_distance(x_a, cand.rows + int64_t(b) * d, d), squared),
      margin);
}

// Everything batch-all adds up is a sum over negatives, so block (anchor
// block, split) serves every splits-th tile on its own: the splits' losses,
// counts and gradients simply add.  Split 0 counts the triplets.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    triplet_all_mine_kernel(const T* __restrict__ x, const T* __restrict__ norms,
                            const int64_t* __restrict__ labels, int n, Candidates<T> cand,
                            int64_t d, T margin, bool squared, int splits,
                            FixedPointSum<T> dx, FixedPointSum<T> dy, double* partial_loss,
                            long long* partial_count) {
  __shared__ DistanceTile<T> tile;
  __shared__ PositiveSlots<T> slots;
  __shared__ int active_negatives[kTileRows][kSlots];
  __shared__ BlockReduce reduce;
  const int m = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int a0 = (blockIdx.x / splits) * kTileRows, split = blockIdx.x % splits, a = a0 + m;
  const int64_t label = a < n ? labels[a] : 0;
  const int own = a < n ? cand.own_copy(a) : -1;

  double loss = 0;
  long long triplets = 0;
  for (int first_rank = 0;; first_rank += kSlots) {
    collect_positives(x, norms, labels, n, cand, d, squared, a0, first_rank, slots);
    if (first_rank == 0 && lane == 0 && split == 0)
      triplets = static_cast<long long>(slots.positive_count[m]) * slots.negative_count[m];
    if (positives_left(slots, first_rank) <= 0) break;

    int active[kSlotsPerLane] = {};
    for (int c0 = split * kTileCols; c0 < cand.count; c0 += splits * kTileCols) {
      compute_distance_tile(x, norms, n, cand, d, a0, c0, tile);
      take_square_roots(tile, squared);
      // Hinges and per-positive counts: this lane's slots against every column.
      if (a < n) {
        for (int j = 0; j < kTileCols && c0 + j < cand.count; ++j) {
          if (cand.labels[c0 + j] == label || c0 + j == own) continue;
          const T v = tile.value[m][j];
          for (int q = 0; q < kSlotsPerLane; ++q) {
            const int s = lane + kLanes * q;
            if (slots.index[m][s] < 0) continue;
            const T hinge = decided_hinge(x, norms, cand, d, squared, a, slots.index[m][s],
                                          slots.distance[m][s], c0 + j, v, margin);
            if (hinge > T(0)) {
              loss += hinge;
              ++active[q];
            }
          }
        }
      }
      if (dx || dy) {
        __syncthreads();  // the distances are overwritten below
        // Coefficients: this lane's columns against every slot.  For a
        // negative (a, b): dL/dd_ab = -(active positives) / triplets.
        bool any_active = false;
        for (int j = lane; j < kTileCols; j += kLanes) {
          const int b = c0 + j;
          T coef = T(0);
          if (a < n && b < cand.count && cand.labels[b] != label && b != own) {
            const T v = tile.value[m][j];
            int count = 0;
            for (int s = 0; s < kSlots; ++s)
              if (slots.index[m][s] >= 0 &&
                  decided_hinge(x, norms, cand, d, squared, a, slots.index[m][s],
                                slots.distance[m][s], b, v, margin) > T(0))
                ++count;
            coef = -static_cast<T>(count) * distance_gradient_scale(v, squared);
          }
          tile.value[m][j] = coef;
          any_active = any_active || coef != T(0);
        }
        // Tiles of negatives all beyond the margin add nothing: skip them.
        if (__syncthreads_or(any_active)) {
          if (dx) accumulate_row_gradient(x, n, cand.rows, cand.count, d, a0, c0, tile, dx);
          if (dy) accumulate_column_gradient(x, n, cand.rows, cand.count, d, a0, c0, tile, dy);
        }
      }
      __syncthreads();
    }

    // For a positive (a, p): dL/dd_ap = (active negatives) / triplets.
    for (int q = 0; q < kSlotsPerLane; ++q) active_negatives[m][lane + kLanes * q] = active[q];
    __syncthreads();
    if (dx || dy) {
      for (int e = 0; e < kTileRows * kSlots; ++e) {
        const int mm = e / kSlots, s = e % kSlots;
        if (slots.index[mm][s] < 0 || active_negatives[mm][s] == 0) continue;
        scatter_pair_gradient(x, cand.rows, d, a0 + mm, slots.index[mm][s],
                              static_cast<T>(active_negatives[mm][s]) *
                                  distance_gradient_scale(slots.distance[mm][s], squared),
                              dx, dy);
      }
    }
    __syncthreads();  // slots are refilled next round
  }
  write_partials(loss, triplets, reduce, partial_loss, partial_count);
}

// ---------------------------------------------------------- explicit triplets

// One block per triplet row (grid-stride over rows), as contrastive_loss.cu.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    triplet_explicit_forward_kernel(const T* __restrict__ anchor, const T* __restrict__ positive,
                                    const T* __restrict__ negative, int64_t n, int64_t d, T margin,
                                    T scale, T* da, T* dp, T* dn, double* partial) {
  __shared__ T reduce[kThreads];
  __shared__ double reduce_loss[kThreads];
  double loss = 0;  // thread 0's
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const T *a = anchor + i * d, *p = positive + i * d, *q = negative + i * d;
    T dap = T(0), dan = T(0);
    for (int64_t e = threadIdx.x; e < d; e += kThreads) {
      dap += (a[e] - p[e]) * (a[e] - p[e]);
      dan += (a[e] - q[e]) * (a[e] - q[e]);
    }
    dap = block_sum(dap, reduce);
    dan = block_sum(dan, reduce);
    const T hinge = explicit_triplet_hinge(dap, dan, margin);
    if (threadIdx.x == 0) loss += hinge;
    const T g = explicit_triplet_coefficient(hinge, scale);
    for (int64_t e = threadIdx.x; e < d; e += kThreads) {
      if (da) da[i * d + e] = g * (q[e] - p[e]);
      if (dp) dp[i * d + e] = g * (p[e] - a[e]);
      if (dn) dn[i * d + e] = g * (a[e] - q[e]);
    }
  }
  loss = block_sum(loss, reduce_loss);
  if (threadIdx.x == 0) partial[blockIdx.x] = loss;
}

// Runs after finalize_sum_kernel: a squared norm past largest_safe_squared_norm
// makes the loss and dx NaN (csrc/faceops/triplet_loss.h); no host sync.
template <typename T>
__global__ void triplet_overflow_kernel(const T* __restrict__ norms, int n, T* loss, T* inv_count,
                                        T* count) {
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kThreads)
    if (squared_norm_overflows(norms[i])) {
      const T nan = T(0) / T(0);
      *loss = nan;
      *inv_count = nan;
      if (count) *count = nan;
    }
}

}  // namespace detail

namespace detail {

// The mining and the mean, for anchors x (norms, labels) against `cand`: loss,
// count (nullable) and the gradients dx, dcand (= dx within the batch; each
// nullable), which its last kernels write whole (batch-hard's gather, or the
// fixed-point sums' conversion): they need no zeroing.
template <typename T>
void run_triplet(const T* x, const T* norms, const int64_t* labels, int n, const Candidates<T>& cand,
                 int64_t d, T margin, TripletMining mining, bool squared, T* loss, T* count, T* dx,
                 T* dcand, cudaStream_t stream) {
  const int64_t blocks = (n + kTileRows - 1) / kTileRows;
  const int64_t splits = candidate_splits(n, cand.count);
  // One partial loss per block: batch-all splits its anchor blocks, the others
  // reduce their splits per anchor block.
  const int64_t all_splits = mining == TripletMining::kAll ? splits : 1;
  const int64_t partials = blocks * all_splits;
  DeviceArray<double> partial_loss(partials, stream);
  DeviceArray<long long> partial_count(partials, stream);
  DeviceArray<T> inv_count(1, stream);
  // Semi-hard's and batch-all's gradients in fixed point (fixed_point.cuh),
  // with the largest total count of terms of one row (W there): semi-hard,
  // 2 per positive as anchor, 1 per anchor as a positive, 1 per (anchor,
  // positive) as a negative; batch-all, 2 per triplet as anchor (at most
  // m^2 / 4 triplets), n m as a positive and n m as a negative.
  const bool fixed_point = mining != TripletMining::kHard && (dx || dcand);
  const double anchors = n, cands = cand.count;
  const double weight = mining == TripletMining::kSemihard ? 2 * cands + anchors + anchors * cands
                                                           : cands * (cands + 2 * anchors);
  const int words = fixed_point_words<T>(weight);
  DeviceArray<int> exponent(fixed_point ? 1 : 0, stream);
  FixedPointGradient<T> dx_sum(fixed_point && dx ? n * d : 0, words, exponent.get(), stream);
  FixedPointGradient<T> dcand_sum(fixed_point && dcand && dcand != dx ? cand.count * d : 0, words,
                                  exponent.get(), stream);
  const FixedPointSum<T> dcand_target = dcand == dx ? dx_sum.sum() : dcand_sum.sum();
  if (fixed_point)
    launch("fixed_point_exponent_kernel", fixed_point_exponent_kernel<T>, 1, stream, norms, n,
           cand.norms, cand.count, squared, d, weight, words, exponent.get());
  if (mining == TripletMining::kHard) {
    DeviceArray<T> far_distance(n * splits, stream), near_distance(n * splits, stream);
    DeviceArray<int> far_index(n * splits, stream), near_index(n * splits, stream);
    DeviceArray<int> pair_index(2 * int64_t(n), stream);
    DeviceArray<T> pair_coef(2 * int64_t(n), stream);
    launch("triplet_hard_mine_kernel",
           pick_gram(gram_for<T>(), triplet_hard_mine_kernel<T, Gram::kFma>,
                     triplet_hard_mine_kernel<T, kTensorCoreGram<T>>),
           blocks * splits, stream, x, norms, labels, n, cand, d, squared, static_cast<int>(splits),
           far_distance.get(), far_index.get(), near_distance.get(), near_index.get());
    launch("triplet_hard_finish_kernel", triplet_hard_finish_kernel<T>, blocks, stream, n, margin,
           squared, static_cast<int>(splits), far_distance.get(), far_index.get(),
           near_distance.get(), near_index.get(), pair_index.get(), pair_coef.get(),
           partial_loss.get(), partial_count.get());
    if (dx || dcand) {
      ItemGroups<int> by_candidate(dcand ? 2 * int64_t(n) : 0, dcand ? cand.count : 0, stream);
      if (dcand) by_candidate.group(pair_index.get(), stream);
      const int64_t rows = dcand && cand.count > n ? cand.count : n;
      launch("triplet_hard_gradient_kernel", triplet_hard_gradient_kernel<T>,
             rows < kMaxBlocks ? rows : kMaxBlocks, stream, x, n, cand.rows, cand.count, d,
             pair_index.get(), pair_coef.get(), by_candidate.begin(), by_candidate.size(),
             by_candidate.sorted(), dx, dcand);
    }
  } else if (mining == TripletMining::kSemihard) {
    const int64_t split_slots = splits > 1 ? n * splits * kSlots : 0;
    DeviceArray<T> best_distance(split_slots, stream);
    DeviceArray<int> best_index(split_slots, stream);
    DeviceArray<T> far_distance(splits > 1 ? n * splits : 0, stream);
    DeviceArray<int> far_index(splits > 1 ? n * splits : 0, stream);
    if (splits > 1)
      launch("triplet_semihard_split_kernel", triplet_semihard_split_kernel<T>, blocks * splits,
             stream, x, norms, labels, n, cand, d, squared, static_cast<int>(splits),
             best_distance.get(), best_index.get(), far_distance.get(), far_index.get());
    launch("triplet_semihard_mine_kernel", triplet_semihard_mine_kernel<T>, blocks, stream, x,
           norms, labels, n, cand, d, margin, squared, static_cast<int>(splits),
           best_distance.get(), best_index.get(), far_distance.get(), far_index.get(),
           dx_sum.sum(), dcand_target, partial_loss.get(), partial_count.get());
  } else {
    launch("triplet_all_mine_kernel", triplet_all_mine_kernel<T>, blocks * all_splits, stream, x,
           norms, labels, n, cand, d, margin, squared, static_cast<int>(all_splits), dx_sum.sum(),
           dcand_target, partial_loss.get(), partial_count.get());
  }
  launch("finalize_sum_kernel", finalize_sum_kernel<T>, 1, stream, partial_loss.get(),
         partial_count.get(), partials, 1.0, loss, inv_count.get());
  if (count)
    launch("total_count_kernel", total_count_kernel<T>, 1, stream, partial_count.get(), partials,
           count);
  launch("triplet_overflow_kernel", triplet_overflow_kernel<T>, grid_for(n), stream, norms, n,
         loss, inv_count.get(), count);
  if (!cand.in_batch)
    launch("triplet_overflow_kernel", triplet_overflow_kernel<T>, grid_for(cand.count), stream,
           cand.norms, cand.count, loss, inv_count.get(), count);
  if (fixed_point) {
    if (dx) dx_sum.write(dx, inv_count.get(), stream);
    if (dcand && dcand != dx) dcand_sum.write(dcand, inv_count.get(), stream);
  } else {
    if (dx)
      launch("scale_by_device_scalar_kernel", scale_by_device_scalar_kernel<T>, grid_for(n * d),
             stream, dx, n * d, inv_count.get());
    if (dcand && dcand != dx)
      launch("scale_by_device_scalar_kernel", scale_by_device_scalar_kernel<T>,
             grid_for(int64_t(cand.count) * d), stream, dcand, int64_t(cand.count) * d,
             inv_count.get());
  }
}

inline void check_mining(TripletMining mining) {
  faceops::detail::require(mining == TripletMining::kSemihard || mining == TripletMining::kHard ||
                               mining == TripletMining::kAll,
                           "mining: expected semihard, hard or all");
}

}  // namespace detail

template <typename T>
void triplet_loss(const T* x, const int64_t* labels, int64_t n, int64_t d, T margin,
                  TripletMining mining, bool squared, T* loss, T* dx, void* stream_handle) {
  faceops::detail::check_batch("x", n, d);
  detail::check_rows_fit_int("x", n);
  detail::check_mining(mining);
  detail::NvtxRange range("faceops::triplet_loss");
  const cudaStream_t stream = detail::as_stream(stream_handle);
  const int rows = static_cast<int>(n);
  detail::DeviceArray<T> norms(n, stream);
  detail::launch("pairwise_norms_kernel", detail::pairwise_norms_kernel<T>, detail::grid_for(n),
                 stream, x, rows, d, norms.get());
  const detail::Candidates<T> batch{x, norms.get(), labels, rows, nullptr, true};
  detail::run_triplet(x, norms.get(), labels, rows, batch, d, margin, mining, squared, loss,
                      static_cast<T*>(nullptr), dx, dx, stream);
}

template <typename T>
void triplet_loss_ref(const T* x, const int64_t* labels, int64_t n, int64_t d, const T* ref,
                      const int64_t* ref_labels, int64_t m, const int64_t* self_index, T margin,
                      TripletMining mining, bool squared, T* loss, T* count, T* dx, T* dref,
                      void* stream_handle) {
  faceops::detail::check_batch("x", n, d);
  faceops::detail::check_batch("ref", m, d);
  detail::check_rows_fit_int("x", n);
  detail::check_rows_fit_int("ref", m);
  detail::check_mining(mining);
  detail::NvtxRange range("faceops::triplet_loss_ref");
  const cudaStream_t stream = detail::as_stream(stream_handle);
  detail::DeviceArray<T> norms(n, stream), ref_norms(m, stream), spare_loss(loss ? 0 : 1, stream);
  detail::launch("pairwise_norms_kernel", detail::pairwise_norms_kernel<T>, detail::grid_for(n),
                 stream, x, static_cast<int>(n), d, norms.get());
  detail::launch("pairwise_norms_kernel", detail::pairwise_norms_kernel<T>, detail::grid_for(m),
                 stream, ref, static_cast<int>(m), d, ref_norms.get());
  const detail::Candidates<T> candidates{ref, ref_norms.get(), ref_labels, static_cast<int>(m),
                                         self_index, false};
  // Only the gradients asked for are written: no m x d buffer when dref is null.
  detail::run_triplet(x, norms.get(), labels, static_cast<int>(n), candidates, d, margin, mining,
                      squared, loss ? loss : spare_loss.get(), count, dx, dref, stream);
}

template <typename T>
void triplet_loss_explicit(const T* anchor, const T* positive, const T* negative, int64_t n,
                           int64_t d, T margin, T* loss, T* da, T* dp, T* dn, void* stream_handle) {
  faceops::detail::check_batch("anchor", n, d);
  detail::NvtxRange range("faceops::triplet_loss_explicit");
  const cudaStream_t stream = detail::as_stream(stream_handle);
  const int64_t blocks = n < detail::kMaxBlocks ? n : detail::kMaxBlocks;
  const T weight = T(1) / static_cast<T>(2 * n);
  detail::DeviceArray<double> partial(blocks, stream);
  detail::launch("triplet_explicit_forward_kernel", detail::triplet_explicit_forward_kernel<T>,
                 blocks, stream, anchor, positive, negative, n, d, margin,
                 weight * distance_gradient_scale(T(0), true), da, dp, dn, partial.get());
  detail::launch("finalize_sum_kernel", detail::finalize_sum_kernel<T>, 1, stream, partial.get(),
                 nullptr, blocks, 0.5 / static_cast<double>(n), loss, nullptr);
}

#define FACEOPS_INSTANTIATE_TRIPLET(T)                                                          \
  template void triplet_loss<T>(const T*, const int64_t*, int64_t, int64_t, T, TripletMining,   \
                                bool, T*, T*, void*);                                           \
  template void triplet_loss_explicit<T>(const T*, const T*, const T*, int64_t, int64_t, T, T*, \
                                         T*, T*, T*, void*);                                    \
  template void triplet_loss_ref<T>(const T*, const int64_t*, int64_t, int64_t, const T*,       \
                                    const int64_t*, int64_t, const int64_t*, T, TripletMining,  \
                                    bool, T*, T*, T*, T*, void*);
FACEOPS_INSTANTIATE_TRIPLET(float)
FACEOPS_INSTANTIATE_TRIPLET(double)

}  // namespace cuda
}  // namespace faceops
