// Small helpers shared by the tdsk CPU kernels.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

namespace tdsk {
namespace detail {

// Work of one parallel_for task below which going parallel does not pay (elements).
constexpr int64_t kGrainElems = 32768;

inline int64_t divup(int64_t a, int64_t b) { return (a + b - 1) / b; }

// True when dims (h_dim, h_dim + 1) of t, i.e. (H, W), form one flat run of H*W
// elements with stride 1, so a whole spatial plane is a contiguous vector whatever
// the strides of the other dims are.
inline bool plane_is_flat(const at::Tensor& t, int64_t h_dim) {
  const int64_t H = t.size(h_dim), W = t.size(h_dim + 1);
  return (W == 1 || t.stride(h_dim + 1) == 1) && (H == 1 || t.stride(h_dim) == W);
}

// Length of the spatial block one work item handles: scratch of per_s_bytes per
// spatial position stays within ~48 KiB (L1/L2 resident), and there are at least
// ~4 items per thread when the spatial extent allows it.
inline int64_t spatial_block(int64_t S, int64_t per_s_bytes, int64_t outer_items) {
  constexpr int64_t kBudget = 48 * 1024;
  int64_t bs = std::max<int64_t>(16, kBudget / std::max<int64_t>(1, per_s_bytes));
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  if (outer_items * divup(S, bs) < want) {
    const int64_t nsb = divup(want, std::max<int64_t>(1, outer_items));
    bs = std::min(bs, std::max<int64_t>(16, divup(S, nsb)));
  }
  bs = divup(bs, 16) * 16;
  return std::max<int64_t>(1, std::min(bs, S));
}

}  // namespace detail
}  // namespace tdsk
