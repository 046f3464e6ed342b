// The linear layers' entry points that other operator files call directly (no dispatcher hop):
// the decode step's projections and the greedy head's exact re-check.

#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace subcoder {

// y = x @ W^T + bias for a packed W; x (B, in) bf16 or fp32, y in x's dtype.
// mode: 0 = choose by batch size, 1 = tiled sparse kernel, 2 = expand + matmul.
at::Tensor sparse_linear_2d(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& values,
                            const at::Tensor& roff, int64_t in, const c10::optional<at::Tensor>& bias, int64_t mode);

// The same with int8 values and fp32 per-row scales: y[:, r] = scales[r] * (x @ q[r]) + bias[r].
at::Tensor sparse_linear_q8_2d(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& values,
                               const at::Tensor& scales, const at::Tensor& roff, int64_t in,
                               const c10::optional<at::Tensor>& bias, int64_t mode);

// Dense bf16 W (out, in): y = x @ W^T + bias with the row kernels.
at::Tensor dense_linear_2d(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);

// Dense int8 W (out, in) with fp32 per-row scales; batches from the GEMM threshold on go through
// the BLAS (the weight converted in row chunks).
at::Tensor dense_linear_q8_2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales,
                              const c10::optional<at::Tensor>& bias);

// The input, zero-padded to a multiple of 32 columns: fp32 for the AVX2 kernels, bf16 (rounded
// once) for the AVX-512 ones. Points into a per-thread buffer reused across calls (so a decode
// step allocates nothing but its output): valid until the thread's next call.
struct PaddedInput {
  const void* data;
  int64_t stride;
};
PaddedInput padded_input(const at::Tensor& x_in, int64_t in, int isa);

}  // namespace subcoder
