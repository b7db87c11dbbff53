// emu_model.cu — self-test of the emulated CUDA device's execution model and of the rules a real GPU
// enforces. Every expectation comes from CUDA's documented semantics (CUDA C++ Programming Guide:
// built-in variables, __syncthreads, warp shuffle/vote functions, launch limits and shared-memory
// limits; PTX ISA shfl.sync for the exact source-lane rule), not from the emulator's code.
//
//   test_emu_model                 runs every check, one line each, then "N passed, M failed"
//   test_emu_model --race-demo     launches a kernel with a missing __syncthreads (exits 0 itself;
//                                  under TSan it must be reported as a data race)
//   test_emu_model --race-demo-fixed   the same kernel with the barrier (no report under TSan)
//
// Under ThreadSanitizer the normal run also runs both demos as child processes and checks that the
// racy one is reported ("data race", exit status 66) and the fixed one is not.
//
// Emulator-only (it uses fc_emu:: controls): under nvcc the whole file is an empty main.
#if defined(FASTCONV_EMU)

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "../../cuda/seams.cuh"
#include "../runtime.h"

namespace {

// ---- reporting ------------------------------------------------------------------------------------------

int g_passed = 0, g_failed = 0;

void check(bool ok, const std::string& name, const std::string& detail = std::string()) {
  (ok ? g_passed : g_failed) += 1;
  // The detail (what was got) is printed for failures only.
  const bool show = !ok && !detail.empty();
  std::printf("%s %s%s%s\n", ok ? "PASS" : "FAIL", name.c_str(), show ? ": " : "", show ? detail.c_str() : "");
  std::fflush(stdout);
}

const char* err_name(cudaError_t e) { return cudaGetErrorName(e); }

std::string got_want(cudaError_t got, cudaError_t want) {
  return std::string("got ") + err_name(got) + ", want " + err_name(want);
}

// ---- device buffers -------------------------------------------------------------------------------------

template <typename T>
T* dalloc(size_t n) {
  void* p = nullptr;
  if (cudaMalloc(&p, n * sizeof(T)) != cudaSuccess) {
    std::fprintf(stderr, "emu_model: cudaMalloc failed\n");
    std::exit(2);
  }
  return static_cast<T*>(p);
}
template <typename T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> h(n);
  if (cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost) != cudaSuccess) {
    std::fprintf(stderr, "emu_model: cudaMemcpy failed\n");
    std::exit(2);
  }
  return h;
}
template <typename T>
void to_device(T* d, const std::vector<T>& h) {
  if (cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice) != cudaSuccess) {
    std::fprintf(stderr, "emu_model: cudaMemcpy failed\n");
    std::exit(2);
  }
}

bool contains(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }
std::string src_line(int line) { return "emu_model.cu:" + std::to_string(line); }

// ======================================================================================================
// 1. Coordinates
// ======================================================================================================

__global__ void coords_kernel(unsigned* out, int* count) {
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned nt = blockDim.x * blockDim.y * blockDim.z;
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  unsigned* o = out + 12 * (size_t(b) * nt + t);
  o[0] = threadIdx.x, o[1] = threadIdx.y, o[2] = threadIdx.z;
  o[3] = blockIdx.x, o[4] = blockIdx.y, o[5] = blockIdx.z;
  o[6] = blockDim.x, o[7] = blockDim.y, o[8] = blockDim.z;
  o[9] = gridDim.x, o[10] = gridDim.y, o[11] = gridDim.z;
  count[size_t(b) * nt + t] += 1;
}

void test_coordinates(dim3 g, dim3 b) {
  const size_t n = size_t(g.x) * g.y * g.z * b.x * b.y * b.z;
  unsigned* out = dalloc<unsigned>(12 * n);
  int* count = dalloc<int>(n);
  cudaMemset(count, 0, n * sizeof(int));
  const cudaError_t e = FC_LAUNCH(g, b, 0, 0, coords_kernel)(out, count);
  const auto h = to_host(out, 12 * n);
  const auto c = to_host(count, n);
  size_t bad = 0, bad_count = 0;
  for (unsigned bz = 0; bz < g.z; ++bz)
    for (unsigned by = 0; by < g.y; ++by)
      for (unsigned bx = 0; bx < g.x; ++bx)
        for (unsigned tz = 0; tz < b.z; ++tz)
          for (unsigned ty = 0; ty < b.y; ++ty)
            for (unsigned tx = 0; tx < b.x; ++tx) {
              const size_t blk = bx + size_t(g.x) * (by + size_t(g.y) * bz);
              const size_t thr = tx + size_t(b.x) * (ty + size_t(b.y) * tz);
              const size_t i = blk * (size_t(b.x) * b.y * b.z) + thr;
              const unsigned want[12] = {tx, ty, tz, bx, by, bz, b.x, b.y, b.z, g.x, g.y, g.z};
              if (std::memcmp(&h[12 * i], want, sizeof(want)) != 0) ++bad;
              if (c[i] != 1) ++bad_count;
            }
  char name[160];
  std::snprintf(name, sizeof(name), "coords grid (%u,%u,%u) block (%u,%u,%u): built-ins and each thread once", g.x,
                g.y, g.z, b.x, b.y, b.z);
  check(e == cudaSuccess && bad == 0 && bad_count == 0, name,
        e != cudaSuccess ? err_name(e)
                         : (bad || bad_count ? std::to_string(bad) + " wrong coordinates, " +
                                                   std::to_string(bad_count) + " threads not run exactly once"
                                             : ""));
  cudaFree(out);
  cudaFree(count);
}

// ======================================================================================================
// 2. __syncthreads is a barrier
// ======================================================================================================

// Each thread writes its slot, syncs, reads its neighbour's; twice, so the second phase also shows
// that nobody overwrote a slot before every neighbour had read the first value.
__global__ void rotate_kernel(int* out) {
  FC_SHARED(int, s, [512]);
  const int n = static_cast<int>(blockDim.x);
  const int t = static_cast<int>(threadIdx.x);
  const int base = static_cast<int>(blockIdx.x) * 1000000;
  s[t] = base + 3 * t + 1;
  __syncthreads();
  const int a = s[(t + 1) % n];
  __syncthreads();
  s[t] = 2 * a;
  __syncthreads();
  out[blockIdx.x * n * 2 + t] = a;
  out[blockIdx.x * n * 2 + n + t] = s[(t + n - 1) % n];
}

// Multi-phase tree reduction (log2(n) barriers) of exact integers; then a second reduction in the
// same buffer (the max), which reads values of the first only if a barrier is missing.
__global__ void reduce_kernel(const int* in, int* out) {
  FC_SHARED(int, s, [1024]);
  const unsigned t = threadIdx.x, n = blockDim.x;
  const int v = in[blockIdx.x * n + t];
  s[t] = v;
  __syncthreads();
  for (unsigned stride = n / 2; stride > 0; stride /= 2) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  const int sum = s[0];
  __syncthreads();
  s[t] = v;
  __syncthreads();
  for (unsigned stride = n / 2; stride > 0; stride /= 2) {
    if (t < stride) s[t] = max(s[t], s[t + stride]);
    __syncthreads();
  }
  if (t == 0) {
    out[2 * blockIdx.x] = sum;
    out[2 * blockIdx.x + 1] = s[0];
  }
}

void test_barrier() {
  {
    const int n = 256, blocks = 3;
    int* out = dalloc<int>(size_t(blocks) * n * 2);
    const cudaError_t e = FC_LAUNCH(blocks, n, 0, 0, rotate_kernel)(out);
    const auto h = to_host(out, size_t(blocks) * n * 2);
    int bad = 0;
    for (int b = 0; b < blocks; ++b)
      for (int t = 0; t < n; ++t) {
        const auto val = [&](int i) { return b * 1000000 + 3 * i + 1; };
        const int a_t = val((t + 1) % n);
        const int a_prev = val(((t + n - 1) % n + 1) % n);  // the neighbour's a, doubled
        bad += h[b * n * 2 + t] != a_t;
        bad += h[b * n * 2 + n + t] != 2 * a_prev;
      }
    check(e == cudaSuccess && bad == 0, "__syncthreads: write shared[t], sync, read shared[(t+1)%n] (256 threads, 3 phases)",
          e != cudaSuccess ? err_name(e) : (bad ? std::to_string(bad) + " wrong values" : ""));
    cudaFree(out);
  }
  {
    const int n = 1024, blocks = 2;
    std::vector<int> in(size_t(blocks) * n);
    uint32_t x = 12345;
    for (int& v : in) {
      x = x * 1664525u + 1013904223u;
      v = static_cast<int>(x >> 12) - (1 << 19);
    }
    int* din = dalloc<int>(in.size());
    int* dout = dalloc<int>(2 * blocks);
    to_device(din, in);
    const cudaError_t e = FC_LAUNCH(blocks, n, 0, 0, reduce_kernel)(din, dout);
    const auto h = to_host(dout, 2 * blocks);
    bool ok = e == cudaSuccess;
    for (int b = 0; b < blocks; ++b) {
      int sum = 0, mx = in[size_t(b) * n];
      for (int t = 0; t < n; ++t) sum += in[size_t(b) * n + t], mx = std::max(mx, in[size_t(b) * n + t]);
      ok = ok && h[2 * b] == sum && h[2 * b + 1] == mx;
    }
    check(ok, "__syncthreads: 10-phase tree reduction (sum, then max in the same buffer), 1024 threads, exact");
    cudaFree(din);
    cudaFree(dout);
  }
}

// ======================================================================================================
// 3. Shared memory starts poisoned, fresh per block; 4. cudaMalloc'd memory starts poisoned
// ======================================================================================================

// tflags[(block * n + t) * 2 + k], 0 = as expected: k=0 this thread's static float slot is all 0xFF
// bytes (a NaN), k=1 its dynamic float slot. bflags[block * 2 + k] (thread 0): k=0 a static
// odd-sized byte array is all 0xFF, k=1 a static double array is NaN. Afterwards every block
// overwrites all of it, so a block that saw another block's shared memory would find these values.
__global__ void smem_poison_kernel(int* tflags, int* bflags) {
  FC_SHARED(float, st, [128]);
  FC_SHARED(unsigned char, bytes, [37]);
  FC_SHARED(double, dbl, [4]);
  FC_DYNAMIC_SHARED(16, float, dyn);
  const unsigned t = threadIdx.x, b = blockIdx.x, n = blockDim.x;
  const float sv = st[t], dv = dyn[t];
  tflags[(b * n + t) * 2 + 0] = !(__float_as_uint(sv) == 0xffffffffu && isnan(sv));
  tflags[(b * n + t) * 2 + 1] = !(__float_as_uint(dv) == 0xffffffffu && isnan(dv));
  if (t == 0) {
    int bad_bytes = 0, bad_dbl = 0;
    for (int i = 0; i < 37; ++i) bad_bytes |= bytes[i] != 0xff;
    for (int i = 0; i < 4; ++i) bad_dbl |= !(isnan(dbl[i]) && __double_as_longlong(dbl[i]) == -1LL);
    bflags[b * 2 + 0] = bad_bytes;
    bflags[b * 2 + 1] = bad_dbl;
  }
  __syncthreads();
  st[t] = 42.0f;
  dyn[t] = 43.0f;
  if (t == 0) {
    for (int i = 0; i < 37; ++i) bytes[i] = 7;
    for (int i = 0; i < 4; ++i) dbl[i] = 1.0;
  }
}

void test_shared_poison() {
  const int n = 128, blocks = 3;
  int* tflags = dalloc<int>(size_t(blocks) * n * 2);
  int* bflags = dalloc<int>(size_t(blocks) * 2);
  const cudaError_t e = FC_LAUNCH(blocks, n, n * sizeof(float), 0, smem_poison_kernel)(tflags, bflags);
  const auto tf = to_host(tflags, size_t(blocks) * n * 2);
  const auto bf = to_host(bflags, size_t(blocks) * 2);
  for (int b = 0; b < blocks; ++b) {
    int bad_static = 0, bad_dyn = 0;
    for (int t = 0; t < n; ++t) bad_static += tf[(b * n + t) * 2] != 0, bad_dyn += tf[(b * n + t) * 2 + 1] != 0;
    const std::string blk = "block " + std::to_string(b) + (b ? " (after block 0 wrote it)" : "");
    check(e == cudaSuccess && bad_static == 0 && bf[b * 2] == 0 && bf[b * 2 + 1] == 0,
          "static shared memory starts as 0xFF bytes / NaN, " + blk,
          e != cudaSuccess ? err_name(e) : std::to_string(bad_static) + " float slots, bytes " + std::to_string(bf[b * 2]) +
                                               ", doubles " + std::to_string(bf[b * 2 + 1]));
    check(e == cudaSuccess && bad_dyn == 0, "dynamic shared memory starts as 0xFF bytes / NaN, " + blk,
          e != cudaSuccess ? err_name(e) : std::to_string(bad_dyn) + " float slots not poisoned");
  }
  cudaFree(tflags);
  cudaFree(bflags);
}

void test_malloc_poison() {
  bool ok = true;
  for (int round = 0; round < 2; ++round) {
    unsigned char* p = dalloc<unsigned char>(1001);
    const auto h = to_host(p, 1001);
    for (unsigned char c : h) ok = ok && c == 0xff;
    float* f = reinterpret_cast<float*>(p);
    const auto hf = to_host(f, 250);
    for (float v : hf) ok = ok && std::isnan(v);
    cudaMemset(p, 0, 1001);  // the next allocation (likely the same memory) must be poisoned again
    cudaFree(p);
  }
  check(ok, "cudaMalloc'd memory starts as 0xFF bytes (float NaN), also when reallocated");
}

// ======================================================================================================
// 5. Warp shuffles and votes
// ======================================================================================================

// The shuffle's source lane as the PTX ISA defines shfl.sync (mode 0 idx, 1 up, 2 down, 3 bfly/xor),
// with the c operand that CUDA's __shfl_*_sync pass: ((32 - width) << 8) | 0x1f, and for up
// (32 - width) << 8. A source outside the lane's segment (up/down) or in a later segment (xor) is
// not in range, and the lane gets its own value.
int ptx_shfl_source(int mode, int lane, int b, int width) {
  const int c = mode == 1 ? ((32 - width) << 8) : (((32 - width) << 8) | 0x1f);
  const int bval = b & 31, cval = c & 31, segmask = (c >> 8) & 31;
  const int max_lane = (lane & segmask) | (cval & ~segmask);
  const int min_lane = lane & segmask;
  int j = lane;
  bool in_range = false;
  switch (mode) {
    case 0: j = min_lane | (bval & ~segmask); in_range = j <= max_lane; break;
    case 1: j = lane - bval; in_range = j >= max_lane; break;
    case 2: j = lane + bval; in_range = j <= max_lane; break;
    case 3: j = lane ^ bval; in_range = j <= max_lane; break;
  }
  return in_range ? j : lane;
}

struct ShflCase {
  int mode;       // 0 __shfl_sync, 1 __shfl_up_sync, 2 __shfl_down_sync, 3 __shfl_xor_sync
  int arg;        // srcLane / delta / laneMask, plus lane_mult * lane
  int lane_mult;
  int width;
};
constexpr ShflCase kShflCases[] = {
    // idx: constant source, out-of-range source (taken modulo width), per-lane source, widths 8/16
    {0, 5, 0, 32}, {0, 37, 0, 32}, {0, -1, 0, 32}, {0, 3, 5, 32}, {0, 3, 0, 8}, {0, 1, 1, 8}, {0, 19, 0, 16},
    {0, 0, 3, 16}, {0, 2, 0, 1},
    // up: lanes whose source falls before their segment keep their own value
    {1, 0, 0, 32}, {1, 1, 0, 32}, {1, 3, 0, 32}, {1, 31, 0, 32}, {1, 2, 0, 8}, {1, 5, 0, 16}, {1, 1, 0, 2},
    {1, 33, 0, 32} /* PTX uses b[4:0]: delta 33 acts as 1 */,
    // down: lanes whose source falls past their segment keep their own value
    {2, 1, 0, 32}, {2, 5, 0, 32}, {2, 31, 0, 32}, {2, 4, 0, 16}, {2, 3, 0, 8}, {2, 7, 0, 8},
    // xor: within the segment, and laneMask >= width (earlier segment readable, later one not)
    {3, 1, 0, 32}, {3, 2, 0, 32}, {3, 4, 0, 32}, {3, 8, 0, 32}, {3, 16, 0, 32}, {3, 31, 0, 32}, {3, 3, 0, 8},
    {3, 8, 0, 8}, {3, 24, 0, 8}, {3, 17, 0, 16}, {3, 1, 0, 16},
};
constexpr int kNumShflCases = static_cast<int>(sizeof(kShflCases) / sizeof(kShflCases[0]));

template <typename T>
T lane_value(unsigned i);
template <>
int lane_value<int>(unsigned i) { return static_cast<int>(7 * i + 3); }
template <>
float lane_value<float>(unsigned i) { return 0.5f * static_cast<float>(i) + 0.25f; }
template <>
double lane_value<double>(unsigned i) { return 1e10 * static_cast<double>(i) + 0.125; }

template <typename T>
__global__ void shfl_kernel(T* out) {
  const unsigned tid = threadIdx.x, lane = tid % 32;
  const T v = lane_value<T>(tid);
  for (int c = 0; c < kNumShflCases; ++c) {
    const ShflCase k = kShflCases[c];
    const int arg = k.arg + k.lane_mult * static_cast<int>(lane);
    T r{};
    switch (k.mode) {
      case 0: r = __shfl_sync(0xffffffffu, v, arg, k.width); break;
      case 1: r = __shfl_up_sync(0xffffffffu, v, static_cast<unsigned>(arg), k.width); break;
      case 2: r = __shfl_down_sync(0xffffffffu, v, static_cast<unsigned>(arg), k.width); break;
      case 3: r = __shfl_xor_sync(0xffffffffu, v, arg, k.width); break;
    }
    out[c * blockDim.x + tid] = r;
  }
}

template <typename T>
void test_shuffles(const char* tname) {
  const int n = 64;  // two warps: lanes are threadIdx.x % 32, each warp shuffles on its own
  T* out = dalloc<T>(size_t(kNumShflCases) * n);
  const cudaError_t e = FC_LAUNCH(1, n, 0, 0, shfl_kernel<T>)(out);
  const auto h = to_host(out, size_t(kNumShflCases) * n);
  static const char* kModeName[4] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"};
  for (int mode = 0; mode < 4; ++mode) {
    std::string cases, first_bad;
    int bad = 0;
    for (int c = 0; c < kNumShflCases; ++c) {
      const ShflCase k = kShflCases[c];
      if (k.mode != mode) continue;
      cases += (cases.empty() ? "" : " ") + std::to_string(k.arg) + (k.lane_mult ? "+" + std::to_string(k.lane_mult) + "*lane" : "") +
               "/w" + std::to_string(k.width);
      for (int tid = 0; tid < n; ++tid) {
        const int lane = tid % 32, warp = tid / 32;
        const int src = ptx_shfl_source(mode, lane, k.arg + k.lane_mult * lane, k.width);
        const T want = lane_value<T>(static_cast<unsigned>(warp * 32 + src));
        if (std::memcmp(&h[size_t(c) * n + tid], &want, sizeof(T)) != 0) {
          if (bad++ == 0)
            first_bad = "arg " + std::to_string(k.arg) + " width " + std::to_string(k.width) + " thread " +
                        std::to_string(tid) + ": want lane " + std::to_string(src) + "'s value";
        }
      }
    }
    check(e == cudaSuccess && bad == 0, std::string(tname) + " " + kModeName[mode] + " (arg/width: " + cases + ")",
          e != cudaSuccess ? err_name(e) : (bad ? std::to_string(bad) + " wrong, first " + first_bad : ""));
  }
  cudaFree(out);
}

// Hand-derived spot checks of the documented out-of-segment rules (int, 32 threads).
__global__ void shfl_spot_kernel(int* out) {
  const int lane = static_cast<int>(threadIdx.x);
  const int v = 1000 + lane;
  out[0 * 32 + lane] = __shfl_up_sync(0xffffffffu, v, 2, 8);     // lanes 0,1,8,9,16,17,24,25 keep v
  out[1 * 32 + lane] = __shfl_down_sync(0xffffffffu, v, 3, 16);  // lanes 13-15, 29-31 keep v
  out[2 * 32 + lane] = __shfl_xor_sync(0xffffffffu, v, 8, 8);    // odd 8-groups read the group before
  out[3 * 32 + lane] = __shfl_sync(0xffffffffu, v, 10, 8);       // source 10 % 8 = 2 of each group
}

void test_shuffle_spots() {
  int* out = dalloc<int>(4 * 32);
  const cudaError_t e = FC_LAUNCH(1, 32, 0, 0, shfl_spot_kernel)(out);
  const auto h = to_host(out, 4 * 32);
  bool up = e == cudaSuccess, down = up, x = up, idx = up;
  for (int l = 0; l < 32; ++l) {
    up = up && h[l] == ((l % 8) < 2 ? 1000 + l : 1000 + l - 2);
    down = down && h[32 + l] == ((l % 16) >= 13 ? 1000 + l : 1000 + l + 3);
    x = x && h[64 + l] == ((l & 8) ? 1000 + l - 8 : 1000 + l);
    idx = idx && h[96 + l] == 1000 + (l & ~7) + 2;
  }
  check(up, "__shfl_up_sync(delta 2, width 8): a lane whose source is before its segment gets its own value");
  check(down, "__shfl_down_sync(delta 3, width 16): a lane whose source is past its segment gets its own value");
  check(x, "__shfl_xor_sync(laneMask 8, width 8): later group -> own value, earlier group -> that lane's value");
  check(idx, "__shfl_sync(srcLane 10, width 8): the source is srcLane modulo width within the segment");
  cudaFree(out);
}

__global__ void vote_kernel(unsigned* out) {
  const unsigned tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  unsigned* o = out + tid * 10;
  o[0] = __ballot_sync(0xffffffffu, lane % 3 == 0);
  o[1] = __ballot_sync(0xffffffffu, 0);
  o[2] = __ballot_sync(0xffffffffu, 7);  // any non-zero predicate is true
  o[3] = static_cast<unsigned>(__any_sync(0xffffffffu, lane == 17 + warp));
  o[4] = static_cast<unsigned>(__any_sync(0xffffffffu, 0));
  o[5] = static_cast<unsigned>(__all_sync(0xffffffffu, 1));
  o[6] = static_cast<unsigned>(__all_sync(0xffffffffu, lane != 30));
  if (lane < 16) {  // a partial mask; lanes 16-31 execute no vote at all
    o[7] = __ballot_sync(0x0000ffffu, lane & 1);
    o[8] = static_cast<unsigned>(__all_sync(0x0000ffffu, 1));
    o[9] = static_cast<unsigned>(__any_sync(0x0000ffffu, lane == 20));
  } else {
    o[7] = o[8] = o[9] = 0xdeadu;
  }
}

void test_votes() {
  const int n = 64;
  unsigned* out = dalloc<unsigned>(size_t(n) * 10);
  const cudaError_t e = FC_LAUNCH(1, n, 0, 0, vote_kernel)(out);
  const auto h = to_host(out, size_t(n) * 10);
  unsigned every3 = 0;
  for (int l = 0; l < 32; l += 3) every3 |= 1u << l;
  bool ballot = e == cudaSuccess, any = ballot, all = ballot, partial = ballot;
  for (int t = 0; t < n; ++t) {
    const unsigned* o = &h[size_t(t) * 10];
    ballot = ballot && o[0] == every3 && o[1] == 0 && o[2] == 0xffffffffu;
    any = any && o[3] == 1 && o[4] == 0;
    all = all && o[5] == 1 && o[6] == 0;
    if (t % 32 < 16) partial = partial && o[7] == 0x0000aaaau && o[8] == 1 && o[9] == 0;
    else partial = partial && o[7] == 0xdeadu && o[8] == 0xdeadu && o[9] == 0xdeadu;
  }
  check(ballot, "__ballot_sync: bit l set iff lane l's predicate is non-zero (0x49249249, 0, 0xffffffff)");
  check(any, "__any_sync: 1 iff some lane's predicate is non-zero");
  check(all, "__all_sync: 1 iff every lane's predicate is non-zero");
  check(partial, "__ballot_sync/__all_sync/__any_sync with mask 0x0000ffff, lanes 16-31 idle: 0xaaaa, 1, 0");
  cudaFree(out);
}

// Warp 0: lanes 0-15 shuffle with mask 0x0000ffff, lanes 16-31 do nothing. Warp 1: the two halves
// shuffle with disjoint masks at different call sites, each half on its own.
__global__ void partial_shfl_kernel(int* out) {
  const int tid = static_cast<int>(threadIdx.x), lane = tid % 32;
  const int v = 100 + tid;
  int* o = out + tid * 3;
  if (lane < 16) {
    o[0] = __shfl_xor_sync(0x0000ffffu, v, 1);
    o[1] = __shfl_down_sync(0x0000ffffu, v, 1, 16);
    o[2] = __shfl_sync(0x0000ffffu, v, 15 - lane);
  } else if (tid >= 32) {
    o[0] = __shfl_xor_sync(0xffff0000u, v, 2);
    o[1] = __shfl_up_sync(0xffff0000u, v, 1, 16);
    o[2] = __shfl_sync(0xffff0000u, v, 47 - lane);
  } else {
    o[0] = o[1] = o[2] = -1;
  }
}

void test_partial_mask() {
  const int n = 64;
  int* out = dalloc<int>(size_t(n) * 3);
  const cudaError_t e = FC_LAUNCH(1, n, 0, 0, partial_shfl_kernel)(out);
  const auto h = to_host(out, size_t(n) * 3);
  bool lo = e == cudaSuccess, hi = lo;
  for (int t = 0; t < n; ++t) {
    const int lane = t % 32, w = t - lane;
    const int* o = &h[size_t(t) * 3];
    if (lane < 16) {
      lo = lo && o[0] == 100 + w + (lane ^ 1) && o[1] == 100 + w + (lane == 15 ? lane : lane + 1) &&
           o[2] == 100 + w + 15 - lane;
    } else if (t >= 32) {
      hi = hi && o[0] == 100 + w + (lane ^ 2) && o[1] == 100 + w + (lane == 16 ? lane : lane - 1) &&
           o[2] == 100 + w + 47 - lane;
    } else {
      lo = lo && o[0] == -1 && o[1] == -1 && o[2] == -1;
    }
  }
  check(lo, "shuffles with mask 0x0000ffff (lanes 16-31 idle): xor 1, down 1 (width 16), idx 15-lane");
  check(hi, "two halves of a warp shuffling with disjoint masks 0x0000ffff / 0xffff0000 at different sites");
  cudaFree(out);
}

// ======================================================================================================
// 6. Launch limits and faults
// ======================================================================================================

__global__ void noop_kernel(int* p) {
  if (p != nullptr) p[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}

void test_launch_limits() {
  struct Bad {
    dim3 grid, block;
    const char* what;
  };
  const Bad bad[] = {
      {dim3(1), dim3(1025), "1025 threads per block"},
      {dim3(1), dim3(33, 32, 1), "block (33,32,1) = 1056 threads"},
      {dim3(1), dim3(1, 1, 65), "block z = 65"},
      {dim3(1), dim3(1, 1025, 1), "block y = 1025"},
      {dim3(1, 65536, 1), dim3(1), "grid y = 65536"},
      {dim3(1, 1, 65536), dim3(1), "grid z = 65536"},
      {dim3(0), dim3(32), "grid x = 0"},
  };
  for (const Bad& b : bad) {
    const cudaError_t e = FC_LAUNCH(b.grid, b.block, 0, 0, noop_kernel)(nullptr);
    const cudaError_t last = cudaGetLastError();
    const cudaError_t again = cudaGetLastError();
    const cudaError_t sync = cudaDeviceSynchronize();
    check(e == cudaErrorInvalidConfiguration && last == cudaErrorInvalidConfiguration && again == cudaSuccess &&
              sync == cudaSuccess,
          std::string(b.what) + " -> cudaErrorInvalidConfiguration, reported once by cudaGetLastError, not sticky",
          std::string("launch ") + err_name(e) + ", cudaGetLastError " + err_name(last) + " then " + err_name(again) +
              ", cudaDeviceSynchronize " + err_name(sync));
  }
  int* p = dalloc<int>(1);
  cudaMemset(p, 0, sizeof(int));
  const cudaError_t e = FC_LAUNCH(1, 1, 0, 0, noop_kernel)(p);
  check(e == cudaSuccess && to_host(p, 1)[0] == 1, "a valid launch after the configuration errors runs");
  cudaFree(p);
}

// Dynamic shared memory of `bytes`: thread 0 touches both ends.
__global__ void dyn_smem_kernel(int* out, int bytes) {
  FC_DYNAMIC_SHARED(16, unsigned char, s);
  if (threadIdx.x == 0) {
    s[0] = 1;
    s[bytes - 1] = 2;
    out[0] = s[0] + s[bytes - 1];
  }
}
// 40 KB of static shared memory plus `bytes` of dynamic.
__global__ void static_dyn_smem_kernel(int* out, int bytes) {
  FC_SHARED(unsigned char, big, [40 * 1024]);
  FC_DYNAMIC_SHARED(16, unsigned char, s);
  if (threadIdx.x == 0) {
    big[0] = 1;
    big[40 * 1024 - 1] = 2;
    s[0] = 3;
    s[bytes - 1] = 4;
    out[0] = big[0] + big[40 * 1024 - 1] + s[0] + s[bytes - 1];
  }
}

void test_shared_limits() {
  const int arch0 = fc_emu::device_arch();
  int* out = dalloc<int>(1);
  auto run_dyn = [&](int bytes) {
    cudaMemset(out, 0, sizeof(int));
    const cudaError_t e = FC_LAUNCH(1, 32, static_cast<size_t>(bytes), 0, dyn_smem_kernel)(out, bytes);
    return e == cudaSuccess && to_host(out, 1)[0] == 3 ? cudaSuccess : e == cudaSuccess ? cudaErrorUnknown : e;
  };
  fc_emu::reset_device();  // no attributes set
  {
    const cudaError_t ok48 = run_dyn(48 * 1024);
    const cudaError_t e = run_dyn(48 * 1024 + 1);
    const cudaError_t last = cudaGetLastError(), again = cudaGetLastError();
    check(ok48 == cudaSuccess, "48 KB dynamic shared memory without the attribute runs", err_name(ok48));
    check(e == cudaErrorInvalidValue && last == cudaErrorInvalidValue && again == cudaSuccess &&
              cudaDeviceSynchronize() == cudaSuccess,
          "48 KB + 1 dynamic shared memory without cudaFuncSetAttribute -> cudaErrorInvalidValue, not sticky",
          got_want(e, cudaErrorInvalidValue) + ", then cudaGetLastError " + err_name(last) + ", " + err_name(again));
  }
  {
    const cudaError_t a = cudaFuncSetAttribute(dyn_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024);
    const cudaError_t e = run_dyn(100 * 1024);
    const cudaError_t over = run_dyn(100 * 1024 + 1);
    cudaGetLastError();
    check(a == cudaSuccess && e == cudaSuccess,
          "cudaFuncSetAttribute(MaxDynamicSharedMemorySize, 100 KB): the 100 KB launch runs",
          std::string("attribute ") + err_name(a) + ", launch " + err_name(e));
    check(over == cudaErrorInvalidValue, "... and 100 KB + 1 is still cudaErrorInvalidValue", got_want(over, cudaErrorInvalidValue));
  }
  for (int arch : {80, 90}) {
    fc_emu::set_device_arch(arch);
    const int limit = arch == 80 ? 166912 : 232448;
    int optin = 0;
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
    const cudaError_t above = cudaFuncSetAttribute(dyn_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limit + 1);
    cudaGetLastError();
    const cudaError_t at = cudaFuncSetAttribute(dyn_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limit);
    const cudaError_t run = run_dyn(limit);
    const std::string a = "sm_" + std::to_string(arch) + ": ";
    check(optin == limit, a + "cudaDevAttrMaxSharedMemoryPerBlockOptin = " + std::to_string(limit),
          "got " + std::to_string(optin));
    check(above == cudaErrorInvalidValue, a + "attribute " + std::to_string(limit + 1) + " -> cudaErrorInvalidValue",
          got_want(above, cudaErrorInvalidValue));
    check(at == cudaSuccess && run == cudaSuccess, a + "attribute " + std::to_string(limit) + " accepted, that launch runs",
          std::string("attribute ") + err_name(at) + ", launch " + err_name(run));
  }
  {
    // The 232448 B attribute of sm_90 exceeds what sm_80 can give.
    fc_emu::set_device_arch(80);
    const cudaError_t e = run_dyn(232448);
    cudaGetLastError();
    check(e == cudaErrorInvalidValue, "sm_80: a launch above 166912 B is cudaErrorInvalidValue even with a larger attribute",
          got_want(e, cudaErrorInvalidValue));
    fc_emu::set_device_arch(arch0);
  }
  fc_emu::reset_device();
  {
    // Static + dynamic: the default dynamic maximum is 48 KB minus the static size.
    cudaMemset(out, 0, sizeof(int));
    const cudaError_t fits = FC_LAUNCH(1, 32, 8 * 1024, 0, static_dyn_smem_kernel)(out, 8 * 1024);
    const bool ran = fits == cudaSuccess && to_host(out, 1)[0] == 10;
    check(ran, "static 40 KB + dynamic 8 KB (= 48 KB) without the attribute runs", err_name(fits));
    const cudaError_t e = FC_LAUNCH(1, 32, 16 * 1024, 0, static_dyn_smem_kernel)(out, 16 * 1024);
    check(e == cudaErrorInvalidValue, "static 40 KB + dynamic 16 KB without the attribute -> cudaErrorInvalidValue",
          got_want(e, cudaErrorInvalidValue) + (e != cudaSuccess ? " (" + fc_emu::last_fault_report() + ")" : ""));
    fc_emu::reset_device();
    const cudaError_t a = cudaFuncSetAttribute(static_dyn_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 16 * 1024);
    cudaMemset(out, 0, sizeof(int));
    const cudaError_t e2 = FC_LAUNCH(1, 32, 16 * 1024, 0, static_dyn_smem_kernel)(out, 16 * 1024);
    check(a == cudaSuccess && e2 == cudaSuccess && to_host(out, 1)[0] == 10,
          "static 40 KB + dynamic 16 KB with the attribute set to 16 KB runs",
          std::string("attribute ") + err_name(a) + ", launch " + err_name(e2));
  }
  fc_emu::reset_device();
  cudaFree(out);
}

// c) Divergent barrier. The two __syncthreads() are on the lines kDivergentLineA and A + 1.
constexpr int kDivergentLineA = __LINE__ + 4;  // keep the two calls below on these two lines
constexpr int kDivergentLineB = kDivergentLineA + 1;
__global__ void divergent_barrier_kernel(int* out) {
  const unsigned t = threadIdx.x;
  if (t < 32) __syncthreads();
  else __syncthreads();
  out[t] = 1;
}

// d) A block that can never complete: one half waits at __syncthreads while the other half waits in
// a __shfl_sync whose mask names a waiting lane. `barrier_first`: the lanes that run first (0-15)
// take the barrier; otherwise they take the shuffle.
__global__ void deadlock_kernel(int* out, int barrier_first) {
  const unsigned t = threadIdx.x;
  const bool low = t < 16;
  if (low == (barrier_first != 0)) {
    __syncthreads();
    out[t] = 1;
  } else {
    out[t] = __shfl_sync(0xffffffffu, static_cast<int>(t), 0);
  }
}

// e) Bad warp collectives.
__global__ void mask_omits_caller_kernel(int* out) {
  out[threadIdx.x] = __shfl_sync(0xfffffffeu, static_cast<int>(threadIdx.x), 1);
}
__global__ void exited_lane_kernel(int* out, int exiting_lane) {
  if (static_cast<int>(threadIdx.x) == exiting_lane) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}
__global__ void mismatched_collectives_kernel(int* out) {
  const unsigned t = threadIdx.x;
  if (t < 16) out[t] = __shfl_sync(0xffffffffu, static_cast<int>(t), 0);
  else out[t] = static_cast<int>(__ballot_sync(0xffffffffu, 1));
}
__global__ void mismatched_masks_kernel(int* out) {
  const unsigned t = threadIdx.x;
  if (t < 16) out[t] = __shfl_sync(0xffffffffu, static_cast<int>(t), 0);
  else out[t] = __shfl_sync(0xffff0000u, static_cast<int>(t), 16);
}
__global__ void absent_lane_kernel(int* out) {  // launched with 16 threads
  out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0);
}
__global__ void bad_width_kernel(int* out) {
  out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0, 12);
}

// Runs one launch expected to fault; checks the code and the report, then resets the device.
template <typename F>
void expect_fault(const std::string& name, cudaError_t want, const std::vector<std::string>& report_has, F&& launch) {
  const cudaError_t e = launch();
  const cudaError_t sync = cudaDeviceSynchronize();
  const std::string report = fc_emu::last_fault_report();
  bool has = true;
  std::string missing;
  for (const std::string& s : report_has)
    if (!contains(report, s)) has = false, missing += " '" + s + "'";
  check(e == want && sync == want && has, name,
        got_want(e, want) + (sync != want ? std::string(", cudaDeviceSynchronize ") + err_name(sync) : "") +
            (has ? "" : "; report lacks" + missing) + "; report: " + report.substr(0, 300));
  fc_emu::reset_device();
}

void test_faults() {
  int* out = dalloc<int>(64);

  // c) divergent barrier, and f) stickiness after it.
  {
    const cudaError_t e = FC_LAUNCH(1, 64, 0, 0, divergent_barrier_kernel)(out);
    const std::string report = fc_emu::last_fault_report();
    check(e == cudaErrorLaunchFailure && contains(report, src_line(kDivergentLineA)) &&
              contains(report, src_line(kDivergentLineB)) && contains(report, "divergent barrier"),
          "divergent __syncthreads (threads 0-31 at line " + std::to_string(kDivergentLineA) + ", 32-63 at line " +
              std::to_string(kDivergentLineB) + ") -> cudaErrorLaunchFailure, report names both lines",
          got_want(e, cudaErrorLaunchFailure) + "; report: " + report);

    void* p = nullptr;
    int host = 0;
    const cudaError_t m = cudaMalloc(&p, 16);
    const cudaError_t c = cudaMemcpy(&host, out, sizeof(int), cudaMemcpyDeviceToHost);
    const cudaError_t s = cudaMemset(out, 0, sizeof(int));
    const cudaError_t d = cudaDeviceSynchronize();
    const cudaError_t l1 = cudaGetLastError(), l2 = cudaGetLastError();
    const cudaError_t pk = cudaPeekAtLastError();
    const cudaError_t again = FC_LAUNCH(1, 1, 0, 0, noop_kernel)(out + 63);
    const cudaError_t F = cudaErrorLaunchFailure;
    check(m == F && c == F && s == F && d == F && l1 == F && l2 == F && pk == F && again == F,
          "sticky: after the fault cudaMalloc, cudaMemcpy, cudaMemset, cudaDeviceSynchronize, cudaGetLastError "
          "(twice), cudaPeekAtLastError and a new launch all return cudaErrorLaunchFailure",
          std::string(err_name(m)) + " " + err_name(c) + " " + err_name(s) + " " + err_name(d) + " " + err_name(l1) +
              " " + err_name(l2) + " " + err_name(pk) + " " + err_name(again));
    fc_emu::reset_device();
    const cudaError_t d2 = cudaDeviceSynchronize(), l3 = cudaGetLastError();
    const cudaError_t m2 = cudaMalloc(&p, 16);
    cudaFree(p);
    std::vector<int> zero(64, 0);
    to_device(out, zero);
    const cudaError_t run = FC_LAUNCH(1, 1, 0, 0, noop_kernel)(out + 63);
    check(d2 == cudaSuccess && l3 == cudaSuccess && m2 == cudaSuccess && run == cudaSuccess && to_host(out, 64)[63] == 1,
          "fc_emu::reset_device() clears the sticky error; the device works again",
          std::string(err_name(d2)) + " " + err_name(l3) + " " + err_name(m2) + " " + err_name(run));
  }

  // d) a block that can never complete, both orders of arrival. runtime.cpp documents
  // cudaErrorLaunchTimeout for it.
  for (int barrier_first = 1; barrier_first >= 0; --barrier_first) {
    expect_fault(std::string("block that can never complete (") +
                     (barrier_first ? "lanes 0-15 at __syncthreads, then 16-31 in __shfl_sync"
                                    : "lanes 0-15 in __shfl_sync, then 16-31 at __syncthreads") +
                     ") -> cudaErrorLaunchTimeout, sticky",
                 cudaErrorLaunchTimeout, {"never complete"},
                 [&] { return FC_LAUNCH(1, 32, 0, 0, deadlock_kernel)(out, barrier_first); });
  }

  // e) bad collectives.
  expect_fault("warp collective whose mask omits the caller -> cudaErrorLaunchFailure", cudaErrorLaunchFailure,
               {"does not name the calling"}, [&] { return FC_LAUNCH(1, 32, 0, 0, mask_omits_caller_kernel)(out); });
  expect_fault("mask names a lane that exited before the collective -> cudaErrorLaunchFailure", cudaErrorLaunchFailure,
               {"exited"}, [&] { return FC_LAUNCH(1, 32, 0, 0, exited_lane_kernel)(out, 0); });
  expect_fault("mask names a lane that exits while the others wait -> cudaErrorLaunchFailure", cudaErrorLaunchFailure,
               {"exited"}, [&] { return FC_LAUNCH(1, 32, 0, 0, exited_lane_kernel)(out, 31); });
  expect_fault("lanes of one mask at different collectives (__shfl_sync vs __ballot_sync) -> cudaErrorLaunchFailure",
               cudaErrorLaunchFailure, {"mismatched warp collective", "__ballot_sync", "__shfl_sync"},
               [&] { return FC_LAUNCH(1, 32, 0, 0, mismatched_collectives_kernel)(out); });
  expect_fault("lanes named by a full mask calling with mask 0xffff0000 instead -> cudaErrorLaunchFailure",
               cudaErrorLaunchFailure, {"__shfl_sync"},
               [&] { return FC_LAUNCH(1, 32, 0, 0, mismatched_masks_kernel)(out); });
  expect_fault("full mask in a 16-thread block (names lanes that do not exist) -> cudaErrorLaunchFailure",
               cudaErrorLaunchFailure, {"do not exist"}, [&] { return FC_LAUNCH(1, 16, 0, 0, absent_lane_kernel)(out); });
  expect_fault("__shfl_sync width 12 (not a power of two) -> cudaErrorLaunchFailure", cudaErrorLaunchFailure,
               {"width 12"}, [&] { return FC_LAUNCH(1, 32, 0, 0, bad_width_kernel)(out); });
  cudaFree(out);
}

// g) Early exit: threads >= 40 return; the rest use __syncthreads (exited threads don't count) and
// a width-8 shuffle among the surviving lanes 0-7 of warp 1.
__global__ void early_exit_kernel(int* out) {
  FC_SHARED(int, s, [64]);
  const int t = static_cast<int>(threadIdx.x);
  if (t >= 40) return;
  s[t] = t * t;
  __syncthreads();
  const int a = s[39 - t];
  __syncthreads();
  s[t] = a + 1;
  __syncthreads();
  out[t] = s[(t + 1) % 40];
  if (t >= 32) out[64 + t] = __shfl_down_sync(0x000000ffu, t, 1, 8);
}

void test_early_exit() {
  int* out = dalloc<int>(128);
  to_device(out, std::vector<int>(128, -7));
  const cudaError_t e = FC_LAUNCH(1, 64, 0, 0, early_exit_kernel)(out);
  const auto h = to_host(out, 128);
  bool ok = e == cudaSuccess;
  for (int t = 0; t < 64; ++t) {
    const int u = (t + 1) % 40;
    ok = ok && h[t] == (t < 40 ? (39 - u) * (39 - u) + 1 : -7);
    ok = ok && h[64 + t] == (t >= 32 && t < 40 ? (t == 39 ? 39 : t + 1) : -7);
  }
  check(ok, "early exit: threads >= 40 return, the other 40 pass 3 __syncthreads and shuffle (mask 0xff) correctly",
        e != cudaSuccess ? err_name(e) : "");
  cudaFree(out);
}

// ======================================================================================================
// 7. Determinism
// ======================================================================================================

// A per-thread recurrence, a butterfly warp reduction, shared memory across warps and a shuffle-down
// reduction: floating-point, so any change in what each step reads would change bits.
__global__ void determinism_kernel(const float* in, float* out, int per_thread) {
  FC_SHARED(float, warp_sums, [32]);
  const unsigned t = threadIdx.x, lane = t % 32, warp = t / 32, nwarps = blockDim.x / 32;
  const size_t g = size_t(blockIdx.x) * blockDim.x + t;
  float acc = 0.0f;
  for (int i = 0; i < per_thread; ++i) acc = fmaf(acc, 0.999f, in[g * per_thread + i]);
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) warp_sums[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    float x = lane < nwarps ? warp_sums[lane] : 0.0f;
    for (int off = 16; off > 0; off /= 2) x += __shfl_down_sync(0xffffffffu, x, off);
    if (lane == 0) out[blockIdx.x] = x;
  }
  out[gridDim.x + g] = acc;
}

void test_determinism() {
  const int blocks = 4, threads = 256, per = 16;
  const size_t n = size_t(blocks) * threads;
  std::vector<float> in(n * per);
  uint32_t x = 987654321u;
  for (float& v : in) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    v = static_cast<float>(static_cast<int32_t>(x)) * 1e-9f;
  }
  float* din = dalloc<float>(in.size());
  float* dout = dalloc<float>(blocks + n);
  to_device(din, in);
  std::vector<std::vector<float>> runs;
  cudaError_t e = cudaSuccess;
  for (int r = 0; r < 2; ++r) {
    cudaMemset(dout, 0, (blocks + n) * sizeof(float));
    const cudaError_t er = FC_LAUNCH(blocks, threads, 0, 0, determinism_kernel)(din, dout, per);
    if (er != cudaSuccess) e = er;
    runs.push_back(to_host(dout, blocks + n));
  }
  // The same arithmetic in the same order on the host.
  std::vector<float> want(blocks + n);
  for (int b = 0; b < blocks; ++b) {
    std::vector<float> acc(threads);
    for (int t = 0; t < threads; ++t) {
      float a = 0.0f;
      for (int i = 0; i < per; ++i) a = std::fma(a, 0.999f, in[(size_t(b) * threads + t) * per + i]);
      acc[t] = a;
    }
    for (int w = 0; w < threads / 32; ++w)
      for (int off = 16; off > 0; off /= 2) {
        float nv[32];
        for (int l = 0; l < 32; ++l) nv[l] = acc[w * 32 + l] + acc[w * 32 + (l ^ off)];
        for (int l = 0; l < 32; ++l) acc[w * 32 + l] = nv[l];
      }
    float xs[32];
    for (int l = 0; l < 32; ++l) xs[l] = l < threads / 32 ? acc[l * 32] : 0.0f;
    for (int off = 16; off > 0; off /= 2) {
      float nv[32];
      for (int l = 0; l < 32; ++l) nv[l] = xs[l] + (l + off < 32 ? xs[l + off] : xs[l]);
      for (int l = 0; l < 32; ++l) xs[l] = nv[l];
    }
    want[b] = xs[0];
    for (int t = 0; t < threads; ++t) want[blocks + size_t(b) * threads + t] = acc[t];
  }
  const bool same = std::memcmp(runs[0].data(), runs[1].data(), runs[0].size() * sizeof(float)) == 0;
  const bool exact = std::memcmp(runs[0].data(), want.data(), want.size() * sizeof(float)) == 0;
  check(e == cudaSuccess && same, "determinism: two runs of a shuffle/shared-memory float reduction are bit-identical",
        err_name(e));
  check(e == cudaSuccess && exact, "... and bit-identical to the same arithmetic done in order on the host");
  cudaFree(din);
  cudaFree(dout);
}

// ======================================================================================================
// 8. Race detection (ThreadSanitizer)
// ======================================================================================================

// Thread t writes shared[t] and reads shared[t ^ 1]: without the barrier that is a data race
// between threads t and t ^ 1 (the read may see the old or the new value on a GPU).
__global__ void race_demo_kernel(int* out, int with_barrier) {
  FC_SHARED(int, s, [64]);
  const unsigned t = threadIdx.x;
  s[t] = static_cast<int>(t) * 3;
  if (with_barrier) __syncthreads();
  out[t] = s[t ^ 1u];
}

int race_demo(bool with_barrier) {
  int* out = dalloc<int>(64);
  const cudaError_t e = FC_LAUNCH(1, 64, 0, 0, race_demo_kernel)(out, with_barrier ? 1 : 0);
  const auto h = to_host(out, 64);
  int correct = 0;
  for (int t = 0; t < 64; ++t) correct += h[t] == (t ^ 1) * 3;
  std::printf("race demo (%s barrier): launch %s, %d of 64 threads read their neighbour's new value\n",
              with_barrier ? "with" : "without", err_name(e), correct);
  cudaFree(out);
  return 0;
}

#if defined(__SANITIZE_THREAD__)
// Runs this binary with `flag` under TSAN_OPTIONS=halt_on_error=1:exitcode=66; returns the exit
// status and its stderr.
int run_self(const char* flag, std::string* err) {
  char path[] = "/tmp/emu_model_race_XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) return -1;
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fd, 2);
    const int null = open("/dev/null", O_WRONLY);
    if (null >= 0) dup2(null, 1);
    setenv("TSAN_OPTIONS", "halt_on_error=1:exitcode=66", 1);
    execl("/proc/self/exe", "test_emu_model", flag, static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  close(fd);
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  *err = ss.str();
  unlink(path);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void test_race_detection() {
  std::string err;
  const int racy = run_self("--race-demo", &err);
  const std::string first = err.substr(0, err.find('\n', err.find("data race")));
  // The report must be the planted race: in the kernel, between two of its CUDA threads (the fibers
  // are named "<kernel> block(x,y,z) thread(x,y,z)").
  check(racy == 66 && contains(err, "data race") && contains(err, " in race_demo_kernel") &&
            contains(err, "block(0,0,0) thread("),
        "TSan: --race-demo (missing __syncthreads) is reported as a data race between two CUDA threads, exit 66",
        "exit " + std::to_string(racy) + (contains(err, "data race") ? "" : ", no 'data race' in stderr: " + err.substr(0, 600)));
  err.clear();
  const int fixed = run_self("--race-demo-fixed", &err);
  check(fixed == 0 && !contains(err, "data race"), "TSan: --race-demo-fixed (the barrier present) is not reported, exit 0",
        "exit " + std::to_string(fixed) + (err.empty() ? "" : ", stderr: " + err.substr(0, 1500)));
}
#endif

}  // namespace

int main(int argc, char** argv) {
  // The faults below are intended: their reports are checked through fc_emu::last_fault_report(),
  // not printed, and must not abort.
  setenv("FASTCONV_EMU_QUIET", "1", 1);
  setenv("FASTCONV_EMU_ABORT", "0", 1);
  if (argc > 1 && std::strcmp(argv[1], "--race-demo") == 0) return race_demo(false);
  if (argc > 1 && std::strcmp(argv[1], "--race-demo-fixed") == 0) return race_demo(true);
  const auto t0 = std::chrono::steady_clock::now();

  // 1.
  test_coordinates(dim3(3, 2, 2), dim3(4, 3, 2));
  test_coordinates(dim3(1, 1, 1), dim3(1024, 1, 1));
  test_coordinates(dim3(2, 1, 1), dim3(1, 1024, 1));
  test_coordinates(dim3(1, 2, 1), dim3(2, 2, 64));
  test_coordinates(dim3(70000, 1, 1), dim3(1, 1, 1));
  test_coordinates(dim3(1, 65535, 1), dim3(1, 1, 1));
  test_coordinates(dim3(2, 1, 65535), dim3(1, 1, 1));
  // 2.
  test_barrier();
  // 3., 4.
  test_shared_poison();
  test_malloc_poison();
  // 5.
  test_shuffles<int>("int");
  test_shuffles<float>("float");
  test_shuffles<double>("double");
  test_shuffle_spots();
  test_votes();
  test_partial_mask();
  // 6.
  test_launch_limits();
  test_shared_limits();
  test_faults();
  test_early_exit();
  // 7.
  test_determinism();
  // 8.
#if defined(__SANITIZE_THREAD__)
  test_race_detection();
#else
  check(race_demo(false) == 0 && race_demo(true) == 0,
        "--race-demo kernels run (race detection itself is checked in the TSan build)");
#endif

  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("emu_model: %.2f s\n", s);
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}

#else  // !FASTCONV_EMU: the checks need the emulator's controls.
int main() { return 0; }
#endif
