// Status codes returned by the CPU launchers (CUDA launchers return cudaError_t).
// Launchers never print or exit: the torch binding turns a status into a Python exception.
#pragma once

namespace fastconv {

enum class Status : int {
  kSuccess = 0,
  kInvalidShape = 1,   // a shape field is out of range (negative size, groups not dividing C or K, ...)
  kUnsupported = 2,    // the algorithm cannot implement this configuration (see can_implement)
  kNullPointer = 3,    // a required pointer was null
};

inline const char* status_string(Status s) {
  switch (s) {
    case Status::kSuccess: return "success";
    case Status::kInvalidShape: return "invalid shape";
    case Status::kUnsupported: return "configuration not supported by this algorithm";
    case Status::kNullPointer: return "null pointer";
  }
  return "unknown status";
}

}  // namespace fastconv
