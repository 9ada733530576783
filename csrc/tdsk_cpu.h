// C++ CPU kernels of the tdsk ops: the CPU kernels of torch.ops.tdsk.* (see register.cpp).
//
// The public Python functions (tdsk/ops/temporal_pool_diff.py, tdsk/ops/frame_diff_concat.py,
// tdsk/ops/local_temporal_diff.py)
// validate the arguments before the dispatcher routes CPU tensors here; the kernels re-check
// the preconditions they rely on (TORCH_CHECK) so that a direct call of the op cannot read
// out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <optional>

namespace tdsk {

// x: [N, C, T, H, W] float/double/half/bfloat16, any strides -> contiguous, x's dtype.
at::Tensor temporal_pool_diff_forward(const at::Tensor& x, int64_t kernel_size, double channel_mix);

// grad_out, x: [N, C, T, H, W] -> grad_x contiguous, x's dtype. Recomputes the argmax.
at::Tensor temporal_pool_diff_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                       int64_t kernel_size, double channel_mix);

// frames: [N, T, M, C, H, W] uint8 or floating, any strides -> [N, (M-1)*C, T, H, W].
// scale: none, or float32 [C]; float64 is accepted too when the work dtype is double (frames or
// out_dtype float64), which is what the public op passes for float64 work.
at::Tensor frame_diff_concat_forward(const at::Tensor& frames, const std::optional<at::Tensor>& scale,
                                     at::ScalarType out_dtype);

// grad_out: [N, (M-1)*C, T, H, W] any strides -> grad_frames [N, T, M, C, H, W] contiguous.
at::Tensor frame_diff_concat_backward(const at::Tensor& grad_out, const std::optional<at::Tensor>& scale,
                                      int64_t num_local, at::ScalarType frames_dtype);

// x: [B, T, *rest] float/double/half/bfloat16, any strides -> contiguous, x's dtype, with
// out[:, 0] = 0 and out[:, t] = x[:, t] - x[:, t-1].
at::Tensor local_temporal_diff_forward(const at::Tensor& x);

// grad_out: [B, T, *rest], any strides -> grad_x contiguous, grad_out's dtype, with
// grad_x[:, t] = g[:, t] * [t >= 1] - g[:, t+1] * [t <= T-2].
at::Tensor local_temporal_diff_backward(const at::Tensor& grad_out);

}  // namespace tdsk
