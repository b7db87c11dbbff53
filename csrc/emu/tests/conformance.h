// conformance.h — the reporting and device-buffer helpers shared by the PTX conformance tests
// (ptx_conformance.cu, ptx_sm90_async.cu, ptx_sm90_wgmma.cu): each is its own program, built by nvcc for
// a GPU or against the emulator.
#pragma once

#include <cuda_runtime.h>

#include <cstdarg>
#include <cstdio>
#include <string>
#include <vector>

// ---- reporting ------------------------------------------------------------------------------------------

static int g_passed = 0, g_failed = 0;

static void report(bool ok, const std::string& name, const std::string& detail = std::string()) {
  if (ok) {
    ++g_passed;
    std::printf("PASS %s\n", name.c_str());
  } else {
    ++g_failed;
    std::printf("FAIL %s%s%s\n", name.c_str(), detail.empty() ? "" : ": ", detail.c_str());
  }
  std::fflush(stdout);
}

// Collects mismatches; keeps the first few descriptions.
struct Mismatches {
  int count = 0;
  std::string text;
  void add(const char* fmt, ...) __attribute__((format(printf, 2, 3)));
  std::string summary() const {
    return std::to_string(count) + " mismatches; first: " + text;
  }
};
inline void Mismatches::add(const char* fmt, ...) {
  if (count++ >= 4) return;
  char b[256];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(b, sizeof(b), fmt, ap);
  va_end(ap);
  if (!text.empty()) text += "; ";
  text += b;
}

// The error of the last launch: configuration errors (cudaGetLastError), then execution errors.
static cudaError_t launch_result() {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  return e;
}

// A device buffer of n T, freed on scope exit.
template <typename T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  cudaError_t err = cudaSuccess;
  explicit DevBuf(size_t count) : n(count) {
    err = cudaMalloc(reinterpret_cast<void**>(&p), n * sizeof(T));
    if (err == cudaSuccess) err = cudaMemset(p, 0, n * sizeof(T));
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  ~DevBuf() {
    if (p != nullptr) cudaFree(p);
  }
  bool up(const std::vector<T>& h) {
    return err == cudaSuccess && h.size() == n &&
           cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess;
  }
  bool down(std::vector<T>& h) const {
    h.assign(n, T());
    return err == cudaSuccess && cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess;
  }
};
