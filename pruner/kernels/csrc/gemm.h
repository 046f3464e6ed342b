// The BLAS product of a prefill batch: y = x @ W^T for a dense weight W (rows, in) that the caller
// holds in the compute dtype (a bf16 weight as it is, or a packed or int8 one expanded into a buffer).
// gemm.cpp says which orientation it asks the BLAS for, and why.

#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace subcoder {

// y (B, n), a view that may be a column slice of a wider output (row stride >= n), gets x (B, in) @
// w (n, in)^T, all in one dtype (bf16 or fp32). w's rows may be strided (a narrowed buffer).
void gemm_xwt_into(const at::Tensor& x, const at::Tensor& w, at::Tensor& y);

// Whether the product is asked for as W @ x^T (then transposed) rather than x @ W^T; set_ returns
// the previous setting (tests and benchmarks time both).
bool gemm_weight_first();
int64_t set_gemm_weight_first(int64_t on);

}  // namespace subcoder
