#pragma once
// NVTX stubs for the emulated build (cuda/emulation/run.sh).
inline int nvtxRangePushA(const char*) { return 0; }
inline int nvtxRangePop() { return 0; }
