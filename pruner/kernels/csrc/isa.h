// Instruction sets, chosen at run time, and the vector helpers each one gives the kernels.
//
// The library is compiled without -m flags, so that it loads (and runs AVX2 code) on any x86-64
// CPU and never executes an instruction the CPU lacks. Code that needs an instruction set gets it
// one of two ways:
//   - a function used by one ISA only names it in a target attribute (SC_AVX512_FN, SC_VNNI_FN);
//   - the kernels written once for both ISAs (packed_rows_impl.h, templates over the traits types
//     below) are compiled inside a `#pragma GCC target` region of one translation unit per ISA
//     (packed_rows_avx2.cpp, packed_rows_avx512.cpp). A template cannot take its target from a
//     template parameter; a region gives each instantiation the target of its ISA.
// The traits' helpers are always_inline: instantiating a kernel for an ISA outside its region
// fails to compile instead of silently calling out of line.

#pragma once

#include <immintrin.h>

#include <cstdint>

namespace subcoder {

constexpr int ISA_NONE = 0;
constexpr int ISA_AVX2 = 1;    // AVX2 + FMA
constexpr int ISA_AVX512 = 2;  // AVX-512 F/BW/VBMI2/BF16

#define SC_TARGET_AVX2 "avx2,fma,popcnt"
#define SC_TARGET_AVX512 "avx512f,avx512bw,avx512vbmi2,avx512bf16,avx2,fma,popcnt"
#define SC_TARGET_VNNI "avx512f,avx512bw,avx512vnni,avx512vbmi2,avx512bf16,avx2,fma,popcnt"
#define SC_AVX512_FN __attribute__((target(SC_TARGET_AVX512)))
#define SC_VNNI_FN __attribute__((target(SC_TARGET_VNNI)))
#define SC_INLINE(T) __attribute__((target(T), always_inline)) inline
// `#pragma GCC target` does not expand macros; _Pragma on a built string does.
#define SC_PRAGMA_STR(x) #x
#define SC_PRAGMA(x) _Pragma(SC_PRAGMA_STR(x))
#define SC_BEGIN_TARGET(T) SC_PRAGMA(GCC push_options) SC_PRAGMA(GCC target(T))
#define SC_END_TARGET SC_PRAGMA(GCC pop_options)

// The padding contract of the packed values: at least this many zero values follow the last kept
// one, because the AVX2 expansion loads 8 values (16 bytes) at the current position whatever the
// mask keeps. int8 values need the same 32 bytes (2 * PAD_VALUES values): the AVX-512 int8
// expansion loads 32 of them. Python reads it through the `pad_values` op, so this is the only
// place it is set.
constexpr int64_t PAD_VALUES = 16;

// Software prefetch distance in bf16 values (1 KiB; int8 values prefetch the same 1 KiB ahead): the
// value stream advances by a data-dependent amount per mask word, which the hardware prefetchers
// follow less well than a plain stream.
constexpr int64_t PREFETCH_VALUES = 512;

// What this CPU supports (0 none, 1 AVX2+FMA, 2 AVX-512 BF16), and what the kernels use now
// (set_isa: tests and benchmarks run the AVX2 path on AVX-512 machines). isa.cpp.
int best_isa_here();
int active_isa();
int set_active_isa(int64_t isa);
int current_isa();  // active_isa(), refusing ISA_NONE with a one-line error

// vpshufb controls for the AVX2 expansion, one Row-byte row per mask byte: when column j (0..7) is
// kept, the next kept value (Elem bytes) goes into the high Elem bytes of column j's Slot-byte slot;
// every other byte is zeroed (0x80). A row never straddles a cache line.
template <int Row>
struct ShuffleTable {
  alignas(64) uint8_t ctl[256][Row];
};

template <int Row, int Slot, int Elem>
constexpr ShuffleTable<Row> make_shuffle_table() {
  static_assert(8 * Slot <= Row && Elem <= Slot);
  ShuffleTable<Row> t{};
  for (int m = 0; m < 256; ++m) {
    for (int b = 0; b < Row; ++b) t.ctl[m][b] = 0x80;
    int p = 0;
    for (int j = 0; j < 8; ++j) {
      if (!(m & (1 << j))) continue;
      for (int e = 0; e < Elem; ++e) t.ctl[m][Slot * j + Slot - Elem + e] = static_cast<uint8_t>(Elem * p + e);
      ++p;
    }
  }
  return t;
}

// bf16 values: fp32 lane j (bytes 4j..4j+3, lane-local: j%4 in half j/4) takes the next kept bf16
// into its high half -- exactly bf16 -> fp32 -- and its low mantissa bits are zero.
inline constexpr ShuffleTable<32> kShuffle = make_shuffle_table<32, 4, 2>();
// int8 values (storage's `values: int8`): byte j takes the next kept int8; bytes 8..15 are zero.
inline constexpr ShuffleTable<16> kShuffle8 = make_shuffle_table<16, 1, 1>();

// AVX2 + FMA: fp32 arithmetic on 8 lanes against an fp32 copy of the input. One mask byte
// re-expands 8 values: the 16 bytes at the value pointer are broadcast to both 128-bit lanes and
// the byte's vpshufb row moves each kept bf16 into the high half of its fp32 lane -- exactly
// bf16 -> fp32.
struct Avx2 {
  using In = float;     // element of the padded input
  using Acc = __m256;   // fp32 accumulator
  using W = __m256;     // weight vector, ready to multiply
  static constexpr int kVecCols = 8;        // columns per weight vector
  static constexpr int kWordVecs = 4;       // weight vectors per 32-column mask word
  static constexpr int kWordsPerStep = 1;   // mask words per step of the sparse loop
  static constexpr bool kSkipEmptyWords = true;  // a word that keeps nothing costs a branch only
  static constexpr bool kMaskedTail = false;     // dense rows end with scalar columns
  // Accumulators per input row: four independent chains for one row, two when several rows share
  // each weight vector (registers run out).
  static constexpr int accumulators(int nb) { return nb == 1 ? 4 : 2; }

  SC_INLINE(SC_TARGET_AVX2) static Acc zero() { return _mm256_setzero_ps(); }
  SC_INLINE(SC_TARGET_AVX2) static Acc add(Acc a, Acc b) { return _mm256_add_ps(a, b); }
  SC_INLINE(SC_TARGET_AVX2) static float hsum(Acc v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  SC_INLINE(SC_TARGET_AVX2) static uint32_t popcount(uint32_t m) { return _mm_popcnt_u32(m); }
  SC_INLINE(SC_TARGET_AVX2) static W expand8(const uint16_t* p, uint32_t byte) {
    const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256i ctl = _mm256_load_si256(reinterpret_cast<const __m256i*>(kShuffle.ctl[byte]));
    return _mm256_castsi256_ps(_mm256_shuffle_epi8(raw, ctl));
  }
  // The kept values of mask word m (starting at v) as 4 vectors of 8 columns (T: either value type).
  template <class T>
  SC_INLINE(SC_TARGET_AVX2) static void expand_word(const T* v, uint32_t m, W* w) {
    const uint32_t c0 = _mm_popcnt_u32(m & 0xffu);
    const uint32_t c1 = _mm_popcnt_u32(m & 0xffffu);
    const uint32_t c2 = _mm_popcnt_u32(m & 0xffffffu);
    w[0] = expand8(v, m & 0xffu);
    w[1] = expand8(v + c0, (m >> 8) & 0xffu);
    w[2] = expand8(v + c1, (m >> 16) & 0xffu);
    w[3] = expand8(v + c2, m >> 24);
  }
  // acc + w * x[0:8]
  SC_INLINE(SC_TARGET_AVX2) static Acc madd(Acc acc, W w, const In* x) {
    return _mm256_fmadd_ps(w, _mm256_loadu_ps(x), acc);
  }
  // 8 dense bf16 weights as fp32.
  SC_INLINE(SC_TARGET_AVX2) static W load_dense(const uint16_t* w) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w))), 16));
  }
  // Mask word m's 32 columns, dense fp32, at d.
  template <class T>
  SC_INLINE(SC_TARGET_AVX2) static void store_word_f32(const T* v, uint32_t m, float* d) {
    for (int b = 0; b < 4; ++b) {
      const uint32_t byte = (m >> (8 * b)) & 0xffu;
      _mm256_storeu_ps(d + 8 * b, expand8(v, byte));
      v += _mm_popcnt_u32(byte);
    }
  }

  // int8 values (per-row scales are applied to the row's sum by the caller): expand8 and load_dense
  // overloaded on the value pointer; expand_word and store_word_f32 above take either type. 8 bytes
  // are loaded whatever the mask keeps (within PAD_VALUES); the kept ones are moved into place,
  // sign-extended and converted (exact).
  SC_INLINE(SC_TARGET_AVX2) static W expand8(const int8_t* p, uint32_t byte) {
    const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    const __m128i ctl = _mm_load_si128(reinterpret_cast<const __m128i*>(kShuffle8.ctl[byte]));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_shuffle_epi8(raw, ctl)));
  }
  SC_INLINE(SC_TARGET_AVX2) static W load_dense(const int8_t* w) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w))));
  }
  // One weight as fp32, for the scalar tail of dense rows.
  SC_INLINE(SC_TARGET_AVX2) static float scalar(uint16_t w) {
    const uint32_t bits = static_cast<uint32_t>(w) << 16;
    float f;
    __builtin_memcpy(&f, &bits, 4);
    return f;
  }
  SC_INLINE(SC_TARGET_AVX2) static float scalar(int8_t w) { return static_cast<float>(w); }
};

// AVX-512 F/BW/VBMI2/BF16: against a bf16 copy of the input (rounded once). One 32-bit mask word
// re-expands 32 bf16 values with vpexpandw (_mm512_maskz_expandloadu_epi16, which touches only the
// kept values), multiplied with the input by vdpbf16ps (fp32 accumulation, pairs of columns).
struct Avx512 {
  using In = uint16_t;
  using Acc = __m512;
  using W = __m512i;
  static constexpr int kVecCols = 32;
  static constexpr int kWordVecs = 1;
  static constexpr int kWordsPerStep = 2;  // two words per step: acc[0] takes even words, acc[1] odd
  static constexpr bool kSkipEmptyWords = false;
  static constexpr bool kMaskedTail = true;  // dense rows end with a masked load (input is zero-padded)
  static constexpr int accumulators(int) { return 2; }

  SC_INLINE(SC_TARGET_AVX512) static Acc zero() { return _mm512_setzero_ps(); }
  SC_INLINE(SC_TARGET_AVX512) static Acc add(Acc a, Acc b) { return _mm512_add_ps(a, b); }
  SC_INLINE(SC_TARGET_AVX512) static float hsum(Acc v) { return _mm512_reduce_add_ps(v); }
  SC_INLINE(SC_TARGET_AVX512) static uint32_t popcount(uint32_t m) { return _mm_popcnt_u32(m); }
  SC_INLINE(SC_TARGET_AVX512) static W expand(const uint16_t* v, uint32_t m) {
    return _mm512_maskz_expandloadu_epi16(static_cast<__mmask32>(m), v);
  }
  SC_INLINE(SC_TARGET_AVX512) static void expand_word(const uint16_t* v, uint32_t m, W* w) { w[0] = expand(v, m); }
  // acc + w . x[0:32], pairwise (vdpbf16ps)
  SC_INLINE(SC_TARGET_AVX512) static Acc madd(Acc acc, W w, const In* x) {
    return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)_mm512_loadu_si512(x));
  }
  SC_INLINE(SC_TARGET_AVX512) static W load_dense(const uint16_t* w) { return _mm512_loadu_si512(w); }
  // The first n (< 32 allowed) of 32 dense bf16 weights, zeros after.
  SC_INLINE(SC_TARGET_AVX512) static W load_dense_tail(const uint16_t* w, int64_t n) {
    const __mmask32 mk = n >= 32 ? ~0u : ((1u << n) - 1u);
    return _mm512_maskz_loadu_epi16(mk, w);
  }
  SC_INLINE(SC_TARGET_AVX512) static void store_word_f32(const uint16_t* v, uint32_t m, float* d) {
    const __m512i w = expand(v, m);
    const __m512i lo = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(w)), 16);
    const __m512i hi = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(w, 1)), 16);
    _mm512_storeu_si512(d, lo);
    _mm512_storeu_si512(d + 16, hi);
  }

  // int8 values: 32 int8 become 32 bf16 (integers up to 127 are exact in bf16: 8 significant bits)
  // through fp32, then take the same vdpbf16ps as bf16 values; the caller applies the row's scale.
  // docs/PERFORMANCE.md ("int8 kept values") has what was measured and tried.
  SC_INLINE(SC_TARGET_AVX512) static W q8_to_bf16(__m256i q) {
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1)));
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
  }
  // The next 32 int8 values as bf16 (vpmovsxbd straight from memory: no lane extract), then
  // vpexpandw (register form) under the mask: converting before expanding lets the word expansion do
  // the work, as in the bf16 path; vpexpandb (load or register form) measured 4x slower on Zen 4.
  // The plain 32-byte load stays within the int8 padding (2 * PAD_VALUES bytes).
  SC_INLINE(SC_TARGET_AVX512) static W load_q8_bf16(const int8_t* v) {
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v))));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + 16))));
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
  }
  SC_INLINE(SC_TARGET_AVX512) static void expand_word(const int8_t* v, uint32_t m, W* w) {
    w[0] = _mm512_maskz_expand_epi16(static_cast<__mmask32>(m), load_q8_bf16(v));
  }
  SC_INLINE(SC_TARGET_AVX512) static W load_dense(const int8_t* w) { return load_q8_bf16(w); }
  SC_INLINE(SC_TARGET_AVX512) static W load_dense_tail(const int8_t* w, int64_t n) {
    const __mmask64 mk = n >= 32 ? 0xffffffffull : ((1ull << n) - 1ull);
    return q8_to_bf16(_mm512_castsi512_si256(_mm512_maskz_loadu_epi8(mk, w)));
  }
  SC_INLINE(SC_TARGET_AVX512) static void store_word_f32(const int8_t* v, uint32_t m, float* d) {
    W w;
    expand_word(v, m, &w);  // bf16 integers: widening to fp32 is exact
    _mm512_storeu_si512(d, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(w)), 16));
    _mm512_storeu_si512(d + 16, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(w, 1)), 16));
  }
};

// The instantiation of a generic kernel for the ISA chosen at run time: f(Avx512{}) or f(Avx2{}).
template <class F>
void dispatch_isa(int isa, const F& f) {
  if (isa == ISA_AVX512) f(Avx512{});
  else f(Avx2{});
}

}  // namespace subcoder
