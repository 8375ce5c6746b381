#include "kernel_variant.h"  // first: sets the instruction-set variant's namespace
#include "faceops/margin_softmax.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "checks.h"
#include "gemm_block.h"

namespace faceops {
namespace cpu {
namespace {

// A logit tile is kRowBlock rows x kClassBlock classes; each thread streams
// class blocks (static schedule: reproducible for a fixed thread count).
constexpr int64_t kRowBlock = 64;
constexpr int64_t kClassBlock = 128;
// Leading dimensions padded off powers of two, which alias in the cache.
constexpr int64_t kTileLd = kClassBlock + 16;

inline int64_t padded_ld(int64_t d) { return d % 64 == 0 ? d + 16 : d; }

// out row = row / max(norm, kNormFloor); returns the unfloored norm.  The
// sum of squares is the vectorised dot; row_norm recomputes it only where it
// overflowed.  out may alias row.
template <typename T>
T normalize_row(const T* row, int64_t d, T* out) {
  const RowNorm<T> norm = row_norm(row, d, detail::dot(row, row, d));
  write_normalized_row(row, 0, 1, d, norm, out);
  return norm.norm;
}

struct Margin {
  double scale, m1, m2, m3;
};

// Per-thread buffers for one class block: its normalised rows (count x d),
// their transpose (d x kTileLd, the right operand of the cosine product),
// norms, and the logit and gradient tiles.
template <typename T>
struct ClassBlock {
  explicit ClassBlock(int64_t d)
      : rows(kClassBlock * padded_ld(d)), transposed(d * kTileLd), norms(kClassBlock),
        tile(kRowBlock * kTileLd), gradient_t(kClassBlock * kRowBlock), ld(padded_ld(d)) {}

  void load(const T* weight, int64_t first, int64_t classes, int64_t d) {
    c0 = first;
    count = classes;
    for (int64_t j = 0; j < count; ++j) {
      norms[j] = normalize_row(weight + (c0 + j) * d, d, &rows[j * ld]);
      for (int64_t k = 0; k < d; ++k) transposed[k * kTileLd + j] = rows[j * ld + k];
    }
  }

  // tile(r, j) = logit of row i0 + r and class c0 + j; target_logit[i] and
  // target_derivative[i] (dpsi/dc) are written for the rows whose target lies
  // in this block.
  void logits(const T* x_hat, int64_t ldx, const int64_t* labels, int64_t i0, int64_t row_count,
              int64_t d, const Margin& margin, T* target_logit, T* target_derivative) {
    for (int64_t r = 0; r < row_count; ++r) std::fill_n(&tile[r * kTileLd], count, T(0));
    detail::gemm_accumulate<T>(row_count, count, d, x_hat + i0 * ldx, ldx, transposed.data(),
                               kTileLd, tile.data(), kTileLd);
    const T scale = T(margin.scale);
    for (int64_t r = 0; r < row_count; ++r) {
      T* row = &tile[r * kTileLd];
      const int64_t target = labels[i0 + r] - c0;
      T derivative = T(1);
      if (target >= 0 && target < count)
        row[target] = margin_target_cosine(row[target], T(margin.m1), T(margin.m2), T(margin.m3),
                                           &derivative);
      for (int64_t j = 0; j < count; ++j) row[j] *= scale;
      if (target >= 0 && target < count) {
        if (target_logit) target_logit[i0 + r] = row[target];
        if (target_derivative) target_derivative[i0 + r] = derivative;
      }
    }
  }

  // The logits of this block are kept in `cache`, class-major: class c0 + j's
  // logits of rows i0.. lie at cache[(c0 + j) * ld_cache + i0 ..].
  void store_tile(T* cache, int64_t ld_cache, int64_t i0, int64_t row_count) const {
    for (int64_t j = 0; j < count; ++j)
      for (int64_t r = 0; r < row_count; ++r)
        cache[(c0 + j) * ld_cache + i0 + r] = tile[r * kTileLd + j];
  }
  void load_tile(const T* cache, int64_t ld_cache, int64_t i0, int64_t row_count) {
    for (int64_t j = 0; j < count; ++j)
      for (int64_t r = 0; r < row_count; ++r)
        tile[r * kTileLd + j] = cache[(c0 + j) * ld_cache + i0 + r];
  }

  std::vector<T> rows, transposed, norms, tile, gradient_t;
  int64_t ld, c0 = 0, count = 0;
};

// Running log-sum-exp of each row over the class blocks one thread saw.
struct RowLogSumExp {
  explicit RowLogSumExp(int64_t n)
      : max(n, -std::numeric_limits<double>::infinity()), sum(n, 0.0) {}
  void add(int64_t i, double block_max, double block_sum) {
    if (block_max > max[i]) {
      sum[i] = sum[i] * std::exp(max[i] - block_max) + block_sum;
      max[i] = block_max;
    } else {
      sum[i] += block_sum * std::exp(block_max - max[i]);
    }
  }
  std::vector<double> max, sum;
};

}  // namespace

template <typename T>
void normalize_rows(const T* x, int64_t n, int64_t d, T* out, T* norms) {
  detail::check_batch("x", n, d);
#pragma omp parallel for schedule(static) if (n * d > detail::kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const T norm = normalize_row(x + i * d, d, out + i * d);
    if (norms) norms[i] = norm;
  }
}

template <typename T>
void normalize_rows_backward(const T* normalized, const T* norms, const T* d_out, int64_t n,
                             int64_t d, T* d_x) {
  detail::check_batch("normalized", n, d);
#pragma omp parallel for schedule(static) if (n * d > detail::kParallelWork)
  for (int64_t i = 0; i < n; ++i)
    normalized_row_gradient(normalized + i * d, norms[i], d_out + i * d, d, d_x + i * d);
}

namespace {
// A batch normalised once for every pass: x̂ (rows padded to ldx) and the
// unfloored norms.
template <typename T>
struct NormalizedBatch {
  NormalizedBatch(const T* x, int64_t rows, int64_t dim)
      : n(rows), d(dim), ldx(padded_ld(dim)), x_hat(rows * ldx), x_norm(rows) {
    for (int64_t i = 0; i < n; ++i) x_norm[i] = normalize_row(x + i * d, d, &x_hat[i * ldx]);
  }
  int64_t n, d, ldx;
  std::vector<T> x_hat, x_norm;
};

// The classes a call walks in blocks of kClassBlock, with the labels indexing
// them (a label outside [0, num_classes) has no target among them).
template <typename T>
struct ClassWalk {
  const T* weight;
  const int64_t* labels;
  int64_t num_classes;
  Margin margin;
  int64_t blocks() const { return (num_classes + kClassBlock - 1) / kClassBlock; }
  int64_t block_classes(int64_t b) const {
    return std::min(kClassBlock, num_classes - b * kClassBlock);
  }
};

// One team for both passes: on a loaded machine each wake-up of the team can
// cost a scheduler tick, and beside a BLAS call whose threads still spin it
// costs more; below about 10^6 multiply-adds per pass one thread is faster.
inline int team_size(int64_t n, int64_t num_classes, int64_t d) {
  return n * num_classes * d > (int64_t(1) << 24) ? omp_get_max_threads() : 1;
}

// Pass 1, called by every thread of a team (orphaned worksharing): each row's
// running log-sum-exp over the class blocks this thread takes, into `mine`;
// the target logit and dpsi/dc of the rows whose target lies in a block (when
// non-null); with `cache`, each block's logits (ClassBlock::store_tile).
template <typename T>
void log_sum_exp_pass(const NormalizedBatch<T>& batch, const ClassWalk<T>& walk,
                      ClassBlock<T>& block, RowLogSumExp& mine, T* target_logit,
                      T* target_derivative, T* cache) {
  const int64_t n = batch.n, d = batch.d;
#pragma omp for schedule(static)
  for (int64_t b = 0; b < walk.blocks(); ++b) {
    block.load(walk.weight, b * kClassBlock, walk.block_classes(b), d);
    for (int64_t i0 = 0; i0 < n; i0 += kRowBlock) {
      const int64_t row_count = std::min(kRowBlock, n - i0);
      block.logits(batch.x_hat.data(), batch.ldx, walk.labels, i0, row_count, d, walk.margin,
                   target_logit, target_derivative);
      if (cache) block.store_tile(cache, d, i0, row_count);
      for (int64_t r = 0; r < row_count; ++r) {
        const T* row = &block.tile[r * kTileLd];
        const T row_max = *std::max_element(row, row + block.count);
        T row_sum = 0;
        for (int64_t j = 0; j < block.count; ++j) row_sum += std::exp(row[j] - row_max);
        mine.add(i0 + r, row_max, row_sum);
      }
    }
  }
}

// Row i's (max, sum of exp(logit - max)) over every thread's part, in thread order.
inline void merge_row(const std::vector<RowLogSumExp>& partial, int64_t i, double* row_max,
                      double* row_sum) {
  *row_max = -std::numeric_limits<double>::infinity();
  *row_sum = 0;
  for (const RowLogSumExp& p : partial) *row_max = std::max(*row_max, p.max[i]);
  for (const RowLogSumExp& p : partial)
    if (p.sum[i] > 0) *row_sum += p.sum[i] * std::exp(p.max[i] - *row_max);
}

// Pass 2, called by every thread of a team: G = dL/dc per tile, from the
// logits (read back from `cache`, or recomputed, which also writes dpsi/dc of
// the rows whose target lies in the block into target_derivative);
// dx̂ += G ŵ into this thread's dx_hat (when non-null), and dweight's rows of
// each block = the normalisation backward of Gᵀ x̂ (when non-null).
// loss_scale multiplies every G (1/n for a mean over the batch).
template <typename T>
void gradient_pass(const NormalizedBatch<T>& batch, const ClassWalk<T>& walk,
                   ClassBlock<T>& block, const double* log_sum_exp, T* target_derivative,
                   T loss_scale, const T* cache, std::vector<T>* dx_hat, T* dweight) {
  const int64_t n = batch.n, d = batch.d, ldx = batch.ldx;
  const T scale = T(walk.margin.scale);
  std::vector<T> dw_hat(dweight ? kClassBlock * d : 0);
  if (dx_hat) dx_hat->assign(n * d, T(0));
#pragma omp for schedule(static)
  for (int64_t b = 0; b < walk.blocks(); ++b) {
    block.load(walk.weight, b * kClassBlock, walk.block_classes(b), d);
    std::fill(dw_hat.begin(), dw_hat.end(), T(0));
    for (int64_t i0 = 0; i0 < n; i0 += kRowBlock) {
      const int64_t row_count = std::min(kRowBlock, n - i0);
      if (cache)
        block.load_tile(cache, d, i0, row_count);
      else
        block.logits(batch.x_hat.data(), ldx, walk.labels, i0, row_count, d, walk.margin,
                     nullptr, target_derivative);
      for (int64_t r = 0; r < row_count; ++r) {
        T* row = &block.tile[r * kTileLd];
        const T lse = T(log_sum_exp[i0 + r]);
        const int64_t target = walk.labels[i0 + r] - block.c0;
        // Read only by the thread whose block holds the target (which wrote it).
        const T derivative =
            target >= 0 && target < block.count ? target_derivative[i0 + r] : T(1);
        for (int64_t j = 0; j < block.count; ++j)
          row[j] = margin_softmax_cosine_gradient(row[j], lse, j == target, derivative, scale,
                                                  loss_scale);
        for (int64_t j = 0; j < block.count; ++j) block.gradient_t[j * kRowBlock + r] = row[j];
      }
      if (dx_hat)
        detail::gemm_accumulate<T>(row_count, d, block.count, block.tile.data(), kTileLd,
                                   block.rows.data(), block.ld, dx_hat->data() + i0 * d, d);
      if (dweight)
        detail::gemm_accumulate<T>(block.count, d, row_count, block.gradient_t.data(), kRowBlock,
                                   batch.x_hat.data() + i0 * ldx, ldx, dw_hat.data(), d);
    }
    if (dweight)
      for (int64_t j = 0; j < block.count; ++j)
        normalized_row_gradient(&block.rows[j * block.ld], block.norms[j], &dw_hat[j * d], d,
                                dweight + (block.c0 + j) * d);
  }
}

// dx = the normalisation backward of the threads' dx̂ parts, added in thread order.
template <typename T>
void finish_dx(const NormalizedBatch<T>& batch, const std::vector<std::vector<T>>& dx_hat_partial,
               T* dx) {
  const int64_t d = batch.d;
  std::vector<T> dx_hat_row(d);
  for (int64_t i = 0; i < batch.n; ++i) {
    std::fill(dx_hat_row.begin(), dx_hat_row.end(), T(0));
    for (const std::vector<T>& p : dx_hat_partial)
      for (int64_t k = 0; k < d; ++k) dx_hat_row[k] += p[i * d + k];
    normalized_row_gradient(&batch.x_hat[i * batch.ldx], batch.x_norm[i], dx_hat_row.data(), d,
                            dx + i * d);
  }
}

inline void check_margin_softmax_shapes(int64_t n, int64_t d, int64_t num_classes,
                                        const Margin& margin) {
  detail::check_batch("x", n, d);
  detail::require(num_classes > 0, "weight: expected at least one class (C > 0)");
  detail::check_margin(margin.scale, margin.m1, margin.m2, margin.m3);
}
template <typename T>
void check_margin_softmax_values(const T* x, const T* weight, int64_t n, int64_t d,
                                 int64_t num_classes) {
  detail::check_finite("x", x, n * d);
  detail::check_finite("weight", weight, num_classes * d);
}

// A shard's labels: its own classes' indices, or -1 for a row whose class
// lives on another shard.
inline void check_shard_labels(const int64_t* labels, int64_t n, int64_t num_classes) {
  for (int64_t i = 0; i < n; ++i)
    detail::require(labels[i] >= -1 && labels[i] < num_classes,
                    "labels: label " + std::to_string(labels[i]) + " at index " +
                        std::to_string(i) + " is out of range; expected -1 (another shard) or " +
                        "0 <= label < " + std::to_string(num_classes));
}

}  // namespace

template <typename T>
void margin_softmax_loss(const T* x, const int64_t* labels, const T* weight, int64_t n, int64_t d,
                         int64_t num_classes, T scale, T m1, T m2, T m3, T* loss, T* dx,
                         T* dweight) {
  const Margin margin{double(scale), double(m1), double(m2), double(m3)};
  check_margin_softmax_shapes(n, d, num_classes, margin);
  detail::check_labels_in_range("labels", labels, n, num_classes);
  check_margin_softmax_values(x, weight, n, d, num_classes);

  const NormalizedBatch<T> batch(x, n, d);
  const ClassWalk<T> walk{weight, labels, num_classes, margin};
  const int threads = team_size(n, num_classes, d);
  const bool backward = dx || dweight;

  // With dweight wanted and n <= d, a block's 128 x n logits fit in its own
  // 128 x d rows of dweight, which get their gradient only after pass 2 has
  // read them back: pass 2 then skips recomputing the logits (3 products of
  // n C d instead of 4) with no memory beyond the output.
  T* cache = dweight && n <= d ? dweight : nullptr;
  std::vector<RowLogSumExp> partial(threads, RowLogSumExp(n));
  std::vector<T> target_logit(n), target_derivative(n);
  std::vector<double> log_sum_exp(n);
  std::vector<std::vector<T>> dx_hat_partial(dx ? threads : 0);
#pragma omp parallel num_threads(threads)
  {
    ClassBlock<T> block(d);
    log_sum_exp_pass(batch, walk, block, partial[omp_get_thread_num()], target_logit.data(),
                     target_derivative.data(), cache);
#pragma omp single
    {
      double loss_sum = 0;
      for (int64_t i = 0; i < n; ++i) {
        double row_max, row_sum;
        merge_row(partial, i, &row_max, &row_sum);
        log_sum_exp[i] = row_max + std::log(row_sum);
        loss_sum += log_sum_exp[i] - double(target_logit[i]);
      }
      *loss = static_cast<T>(loss_sum / double(n));
    }
    if (backward)
      gradient_pass(batch, walk, block, log_sum_exp.data(), target_derivative.data(),
                    T(1) / T(n), cache, dx ? &dx_hat_partial[omp_get_thread_num()] : nullptr,
                    dweight);
  }
  if (dx) finish_dx(batch, dx_hat_partial, dx);
}

template <typename T>
void margin_softmax_shard_forward(const T* x, const int64_t* labels, const T* weight, int64_t n,
                                  int64_t d, int64_t num_classes, T scale, T m1, T m2, T m3,
                                  T* row_max, T* row_sum, T* target_logit) {
  const Margin margin{double(scale), double(m1), double(m2), double(m3)};
  check_margin_softmax_shapes(n, d, num_classes, margin);
  check_shard_labels(labels, n, num_classes);
  check_margin_softmax_values(x, weight, n, d, num_classes);

  const NormalizedBatch<T> batch(x, n, d);
  const ClassWalk<T> walk{weight, labels, num_classes, margin};
  const int threads = team_size(n, num_classes, d);
  std::vector<RowLogSumExp> partial(threads, RowLogSumExp(n));
  std::fill_n(target_logit, n, T(0));
#pragma omp parallel num_threads(threads)
  {
    ClassBlock<T> block(d);
    log_sum_exp_pass(batch, walk, block, partial[omp_get_thread_num()], target_logit,
                     static_cast<T*>(nullptr), static_cast<T*>(nullptr));
  }
  for (int64_t i = 0; i < n; ++i) {
    double max, sum;
    merge_row(partial, i, &max, &sum);
    row_max[i] = static_cast<T>(max);
    // The sum relative to the maximum as stored in T, so that the pair stays consistent.
    row_sum[i] = static_cast<T>(sum * std::exp(max - double(row_max[i])));
  }
}

template <typename T>
void margin_softmax_shard_backward(const T* x, const int64_t* labels, const T* weight, int64_t n,
                                   int64_t d, int64_t num_classes, T scale, T m1, T m2, T m3,
                                   const T* log_sum_exp, T loss_scale, T* dx, T* dweight) {
  const Margin margin{double(scale), double(m1), double(m2), double(m3)};
  check_margin_softmax_shapes(n, d, num_classes, margin);
  check_shard_labels(labels, n, num_classes);
  check_margin_softmax_values(x, weight, n, d, num_classes);
  detail::check_finite("log_sum_exp", log_sum_exp, n);
  detail::require(std::isfinite(double(loss_scale)),
                  "loss_scale: expected a finite number, got " + std::to_string(loss_scale));

  const NormalizedBatch<T> batch(x, n, d);
  const ClassWalk<T> walk{weight, labels, num_classes, margin};
  const int threads = team_size(n, num_classes, d);
  const std::vector<double> lse(log_sum_exp, log_sum_exp + n);
  std::vector<T> target_derivative(n, T(1));
  std::vector<std::vector<T>> dx_hat_partial(dx ? threads : 0);
#pragma omp parallel num_threads(threads)
  {
    ClassBlock<T> block(d);
    gradient_pass(batch, walk, block, lse.data(), target_derivative.data(), loss_scale,
                  static_cast<const T*>(nullptr),
                  dx ? &dx_hat_partial[omp_get_thread_num()] : nullptr, dweight);
  }
  if (dx) finish_dx(batch, dx_hat_partial, dx);
}

template <typename T>
void target_margin_forward(const T* cosine, const int64_t* labels, int64_t n,
                           int64_t num_classes, T m1, T m2, T m3, T* out) {
  detail::check_batch("cosine", n, num_classes);
  detail::check_margin(1.0, m1, m2, m3);
  detail::check_labels_in_range("labels", labels, n, num_classes);
  detail::check_finite("cosine", cosine, n * num_classes);
  if (out != cosine) std::copy(cosine, cosine + n * num_classes, out);
  for (int64_t i = 0; i < n; ++i) {
    T derivative;
    const int64_t at = i * num_classes + labels[i];
    out[at] = margin_target_cosine(cosine[at], m1, m2, m3, &derivative);
  }
}

template <typename T>
void target_margin_backward(const T* cosine, const int64_t* labels, const T* d_out, int64_t n,
                            int64_t num_classes, T m1, T m2, T m3, T* d_cosine) {
  detail::check_batch("cosine", n, num_classes);
  detail::check_margin(1.0, m1, m2, m3);
  detail::check_labels_in_range("labels", labels, n, num_classes);
  detail::check_finite("cosine", cosine, n * num_classes);
  detail::check_finite("d_out", d_out, n * num_classes);
  if (d_cosine != d_out) std::copy(d_out, d_out + n * num_classes, d_cosine);
  for (int64_t i = 0; i < n; ++i) {
    T derivative;
    const int64_t at = i * num_classes + labels[i];
    margin_target_cosine(cosine[at], m1, m2, m3, &derivative);
    d_cosine[at] = d_out[at] * derivative;
  }
}

#define FACEOPS_INSTANTIATE_MARGIN(T)                                                           \
  template void normalize_rows<T>(const T*, int64_t, int64_t, T*, T*);                          \
  template void normalize_rows_backward<T>(const T*, const T*, const T*, int64_t, int64_t, T*); \
  template void margin_softmax_loss<T>(const T*, const int64_t*, const T*, int64_t, int64_t,    \
                                       int64_t, T, T, T, T, T*, T*, T*);                        \
  template void margin_softmax_shard_forward<T>(const T*, const int64_t*, const T*, int64_t,     \
                                                int64_t, int64_t, T, T, T, T, T*, T*, T*);      \
  template void margin_softmax_shard_backward<T>(const T*, const int64_t*, const T*, int64_t,    \
                                                 int64_t, int64_t, T, T, T, T, const T*, T, T*, \
                                                 T*);                                           \
  template void target_margin_forward<T>(const T*, const int64_t*, int64_t, int64_t, T, T, T,   \
                                         T*);                                                   \
  template void target_margin_backward<T>(const T*, const int64_t*, const T*, int64_t, int64_t, \
                                          T, T, T, T*);
FACEOPS_INSTANTIATE_MARGIN(float)
FACEOPS_INSTANTIATE_MARGIN(double)

}  // namespace cpu
}  // namespace faceops
