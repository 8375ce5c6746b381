// pybind11 adapter over the faceops core.  Arrays arrive as raw addresses
// (python/faceops/_arrays.py checks dtype, shape, layout and device and
// allocates the outputs with the caller's array library); this file only
// dispatches on dtype and device and releases the GIL.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "cpu_features.h"
#include "faceops/faceops.h"

namespace py = pybind11;

namespace {

template <typename T>
T* as_pointer(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "faceops was built without CUDA support: pass NumPy arrays, or rebuild with nvcc "
      "available (FACEOPS_CUDA=ON)");
}

// Runs body.template operator()<T>(on_cuda) for dtype "float32" or "float64".
template <typename Body>
void dispatch(const std::string& dtype, const std::string& device, Body body) {
  const bool on_cuda = device == "cuda";
  if (!on_cuda && device != "cpu") throw py::value_error("device: expected 'cpu' or 'cuda'");
#ifndef FACEOPS_WITH_CUDA
  if (on_cuda) no_cuda();
#endif
  py::gil_scoped_release release;
  if (dtype == "float32") {
    body(float{}, on_cuda);
  } else if (dtype == "float64") {
    body(double{}, on_cuda);
  } else {
    throw py::type_error("dtype: expected float32 or float64, got " + dtype);
  }
}

#ifdef FACEOPS_WITH_CUDA
#define FACEOPS_CALL(on_cuda, fn, stream, ...) \
  ((on_cuda) ? faceops::cuda::fn(__VA_ARGS__, stream) : faceops::cpu::fn(__VA_ARGS__))
#else
#define FACEOPS_CALL(on_cuda, fn, stream, ...) faceops::cpu::fn(__VA_ARGS__)
#endif

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "faceops kernels (CPU and CUDA) behind one interface; use faceops.* instead";
  m.attr("__version__") = FACEOPS_VERSION;
  m.def("cuda_available", &faceops::cuda_available,
        "True when faceops has CUDA kernels and a CUDA device is present");
  m.def("built_with_cuda", &faceops::built_with_cuda);

  m.def("center_loss", [](const std::string& dtype, const std::string& device, uintptr_t x,
                          uintptr_t labels, uintptr_t centers, int64_t n, int64_t d,
                          int64_t num_classes, uintptr_t loss, uintptr_t dx, uintptr_t dcenters,
                          uintptr_t stream) {
    dispatch(dtype, device, [&](auto zero, bool on_cuda) {
      using T = decltype(zero);
      FACEOPS_CALL(on_cuda, center_loss<T>, reinterpret_cast<void*>(stream), as_pointer<const T>(x),
                   as_pointer<const int64_t>(labels), as_pointer<const T>(centers), n, d,
                   num_classes, as_pointer<T>(loss), as_pointer<T>(dx), as_pointer<T>(dcenters));
    });
  });
  m.def("center_update_direction",
        [](const std::string& dtype, const std::string& device, uintptr_t x, uintptr_t labels,
           uintptr_t centers, int64_t n, int64_t d, int64_t num_classes, uintptr_t direction,
           uintptr_t stream) {
          dispatch(dtype, device, [&](auto zero, bool on_cuda) {
            using T = decltype(zero);
            FACEOPS_CALL(on_cuda, center_update_direction<T>, reinterpret_cast<void*>(stream),
                         as_pointer<const T>(x), as_pointer<const int64_t>(labels),
                         as_pointer<const T>(centers), n, d, num_classes,
                         as_pointer<T>(direction));
          });
        });
  m.def("center_update", [](const std::string& dtype, const std::string& device, uintptr_t x,
                            uintptr_t labels, uintptr_t centers, int64_t n, int64_t d,
                            int64_t num_classes, double alpha, uintptr_t stream) {
    dispatch(dtype, device, [&](auto zero, bool on_cuda) {
      using T = decltype(zero);
      FACEOPS_CALL(on_cuda, center_update<T>, reinterpret_cast<void*>(stream),
                   as_pointer<const T>(x), as_pointer<const int64_t>(labels),
                   as_pointer<T>(centers), n, d, num_classes, static_cast<T>(alpha));
    });
  });
  m.def("contrastive_loss", [](const std::string& dtype, const std::string& device, uintptr_t a,
                               uintptr_t b, uintptr_t similar, int64_t n, int64_t d,
                               double margin, bool legacy, uintptr_t loss, uintptr_t da,
                               uintptr_t db, uintptr_t stream) {
    dispatch(dtype, device, [&](auto zero, bool on_cuda) {
      using T = decltype(zero);
      FACEOPS_CALL(on_cuda, contrastive_loss<T>, reinterpret_cast<void*>(stream),
                   as_pointer<const T>(a), as_pointer<const T>(b),
                   as_pointer<const int64_t>(similar), n, d, static_cast<T>(margin), legacy,
                   as_pointer<T>(loss), as_pointer<T>(da), as_pointer<T>(db));
    });
  });
  m.def("margin_softmax_loss",
        [](const std::string& dtype, const std::string& device, uintptr_t x, uintptr_t labels,
           uintptr_t weight, int64_t n, int64_t d, int64_t num_classes, double scale, double m1,
           double m2, double m3, uintptr_t loss, uintptr_t dx, uintptr_t dweight,
           uintptr_t stream) {
          dispatch(dtype, device, [&](auto zero, bool on_cuda) {
            using T = decltype(zero);
            FACEOPS_CALL(on_cuda, margin_softmax_loss<T>, reinterpret_cast<void*>(stream),
                         as_pointer<const T>(x), as_pointer<const int64_t>(labels),
                         as_pointer<const T>(weight), n, d, num_classes, static_cast<T>(scale),
                         static_cast<T>(m1), static_cast<T>(m2), static_cast<T>(m3),
                         as_pointer<T>(loss), as_pointer<T>(dx), as_pointer<T>(dweight));
          });
        });
  m.def("margin_softmax_shard_forward",
        [](const std::string& dtype, const std::string& device, uintptr_t x, uintptr_t labels,
           uintptr_t weight, int64_t n, int64_t d, int64_t num_classes, double scale, double m1,
           double m2, double m3, uintptr_t row_max, uintptr_t row_sum, uintptr_t target_logit,
           uintptr_t stream) {
          dispatch(dtype, device, [&](auto zero, bool on_cuda) {
            using T = decltype(zero);
            FACEOPS_CALL(on_cuda, margin_softmax_shard_forward<T>, reinterpret_cast<void*>(stream),
                         as_pointer<const T>(x), as_pointer<const int64_t>(labels),
                         as_pointer<const T>(weight), n, d, num_classes, static_cast<T>(scale),
                         static_cast<T>(m1), static_cast<T>(m2), static_cast<T>(m3),
                         as_pointer<T>(row_max), as_pointer<T>(row_sum),
                         as_pointer<T>(target_logit));
          });
        });
  m.def("margin_softmax_shard_backward",
        [](const std::string& dtype, const std::string& device, uintptr_t x, uintptr_t labels,
           uintptr_t weight, int64_t n, int64_t d, int64_t num_classes, double scale, double m1,
           double m2, double m3, uintptr_t log_sum_exp, double loss_scale, uintptr_t dx,
           uintptr_t dweight, uintptr_t stream) {
          dispatch(dtype, device, [&](auto zero, bool on_cuda) {
            using T = decltype(zero);
            FACEOPS_CALL(on_cuda, margin_softmax_shard_backward<T>,
                         reinterpret_cast<void*>(stream), as_pointer<const T>(x),
                         as_pointer<const int64_t>(labels), as_pointer<const T>(weight), n, d,
                         num_classes, static_cast<T>(scale), static_cast<T>(m1),
                         static_cast<T>(m2), static_cast<T>(m3), as_pointer<const T>(log_sum_exp),
                         static_cast<T>(loss_scale), as_pointer<T>(dx), as_pointer<T>(dweight));
          });
        });
  m.def("target_margin_forward",
        [](const std::string& dtype, const std::string& device, uintptr_t cosine,
           uintptr_t labels, int64_t n, int64_t num_classes, double m1, double m2, double m3,
           uintptr_t out, uintptr_t stream) {
          dispatch(dtype, device, [&](auto zero, bool on_cuda) {
            using T = decltype(zero);
            FACEOPS_CALL(on_cuda, target_margin_forward<T>, reinterpret_cast<void*>(stream),
                         as_pointer<const T>(cosine), as_pointer<const int64_t>(labels), n,
                         num_classes, static_cast<T>(m1), static_cast<T>(m2),
                         static_cast<T>(m3), as_pointer<T>(out));
          });
        });
  m.def("target_margin_backward",
        [](const std::string& dtype, const std::string& device, uintptr_t cosine,
           uintptr_t labels, uintptr_t d_out, int64_t n, int64_t num_classes, double m1,
           double m2, double m3, uintptr_t d_cosine, uintptr_t stream) {
          dispatch(dtype, device, [&](auto zero, bool on_cuda) {
            using T = decltype(zero);
            FACEOPS_CALL(on_cuda, target_margin_backward<T>, reinterpret_cast<void*>(stream),
                         as_pointer<const T>(cosine), as_pointer<const int64_t>(labels),
                         as_pointer<const T>(d_out), n, num_classes, static_cast<T>(m1),
                         static_cast<T>(m2), static_cast<T>(m3), as_pointer<T>(d_cosine));
          });
        });
  m.def("pair_loss", [](const std::string& dtype, const std::string& device, uintptr_t x,
                        uintptr_t labels, int64_t n, int64_t d, uintptr_t theta, uintptr_t loss,
                        uintptr_t dx, uintptr_t dtheta, uintptr_t stream) {
    dispatch(dtype, device, [&](auto zero, bool on_cuda) {
      using T = decltype(zero);
      FACEOPS_CALL(on_cuda, pair_loss<T>, reinterpret_cast<void*>(stream), as_pointer<const T>(x),
                   as_pointer<const int64_t>(labels), n, d, as_pointer<const T>(theta),
                   as_pointer<T>(loss), as_pointer<T>(dx), as_pointer<T>(dtheta));
    });
  });
  m.def("triplet_loss", [](const std::string& dtype, const std::string& device, uintptr_t x,
                           uintptr_t labels, int64_t n, int64_t d, double margin, int mining,
                           bool squared, uintptr_t loss, uintptr_t dx, uintptr_t stream) {
    if (mining < 0 || mining > 2) throw py::value_error("mining: expected 0, 1 or 2");
    dispatch(dtype, device, [&](auto zero, bool on_cuda) {
      using T = decltype(zero);
      FACEOPS_CALL(on_cuda, triplet_loss<T>, reinterpret_cast<void*>(stream),
                   as_pointer<const T>(x), as_pointer<const int64_t>(labels), n, d,
                   static_cast<T>(margin), static_cast<faceops::TripletMining>(mining), squared,
                   as_pointer<T>(loss), as_pointer<T>(dx));
    });
  });
  m.def("triplet_loss_ref",
        [](const std::string& dtype, const std::string& device, uintptr_t x, uintptr_t labels,
           int64_t n, int64_t d, uintptr_t ref, uintptr_t ref_labels, int64_t m,
           uintptr_t self_index, double margin, int mining, bool squared, uintptr_t loss,
           uintptr_t count, uintptr_t dx, uintptr_t dref, uintptr_t stream) {
          if (mining < 0 || mining > 2) throw py::value_error("mining: expected 0, 1 or 2");
          dispatch(dtype, device, [&](auto zero, bool on_cuda) {
            using T = decltype(zero);
            FACEOPS_CALL(on_cuda, triplet_loss_ref<T>, reinterpret_cast<void*>(stream),
                         as_pointer<const T>(x), as_pointer<const int64_t>(labels), n, d,
                         as_pointer<const T>(ref), as_pointer<const int64_t>(ref_labels), m,
                         as_pointer<const int64_t>(self_index), static_cast<T>(margin),
                         static_cast<faceops::TripletMining>(mining), squared,
                         as_pointer<T>(loss), as_pointer<T>(count), as_pointer<T>(dx),
                         as_pointer<T>(dref));
          });
        });
  m.def("pair_loss_ref",
        [](const std::string& dtype, const std::string& device, uintptr_t x, uintptr_t labels,
           int64_t n, int64_t d, uintptr_t ref, uintptr_t ref_labels, int64_t m,
           uintptr_t self_index, uintptr_t theta, uintptr_t loss, uintptr_t count, uintptr_t dx,
           uintptr_t dref, uintptr_t dtheta, uintptr_t stream) {
          dispatch(dtype, device, [&](auto zero, bool on_cuda) {
            using T = decltype(zero);
            FACEOPS_CALL(on_cuda, pair_loss_ref<T>, reinterpret_cast<void*>(stream),
                         as_pointer<const T>(x), as_pointer<const int64_t>(labels), n, d,
                         as_pointer<const T>(ref), as_pointer<const int64_t>(ref_labels), m,
                         as_pointer<const int64_t>(self_index), as_pointer<const T>(theta),
                         as_pointer<T>(loss), as_pointer<T>(count), as_pointer<T>(dx),
                         as_pointer<T>(dref), as_pointer<T>(dtheta));
          });
        });
  m.def("triplet_loss_explicit",
        [](const std::string& dtype, const std::string& device, uintptr_t anchor,
           uintptr_t positive, uintptr_t negative, int64_t n, int64_t d, double margin,
           uintptr_t loss, uintptr_t da, uintptr_t dp, uintptr_t dn, uintptr_t stream) {
          dispatch(dtype, device, [&](auto zero, bool on_cuda) {
            using T = decltype(zero);
            FACEOPS_CALL(on_cuda, triplet_loss_explicit<T>, reinterpret_cast<void*>(stream),
                         as_pointer<const T>(anchor), as_pointer<const T>(positive),
                         as_pointer<const T>(negative), n, d, static_cast<T>(margin),
                         as_pointer<T>(loss), as_pointer<T>(da), as_pointer<T>(dp),
                         as_pointer<T>(dn));
          });
        });
  m.def("cpu_features", [] {
    const faceops::CpuFeatures features = faceops::cpu_features();
    const auto names = [](const std::vector<std::string>& values) {
      py::list list;
      for (const std::string& value : values) list.append(value);
      return py::tuple(list);
    };
    py::dict cpu;
    for (const auto& flag : features.cpu) cpu[py::str(flag.first)] = flag.second;
    py::dict out;
    out["path"] = features.path;
    out["compiled"] = names(features.compiled);
    out["supported"] = names(features.supported);
    out["cpu"] = cpu;
    out["requested"] = features.requested.empty() ? py::object(py::none()) : py::str(features.requested);
    return out;
  });
}
