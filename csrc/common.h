// Small helpers shared by the tdsk CPU kernels.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

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

// ---- Portable SIMD (GCC/Clang vector extensions) ---------------------------------
// The select-heavy hot loops (temporal_pool_diff.cpp) are written once as a body(s, tag)
// that uses only ld/st/splat and arithmetic, comparisons and `mask ? a : b`; simd_for
// runs it on 16-byte vectors of float/double (SSE2 on any x86-64, NEON on arm64; wider
// targets split or fuse them), then on single elements for the tail and for
// half/bfloat16 (converted to float).
// This does not depend on the auto-vectoriser, which leaves such select-heavy loops
// scalar (with unpredictable branches) more often than not.
template <typename T>
struct Tag {
  using type = T;
};

template <typename T>
struct SimdOf;
template <>
struct SimdOf<float> {
  typedef float type __attribute__((vector_size(16)));
};
template <>
struct SimdOf<double> {
  typedef double type __attribute__((vector_size(16)));
};

template <typename V, typename T>
inline V ld(const T* p) {
  if constexpr (std::is_arithmetic_v<V>) {
    return static_cast<V>(*p);
  } else {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
}

template <typename V, typename T>
inline void st(T* p, V v) {
  if constexpr (std::is_arithmetic_v<V>) {
    *p = static_cast<T>(v);
  } else {
    std::memcpy(p, &v, sizeof(V));
  }
}

template <typename V, typename A>
inline V splat(A a) {
  if constexpr (std::is_arithmetic_v<V>) {
    return static_cast<V>(a);
  } else {
    return V{} + a;  // scalar operand is broadcast
  }
}

template <typename scalar_t, typename Body>
inline void simd_for(int64_t len, Body&& body) {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t s = 0;
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
    using V = typename SimdOf<scalar_t>::type;
    constexpr int64_t L = static_cast<int64_t>(sizeof(V) / sizeof(scalar_t));
    for (; s + 2 * L <= len; s += 2 * L) {
      body(s, Tag<V>{});
      body(s + L, Tag<V>{});
    }
    for (; s + L <= len; s += L) body(s, Tag<V>{});
  }
  for (; s < len; ++s) body(s, Tag<acc_t>{});
}

}  // namespace detail
}  // namespace tdsk
