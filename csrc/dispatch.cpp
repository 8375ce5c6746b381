// The public CPU entry points (faceops::cpu, declared in csrc/faceops/*.h):
// each calls the instruction-set variant of the kernels chosen once per
// process -- the fastest this build has and the CPU can run, or the one
// $FACEOPS_CPU_PATH names (baseline, avx2, avx512).  The variants compute the
// same sums with simd.h's vectors one register of their target wide (128, 256
// or 512 bits), so lane partial sums are grouped differently, and AVX2 and
// AVX-512 fuse a * b + c into one FMA: results agree to rounding.
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cpu_features.h"
#include "faceops/faceops.h"

// Every faceops::cpu function: X(name, parameters, arguments).  A function
// declared in csrc/faceops/*.h and missing here is an undefined symbol at
// link (or import) time.
#define FACEOPS_CPU_KERNELS(X)                                                                   \
  X(center_loss,                                                                                 \
    (const T* x, const int64_t* labels, const T* centers, int64_t n, int64_t d,                  \
     int64_t num_classes, T* loss, T* dx, T* dcenters),                                          \
    (x, labels, centers, n, d, num_classes, loss, dx, dcenters))                                 \
  X(center_update_direction,                                                                     \
    (const T* x, const int64_t* labels, const T* centers, int64_t n, int64_t d,                  \
     int64_t num_classes, T* direction),                                                         \
    (x, labels, centers, n, d, num_classes, direction))                                          \
  X(center_update,                                                                               \
    (const T* x, const int64_t* labels, T* centers, int64_t n, int64_t d, int64_t num_classes,   \
     T alpha),                                                                                   \
    (x, labels, centers, n, d, num_classes, alpha))                                              \
  X(contrastive_loss,                                                                            \
    (const T* a, const T* b, const int64_t* similar, int64_t n, int64_t d, T margin,             \
     bool legacy, T* loss, T* da, T* db),                                                        \
    (a, b, similar, n, d, margin, legacy, loss, da, db))                                         \
  X(normalize_rows, (const T* x, int64_t n, int64_t d, T* out, T* norms),                         \
    (x, n, d, out, norms))                                                                       \
  X(normalize_rows_backward,                                                                     \
    (const T* normalized, const T* norms, const T* d_out, int64_t n, int64_t d, T* d_x),         \
    (normalized, norms, d_out, n, d, d_x))                                                       \
  X(margin_softmax_loss,                                                                         \
    (const T* x, const int64_t* labels, const T* weight, int64_t n, int64_t d,                   \
     int64_t num_classes, T scale, T m1, T m2, T m3, T* loss, T* dx, T* dweight),                \
    (x, labels, weight, n, d, num_classes, scale, m1, m2, m3, loss, dx, dweight))                \
  X(margin_softmax_shard_forward,                                                                \
    (const T* x, const int64_t* labels, const T* weight, int64_t n, int64_t d,                   \
     int64_t num_classes, T scale, T m1, T m2, T m3, T* row_max, T* row_sum, T* target_logit),   \
    (x, labels, weight, n, d, num_classes, scale, m1, m2, m3, row_max, row_sum, target_logit))   \
  X(margin_softmax_shard_backward,                                                               \
    (const T* x, const int64_t* labels, const T* weight, int64_t n, int64_t d,                   \
     int64_t num_classes, T scale, T m1, T m2, T m3, const T* log_sum_exp, T loss_scale, T* dx,  \
     T* dweight),                                                                                \
    (x, labels, weight, n, d, num_classes, scale, m1, m2, m3, log_sum_exp, loss_scale, dx,       \
     dweight))                                                                                   \
  X(target_margin_forward,                                                                       \
    (const T* cosine, const int64_t* labels, int64_t n, int64_t num_classes, T m1, T m2, T m3,   \
     T* out),                                                                                    \
    (cosine, labels, n, num_classes, m1, m2, m3, out))                                           \
  X(target_margin_backward,                                                                      \
    (const T* cosine, const int64_t* labels, const T* d_out, int64_t n, int64_t num_classes,     \
     T m1, T m2, T m3, T* d_cosine),                                                             \
    (cosine, labels, d_out, n, num_classes, m1, m2, m3, d_cosine))                               \
  X(pair_loss,                                                                                   \
    (const T* x, const int64_t* labels, int64_t n, int64_t d, const T* theta, T* loss, T* dx,    \
     T* dtheta),                                                                                 \
    (x, labels, n, d, theta, loss, dx, dtheta))                                                  \
  X(triplet_loss,                                                                                \
    (const T* x, const int64_t* labels, int64_t n, int64_t d, T margin,                          \
     faceops::TripletMining mining, bool squared, T* loss, T* dx),                               \
    (x, labels, n, d, margin, mining, squared, loss, dx))                                        \
  X(pair_loss_ref,                                                                               \
    (const T* x, const int64_t* labels, int64_t n, int64_t d, const T* ref,                      \
     const int64_t* ref_labels, int64_t m, const int64_t* self_index, const T* theta, T* loss,   \
     T* count, T* dx, T* dref, T* dtheta),                                                       \
    (x, labels, n, d, ref, ref_labels, m, self_index, theta, loss, count, dx, dref, dtheta))     \
  X(triplet_loss_ref,                                                                            \
    (const T* x, const int64_t* labels, int64_t n, int64_t d, const T* ref,                      \
     const int64_t* ref_labels, int64_t m, const int64_t* self_index, T margin,                  \
     faceops::TripletMining mining, bool squared, T* loss, T* count, T* dx, T* dref),            \
    (x, labels, n, d, ref, ref_labels, m, self_index, margin, mining, squared, loss, count, dx,  \
     dref))                                                                                      \
  X(triplet_loss_explicit,                                                                       \
    (const T* anchor, const T* positive, const T* negative, int64_t n, int64_t d, T margin,      \
     T* loss, T* da, T* dp, T* dn),                                                              \
    (anchor, positive, negative, n, d, margin, loss, da, dp, dn))

#define FACEOPS_DECLARE_KERNEL(name, parameters, arguments) \
  template <typename T>                                      \
  void name parameters;

namespace faceops_baseline {
namespace cpu {
FACEOPS_CPU_KERNELS(FACEOPS_DECLARE_KERNEL)
}  // namespace cpu
}  // namespace faceops_baseline

#if FACEOPS_CPU_VARIANTS
namespace faceops_avx2 {
namespace cpu {
FACEOPS_CPU_KERNELS(FACEOPS_DECLARE_KERNEL)
}  // namespace cpu
}  // namespace faceops_avx2

namespace faceops_avx512 {
namespace cpu {
FACEOPS_CPU_KERNELS(FACEOPS_DECLARE_KERNEL)
}  // namespace cpu
}  // namespace faceops_avx512
#endif

namespace faceops {
namespace {

struct Variant {
  CpuPath path;
  const char* name;
  bool compiled;
};

const Variant kVariants[] = {
    {CpuPath::baseline, "baseline", true},
    {CpuPath::avx2, "avx2", FACEOPS_CPU_VARIANTS != 0},
    {CpuPath::avx512, "avx512", FACEOPS_CPU_VARIANTS != 0},
};

// The CPU features each variant's target pragma enables (kernel_variant.h).
std::vector<std::pair<std::string, bool>> cpu_flags() {
  std::vector<std::pair<std::string, bool>> flags;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();  // also checks that the OS saves the AVX/AVX-512 registers
  flags = {{"avx2", __builtin_cpu_supports("avx2")},
           {"fma", __builtin_cpu_supports("fma")},
           {"avx512f", __builtin_cpu_supports("avx512f")},
           {"avx512dq", __builtin_cpu_supports("avx512dq")},
           {"avx512bw", __builtin_cpu_supports("avx512bw")},
           {"avx512vl", __builtin_cpu_supports("avx512vl")}};
#endif
  return flags;
}

bool cpu_runs(CpuPath path, const std::vector<std::pair<std::string, bool>>& flags) {
  if (path == CpuPath::baseline) return true;
  const size_t needed = path == CpuPath::avx2 ? 2 : 6;  // the first `needed` flags
  if (flags.size() < needed) return false;
  for (size_t k = 0; k < needed; ++k)
    if (!flags[k].second) return false;
  return true;
}

struct Selection {
  CpuFeatures features;
  CpuPath path = CpuPath::baseline;
  std::string error;  // why $FACEOPS_CPU_PATH cannot be honoured
};

Selection select_variant() {
  Selection selection;
  CpuFeatures& features = selection.features;
  features.cpu = cpu_flags();
  const char* requested = std::getenv("FACEOPS_CPU_PATH");
  if (requested != nullptr) features.requested = requested;
#ifdef FACEOPS_NATIVE
  features.path = "native";
  features.compiled = features.supported = {"native"};
  if (!features.requested.empty())
    selection.error = "FACEOPS_CPU_PATH=" + features.requested +
                      ": this faceops was built with FACEOPS_NATIVE=ON and has one path (native); "
                      "unset FACEOPS_CPU_PATH";
  return selection;
#endif
  std::string supported;
  for (const Variant& variant : kVariants) {
    if (!variant.compiled) continue;
    features.compiled.push_back(variant.name);
    if (!cpu_runs(variant.path, features.cpu)) continue;
    features.supported.push_back(variant.name);
    supported += (supported.empty() ? "" : ", ") + std::string(variant.name);
    selection.path = variant.path;  // kVariants runs from slowest to fastest
    features.path = variant.name;
  }
  if (features.requested.empty()) return selection;
  for (const Variant& variant : kVariants)
    if (features.requested == variant.name && variant.compiled &&
        cpu_runs(variant.path, features.cpu)) {
      selection.path = variant.path;
      features.path = variant.name;
      return selection;
    }
  selection.error = "FACEOPS_CPU_PATH=" + features.requested +
                    ": expected one of the paths this build has and this CPU runs (" + supported +
                    "), or unset it";
  return selection;
}

const Selection& selection() {
  static const Selection chosen = select_variant();
  if (!chosen.error.empty()) throw std::runtime_error(chosen.error);
  return chosen;
}

}  // namespace

CpuFeatures cpu_features() { return selection().features; }

namespace detail {
CpuPath cpu_path() { return selection().path; }
}  // namespace detail

namespace cpu {

#if FACEOPS_CPU_VARIANTS
#define FACEOPS_VARIANT_CASES(name, arguments)                         \
  case CpuPath::avx512:                                                \
    return faceops_avx512::cpu::name<T> arguments;                     \
  case CpuPath::avx2:                                                  \
    return faceops_avx2::cpu::name<T> arguments;
#else
#define FACEOPS_VARIANT_CASES(name, arguments)
#endif

#define FACEOPS_DISPATCH_KERNEL(name, parameters, arguments) \
  template <typename T>                                      \
  void name parameters {                                     \
    switch (detail::cpu_path()) {                            \
      FACEOPS_VARIANT_CASES(name, arguments)                 \
      default:                                               \
        return faceops_baseline::cpu::name<T> arguments;     \
    }                                                        \
  }                                                          \
  template decltype(name<float>) name<float>;                \
  template decltype(name<double>) name<double>;

FACEOPS_CPU_KERNELS(FACEOPS_DISPATCH_KERNEL)

}  // namespace cpu
}  // namespace faceops
