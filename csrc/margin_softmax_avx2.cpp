// margin_softmax.cpp for AVX2 + FMA, in namespace faceops_avx2::cpu (see
// kernel_variant.h).  No compiler flags: kernel_variant.h sets a target pragma.
#define FACEOPS_KERNEL_VARIANT 2
#include "kernel_variant.h"
#if FACEOPS_CPU_VARIANTS
#include "margin_softmax.cpp"
#endif
