// The VNNI route for int8 weights (q8_vnni.h says what it computes and why).

#include "q8_vnni.h"

#include <atomic>

#include "isa.h"

namespace subcoder {

namespace {
std::atomic<int64_t> g_q8_vnni{Q8_VNNI_DENSE | Q8_VNNI_PACKED};
}  // namespace

bool q8_vnni_here() {
  static const bool here = best_isa_here() == ISA_AVX512 && __builtin_cpu_supports("avx512vnni");
  return here;
}

bool q8_vnni_active(int64_t which) {
  return (g_q8_vnni.load() & which) != 0 && active_isa() == ISA_AVX512 && q8_vnni_here();
}

int64_t set_q8_vnni(int64_t routes) { return g_q8_vnni.exchange(routes & (Q8_VNNI_DENSE | Q8_VNNI_PACKED)); }

}  // namespace subcoder

SC_BEGIN_TARGET(SC_TARGET_VNNI)

namespace subcoder {
namespace {

constexpr int64_t kGroupWords = Q16_GROUP / 32;

// Not std::min: no standard-library template may be instantiated inside a target region (isa.h).
inline int64_t lesser(int64_t a, int64_t b) { return a < b ? a : b; }

inline __m512 load16_f32(const void* x, bool bf16, int64_t c) {
  if (bf16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(x) + c));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  return _mm512_loadu_ps(static_cast<const float*>(x) + c);
}

// The first n (any n: none when n <= 0) of 16 columns as fp32, zeros after.
inline __m512 load16_f32_tail(const void* x, bool bf16, int64_t c, int64_t n) {
  const __mmask16 mk = n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
  if (bf16) {
    const __m512i h = _mm512_maskz_loadu_epi16(mk, static_cast<const uint16_t*>(x) + c);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h)), 16));
  }
  return _mm512_maskz_loadu_ps(mk, static_cast<const float*>(x) + c);
}

template <int NB>
inline void sparse_row(const uint32_t* mw, int64_t nwords, const int8_t* v, const int16_t* x, int64_t xs,
                       const float* sc, int64_t ss, float* out) {
  __m512 accf[NB];
  for (int b = 0; b < NB; ++b) accf[b] = _mm512_setzero_ps();
  for (int64_t k0 = 0, g = 0; k0 < nwords; k0 += kGroupWords, ++g) {
    const int64_t k1 = lesser(nwords, k0 + kGroupWords);
    __m512i acc[NB][2];  // two chains (even and odd words) hide vpdpwssd's latency
    for (int b = 0; b < NB; ++b) acc[b][0] = acc[b][1] = _mm512_setzero_si512();
    int64_t k = k0;
    for (; k + 2 <= k1; k += 2) {
      _mm_prefetch(reinterpret_cast<const char*>(v) + 1024, _MM_HINT_T0);
      const uint32_t m0 = mw[k], m1 = mw[k + 1];
      const __m512i w0 = _mm512_maskz_expand_epi16(
          m0, _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v))));
      v += _mm_popcnt_u32(m0);
      const __m512i w1 = _mm512_maskz_expand_epi16(
          m1, _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v))));
      v += _mm_popcnt_u32(m1);
      for (int b = 0; b < NB; ++b) {
        const int16_t* xb = x + b * xs + 32 * k;
        acc[b][0] = _mm512_dpwssd_epi32(acc[b][0], w0, _mm512_loadu_si512(xb));
        acc[b][1] = _mm512_dpwssd_epi32(acc[b][1], w1, _mm512_loadu_si512(xb + 32));
      }
    }
    if (k < k1) {  // an odd last word (the row's last group only)
      const uint32_t m0 = mw[k];
      const __m512i w0 = _mm512_maskz_expand_epi16(
          m0, _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v))));
      v += _mm_popcnt_u32(m0);
      for (int b = 0; b < NB; ++b)
        acc[b][0] = _mm512_dpwssd_epi32(acc[b][0], w0, _mm512_loadu_si512(x + b * xs + 32 * k));
    }
    for (int b = 0; b < NB; ++b) {
      const __m512 dot = _mm512_cvtepi32_ps(_mm512_add_epi32(acc[b][0], acc[b][1]));
      accf[b] = _mm512_fmadd_ps(dot, _mm512_set1_ps(sc[b * ss + g]), accf[b]);
    }
  }
  for (int b = 0; b < NB; ++b) out[b] = _mm512_reduce_add_ps(accf[b]);
}

// 32 int8 weights from w as int16; the first n (< 32 allowed), zeros after.
inline __m512i load_w16(const int8_t* w, int64_t n) {
  if (n >= 32) return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
  const __mmask64 mk = (1ull << n) - 1ull;
  return _mm512_cvtepi8_epi16(_mm512_castsi512_si256(_mm512_maskz_loadu_epi8(mk, w)));
}

template <int NB>
inline void dense_row(const int8_t* w, int64_t in, const int16_t* x, int64_t xs, const float* sc, int64_t ss,
                      float* out) {
  const int64_t nwords = (in + 31) / 32;
  __m512 accf[NB];
  for (int b = 0; b < NB; ++b) accf[b] = _mm512_setzero_ps();
  for (int64_t k0 = 0, g = 0; k0 < nwords; k0 += kGroupWords, ++g) {
    const int64_t k1 = lesser(nwords, k0 + kGroupWords);
    __m512i acc[NB][2];
    for (int b = 0; b < NB; ++b) acc[b][0] = acc[b][1] = _mm512_setzero_si512();
    int64_t k = k0;
    for (; k + 2 <= k1 && 32 * (k + 2) <= in; k += 2) {  // whole words, two chains
      const __m512i w0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * k)));
      const __m512i w1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * k + 32)));
      for (int b = 0; b < NB; ++b) {
        acc[b][0] = _mm512_dpwssd_epi32(acc[b][0], w0, _mm512_loadu_si512(x + b * xs + 32 * k));
        acc[b][1] = _mm512_dpwssd_epi32(acc[b][1], w1, _mm512_loadu_si512(x + b * xs + 32 * k + 32));
      }
    }
    for (; k < k1; ++k) {  // the rest of the row's last group, the last word maybe partial
      const __m512i wk = load_w16(w + 32 * k, in - 32 * k);
      for (int b = 0; b < NB; ++b)
        acc[b][0] = _mm512_dpwssd_epi32(acc[b][0], wk, _mm512_loadu_si512(x + b * xs + 32 * k));
    }
    for (int b = 0; b < NB; ++b) {
      const __m512 dot = _mm512_cvtepi32_ps(_mm512_add_epi32(acc[b][0], acc[b][1]));
      accf[b] = _mm512_fmadd_ps(dot, _mm512_set1_ps(sc[b * ss + g]), accf[b]);
    }
  }
  for (int b = 0; b < NB; ++b) out[b] = _mm512_reduce_add_ps(accf[b]);
}

}  // namespace

void quantise_input_q16(const void* x, bool bf16, int64_t B, int64_t in, int64_t padded, int16_t* q, float* s) {
  const int64_t groups = (padded + Q16_GROUP - 1) / Q16_GROUP;
  const int64_t esize = bf16 ? 2 : 4;
  for (int64_t b = 0; b < B; ++b) {
    const char* row = static_cast<const char*>(x) + b * in * esize;
    int16_t* qr = q + b * padded;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = g * Q16_GROUP, c1 = lesser(padded, c0 + Q16_GROUP);
      __m512 amax = _mm512_setzero_ps();
      for (int64_t c = c0; c < c1; c += 16) {
        const __m512 xv = c + 16 <= in ? load16_f32(row, bf16, c) : load16_f32_tail(row, bf16, c, in - c);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(xv));
      }
      const float scale = _mm512_reduce_max_ps(amax) / 32767.0f;
      s[b * groups + g] = scale;
      const __m512 vs = _mm512_set1_ps(scale > 0 ? scale : 1.0f);  // a group of zeros quantises to zeros
      for (int64_t c = c0; c < c1; c += 16) {
        const __m512 xv = c + 16 <= in ? load16_f32(row, bf16, c) : load16_f32_tail(row, bf16, c, in - c);
        // vcvtps2dq rounds to nearest even (the default rounding mode); saturation never bites
        const __m512i q32 = _mm512_cvtps_epi32(_mm512_div_ps(xv, vs));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(qr + c), _mm512_cvtsepi32_epi16(q32));
      }
    }
  }
}

void q8_sparse_row_vnni(int nb, const uint32_t* mw, int64_t nwords, const int8_t* v, const int16_t* x, int64_t xs,
                        const float* scales, int64_t ss, float* out) {
  switch (nb) {
    case 1: return sparse_row<1>(mw, nwords, v, x, xs, scales, ss, out);
    case 2: return sparse_row<2>(mw, nwords, v, x, xs, scales, ss, out);
    case 3: return sparse_row<3>(mw, nwords, v, x, xs, scales, ss, out);
    default: return sparse_row<4>(mw, nwords, v, x, xs, scales, ss, out);
  }
}

void q8_dense_row_vnni(int nb, const int8_t* w, int64_t in, const int16_t* x, int64_t xs, const float* scales,
                       int64_t ss, float* out) {
  switch (nb) {
    case 1: return dense_row<1>(w, in, x, xs, scales, ss, out);
    case 2: return dense_row<2>(w, in, x, xs, scales, ss, out);
    case 3: return dense_row<3>(w, in, x, xs, scales, ss, out);
    default: return dense_row<4>(w, in, x, xs, scales, ss, out);
  }
}

}  // namespace subcoder

SC_END_TARGET
