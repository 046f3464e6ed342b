// The `subcoder_sparse` operator library: every op's schema, and the ones small enough to live here.
// pruner/kernels/native.py compiles the files of this directory into one library and loads it.

#include <torch/library.h>

#include "gemm.h"
#include "isa.h"
#include "ops.h"
#include "q8_vnni.h"

namespace subcoder {
namespace {

// 0: none, 1: AVX2+FMA, 2: AVX-512 BF16. `best_isa` is what the CPU supports, `get_isa` what is used.
int64_t best_isa() { return best_isa_here(); }
int64_t get_isa() { return active_isa(); }
int64_t set_isa(int64_t isa) { return set_active_isa(isa); }
// The zero values a packed `values` tensor must carry after its last kept one (isa.h).
int64_t pad_values() { return PAD_VALUES; }
// Which int8 layers take the VNNI route at decode batches now (q8_vnni.h: 1 dense, 2 packed).
int64_t q8_vnni() {
  return (q8_vnni_active(Q8_VNNI_DENSE) ? Q8_VNNI_DENSE : 0) | (q8_vnni_active(Q8_VNNI_PACKED) ? Q8_VNNI_PACKED : 0);
}
int64_t q8_vnni_available() { return q8_vnni_here() ? 1 : 0; }  // the CPU has it
int64_t q8_group() { return Q16_GROUP; }

}  // namespace
}  // namespace subcoder

// One op: the C++ function subcoder::NAME under the same name, with the rest of its schema (the
// name is written once, so the op and the function it calls cannot drift apart).
#define SC_OP(NAME, SCHEMA) m.def(#NAME SCHEMA, &subcoder::NAME)

TORCH_LIBRARY(subcoder_sparse, m) {
  SC_OP(row_offsets, "(Tensor mask) -> Tensor");
  SC_OP(sparse_linear, "(Tensor x, Tensor mask, Tensor values, Tensor row_offsets, int in_features, Tensor? bias, "
                       "int mode) -> Tensor");
  SC_OP(sparse_linear_q8, "(Tensor x, Tensor mask, Tensor values, Tensor scales, Tensor row_offsets, "
                          "int in_features, Tensor? bias, int mode) -> Tensor");
  SC_OP(dense_linear, "(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  SC_OP(dense_gemm, "(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  SC_OP(dense_linear_q8, "(Tensor x, Tensor weight, Tensor scales, Tensor? bias) -> Tensor");
  SC_OP(expand, "(Tensor mask, Tensor values, Tensor row_offsets, int in_features, int r0, int r1, "
                "ScalarType dtype) -> Tensor");
  SC_OP(rms_norm, "(Tensor x, Tensor weight, float eps) -> Tensor");
  SC_OP(rope, "(Tensor t, Tensor cos, Tensor sin) -> Tensor");
  SC_OP(decode_attention, "(Tensor q, Tensor keys, Tensor values, int first_len, float scaling) -> Tensor");
  SC_OP(set_decode_attention, "(int own) -> int");
  SC_OP(decode_layers, "(Tensor x, Tensor[] params, int[] kinds, Tensor[] k_cache, Tensor[] v_cache, int pos, "
                       "Tensor cos, Tensor sin, int heads, int kv_heads, float[] eps, float scaling) -> Tensor");
  SC_OP(greedy_head, "(Tensor x, Tensor weight, Tensor? bias, Tensor q, Tensor scale, Tensor qsum, Tensor qabs) "
                     "-> Tensor");
  SC_OP(head_screen_available, "() -> int");
  SC_OP(best_isa, "() -> int");
  SC_OP(get_isa, "() -> int");
  SC_OP(set_isa, "(int isa) -> int");
  SC_OP(set_gemm_min_batch, "(int batch) -> int");
  SC_OP(set_gemm_weight_first, "(int on) -> int");
  SC_OP(pad_values, "() -> int");
  SC_OP(q8_vnni, "() -> int");
  SC_OP(q8_vnni_available, "() -> int");
  SC_OP(set_q8_vnni, "(int routes) -> int");
  SC_OP(q8_group, "() -> int");
}
