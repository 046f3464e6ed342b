// Every operator of the `subcoder_sparse` library, as register.cpp registers it (signatures there).

#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace subcoder {

// packed_linear.cpp. x (..., in) bf16 or fp32, the result (..., out) in x's dtype; the other
// operator files call these directly (no dispatcher hop).
at::Tensor row_offsets(const at::Tensor& mask);
// y = x @ W^T + bias for a packed W. mode: 0 = choose by batch size, 1 = tiled sparse kernel,
// 2 = expand + matmul.
at::Tensor sparse_linear(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& values,
                         const at::Tensor& roff, int64_t in, const c10::optional<at::Tensor>& bias, int64_t mode);
// The same with int8 values and fp32 per-row scales: y[..., r] = scales[r] * (x @ q[r]) + bias[r].
at::Tensor sparse_linear_q8(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& values,
                            const at::Tensor& scales, const at::Tensor& roff, int64_t in,
                            const c10::optional<at::Tensor>& bias, int64_t mode);
// Dense bf16 W (out, in) with the row kernels.
at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);
// Dense bf16 W (out, in) with the BLAS (prefill batches), in the orientation gemm.h chooses.
at::Tensor dense_gemm(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);
// Dense int8 W (out, in) with fp32 per-row scales; batches from the GEMM threshold on go through
// the BLAS (the weight converted in row chunks).
at::Tensor dense_linear_q8(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales,
                           const c10::optional<at::Tensor>& bias);
at::Tensor expand(const at::Tensor& mask, const at::Tensor& values, const at::Tensor& roff, int64_t in,
                  int64_t r0, int64_t r1, at::ScalarType dtype);
int64_t set_gemm_min_batch(int64_t batch);

// decode_step.cpp
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor rope(const at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor decode_layers(const at::Tensor& x, at::TensorList params, at::IntArrayRef kinds, at::TensorList k_cache,
                         at::TensorList v_cache, int64_t pos, const at::Tensor& cos, const at::Tensor& sin,
                         int64_t heads, int64_t kv_heads, at::ArrayRef<double> eps, double scaling);

// attention.cpp
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            int64_t first_len, double scaling);
int64_t set_decode_attention(int64_t own);

// greedy_head.cpp
at::Tensor greedy_head(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       const at::Tensor& q, const at::Tensor& scale, const at::Tensor& qsum, const at::Tensor& qabs);
int64_t head_screen_available();

}  // namespace subcoder
