// Linked into builds without the CUDA kernels.
#include "faceops/faceops.h"

namespace faceops {
bool cuda_available() { return false; }
bool built_with_cuda() { return false; }
}  // namespace faceops
