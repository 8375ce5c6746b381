// contrastive_loss.cpp for AVX-512 (F, DQ, BW, VL), in namespace faceops_avx512::cpu (see
// kernel_variant.h).  No compiler flags: kernel_variant.h sets a target pragma.
#define FACEOPS_KERNEL_VARIANT 3
#include "kernel_variant.h"
#if FACEOPS_CPU_VARIANTS
#include "contrastive_loss.cpp"
#endif
