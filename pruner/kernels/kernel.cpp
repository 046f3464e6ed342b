// subcoder CPU kernels: sparse (packed-mask) and dense bf16 linear layers.
//
// Packed layout (docs/ARCHITECTURE.md, "Storage format"): for a weight W (out, in)
//   mask   int32 (out, nwords), nwords = ceil(in / 32); bit j (LSB first) of word k in row r is set
//          when W[r, 32k + j] is kept; padding bits are 0.
//   values bf16 (nnz + padding,), the kept values row by row, columns ascending.
//   roff   int64 (out + 1,), prefix sum of the rows' popcounts (computed once at load).
// The caller pads `values` with at least PAD_VALUES zeros: the AVX2 path reads 16 bytes at a time.
//
// Two instruction sets, chosen at run time (functions carry their own target attributes, so the
// file is compiled without -m flags and never executes an instruction the CPU lacks):
//   ISA_AVX512: AVX-512 F/BW/VBMI2/BF16. One 32-bit mask word re-expands 32 bf16 values with
//               vpexpandw (_mm512_maskz_expandloadu_epi16) and multiplies them with the bf16 input
//               with vdpbf16ps (fp32 accumulation).
//   ISA_AVX2:   AVX2 + FMA. One mask byte re-expands 8 values: the 16 bytes at the value pointer are
//               broadcast to both 128-bit lanes and a per-byte vpshufb table moves each kept bf16 into
//               the high half of its fp32 lane (zero elsewhere), which is exactly bf16 -> fp32.
// Rows are split between threads (at::parallel_for) so that each gets about the same number of kept
// values. Batch > 1 goes through the same kernels in tiles of up to 4 input rows; large batches
// (prefill) expand the weight in row chunks to dense and call the BLAS matmul instead.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int ISA_NONE = 0;
constexpr int ISA_AVX2 = 1;
constexpr int ISA_AVX512 = 2;
constexpr int64_t PAD_VALUES = 16;
// Software prefetch distance in values (1 KiB): the value stream advances by a data-dependent
// amount per mask word, which the hardware prefetchers follow less well than a plain stream.
constexpr int64_t PREFETCH_VALUES = 512;

// Work (weight columns x batch rows) below which one thread does the whole product: waking the
// other threads costs more than it saves (about 10 us of work per thread at least).
constexpr int64_t MIN_WORK_PER_THREAD = 128 * 1024;

int detect_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vbmi2") && __builtin_cpu_supports("avx512bf16"))
    return ISA_AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("popcnt"))
    return ISA_AVX2;
  return ISA_NONE;
}

const int g_best_isa = detect_isa();
std::atomic<int> g_isa{g_best_isa};

// vpshufb controls for the AVX2 expansion, one 32-byte row per mask byte.
struct ShuffleTable {
  alignas(64) uint8_t ctl[256][32];
  ShuffleTable() {
    for (int m = 0; m < 256; ++m) {
      int p = 0;
      for (int j = 0; j < 8; ++j) {
        uint8_t* lane = &ctl[m][4 * j];  // fp32 lane j lives in bytes 4j..4j+3 (lane-local: j%4 in half j/4)
        lane[0] = lane[1] = 0x80;        // low mantissa bits of the fp32: zero
        if (m & (1 << j)) {
          lane[2] = static_cast<uint8_t>(2 * p);
          lane[3] = static_cast<uint8_t>(2 * p + 1);
          ++p;
        } else {
          lane[2] = lane[3] = 0x80;
        }
      }
    }
  }
};
const ShuffleTable g_shuf;

inline int64_t divup(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA
// ---------------------------------------------------------------------------------------------

__attribute__((target("avx2,fma"))) inline __m256 expand8_avx2(const uint16_t* p, uint32_t byte) {
  __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  __m256i ctl = _mm256_load_si256(reinterpret_cast<const __m256i*>(g_shuf.ctl[byte]));
  return _mm256_castsi256_ps(_mm256_shuffle_epi8(raw, ctl));
}

__attribute__((target("avx2,fma"))) inline float hsum_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One sparse row against NB input rows (fp32, stride xs, zero-padded to 32 * nwords).
template <int NB>
__attribute__((target("avx2,fma,popcnt"))) inline void sparse_row_avx2(
    const uint32_t* mw, int64_t nwords, const uint16_t* v, const float* x, int64_t xs, float* out) {
  constexpr int NA = NB == 1 ? 4 : 2;
  __m256 acc[NB][NA];
  for (int b = 0; b < NB; ++b)
    for (int a = 0; a < NA; ++a) acc[b][a] = _mm256_setzero_ps();
  for (int64_t k = 0; k < nwords; ++k) {
    const uint32_t m = mw[k];
    if ((k & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(v + PREFETCH_VALUES), _MM_HINT_T0);
    if (m == 0) continue;
    const uint32_t c0 = _mm_popcnt_u32(m & 0xffu);
    const uint32_t c1 = _mm_popcnt_u32(m & 0xffffu);
    const uint32_t c2 = _mm_popcnt_u32(m & 0xffffffu);
    const __m256 w0 = expand8_avx2(v, m & 0xffu);
    const __m256 w1 = expand8_avx2(v + c0, (m >> 8) & 0xffu);
    const __m256 w2 = expand8_avx2(v + c1, (m >> 16) & 0xffu);
    const __m256 w3 = expand8_avx2(v + c2, m >> 24);
    v += _mm_popcnt_u32(m);
    const float* xk = x + 32 * k;
    for (int b = 0; b < NB; ++b) {
      const float* xb = xk + b * xs;
      acc[b][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xb), acc[b][0]);
      acc[b][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xb + 8), acc[b][1]);
      acc[b][2 % NA] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xb + 16), acc[b][2 % NA]);
      acc[b][3 % NA] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xb + 24), acc[b][3 % NA]);
    }
  }
  for (int b = 0; b < NB; ++b) {
    __m256 s = _mm256_add_ps(acc[b][0], acc[b][1]);
    if (NA == 4) s = _mm256_add_ps(s, _mm256_add_ps(acc[b][2 % NA], acc[b][3 % NA]));
    out[b] = hsum_avx2(s);
  }
}

// One dense bf16 row (in values) against NB fp32 input rows.
template <int NB>
__attribute__((target("avx2,fma"))) inline void dense_row_avx2(
    const uint16_t* w, int64_t in, const float* x, int64_t xs, float* out) {
  __m256 acc[NB][2];
  for (int b = 0; b < NB; ++b) acc[b][0] = acc[b][1] = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= in; c += 16) {
    const __m256 w0 = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + c))), 16));
    const __m256 w1 = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + c + 8))), 16));
    for (int b = 0; b < NB; ++b) {
      acc[b][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + b * xs + c), acc[b][0]);
      acc[b][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + b * xs + c + 8), acc[b][1]);
    }
  }
  for (int b = 0; b < NB; ++b) {
    float s = hsum_avx2(_mm256_add_ps(acc[b][0], acc[b][1]));
    for (int64_t t = c; t < in; ++t) {
      uint32_t bits = static_cast<uint32_t>(w[t]) << 16;
      float wf;
      std::memcpy(&wf, &bits, 4);
      s += wf * x[b * xs + t];
    }
    out[b] = s;
  }
}

// Expand sparse rows to dense fp32 (row stride ld >= 32 * nwords).
__attribute__((target("avx2,fma,popcnt"))) void expand_rows_avx2_f32(
    const uint32_t* mask, int64_t nwords, const uint16_t* values, const int64_t* roff,
    int64_t r0, int64_t r1, float* dst, int64_t ld) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* mw = mask + r * nwords;
    const uint16_t* v = values + roff[r];
    float* d = dst + (r - r0) * ld;
    for (int64_t k = 0; k < nwords; ++k) {
      const uint32_t m = mw[k];
      for (int b = 0; b < 4; ++b) {
        const uint32_t byte = (m >> (8 * b)) & 0xffu;
        _mm256_storeu_ps(d + 32 * k + 8 * b, expand8_avx2(v, byte));
        v += _mm_popcnt_u32(byte);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 F/BW/VBMI2/BF16
// ---------------------------------------------------------------------------------------------

#define SC_AVX512 "avx512f,avx512bw,avx512vbmi2,avx512bf16,avx2,fma,popcnt"

__attribute__((target(SC_AVX512))) inline float hsum_avx512(__m512 v) {
  return _mm512_reduce_add_ps(v);
}

// One sparse row against NB bf16 input rows (stride xs, zero-padded to 32 * nwords).
template <int NB>
__attribute__((target(SC_AVX512))) inline void sparse_row_avx512(
    const uint32_t* mw, int64_t nwords, const uint16_t* v, const uint16_t* x, int64_t xs, float* out) {
  constexpr int NA = 2;
  __m512 acc[NB][NA];
  for (int b = 0; b < NB; ++b)
    for (int a = 0; a < NA; ++a) acc[b][a] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 2 <= nwords; k += 2) {
    const uint32_t m0 = mw[k], m1 = mw[k + 1];
    _mm_prefetch(reinterpret_cast<const char*>(v + PREFETCH_VALUES), _MM_HINT_T0);
    const __m512i w0 = _mm512_maskz_expandloadu_epi16(static_cast<__mmask32>(m0), v);
    v += _mm_popcnt_u32(m0);
    const __m512i w1 = _mm512_maskz_expandloadu_epi16(static_cast<__mmask32>(m1), v);
    v += _mm_popcnt_u32(m1);
    for (int b = 0; b < NB; ++b) {
      const uint16_t* xb = x + b * xs + 32 * k;
      acc[b][0] = _mm512_dpbf16_ps(acc[b][0], (__m512bh)w0, (__m512bh)_mm512_loadu_si512(xb));
      acc[b][1] = _mm512_dpbf16_ps(acc[b][1], (__m512bh)w1, (__m512bh)_mm512_loadu_si512(xb + 32));
    }
  }
  for (; k < nwords; ++k) {
    const uint32_t m0 = mw[k];
    const __m512i w0 = _mm512_maskz_expandloadu_epi16(static_cast<__mmask32>(m0), v);
    v += _mm_popcnt_u32(m0);
    for (int b = 0; b < NB; ++b)
      acc[b][0] = _mm512_dpbf16_ps(acc[b][0], (__m512bh)w0,
                                   (__m512bh)_mm512_loadu_si512(x + b * xs + 32 * k));
  }
  for (int b = 0; b < NB; ++b) {
    out[b] = hsum_avx512(_mm512_add_ps(acc[b][0], acc[b][1]));
  }
}

template <int NB>
__attribute__((target(SC_AVX512))) inline void dense_row_avx512(
    const uint16_t* w, int64_t in, const uint16_t* x, int64_t xs, float* out) {
  __m512 acc[NB][2];
  for (int b = 0; b < NB; ++b) acc[b][0] = acc[b][1] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 64 <= in; c += 64) {
    const __m512i w0 = _mm512_loadu_si512(w + c);
    const __m512i w1 = _mm512_loadu_si512(w + c + 32);
    for (int b = 0; b < NB; ++b) {
      acc[b][0] = _mm512_dpbf16_ps(acc[b][0], (__m512bh)w0, (__m512bh)_mm512_loadu_si512(x + b * xs + c));
      acc[b][1] = _mm512_dpbf16_ps(acc[b][1], (__m512bh)w1, (__m512bh)_mm512_loadu_si512(x + b * xs + c + 32));
    }
  }
  for (; c < in; c += 32) {  // x is zero-padded to a multiple of 32; the weight tail is masked
    const int64_t rem = std::min<int64_t>(32, in - c);
    const __mmask32 mk = rem == 32 ? ~0u : ((1u << rem) - 1u);
    const __m512i w0 = _mm512_maskz_loadu_epi16(mk, w + c);
    for (int b = 0; b < NB; ++b)
      acc[b][0] = _mm512_dpbf16_ps(acc[b][0], (__m512bh)w0, (__m512bh)_mm512_loadu_si512(x + b * xs + c));
  }
  for (int b = 0; b < NB; ++b) out[b] = hsum_avx512(_mm512_add_ps(acc[b][0], acc[b][1]));
}

__attribute__((target(SC_AVX512))) void expand_rows_avx512_f32(
    const uint32_t* mask, int64_t nwords, const uint16_t* values, const int64_t* roff,
    int64_t r0, int64_t r1, float* dst, int64_t ld) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* mw = mask + r * nwords;
    const uint16_t* v = values + roff[r];
    float* d = dst + (r - r0) * ld;
    for (int64_t k = 0; k < nwords; ++k) {
      const uint32_t m = mw[k];
      const __m512i w = _mm512_maskz_expandloadu_epi16(static_cast<__mmask32>(m), v);
      v += _mm_popcnt_u32(m);
      const __m512i lo = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(w)), 16);
      const __m512i hi = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(w, 1)), 16);
      _mm512_storeu_si512(d + 32 * k, lo);
      _mm512_storeu_si512(d + 32 * k + 16, hi);
    }
  }
}

__attribute__((target(SC_AVX512))) void expand_rows_avx512_bf16(
    const uint32_t* mask, int64_t nwords, const uint16_t* values, const int64_t* roff,
    int64_t r0, int64_t r1, uint16_t* dst, int64_t ld) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* mw = mask + r * nwords;
    const uint16_t* v = values + roff[r];
    uint16_t* d = dst + (r - r0) * ld;
    for (int64_t k = 0; k < nwords; ++k) {
      const uint32_t m = mw[k];
      _mm512_storeu_si512(d + 32 * k, _mm512_maskz_expandloadu_epi16(static_cast<__mmask32>(m), v));
      v += _mm_popcnt_u32(m);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Drivers
// ---------------------------------------------------------------------------------------------

int current_isa() {
  const int isa = g_isa.load(std::memory_order_relaxed);
  TORCH_CHECK(isa != ISA_NONE, "subcoder_sparse: this CPU has neither AVX2+FMA nor AVX-512 BF16");
  return isa;
}

// Threads to use for `work` units, and the row ranges: thread t gets rows [bounds[t], bounds[t+1])
// with about the same cost, cost(r) = roff[r] + 8 * r (a row also costs its mask words).
int64_t n_threads_for(int64_t work) {
  const int64_t t = std::max<int64_t>(1, at::get_num_threads());
  return std::max<int64_t>(1, std::min<int64_t>(t, work / MIN_WORK_PER_THREAD));
}

template <typename F>
void parallel_rows(int64_t rows, const int64_t* roff, int64_t row_cost, int64_t nt, const F& f) {
  if (nt <= 1) {
    f(0, rows);
    return;
  }
  auto cost = [&](int64_t r) { return (roff ? roff[r] : 0) + row_cost * r; };
  const int64_t total = cost(rows);
  std::vector<int64_t> bounds(nt + 1);
  bounds[0] = 0;
  bounds[nt] = rows;
  for (int64_t t = 1; t < nt; ++t) {
    const int64_t target = total * t / nt;
    int64_t lo = bounds[t - 1], hi = rows;  // first row r with cost(r) >= target
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (cost(mid) < target) lo = mid + 1; else hi = mid;
    }
    bounds[t] = lo;
  }
  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      if (bounds[t] < bounds[t + 1]) f(bounds[t], bounds[t + 1]);
  });
}

void check_packed(const at::Tensor& mask, const at::Tensor& values, const at::Tensor& roff, int64_t in) {
  TORCH_CHECK(mask.dim() == 2 && mask.scalar_type() == at::kInt && mask.is_contiguous() && mask.is_cpu(),
              "subcoder_sparse: mask must be a contiguous CPU int32 tensor (out, ceil(in/32))");
  TORCH_CHECK(mask.size(1) == divup(in, 32), "subcoder_sparse: mask has ", mask.size(1),
              " words per row, in_features ", in, " needs ", divup(in, 32));
  TORCH_CHECK((values.scalar_type() == at::kBFloat16 || values.scalar_type() == at::kShort) &&
                  values.dim() == 1 && values.is_contiguous() && values.is_cpu(),
              "subcoder_sparse: values must be a contiguous 1-D CPU bf16 (or int16) tensor");
  TORCH_CHECK(roff.scalar_type() == at::kLong && roff.dim() == 1 && roff.numel() == mask.size(0) + 1 &&
                  roff.is_contiguous(),
              "subcoder_sparse: row_offsets must be int64 (out + 1,)");
  const int64_t nnz = roff.data_ptr<int64_t>()[mask.size(0)];
  TORCH_CHECK(values.numel() >= nnz + PAD_VALUES, "subcoder_sparse: values hold ", values.numel(),
              " entries, the mask needs ", nnz, " plus ", PAD_VALUES, " of padding");
}

// The input, zero-padded to 32 * nwords columns: fp32 for the AVX2 kernels, bf16 (rounded once)
// for the AVX-512 ones. Kept in a per-thread buffer reused across calls, so that a decode step
// allocates nothing but its output.
struct PaddedInput {
  const void* data;
  int64_t stride;
};

PaddedInput padded_input(const at::Tensor& x_in, int64_t in, int isa) {
  thread_local std::vector<uint32_t> storage;  // 4-byte units (fp32 or 2 x bf16), 64-byte aligned use below
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), padded = divup(in, 32) * 32;
  const bool bf16_out = isa == ISA_AVX512;
  const int64_t bytes = B * padded * (bf16_out ? 2 : 4);
  storage.resize(static_cast<size_t>(divup(bytes, 4)) + 16);
  char* base = reinterpret_cast<char*>(storage.data());
  base += (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64;
  const bool x_bf16 = x.scalar_type() == at::kBFloat16;
  for (int64_t b = 0; b < B; ++b) {
    if (bf16_out) {
      uint16_t* dst = reinterpret_cast<uint16_t*>(base) + b * padded;
      if (x_bf16) {
        std::memcpy(dst, reinterpret_cast<const uint16_t*>(x.data_ptr()) + b * in, in * 2);
      } else {
        const float* src = x.data_ptr<float>() + b * in;
        for (int64_t c = 0; c < in; ++c) dst[c] = c10::BFloat16(src[c]).x;  // round to nearest even
      }
      std::fill(dst + in, dst + padded, uint16_t(0));
    } else {
      float* dst = reinterpret_cast<float*>(base) + b * padded;
      if (x_bf16) {
        const uint16_t* src = reinterpret_cast<const uint16_t*>(x.data_ptr()) + b * in;
        for (int64_t c = 0; c < in; ++c) {
          const uint32_t bits = static_cast<uint32_t>(src[c]) << 16;
          std::memcpy(dst + c, &bits, 4);
        }
      } else {
        std::memcpy(dst, x.data_ptr<float>() + b * in, in * 4);
      }
      std::fill(dst + in, dst + padded, 0.0f);
    }
  }
  return {base, padded};
}

inline float to_f32(float v) { return v; }
inline float to_f32(uint16_t v) { return c10::BFloat16(v, c10::BFloat16::from_bits()); }
inline void from_f32(float v, float* o) { *o = v; }
inline void from_f32(float v, uint16_t* o) { *o = c10::BFloat16(v).x; }

// Writes results (plus bias) straight into the output tensor, in its dtype.
struct OutputWriter {
  void* data;
  bool bf16;
  int64_t stride;  // = out_features
  const float* bias;          // fp32 bias, or
  const uint16_t* bias_bf16;  // bf16 bias, read in place (no per-call copy)
  at::Tensor bias_keep;

  OutputWriter(at::Tensor& y, const c10::optional<at::Tensor>& b) {
    data = y.data_ptr();
    bf16 = y.scalar_type() == at::kBFloat16;
    stride = y.size(1);
    bias = nullptr;
    bias_bf16 = nullptr;
    if (b.has_value() && b->defined()) {
      TORCH_CHECK(b->numel() == stride, "subcoder_sparse: bias has ", b->numel(), " entries, expected ", stride);
      if (b->scalar_type() == at::kBFloat16) {
        bias_keep = b->contiguous();
        bias_bf16 = static_cast<const uint16_t*>(bias_keep.data_ptr());
      } else {
        bias_keep = b->to(at::kFloat).contiguous();
        bias = bias_keep.data_ptr<float>();
      }
    }
  }
  inline void put(int64_t b, int64_t r, float v) const {
    if (bias) v += bias[r];
    else if (bias_bf16) v += to_f32(bias_bf16[r]);
    if (bf16) reinterpret_cast<c10::BFloat16*>(data)[b * stride + r] = c10::BFloat16(v);
    else reinterpret_cast<float*>(data)[b * stride + r] = v;
  }
};

// Batch rows handled by the tiled kernels; larger batches go through expand + matmul.
std::atomic<int64_t> g_gemm_min_batch{16};

template <typename RowFn1, typename RowFn2, typename RowFn3, typename RowFn4>
inline void run_tiles(int64_t B, int64_t r, const OutputWriter& w, const RowFn1& f1, const RowFn2& f2,
                      const RowFn3& f3, const RowFn4& f4) {
  float tmp[4];
  int64_t b0 = 0;
  for (; b0 + 4 <= B; b0 += 4) {
    f4(b0, tmp);
    for (int i = 0; i < 4; ++i) w.put(b0 + i, r, tmp[i]);
  }
  const int64_t rem = B - b0;
  if (rem == 3) f3(b0, tmp);
  else if (rem == 2) f2(b0, tmp);
  else if (rem == 1) f1(b0, tmp);
  for (int64_t i = 0; i < rem; ++i) w.put(b0 + i, r, tmp[i]);
}

void sparse_matmul_tiled(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& values,
                         const at::Tensor& roff, int64_t in, int isa, const OutputWriter& ow) {
  const int64_t B = x.size(0), O = mask.size(0), nwords = mask.size(1);
  const PaddedInput xp = padded_input(x, in, isa);
  const uint32_t* mp = reinterpret_cast<const uint32_t*>(mask.data_ptr<int32_t>());
  const uint16_t* vp = reinterpret_cast<const uint16_t*>(values.data_ptr());
  const int64_t* rp = roff.data_ptr<int64_t>();
  const int64_t xs = xp.stride;
  const int64_t nt = n_threads_for(O * nwords * 32 * B);
  const int64_t word_cost = 16;  // a mask word costs about as much as 16 kept values
  if (isa == ISA_AVX512) {
    const uint16_t* xq = static_cast<const uint16_t*>(xp.data);
    parallel_rows(O, rp, nwords * word_cost, nt, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const uint32_t* mw = mp + r * nwords;
        const uint16_t* v = vp + rp[r];
        run_tiles(B, r, ow,
                  [&](int64_t b, float* o) { sparse_row_avx512<1>(mw, nwords, v, xq + b * xs, xs, o); },
                  [&](int64_t b, float* o) { sparse_row_avx512<2>(mw, nwords, v, xq + b * xs, xs, o); },
                  [&](int64_t b, float* o) { sparse_row_avx512<3>(mw, nwords, v, xq + b * xs, xs, o); },
                  [&](int64_t b, float* o) { sparse_row_avx512<4>(mw, nwords, v, xq + b * xs, xs, o); });
      }
    });
  } else {
    const float* xq = static_cast<const float*>(xp.data);
    parallel_rows(O, rp, nwords * word_cost, nt, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const uint32_t* mw = mp + r * nwords;
        const uint16_t* v = vp + rp[r];
        run_tiles(B, r, ow,
                  [&](int64_t b, float* o) { sparse_row_avx2<1>(mw, nwords, v, xq + b * xs, xs, o); },
                  [&](int64_t b, float* o) { sparse_row_avx2<2>(mw, nwords, v, xq + b * xs, xs, o); },
                  [&](int64_t b, float* o) { sparse_row_avx2<3>(mw, nwords, v, xq + b * xs, xs, o); },
                  [&](int64_t b, float* o) { sparse_row_avx2<4>(mw, nwords, v, xq + b * xs, xs, o); });
      }
    });
  }
}

// Expand rows [r0, r1) into `dst` (rows x ld, fp32 or bf16), threads split the rows.
void expand_rows(const uint32_t* mp, int64_t nwords, const uint16_t* vp, const int64_t* rp, int64_t r0,
                 int64_t r1, at::Tensor& dst, int isa) {
  const int64_t ld = dst.size(1);
  const int64_t nt = n_threads_for((r1 - r0) * nwords * 32 / 4);  // expansion is ~4x cheaper per column
  const bool bf16 = dst.scalar_type() == at::kBFloat16;
  auto body = [&](int64_t a, int64_t b) {
    if (bf16) {
      expand_rows_avx512_bf16(mp, nwords, vp, rp, r0 + a, r0 + b,
                              reinterpret_cast<uint16_t*>(dst.data_ptr()) + a * ld, ld);
    } else if (isa == ISA_AVX512) {
      expand_rows_avx512_f32(mp, nwords, vp, rp, r0 + a, r0 + b, dst.data_ptr<float>() + a * ld, ld);
    } else {
      expand_rows_avx2_f32(mp, nwords, vp, rp, r0 + a, r0 + b, dst.data_ptr<float>() + a * ld, ld);
    }
  };
  parallel_rows(r1 - r0, nullptr, 1, nt, body);
}

// Prefill: expand the weight to dense in row chunks and multiply with the BLAS (oneDNN's bf16 GEMM
// where the CPU multiplies bf16 natively, fp32 elsewhere). Returns (B, O) in the compute dtype.
// Measured (benchmarks/sparse_kernel.py): expanding a 0.5B-class layer costs 1-3% of the GEMM, so a
// layer up to WHOLE_LAYER_BYTES is expanded at once and multiplied in one call (full GEMM
// efficiency); larger layers go in CHUNK_BYTES row chunks into a reused buffer, so the expanded copy
// stays in cache and is never page-faulted in afresh. Each chunk's product is written straight into
// its columns of the output (a strided BLAS output, no copy).
constexpr int64_t WHOLE_LAYER_BYTES = int64_t(16) << 20;
constexpr int64_t CHUNK_BYTES = int64_t(8) << 20;

at::Tensor sparse_matmul_gemm(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& values,
                              const at::Tensor& roff, int64_t in, int isa) {
  const int64_t B = x.size(0), O = mask.size(0), nwords = mask.size(1);
  const int64_t ld = nwords * 32;
  const auto cdt = isa == ISA_AVX512 ? at::kBFloat16 : at::kFloat;
  const int64_t esize = cdt == at::kBFloat16 ? 2 : 4;
  at::Tensor xc = x.to(cdt).contiguous();
  const int64_t chunk = O * ld * esize <= WHOLE_LAYER_BYTES
                            ? O
                            : std::max<int64_t>(16, std::min<int64_t>(O, CHUNK_BYTES / (ld * esize)));
  thread_local at::Tensor wbuf;  // reused across calls and layers: no fresh pages per call
  if (!wbuf.defined() || wbuf.scalar_type() != cdt || wbuf.numel() < chunk * ld)
    wbuf = at::empty({chunk * ld}, x.options().dtype(cdt));
  at::Tensor y = at::empty({B, O}, x.options().dtype(cdt));
  const uint32_t* mp = reinterpret_cast<const uint32_t*>(mask.data_ptr<int32_t>());
  const uint16_t* vp = reinterpret_cast<const uint16_t*>(values.data_ptr());
  const int64_t* rp = roff.data_ptr<int64_t>();
  for (int64_t r0 = 0; r0 < O; r0 += chunk) {
    const int64_t n = std::min(chunk, O - r0);
    at::Tensor w = wbuf.narrow(0, 0, n * ld).view({n, ld});
    expand_rows(mp, nwords, vp, rp, r0, r0 + n, w, isa);
    at::Tensor w_in = w.narrow(1, 0, in);
    if (n == O) {
      at::mm_out(y, xc, w_in.t());
    } else {
      at::Tensor cols = y.narrow(1, r0, n);
      at::mm_out(cols, xc, w_in.t());
    }
  }
  return y;
}

// ---------------------------------------------------------------------------------------------
// Operators
// ---------------------------------------------------------------------------------------------

at::Tensor row_offsets(const at::Tensor& mask) {
  TORCH_CHECK(mask.dim() == 2 && mask.scalar_type() == at::kInt, "subcoder_sparse: mask must be int32 2-D");
  at::Tensor m = mask.contiguous();
  const int64_t O = m.size(0), nw = m.size(1);
  at::Tensor out = at::empty({O + 1}, m.options().dtype(at::kLong));
  const uint32_t* mp = reinterpret_cast<const uint32_t*>(m.data_ptr<int32_t>());
  int64_t* op = out.data_ptr<int64_t>();
  op[0] = 0;
  for (int64_t r = 0; r < O; ++r) {
    int64_t c = 0;
    for (int64_t k = 0; k < nw; ++k) c += __builtin_popcount(mp[r * nw + k]);
    op[r + 1] = op[r] + c;
  }
  return out;
}

// y = x @ W^T + bias for a packed W. x: (B, in) bf16 or fp32; result has x's dtype.
// mode: 0 = choose by batch size, 1 = tiled sparse kernel, 2 = expand + matmul.
at::Tensor sparse_linear_2d(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& values,
                            const at::Tensor& roff, int64_t in, const c10::optional<at::Tensor>& bias,
                            int64_t mode) {
  check_packed(mask, values, roff, in);
  TORCH_CHECK(x.dim() == 2 && x.size(1) == in && x.is_cpu(), "subcoder_sparse: input must be (B, ", in, ")");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat,
              "subcoder_sparse: input must be bf16 or fp32");
  const int isa = current_isa();
  const int64_t B = x.size(0), O = mask.size(0);
  if (B == 0) return at::empty({0, O}, x.options());
  const bool gemm = mode == 2 || (mode == 0 && B >= g_gemm_min_batch.load());
  if (gemm) {
    at::Tensor y = sparse_matmul_gemm(x, mask, values, roff, in, isa);
    if (bias.has_value() && bias->defined()) y.add_(bias->to(y.scalar_type()));
    return y.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type());
  }
  at::Tensor y = at::empty({B, O}, x.options());
  const OutputWriter ow(y, bias);
  sparse_matmul_tiled(x, mask, values, roff, in, isa, ow);
  return y;
}

// Inputs of any leading shape (..., in) -> (..., out).
at::Tensor sparse_linear(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& values,
                         const at::Tensor& roff, int64_t in, const c10::optional<at::Tensor>& bias,
                         int64_t mode) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in, "subcoder_sparse: input must be (..., ", in, ")");
  if (x.dim() == 2) return sparse_linear_2d(x, mask, values, roff, in, bias, mode);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = mask.size(0);
  return sparse_linear_2d(x.reshape({-1, in}), mask, values, roff, in, bias, mode).view(shape);
}

// Dense bf16 W (out, in): y = x @ W^T + bias with the row kernels (batches up to the GEMM threshold).
at::Tensor dense_linear_2d(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kBFloat16 && weight.is_contiguous() &&
                  weight.is_cpu(),
              "subcoder_sparse: dense weight must be a contiguous CPU bf16 (out, in) tensor");
  const int64_t O = weight.size(0), in = weight.size(1);
  TORCH_CHECK(x.dim() == 2 && x.size(1) == in, "subcoder_sparse: input must be (B, ", in, ")");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat,
              "subcoder_sparse: input must be bf16 or fp32");
  const int isa = current_isa();
  const int64_t B = x.size(0);
  at::Tensor y = at::empty({B, O}, x.options());
  if (B == 0) return y;
  const OutputWriter ow(y, bias);
  const PaddedInput xp = padded_input(x, in, isa);
  const int64_t xs = xp.stride;
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(weight.data_ptr());
  const int64_t nt = n_threads_for(O * in * B);
  if (isa == ISA_AVX512) {
    const uint16_t* xq = static_cast<const uint16_t*>(xp.data);
    parallel_rows(O, nullptr, 1, nt, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const uint16_t* w = wp + r * in;
        run_tiles(B, r, ow,
                  [&](int64_t b, float* o) { dense_row_avx512<1>(w, in, xq + b * xs, xs, o); },
                  [&](int64_t b, float* o) { dense_row_avx512<2>(w, in, xq + b * xs, xs, o); },
                  [&](int64_t b, float* o) { dense_row_avx512<3>(w, in, xq + b * xs, xs, o); },
                  [&](int64_t b, float* o) { dense_row_avx512<4>(w, in, xq + b * xs, xs, o); });
      }
    });
  } else {
    const float* xq = static_cast<const float*>(xp.data);
    parallel_rows(O, nullptr, 1, nt, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const uint16_t* w = wp + r * in;
        run_tiles(B, r, ow,
                  [&](int64_t b, float* o) { dense_row_avx2<1>(w, in, xq + b * xs, xs, o); },
                  [&](int64_t b, float* o) { dense_row_avx2<2>(w, in, xq + b * xs, xs, o); },
                  [&](int64_t b, float* o) { dense_row_avx2<3>(w, in, xq + b * xs, xs, o); },
                  [&](int64_t b, float* o) { dense_row_avx2<4>(w, in, xq + b * xs, xs, o); });
      }
    });
  }
  return y;
}

at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() >= 1 && weight.dim() == 2 && x.size(-1) == weight.size(1),
              "subcoder_sparse: input must be (..., ", weight.size(1), ")");
  if (x.dim() == 2) return dense_linear_2d(x, weight, bias);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = weight.size(0);
  return dense_linear_2d(x.reshape({-1, x.size(-1)}), weight, bias).view(shape);
}

// Rows [r0, r1) of the packed weight as a dense (r1 - r0, in) tensor of `dtype` (fp32 or bf16).
at::Tensor expand(const at::Tensor& mask, const at::Tensor& values, const at::Tensor& roff, int64_t in,
                  int64_t r0, int64_t r1, at::ScalarType dtype) {
  check_packed(mask, values, roff, in);
  TORCH_CHECK(0 <= r0 && r0 <= r1 && r1 <= mask.size(0), "subcoder_sparse: bad row range");
  const int isa = current_isa();
  const int64_t ld = mask.size(1) * 32;
  const bool native_bf16 = dtype == at::kBFloat16 && isa == ISA_AVX512;
  at::Tensor buf = at::empty({r1 - r0, ld}, mask.options().dtype(native_bf16 ? at::kBFloat16 : at::kFloat));
  expand_rows(reinterpret_cast<const uint32_t*>(mask.data_ptr<int32_t>()), mask.size(1),
              reinterpret_cast<const uint16_t*>(values.data_ptr()), roff.data_ptr<int64_t>(), r0, r1, buf, isa);
  at::Tensor out = buf.narrow(1, 0, in);
  return out.to(dtype).contiguous();
}

// 0: none, 1: AVX2+FMA, 2: AVX-512 BF16. `best_isa` is what the CPU supports, `isa` what is used.
int64_t best_isa() { return g_best_isa; }
int64_t get_isa() { return g_isa.load(); }
int64_t set_isa(int64_t isa) {
  TORCH_CHECK(isa >= ISA_NONE && isa <= g_best_isa, "subcoder_sparse: ISA ", isa, " is not supported here");
  return g_isa.exchange(static_cast<int>(isa));
}
int64_t set_gemm_min_batch(int64_t b) { return g_gemm_min_batch.exchange(std::max<int64_t>(1, b)); }

// ---------------------------------------------------------------------------------------------
// Decode-step helpers (pruner/sparse/fastdecode.py): one fused call where the model's code makes
// 6-8 tiny tensor operations, each rounding exactly where the model's own code rounds, so results
// match the eager forward. A decoded token of a 24-layer model makes ~800 such operations, ~2 us
// of dispatch each.
// ---------------------------------------------------------------------------------------------

inline float bf16_round(float v) { return static_cast<float>(c10::BFloat16(v)); }

// Llama/Qwen RMSNorm: statistics in fp32, normalised value cast back to the input dtype, then
// multiplied by the weight (a bf16 x bf16 product rounds to bf16, as torch's does).
at::Tensor rms_norm(const at::Tensor& x_in, const at::Tensor& weight_in, double eps) {
  TORCH_CHECK(x_in.is_cpu() && (x_in.scalar_type() == at::kBFloat16 || x_in.scalar_type() == at::kFloat),
              "subcoder_sparse: rms_norm input must be a CPU bf16 or fp32 tensor");
  const at::Tensor x = x_in.contiguous();
  const int64_t H = x.size(-1), rows = x.numel() / std::max<int64_t>(H, 1);
  TORCH_CHECK(weight_in.numel() == H, "subcoder_sparse: rms_norm weight has ", weight_in.numel(), " entries, expected ", H);
  // The weight is read in place (a per-call fp32 copy was ~5 us, 48 times per decoded token).
  const at::Tensor w = weight_in.scalar_type() == at::kBFloat16 ? weight_in.contiguous() : weight_in.to(at::kFloat).contiguous();
  const bool w_bf16 = weight_in.scalar_type() == at::kBFloat16;
  const uint16_t* wb = w_bf16 ? static_cast<const uint16_t*>(w.data_ptr()) : nullptr;
  const float* wf = w_bf16 ? nullptr : w.data_ptr<float>();
  auto wp = [&](int64_t i) { return wb ? to_f32(wb[i]) : wf[i]; };
  const bool x_bf16 = x.scalar_type() == at::kBFloat16;
  // torch promotes weight * hidden: bf16 * bf16 -> bf16, fp32 anywhere -> fp32
  const bool out_bf16 = x_bf16 && w_bf16;
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(out_bf16 ? at::kBFloat16 : at::kFloat));
  std::vector<float> row(H);
  for (int64_t r = 0; r < rows; ++r) {
    if (x_bf16) {
      const c10::BFloat16* xp = x.data_ptr<c10::BFloat16>() + r * H;
      for (int64_t i = 0; i < H; ++i) row[i] = static_cast<float>(xp[i]);
    } else {
      std::memcpy(row.data(), x.data_ptr<float>() + r * H, H * 4);
    }
    float ss = 0.f;
    for (int64_t i = 0; i < H; ++i) ss += row[i] * row[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(H) + static_cast<float>(eps));
    if (out_bf16) {
      c10::BFloat16* yp = y.data_ptr<c10::BFloat16>() + r * H;
      for (int64_t i = 0; i < H; ++i) yp[i] = c10::BFloat16(wp(i) * bf16_round(row[i] * inv));
    } else {
      float* yp = y.data_ptr<float>() + r * H;
      for (int64_t i = 0; i < H; ++i) {
        const float n = x_bf16 ? bf16_round(row[i] * inv) : row[i] * inv;
        yp[i] = wp(i) * n;
      }
    }
  }
  return y;
}

// Rotary embedding of (..., d) rows in place of the model's `t * cos + rotate_half(t) * sin`:
// cos and sin hold d values shared by every row; bf16 inputs round after each product and the sum.
at::Tensor rope(const at::Tensor& t_in, const at::Tensor& cos_in, const at::Tensor& sin_in) {
  TORCH_CHECK(t_in.is_cpu() && (t_in.scalar_type() == at::kBFloat16 || t_in.scalar_type() == at::kFloat),
              "subcoder_sparse: rope input must be a CPU bf16 or fp32 tensor");
  const at::Tensor t = t_in.contiguous();
  const int64_t d = t.size(-1), rows = t.numel() / std::max<int64_t>(d, 1), half = d / 2;
  TORCH_CHECK(d % 2 == 0 && cos_in.numel() == d && sin_in.numel() == d, "subcoder_sparse: rope needs d even and cos/sin of d values");
  const at::Tensor c = cos_in.to(at::kFloat).contiguous(), sn = sin_in.to(at::kFloat).contiguous();
  const float* cp = c.data_ptr<float>();
  const float* sp = sn.data_ptr<float>();
  at::Tensor y = at::empty_like(t);
  const bool bf = t.scalar_type() == at::kBFloat16;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < d; ++i) {
      float v, rot;
      if (bf) {
        const c10::BFloat16* tp = t.data_ptr<c10::BFloat16>() + r * d;
        v = static_cast<float>(tp[i]);
        rot = i < half ? -static_cast<float>(tp[i + half]) : static_cast<float>(tp[i - half]);
        y.data_ptr<c10::BFloat16>()[r * d + i] = c10::BFloat16(bf16_round(v * cp[i]) + bf16_round(rot * sp[i]));
      } else {
        const float* tp = t.data_ptr<float>() + r * d;
        v = tp[i];
        rot = i < half ? -tp[i + half] : tp[i - half];
        y.data_ptr<float>()[r * d + i] = v * cp[i] + rot * sp[i];
      }
    }
  }
  return y;
}


// ---------------------------------------------------------------------------------------------
// Decode attention: T new queries (T = 1 for a step, a few when verifying a draft) against the KV
// cache, query t seeing the first `first_len + t` positions. Why not SDPA: its CPU flash kernel is
// built for long queries; for one query against ~800 keys it took ~150 us per layer (3.5 ms of a
// 27 ms step, measured with torch.profiler), several times its arithmetic. This loop does the
// same maths (scores in fp32, fp32 softmax, fp32 weighted sum of the values, one rounding to the
// output dtype) in ~10-20 us, and each (query, kv head) is computed by the same code whatever T is,
// so a verification pass stays bit-identical to single steps.
// ---------------------------------------------------------------------------------------------

// exp(x) for x <= 0 (softmax after subtracting the maximum): x = n ln2 + r with |r| <= ln2 / 2,
// exp(r) by its degree-6 Taylor polynomial (relative error ~1e-7, an ulp), scaled by 2^n with
// vscalefps. Inputs below -87 give 0, as expf's underflow would.
__attribute__((target(SC_AVX512))) inline __m512 exp_nonpositive(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.0f);
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(x, lo);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln2, high part
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);  // ln2, low part
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~tiny), _mm512_scalef_ps(p, n));
}

// d consecutive values as fp32, 16 at a time.
template <typename T>
__attribute__((target(SC_AVX512))) inline __m512 load16_f32(const T* p);
template <>
__attribute__((target(SC_AVX512))) inline __m512 load16_f32<float>(const float* p) { return _mm512_loadu_ps(p); }
template <>
__attribute__((target(SC_AVX512))) inline __m512 load16_f32<uint16_t>(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}


// Lane j of the result = the sum of the 16 lanes of v[j]: a transpose-and-add tree (46 shuffles
// and adds for 16 sums, against ~128 for 16 separate horizontal reductions).
__attribute__((target(SC_AVX512))) inline __m512 sum16x16(const __m512* v) {
  __m512 w[8], x[4], y[2];
  for (int i = 0; i < 8; ++i)  // lanes 0-7: v[2i]'s halves added, lanes 8-15: v[2i+1]'s
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)  // 128-bit block b: 4 partial sums of v[4i + b]
    x[i] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)  // block b: 2 partials of v[8i + b], then 2 of v[8i + 4 + b]
    y[i] = _mm512_add_ps(_mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0xEE));
  // block b: the sums of v[b], v[4 + b], v[8 + b], v[12 + b]
  const __m512 z = _mm512_add_ps(_mm512_shuffle_ps(y[0], y[1], 0x88), _mm512_shuffle_ps(y[0], y[1], 0xDD));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, z);
}

// Keys j..j+15 of a score row that exist (a row has n scores, padded to a multiple of 16).
__attribute__((target(SC_AVX512))) inline __mmask16 live_keys(int64_t j, int64_t n) {
  return j + 16 <= n ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - j)) - 1);
}

// The largest of a score row's n scores, in every lane: softmax subtracts it before exp.
__attribute__((target(SC_AVX512))) inline __m512 row_max(const float* sh, int64_t n, int64_t n16) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n16; j += 16) mx = _mm512_mask_max_ps(mx, live_keys(j, n), mx, _mm512_loadu_ps(sh + j));
  return _mm512_set1_ps(_mm512_reduce_max_ps(mx));
}

// exp(score - max) for keys j..j+15; padding keys get weight 0.
__attribute__((target(SC_AVX512))) inline __m512 softmax_numerators(const float* sh, int64_t j, int64_t n,
                                                                    __m512 mv) {
  return _mm512_maskz_mov_ps(live_keys(j, n), exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(sh + j), mv)));
}

// One kv head's `g` query heads (q: g rows of d = 16 * DV, stride qs) against n cached positions
// (k, v: rows of d, stride ks); out: g rows, stride os.
template <typename T, int DV>
__attribute__((target(SC_AVX512))) void attend_group(const T* q, int64_t qs, int64_t g, const T* k, const T* v,
                                                     int64_t ks, int64_t n, float scale, T* out, int64_t os,
                                                     std::vector<float>& scratch) {
  constexpr int64_t d = 16 * DV;
  constexpr int64_t HB = DV >= 16 ? 1 : 16 / DV;  // heads per pass over the values: HB * DV accumulators
  const int64_t n16 = (n + 15) / 16 * 16;
  scratch.resize(static_cast<size_t>(g * n16 + g * d + n16 * d));
  float* s = scratch.data();  // g rows of n16 scores
  float* qf = s + g * n16;    // the queries in fp32, pre-scaled
  float* vf = qf + g * d;     // the values in fp32
  for (int64_t h = 0; h < g; ++h)
    for (int64_t c = 0; c < d; ++c) qf[h * d + c] = to_f32(q[h * qs + c]) * scale;
  // Scores, 16 keys at a time: per key and head a 16-lane partial dot product, then one tree turns
  // 16 partials into 16 scores. Keys past n (the last block's padding) read as zeros.
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int64_t nb = std::min<int64_t>(16, n - j0);
    __m512 kj[16][DV];
    for (int64_t j = 0; j < 16; ++j)
      for (int c = 0; c < DV; ++c)
        kj[j][c] = j < nb ? load16_f32<T>(k + (j0 + j) * ks + 16 * c) : _mm512_setzero_ps();
    for (int64_t h = 0; h < g; ++h) {
      __m512 qh[DV], part[16];
      for (int c = 0; c < DV; ++c) qh[c] = _mm512_loadu_ps(qf + h * d + 16 * c);
      for (int64_t j = 0; j < 16; ++j) {
        __m512 acc = _mm512_mul_ps(kj[j][0], qh[0]);
        for (int c = 1; c < DV; ++c) acc = _mm512_fmadd_ps(kj[j][c], qh[c], acc);
        part[j] = acc;
      }
      _mm512_storeu_ps(s + h * n16 + j0, sum16x16(part));
    }
  }
  // Softmax numerators in place; qf[h] keeps head h's denominator (its query is no longer needed).
  for (int64_t h = 0; h < g; ++h) {
    float* sh = s + h * n16;
    const __m512 mv = row_max(sh, n, n16);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < n16; j += 16) {
      const __m512 e = softmax_numerators(sh, j, n, mv);
      _mm512_storeu_ps(sh + j, e);
      sum = _mm512_add_ps(sum, e);
    }
    qf[h] = _mm512_reduce_add_ps(sum);
  }
  // Weighted sum of the values: converted to fp32 once, then HB heads per pass over them.
  for (int64_t j = 0; j < n; ++j)
    for (int c = 0; c < DV; ++c) _mm512_storeu_ps(vf + j * d + 16 * c, load16_f32<T>(v + j * ks + 16 * c));
  for (int64_t h0 = 0; h0 < g; h0 += HB) {
    const int64_t hb = std::min<int64_t>(HB, g - h0);
    __m512 acc[HB][DV];
    for (int64_t h = 0; h < HB; ++h)
      for (int c = 0; c < DV; ++c) acc[h][c] = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      __m512 vj[DV];
      for (int c = 0; c < DV; ++c) vj[c] = _mm512_loadu_ps(vf + j * d + 16 * c);
      for (int64_t h = 0; h < HB; ++h) {
        if (h >= hb) break;
        const __m512 p = _mm512_set1_ps(s[(h0 + h) * n16 + j]);
        for (int c = 0; c < DV; ++c) acc[h][c] = _mm512_fmadd_ps(p, vj[c], acc[h][c]);
      }
    }
    for (int64_t h = 0; h < hb; ++h) {
      const __m512 inv = _mm512_set1_ps(1.0f / qf[h0 + h]);
      float tmp[16];
      for (int c = 0; c < DV; ++c) {
        _mm512_storeu_ps(tmp, _mm512_mul_ps(acc[h][c], inv));
        for (int i = 0; i < 16; ++i) from_f32(tmp[i], out + (h0 + h) * os + 16 * c + i);
      }
    }
  }
}

// The bf16 version (d = 32 * W): bf16 x bf16 products are exact in fp32, so the scores come from
// vdpbf16ps on the cached keys as they are (two products per lane and instruction, no conversion),
// and so does the weighted sum, on the softmax weights rounded to bf16 (as torch's flash kernel
// rounds them for its bf16 matmul; the denominator adds up the rounded weights) against pairs of
// value rows interleaved once per call. About half the instructions of the fp32 version.
template <int W>
__attribute__((target(SC_AVX512))) void attend_group_bf16(const uint16_t* q, int64_t qs, int64_t g,
                                                          const uint16_t* k, const uint16_t* v, int64_t ks,
                                                          int64_t n, float scale, uint16_t* out, int64_t os,
                                                          std::vector<float>& scratch) {
  constexpr int64_t d = 32 * W;
  constexpr int DV = 2 * W;                       // 16-lane fp32 output chunks per head
  constexpr int64_t HB = DV >= 16 ? 1 : 16 / DV;  // heads per pass over the values
  const int64_t n16 = (n + 15) / 16 * 16, pairs = n16 / 2;
  scratch.resize(static_cast<size_t>(g * n16 + g + pairs * d));
  float* s = scratch.data();                                      // g rows of n16 scores
  float* denom = s + g * n16;                                     // g softmax denominators
  uint16_t* vi = reinterpret_cast<uint16_t*>(denom + g);          // value rows interleaved by pairs
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int64_t nb = std::min<int64_t>(16, n - j0);
    __m512i kj[16][W];
    for (int64_t j = 0; j < 16; ++j)
      for (int c = 0; c < W; ++c)
        kj[j][c] = j < nb ? _mm512_loadu_si512(k + (j0 + j) * ks + 32 * c) : _mm512_setzero_si512();
    for (int64_t h = 0; h < g; ++h) {
      __m512i qh[W];
      __m512 part[16];
      for (int c = 0; c < W; ++c) qh[c] = _mm512_loadu_si512(q + h * qs + 32 * c);
      for (int64_t j = 0; j < 16; ++j) {
        __m512 acc = _mm512_setzero_ps();
        for (int c = 0; c < W; ++c) acc = _mm512_dpbf16_ps(acc, (__m512bh)kj[j][c], (__m512bh)qh[c]);
        part[j] = acc;
      }
      _mm512_storeu_ps(s + h * n16 + j0, _mm512_mul_ps(sum16x16(part), sc));
    }
  }
  // Softmax weights, rounded to bf16 and packed two keys per 32-bit word over the score rows
  // (row h's words start at s + h * n16: a row of n16 floats has room for its n16 / 2 words).
  for (int64_t h = 0; h < g; ++h) {
    float* sh = s + h * n16;
    const __m512 mv = row_max(sh, n, n16);
    __m512 sum = _mm512_setzero_ps();
    uint16_t* ph = reinterpret_cast<uint16_t*>(sh);
    for (int64_t j = 0; j < n16; j += 16) {  // writes weights j..j+15 over scores j/2.., already read
      const __m512 e = softmax_numerators(sh, j, n, mv);
      const __m256i eb = (__m256i)_mm512_cvtneps_pbh(e);
      sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(eb), 16)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ph + j), eb);
    }
    denom[h] = _mm512_reduce_add_ps(sum);
  }
  // Value rows 2i and 2i + 1 interleaved: word c of pair i holds (v[2i][c], v[2i+1][c]).
  alignas(64) static const uint16_t interleave[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                       8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i lo_idx = _mm512_load_si512(interleave);
  const __m512i hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
  for (int64_t i = 0; i < pairs; ++i) {
    for (int c = 0; c < W; ++c) {
      const __m512i a = 2 * i < n ? _mm512_loadu_si512(v + 2 * i * ks + 32 * c) : _mm512_setzero_si512();
      const __m512i b = 2 * i + 1 < n ? _mm512_loadu_si512(v + (2 * i + 1) * ks + 32 * c) : _mm512_setzero_si512();
      _mm512_storeu_si512(vi + i * 2 * d + 64 * c, _mm512_permutex2var_epi16(a, lo_idx, b));
      _mm512_storeu_si512(vi + i * 2 * d + 64 * c + 32, _mm512_permutex2var_epi16(a, hi_idx, b));
    }
  }
  for (int64_t h0 = 0; h0 < g; h0 += HB) {
    const int64_t hb = std::min<int64_t>(HB, g - h0);
    __m512 acc[HB][DV];
    for (int64_t h = 0; h < HB; ++h)
      for (int c = 0; c < DV; ++c) acc[h][c] = _mm512_setzero_ps();
    for (int64_t i = 0; i < pairs; ++i) {
      __m512i vj[DV];
      for (int c = 0; c < DV; ++c) vj[c] = _mm512_loadu_si512(vi + i * 2 * d + 32 * c);
      for (int64_t h = 0; h < HB; ++h) {
        if (h >= hb) break;
        const __m512i p = _mm512_set1_epi32(reinterpret_cast<const int32_t*>(s + (h0 + h) * n16)[i]);
        for (int c = 0; c < DV; ++c) acc[h][c] = _mm512_dpbf16_ps(acc[h][c], (__m512bh)vj[c], (__m512bh)p);
      }
    }
    for (int64_t h = 0; h < hb; ++h) {
      const __m512 inv = _mm512_set1_ps(1.0f / denom[h0 + h]);
      float tmp[16];
      for (int c = 0; c < DV; ++c) {
        _mm512_storeu_ps(tmp, _mm512_mul_ps(acc[h][c], inv));
        for (int i = 0; i < 16; ++i) from_f32(tmp[i], out + (h0 + h) * os + 16 * c + i);
      }
    }
  }
}

// Whether decode_attention may use its own loop (set_decode_attention: benchmarks and tests compare
// it with torch's kernel).
std::atomic<bool> g_own_attention{true};

int64_t set_decode_attention(int64_t own) { return g_own_attention.exchange(own != 0) ? 1 : 0; }

// q (1, heads, T, d) after the rotary embedding; keys/values (1, kv_heads, >= first_len + T - 1, d),
// rows contiguous. Returns (T, heads * d) in q's dtype.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            int64_t first_len, double scaling) {
  TORCH_CHECK(q.dim() == 4 && keys.dim() == 4 && values.dim() == 4 && q.size(0) == 1 && keys.size(0) == 1,
              "subcoder_sparse: decode_attention takes (1, heads, T, d) queries and (1, kv, n, d) keys/values");
  const int64_t heads = q.size(1), T = q.size(2), d = q.size(3), kv = keys.size(1);
  TORCH_CHECK(kv > 0 && heads % kv == 0 && keys.size(3) == d && values.sizes() == keys.sizes() &&
                  first_len >= 1 && first_len + T - 1 <= keys.size(2),
              "subcoder_sparse: decode_attention got inconsistent shapes");
  const int64_t g = heads / kv;
  const auto dt = q.scalar_type();
  const bool fast = g_own_attention.load(std::memory_order_relaxed) && g_isa.load(std::memory_order_relaxed) == ISA_AVX512 && (d == 16 || d == 32 || d == 64 || d == 128) &&
                    (dt == at::kBFloat16 || dt == at::kFloat) && keys.scalar_type() == dt &&
                    values.scalar_type() == dt && keys.stride(3) == 1 && values.stride(3) == 1 &&
                    keys.stride(2) == d && values.stride(2) == d && keys.stride(1) == values.stride(1);
  at::Tensor out = at::empty({T, heads * d}, q.options());
  if (!fast) {  // torch's kernel, one call per query (no mask: query t sees first_len + t positions)
    for (int64_t t = 0; t < T; ++t) {
      const at::Tensor qt = q.select(2, t).contiguous().view({1, kv, g, d});
      out.select(0, t).copy_(at::scaled_dot_product_attention(qt, keys.narrow(2, 0, first_len + t),
                                                              values.narrow(2, 0, first_len + t), c10::nullopt,
                                                              0.0, false, scaling)
                                 .reshape({heads * d}));
    }
    return out;
  }
  const at::Tensor qc = q.stride(3) == 1 ? q : q.contiguous();  // (1, heads, T, d), any head/token strides
  const int64_t q_head = qc.stride(1), q_tok = qc.stride(2);
  const int64_t hs = keys.stride(1);
  const float scale = static_cast<float>(scaling);
  const int64_t tasks = T * kv;
  const int64_t work = (first_len + T) * heads * d * T;
  const int64_t grain = work >= 64 * 1024 ? 1 : tasks;  // short caches: one thread, no wake-up
  auto run = [&](auto tag) {
    using E = decltype(tag);
    const E* qp = static_cast<const E*>(qc.data_ptr());
    const E* kp = static_cast<const E*>(keys.data_ptr());
    const E* vp = static_cast<const E*>(values.data_ptr());
    E* op = static_cast<E*>(out.data_ptr());
    at::parallel_for(0, tasks, grain, [&](int64_t a, int64_t b) {
      thread_local std::vector<float> scratch;
      for (int64_t task = a; task < b; ++task) {
        const int64_t t = task / kv, h = task % kv;
        const E* qh = qp + h * g * q_head + t * q_tok;
        E* oh = op + t * heads * d + h * g * d;
        const int64_t n = first_len + t;
        if constexpr (std::is_same_v<E, uint16_t>) {
          if (d >= 32) {
            const uint16_t* kh = kp + h * hs;
            const uint16_t* vh = vp + h * hs;
            if (d == 32) attend_group_bf16<1>(qh, q_head, g, kh, vh, d, n, scale, oh, d, scratch);
            else if (d == 64) attend_group_bf16<2>(qh, q_head, g, kh, vh, d, n, scale, oh, d, scratch);
            else attend_group_bf16<4>(qh, q_head, g, kh, vh, d, n, scale, oh, d, scratch);
            continue;
          }
        }
        if (d == 16) attend_group<E, 1>(qh, q_head, g, kp + h * hs, vp + h * hs, d, n, scale, oh, d, scratch);
        else if (d == 32) attend_group<E, 2>(qh, q_head, g, kp + h * hs, vp + h * hs, d, n, scale, oh, d, scratch);
        else if (d == 64) attend_group<E, 4>(qh, q_head, g, kp + h * hs, vp + h * hs, d, n, scale, oh, d, scratch);
        else attend_group<E, 8>(qh, q_head, g, kp + h * hs, vp + h * hs, d, n, scale, oh, d, scratch);
      }
    });
  };
  if (dt == at::kBFloat16) run(uint16_t{});
  else run(float{});
  return out;
}

// ---------------------------------------------------------------------------------------------
// A whole decode step for one token (pruner/sparse/fastdecode.py): every decoder layer of a
// Llama-family model in one call. The same ATen operators the lean Python step calls, in the same
// order with the same dtypes, so the results are bit-identical to it; what goes away is the Python
// interpreter between ~15 tiny operators per layer (measured: ~11 ms of a ~30 ms step for
// Qwen2.5-Coder-0.5B, against ~1.5 ms of dispatch from C++).
//
// params: per layer, 2 norm weights then 7 linears (q, k, v, o, gate, up, down) of 3 tensors each
//         (weight-or-mask, values-or-empty, row offsets-or-empty) plus a bias-or-empty: 2 + 7 * 4.
// kinds:  per linear, 0 = packed sparse (SparseLinear), 1 = dense bf16 row kernel
//         (DenseBF16Linear), 2 = torch's linear (nn.Linear).
// k_cache/v_cache: per layer, the KV buffers (1, kv_heads, capacity, d); the new token's keys and
//         values are written at `pos` and attention reads positions [0, pos].
// eps: per layer, the two RMSNorm epsilons.
// ---------------------------------------------------------------------------------------------

constexpr int64_t STEP_TENSORS_PER_LAYER = 2 + 7 * 4;

at::Tensor step_linear(const at::Tensor& x, at::TensorList p, int64_t kind) {
  const at::Tensor& a = p[0];
  const at::Tensor& b = p[1];
  const at::Tensor& roff = p[2];
  const at::Tensor& bias = p[3];
  const c10::optional<at::Tensor> ob = bias.numel() ? c10::optional<at::Tensor>(bias) : c10::nullopt;
  if (kind == 0) return sparse_linear_2d(x, a, b, roff, x.size(1), ob, 0);
  if (kind == 1) return dense_linear_2d(x, a, ob).to(x.scalar_type());
  return at::linear(x, a, ob);
}

// The rotary embedding of T tokens' projections x (T, H * d), token t rotated by row t of cos/sin
// (fp32, (T, d)): `rope`'s arithmetic and rounding, one call for every head of every token (the
// model's eager operators took ~50 us per layer for a few tokens).
at::Tensor rope_tokens(const at::Tensor& x_in, const at::Tensor& cos, const at::Tensor& sin, int64_t d) {
  const at::Tensor x = x_in.contiguous();
  const int64_t T = x.size(0), H = x.size(1) / d, half = d / 2;
  at::Tensor y = at::empty_like(x);
  const bool bf = x.scalar_type() == at::kBFloat16;
  for (int64_t t = 0; t < T; ++t) {
    const float* cp = cos.data_ptr<float>() + t * d;
    const float* sp = sin.data_ptr<float>() + t * d;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t o = (t * H + h) * d;
      for (int64_t i = 0; i < d; ++i) {
        if (bf) {
          const c10::BFloat16* tp = x.data_ptr<c10::BFloat16>() + o;
          const float v = static_cast<float>(tp[i]);
          const float rot = i < half ? -static_cast<float>(tp[i + half]) : static_cast<float>(tp[i - half]);
          y.data_ptr<c10::BFloat16>()[o + i] = c10::BFloat16(bf16_round(v * cp[i]) + bf16_round(rot * sp[i]));
        } else {
          const float* tp = x.data_ptr<float>() + o;
          const float rot = i < half ? -tp[i + half] : tp[i - half];
          y.data_ptr<float>()[o + i] = tp[i] * cp[i] + rot * sp[i];
        }
      }
    }
  }
  return y;
}

// x: (T, hidden), the hidden states of T new tokens at positions pos .. pos + T - 1; cos/sin hold
// one row of d values per position. T == 1 is the decode step; T > 1 verifies draft tokens
// (speculative decoding): each new token attends to the cache and to the new tokens before it,
// and every row comes out bit-identical to what T single steps would compute.
at::Tensor decode_layers(const at::Tensor& x_in, at::TensorList params, at::IntArrayRef kinds,
                         at::TensorList k_cache, at::TensorList v_cache, int64_t pos, const at::Tensor& cos,
                         const at::Tensor& sin, int64_t heads, int64_t kv_heads, at::ArrayRef<double> eps,
                         double scaling) {
  const int64_t L = static_cast<int64_t>(k_cache.size());
  TORCH_CHECK(static_cast<int64_t>(params.size()) == L * STEP_TENSORS_PER_LAYER &&
                  static_cast<int64_t>(kinds.size()) == L * 7 && static_cast<int64_t>(v_cache.size()) == L &&
                  static_cast<int64_t>(eps.size()) == L * 2,
              "subcoder_sparse: decode_layers got inconsistent per-layer lists");
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(0) >= 1 && heads % kv_heads == 0,
              "subcoder_sparse: decode_layers input must be (tokens, hidden)");
  at::NoGradGuard no_grad;
  const int64_t T = x_in.size(0);
  // rope would convert cos/sin to fp32 on every call: once here (bit-identical)
  const at::Tensor cos_f = cos.to(at::kFloat).reshape({T, -1}).contiguous();
  const at::Tensor sin_f = sin.to(at::kFloat).reshape({T, -1}).contiguous();
  at::Tensor x = x_in;
  for (int64_t i = 0; i < L; ++i) {
    at::TensorList p = params.slice(i * STEP_TENSORS_PER_LAYER, STEP_TENSORS_PER_LAYER);
    const int64_t* kd = kinds.data() + i * 7;
    const at::Tensor& kb = k_cache[i];
    const at::Tensor& vb = v_cache[i];
    const int64_t d = kb.size(3);
    TORCH_CHECK(kb.dim() == 4 && pos + T <= kb.size(2) && vb.size(2) == kb.size(2),
                "subcoder_sparse: KV buffer too small");
    at::Tensor h = rms_norm(x, p[0], eps[2 * i]);
    // (1, heads, T, d) views of the rotated (T, heads * d) projections
    const at::Tensor q = rope_tokens(step_linear(h, p.slice(2, 4), kd[0]), cos_f, sin_f, d).view({1, T, heads, d}).transpose(1, 2);
    const at::Tensor k = rope_tokens(step_linear(h, p.slice(6, 4), kd[1]), cos_f, sin_f, d).view({1, T, kv_heads, d}).transpose(1, 2);
    const at::Tensor v = step_linear(h, p.slice(10, 4), kd[2]).view({1, T, kv_heads, d}).transpose(1, 2);
    kb.narrow(2, pos, T).copy_(k);
    vb.narrow(2, pos, T).copy_(v);
    const at::Tensor attn = decode_attention(q, kb, vb, pos + 1, scaling);
    x = x + step_linear(attn, p.slice(14, 4), kd[3]);
    h = rms_norm(x, p[1], eps[2 * i + 1]);
    at::Tensor gate = step_linear(h, p.slice(18, 4), kd[4]);
    at::Tensor up = step_linear(h, p.slice(22, 4), kd[5]);
    x = x + step_linear(at::silu(gate) * up, p.slice(26, 4), kd[6]);
  }
  return x;
}

// ---------------------------------------------------------------------------------------------
// Greedy head: the argmax of x @ W^T (the vocabulary projection) without reading all of W in bf16.
// ---------------------------------------------------------------------------------------------
// Greedy decoding needs only the best row of the lm_head product, not its 150k logits, and on a
// 0.5B model that product reads 272 MB of bf16 weights per pass (40% of a decode step's bytes).
// An int8 copy of W (one fp32 scale per row) gives every logit to within a bound that is computed
// alongside it; only the rows whose upper bound reaches the best lower bound (a few dozen) are then
// recomputed exactly -- with dense_row_avx512<1>, the very per-row arithmetic dense_linear uses --
// so the index returned is exactly `dense_linear(x, W).argmax(-1)`, first index on ties included.
//
// Bound for row r and input x (bf16 values, the ones dense_linear multiplies):
//   W_r = s_r q_r + dw, |dw| <= s_r / 2 (q_r = round(W_r / s_r), s_r = max|W_r| / 127)
//   x   = t p + dx,     |dx| <= t / 2   (p = round(x / t), t = max|x| / 127)
//   x.W_r - s_r t (p.q_r) = x.dw + dx.(s_r q_r)  =>  |error| <= s_r (|x|_1 / 2 + t |q_r|_1 / 2)
// plus the fp32 rounding of the exact kernel (<= ~4e-6 sum|x W_r|, bounded with 25x margin by
// 1e-4 * 127 s_r |x|_1) and of the bound arithmetic itself. The integer dot p.q_r is exact
// (vpdpbusd on p + 128, corrected by 128 sum(q_r)).
// The bound is loose (hidden states have outlier channels, so t / 2 is large: ~10x the actual
// error on qwen2.5-coder-0.5b) and lets through ~900 of 151,936 rows on average, whose exact
// re-check and the scan for them take ~0.25 ms. What it buys: one vpdpbusd per 64 columns, half
// the bf16 product's instructions (which bind when a verify pass multiplies several rows) and
// half its bytes (which bind for one row). Measured on that head: 1 row 9.7 -> 5.1 ms, 7 rows
// 20.8 -> 12.3 ms (a pass-2 threshold from a two-level x quantization let through 3 rows, but
// doubled the instructions and was slower for more than one row).
// Ties: dense_linear rounds bf16 inputs' logits to bf16, so rows a little below the best can
// round to the same value (and win with a lower index); candidates therefore reach down by
// 1/64 of the best logit's largest possible magnitude, more than the 1/127 relative gap two
// values that round alike can have.

#define SC_VNNI "avx512f,avx512bw,avx512vnni,avx512vbmi2,avx512bf16,avx2,fma,popcnt"

bool detect_vnni() {
  __builtin_cpu_init();
  return g_best_isa == ISA_AVX512 && __builtin_cpu_supports("avx512vnni");
}

const bool g_has_vnni = detect_vnni();

bool has_vnni() { return g_has_vnni; }

// Per input row: p + 128 as bytes (zero-padded columns are p = 0, i.e. 128), the scale t and |x|_1.
struct QuantizedInput {
  std::vector<uint8_t> u;  // (B, stride)
  std::vector<float> t, l1;
  int64_t stride;
};

QuantizedInput quantize_input(const uint16_t* xq, int64_t B, int64_t xs, int64_t in, int64_t stride) {
  QuantizedInput qi;
  qi.stride = stride;
  qi.u.assign(static_cast<size_t>(B * stride), uint8_t(128));
  qi.t.resize(B);
  qi.l1.resize(B);
  for (int64_t b = 0; b < B; ++b) {
    const uint16_t* xb = xq + b * xs;
    float amax = 0.0f, l1 = 0.0f;
    for (int64_t c = 0; c < in; ++c) {
      const uint32_t bits = static_cast<uint32_t>(xb[c]) << 16;
      float v;
      std::memcpy(&v, &bits, 4);
      amax = std::max(amax, std::fabs(v));
      l1 += std::fabs(v);
    }
    const float t = amax > 0.0f ? amax / 127.0f : 1.0f;
    for (int64_t c = 0; c < in; ++c) {
      const uint32_t bits = static_cast<uint32_t>(xb[c]) << 16;
      float v;
      std::memcpy(&v, &bits, 4);
      const float p = std::min(127.0f, std::max(-127.0f, std::nearbyint(v / t)));
      qi.u[b * stride + c] = static_cast<uint8_t>(static_cast<int>(p) + 128);
    }
    qi.t[b] = t;
    qi.l1[b] = l1 * 1.001f;  // fp32 summation slack
  }
  return qi;
}

// NB input rows against one int8 weight row of `chunks` x 64 bytes: the exact integer dots.
// Lane i of the result: the sum of h[i]'s 8 lanes (four reductions for the price of ~1.5).
__attribute__((target(SC_VNNI))) inline __m128i hsum4_epi32(__m256i h0, __m256i h1, __m256i h2, __m256i h3) {
  const __m256i t = _mm256_hadd_epi32(_mm256_hadd_epi32(h0, h1), _mm256_hadd_epi32(h2, h3));
  return _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}

__attribute__((target(SC_VNNI))) inline __m256i fold_epi32(__m512i v) {
  return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

// NB input rows (u + b us) against one int8 weight row of `chunks` x 64 bytes: the dots of the
// stored (+128) bytes. Exact in int32: |.| <= 2^31 needs in <= 66,000 columns (checked).
template <int NB>
__attribute__((target(SC_VNNI))) inline void int8_dots(const int8_t* q, int64_t chunks, const uint8_t* u,
                                                       int64_t us, int32_t* out) {
  __m512i acc[NB];
  for (int b = 0; b < NB; ++b) acc[b] = _mm512_setzero_si512();
  for (int64_t k = 0; k < chunks; ++k) {
    const __m512i w = _mm512_loadu_si512(q + 64 * k);
    for (int b = 0; b < NB; ++b) acc[b] = _mm512_dpbusd_epi32(acc[b], _mm512_loadu_si512(u + b * us + 64 * k), w);
  }
  __m256i h[4];
  for (int b = 0; b < 4; ++b) h[b] = b < NB ? fold_epi32(acc[b < NB ? b : 0]) : _mm256_setzero_si256();
  alignas(16) int32_t sums[4];
  _mm_store_si128(reinterpret_cast<__m128i*>(sums), hsum4_epi32(h[0], h[1], h[2], h[3]));
  for (int b = 0; b < NB; ++b) out[b] = sums[b];
}

// What pass 1 and pass 2 of greedy_head read.
struct Screen {
  const int8_t* q;  // (V, stride) int8
  int64_t stride, chunks, V, B, in;
  const float* scale;  // (V,)
  const int32_t* qsum;  // (V,)
  const float* qabs;  // (V,)
  const float* bias;  // (V,) or nullptr
  const uint8_t* u;  // (B, stride): quantized inputs + 128
  const float *t, *c1, *c2;  // (B,) each
  float* ub;  // (B, V): upper bounds, written by pass 1
  const uint16_t* w;  // (V, in) bf16: the exact weight
  const uint16_t* x;  // (B, xs) bf16: the padded input
  int64_t xs;
  bool round_bf16;
};

// Pass 1 over rows [r0, r1): every row's upper bound into s.ub, the maxima of the lower and upper
// bounds per input row into lb[b], top[b]. Rows go in blocks of 16: the integer dots of a block
// (all input rows, four at a time, while the block's int8 rows sit in L1), then the bounds of its
// 16 rows in vector registers.
__attribute__((target(SC_VNNI))) void screen_pass1(const Screen& s, int64_t r0, int64_t r1, float* lb, float* top) {
  const int64_t B = s.B;
  std::vector<float> run_lb(B * 16, -INFINITY), run_ub(B * 16, -INFINITY);
  alignas(64) int32_t dots[4][16];
  int32_t four[4];
  for (int64_t r = r0; r < r1; r += 16) {
    const int64_t n = std::min<int64_t>(16, r1 - r);
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
    const __m512 sc = _mm512_maskz_loadu_ps(m, s.scale + r);
    const __m512 qa = _mm512_maskz_loadu_ps(m, s.qabs + r);
    const __m512i qs = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(m, s.qsum + r), 7);  // 128 sum(q_r)
    const __m512 bi = s.bias ? _mm512_maskz_loadu_ps(m, s.bias + r) : _mm512_setzero_ps();
    for (int64_t b0 = 0; b0 < B; b0 += 4) {
      const int64_t nb = std::min<int64_t>(4, B - b0);
      const uint8_t* u = s.u + b0 * s.stride;
      for (int64_t j = 0; j < n; ++j) {
        const int8_t* qr = s.q + (r + j) * s.stride;
        if (nb == 4) int8_dots<4>(qr, s.chunks, u, s.stride, four);
        else if (nb == 3) int8_dots<3>(qr, s.chunks, u, s.stride, four);
        else if (nb == 2) int8_dots<2>(qr, s.chunks, u, s.stride, four);
        else int8_dots<1>(qr, s.chunks, u, s.stride, four);
        for (int64_t i = 0; i < nb; ++i) dots[i][j] = four[i];
      }
      for (int64_t i = 0; i < nb; ++i) {
        const int64_t b = b0 + i;
        const __m512i d = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(m, dots[i]), qs);  // take off the +128
        const __m512 a = _mm512_mul_ps(_mm512_mul_ps(sc, _mm512_set1_ps(s.t[b])), _mm512_cvtepi32_ps(d));
        __m512 e = _mm512_mul_ps(sc, _mm512_fmadd_ps(_mm512_set1_ps(s.c2[b]), qa, _mm512_set1_ps(s.c1[b])));
        e = _mm512_add_ps(e, _mm512_fmadd_ps(_mm512_abs_ps(a), _mm512_set1_ps(1e-5f), _mm512_set1_ps(1e-30f)));
        const __m512 hi = _mm512_add_ps(_mm512_add_ps(a, e), bi), lo = _mm512_add_ps(_mm512_sub_ps(a, e), bi);
        _mm512_mask_storeu_ps(s.ub + b * s.V + r, m, hi);
        const __m512 neg = _mm512_set1_ps(-INFINITY);
        float* rl = run_lb.data() + 16 * b;
        float* ru = run_ub.data() + 16 * b;
        _mm512_storeu_ps(rl, _mm512_max_ps(_mm512_loadu_ps(rl), _mm512_mask_mov_ps(neg, m, lo)));
        _mm512_storeu_ps(ru, _mm512_max_ps(_mm512_loadu_ps(ru), _mm512_mask_mov_ps(neg, m, hi)));
      }
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    lb[b] = _mm512_reduce_max_ps(_mm512_loadu_ps(run_lb.data() + 16 * b));
    top[b] = _mm512_reduce_max_ps(_mm512_loadu_ps(run_ub.data() + 16 * b));
  }
}

// Pass 2 over rows [r0, r1): the exact logit of every row whose upper bound reaches thr[b] -- the
// per-row arithmetic and output rounding of dense_linear -- and the best of them (first on ties).
__attribute__((target(SC_VNNI))) void screen_pass2(const Screen& s, int64_t r0, int64_t r1, const float* thr,
                                                   int64_t* best, float* best_v) {
  for (int64_t b = 0; b < s.B; ++b) {
    const float* ubb = s.ub + b * s.V;
    const __m512 th = _mm512_set1_ps(thr[b]);
    int64_t arg = -1;
    float val = -INFINITY;
    for (int64_t r = r0; r < r1; r += 16) {
      const int64_t n = std::min<int64_t>(16, r1 - r);
      uint32_t hits = _mm512_mask_cmp_ps_mask(static_cast<__mmask16>((1u << n) - 1u), _mm512_loadu_ps(ubb + r), th,
                                              _CMP_GE_OQ);
      while (hits) {
        const int64_t row = r + __builtin_ctz(hits);
        hits &= hits - 1;
        float v;
        dense_row_avx512<1>(s.w + row * s.in, s.in, s.x + b * s.xs, s.xs, &v);
        if (s.bias) v += s.bias[row];
        if (s.round_bf16) v = static_cast<float>(c10::BFloat16(v));
        if (arg < 0 || v > val) {
          arg = row;
          val = v;
        }
      }
    }
    best[b] = arg;
    best_v[b] = val;
  }
}

// x (B, in) bf16 or fp32; weight (V, in) bf16, the exact reference; q (V, 64 * chunks) int8,
// scale (V,) fp32, qsum (V,) int32 = sum(q_r), qabs (V,) fp32 = |q_r|_1. Returns (B,) int64.
at::Tensor greedy_head(const at::Tensor& x_in, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       const at::Tensor& q, const at::Tensor& scale, const at::Tensor& qsum,
                       const at::Tensor& qabs) {
  TORCH_CHECK(has_vnni() && current_isa() == ISA_AVX512, "subcoder_sparse: greedy_head needs AVX-512 VNNI+BF16");
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kBFloat16 && weight.is_contiguous() && weight.is_cpu(),
              "subcoder_sparse: weight must be a contiguous CPU bf16 (V, in) tensor");
  const int64_t V = weight.size(0), in = weight.size(1);
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) == in &&
                  (x_in.scalar_type() == at::kBFloat16 || x_in.scalar_type() == at::kFloat),
              "subcoder_sparse: input must be bf16 or fp32 (B, ", in, ")");
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kChar && q.is_contiguous() && q.size(0) == V &&
                  q.size(1) % 64 == 0 && q.size(1) >= in,
              "subcoder_sparse: q must be int8 (V, in padded to 64)");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && qsum.scalar_type() == at::kInt && qabs.scalar_type() == at::kFloat &&
                  scale.numel() == V && qsum.numel() == V && qabs.numel() == V && scale.is_contiguous() &&
                  qsum.is_contiguous() && qabs.is_contiguous(),
              "subcoder_sparse: scale/qabs must be fp32 (V,), qsum int32 (V,)");
  TORCH_CHECK(in <= 65536, "subcoder_sparse: greedy_head takes at most 65536 columns");
  const int64_t B = x_in.size(0);
  at::Tensor result = at::empty({B}, x_in.options().dtype(at::kLong));
  if (B == 0) return result;
  at::Tensor bias_f;  // fp32, as OutputWriter adds it to a logit
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == V, "subcoder_sparse: bias has ", bias->numel(), " entries, expected ", V);
    bias_f = bias->to(at::kFloat).contiguous();
  }
  const PaddedInput xp = padded_input(x_in, in, ISA_AVX512);
  const QuantizedInput qi = quantize_input(static_cast<const uint16_t*>(xp.data), B, xp.stride, in, q.size(1));
  thread_local std::vector<float> ub_storage;  // reused: a fresh 4 MB per pass is page-faulted in anew
  ub_storage.resize(static_cast<size_t>(B * V));
  std::vector<float> c1(B), c2(B);
  for (int64_t b = 0; b < B; ++b) {
    c1[b] = (0.5001f + 0.0127f) * qi.l1[b];
    c2[b] = 0.5001f * qi.t[b];
  }
  const Screen s{q.data_ptr<int8_t>(), q.size(1), q.size(1) / 64, V, B, in, scale.data_ptr<float>(),
                 qsum.data_ptr<int32_t>(), qabs.data_ptr<float>(),
                 bias_f.defined() ? bias_f.data_ptr<float>() : nullptr, qi.u.data(), qi.t.data(), c1.data(),
                 c2.data(), ub_storage.data(), reinterpret_cast<const uint16_t*>(weight.data_ptr()),
                 static_cast<const uint16_t*>(xp.data), xp.stride, x_in.scalar_type() == at::kBFloat16};
  // Threads split the rows in blocks of 16 (each keeps its maxima in its own memory: shared ones,
  // updated row by row, bounced a cache line between the cores and ran 3x slower than one thread).
  const int64_t nt = n_threads_for(V * q.size(1) * B / 2);
  std::vector<int64_t> bounds(nt + 1);
  for (int64_t t = 0; t <= nt; ++t) bounds[t] = std::min(V, (V * t / nt + 15) / 16 * 16);
  bounds[nt] = V;
  auto in_threads = [&](const auto& f) {
    if (nt <= 1) f(0);
    else at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) { for (int64_t t = t0; t < t1; ++t) f(t); });
  };
  std::vector<float> lbs(nt * B), tops(nt * B);
  in_threads([&](int64_t t) { screen_pass1(s, bounds[t], bounds[t + 1], lbs.data() + t * B, tops.data() + t * B); });
  // The best exact logit lies in [lb, top]; with bf16 output, rows that round to its value lie
  // within 1/127 of it (relative), so the threshold reaches down by 1/64 of its largest magnitude.
  std::vector<float> thr(B);
  for (int64_t b = 0; b < B; ++b) {
    float lb = -INFINITY, top = -INFINITY;
    for (int64_t t = 0; t < nt; ++t) {
      lb = std::max(lb, lbs[t * B + b]);
      top = std::max(top, tops[t * B + b]);
    }
    thr[b] = lb - (s.round_bf16 ? std::max(std::fabs(lb), std::fabs(top)) / 64.0f : 0.0f);
  }
  std::vector<int64_t> best(nt * B);
  std::vector<float> best_v(nt * B);
  in_threads([&](int64_t t) {
    screen_pass2(s, bounds[t], bounds[t + 1], thr.data(), best.data() + t * B, best_v.data() + t * B);
  });
  int64_t* res = result.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    int64_t arg = -1;
    float val = -INFINITY;
    for (int64_t t = 0; t < nt; ++t) {  // threads in row order: a strict > keeps the first on ties
      if (best[t * B + b] >= 0 && (arg < 0 || best_v[t * B + b] > val)) {
        arg = best[t * B + b];
        val = best_v[t * B + b];
      }
    }
    TORCH_CHECK(arg >= 0, "subcoder_sparse: greedy_head found no candidate (non-finite input?)");
    res[b] = arg;
  }
  return result;
}

int64_t head_screen_available() { return has_vnni() && current_isa() == ISA_AVX512 ? 1 : 0; }

}  // namespace

TORCH_LIBRARY(subcoder_sparse, m) {
  m.def("row_offsets(Tensor mask) -> Tensor", &row_offsets);
  m.def("sparse_linear(Tensor x, Tensor mask, Tensor values, Tensor row_offsets, int in_features, "
        "Tensor? bias, int mode) -> Tensor",
        &sparse_linear);
  m.def("dense_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor", &dense_linear);
  m.def("expand(Tensor mask, Tensor values, Tensor row_offsets, int in_features, int r0, int r1, "
        "ScalarType dtype) -> Tensor",
        &expand);
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor", &rms_norm);
  m.def("rope(Tensor t, Tensor cos, Tensor sin) -> Tensor", &rope);
  m.def("decode_attention(Tensor q, Tensor keys, Tensor values, int first_len, float scaling) -> Tensor",
        &decode_attention);
  m.def("set_decode_attention(int own) -> int", &set_decode_attention);
  m.def("decode_layers(Tensor x, Tensor[] params, int[] kinds, Tensor[] k_cache, Tensor[] v_cache, int pos, "
        "Tensor cos, Tensor sin, int heads, int kv_heads, float[] eps, float scaling) -> Tensor",
        &decode_layers);
  m.def("greedy_head(Tensor x, Tensor weight, Tensor? bias, Tensor q, Tensor scale, Tensor qsum, Tensor qabs) "
        "-> Tensor",
        &greedy_head);
  m.def("head_screen_available() -> int", &head_screen_available);
  m.def("best_isa() -> int", &best_isa);
  m.def("get_isa() -> int", &get_isa);
  m.def("set_isa(int isa) -> int", &set_isa);
  m.def("set_gemm_min_batch(int batch) -> int", &set_gemm_min_batch);
}
