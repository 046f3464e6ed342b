// The BLAS product of a prefill batch, in the orientation the CPU's BLAS runs fastest.
//
// torch's bf16 matmul goes to oneDNN. On a CPU with AMX, oneDNN loads the left operand's tiles
// straight from row-major memory but must first reorder the right operand into its pair-interleaved
// layout. Asked for x @ W^T, it reorders the whole weight on every call: for a prefill of a few
// dozen tokens (what each keystroke of typing re-reads: the suffix of a fill-in-the-middle prompt)
// that pass over the weight costs about as much as the product. Asked for W @ x^T, it reorders only
// the small input. Measured on a 2-core Xeon with AMX, bf16 (benchmarks/prefill.py, docs/PERFORMANCE.md
// "Prefill GEMM orientation"), the transpose back included: 1.30-1.59x for the 1.5B's large dense
// matrices at 16-64 tokens (8960 x 1536 at 64 tokens: 1.69 -> 1.18 ms), 1.16-1.35x for packed and int8
// layers. From a few hundred tokens on (a cold prompt) the product outweighs the reorder and the
// transpose costs more than it saves (512 tokens, forced on: 6.8 -> 7.8 ms), so only batches up to
// WEIGHT_FIRST_MAX_BATCH take it. Without AMX the orientation was never measured, so the default stays
// x @ W^T there (set_gemm_weight_first switches it for benchmarks and tests).

#include "gemm.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <cpuid.h>

#include <algorithm>
#include <atomic>

#include "common.h"

namespace subcoder {
namespace {

constexpr int64_t WEIGHT_FIRST_MAX_BATCH = 128;

// AMX-BF16 reported by the CPU (CPUID.(7,0):EDX[22]) and its tile state enabled by the OS
// (XCR0 bits 17 and 18).
bool amx_bf16_here() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 22))) return false;
  unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
  if (!__get_cpuid(1, &a1, &b1, &c1, &d1) || !(c1 & (1u << 27))) return false;  // OSXSAVE
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  const unsigned tiles = (1u << 17) | (1u << 18);
  return (lo & tiles) == tiles;
}

std::atomic<bool>& weight_first_flag() {
  static std::atomic<bool> on{amx_bf16_here()};
  return on;
}

// dst (cols, rows) with row stride ds <- src (rows, cols) contiguous, element type E, in tiles that
// keep both sides' lines in L1; threads split the source rows.
template <class E>
void transpose_into(const E* src, int64_t rows, int64_t cols, E* dst, int64_t ds) {
  constexpr int64_t T = 32;
  const int64_t nt = n_threads_for(rows * cols * 4);
  const int64_t blocks = divup(rows, T);
  at::parallel_for(0, blocks, std::max<int64_t>(1, divup(blocks, nt)), [&](int64_t b0, int64_t b1) {
    for (int64_t rb = b0 * T; rb < std::min(rows, b1 * T); rb += T) {
      const int64_t re = std::min(rows, rb + T);
      for (int64_t cb = 0; cb < cols; cb += T) {
        const int64_t ce = std::min(cols, cb + T);
        for (int64_t c = cb; c < ce; ++c) {
          E* d = dst + c * ds;
          for (int64_t r = rb; r < re; ++r) d[r] = src[r * cols + c];
        }
      }
    }
  });
}

}  // namespace

bool gemm_weight_first() { return weight_first_flag().load(std::memory_order_relaxed); }

int64_t set_gemm_weight_first(int64_t on) { return weight_first_flag().exchange(on != 0) ? 1 : 0; }

void gemm_xwt_into(const at::Tensor& x, const at::Tensor& w, at::Tensor& y) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && y.dim() == 2 && x.size(1) == w.size(1) && y.size(0) == x.size(0) &&
                  y.size(1) == w.size(0) && x.scalar_type() == w.scalar_type() && y.scalar_type() == x.scalar_type(),
              "subcoder_sparse: gemm shapes or dtypes disagree");
  if (!gemm_weight_first() || x.size(0) > WEIGHT_FIRST_MAX_BATCH || x.scalar_type() != at::kBFloat16 ||
      y.stride(1) != 1) {
    at::mm_out(y, x, w.t());
    return;
  }
  const at::Tensor yt = at::mm(w, x.t());  // (n, B), contiguous
  const int64_t n = yt.size(0), B = yt.size(1);
  transpose_into(static_cast<const uint16_t*>(yt.data_ptr()), n, B, static_cast<uint16_t*>(y.data_ptr()),
                 y.stride(0));
}

}  // namespace subcoder
