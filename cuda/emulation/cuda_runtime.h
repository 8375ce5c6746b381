// A CPU emulation of the part of the CUDA runtime that faceops' kernels use,
// so that their logic (tiling, masking, mining, barriers) is tested where no
// GPU exists: one std::thread per CUDA thread, the blocks of a grid one after
// another (in launch order, or in reverse when g_reverse_blocks is set, so
// that check_kernels can show a result not to depend on the order in which
// blocks run), __shared__ as function statics, atomics under one mutex,
// streams ignored.  A missing __syncthreads shows up as a data race under
// -fsanitize=thread.  It says nothing about speed, warp-level behaviour or
// memory limits.  Used by run.sh only; never part of the library.
#pragma once
#include <atomic>
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;
typedef struct CUstream_st* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorNoDevice = 100 };
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : "error";
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* c) {
  *c = 0;
  return cudaErrorNoDevice;
}
inline long g_live_allocations = 0;
inline cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  *p = std::malloc(bytes);
  // poison: kernels must not rely on fresh memory being zero
  std::memset(*p, 0xA5, bytes);
  ++g_live_allocations;
  return cudaSuccess;
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  std::free(p);
  --g_live_allocations;
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t) {
  std::memset(p, v, bytes);
  return cudaSuccess;
}

inline std::barrier<>* g_barrier = nullptr;
inline void __syncthreads() { g_barrier->arrive_and_wait(); }
inline std::atomic<int> g_barrier_or{0};
inline int __syncthreads_or(int predicate) {
  if (predicate) g_barrier_or.fetch_or(1);
  g_barrier->arrive_and_wait();
  const int result = g_barrier_or.load();
  g_barrier->arrive_and_wait();  // all have read it
  if (threadIdx.x == 0) g_barrier_or.store(0);
  g_barrier->arrive_and_wait();  // reset before the next call sets it
  return result;
}
inline std::mutex g_atomic_mutex;
template <typename T>
T atomicAdd(T* p, T v) {
  std::lock_guard<std::mutex> l(g_atomic_mutex);
  T old = *p;
  *p = old + v;
  return old;
}
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp,
                                    unsigned long long v) {
  std::lock_guard<std::mutex> l(g_atomic_mutex);
  unsigned long long old = *p;
  if (old == cmp) *p = v;
  return old;
}
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  std::lock_guard<std::mutex> l(g_atomic_mutex);
  unsigned long long old = *p;
  if (v < old) *p = v;
  return old;
}

// The lanes of each warp of the running block (32 consecutive threads), for
// the warp-wide instructions: one barrier per warp.
inline std::vector<std::barrier<>*>* g_warp_barriers = nullptr;
inline void emulated_syncwarp() { (*g_warp_barriers)[threadIdx.x / 32]->arrive_and_wait(); }

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 as the PTX ISA defines
// it: each lane hands in its fragments (layout in cuda/tensor_cores.cuh),
// the warp's A (16 x 8) and B (8 x 8) are assembled from all 32 lanes, and
// each lane gets its four elements of D = A B + C.  The operands' low 13 bits
// are ignored, as by the tensor cores; the products of TF32 values are exact
// in float, summed here in k order.
inline long g_mma_calls = 0;  // warp-wide mma instructions run (lane 0 counts)
inline void emulated_mma_tf32_m16n8k8(float (&d)[4], const unsigned (&a)[4],
                                      const unsigned (&b)[2], const float (&c)[4]) {
  constexpr int kMaxWarps = 32;
  if (threadIdx.x % 32 == 0) {
    std::lock_guard<std::mutex> l(g_atomic_mutex);
    ++g_mma_calls;
  }
  static unsigned a_lanes[kMaxWarps][32][4], b_lanes[kMaxWarps][32][2];
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int i = 0; i < 4; ++i) a_lanes[warp][lane][i] = a[i];
  for (int i = 0; i < 2; ++i) b_lanes[warp][lane][i] = b[i];
  emulated_syncwarp();
  auto value = [](unsigned bits) {
    bits &= 0xffffe000u;
    float x;
    std::memcpy(&x, &bits, sizeof x);
    return x;
  };
  // A[m][k] sits in lane 4 (m % 8) + k % 4, register (m >= 8) + 2 (k >= 4);
  // B[k][n] in lane 4 n + k % 4, register (k >= 4).
  auto a_at = [&](int m, int k) {
    return value(a_lanes[warp][4 * (m % 8) + k % 4][(m >= 8) + 2 * (k >= 4)]);
  };
  auto b_at = [&](int k, int n) { return value(b_lanes[warp][4 * n + k % 4][k >= 4]); };
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int m = g + 8 * (i / 2), n = 2 * t + i % 2;
    float sum = c[i];
    for (int k = 0; k < 8; ++k) sum += a_at(m, k) * b_at(k, n);
    d[i] = sum;
  }
  emulated_syncwarp();  // all have read the fragments before the next call writes them
}

inline long g_launches = 0;
inline bool g_reverse_blocks = false;
template <typename... Params, typename... Args>
void emulated_launch(void (*kernel)(Params...), unsigned grid, unsigned threads, Args&&... args) {
  ++g_launches;
  std::barrier<> barrier(threads);
  g_barrier = &barrier;
  std::vector<std::barrier<>*> warp_barriers;
  for (unsigned first = 0; first < threads; first += 32)
    warp_barriers.push_back(new std::barrier<>(threads - first < 32 ? threads - first : 32));
  g_warp_barriers = &warp_barriers;
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      threadIdx.x = t;
      blockDim = dim3(threads);
      gridDim = dim3(grid);
      for (unsigned b = 0; b < grid; ++b) {
        blockIdx.x = g_reverse_blocks ? grid - 1 - b : b;
        kernel(static_cast<Params>(args)...);
        barrier.arrive_and_wait();  // the next block reuses the "shared" statics
      }
    });
  }
  for (auto& th : pool) th.join();
  for (auto* warp_barrier : warp_barriers) delete warp_barrier;
}
