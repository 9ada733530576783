// Python module tdsk._C: puts the C++ kernels under the CPU dispatch key of the tdsk:: ops.
//
// Where the schemas live: in Python, once (torch.library.custom_op in
// tdsk/ops/temporal_pool_diff.py, tdsk/ops/frame_diff_concat.py and
// tdsk/ops/local_temporal_diff.py), because the ops
// must exist whether or not this extension was built; their default kernel there is
// the pure-PyTorch reference (CompositeExplicitAutograd). This module defines no
// schema and no second operator namespace: register_cpu_kernel("<name>") adds the C++
// function as the CPU kernel of torch.ops.tdsk.<name>, so the dispatcher itself sends
// CPU tensors here and every other device keeps its own kernel or the reference.
//
// Registration is an explicit call, not a static TORCH_LIBRARY_IMPL initialiser, so that
//  * it runs after the Python schema exists, and the dispatcher's check of each C++
//    signature against that schema (a stale build, say) raises a Python exception, which
//    tdsk.ops._backends catches (the CPU keeps the reference, logged once), instead of
//    throwing out of a static initialiser inside dlopen, which aborts the process;
//  * importing tdsk._C on its own changes no routing (TDSK_DISABLE_EXT=1 holds even if
//    something else imports the module).
//
// The module is built with a bare PyInit function and PyMethodDef (the
// pytorch/extension-cpp pattern): no pybind11 / torch/extension.h to compile.
#include <Python.h>

#include <torch/library.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "tdsk_cpu.h"

namespace {

// One IMPL library per registered kernel, alive for the life of the process (destroying
// a torch::Library deregisters its kernels).
std::vector<std::unique_ptr<torch::Library>>& libraries() {
  static std::vector<std::unique_ptr<torch::Library>> libs;
  return libs;
}

std::vector<std::string>& registered() {
  static std::vector<std::string> names;
  return names;
}

// The op names this module has a CPU kernel for.
constexpr const char* kNames[] = {
    "temporal_pool_diff",
    "temporal_pool_diff_backward",
    "frame_diff_concat",
    "frame_diff_concat_backward",
    "local_temporal_diff",
    "local_temporal_diff_backward",
};

void impl(torch::Library& lib, const std::string& name) {
  if (name == "temporal_pool_diff") {
    lib.impl("temporal_pool_diff", TORCH_FN(tdsk::temporal_pool_diff_forward));
  } else if (name == "temporal_pool_diff_backward") {
    lib.impl("temporal_pool_diff_backward", TORCH_FN(tdsk::temporal_pool_diff_backward));
  } else if (name == "frame_diff_concat") {
    lib.impl("frame_diff_concat", TORCH_FN(tdsk::frame_diff_concat_forward));
  } else if (name == "frame_diff_concat_backward") {
    lib.impl("frame_diff_concat_backward", TORCH_FN(tdsk::frame_diff_concat_backward));
  } else if (name == "local_temporal_diff") {
    lib.impl("local_temporal_diff", TORCH_FN(tdsk::local_temporal_diff_forward));
  } else {
    lib.impl("local_temporal_diff_backward", TORCH_FN(tdsk::local_temporal_diff_backward));
  }
}

PyObject* register_cpu_kernel(PyObject* /*self*/, PyObject* arg) {
  const char* cname = PyUnicode_AsUTF8(arg);
  if (cname == nullptr) return nullptr;  // TypeError already set
  const std::string name(cname);
  bool known = false;
  for (const char* n : kNames) known = known || name == n;
  if (!known) {
    PyErr_Format(PyExc_ValueError, "tdsk._C has no CPU kernel for tdsk::%s", cname);
    return nullptr;
  }
  for (const auto& n : registered()) {
    if (n == name) Py_RETURN_NONE;  // idempotent
  }
  try {
    auto lib = std::make_unique<torch::Library>(torch::Library::IMPL, "tdsk", c10::DispatchKey::CPU, __FILE__,
                                                __LINE__);
    impl(*lib, name);
    libraries().push_back(std::move(lib));
    registered().push_back(name);
  } catch (const std::exception& e) {  // c10::Error: schema mismatch, op not defined, ...
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"register_cpu_kernel", register_cpu_kernel, METH_O,
     "register_cpu_kernel(name): the C++ kernel becomes the CPU kernel of torch.ops.tdsk.<name> "
     "(the op must already be defined; idempotent)."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // m_name
      "tdsk C++ CPU kernels; register_cpu_kernel(name) installs one as the CPU kernel of torch.ops.tdsk.<name>",
      -1,  // m_size
      methods,
  };
  return PyModule_Create(&module_def);
}
}
