// workspace_py.h — the Python face of the workspace limit (workspace.h), for each module that holds
// a binding (fastconv._C, fastconv._C_emu).
#pragma once

#include <Python.h>

#include "workspace.h"

namespace fastconv {

inline PyObject* py_set_workspace_limit(PyObject*, PyObject* arg) {
  const long long v = PyLong_AsLongLong(arg);
  if (v == -1 && PyErr_Occurred()) return nullptr;
  if (v < 0) {
    PyErr_SetString(PyExc_ValueError, "fastconv: the workspace limit must be a non-negative number of bytes");
    return nullptr;
  }
  workspace_limit_setting().store(static_cast<int64_t>(v));
  Py_RETURN_NONE;
}

inline PyObject* py_workspace_limit(PyObject*, PyObject*) {
  return PyLong_FromLongLong(static_cast<long long>(workspace_limit_setting().load()));
}

inline PyObject* py_set_allow_tf32(PyObject*, PyObject* arg) {
  const int v = PyObject_IsTrue(arg);
  if (v < 0) return nullptr;
  allow_tf32_setting().store(v != 0);
  Py_RETURN_NONE;
}

inline PyObject* py_allow_tf32(PyObject*, PyObject*) { return PyBool_FromLong(allow_tf32_setting().load() ? 1 : 0); }

}  // namespace fastconv

#define FASTCONV_WORKSPACE_METHODS                                                                     \
  {"set_workspace_limit", ::fastconv::py_set_workspace_limit, METH_O,                                  \
   "set_workspace_limit(bytes): the most scratch memory one fastconv op may allocate"},                \
  {"workspace_limit", ::fastconv::py_workspace_limit, METH_NOARGS,                                     \
   "workspace_limit() -> bytes: the current limit (default 256 MiB)"},                                 \
  {"set_allow_tf32", ::fastconv::py_set_allow_tf32, METH_O,                                            \
   "set_allow_tf32(flag): whether float32 convolutions may run on TF32 tensor cores"},                 \
  {"allow_tf32", ::fastconv::py_allow_tf32, METH_NOARGS, "allow_tf32() -> bool (default False)"}
