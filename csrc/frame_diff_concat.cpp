// frame_diff_concat: CPU forward and backward (the SME-Adapter's D_i, Eq. 2 of the TDS-CLIP
// paper: differences of consecutive local frames, concatenated along channels).
//
// Forward:  frames [N, T, M, C, H, W] (uint8 or floating, any strides)
//           -> out [N, (M-1)*C, T, H, W] contiguous, out_dtype, with
//           out[n, j*C + c, t] = (f[n, t, j+1, c] - f[n, t, j, c]) * scale[c]
// Backward: grad_out [N, (M-1)*C, T, H, W] (any strides)
//           -> grad_frames [N, T, M, C, H, W] contiguous, frames_dtype, with
//           grad[n, t, m, c] = scale[c] * g[n, (m-1)*C + c, t] - scale[c] * g[n, m*C + c, t]
//           (each term present only when its channel group exists).
//
// Both are one pass over the output, split into equal flat chunks by at::parallel_for;
// an output row (one H*W plane) reads one or two input planes. Input planes that are
// flat stride-1 runs are read as vectors: these are plain subtract/multiply loops without
// selects, which GCC's auto-vectoriser turns into 16-byte SIMD at -O3 (checked with
// -fopt-info-vec; the select-heavy loops of temporal_pool_diff.cpp use common.h's explicit
// vectors instead). Any other strides (channels-last, sliced H/W, expanded) are read in
// place element by element, never copied. Arithmetic is in float (double when an input or output is double), in the
// reference's operation order, then rounded once to the output dtype.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common.h"
#include "tdsk_cpu.h"

namespace tdsk {
namespace {

// Geometry of a plane: H, W sizes and strides, and whether it is one flat stride-1 run.
struct Plane {
  int64_t H, W, sH, sW;
  bool flat;
};

// Calls body(in_offset, k) for k = 0..len-1 over plane positions s0..s0+len-1; the
// offsets are element offsets into the strided plane. Flat planes get a plain loop.
template <typename F>
inline void for_plane(const Plane& p, int64_t s0, int64_t len, F&& body) {
  if (p.flat) {
    for (int64_t k = 0; k < len; ++k) body(s0 + k, k);
    return;
  }
  int64_t h = s0 / p.W, w = s0 % p.W;
  for (int64_t k = 0; k < len;) {
    const int64_t run = std::min(len - k, p.W - w);
    const int64_t base = h * p.sH;
    for (int64_t q = 0; q < run; ++q) body(base + (w + q) * p.sW, k + q);
    k += run;
    w = 0;
    ++h;
  }
}

template <typename in_t, typename out_t, typename work_t>
void fdc_forward_kernel(const in_t* f, out_t* out, int64_t N, int64_t T, int64_t M, int64_t C, const Plane& pl,
                        int64_t fN, int64_t fT, int64_t fM, int64_t fC, const work_t* scale) {
  const int64_t S = pl.H * pl.W;
  const int64_t total = N * (M - 1) * C * T * S;
  at::parallel_for(0, total, detail::kGrainElems, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t r = i / S;
      const int64_t s0 = i - r * S;
      const int64_t len = std::min(S - s0, end - i);
      const int64_t t = r % T;
      const int64_t c = (r / T) % C;
      const int64_t j = (r / (T * C)) % (M - 1);
      const int64_t n = r / (T * C * (M - 1));
      const in_t* __restrict__ p0 = f + n * fN + t * fT + j * fM + c * fC;
      const in_t* __restrict__ p1 = p0 + fM;
      out_t* __restrict__ o = out + i;
      if (scale != nullptr) {
        const work_t sc = scale[c];
        for_plane(pl, s0, len, [&](int64_t off, int64_t k) {
          o[k] = static_cast<out_t>((static_cast<work_t>(p1[off]) - static_cast<work_t>(p0[off])) * sc);
        });
      } else {
        for_plane(pl, s0, len, [&](int64_t off, int64_t k) {
          o[k] = static_cast<out_t>(static_cast<work_t>(p1[off]) - static_cast<work_t>(p0[off]));
        });
      }
      i += len;
    }
  });
}

template <typename g_t, typename out_t, typename work_t>
void fdc_backward_kernel(const g_t* g, out_t* out, int64_t N, int64_t T, int64_t M, int64_t C, const Plane& pl,
                         int64_t gN, int64_t gCh, int64_t gT, const work_t* scale) {
  const int64_t S = pl.H * pl.W;
  const int64_t total = N * T * M * C * S;
  at::parallel_for(0, total, detail::kGrainElems, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t r = i / S;
      const int64_t s0 = i - r * S;
      const int64_t len = std::min(S - s0, end - i);
      const int64_t c = r % C;
      const int64_t m = (r / C) % M;
      const int64_t t = (r / (C * M)) % T;
      const int64_t n = r / (C * M * T);
      const work_t sc = scale != nullptr ? scale[c] : work_t(1);
      const g_t* base = g + n * gN + t * gT + c * gCh;
      // a: channel group m-1 (the difference where frame m is the minuend), b: group m.
      const g_t* __restrict__ a = m >= 1 ? base + (m - 1) * C * gCh : nullptr;
      const g_t* __restrict__ b = m <= M - 2 ? base + m * C * gCh : nullptr;
      out_t* __restrict__ o = out + i;
      const work_t zero(0);
      if (scale != nullptr) {
        if (a != nullptr && b != nullptr) {
          for_plane(pl, s0, len, [&](int64_t off, int64_t k) {
            o[k] = static_cast<out_t>((zero + static_cast<work_t>(a[off]) * sc) - static_cast<work_t>(b[off]) * sc);
          });
        } else if (a != nullptr) {
          for_plane(pl, s0, len, [&](int64_t off, int64_t k) {
            o[k] = static_cast<out_t>(zero + static_cast<work_t>(a[off]) * sc);
          });
        } else {
          for_plane(pl, s0, len, [&](int64_t off, int64_t k) {
            o[k] = static_cast<out_t>(zero - static_cast<work_t>(b[off]) * sc);
          });
        }
      } else {
        if (a != nullptr && b != nullptr) {
          for_plane(pl, s0, len, [&](int64_t off, int64_t k) {
            o[k] = static_cast<out_t>((zero + static_cast<work_t>(a[off])) - static_cast<work_t>(b[off]));
          });
        } else if (a != nullptr) {
          for_plane(pl, s0, len, [&](int64_t off, int64_t k) {
            o[k] = static_cast<out_t>(zero + static_cast<work_t>(a[off]));
          });
        } else {
          for_plane(pl, s0, len, [&](int64_t off, int64_t k) {
            o[k] = static_cast<out_t>(zero - static_cast<work_t>(b[off]));
          });
        }
      }
      i += len;
    }
  });
}

bool is_float_dtype(at::ScalarType st) {
  return st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16;
}

// scale as a vector of work_t (empty when absent), after checking it. float32, or float64
// when the work dtype is double (the public op passes a float64 scale exactly then); a
// float32 value widened to double is exact, as the reference's scale.to(float64).
template <typename work_t>
std::vector<work_t> scale_values(const std::optional<at::Tensor>& scale, int64_t C, const char* fn) {
  std::vector<work_t> v;
  if (!scale.has_value() || !scale->defined()) return v;
  const at::Tensor& s = *scale;
  constexpr bool wide = std::is_same_v<work_t, double>;
  TORCH_CHECK(s.device().is_cpu(), fn, ": scale must be a CPU tensor, got ", s.device());
  TORCH_CHECK(s.scalar_type() == at::kFloat || (wide && s.scalar_type() == at::kDouble), fn,
              ": scale must be float32 (float64 only when frames or the result are float64), got ",
              s.scalar_type());
  TORCH_CHECK(s.dim() == 1 && s.size(0) == C, fn, ": scale must have shape [C] = [", C, "], got ", s.sizes());
  const at::Tensor sc = s.contiguous();
  v.resize(C);
  if (sc.scalar_type() == at::kDouble) {
    const double* p = sc.const_data_ptr<double>();
    for (int64_t c = 0; c < C; ++c) v[c] = static_cast<work_t>(p[c]);
  } else {
    const float* p = sc.const_data_ptr<float>();
    for (int64_t c = 0; c < C; ++c) v[c] = static_cast<work_t>(p[c]);
  }
  return v;
}

}  // namespace

at::Tensor frame_diff_concat_forward(const at::Tensor& frames, const std::optional<at::Tensor>& scale,
                                     at::ScalarType out_dtype) {
  constexpr const char* fn = "frame_diff_concat_forward";
  TORCH_CHECK(frames.device().is_cpu(), fn, ": frames must be a CPU tensor, got ", frames.device());
  TORCH_CHECK(frames.dim() == 6, fn, ": frames must be 6-D [N, T, M, C, H, W], got ", frames.dim(), "-D shape ",
              frames.sizes());
  TORCH_CHECK(frames.scalar_type() == at::kByte || is_float_dtype(frames.scalar_type()), fn,
              ": frames must be uint8, float32, float64, float16 or bfloat16, got ", frames.scalar_type());
  TORCH_CHECK(is_float_dtype(out_dtype), fn, ": out_dtype must be float32, float64, float16 or bfloat16, got ",
              out_dtype);
  const int64_t N = frames.size(0), T = frames.size(1), M = frames.size(2), C = frames.size(3);
  const int64_t H = frames.size(4), W = frames.size(5);
  TORCH_CHECK(M >= 2, fn, ": need M >= 2 local frames (dim 2), got M=", M);
  auto out = at::empty({N, (M - 1) * C, T, H, W}, frames.options().dtype(out_dtype));
  const Plane pl{H, W, frames.stride(4), frames.stride(5), detail::plane_is_flat(frames, 4)};
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, frames.scalar_type(), fn, [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, fn, [&] {
      using out_t = scalar_t;
      using work_t = std::conditional_t<std::is_same_v<in_t, double> || std::is_same_v<out_t, double>, double, float>;
      const std::vector<work_t> sc = scale_values<work_t>(scale, C, fn);
      if (out.numel() == 0) return;
      fdc_forward_kernel<in_t, out_t, work_t>(frames.const_data_ptr<in_t>(), out.mutable_data_ptr<out_t>(), N, T, M,
                                              C, pl, frames.stride(0), frames.stride(1), frames.stride(2),
                                              frames.stride(3), sc.empty() ? nullptr : sc.data());
    });
  });
  return out;
}

at::Tensor frame_diff_concat_backward(const at::Tensor& grad_out, const std::optional<at::Tensor>& scale,
                                      int64_t num_local, at::ScalarType frames_dtype) {
  constexpr const char* fn = "frame_diff_concat_backward";
  TORCH_CHECK(grad_out.device().is_cpu(), fn, ": grad_out must be a CPU tensor, got ", grad_out.device());
  TORCH_CHECK(grad_out.dim() == 5, fn, ": grad_out must be 5-D [N, (M-1)*C, T, H, W], got ", grad_out.dim(),
              "-D shape ", grad_out.sizes());
  TORCH_CHECK(is_float_dtype(grad_out.scalar_type()), fn,
              ": grad_out must be float32, float64, float16 or bfloat16, got ", grad_out.scalar_type());
  TORCH_CHECK(is_float_dtype(frames_dtype), fn,
              ": frames_dtype must be float32, float64, float16 or bfloat16 (only floating frames have "
              "gradients), got ",
              frames_dtype);
  TORCH_CHECK(num_local >= 2, fn, ": num_local (M) must be >= 2, got ", num_local);
  const int64_t M = num_local;
  TORCH_CHECK(grad_out.size(1) % (M - 1) == 0, fn, ": grad_out dim 1 (", grad_out.size(1),
              ") is not a multiple of M-1 = ", M - 1);
  const int64_t N = grad_out.size(0), C = grad_out.size(1) / (M - 1), T = grad_out.size(2);
  const int64_t H = grad_out.size(3), W = grad_out.size(4);
  auto grad = at::empty({N, T, M, C, H, W}, grad_out.options().dtype(frames_dtype));
  const Plane pl{H, W, grad_out.stride(3), grad_out.stride(4), detail::plane_is_flat(grad_out, 3)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), fn, [&] {
    using g_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, frames_dtype, fn, [&] {
      using out_t = scalar_t;
      using work_t = std::conditional_t<std::is_same_v<g_t, double> || std::is_same_v<out_t, double>, double, float>;
      const std::vector<work_t> sc = scale_values<work_t>(scale, C, fn);
      if (grad.numel() == 0) return;
      fdc_backward_kernel<g_t, out_t, work_t>(grad_out.const_data_ptr<g_t>(), grad.mutable_data_ptr<out_t>(), N, T, M,
                                              C, pl, grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
                                              sc.empty() ? nullptr : sc.data());
    });
  });
  return grad;
}

}  // namespace tdsk
