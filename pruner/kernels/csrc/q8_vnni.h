// int8 weights at batch 1-15 on AVX-512 VNNI: the input is quantised to int16 and each 32-column
// word costs three instructions -- vpmovsxbw (32 int8 -> int16, from memory), vpexpandw (register
// form, under the mask word; dense rows skip it) and vpdpwssd (int16 pairs -> int32) -- against
// seven on the bf16 route (packed_rows_impl.h), which left int8 values compute-bound on Zen 4.
//
// The arithmetic (pruner/kernels/int8.py `quantise_input` is its reference):
//   the input row is cut into groups of Q16_GROUP columns; group g has scale s_g = max|x_g| / 32767
//   (fp32) and stores q = round_half_even(x / s_g) (fp32 division), 0 where s_g is 0;
//   a weight row's result is sum_g s_g * (q8 . q16 over group g), the group's integer dot exact in
//   int32 (a lane adds at most 2 * 8 products of |q16| <= 32767 and |q8| <= 128 per group), converted
//   to fp32 once per group; the caller applies the row's own scale as before.
// Against the bf16 route the input keeps 15 bits per group instead of 8 per element: finer for every
// value within 2^7 of its group's largest, coarser only below that, where a value adds little to the
// dot product. Held-out perplexity of both is in docs/PERFORMANCE.md ("int8 kept values").

#pragma once

#include <cstdint>

namespace subcoder {

constexpr int64_t Q16_GROUP = 256;  // input columns per int16 scale: 8 mask words

// Which int8 layers take the route, a bit each; both by default. Measured cold at the 1.5B shapes
// (docs/PERFORMANCE.md, "int8 kept values"): dense int8 rows gain on every CPU tried; packed rows at
// 50% gain 1.3-1.8x on a Xeon with AMX (2.26-3.48x dense bf16 against 1.73-2.05x by the bf16 route)
// and are within the noise of the bf16 route on Zen 4 (1.41-1.69x against 1.38-1.62x), where the
// per-word expansion both routes share sets the pace. Tests and benchmarks clear a bit to compare.
constexpr int64_t Q8_VNNI_DENSE = 1;
constexpr int64_t Q8_VNNI_PACKED = 2;

// This CPU runs the VNNI route (AVX-512 BF16 and VNNI); whether layers of kind `which` (one of the
// bits above) take it now: only while the AVX-512 ISA is active and their bit is set.
bool q8_vnni_here();
bool q8_vnni_active(int64_t which);
int64_t set_q8_vnni(int64_t routes);  // returns the previous bits

// B input rows of `in` columns (bf16 bits when `bf16`, else fp32; row stride `in`) -> int16 rows of
// `padded` columns (row stride `padded`, zeros after `in`) and their group scales (row stride
// divup(padded, Q16_GROUP)).
void quantise_input_q16(const void* x, bool bf16, int64_t B, int64_t in, int64_t padded, int16_t* q, float* s);

// One weight row against nb = 1..4 quantised input rows (x + b * xs, scales + b * ss); out[b] is the
// row's sum before its own scale. Packed: mask words mw and kept values from v (32 bytes readable
// past the last one, the int8 padding). Dense: `in` int8 values.
void q8_sparse_row_vnni(int nb, const uint32_t* mw, int64_t nwords, const int8_t* v, const int16_t* x, int64_t xs,
                        const float* scales, int64_t ss, float* out);
void q8_dense_row_vnni(int nb, const int8_t* w, int64_t in, const int16_t* x, int64_t xs, const float* scales,
                       int64_t ss, float* out);

}  // namespace subcoder
