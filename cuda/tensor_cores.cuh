// The float tiles' matrix products on the tensor cores (sm_80 and later):
// mma.sync m16n8k8 in TF32, three products per step ("3xTF32": a = a_big +
// a_small with both parts rounded to TF32, a.b ~ a_big.b_big + a_big.b_small
// + a_small.b_big), which keeps the dot products at about float32's accuracy
// where one TF32 product would lose 13 bits of each operand.
//
// Which Gram the float kernels use is FACEOPS_CUDA_GRAM: "fma" (the default:
// FP32 FMA micro-tiles) or "tf32x3" (opt-in until it has been checked on a
// GPU; cuda/emulation checks it on the CPU).  double always runs on FMA.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace faceops {
namespace cuda {
namespace detail {

enum class Gram { kFma, kTf32x3 };

// The Gram the float kernels launch with (FACEOPS_CUDA_GRAM, read at every
// call so that a process may switch between calls).
inline Gram float_gram() {
  const char* value = std::getenv("FACEOPS_CUDA_GRAM");
  if (value == nullptr || *value == '\0' || std::strcmp(value, "fma") == 0) return Gram::kFma;
  if (std::strcmp(value, "tf32x3") == 0) return Gram::kTf32x3;
  throw std::invalid_argument(std::string("FACEOPS_CUDA_GRAM: expected 'fma' or 'tf32x3', got '") +
                              value + "'");
}
template <typename T>
inline Gram gram_for() {
  return sizeof(T) == sizeof(float) ? float_gram() : Gram::kFma;
}
// The tensor-core Gram where T has one (float), else FMA: what a kernel of T
// is instantiated with for a call whose gram_for<T>() is kTf32x3.
template <typename T>
constexpr Gram kTensorCoreGram = sizeof(T) == sizeof(float) ? Gram::kTf32x3 : Gram::kFma;
// fma or tensor_cores, the two instances of one kernel, by the call's Gram.
template <typename Kernel>
inline Kernel pick_gram(Gram gram, Kernel fma, Kernel tensor_cores) {
  return gram == Gram::kTf32x3 ? tensor_cores : fma;
}

// x rounded to TF32 (10 mantissa bits, to nearest, ties away from zero), as
// the bits of a float: cvt.rna.tf32.f32.
__device__ __forceinline__ uint32_t to_tf32(float x) {
#if defined(FACEOPS_CUDA_EMULATION)
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  if ((bits & 0x7f800000u) == 0x7f800000u) return bits;  // inf and NaN as they are
  return (bits + 0x1000u) & 0xffffe000u;
#elif defined(__CUDA_ARCH__)
  uint32_t bits;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(bits) : "f"(x));
  return bits;
#else
  return 0;  // nvcc's host pass: never called
#endif
}

// The float whose bits are `bits` (a TF32 value is one).
__device__ __forceinline__ float tf32_value(uint32_t bits) {
  float x;
#if defined(__CUDA_ARCH__) && !defined(FACEOPS_CUDA_EMULATION)
  x = __uint_as_float(bits);
#else
  std::memcpy(&x, &bits, sizeof x);
#endif
  return x;
}

// d = A B + c for one warp: A 16 x 8 (row major), B 8 x 8 (column major), c and
// d 16 x 8, each lane holding the PTX ISA's fragments (g = lane / 4,
// t = lane % 4): a = A[g][t], A[g + 8][t], A[g][t + 4], A[g + 8][t + 4];
// b = B[t][g], B[t + 4][g]; c, d = C[g][2t], C[g][2t + 1], C[g + 8][2t],
// C[g + 8][2t + 1].  Every lane of the warp must call it.
__device__ __forceinline__ void mma_tf32_m16n8k8(float (&d)[4], const uint32_t (&a)[4],
                                                 const uint32_t (&b)[2], const float (&c)[4]) {
#if defined(FACEOPS_CUDA_EMULATION)
  emulated_mma_tf32_m16n8k8(d, a, b, c);
#elif defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#else
  __trap();  // the library is built for sm_80 and later only
#endif
#endif
}

// c += A B for one warp at about float32's accuracy: each operand split into
// a TF32 part and the TF32 rounding of the rest, and the three products that
// matter summed, the small ones first (A_small B_small, 2^-22 of the product,
// is left out).  a and b: float fragments in mma_tf32_m16n8k8's layout.
__device__ __forceinline__ void mma_3xtf32(float (&c)[4], const float (&a)[4],
                                           const float (&b)[2]) {
  uint32_t a_big[4], a_small[4], b_big[2], b_small[2];
  for (int i = 0; i < 4; ++i) {
    a_big[i] = to_tf32(a[i]);
    a_small[i] = to_tf32(a[i] - tf32_value(a_big[i]));
  }
  for (int i = 0; i < 2; ++i) {
    b_big[i] = to_tf32(b[i]);
    b_small[i] = to_tf32(b[i] - tf32_value(b_big[i]));
  }
  mma_tf32_m16n8k8(c, a_small, b_big, c);
  mma_tf32_m16n8k8(c, a_big, b_small, c);
  mma_tf32_m16n8k8(c, a_big, b_big, c);
}

}  // namespace detail
}  // namespace cuda
}  // namespace faceops
