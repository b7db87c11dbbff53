// workspace.h — the workspace limit, a setting the extension owns (like torch.backends.cudnn's
// flags): set from Python through fastconv.backends.workspace_limit_mb (which calls
// set_workspace_limit on every fastconv module that holds a binding), read by the bindings when
// they size scratch memory. An algorithm that cannot run within it refuses with NotImplementedError
// (the chooser in fastconv.algorithms asks first, so "auto" never picks one that would).
#pragma once

#include <atomic>
#include <cstdint>

namespace fastconv {

constexpr int64_t kDefaultWorkspaceLimitBytes = int64_t{256} << 20;

// One per extension module (a function-local static in an inline function is one object per .so).
inline std::atomic<int64_t>& workspace_limit_setting() {
  static std::atomic<int64_t> limit{kDefaultWorkspaceLimitBytes};
  return limit;
}

inline size_t workspace_limit_bytes() { return static_cast<size_t>(workspace_limit_setting().load()); }

// Whether float32 may run on TF32 tensor cores (fastconv.backends.allow_tf32, default false, so that
// float32 means float32 unless the user opts in). Algorithms whose float32 kernels are TF32 refuse
// float32 with NotImplementedError while it is false.
inline std::atomic<bool>& allow_tf32_setting() {
  static std::atomic<bool> allow{false};
  return allow;
}

}  // namespace fastconv
