// The row kernels for AVX2 + FMA (isa.h: why a pragma region and not an attribute).

#include "packed_rows.h"

SC_BEGIN_TARGET(SC_TARGET_AVX2)
#include "packed_rows_impl.h"

template struct subcoder::PackedRows<subcoder::Avx2, uint16_t>;
template struct subcoder::PackedRows<subcoder::Avx2, int8_t>;
SC_END_TARGET
