// torch_device.cpp — the emulated CUDA device as a torch device: PrivateUse1, renamed "fcemu" by
// fastconv/_ext.py. Its memory is the emulator's cudaMalloc (host memory, poisoned, registered, so
// the emulator's checks on kernel pointers hold); fastconv's CUDA binding (cuda_conv.cpp, cuda_pool_bn.cpp,
// cuda_fused.cpp built with FASTCONV_EMU_BINDING) is registered for it, so `x.to("fcemu")` followed
// by any fastconv op runs the binding and the csrc/cuda kernels exactly as on a GPU, minus the GPU.
// Every other torch op on an fcemu tensor runs on the CPU through torch's CPU fallback (inputs
// copied to CPU tensors and results back): that is how the tests' torch references are computed.
//
// What a backend must provide for that (PyTorch's "open registration"): an allocator, a device
// guard, the hooks object, empty/empty_strided, the copy kernels, resize_ and the primitive views.
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/native/CPUFallback.h>
#include <ATen/native/Resize.h>
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <ATen/ops/as_strided_cpu_dispatch.h>
#include <ATen/ops/set_cpu_dispatch.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <Python.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "conv_query_py.h"
#include "workspace_py.h"
#include "runtime.h"

namespace fastconv {

// Declared in csrc/torch/cuda_device.h for the binding's error messages.
std::string emu_take_fault_report() {
  std::string r = fc_emu::last_fault_report();
  fc_emu::reset_device();
  return r;
}

namespace {

constexpr c10::DeviceType kEmu = c10::DeviceType::PrivateUse1;

// ---- memory -------------------------------------------------------------------------------------

void emu_free(void* p) { cudaFree(p); }

struct EmuAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    void* p = nullptr;
    if (n > 0) {
      const cudaError_t e = cudaMalloc(&p, n);
      if (e != cudaSuccess) {
        // A sticky kernel fault also fails allocations: report it, then let the next call proceed.
        const std::string report = emu_take_fault_report();
        TORCH_CHECK(false, "fastconv emulated device: cudaMalloc of ", n, " bytes failed: ", cudaGetErrorString(e),
                    report.empty() ? "" : "\n", report);
      }
    }
    return {p, p, &emu_free, c10::Device(kEmu, 0)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &emu_free; }
  void copy_data(void* dst, const void* src, std::size_t n) const override { std::memcpy(dst, src, n); }
};
EmuAllocator g_allocator;

// ---- device guard (one device, one in-order stream) ----------------------------------------------

struct EmuGuardImpl final : c10::impl::DeviceGuardImplInterface {
  c10::DeviceType type() const override { return kEmu; }
  c10::Device exchangeDevice(c10::Device) const override { return c10::Device(kEmu, 0); }
  c10::Device getDevice() const override { return c10::Device(kEmu, 0); }
  void setDevice(c10::Device d) const override {
    TORCH_CHECK(d.index() <= 0, "fastconv emulated device: there is one device, fcemu:0; got ", d);
  }
  void uncheckedSetDevice(c10::Device) const noexcept override {}
  c10::Stream getStream(c10::Device d) const override { return c10::Stream(c10::Stream::DEFAULT, d); }
  c10::Stream getDefaultStream(c10::Device d) const override { return c10::Stream(c10::Stream::DEFAULT, d); }
  c10::Stream getStreamFromGlobalPool(c10::Device d, bool) const override {
    return c10::Stream(c10::Stream::DEFAULT, d);
  }
  c10::Stream getNewStream(c10::Device d, int) const override { return c10::Stream(c10::Stream::DEFAULT, d); }
  c10::Stream exchangeStream(c10::Stream s) const override { return s; }
  c10::DeviceIndex deviceCount() const noexcept override { return 1; }
  void destroyEvent(void*, const c10::DeviceIndex) const noexcept override {}
  void record(void**, const c10::Stream&, const c10::DeviceIndex, const c10::EventFlag) const override {}
  void block(void*, const c10::Stream&) const override {}
  bool queryEvent(void*) const override { return true; }
  bool queryStream(const c10::Stream&) const override { return true; }
  void synchronizeStream(const c10::Stream&) const override {}
  void synchronizeEvent(void*) const override {}
  void synchronizeDevice(const c10::DeviceIndex) const override {}
  void recordDataPtrOnStream(const c10::DataPtr&, const c10::Stream&) const override {}
};

struct EmuHooks final : at::PrivateUse1HooksInterface {
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  c10::DeviceIndex deviceCount() const override { return 1; }
  c10::DeviceIndex getCurrentDevice() const override { return 0; }
  void setCurrentDevice(c10::DeviceIndex) const override {}
  c10::DeviceIndex exchangeDevice(c10::DeviceIndex) const override { return 0; }
  c10::DeviceIndex maybeExchangeDevice(c10::DeviceIndex) const override { return 0; }
  at::Device getDeviceFromPtr(void*) const override { return c10::Device(kEmu, 0); }
  bool isPinnedPtr(const void*) const override { return false; }
  void resizePrivateUse1Bytes(const c10::Storage& storage, size_t newsize) const override;
};

// Storage growth for resize_ (torch's generic path calls back into these hooks): a new block, the
// old bytes copied over.
void resize_storage_bytes(const c10::Storage& storage, size_t newsize) {
  c10::StorageImpl* impl = storage.unsafeGetStorageImpl();
  TORCH_CHECK(impl->resizable(), "fastconv emulated device: trying to resize storage that is not resizable");
  c10::DataPtr fresh = g_allocator.allocate(newsize);
  const size_t keep = std::min(newsize, impl->nbytes());
  if (keep > 0) std::memcpy(fresh.get(), impl->data(), keep);
  impl->set_data_ptr_noswap(std::move(fresh));
  impl->set_nbytes(newsize);
}
void EmuHooks::resizePrivateUse1Bytes(const c10::Storage& storage, size_t newsize) const {
  resize_storage_bytes(storage, newsize);
}

// ---- the kernels a backend must have --------------------------------------------------------------

at::Tensor emu_empty(c10::IntArrayRef size, std::optional<c10::ScalarType> dtype, std::optional<c10::Layout> layout,
                     std::optional<c10::Device> device, std::optional<bool> pin,
                     std::optional<c10::MemoryFormat> memory_format) {
  TORCH_CHECK(!pin.value_or(false), "fastconv emulated device: pinned memory is not supported");
  TORCH_CHECK(c10::layout_or_default(layout) == c10::Layout::Strided,
              "fastconv emulated device: only strided tensors");
  return at::detail::empty_generic(size, &g_allocator, c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                   c10::dtype_or_default(dtype), memory_format);
}

at::Tensor emu_empty_strided(c10::IntArrayRef size, c10::IntArrayRef stride, std::optional<c10::ScalarType> dtype,
                             std::optional<c10::Layout> layout, std::optional<c10::Device> device,
                             std::optional<bool> pin) {
  TORCH_CHECK(!pin.value_or(false), "fastconv emulated device: pinned memory is not supported");
  return at::detail::empty_strided_generic(size, stride, &g_allocator,
                                           c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                           c10::dtype_or_default(dtype));
}

// The same bytes seen as a CPU tensor (fcemu memory is host memory).
at::Tensor as_cpu_alias(const at::Tensor& t) {
  if (t.device().type() == c10::DeviceType::CPU) return t;
  return at::from_blob(t.data_ptr(), t.sizes(), t.strides(), t.options().device(c10::kCPU));
}

at::Tensor emu_copy_from(const at::Tensor& self, const at::Tensor& dst, bool /*non_blocking*/) {
  TORCH_CHECK(self.defined() && dst.defined(), "fastconv emulated device: copy of an undefined tensor");
  TORCH_CHECK(self.device().type() == c10::DeviceType::CPU || self.device().type() == kEmu,
              "fastconv emulated device: cannot copy from ", self.device());
  TORCH_CHECK(dst.device().type() == c10::DeviceType::CPU || dst.device().type() == kEmu,
              "fastconv emulated device: cannot copy to ", dst.device());
  if (dst.numel() == 0) return dst;
  at::Tensor d = as_cpu_alias(dst);
  d.copy_(as_cpu_alias(self));
  return dst;
}

at::Tensor emu_copy_from_and_resize(const at::Tensor& self, const at::Tensor& dst) {
  dst.resize_(self.sizes());
  return emu_copy_from(self, dst, false);
}

const at::Tensor& emu_resize_(const at::Tensor& self, c10::IntArrayRef size,
                              std::optional<c10::MemoryFormat> memory_format) {
  c10::TensorImpl* impl = self.unsafeGetTensorImpl();
  at::native::resize_impl_cpu_(impl, size, /*stride=*/std::nullopt, /*resize_storage=*/false);
  if (impl->numel() > 0) {
    const size_t bytes =
        at::detail::computeStorageNbytesContiguous(size, self.dtype().itemsize(), impl->storage_offset());
    if (bytes > impl->unsafe_storage().nbytes()) resize_storage_bytes(impl->unsafe_storage(), bytes);
  }
  if (memory_format.has_value() && *memory_format != c10::MemoryFormat::Preserve) {
    self.unsafeGetTensorImpl()->empty_tensor_restride(*memory_format);
  }
  return self;
}

at::Tensor emu_as_strided(const at::Tensor& self, c10::IntArrayRef size, c10::IntArrayRef stride,
                          std::optional<int64_t> offset) {
  return at::cpu::as_strided(self, size, stride, offset);
}

at::Tensor& emu_set_source_storage(at::Tensor& self, c10::Storage src, int64_t offset, c10::IntArrayRef size,
                                   c10::IntArrayRef stride) {
  return at::cpu::set_(self, src, offset, size, stride);
}

at::Tensor emu_view(const at::Tensor& self, c10::IntArrayRef size) { return at::native::view(self, size); }
at::Tensor emu_reshape_alias(const at::Tensor& self, c10::IntArrayRef size, c10::IntArrayRef stride) {
  return at::native::_reshape_alias(self, size, stride);
}

at::Scalar emu_local_scalar_dense(const at::Tensor& self) { return at::_local_scalar_dense(as_cpu_alias(self)); }

void cpu_fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) { at::native::cpu_fallback(op, stack); }

// For ops that update optional arguments in place (batch norm's running statistics), which torch's
// CPU fallback does not write back: run them on CPU tensors that alias the fcemu memory (it is host
// memory), so the updates land in place; fresh outputs are copied to fcemu.
void aliasing_cpu_fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const size_t nargs = op.schema().arguments().size();
  for (size_t i = stack->size() - nargs; i < stack->size(); ++i) {
    c10::IValue& v = (*stack)[i];
    if (v.isTensor() && v.toTensor().defined() && v.toTensor().device().type() == kEmu) v = as_cpu_alias(v.toTensor());
  }
  op.redispatchBoxed(c10::DispatchKeySet(c10::DispatchKey::CPU), stack);
  const size_t nret = op.schema().returns().size();
  for (size_t i = stack->size() - nret; i < stack->size(); ++i) {
    c10::IValue& v = (*stack)[i];
    if (v.isTensor() && v.toTensor().defined() && v.toTensor().device().is_cpu())
      v = v.toTensor().to(c10::Device(kEmu, 0));
  }
}

}  // namespace
}  // namespace fastconv

C10_REGISTER_GUARD_IMPL(PrivateUse1, fastconv::EmuGuardImpl);
REGISTER_ALLOCATOR(c10::DeviceType::PrivateUse1, &fastconv::g_allocator);

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("empty.memory_format", &fastconv::emu_empty);
  m.impl("empty_strided", &fastconv::emu_empty_strided);
  m.impl("_copy_from", &fastconv::emu_copy_from);
  m.impl("_copy_from_and_resize", &fastconv::emu_copy_from_and_resize);
  m.impl("resize_", &fastconv::emu_resize_);
  m.impl("as_strided", &fastconv::emu_as_strided);
  m.impl("set_.source_Storage_storage_offset", &fastconv::emu_set_source_storage);
  m.impl("view", &fastconv::emu_view);
  m.impl("_reshape_alias", &fastconv::emu_reshape_alias);
  m.impl("_local_scalar_dense", &fastconv::emu_local_scalar_dense);
}

// Composite ops whose generic path ends in a *_overrideable stub for unknown backends: run them on
// the CPU as a whole (torch's reference convolutions in the tests).
TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  for (const char* op : {"convolution", "convolution_backward", "convolution_overrideable",
                         "convolution_backward_overrideable", "_convolution"})
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&fastconv::cpu_fallback>());
  for (const char* op : {"native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit.no_stats",
                         "batch_norm_update_stats"})
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&fastconv::aliasing_cpu_fallback>());
}

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) {
  m.fallback(torch::CppFunction::makeFromBoxedFunction<&fastconv::cpu_fallback>());
}

// ---- the Python module fastconv._C_emu ----------------------------------------------------------------

namespace {
PyObject* py_arch(PyObject*, PyObject*) { return PyLong_FromLong(fc_emu::device_arch()); }
PyObject* py_set_arch(PyObject*, PyObject* arg) {
  const long a = PyLong_AsLong(arg);
  if (a == -1 && PyErr_Occurred()) return nullptr;
  if (a != 80 && a != 90) {
    PyErr_SetString(PyExc_ValueError, "the emulated device is sm_80 or sm_90: pass 80 or 90");
    return nullptr;
  }
  fc_emu::set_device_arch(static_cast<int>(a));
  Py_RETURN_NONE;
}
PyObject* py_register_hooks(PyObject*, PyObject*) {
  // After rename_privateuse1_backend (Python), before the first tensor.
  static bool done = false;
  if (!done && !at::isPrivateUse1HooksRegistered()) at::RegisterPrivateUse1HooksInterface(new fastconv::EmuHooks());
  done = true;
  Py_RETURN_NONE;
}
PyObject* py_counters(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  fc_emu::set_counters(on != 0);
  Py_RETURN_NONE;
}
PyObject* py_print_counters(PyObject*, PyObject*) {
  fc_emu::print_counters(stdout);
  std::fflush(stdout);
  Py_RETURN_NONE;
}
PyMethodDef kMethods[] = {
    {"arch", py_arch, METH_NOARGS, "The emulated device's compute capability: 80 or 90."},
    {"set_arch", py_set_arch, METH_O, "Emulate sm_80 (A100 limits) or sm_90 (H100/H200 limits)."},
    {"register_hooks", py_register_hooks, METH_NOARGS, "Registers the PrivateUse1 hooks (once)."},
    {"set_counters", py_counters, METH_O, "Turns the memory-access counters on or off."},
    {"print_counters", py_print_counters, METH_NOARGS, "Prints the counters per kernel."},
    FASTCONV_CUDA_QUERY_METHOD,
    FASTCONV_WORKSPACE_METHODS,
    {nullptr, nullptr, 0, nullptr}};
PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_C_emu",
                       "fastconv's CUDA binding and kernels on the emulated CUDA device (torch device 'fcemu').",
                       -1, kMethods};
}  // namespace

PyMODINIT_FUNC PyInit__C_emu(void) { return PyModule_Create(&kModule); }
