// Every operator of the `subcoder_sparse` library, as register.cpp registers it (signatures there).

#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace subcoder {

// packed_linear.cpp
at::Tensor row_offsets(const at::Tensor& mask);
at::Tensor sparse_linear(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& values,
                         const at::Tensor& roff, int64_t in, const c10::optional<at::Tensor>& bias, int64_t mode);
at::Tensor sparse_linear_q8(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& values,
                            const at::Tensor& scales, const at::Tensor& roff, int64_t in,
                            const c10::optional<at::Tensor>& bias, int64_t mode);
at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);
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
