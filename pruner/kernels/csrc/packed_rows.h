// The row kernels of the linear layers, one instantiation per instruction set.
//
// Packed layout (docs/ARCHITECTURE.md, "Storage format"): for a weight W (out, in)
//   mask   int32 (out, nwords), nwords = ceil(in / 32); bit j (LSB first) of word k in row r is set
//          when W[r, 32k + j] is kept; padding bits are 0.
//   values bf16 (nnz + PAD_VALUES at least,), the kept values row by row, columns ascending; or
//          int8 (the same count) with fp32 per-row scales beside them (storage's `values: int8`).
//   roff   int64 (out + 1,), prefix sum of the rows' popcounts (computed once at load).
// Inputs arrive zero-padded to 32 * nwords columns in the ISA's element type (`I::In`).
//
// Defined in packed_rows_impl.h; instantiated in packed_rows_avx2.cpp and packed_rows_avx512.cpp.

#pragma once

#include <cstdint>

#include "isa.h"

namespace subcoder {

// T: the value type, uint16_t (bf16 bits) or int8_t (int8 values whose per-row scale the caller
// applies to each row's result: a row's sum is scale * sum(q * x), so the kernel never multiplies
// by the scale per value).
template <class I, class T = uint16_t>
struct PackedRows {
  using In = typename I::In;
  // One packed row (mask words mw, values from v) against nb = 1..4 input rows x + b * xs.
  static void sparse(int nb, const uint32_t* mw, int64_t nwords, const T* v, const In* x, int64_t xs,
                     float* out);
  // One dense row of `in` values against nb = 1..4 input rows.
  static void dense(int nb, const T* w, int64_t in, const In* x, int64_t xs, float* out);
  // Rows [r0, r1) of a packed weight, dense fp32 (int8: unscaled), into dst (row stride ld >= 32 * nwords).
  static void expand_f32(const uint32_t* mask, int64_t nwords, const T* values, const int64_t* roff,
                         int64_t r0, int64_t r1, float* dst, int64_t ld);
};

// The same as dense bf16 (AVX-512 only: the vpexpandw result is stored as it is; int8 values as
// their exact integers, unscaled). T: uint16_t or int8_t, instantiated in packed_rows_avx512.cpp.
template <class T>
void expand_rows_bf16_avx512(const uint32_t* mask, int64_t nwords, const T* values, const int64_t* roff,
                             int64_t r0, int64_t r1, uint16_t* dst, int64_t ld);

}  // namespace subcoder
