// cuda_query_py.h — the Python face of cuda_conv_query (cuda_device.h), for the module that holds
// the CUDA binding (fastconv._C on a CUDA build, fastconv._C_emu): one definition for both.
#pragma once

#include <Python.h>

#include "cuda_device.h"

namespace fastconv {

inline PyObject* py_cuda_conv_query(PyObject*, PyObject* args) {
  const char* algo = nullptr;
  int dir = 0, elem = 0, channels_last = 0;
  long long in[4], wt[4], g[6], groups = 0, limit = 0;
  if (!PyArg_ParseTuple(args, "si(LLLL)(LLLL)(LLLLLL)LipL", &algo, &dir, &in[0], &in[1], &in[2], &in[3], &wt[0],
                        &wt[1], &wt[2], &wt[3], &g[0], &g[1], &g[2], &g[3], &g[4], &g[5], &groups, &elem,
                        &channels_last, &limit))
    return nullptr;
  CudaConvQuery q;
  try {
    q = cuda_conv_query(algo, dir, {in[0], in[1], in[2], in[3]}, {wt[0], wt[1], wt[2], wt[3]},
                        {g[0], g[1], g[2], g[3], g[4], g[5]}, groups, elem, channels_last != 0, limit);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  return Py_BuildValue("(NsL)", PyBool_FromLong(q.ok ? 1 : 0), q.reason.c_str(),
                       static_cast<long long>(q.workspace_bytes));
}

}  // namespace fastconv

#define FASTCONV_CUDA_QUERY_METHOD                                                                     \
  {"cuda_conv_query", ::fastconv::py_cuda_conv_query, METH_VARARGS,                                    \
   "cuda_conv_query(algo, dir, (N,C,H,W), (K,Cg,R,S), (sh,sw,ph,pw,dh,dw), groups, elem_bytes, "       \
   "channels_last, workspace_limit) -> (ok, reason, workspace_bytes): the CUDA algorithm table's answer"}
