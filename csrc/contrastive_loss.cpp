#include "kernel_variant.h"  // first: sets the instruction-set variant's namespace
#include "faceops/contrastive_loss.h"

#include "checks.h"

namespace faceops {
namespace cpu {

template <typename T>
void contrastive_loss(const T* a, const T* b, const int64_t* similar, int64_t n, int64_t d,
                      T margin, bool legacy, T* loss, T* da, T* db) {
  detail::check_batch("a", n, d);
  detail::check_finite("a", a, n * d);
  detail::check_finite("b", b, n * d);
  const T inv_n = T(1) / static_cast<T>(n);
  const double loss_sum = detail::reproducible_sum(n, n * d, [&](int64_t i) {
    const T* a_row = a + i * d;
    const T* b_row = b + i * d;
    const T squared_distance = detail::squared_difference(a_row, b_row, d);
    T dterm = 0;
    const T term = contrastive_term(squared_distance, similar[i] != 0, margin, legacy, &dterm);
    // d(1/(2N) term)/da_i = dterm/d(d^2) * 2 (a_i - b_i) / (2N).
    const T scale = dterm * inv_n;
    for (int64_t k = 0; k < d; ++k) {
      const T g = scale * (a_row[k] - b_row[k]);
      if (da) da[i * d + k] = g;
      if (db) db[i * d + k] = -g;
    }
    return static_cast<double>(term);
  });
  *loss = static_cast<T>(loss_sum) * inv_n / T(2);
}

template void contrastive_loss<float>(const float*, const float*, const int64_t*, int64_t, int64_t,
                                      float, bool, float*, float*, float*);
template void contrastive_loss<double>(const double*, const double*, const int64_t*, int64_t,
                                       int64_t, double, bool, double*, double*, double*);

}  // namespace cpu
}  // namespace faceops
