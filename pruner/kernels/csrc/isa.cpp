// Which instruction set the kernels run: the best this CPU has, unless a test or benchmark chose
// a lower one (set_isa).

#include <c10/util/Exception.h>

#include <atomic>

#include "isa.h"

namespace subcoder {
namespace {

int detect_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vbmi2") && __builtin_cpu_supports("avx512bf16"))
    return ISA_AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt"))
    return ISA_AVX2;
  return ISA_NONE;
}

// Function-local statics: other files' static initializers may ask before this file's have run.
std::atomic<int>& chosen() {
  static std::atomic<int> isa{best_isa_here()};
  return isa;
}

}  // namespace

int best_isa_here() {
  static const int best = detect_isa();
  return best;
}

int active_isa() { return chosen().load(std::memory_order_relaxed); }

int set_active_isa(int64_t isa) {
  TORCH_CHECK(isa >= ISA_NONE && isa <= best_isa_here(), "subcoder_sparse: ISA ", isa, " is not supported here");
  return chosen().exchange(static_cast<int>(isa));
}

int current_isa() {
  const int isa = active_isa();
  TORCH_CHECK(isa != ISA_NONE, "subcoder_sparse: this CPU has neither AVX2+FMA nor AVX-512 BF16");
  return isa;
}

}  // namespace subcoder
