// temporal_pool_diff: CPU forward and backward (the TD-Adapter's D_z = Z_s - Pool(Z_s),
// Eq. 4 of the TDS-CLIP paper, plus the official channel-mean mix).
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
// S = H*W elements (the inner loops run on explicit 16-byte SIMD vectors through
// detail::simd_for, common.h; they do not rely on the auto-vectoriser, which leaves these
// select-heavy loops scalar) and take the N, C, T strides of the inputs as they are, so
// any permutation/slicing of the N, C, T dims (e.g. a [N, T, C, H, W] tensor permuted to
// [N, C, T, H, W]) is read in place. Only an input whose (H, W) plane is not a flat
// stride-1 run (channels-last, sliced/strided H or W, expanded) is first copied with
// .contiguous(). Outputs are contiguous, x's dtype.
// Arithmetic is in at::opmath_type (float for half/bfloat16/float, double for double),
// with the same operation order as the reference, so float32 with a == 0 is bit-exact.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
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

// The window of frame t holds w = min(T - 1, t + k//2) - max(0, t - k//2) + 1 frames: k in
// the interior of the clip, down to k//2 + 1 at its ends (and never more than T). Windows
// of up to kMaxUnroll frames get a compile-time count (the frame loop unrolls inside the
// spatial loop); larger ones take the same code with a runtime count. So the runtime
// count serves every interior window once k > 8 (k >= 9), and the clip-end windows too
// only once k//2 + 1 > 8 (k >= 17); T <= 8 never needs it. The backward's loop over the
// windows that contain frame t has the same count and the same dispatch.
constexpr int kMaxUnroll = 8;

template <typename Fn>
inline void dispatch_window(int64_t w, Fn&& fn) {
  static_assert(kMaxUnroll == 8, "dispatch_window cases");
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
}

// max over rows xl[j * sT + s], j < n (n = W, or w when W == 0). NaN propagates, as in
// max_pool3d. V is acc_t (one position) or a SIMD vector of acc_t (detail::simd_for).
template <int W, typename V, typename scalar_t>
inline V window_max_at(const scalar_t* xl, int64_t sT, int64_t w, int64_t s) {
  using detail::ld;
  const int64_t n = W > 0 ? W : w;
  V m = ld<V>(xl + s);
  for (int64_t j = 1; j < n; ++j) {
    const V v = ld<V>(xl + j * sT + s);
    m = ((v > m) | (v != v)) ? v : m;
  }
  return m;
}

// lo + the earliest row j < n holding the maximum of xl[j * sT + s]: strict '>' from the
// left; the first NaN, if any, wins (as torch.argmax). Frame numbers are kept as acc_t
// values so that every lane has one width.
template <int W, typename V, typename scalar_t, typename acc_t>
inline V window_argmax_at(const scalar_t* xl, int64_t sT, int64_t w, int64_t s, acc_t lo) {
  using detail::ld;
  using detail::splat;
  const int64_t n = W > 0 ? W : w;
  V m = ld<V>(xl + s);
  V id = splat<V>(lo);
  for (int64_t j = 1; j < n; ++j) {
    const V v = ld<V>(xl + j * sT + s);
    const auto take = (v > m) | ((v != v) & (m == m));
    m = take ? v : m;
    id = take ? splat<V>(lo + static_cast<acc_t>(j)) : id;
  }
  return id;
}

template <typename scalar_t>
void pool_forward_kernel(const scalar_t* x, scalar_t* out, int64_t N, int64_t C, int64_t T, int64_t S,
                         int64_t sN, int64_t sC, int64_t sT, int64_t k, double mix) {
  using acc_t = at::opmath_type<scalar_t>;
  using detail::ld;
  using detail::splat;
  using detail::st;
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
            detail::simd_for<scalar_t>(len, [&](int64_t s, auto tag) {
              using V = typename decltype(tag)::type;
              st(o + s, ld<V>(xt + s) - window_max_at<W, V>(xl, sT, w, s));
            });
          } else {
            acc_t* d = dbuf + c * BS;
            detail::simd_for<scalar_t>(len, [&](int64_t s, auto tag) {
              using V = typename decltype(tag)::type;
              const V v = ld<V>(xt + s) - window_max_at<W, V>(xl, sT, w, s);
              st(d + s, v);
              st(sum + s, ld<V>(sum + s) + v);
            });
          }
        }
      });
      if (use_mix) {
        for (int64_t s = 0; s < len; ++s) sum[s] = a * (sum[s] / fC);  // a * mean_c(d)
        for (int64_t c = 0; c < C; ++c) {
          const acc_t* d = dbuf + c * BS;
          scalar_t* o = out + ((n * C + c) * T + t) * S + s0;
          detail::simd_for<scalar_t>(len, [&](int64_t s, auto tag) {
            using V = typename decltype(tag)::type;
            st(o + s, splat<V>(keep) * ld<V>(d + s) + ld<V>(sum + s));
          });
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
  using detail::ld;
  using detail::splat;
  using detail::st;
  const int64_t pad = k / 2;
  const bool use_mix = mix != 0.0;
  const acc_t keep = static_cast<acc_t>(1.0 - mix);
  const acc_t coef = static_cast<acc_t>(mix / static_cast<double>(C));
  // Scratch per spatial position and frame: g_d and the window argmax of the current
  // channel, and with the mix the channel sum of g.
  const int64_t rows = T * (use_mix ? 3 : 2);
  const int64_t BS = detail::spatial_block(S, rows * static_cast<int64_t>(sizeof(acc_t)), N);
  const int64_t nSB = divup(S, BS);
  const int64_t items = N * nSB;
  const int64_t grain = std::max<int64_t>(1, detail::kGrainElems / std::max<int64_t>(1, C * T * BS));

  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(rows * BS);
    acc_t* gd = buf.data();       // [T][BS]  g_d of the current channel
    acc_t* idx = gd + T * BS;     // [T][BS]  argmax frame of each window (absolute, as acc_t)
    acc_t* csum = idx + T * BS;   // [T][BS]  sum_c g (mix only)
    for (int64_t it = begin; it < end; ++it) {
      const int64_t sb = it % nSB;
      const int64_t n = it / nSB;
      const int64_t s0 = sb * BS;
      const int64_t len = std::min(BS, S - s0);
      if (use_mix) {
        std::fill(csum, csum + T * BS, acc_t(0));
        for (int64_t c = 0; c < C; ++c) {
          for (int64_t t = 0; t < T; ++t) {
            const scalar_t* gr = g + n * gN + c * gC + t * gT + s0;
            acc_t* cs = csum + t * BS;
            detail::simd_for<scalar_t>(len, [&](int64_t s, auto tag) {
              using V = typename decltype(tag)::type;
              st(cs + s, ld<V>(cs + s) + ld<V>(gr + s));
            });
          }
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* xc = x + n * sN + c * sC + s0;
        // g_d of every frame.
        for (int64_t t = 0; t < T; ++t) {
          const scalar_t* gr = g + n * gN + c * gC + t * gT + s0;
          acc_t* gdt = gd + t * BS;
          const acc_t* cs = csum + t * BS;
          if (use_mix) {
            detail::simd_for<scalar_t>(len, [&](int64_t s, auto tag) {
              using V = typename decltype(tag)::type;
              st(gdt + s, splat<V>(keep) * ld<V>(gr + s) + splat<V>(coef) * ld<V>(cs + s));
            });
          } else {
            detail::simd_for<scalar_t>(len, [&](int64_t s, auto tag) {
              using V = typename decltype(tag)::type;
              st(gdt + s, ld<V>(gr + s));
            });
          }
        }
        // Argmax frame of every output frame's window.
        for (int64_t tp = 0; tp < T; ++tp) {
          const int64_t lo = std::max<int64_t>(0, tp - pad);
          const int64_t w = std::min<int64_t>(T - 1, tp + pad) - lo + 1;
          const scalar_t* xl = xc + lo * sT;
          acc_t* id = idx + tp * BS;
          const acc_t flo = static_cast<acc_t>(lo);
          dispatch_window(w, [&](auto wc) {
            constexpr int W = decltype(wc)::value;
            detail::simd_for<scalar_t>(len, [&](int64_t s, auto tag) {
              using V = typename decltype(tag)::type;
              st(id + s, window_argmax_at<W, V>(xl, sT, w, s, flo));
            });
          });
        }
        // grad_x[t] = g_d[t] + (0 - g_d[t'] - g_d[t''] ...) over the windows t' (in
        // increasing order, as the reference's scatter_add) whose argmax is t. A window
        // not routed to t subtracts -0, which leaves the sum unchanged and keeps the
        // select branch-free.
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
            detail::simd_for<scalar_t>(len, [&](int64_t s, auto tag) {
              using V = typename decltype(tag)::type;
              V routed = splat<V>(acc_t(0));
              for (int64_t q = 0; q < cnt; ++q) {
                const V gv = ld<V>(gl + q * BS + s);
                routed = routed - ((ld<V>(il + q * BS + s) == splat<V>(ft)) ? gv : splat<V>(acc_t(-0.0)));
              }
              st(o + s, ld<V>(gdt + s) + routed);
            });
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
