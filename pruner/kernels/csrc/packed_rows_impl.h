// The row kernels, written once for every instruction set (see packed_rows.h for what they take).
//
// Include only inside a `#pragma GCC target` region of the ISA being instantiated (isa.h says
// why), after every other header: everything defined here must depend on the ISA type, so that no
// out-of-line copy compiled for one ISA can stand in for another's (templates over I only; no
// standard-library templates, which could be instantiated here with this region's target).
//
// The accumulation order is each ISA's own and fixed (results are compared bit for bit): weight
// vector j of word u within a step goes to accumulator (u * kWordVecs + j) % NA -- AVX2 gives each
// 8-column quarter of a word its own chain, AVX-512 alternates whole words between two -- and the
// chains are summed (0 + 1) + (2 + 3) at the end.

namespace subcoder {
namespace rows {

template <class I, class T, int NB>
inline void sparse_row(const uint32_t* mw, int64_t nwords, const T* v, const typename I::In* x, int64_t xs,
                       float* out) {
  constexpr int NA = I::accumulators(NB);
  constexpr int G = I::kWordsPerStep, V = I::kWordVecs, C = I::kVecCols;
  typename I::Acc acc[NB][NA];
  for (int b = 0; b < NB; ++b)
    for (int a = 0; a < NA; ++a) acc[b][a] = I::zero();
  int64_t k = 0;
  for (; k + G <= nwords; k += G) {
    uint32_t m[G];
    uint32_t any = 0;
    for (int u = 0; u < G; ++u) any |= m[u] = mw[k + u];
    if ((k & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(v) + PREFETCH_VALUES * 2, _MM_HINT_T0);
    if (I::kSkipEmptyWords && any == 0) continue;
    typename I::W w[G][V];
    for (int u = 0; u < G; ++u) {
      I::expand_word(v, m[u], w[u]);
      v += I::popcount(m[u]);
    }
    for (int b = 0; b < NB; ++b) {
      const typename I::In* xb = x + b * xs + 32 * k;
      for (int u = 0; u < G; ++u)
        for (int j = 0; j < V; ++j) {
          const int a = (u * V + j) % NA;
          acc[b][a] = I::madd(acc[b][a], w[u][j], xb + 32 * u + C * j);
        }
    }
  }
  for (; k < nwords; ++k) {  // words after the last whole step (AVX-512: an odd last word)
    typename I::W w[V];
    I::expand_word(v, mw[k], w);
    v += I::popcount(mw[k]);
    for (int b = 0; b < NB; ++b)
      for (int j = 0; j < V; ++j) acc[b][j % NA] = I::madd(acc[b][j % NA], w[j], x + b * xs + 32 * k + C * j);
  }
  for (int b = 0; b < NB; ++b) {
    typename I::Acc s = I::add(acc[b][0], acc[b][1]);
    if constexpr (NA == 4) s = I::add(s, I::add(acc[b][2 % NA], acc[b][3 % NA]));
    out[b] = I::hsum(s);
  }
}

template <class I, class T, int NB>
inline void dense_row(const T* w, int64_t in, const typename I::In* x, int64_t xs, float* out) {
  constexpr int64_t C = I::kVecCols;
  typename I::Acc acc[NB][2];
  for (int b = 0; b < NB; ++b) acc[b][0] = acc[b][1] = I::zero();
  int64_t c = 0;
  for (; c + 2 * C <= in; c += 2 * C) {
    const typename I::W w0 = I::load_dense(w + c);
    const typename I::W w1 = I::load_dense(w + c + C);
    for (int b = 0; b < NB; ++b) {
      acc[b][0] = I::madd(acc[b][0], w0, x + b * xs + c);
      acc[b][1] = I::madd(acc[b][1], w1, x + b * xs + c + C);
    }
  }
  if constexpr (I::kMaskedTail) {  // x is zero-padded to a multiple of 32; the weight's tail is masked
    for (; c < in; c += C) {
      const typename I::W w0 = I::load_dense_tail(w + c, in - c);
      for (int b = 0; b < NB; ++b) acc[b][0] = I::madd(acc[b][0], w0, x + b * xs + c);
    }
  }
  for (int b = 0; b < NB; ++b) {
    float s = I::hsum(I::add(acc[b][0], acc[b][1]));
    if constexpr (!I::kMaskedTail) {
      for (int64_t t = c; t < in; ++t) s += I::scalar(w[t]) * x[b * xs + t];
    }
    out[b] = s;
  }
}

// Rows [r0, r1) of a packed weight, word by word: put(v, m, d) for mask word m, v its first kept
// value, d its 32 columns in dst (row r at dst + (r - r0) * ld).
template <class I, class T, class D, class Put>
inline void each_word(const uint32_t* mask, int64_t nwords, const T* values, const int64_t* roff, int64_t r0,
                      int64_t r1, D* dst, int64_t ld, const Put& put) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* mw = mask + r * nwords;
    const T* v = values + roff[r];
    D* d = dst + (r - r0) * ld;
    for (int64_t k = 0; k < nwords; ++k) {
      put(v, mw[k], d + 32 * k);
      v += I::popcount(mw[k]);
    }
  }
}

}  // namespace rows

template <class I, class T>
void PackedRows<I, T>::sparse(int nb, const uint32_t* mw, int64_t nwords, const T* v, const In* x, int64_t xs,
                           float* out) {
  switch (nb) {
    case 1: return rows::sparse_row<I, T, 1>(mw, nwords, v, x, xs, out);
    case 2: return rows::sparse_row<I, T, 2>(mw, nwords, v, x, xs, out);
    case 3: return rows::sparse_row<I, T, 3>(mw, nwords, v, x, xs, out);
    default: return rows::sparse_row<I, T, 4>(mw, nwords, v, x, xs, out);
  }
}

template <class I, class T>
void PackedRows<I, T>::dense(int nb, const T* w, int64_t in, const In* x, int64_t xs, float* out) {
  switch (nb) {
    case 1: return rows::dense_row<I, T, 1>(w, in, x, xs, out);
    case 2: return rows::dense_row<I, T, 2>(w, in, x, xs, out);
    case 3: return rows::dense_row<I, T, 3>(w, in, x, xs, out);
    default: return rows::dense_row<I, T, 4>(w, in, x, xs, out);
  }
}

template <class I, class T>
void PackedRows<I, T>::expand_f32(const uint32_t* mask, int64_t nwords, const T* values, const int64_t* roff,
                               int64_t r0, int64_t r1, float* dst, int64_t ld) {
  rows::each_word<I>(mask, nwords, values, roff, r0, r1, dst, ld,
                     [](const T* v, uint32_t m, float* d) { I::store_word_f32(v, m, d); });
}

}  // namespace subcoder
