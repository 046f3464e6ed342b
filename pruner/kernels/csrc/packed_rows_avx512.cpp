// The row kernels for AVX-512 BF16 (isa.h: why a pragma region and not an attribute), and the
// expansion to bf16 only this ISA has.

#include "packed_rows.h"

SC_BEGIN_TARGET(SC_TARGET_AVX512)
#include "packed_rows_impl.h"

template struct subcoder::PackedRows<subcoder::Avx512, uint16_t>;
template struct subcoder::PackedRows<subcoder::Avx512, int8_t>;

// Avx512::expand_word leaves a word's 32 values as bf16 whatever their storage type.
template <class T>
void subcoder::expand_rows_bf16_avx512(const uint32_t* mask, int64_t nwords, const T* values, const int64_t* roff,
                                       int64_t r0, int64_t r1, uint16_t* dst, int64_t ld) {
  rows::each_word<Avx512>(mask, nwords, values, roff, r0, r1, dst, ld, [](const T* v, uint32_t m, uint16_t* d) {
    Avx512::W w;
    Avx512::expand_word(v, m, &w);
    _mm512_storeu_si512(d, w);
  });
}

template void subcoder::expand_rows_bf16_avx512(const uint32_t*, int64_t, const uint16_t*, const int64_t*, int64_t,
                                                int64_t, uint16_t*, int64_t);
template void subcoder::expand_rows_bf16_avx512(const uint32_t*, int64_t, const int8_t*, const int64_t*, int64_t,
                                                int64_t, uint16_t*, int64_t);
SC_END_TARGET
