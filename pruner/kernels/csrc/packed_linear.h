// What the linear layers share with the greedy head beyond the ops (ops.h): the padded input the
// row kernels read.

#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace subcoder {

// The input, zero-padded to a multiple of 32 columns: fp32 for the AVX2 kernels, bf16 (rounded
// once) for the AVX-512 ones. Points into a per-thread buffer reused across calls (so a decode
// step allocates nothing but its output): valid until the thread's next call.
struct PaddedInput {
  const void* data;
  int64_t stride;
};
PaddedInput padded_input(const at::Tensor& x_in, int64_t in, int isa);

}  // namespace subcoder
