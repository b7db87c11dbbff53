// conv_query.h — "can this algorithm run this convolution, and with how much scratch?", answered by
// the binding's own tables without tensors: the CPU algorithms (cpu_conv.cpp) and the CUDA algorithm
// table (cuda_conv.cpp). fastconv.algorithms asks these instead of mirroring the kernels' rules and
// workspace formulas (conv_query_py.h is their Python face).
#pragma once

#include <array>
#include <cstdint>
#include <string>

namespace fastconv {

struct ConvQuery {
  bool ok;
  std::string reason;       // why not, when !ok; when ok, the plan in words where the algorithm has one
  int64_t workspace_bytes;  // at the given limit; when over it, the least the algorithm runs with
};

// dir: 0 fprop, 1 dgrad, 2 wgrad; in (N, C, H, W); wt (K, C/groups, R, S); geom (stride_h, stride_w,
// pad_h, pad_w, dil_h, dil_w); elem_bytes: the dtype's size; workspace_limit in bytes.
using ConvQueryFn = ConvQuery (*)(const std::string& algo, int dir, const std::array<int64_t, 4>& in,
                                  const std::array<int64_t, 4>& wt, const std::array<int64_t, 6>& geom,
                                  int64_t groups, int elem_bytes, bool channels_last, int64_t workspace_limit);

ConvQuery cpu_conv_query(const std::string& algo, int dir, const std::array<int64_t, 4>& in,
                         const std::array<int64_t, 4>& wt, const std::array<int64_t, 6>& geom, int64_t groups,
                         int elem_bytes, bool channels_last, int64_t workspace_limit);
ConvQuery cuda_conv_query(const std::string& algo, int dir, const std::array<int64_t, 4>& in,
                          const std::array<int64_t, 4>& wt, const std::array<int64_t, 6>& geom, int64_t groups,
                          int elem_bytes, bool channels_last, int64_t workspace_limit);

}  // namespace fastconv
