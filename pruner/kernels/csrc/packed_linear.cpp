// The linear layers: packed sparse (bitmask + bf16 values, or + int8 values and per-row fp32
// scales) and dense (bf16, or int8 with per-row scales), in batches.
//
// Rows are split between threads (at::parallel_for) so that each gets about the same number of kept
// values. Batches up to the GEMM threshold go through the row kernels (packed_rows.h) in tiles of
// up to 4 input rows, on the ISA chosen at run time; larger batches (prefill) make the weight dense
// (whole, or in row chunks for large layers) and call the BLAS matmul instead (gemm.h).

#include <atomic>
#include <type_traits>
#include <cstring>
#include <vector>

#include "common.h"
#include "gemm.h"
#include "ops.h"
#include "packed_linear.h"
#include "packed_rows.h"
#include "q8_vnni.h"

namespace subcoder {
namespace {

// Threads to use for `work` units, and the row ranges: thread t gets rows [bounds[t], bounds[t+1])
// with about the same cost, cost(r) = roff[r] + row_cost * r (a row also costs its mask words).
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

void check_packed(const at::Tensor& mask, const at::Tensor& values, const at::Tensor& roff, int64_t in,
                  bool q8 = false) {
  TORCH_CHECK(mask.dim() == 2 && mask.scalar_type() == at::kInt && mask.is_contiguous() && mask.is_cpu(),
              "subcoder_sparse: mask must be a contiguous CPU int32 tensor (out, ceil(in/32))");
  TORCH_CHECK(mask.size(1) == divup(in, 32), "subcoder_sparse: mask has ", mask.size(1),
              " words per row, in_features ", in, " needs ", divup(in, 32));
  if (q8) {
    TORCH_CHECK(values.scalar_type() == at::kChar && values.dim() == 1 && values.is_contiguous() && values.is_cpu(),
                "subcoder_sparse: int8 values must be a contiguous 1-D CPU int8 tensor");
  } else {
    TORCH_CHECK((values.scalar_type() == at::kBFloat16 || values.scalar_type() == at::kShort) &&
                    values.dim() == 1 && values.is_contiguous() && values.is_cpu(),
                "subcoder_sparse: values must be a contiguous 1-D CPU bf16 (or int16) tensor");
  }
  TORCH_CHECK(roff.scalar_type() == at::kLong && roff.dim() == 1 && roff.numel() == mask.size(0) + 1 &&
                  roff.is_contiguous(),
              "subcoder_sparse: row_offsets must be int64 (out + 1,)");
  const int64_t nnz = roff.data_ptr<int64_t>()[mask.size(0)];
  const int64_t pad = q8 ? 2 * PAD_VALUES : PAD_VALUES;  // 32 bytes either way (isa.h)
  TORCH_CHECK(values.numel() >= nnz + pad, "subcoder_sparse: values hold ", values.numel(),
              " entries, the mask needs ", nnz, " plus ", pad, " of padding");
}

// The per-row scales of int8 weights: fp32 (out,), contiguous on the CPU, or their bits as int32
// (the layers keep them so, out of reach of model.to(dtype)). Returns them as fp32 (a view).
at::Tensor checked_scales(const at::Tensor& scales, int64_t rows) {
  TORCH_CHECK((scales.scalar_type() == at::kFloat || scales.scalar_type() == at::kInt) && scales.dim() == 1 &&
                  scales.numel() == rows && scales.is_contiguous() && scales.is_cpu(),
              "subcoder_sparse: scales must be a contiguous CPU fp32 (or int32) tensor of ", rows,
              " entries (one per row)");
  return scales.scalar_type() == at::kFloat ? scales : scales.view(at::kFloat);
}

// Writes results (times the row's scale, plus bias) straight into the output tensor, in its dtype.
struct OutputWriter {
  void* data;
  bool bf16;
  int64_t stride;  // = out_features
  const float* bias;          // fp32 bias, or
  const uint16_t* bias_bf16;  // bf16 bias, read in place (no per-call copy)
  const float* scale = nullptr;  // int8 weights: the row's scale, applied before the bias
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
    if (scale) v *= scale[r];
    if (bias) v += bias[r];
    else if (bias_bf16) v += to_f32(bias_bf16[r]);
    if (bf16) reinterpret_cast<c10::BFloat16*>(data)[b * stride + r] = c10::BFloat16(v);
    else reinterpret_cast<float*>(data)[b * stride + r] = v;
  }
};

// Batch rows handled by the tiled kernels; larger batches go through expand + matmul.
std::atomic<int64_t> g_gemm_min_batch{16};

// Output row r for every input row, in tiles of 4 and one tile of the rest: f(nb, b0, results).
template <typename RowFn>
inline void run_tiles(int64_t B, int64_t r, const OutputWriter& w, const RowFn& f) {
  float tmp[4];
  int64_t b0 = 0;
  for (; b0 + 4 <= B; b0 += 4) {
    f(4, b0, tmp);
    for (int i = 0; i < 4; ++i) w.put(b0 + i, r, tmp[i]);
  }
  const int64_t rem = B - b0;
  if (rem > 0) f(static_cast<int>(rem), b0, tmp);
  for (int64_t i = 0; i < rem; ++i) w.put(b0 + i, r, tmp[i]);
}

// The input of the VNNI route (q8_vnni.h): int16 rows padded to 32 * nwords columns and their group
// scales, in per-thread storage reused across calls (as padded_input's).
struct QuantisedInput {
  const int16_t* data;
  int64_t stride;  // int16 columns per row
  const float* scales;
  int64_t groups;  // scales per row
};

QuantisedInput quantised_input(const at::Tensor& x_in, int64_t in) {
  thread_local std::vector<int16_t> q;
  thread_local std::vector<float> s;
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), padded = divup(in, 32) * 32, groups = divup(padded, Q16_GROUP);
  q.resize(static_cast<size_t>(B * padded) + 32);
  s.resize(static_cast<size_t>(B * groups));
  quantise_input_q16(x.data_ptr(), x.scalar_type() == at::kBFloat16, B, in, padded, q.data(), s.data());
  return {q.data(), padded, s.data(), groups};
}

// Decode batches of int8 weights on the VNNI route: packed (mask, values) when `mask` is given, else
// dense rows of `in` int8 values from `dense`.
void q8_vnni_tiled(const at::Tensor& x, const uint32_t* mp, int64_t nwords, const int8_t* vp, const int64_t* rp,
                   const int8_t* dense, int64_t O, int64_t in, const OutputWriter& ow) {
  const int64_t B = x.size(0);
  const QuantisedInput xq = quantised_input(x, in);
  const int64_t nt = n_threads_for(O * divup(in, 32) * 32 * B);
  const int64_t word_cost = 16;
  parallel_rows(O, mp ? rp : nullptr, mp ? nwords * word_cost : 1, nt, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      run_tiles(B, r, ow, [&](int nb, int64_t b, float* o) {
        const int16_t* xb = xq.data + b * xq.stride;
        const float* sb = xq.scales + b * xq.groups;
        if (mp)
          q8_sparse_row_vnni(nb, mp + r * nwords, nwords, vp + rp[r], xb, xq.stride, sb, xq.groups, o);
        else
          q8_dense_row_vnni(nb, dense + r * in, in, xb, xq.stride, sb, xq.groups, o);
      });
    }
  });
}

template <class T>
void sparse_matmul_tiled(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& values,
                         const at::Tensor& roff, int64_t in, int isa, const OutputWriter& ow) {
  const int64_t B = x.size(0), O = mask.size(0), nwords = mask.size(1);
  const uint32_t* mp = reinterpret_cast<const uint32_t*>(mask.data_ptr<int32_t>());
  const T* vp = static_cast<const T*>(values.data_ptr());
  const int64_t* rp = roff.data_ptr<int64_t>();
  if constexpr (std::is_same_v<T, int8_t>) {
    if (q8_vnni_active(Q8_VNNI_PACKED)) return q8_vnni_tiled(x, mp, nwords, vp, rp, nullptr, O, in, ow);
  }
  const PaddedInput xp = padded_input(x, in, isa);
  const int64_t xs = xp.stride;
  const int64_t nt = n_threads_for(O * nwords * 32 * B);
  const int64_t word_cost = 16;  // a mask word costs about as much as 16 kept values
  dispatch_isa(isa, [&](auto tag) {
    using I = decltype(tag);
    const auto* xq = static_cast<const typename I::In*>(xp.data);
    parallel_rows(O, rp, nwords * word_cost, nt, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const uint32_t* mw = mp + r * nwords;
        const T* v = vp + rp[r];
        run_tiles(B, r, ow, [&](int nb, int64_t b, float* o) {
          PackedRows<I, T>::sparse(nb, mw, nwords, v, xq + b * xs, xs, o);
        });
      }
    });
  });
}

// Expand rows [r0, r1) into `dst` (rows x ld, fp32 or bf16; int8 values unscaled), threads split the rows.
template <class T>
void expand_rows(const uint32_t* mp, int64_t nwords, const T* vp, const int64_t* rp, int64_t r0,
                 int64_t r1, at::Tensor& dst, int isa) {
  const int64_t ld = dst.size(1);
  const int64_t nt = n_threads_for((r1 - r0) * nwords * 32 / 4);  // expansion is ~4x cheaper per column
  const bool bf16 = dst.scalar_type() == at::kBFloat16;
  auto body = [&](int64_t a, int64_t b) {
    if (bf16) {
      expand_rows_bf16_avx512(mp, nwords, vp, rp, r0 + a, r0 + b,
                              reinterpret_cast<uint16_t*>(dst.data_ptr()) + a * ld, ld);
      return;
    }
    dispatch_isa(isa, [&](auto tag) {
      PackedRows<decltype(tag), T>::expand_f32(mp, nwords, vp, rp, r0 + a, r0 + b, dst.data_ptr<float>() + a * ld, ld);
    });
  };
  parallel_rows(r1 - r0, nullptr, 1, nt, body);
}

// Prefill: the weight made dense in the compute dtype (oneDNN's bf16 GEMM where the CPU multiplies
// bf16 natively, fp32 elsewhere) and multiplied by the BLAS (gemm.h). Returns (B, O) in the compute
// dtype. A layer up to WHOLE_LAYER_BYTES dense is made whole into a buffer reused across calls and
// layers (no fresh pages per call) and multiplied in one call: for the few dozen tokens of a typed
// prompt's suffix, the BLAS's fixed cost per call is no longer hidden by the work, and making the
// 1.5B's 27.5 MB matrices whole instead of in 8 MiB chunks took its 30% int8 sub-model's re-prefill of
// 62 tokens from 474 to 402 ms (docs/PERFORMANCE.md, "Prefill GEMM orientation"). Larger layers
// (7B-class) go in CHUNK_BYTES row chunks, each product written straight into its columns of the
// output. `fill(r0, r1, w)` writes rows [r0, r1) of the weight into w.
constexpr int64_t WHOLE_LAYER_BYTES = int64_t(64) << 20;
constexpr int64_t CHUNK_BYTES = int64_t(8) << 20;

template <class Fill>
at::Tensor dense_gemm_by_rows(const at::Tensor& x, int64_t O, int64_t in, int64_t ld, int isa, const Fill& fill) {
  const int64_t B = x.size(0);
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
  for (int64_t r0 = 0; r0 < O; r0 += chunk) {
    const int64_t n = std::min(chunk, O - r0);
    at::Tensor w = wbuf.narrow(0, 0, n * ld).view({n, ld});
    fill(r0, r0 + n, w);
    at::Tensor cols = n == O ? y : y.narrow(1, r0, n);
    gemm_xwt_into(xc, w.narrow(1, 0, in), cols);
  }
  return y;
}

// A packed weight's prefill: its rows expanded (int8 values as their integers, exact in bf16; the
// caller scales the product's columns after).
template <class T>
at::Tensor sparse_matmul_gemm(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& values,
                              const at::Tensor& roff, int64_t in, int isa) {
  const int64_t nwords = mask.size(1);
  const uint32_t* mp = reinterpret_cast<const uint32_t*>(mask.data_ptr<int32_t>());
  const T* vp = static_cast<const T*>(values.data_ptr());
  const int64_t* rp = roff.data_ptr<int64_t>();
  return dense_gemm_by_rows(x, mask.size(0), in, nwords * 32, isa, [&](int64_t r0, int64_t r1, at::Tensor& w) {
    expand_rows(mp, nwords, vp, rp, r0, r1, w, isa);
  });
}

}  // namespace

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

namespace {

// x @ W^T (+ bias) for a packed W; `scales` defined: int8 values and their per-row scales.
template <class T>
at::Tensor packed_linear_2d(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& values,
                            const at::Tensor& scales, const at::Tensor& roff, int64_t in,
                            const c10::optional<at::Tensor>& bias, int64_t mode) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == in && x.is_cpu(), "subcoder_sparse: input must be (B, ", in, ")");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat,
              "subcoder_sparse: input must be bf16 or fp32");
  const int isa = current_isa();
  const int64_t B = x.size(0), O = mask.size(0);
  if (B == 0) return at::empty({0, O}, x.options());
  const bool gemm = mode == 2 || (mode == 0 && B >= g_gemm_min_batch.load());
  if (gemm) {
    at::Tensor y = sparse_matmul_gemm<T>(x, mask, values, roff, in, isa);
    if (scales.defined()) y = y.to(at::kFloat).mul_(scales);  // fp32, so the scale adds no bf16 rounding
    if (bias.has_value() && bias->defined()) y.add_(bias->to(y.scalar_type()));
    return y.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type());
  }
  at::Tensor y = at::empty({B, O}, x.options());
  OutputWriter ow(y, bias);
  if (scales.defined()) ow.scale = scales.data_ptr<float>();
  sparse_matmul_tiled<T>(x, mask, values, roff, in, isa, ow);
  return y;
}

// Dense int8 rows of prefill batches: the weight converted to the compute dtype (integers, exact in
// bf16) and multiplied by the BLAS like a packed weight; the caller scales the columns in fp32.
at::Tensor dense_q8_gemm(const at::Tensor& x, const at::Tensor& weight, int isa) {
  const int64_t in = weight.size(1);
  return dense_gemm_by_rows(x, weight.size(0), in, in, isa, [&](int64_t r0, int64_t r1, at::Tensor& w) {
    w.copy_(weight.narrow(0, r0, r1 - r0));
  });
}

at::Tensor sparse_linear_2d(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& values,
                            const at::Tensor& roff, int64_t in, const c10::optional<at::Tensor>& bias,
                            int64_t mode) {
  check_packed(mask, values, roff, in);
  return packed_linear_2d<uint16_t>(x, mask, values, at::Tensor(), roff, in, bias, mode);
}

at::Tensor sparse_linear_q8_2d(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& values,
                               const at::Tensor& scales, const at::Tensor& roff, int64_t in,
                               const c10::optional<at::Tensor>& bias, int64_t mode) {
  check_packed(mask, values, roff, in, /*q8=*/true);
  return packed_linear_2d<int8_t>(x, mask, values, checked_scales(scales, mask.size(0)), roff, in, bias, mode);
}

// Dense W (out, in) of element type T (bf16 bits, or int8 with `scales`) with the row kernels.
template <class T>
at::Tensor dense_rows_2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales,
                         const c10::optional<at::Tensor>& bias) {
  const int64_t O = weight.size(0), in = weight.size(1);
  TORCH_CHECK(x.dim() == 2 && x.size(1) == in, "subcoder_sparse: input must be (B, ", in, ")");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat,
              "subcoder_sparse: input must be bf16 or fp32");
  const int isa = current_isa();
  const int64_t B = x.size(0);
  at::Tensor y = at::empty({B, O}, x.options());
  if (B == 0) return y;
  OutputWriter ow(y, bias);
  if (scales.defined()) ow.scale = scales.data_ptr<float>();
  if constexpr (std::is_same_v<T, int8_t>) {
    if (q8_vnni_active(Q8_VNNI_DENSE))
      return q8_vnni_tiled(x, nullptr, 0, nullptr, nullptr, static_cast<const int8_t*>(weight.data_ptr()), O, in, ow),
             y;
  }
  const PaddedInput xp = padded_input(x, in, isa);
  const int64_t xs = xp.stride;
  const T* wp = static_cast<const T*>(weight.data_ptr());
  const int64_t nt = n_threads_for(O * in * B);
  dispatch_isa(isa, [&](auto tag) {
    using I = decltype(tag);
    const auto* xq = static_cast<const typename I::In*>(xp.data);
    parallel_rows(O, nullptr, 1, nt, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* w = wp + r * in;
        run_tiles(B, r, ow, [&](int nb, int64_t b, float* o) { PackedRows<I, T>::dense(nb, w, in, xq + b * xs, xs, o); });
      }
    });
  });
  return y;
}

void check_dense_bf16(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kBFloat16 && weight.is_contiguous() &&
                  weight.is_cpu(),
              "subcoder_sparse: dense weight must be a contiguous CPU bf16 (out, in) tensor");
}

at::Tensor dense_linear_2d(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  check_dense_bf16(weight);
  return dense_rows_2d<uint16_t>(x, weight, at::Tensor(), bias);
}

at::Tensor dense_linear_q8_2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales,
                              const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kChar && weight.is_contiguous() && weight.is_cpu(),
              "subcoder_sparse: dense int8 weight must be a contiguous CPU int8 (out, in) tensor");
  const at::Tensor s = checked_scales(scales, weight.size(0));
  TORCH_CHECK(x.dim() == 2 && x.size(1) == weight.size(1), "subcoder_sparse: input must be (B, ", weight.size(1), ")");
  if (x.size(0) >= g_gemm_min_batch.load()) {
    at::Tensor y = dense_q8_gemm(x, weight, current_isa()).to(at::kFloat).mul_(s);  // fp32: no bf16 rounding of the scale
    if (bias.has_value() && bias->defined()) y.add_(bias->to(at::kFloat));
    return y.to(x.scalar_type());
  }
  return dense_rows_2d<int8_t>(x, weight, s, bias);
}

// Dense bf16 W (out, in) for prefill batches: the BLAS in the orientation gemm.h chooses; the result
// in bf16 (the BLAS's rounding), plus bias, in x's dtype.
at::Tensor dense_gemm_2d(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  check_dense_bf16(weight);
  TORCH_CHECK(x.dim() == 2 && x.size(1) == weight.size(1) && x.is_cpu(), "subcoder_sparse: input must be (B, ",
              weight.size(1), ")");
  const at::Tensor xc = x.to(at::kBFloat16).contiguous();
  at::Tensor y = at::empty({x.size(0), weight.size(0)}, xc.options());
  if (x.size(0) > 0) gemm_xwt_into(xc, weight, y);
  if (bias.has_value() && bias->defined()) y.add_(bias->to(at::kBFloat16));
  return y.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type());
}

// A linear op on x (..., in) through its 2-D form f on x as (B, in), the result viewed as (..., out).
template <class F>
at::Tensor over_rows(const at::Tensor& x, int64_t in, const F& f) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in, "subcoder_sparse: input must be (..., ", in, ")");
  if (x.dim() == 2) return f(x);
  const at::Tensor y = f(x.reshape({-1, in}));
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = y.size(1);
  return y.view(shape);
}

}  // namespace

at::Tensor sparse_linear(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& values,
                         const at::Tensor& roff, int64_t in, const c10::optional<at::Tensor>& bias,
                         int64_t mode) {
  return over_rows(x, in,
                   [&](const at::Tensor& x2) { return sparse_linear_2d(x2, mask, values, roff, in, bias, mode); });
}

at::Tensor sparse_linear_q8(const at::Tensor& x, const at::Tensor& mask, const at::Tensor& values,
                            const at::Tensor& scales, const at::Tensor& roff, int64_t in,
                            const c10::optional<at::Tensor>& bias, int64_t mode) {
  return over_rows(x, in, [&](const at::Tensor& x2) {
    return sparse_linear_q8_2d(x2, mask, values, scales, roff, in, bias, mode);
  });
}

// The 2-D forms check the weight (size(-1) exists for a weight of any dimension but 0).
at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  return over_rows(x, weight.size(-1), [&](const at::Tensor& x2) { return dense_linear_2d(x2, weight, bias); });
}

at::Tensor dense_gemm(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  return over_rows(x, weight.size(-1), [&](const at::Tensor& x2) { return dense_gemm_2d(x2, weight, bias); });
}

at::Tensor dense_linear_q8(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales,
                           const c10::optional<at::Tensor>& bias) {
  return over_rows(x, weight.size(-1),
                   [&](const at::Tensor& x2) { return dense_linear_q8_2d(x2, weight, scales, bias); });
}

at::Tensor expand(const at::Tensor& mask, const at::Tensor& values, const at::Tensor& roff, int64_t in,
                  int64_t r0, int64_t r1, at::ScalarType dtype) {
  const bool q8 = values.scalar_type() == at::kChar;
  check_packed(mask, values, roff, in, q8);
  TORCH_CHECK(0 <= r0 && r0 <= r1 && r1 <= mask.size(0), "subcoder_sparse: bad row range");
  const int isa = current_isa();
  const int64_t ld = mask.size(1) * 32;
  const bool native_bf16 = dtype == at::kBFloat16 && isa == ISA_AVX512;
  at::Tensor buf = at::empty({r1 - r0, ld}, mask.options().dtype(native_bf16 ? at::kBFloat16 : at::kFloat));
  const uint32_t* mp = reinterpret_cast<const uint32_t*>(mask.data_ptr<int32_t>());
  if (q8)
    expand_rows(mp, mask.size(1), static_cast<const int8_t*>(values.data_ptr()), roff.data_ptr<int64_t>(), r0, r1,
                buf, isa);
  else
    expand_rows(mp, mask.size(1), static_cast<const uint16_t*>(values.data_ptr()), roff.data_ptr<int64_t>(), r0,
                r1, buf, isa);
  at::Tensor out = buf.narrow(1, 0, in);
  return out.to(dtype).contiguous();
}

int64_t set_gemm_min_batch(int64_t b) { return g_gemm_min_batch.exchange(std::max<int64_t>(1, b)); }

}  // namespace subcoder
