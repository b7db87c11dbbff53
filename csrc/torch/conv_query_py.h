// conv_query_py.h — the Python face of the conv queries (conv_query.h), one definition for every
// module that holds a binding: fastconv._C (cpu_conv_query; cuda_conv_query on a CUDA build) and
// fastconv._C_emu (cuda_conv_query on the emulated device).
#pragma once

#include <Python.h>

#include <c10/util/Exception.h>

#include <exception>

#include "conv_query.h"

namespace fastconv {

// query(algo, dir, (N,C,H,W), (K,Cg,R,S), (sh,sw,ph,pw,dh,dw), groups, elem_bytes, channels_last,
// workspace_limit) -> (ok, reason, workspace_bytes)
template <ConvQueryFn kQuery>
PyObject* py_conv_query(PyObject*, PyObject* args) {
  const char* algo = nullptr;
  int dir = 0, elem = 0, channels_last = 0;
  long long in[4], wt[4], g[6], groups = 0, limit = 0;
  if (!PyArg_ParseTuple(args, "si(LLLL)(LLLL)(LLLLLL)LipL", &algo, &dir, &in[0], &in[1], &in[2], &in[3], &wt[0],
                        &wt[1], &wt[2], &wt[3], &g[0], &g[1], &g[2], &g[3], &g[4], &g[5], &groups, &elem,
                        &channels_last, &limit))
    return nullptr;
  ConvQuery q;
  try {
    q = kQuery(algo, dir, {in[0], in[1], in[2], in[3]}, {wt[0], wt[1], wt[2], wt[3]},
               {g[0], g[1], g[2], g[3], g[4], g[5]}, groups, elem, channels_last != 0, limit);
  } catch (const c10::ValueError& e) {  // invalid arguments: the exception the op itself raises
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    return nullptr;
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    return nullptr;
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  return Py_BuildValue("(NsL)", PyBool_FromLong(q.ok ? 1 : 0), q.reason.c_str(),
                       static_cast<long long>(q.workspace_bytes));
}

}  // namespace fastconv

#define FASTCONV_CONV_QUERY_DOC                                                                        \
  "(algo, dir, (N,C,H,W), (K,Cg,R,S), (sh,sw,ph,pw,dh,dw), groups, elem_bytes, channels_last, "        \
  "workspace_limit) -> (ok, reason, workspace_bytes): the algorithm table's answer"
#define FASTCONV_CPU_QUERY_METHOD \
  {"cpu_conv_query", ::fastconv::py_conv_query<&::fastconv::cpu_conv_query>, METH_VARARGS, FASTCONV_CONV_QUERY_DOC}
#define FASTCONV_CUDA_QUERY_METHOD \
  {"cuda_conv_query", ::fastconv::py_conv_query<&::fastconv::cuda_conv_query>, METH_VARARGS, FASTCONV_CONV_QUERY_DOC}
