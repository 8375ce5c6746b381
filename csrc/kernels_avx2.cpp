// The CPU kernels compiled for AVX2 + FMA (Haswell, Zen and later), in
// namespace faceops_avx2::cpu; see kernel_variant.h.  No compiler flags:
// the target pragma does it, so any build of these sources (Caffe's too)
// gets this variant.
#define FACEOPS_KERNEL_VARIANT avx2
#include "kernel_variant.h"

#if FACEOPS_CPU_VARIANTS
FACEOPS_KERNEL_VARIANT_NAMESPACE(faceops_avx2)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define faceops faceops_avx2
#include "center_loss.cpp"
#include "contrastive_loss.cpp"
#include "margin_softmax.cpp"
#include "pair_loss.cpp"
#include "triplet_loss.cpp"
#undef faceops
#pragma GCC pop_options
#endif
