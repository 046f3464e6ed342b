// The `subcoder_sparse` operator library: every op's schema, and the ones small enough to live here.
// pruner/kernels/native.py compiles the files of this directory into one library and loads it.

#include <torch/library.h>

#include "isa.h"
#include "ops.h"

namespace subcoder {
namespace {

// 0: none, 1: AVX2+FMA, 2: AVX-512 BF16. `best_isa` is what the CPU supports, `get_isa` what is used.
int64_t best_isa() { return best_isa_here(); }
int64_t get_isa() { return active_isa(); }
int64_t set_isa(int64_t isa) { return set_active_isa(isa); }
// The zero values a packed `values` tensor must carry after its last kept one (isa.h).
int64_t pad_values() { return PAD_VALUES; }

}  // namespace
}  // namespace subcoder

TORCH_LIBRARY(subcoder_sparse, m) {
  using namespace subcoder;
  m.def("row_offsets(Tensor mask) -> Tensor", &row_offsets);
  m.def("sparse_linear(Tensor x, Tensor mask, Tensor values, Tensor row_offsets, int in_features, "
        "Tensor? bias, int mode) -> Tensor",
        &sparse_linear);
  m.def("sparse_linear_q8(Tensor x, Tensor mask, Tensor values, Tensor scales, Tensor row_offsets, "
        "int in_features, Tensor? bias, int mode) -> Tensor",
        &sparse_linear_q8);
  m.def("dense_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor", &dense_linear);
  m.def("dense_linear_q8(Tensor x, Tensor weight, Tensor scales, Tensor? bias) -> Tensor", &dense_linear_q8);
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
  m.def("pad_values() -> int", &pad_values);
}
