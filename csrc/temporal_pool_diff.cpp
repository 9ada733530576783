// temporal_pool_diff: CPU forward and backward.
//
//   p[t] = max(x[t - k//2 .. t + k//2] that exist)          (max_pool3d, (k,1,1), pad k//2)
//   d    = x - p
//   out  = (1 - a) * d + a * mean_c(d)                     (a = channel_mix; a == 0: out = d)
//
// Backward (argmax recomputed from x, nothing saved; earliest frame wins ties):
//   g_d[t]    = (1 - a) * g[t] + (a / C) * sum_c g[t]
//   grad_x[t] = g_d[t] - sum_{t' : argmax(window(t')) == t} g_d[t']
//
// Layout and strides: the kernels walk the (H, W) plane as one flat, stride-1 vector of
// S = H*W elements (the inner loops auto-vectorise) and take the N, C, T strides of the
// inputs as they are, so any permutation/slicing of the N, C, T dims (e.g. a
// [N, T, C, H, W] tensor permuted to [N, C, T, H, W]) is read in place. Only an input
// whose (H, W) plane is not a flat stride-1 run (channels-last, sliced/strided H or W,
// expanded) is first copied with .contiguous(). Outputs are contiguous, x's dtype.
// Arithmetic is in at::opmath_type (float for half/bfloat16/float, double for double),
// with the same operation order as the reference, so float32 with a == 0 is bit-exact.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common.h"
#include "tdsk_cpu.h"

namespace tdsk {
namespace {

using detail::divup;

// Window sizes up to kMaxUnroll frames are compile-time constants (the frame loop
// unrolls inside the vectorised spatial loop); larger windows (k > 15, or k > 8 at the
// clip ends) take the same code with a runtime count.
constexpr int kMaxUnroll = 8;

template <typename Fn>
inline void dispatch_window(int64_t w, Fn&& fn) {
  switch (w) {
    case 1: fn(std::integral_constant<int, 1>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    case 4: fn(std::integral_constant<int, 4>{}); break;
    case 5: fn(std::integral_constant<int, 5>{}); break;
    case 6: fn(std::integral_constant<int, 6>{}); break;
    case 7: fn(std::integral_constant<int, 7>{}); break;
    case 8: fn(std::integral_constant<int, 8>{}); break;
    default: fn(std::integral_constant<int, 0>{}); break;  // runtime count
  }
  static_assert(kMaxUnroll == 8, "dispatch_window cases");
}

// max over the rows xl[j * sT], j = 0..w-1, at position s. NaN propagates (max_pool3d).
template <int W, typename scalar_t, typename acc_t>
inline acc_t window_max_at(const scalar_t* xl, int64_t sT, int64_t w, int64_t s) {
  const int64_t n = W > 0 ? W : w;
  acc_t m = static_cast<acc_t>(xl[s]);
  for (int64_t j = 1; j < n; ++j) {
    const acc_t v = static_cast<acc_t>(xl[j * sT + s]);
    m = ((v > m) | (v != v)) ? v : m;  // bitwise: no branch, the loop vectorises
  }
  return m;
}

// id[s] = lo + the earliest row j < w holding the maximum of xl[j * sT] at s: strict '>'
// from the left; the first NaN, if any, wins (as torch.argmax). Frame numbers are kept
// as acc_t so that every loop is one lane width. One pass per row over small L1-resident
// arrays: this form vectorises (a fused per-position frame loop did not, with GCC 12).
template <typename scalar_t, typename acc_t>
inline void window_argmax_rows(const scalar_t* __restrict__ xl, int64_t sT, int64_t w, int64_t len, acc_t lo,
                               acc_t* __restrict__ m, acc_t* __restrict__ id) {
  for (int64_t s = 0; s < len; ++s) {
    m[s] = static_cast<acc_t>(xl[s]);
    id[s] = lo;
  }
  for (int64_t j = 1; j < w; ++j) {
    const scalar_t* __restrict__ r = xl + j * sT;
    const acc_t fj = lo + static_cast<acc_t>(j);
    for (int64_t s = 0; s < len; ++s) {
      const acc_t v = static_cast<acc_t>(r[s]);
      const acc_t cur = m[s];
      const acc_t prev = id[s];
      const bool take = (v > cur) | ((v != v) & (cur == cur));  // bitwise: no branch
      m[s] = take ? v : cur;
      id[s] = take ? fj : prev;
    }
  }
}

template <typename scalar_t>
void pool_forward_kernel(const scalar_t* x, scalar_t* out, int64_t N, int64_t C, int64_t T, int64_t S,
                         int64_t sN, int64_t sC, int64_t sT, int64_t k, double mix) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t pad = k / 2;
  const bool use_mix = mix != 0.0;
  const acc_t keep = static_cast<acc_t>(1.0 - mix);
  const acc_t a = static_cast<acc_t>(mix);
  const acc_t fC = static_cast<acc_t>(C);
  // Scratch per spatial position with the mix: the channel sum and d of every channel
  // (the mean needs all channels before any output can be written).
  const int64_t per_s = (use_mix ? C + 1 : 1) * static_cast<int64_t>(sizeof(acc_t));
  const int64_t BS = detail::spatial_block(S, per_s, N * T);
  const int64_t nSB = divup(S, BS);
  const int64_t items = N * T * nSB;
  const int64_t grain = std::max<int64_t>(1, detail::kGrainElems / std::max<int64_t>(1, C * BS));

  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(use_mix ? (C + 1) * BS : 0);
    acc_t* sum = buf.data();
    acc_t* dbuf = use_mix ? sum + BS : nullptr;
    for (int64_t it = begin; it < end; ++it) {
      const int64_t sb = it % nSB;
      const int64_t t = (it / nSB) % T;
      const int64_t n = it / (nSB * T);
      const int64_t s0 = sb * BS;
      const int64_t len = std::min(BS, S - s0);
      const int64_t lo = std::max<int64_t>(0, t - pad);
      const int64_t w = std::min<int64_t>(T - 1, t + pad) - lo + 1;
      if (use_mix) std::fill(sum, sum + len, acc_t(0));
      dispatch_window(w, [&](auto wc) {
        constexpr int W = decltype(wc)::value;
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* xc = x + n * sN + c * sC + s0;
          const scalar_t* xl = xc + lo * sT;
          const scalar_t* xt = xc + t * sT;
          if (!use_mix) {
            scalar_t* o = out + ((n * C + c) * T + t) * S + s0;
#pragma GCC ivdep
            for (int64_t s = 0; s < len; ++s) {
              const acc_t m = window_max_at<W, scalar_t, acc_t>(xl, sT, w, s);
              o[s] = static_cast<scalar_t>(static_cast<acc_t>(xt[s]) - m);
            }
          } else {
            acc_t* d = dbuf + c * BS;
#pragma GCC ivdep
            for (int64_t s = 0; s < len; ++s) {
              const acc_t v = static_cast<acc_t>(xt[s]) - window_max_at<W, scalar_t, acc_t>(xl, sT, w, s);
              d[s] = v;
              sum[s] += v;
            }
          }
        }
      });
      if (use_mix) {
        for (int64_t s = 0; s < len; ++s) sum[s] = a * (sum[s] / fC);  // a * mean_c(d)
        for (int64_t c = 0; c < C; ++c) {
          const acc_t* __restrict__ d = dbuf + c * BS;
          scalar_t* __restrict__ o = out + ((n * C + c) * T + t) * S + s0;
          for (int64_t s = 0; s < len; ++s) o[s] = static_cast<scalar_t>(keep * d[s] + sum[s]);
        }
      }
    }
  });
}

template <typename scalar_t>
void pool_backward_kernel(const scalar_t* g, int64_t gN, int64_t gC, int64_t gT, const scalar_t* x, int64_t sN,
                          int64_t sC, int64_t sT, scalar_t* gx, int64_t N, int64_t C, int64_t T, int64_t S,
                          int64_t k, double mix) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t pad = k / 2;
  const bool use_mix = mix != 0.0;
  const acc_t keep = static_cast<acc_t>(1.0 - mix);
  const acc_t coef = static_cast<acc_t>(mix / static_cast<double>(C));
  // Scratch per spatial position and frame: g_d and the window argmax of the current
  // channel, and with the mix the channel sum of g.
  const int64_t rows = T * (use_mix ? 3 : 2) + 1;
  const int64_t BS = detail::spatial_block(S, rows * static_cast<int64_t>(sizeof(acc_t)), N);
  const int64_t nSB = divup(S, BS);
  const int64_t items = N * nSB;
  const int64_t grain = std::max<int64_t>(1, detail::kGrainElems / std::max<int64_t>(1, C * T * BS));

  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(rows * BS);
    acc_t* gd = buf.data();       // [T][BS]  g_d of the current channel
    acc_t* idx = gd + T * BS;     // [T][BS]  argmax frame of each window (absolute, as acc_t)
    acc_t* mrow = idx + T * BS;   // [BS]     running window max
    acc_t* csum = mrow + BS;      // [T][BS]  sum_c g (mix only)
    for (int64_t it = begin; it < end; ++it) {
      const int64_t sb = it % nSB;
      const int64_t n = it / nSB;
      const int64_t s0 = sb * BS;
      const int64_t len = std::min(BS, S - s0);
      if (use_mix) {
        std::fill(csum, csum + T * BS, acc_t(0));
        for (int64_t c = 0; c < C; ++c) {
          for (int64_t t = 0; t < T; ++t) {
            const scalar_t* __restrict__ gr = g + n * gN + c * gC + t * gT + s0;
            acc_t* __restrict__ cs = csum + t * BS;
            for (int64_t s = 0; s < len; ++s) cs[s] += static_cast<acc_t>(gr[s]);
          }
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* xc = x + n * sN + c * sC + s0;
        // g_d of every frame.
        for (int64_t t = 0; t < T; ++t) {
          const scalar_t* __restrict__ gr = g + n * gN + c * gC + t * gT + s0;
          acc_t* __restrict__ gdt = gd + t * BS;
          if (use_mix) {
            const acc_t* __restrict__ cs = csum + t * BS;
            for (int64_t s = 0; s < len; ++s) gdt[s] = keep * static_cast<acc_t>(gr[s]) + coef * cs[s];
          } else {
            for (int64_t s = 0; s < len; ++s) gdt[s] = static_cast<acc_t>(gr[s]);
          }
        }
        // Argmax frame of every output frame's window.
        for (int64_t tp = 0; tp < T; ++tp) {
          const int64_t lo = std::max<int64_t>(0, tp - pad);
          const int64_t w = std::min<int64_t>(T - 1, tp + pad) - lo + 1;
          window_argmax_rows(xc + lo * sT, sT, w, len, static_cast<acc_t>(lo), mrow, idx + tp * BS);
        }
        // grad_x[t] = g_d[t] + (0 - g_d[t'] - g_d[t''] ...) over the windows t' (in
        // increasing order, as the reference's scatter_add) whose argmax is t. A window
        // not routed to t subtracts -0, which leaves the sum unchanged (and keeps the
        // select branch-free, so the loop vectorises).
        for (int64_t t = 0; t < T; ++t) {
          const int64_t tlo = std::max<int64_t>(0, t - pad);
          const int64_t nw = std::min<int64_t>(T - 1, t + pad) - tlo + 1;
          const acc_t ft = static_cast<acc_t>(t);
          const acc_t* gl = gd + tlo * BS;
          const acc_t* il = idx + tlo * BS;
          const acc_t* gdt = gd + t * BS;
          scalar_t* o = gx + ((n * C + c) * T + t) * S + s0;
          dispatch_window(nw, [&](auto wc) {
            constexpr int W = decltype(wc)::value;
            const int64_t cnt = W > 0 ? W : nw;
#pragma GCC ivdep
            for (int64_t s = 0; s < len; ++s) {
              acc_t routed = acc_t(0);
              for (int64_t q = 0; q < cnt; ++q) {
                const acc_t gv = gl[q * BS + s];
                routed = routed - ((il[q * BS + s] == ft) ? gv : acc_t(-0.0));
              }
              o[s] = static_cast<scalar_t>(gdt[s] + routed);
            }
          });
        }
      }
    }
  });
}

void check_pool_args(const at::Tensor& x, int64_t kernel_size, double channel_mix, const char* fn) {
  TORCH_CHECK(x.device().is_cpu(), fn, ": x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 5, fn, ": x must be 5-D [N, C, T, H, W], got ", x.dim(), "-D shape ", x.sizes());
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, fn,
              ": x must be float32, float64, float16 or bfloat16, got ", st);
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1, fn, ": kernel_size must be odd and >= 1, got ",
              kernel_size);
  TORCH_CHECK(channel_mix >= 0.0 && channel_mix <= 1.0, fn, ": channel_mix must be in [0, 1], got ",
              channel_mix);
}

// x with a flat stride-1 (H, W) plane: x itself, or a contiguous copy.
at::Tensor with_flat_plane(const at::Tensor& t) {
  return detail::plane_is_flat(t, 3) ? t : t.contiguous();
}

}  // namespace

at::Tensor temporal_pool_diff_forward(const at::Tensor& x_in, int64_t kernel_size, double channel_mix) {
  check_pool_args(x_in, kernel_size, channel_mix, "temporal_pool_diff_forward");
  auto out = at::empty(x_in.sizes(), x_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (x_in.numel() == 0) return out;
  const at::Tensor x = with_flat_plane(x_in);
  const int64_t N = x.size(0), C = x.size(1), T = x.size(2), S = x.size(3) * x.size(4);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "temporal_pool_diff_forward", [&] {
    pool_forward_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), N, C, T, S,
                                  x.stride(0), x.stride(1), x.stride(2), kernel_size, channel_mix);
  });
  return out;
}

at::Tensor temporal_pool_diff_backward(const at::Tensor& grad_out, const at::Tensor& x_in, int64_t kernel_size,
                                       double channel_mix) {
  check_pool_args(x_in, kernel_size, channel_mix, "temporal_pool_diff_backward");
  TORCH_CHECK(grad_out.device().is_cpu(), "temporal_pool_diff_backward: grad_out must be a CPU tensor, got ",
              grad_out.device());
  TORCH_CHECK(grad_out.sizes() == x_in.sizes(), "temporal_pool_diff_backward: grad_out shape ", grad_out.sizes(),
              " does not match x shape ", x_in.sizes());
  TORCH_CHECK(at::isFloatingType(grad_out.scalar_type()),
              "temporal_pool_diff_backward: grad_out must be floating, got ", grad_out.scalar_type());
  auto grad_x = at::empty(x_in.sizes(), x_in.options().memory_format(at::MemoryFormat::Contiguous));
  if (x_in.numel() == 0) return grad_x;
  const at::Tensor x = with_flat_plane(x_in);
  const at::Tensor g = with_flat_plane(grad_out.scalar_type() == x.scalar_type() ? grad_out
                                                                                 : grad_out.to(x.scalar_type()));
  const int64_t N = x.size(0), C = x.size(1), T = x.size(2), S = x.size(3) * x.size(4);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "temporal_pool_diff_backward", [&] {
    pool_backward_kernel<scalar_t>(g.const_data_ptr<scalar_t>(), g.stride(0), g.stride(1), g.stride(2),
                                   x.const_data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2),
                                   grad_x.mutable_data_ptr<scalar_t>(), N, C, T, S, kernel_size, channel_mix);
  });
  return grad_x;
}

}  // namespace tdsk
