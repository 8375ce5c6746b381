#include "kernel_variant.h"  // first: sets the instruction-set variant's namespace
#include "faceops/pair_loss.h"

#include "checks.h"
#include "pairwise_tiles.h"

namespace faceops {
namespace cpu {

template <typename T>
void pair_loss(const T* x, const int64_t* labels, int64_t n, int64_t d, const T* theta, T* loss,
               T* dx, T* dtheta) {
  detail::check_batch("x", n, d);
  detail::check_finite("x", x, n * d);
  const T theta_value = detail::check_theta(theta);
  const detail::GramRows<T> gram(x, n, d);
  const double pair_count = static_cast<double>(n) * static_cast<double>(n - 1);
  const T inv_pairs = pair_count > 0 ? T(1.0 / pair_count) : T(0);
  // Per-thread partial sums, added in thread order (reproducible).
  std::vector<double> loss_partial(omp_get_max_threads(), 0.0), dsquared_partial(loss_partial);
  detail::for_each_symmetric_tile<T>(n, d, dx, [&](detail::DistanceTile<T>& tile, int64_t i0,
                                                   int64_t rows, int64_t j0, int64_t cols,
                                                   T* own_dx) {
    tile.compute(gram, i0, rows, j0, cols);
    T* coef = tile.coefficients();
    double tile_loss = 0, tile_dsquared = 0;
    bool any_active = false;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t label = labels[i0 + r];
      const T* distances = tile.distance_row(r);
      T* coef_row = coef + r * detail::kTileRows;
      T row_loss = 0, row_dsquared = 0, row_active = 0;
#pragma omp simd reduction(+ : row_loss, row_dsquared, row_active)
      for (int64_t c = 0; c < cols; ++c) {
        T dterm = 0;
        const T term = pair_term(distances[c], labels[j0 + c] == label, theta_value, &dterm);
        const bool other = i0 + r != j0 + c;
        row_loss += other ? term : T(0);
        row_dsquared += other ? dterm : T(0);
        row_active += other && dterm != T(0) ? T(1) : T(0);
        // Both ordered pairs (i, j) and (j, i) carry dterm; dD/dx_i = 2 (x_i - x_j).
        coef_row[c] = other ? T(4) * dterm * inv_pairs : T(0);
      }
      tile_loss += row_loss;
      tile_dsquared += row_dsquared;
      any_active = any_active || row_active > T(0);
    }
    // An off-diagonal tile stands for its mirror image too.
    const double copies = i0 == j0 ? 1.0 : 2.0;
    loss_partial[omp_get_thread_num()] += copies * tile_loss;
    dsquared_partial[omp_get_thread_num()] += copies * tile_dsquared;
    if (own_dx && any_active) tile.accumulate_gradient(x, i0, rows, j0, cols, own_dx, i0 != j0);
  });
  const double loss_sum = std::accumulate(loss_partial.begin(), loss_partial.end(), 0.0);
  const double dloss_dsquared_sum =
      std::accumulate(dsquared_partial.begin(), dsquared_partial.end(), 0.0);
  *loss = static_cast<T>(loss_sum * inv_pairs);
  if (dtheta) *dtheta = static_cast<T>(-dloss_dsquared_sum * inv_pairs);
}

template <typename T>
void pair_loss_ref(const T* x, const int64_t* labels, int64_t n, int64_t d, const T* ref,
                   const int64_t* ref_labels, int64_t m, const int64_t* self_index,
                   const T* theta, T* loss, T* count, T* dx, T* dref, T* dtheta) {
  detail::check_batch("x", n, d);
  detail::check_batch("ref", m, d);
  detail::check_finite("x", x, n * d);
  detail::check_finite("ref", ref, m * d);
  const T theta_value = detail::check_theta(theta);
  const int64_t own_copies = detail::check_self_index(self_index, n, m, labels, ref_labels);
  const detail::GramRows<T> anchors(x, n, d), candidates(ref, m, d, true);
  const double pair_count = static_cast<double>(n) * static_cast<double>(m) - static_cast<double>(own_copies);
  const T inv_pairs = pair_count > 0 ? T(1.0 / pair_count) : T(0);
  // Only the gradients asked for are written: no m x d buffer when dref is null.
  std::vector<double> loss_partial(omp_get_max_threads(), 0.0), dsquared_partial(loss_partial);
  detail::for_each_cross_tile<T>(n, m, d, dx, dref, [&](detail::DistanceTile<T>& tile, int64_t i0,
                                                        int64_t rows, int64_t j0, int64_t cols,
                                                        T* own_dx, T* own_dref) {
    tile.compute(anchors, i0, rows, candidates, j0, cols);
    T* coef = tile.coefficients();
    double tile_loss = 0, tile_dsquared = 0;
    bool any_active = false;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t label = labels[i0 + r];
      const int64_t own_column = self_index && self_index[i0 + r] >= 0 ? self_index[i0 + r] - j0 : -1;
      const T* distances = tile.distance_row(r);
      T* coef_row = coef + r * detail::kTileRows;
      T row_loss = 0, row_dsquared = 0, row_active = 0;
#pragma omp simd reduction(+ : row_loss, row_dsquared, row_active)
      for (int64_t c = 0; c < cols; ++c) {
        T dterm = 0;
        const T term = pair_term(distances[c], ref_labels[j0 + c] == label, theta_value, &dterm);
        const bool other = c != own_column;
        row_loss += other ? term : T(0);
        row_dsquared += other ? dterm : T(0);
        row_active += other && dterm != T(0) ? T(1) : T(0);
        // One ordered pair (anchor, candidate); dD/dx_a = 2 (x_a - ref_j).
        coef_row[c] = other ? T(2) * dterm * inv_pairs : T(0);
      }
      tile_loss += row_loss;
      tile_dsquared += row_dsquared;
      any_active = any_active || row_active > T(0);
    }
    loss_partial[omp_get_thread_num()] += tile_loss;
    dsquared_partial[omp_get_thread_num()] += tile_dsquared;
    if ((own_dx || own_dref) && any_active) tile.accumulate_gradient(x, i0, rows, ref, j0, cols, own_dx, own_dref);
  });
  const double loss_sum = std::accumulate(loss_partial.begin(), loss_partial.end(), 0.0);
  const double dloss_dsquared_sum =
      std::accumulate(dsquared_partial.begin(), dsquared_partial.end(), 0.0);
  if (loss) *loss = static_cast<T>(loss_sum * inv_pairs);
  if (count) *count = static_cast<T>(pair_count);
  if (dtheta) *dtheta = static_cast<T>(-dloss_dsquared_sum * inv_pairs);
}

template void pair_loss<float>(const float*, const int64_t*, int64_t, int64_t, const float*, float*,
                               float*, float*);
template void pair_loss<double>(const double*, const int64_t*, int64_t, int64_t, const double*,
                                double*, double*, double*);
template void pair_loss_ref<float>(const float*, const int64_t*, int64_t, int64_t, const float*,
                                   const int64_t*, int64_t, const int64_t*, const float*, float*, float*,
                                   float*, float*, float*);
template void pair_loss_ref<double>(const double*, const int64_t*, int64_t, int64_t, const double*,
                                    const int64_t*, int64_t, const int64_t*, const double*, double*,
                                    double*, double*, double*, double*);

}  // namespace cpu
}  // namespace faceops
