// local_temporal_diff: CPU forward and backward (M2-CLIP's local temporal difference, the input
// of the difference branch of its TED-Adapter; "M2-CLIP", AAAI 2024; docs/ops.md).
//
// Forward:  x [B, T, *rest] (any strides) -> out, same shape, contiguous, x's dtype, with
//           out[:, 0] = 0 and out[:, t] = x[:, t] - x[:, t-1] for t >= 1
// Backward: grad_out [B, T, *rest] (any strides) -> grad_x, same shape, contiguous, with
//           grad_x[:, t] = (0 + g[:, t] * [t >= 1]) - g[:, t+1] * [t + 1 <= T - 1]
//           (each term present only when it exists; the reference's order of operations).
//
// Layout: the rest dims are seen as one axis of R = prod(rest) elements through
// Tensor::reshape({B, T, R}), which is a view (no copy) whenever they can be walked with one
// stride -- contiguous tensors, slices/permutations of B and T, and M2-CLIP's
// tokens[:, 1:, :].view(B, T, N, C) -- and a contiguous copy otherwise. The B and T strides are
// taken as they are. Both passes are one walk over the output, split into equal flat chunks by
// at::parallel_for; an output row (R elements of one (b, t)) reads one or two input rows.
// With a stride-1 rest axis these are plain subtract loops that GCC's auto-vectoriser turns
// into SIMD at -O3. Arithmetic is in at::opmath_type (float for half/bfloat16), rounded once,
// so every dtype matches the reference bit for bit.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "common.h"
#include "tdsk_cpu.h"

namespace tdsk {
namespace {

// Calls body(in_offset, k) for k = 0..len-1, in_offset = (r0 + k) * sR; a separate loop for the
// stride-1 case so that the compiler sees unit-stride accesses.
template <typename F>
inline void for_row(int64_t sR, int64_t r0, int64_t len, F&& body) {
  if (sR == 1) {
    for (int64_t k = 0; k < len; ++k) body(r0 + k, k);
  } else {
    for (int64_t k = 0; k < len; ++k) body((r0 + k) * sR, k);
  }
}

// Calls body(b, t, r0, len, o) for the pieces of output rows (R elements of one (b, t)) of a
// contiguous [B, T, R] result, split into equal flat chunks by at::parallel_for; o is the flat
// offset of element r0 of row (b, t).
template <typename Body>
void for_row_chunks(int64_t B, int64_t T, int64_t R, Body&& body) {
  at::parallel_for(0, B * T * R, detail::kGrainElems, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t row = i / R;
      const int64_t r0 = i - row * R;
      const int64_t len = std::min(R - r0, end - i);
      body(row / T, row % T, r0, len, i);
      i += len;
    }
  });
}

template <typename scalar_t>
void ltd_forward_kernel(const scalar_t* x, scalar_t* out, int64_t B, int64_t T, int64_t R, int64_t sB, int64_t sT,
                        int64_t sR) {
  using acc_t = at::opmath_type<scalar_t>;
  for_row_chunks(B, T, R, [&](int64_t b, int64_t t, int64_t r0, int64_t len, int64_t i) {
    scalar_t* __restrict__ o = out + i;
    if (t == 0) {
      std::fill(o, o + len, scalar_t(0));
      return;
    }
    const scalar_t* __restrict__ cur = x + b * sB + t * sT;
    const scalar_t* __restrict__ prev = cur - sT;
    for_row(sR, r0, len, [&](int64_t off, int64_t k) {
      o[k] = static_cast<scalar_t>(static_cast<acc_t>(cur[off]) - static_cast<acc_t>(prev[off]));
    });
  });
}

template <typename scalar_t>
void ltd_backward_kernel(const scalar_t* g, scalar_t* out, int64_t B, int64_t T, int64_t R, int64_t sB, int64_t sT,
                         int64_t sR) {
  using acc_t = at::opmath_type<scalar_t>;
  for_row_chunks(B, T, R, [&](int64_t b, int64_t t, int64_t r0, int64_t len, int64_t i) {
    const scalar_t* base = g + b * sB + t * sT;
    // a: g[t] (present for t >= 1), c: g[t+1] (present for t <= T-2).
    const scalar_t* __restrict__ a = t >= 1 ? base : nullptr;
    const scalar_t* __restrict__ c = t + 1 <= T - 1 ? base + sT : nullptr;
    scalar_t* __restrict__ o = out + i;
    const acc_t zero(0);
    if (a != nullptr && c != nullptr) {
      for_row(sR, r0, len, [&](int64_t off, int64_t k) {
        o[k] = static_cast<scalar_t>((zero + static_cast<acc_t>(a[off])) - static_cast<acc_t>(c[off]));
      });
    } else if (a != nullptr) {
      for_row(sR, r0, len, [&](int64_t off, int64_t k) { o[k] = static_cast<scalar_t>(zero + static_cast<acc_t>(a[off])); });
    } else if (c != nullptr) {
      for_row(sR, r0, len, [&](int64_t off, int64_t k) { o[k] = static_cast<scalar_t>(zero - static_cast<acc_t>(c[off])); });
    } else {  // T == 1: the only frame's difference is the constant 0
      std::fill(o, o + len, scalar_t(0));
    }
  });
}

// The checks both directions share; returns the [B, T, R] view (or copy) of t.
at::Tensor as_rows(const at::Tensor& t, const char* fn, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), fn, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() >= 2, fn, ": ", name, " must be at least 2-D [B, T, *rest], got ", t.dim(), "-D shape ",
              t.sizes());
  const at::ScalarType st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, fn, ": ", name,
              " must be float32, float64, float16 or bfloat16, got ", st);
  int64_t R = 1;
  for (int64_t d = 2; d < t.dim(); ++d) R *= t.size(d);
  return t.reshape({t.size(0), t.size(1), R});
}

template <typename Kernel>
at::Tensor run(const at::Tensor& t, const char* fn, const char* name, Kernel&& kernel) {
  const at::Tensor rows = as_rows(t, fn, name);
  auto out = at::empty(t.sizes(), t.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "local_temporal_diff", [&] {
    kernel(rows.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), rows.size(0), rows.size(1),
           rows.size(2), rows.stride(0), rows.stride(1), rows.stride(2));
  });
  return out;
}

}  // namespace

at::Tensor local_temporal_diff_forward(const at::Tensor& x) {
  return run(x, "local_temporal_diff_forward", "x", [](auto... args) { ltd_forward_kernel(args...); });
}

at::Tensor local_temporal_diff_backward(const at::Tensor& grad_out) {
  return run(grad_out, "local_temporal_diff_backward", "grad_out",
             [](auto... args) { ltd_backward_kernel(args...); });
}

}  // namespace tdsk
