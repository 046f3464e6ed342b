// Greedy head: the argmax of the vocabulary projection from an int8 screen and an exact re-check.

#include <cmath>
#include <cstring>
#include <vector>

#include "common.h"
#include "isa.h"
#include "ops.h"
#include "packed_linear.h"
#include "packed_rows.h"

namespace subcoder {
namespace {

// The argmax of x @ W^T (the vocabulary projection) without reading all of W in bf16.
// Greedy decoding needs only the best row of the lm_head product, not its 150k logits, and on a
// 0.5B model that product reads 272 MB of bf16 weights per pass (40% of a decode step's bytes).
// An int8 copy of W (one fp32 scale per row) gives every logit to within a bound that is computed
// alongside it; only the rows whose upper bound reaches the best lower bound (a few dozen) are then
// recomputed exactly -- with PackedRows<Avx512>::dense, the very per-row arithmetic dense_linear uses --
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

bool has_vnni() {
  static const bool vnni = [] {
    __builtin_cpu_init();
    return best_isa_here() == ISA_AVX512 && __builtin_cpu_supports("avx512vnni");
  }();
  return vnni;
}

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
SC_VNNI_FN inline __m128i hsum4_epi32(__m256i h0, __m256i h1, __m256i h2, __m256i h3) {
  const __m256i t = _mm256_hadd_epi32(_mm256_hadd_epi32(h0, h1), _mm256_hadd_epi32(h2, h3));
  return _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}

SC_VNNI_FN inline __m256i fold_epi32(__m512i v) {
  return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

// NB input rows (u + b us) against one int8 weight row of `chunks` x 64 bytes: the dots of the
// stored (+128) bytes. Exact in int32: |.| <= 2^31 needs in <= 66,000 columns (checked).
template <int NB>
SC_VNNI_FN inline void int8_dots(const int8_t* q, int64_t chunks, const uint8_t* u,
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
SC_VNNI_FN void screen_pass1(const Screen& s, int64_t r0, int64_t r1, float* lb, float* top) {
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
SC_VNNI_FN void screen_pass2(const Screen& s, int64_t r0, int64_t r1, const float* thr,
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
        PackedRows<Avx512>::dense(1, s.w + row * s.in, s.in, s.x + b * s.xs, s.xs, &v);
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

}  // namespace

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

}  // namespace subcoder
