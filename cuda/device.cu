// Build and device queries.  With the statically linked runtime,
// cudaGetDeviceCount returns an error (no driver, no device) instead of
// failing to load, so the module imports and reports False everywhere.
#include <cuda_runtime.h>

#include "faceops/faceops.h"

namespace faceops {

bool cuda_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // leave no error behind for the next runtime call
    return false;
  }
  return count > 0;
}

bool built_with_cuda() { return true; }

}  // namespace faceops
