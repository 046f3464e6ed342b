// What the operator files share: bf16 <-> fp32 as torch rounds, and how many threads a product
// is worth. Compiled for the baseline ISA only (never include this inside a target region).

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace subcoder {

inline int64_t divup(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline float to_f32(float v) { return v; }
inline float to_f32(uint16_t v) { return c10::BFloat16(v, c10::BFloat16::from_bits()); }
inline void from_f32(float v, float* o) { *o = v; }
inline void from_f32(float v, uint16_t* o) { *o = c10::BFloat16(v).x; }
inline float bf16_round(float v) { return static_cast<float>(c10::BFloat16(v)); }

// Work (weight columns x batch rows) below which one thread does the whole product: waking the
// other threads costs more than it saves (about 10 us of work per thread at least).
constexpr int64_t MIN_WORK_PER_THREAD = 128 * 1024;

inline int64_t n_threads_for(int64_t work) {
  const int64_t t = std::max<int64_t>(1, at::get_num_threads());
  return std::max<int64_t>(1, std::min<int64_t>(t, work / MIN_WORK_PER_THREAD));
}

}  // namespace subcoder
