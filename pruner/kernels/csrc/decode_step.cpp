// The decode step's fused pieces (pruner/kernels/decode_step.py): RMSNorm, the rotary embedding and
// the whole layer stack in one call.

#include <ATen/core/grad_mode.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "common.h"
#include "ops.h"

namespace subcoder {

// Decode-step helpers (pruner/kernels/decode_step.py): one fused call where the model's code makes
// 6-8 tiny tensor operations, each rounding exactly where the model's own code rounds, so results
// match the eager forward. A decoded token of a 24-layer model makes ~800 such operations, ~2 us
// of dispatch each.

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


// A whole decode step for one token (pruner/kernels/decode_step.py): every decoder layer of a
// Llama-family model in one call. The same ATen operators the lean Python step calls, in the same
// order with the same dtypes, so the results are bit-identical to it; what goes away is the Python
// interpreter between ~15 tiny operators per layer (measured: ~11 ms of a ~30 ms step for
// Qwen2.5-Coder-0.5B, against ~1.5 ms of dispatch from C++).
//
// params: per layer, 2 norm weights then 7 linears (q, k, v, o, gate, up, down) of 4 tensors each
//         (weight-or-mask, values-or-empty, row offsets-or-empty, int8 scales-or-empty) plus a
//         bias-or-empty: 2 + 7 * 5.
// kinds:  per linear, 0 = packed sparse (SparseLinear), 1 = dense bf16 row kernel
//         (DenseBF16Linear), 2 = torch's linear (nn.Linear), 3 = packed sparse with int8 values,
//         4 = dense int8 row kernel (DenseInt8Linear).
// k_cache/v_cache: per layer, the KV buffers (1, kv_heads, capacity, d); the new token's keys and
//         values are written at `pos` and attention reads positions [0, pos].
// eps: per layer, the two RMSNorm epsilons.

namespace {

constexpr int64_t LINEAR_TENSORS = 5;
constexpr int64_t STEP_TENSORS_PER_LAYER = 2 + 7 * LINEAR_TENSORS;

at::Tensor step_linear(const at::Tensor& x, at::TensorList p, int64_t kind) {
  const at::Tensor& a = p[0];
  const at::Tensor& b = p[1];
  const at::Tensor& roff = p[2];
  const at::Tensor& scales = p[3];
  const at::Tensor& bias = p[4];
  const c10::optional<at::Tensor> ob = bias.numel() ? c10::optional<at::Tensor>(bias) : c10::nullopt;
  if (kind == 0) return sparse_linear(x, a, b, roff, x.size(1), ob, 0);
  if (kind == 1) return dense_linear(x, a, ob).to(x.scalar_type());
  if (kind == 3) return sparse_linear_q8(x, a, b, scales, roff, x.size(1), ob, 0);
  if (kind == 4) return dense_linear_q8(x, a, scales, ob);
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

}  // namespace

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
    const at::Tensor q = rope_tokens(step_linear(h, p.slice(2, LINEAR_TENSORS), kd[0]), cos_f, sin_f, d).view({1, T, heads, d}).transpose(1, 2);
    const at::Tensor k = rope_tokens(step_linear(h, p.slice(7, LINEAR_TENSORS), kd[1]), cos_f, sin_f, d).view({1, T, kv_heads, d}).transpose(1, 2);
    const at::Tensor v = step_linear(h, p.slice(12, LINEAR_TENSORS), kd[2]).view({1, T, kv_heads, d}).transpose(1, 2);
    kb.narrow(2, pos, T).copy_(k);
    vb.narrow(2, pos, T).copy_(v);
    const at::Tensor attn = decode_attention(q, kb, vb, pos + 1, scaling);
    x = x + step_linear(attn, p.slice(17, LINEAR_TENSORS), kd[3]);
    h = rms_norm(x, p[1], eps[2 * i + 1]);
    at::Tensor gate = step_linear(h, p.slice(22, LINEAR_TENSORS), kd[4]);
    at::Tensor up = step_linear(h, p.slice(27, LINEAR_TENSORS), kd[5]);
    x = x + step_linear(at::silu(gate) * up, p.slice(32, LINEAR_TENSORS), kd[6]);
  }
  return x;
}


}  // namespace subcoder
