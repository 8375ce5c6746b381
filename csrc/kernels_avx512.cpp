// The CPU kernels compiled for AVX-512 F, DQ, BW and VL (Skylake-SP, Ice
// Lake, Zen 4 and later), in namespace faceops_avx512::cpu; see
// kernel_variant.h.  No compiler flags: the target pragma does it, so any
// build of these sources (Caffe's too) gets this variant.
#define FACEOPS_KERNEL_VARIANT avx512
#include "kernel_variant.h"

#if FACEOPS_CPU_VARIANTS
FACEOPS_KERNEL_VARIANT_NAMESPACE(faceops_avx512)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#define faceops faceops_avx512
#include "center_loss.cpp"
#include "contrastive_loss.cpp"
#include "margin_softmax.cpp"
#include "pair_loss.cpp"
#include "triplet_loss.cpp"
#undef faceops
#pragma GCC pop_options
#endif
