// Decode attention: T new queries (T = 1 for a step, a few when verifying a draft) against the KV
// cache, query t seeing the first `first_len + t` positions. Why not SDPA: its CPU flash kernel is
// built for long queries; for one query against ~800 keys it took ~150 us per layer (3.5 ms of a
// 27 ms step, measured with torch.profiler), several times its arithmetic. This loop does the
// same maths (scores in fp32, fp32 softmax, fp32 weighted sum of the values, one rounding to the
// output dtype) in ~10-20 us, and each (query, kv head) is computed by the same code whatever T is,
// so a verification pass stays bit-identical to single steps.

#include <atomic>
#include <type_traits>
#include <vector>

#include "common.h"
#include "isa.h"
#include "ops.h"

namespace subcoder {
namespace {

// exp(x) for x <= 0 (softmax after subtracting the maximum): x = n ln2 + r with |r| <= ln2 / 2,
// exp(r) by its degree-6 Taylor polynomial (relative error ~1e-7, an ulp), scaled by 2^n with
// vscalefps. Inputs below -87 give 0, as expf's underflow would.
SC_AVX512_FN inline __m512 exp_nonpositive(__m512 x) {
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
SC_AVX512_FN inline __m512 load16_f32(const T* p);
template <>
SC_AVX512_FN inline __m512 load16_f32<float>(const float* p) { return _mm512_loadu_ps(p); }
template <>
SC_AVX512_FN inline __m512 load16_f32<uint16_t>(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}


// Lane j of the result = the sum of the 16 lanes of v[j]: a transpose-and-add tree (46 shuffles
// and adds for 16 sums, against ~128 for 16 separate horizontal reductions).
SC_AVX512_FN inline __m512 sum16x16(const __m512* v) {
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
SC_AVX512_FN inline __mmask16 live_keys(int64_t j, int64_t n) {
  return j + 16 <= n ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - j)) - 1);
}

// The largest of a score row's n scores, in every lane: softmax subtracts it before exp.
SC_AVX512_FN inline __m512 row_max(const float* sh, int64_t n, int64_t n16) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n16; j += 16) mx = _mm512_mask_max_ps(mx, live_keys(j, n), mx, _mm512_loadu_ps(sh + j));
  return _mm512_set1_ps(_mm512_reduce_max_ps(mx));
}

// exp(score - max) for keys j..j+15; padding keys get weight 0.
SC_AVX512_FN inline __m512 softmax_numerators(const float* sh, int64_t j, int64_t n,
                                                                    __m512 mv) {
  return _mm512_maskz_mov_ps(live_keys(j, n), exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(sh + j), mv)));
}

// The weighted sum of the values and its division by the softmax denominators, for g heads of
// DV 16-lane fp32 output chunks each (out: g rows, stride os), HB heads per pass over the values.
// L says what one of the `steps` steps over the values is: L::value(i, c) its value chunk c,
// L::weight(h, i) head h's softmax weight(s) for it, L::madd(acc, value, weight) the update.
template <int DV, class L, typename T>
SC_INLINE(SC_TARGET_AVX512) void weighted_sum(const L& l, int64_t g, int64_t steps, const float* denom, T* out,
                                              int64_t os) {
  constexpr int64_t HB = DV >= 16 ? 1 : 16 / DV;  // HB * DV accumulators
  for (int64_t h0 = 0; h0 < g; h0 += HB) {
    const int64_t hb = std::min<int64_t>(HB, g - h0);
    __m512 acc[HB][DV];
    for (int64_t h = 0; h < HB; ++h)
      for (int c = 0; c < DV; ++c) acc[h][c] = _mm512_setzero_ps();
    for (int64_t i = 0; i < steps; ++i) {
      typename L::V vals[DV];
      for (int c = 0; c < DV; ++c) vals[c] = l.value(i, c);
      for (int64_t h = 0; h < HB; ++h) {
        if (h >= hb) break;
        const typename L::V p = l.weight(h0 + h, i);
        for (int c = 0; c < DV; ++c) acc[h][c] = L::madd(acc[h][c], vals[c], p);
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

// Steps of one key: the values in fp32 (rows of d), one fp32 weight per key (score rows of n16).
struct Fp32Values {
  using V = __m512;
  const float* vf;
  const float* s;
  int64_t d, n16;
  SC_INLINE(SC_TARGET_AVX512) V value(int64_t j, int c) const { return _mm512_loadu_ps(vf + j * d + 16 * c); }
  SC_INLINE(SC_TARGET_AVX512) V weight(int64_t h, int64_t j) const { return _mm512_set1_ps(s[h * n16 + j]); }
  SC_INLINE(SC_TARGET_AVX512) static __m512 madd(__m512 acc, V v, V p) { return _mm512_fmadd_ps(p, v, acc); }
};

// Steps of two keys: value rows interleaved by pairs (2 * d bf16 per pair), the pair's two bf16
// weights in one 32-bit word (score rows of n16 floats, holding n16 / 2 such words).
struct Bf16Pairs {
  using V = __m512i;
  const uint16_t* vi;
  const float* s;
  int64_t d, n16;
  SC_INLINE(SC_TARGET_AVX512) V value(int64_t i, int c) const { return _mm512_loadu_si512(vi + i * 2 * d + 32 * c); }
  SC_INLINE(SC_TARGET_AVX512) V weight(int64_t h, int64_t i) const {
    return _mm512_set1_epi32(reinterpret_cast<const int32_t*>(s + h * n16)[i]);
  }
  SC_INLINE(SC_TARGET_AVX512) static __m512 madd(__m512 acc, V v, V p) {
    return _mm512_dpbf16_ps(acc, (__m512bh)v, (__m512bh)p);
  }
};

// One kv head's `g` query heads (q: g rows of d = 16 * DV, stride qs) against n cached positions
// (k, v: rows of d, stride ks); out: g rows, stride os.
template <typename T, int DV>
SC_AVX512_FN void attend_group(const T* q, int64_t qs, int64_t g, const T* k, const T* v,
                                                     int64_t ks, int64_t n, float scale, T* out, int64_t os,
                                                     std::vector<float>& scratch) {
  constexpr int64_t d = 16 * DV;
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
  weighted_sum<DV>(Fp32Values{vf, s, d, n16}, g, n, qf, out, os);
}

// The bf16 version (d = 32 * W): bf16 x bf16 products are exact in fp32, so the scores come from
// vdpbf16ps on the cached keys as they are (two products per lane and instruction, no conversion),
// and so does the weighted sum, on the softmax weights rounded to bf16 (as torch's flash kernel
// rounds them for its bf16 matmul; the denominator adds up the rounded weights) against pairs of
// value rows interleaved once per call. About half the instructions of the fp32 version.
template <int W>
SC_AVX512_FN void attend_group_bf16(const uint16_t* q, int64_t qs, int64_t g,
                                                          const uint16_t* k, const uint16_t* v, int64_t ks,
                                                          int64_t n, float scale, uint16_t* out, int64_t os,
                                                          std::vector<float>& scratch) {
  constexpr int64_t d = 32 * W;
  constexpr int DV = 2 * W;  // 16-lane fp32 output chunks per head
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
  weighted_sum<DV>(Bf16Pairs{vi, s, d, n16}, g, pairs, denom, out, os);
}

// Whether decode_attention may use its own loop (set_decode_attention: benchmarks and tests compare
// it with torch's kernel).
std::atomic<bool> g_own_attention{true};

}  // namespace

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
  const bool fast = g_own_attention.load(std::memory_order_relaxed) && active_isa() == ISA_AVX512 && (d == 16 || d == 32 || d == 64 || d == 128) &&
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

}  // namespace subcoder
