// The faceops core interface: every loss, CPU (faceops::cpu) and CUDA
// (faceops::cuda, same signatures plus a stream).  Framework-free: raw
// pointers, sizes and hyperparameters.  Invalid arguments throw
// std::invalid_argument naming the argument.
#pragma once

#include "faceops/center_loss.h"
#include "faceops/contrastive_loss.h"
#include "faceops/margin_softmax.h"
#include "faceops/pair_loss.h"
#include "faceops/triplet_loss.h"

namespace faceops {
// True when this build has CUDA kernels and a CUDA device is present.
bool cuda_available();
// True when this build contains the CUDA kernels.
bool built_with_cuda();
}  // namespace faceops
