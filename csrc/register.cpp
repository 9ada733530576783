// Python module tdsk._C and the operator registrations torch.ops.tdsk_cpu.*.
//
// The module itself is empty: importing it runs the static TORCH_LIBRARY
// initialisers below, which is all that is needed. A bare PyInit function (the
// pytorch/extension-cpp pattern) avoids compiling pybind11/torch/extension.h.
#include <Python.h>

#include <torch/library.h>

#include "tdsk_cpu.h"

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // m_name
      "tdsk C++ CPU kernels, registered as torch.ops.tdsk_cpu.*",  // m_doc
      -1,  // m_size
      nullptr,  // m_methods
  };
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(tdsk_cpu, m) {
  m.def("temporal_pool_diff_forward(Tensor x, int kernel_size, float channel_mix) -> Tensor");
  m.def("temporal_pool_diff_backward(Tensor grad_out, Tensor x, int kernel_size, float channel_mix) -> Tensor");
  m.def("frame_diff_concat_forward(Tensor frames, Tensor? scale, ScalarType out_dtype) -> Tensor");
  m.def("frame_diff_concat_backward(Tensor grad_out, Tensor? scale, int num_local, ScalarType frames_dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(tdsk_cpu, CPU, m) {
  m.impl("temporal_pool_diff_forward", &tdsk::temporal_pool_diff_forward);
  m.impl("temporal_pool_diff_backward", &tdsk::temporal_pool_diff_backward);
  m.impl("frame_diff_concat_forward", &tdsk::frame_diff_concat_forward);
  m.impl("frame_diff_concat_backward", &tdsk::frame_diff_concat_backward);
}
