// ticketlab's CPU kernels for unstructured-sparse Linear layers: y = x @ W.T + b, W [n_out, n_in].
//
// Built at first use by ticketlab.deploy.kernels (torch.utils.cpp_extension.load_inline, flags
// -O3 -march=native -fopenmp) and cached per machine. Activations and arithmetic are fp32; the
// stored weight values may be fp32, bf16 or fp16 (converted on load).
//
// Layouts (all row-major: one output unit per row, so rows split over threads without atomics):
//   CSR       ptr int32 [n_out + 1], idx int32 [nnz] (column), val [nnz].
//   CSR16     idx int16 holding (column - 32768 * block); ptr int32 [n_out, nblk + 1] gives each
//             row's range in each column block of 32768. Two bytes less per kept weight.
//   bitmask   bits int64 [n_out, ceil(n_in / 64)] (bit j of word w: column 64 w + j), rowptr
//             int32 [n_out + 1], val fp32 [nnz + 16] (padded: 16-wide loads never run off the end).
//
// Strategies:
//   batch 1   one gather dot product per row (AVX-512 16-wide, AVX2 8-wide, else scalar); with
//             a bitmask on AVX-512, each 16 columns compress x by the mask instead of gathering.
//   batch B   x is transposed once to xT [n_in, Bp] (Bp = B rounded up to 8) so that the B inputs of
//             one column are contiguous; a row then accumulates v * xT[col, j0 : j0 + T] for a
//             batch tile T in {8, 16, 32, 64} held in registers.
//   mlp       a whole ReLU MLP (CSR16 fp32 layers) in one call: tiny networks are dominated by
//             per-call overhead, so batch 1 runs every layer in one thread and batch B runs tiles of
//             16 samples through every layer, one task per tile.
// Threads: at::parallel_for, i.e. torch's own pool (torch.set_num_threads applies).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

using at::Tensor;

constexpr int64_t kBlock = 32768;  // CSR16 column block

// ----------------------------------------------------------------------------- loads
static inline float to_f(float v) { return v; }
static inline float to_f(c10::BFloat16 v) { return static_cast<float>(v); }
static inline float to_f(c10::Half v) { return static_cast<float>(v); }
static inline uint32_t col_of(int32_t c) { return static_cast<uint32_t>(c); }
static inline uint32_t col_of(int16_t c) { return static_cast<uint16_t>(c); }

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define TL_AVX512 1
static inline __m512i cols16(const int32_t* p, __mmask16 m) { return _mm512_maskz_loadu_epi32(m, p); }
static inline __m512i cols16(const int16_t* p, __mmask16 m) { return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)); }
static inline __m512 vals16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
static inline __m512 vals16(const c10::BFloat16* p, __mmask16 m) {  // bf16 is the high half of an fp32
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
static inline __m512 vals16(const c10::Half* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }
#elif defined(__AVX2__) && defined(__FMA__)
#define TL_AVX2 1
static inline __m256i cols8(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
static inline __m256i cols8(const int16_t* p) { return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
static inline __m256 vals8(const float* p) { return _mm256_loadu_ps(p); }
static inline __m256 vals8(const c10::BFloat16* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
static inline __m256 vals8(const c10::Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
#endif

// Σ_{k in [s, e)} val[k] · x[col(idx[k])]
template <typename Idx, typename V>
static inline float row_dot(const Idx* idx, const V* val, int64_t s, int64_t e, const float* x) {
  int64_t k = s;
#if defined(TL_AVX512)
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();  // two chains hide the FMA latency
  for (; k + 32 <= e; k += 32) {
    a0 = _mm512_fmadd_ps(vals16(val + k, 0xFFFF), _mm512_i32gather_ps(cols16(idx + k, 0xFFFF), x, 4), a0);
    a1 = _mm512_fmadd_ps(vals16(val + k + 16, 0xFFFF), _mm512_i32gather_ps(cols16(idx + k + 16, 0xFFFF), x, 4), a1);
  }
  for (; k < e; k += 16) {
    const __mmask16 m = (e - k >= 16) ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (e - k)) - 1);
    a0 = _mm512_fmadd_ps(vals16(val + k, m), _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, cols16(idx + k, m), x, 4), a0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#else
  float acc = 0.f;
#if defined(TL_AVX2)
  __m256 a = _mm256_setzero_ps();
  for (; k + 8 <= e; k += 8) a = _mm256_fmadd_ps(vals8(val + k), _mm256_i32gather_ps(x, cols8(idx + k), 4), a);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, a);
  for (float lane : lanes) acc += lane;
#endif
  for (; k < e; ++k) acc += to_f(val[k]) * x[col_of(idx[k])];
  return acc;
#endif
}

// --------------------------------------------------------------------- batch tiles
typedef float v8f __attribute__((vector_size(32)));
typedef float v16f __attribute__((vector_size(64)));
template <typename Vec> static inline Vec loadu(const float* p) { Vec v; std::memcpy(&v, p, sizeof(Vec)); return v; }
template <typename Vec> static inline void storeu(float* p, Vec v) { std::memcpy(p, &v, sizeof(Vec)); }

// out[0:T] = Σ_{k in [s, e)} val[k] · xT[col(idx[k]) · ld + 0:T], with U accumulator sets so that
// at least four independent FMA chains are in flight.
template <int T, typename Idx, typename V>
static inline void row_tile(const Idx* idx, const V* val, int64_t s, int64_t e, const float* xT, int64_t ld, float* out) {
  using Vec = typename std::conditional<T == 8, v8f, v16f>::type;
  constexpr int L = sizeof(Vec) / 4, NV = T / L, U = NV >= 4 ? 1 : 4 / NV;
  Vec acc[U][NV];
  for (int u = 0; u < U; ++u)
    for (int q = 0; q < NV; ++q) acc[u][q] = Vec{};
  int64_t k = s;
  for (; k + U <= e; k += U)
    for (int u = 0; u < U; ++u) {
      const float v = to_f(val[k + u]);
      const float* xr = xT + static_cast<int64_t>(col_of(idx[k + u])) * ld;
      for (int q = 0; q < NV; ++q) acc[u][q] += v * loadu<Vec>(xr + q * L);
    }
  for (; k < e; ++k) {
    const float v = to_f(val[k]);
    const float* xr = xT + static_cast<int64_t>(col_of(idx[k])) * ld;
    for (int q = 0; q < NV; ++q) acc[0][q] += v * loadu<Vec>(xr + q * L);
  }
  for (int u = 1; u < U; ++u)
    for (int q = 0; q < NV; ++q) acc[0][q] += acc[u][q];
  for (int q = 0; q < NV; ++q) storeu(out + q * L, acc[0][q]);
}

// Rows per parallel task: at least ~32k multiply-adds, so small layers stay on the calling thread.
static int64_t row_grain(int64_t work_per_row) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(work_per_row, 1)); }
static int pick_tile(int64_t left) { return left >= 64 ? 64 : left >= 32 ? 32 : left >= 16 ? 16 : 8; }

// Per-thread scratch kept between calls (grow-only), 64-byte aligned so tile loads never straddle lines.
static float* scratch(int64_t n) {
  static thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < n + 16) buffer.resize(n + 16);
  const uintptr_t p = reinterpret_cast<uintptr_t>(buffer.data());
  return reinterpret_cast<float*>((p + 63) & ~uintptr_t(63));
}

#if defined(TL_AVX512)
// A 16x16 block transposed in registers: dst[c·ldd + j] = src[j·lds + c] for c, j < 16.
static inline void transpose16x16(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; ++i) {  // interleave pairs of rows, then pairs of pairs, then 128-bit lanes
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
      t[8 * i + 4 + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0xDD);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ldd, r[i]);
}
#endif

// Rows [0, nrows) of x [*, K] -> xT [K, ld] for columns c in [c0, c1): xT[c·ld + j] = x[j·K + c];
// entries j in [nrows, ncols) are zero (tile padding).
static void transpose_block(const float* x, int64_t K, int64_t nrows, int64_t ncols, float* xT, int64_t ld,
                            int64_t c0, int64_t c1) {
  int64_t j0 = 0;
#if defined(TL_AVX512)
  for (; j0 + 16 <= nrows; j0 += 16) {  // full 16-row blocks in registers
    int64_t c = c0;
    for (; c + 16 <= c1; c += 16) transpose16x16(x + j0 * K + c, K, xT + c * ld + j0, ld);
    for (; c < c1; ++c)
      for (int64_t j = j0; j < j0 + 16; ++j) xT[c * ld + j] = x[j * K + c];
  }
#endif
  constexpr int64_t kStrip = 16;
  for (int64_t cs = c0; cs < c1; cs += kStrip) {  // the rest, in strips of columns (cache-friendly writes)
    const int64_t ce = std::min(c1, cs + kStrip);
    for (int64_t j = j0; j < nrows; ++j)
      for (int64_t c = cs; c < ce; ++c) xT[c * ld + j] = x[j * K + c];
    for (int64_t c = cs; c < ce; ++c)
      for (int64_t j = nrows; j < ncols; ++j) xT[c * ld + j] = 0.f;
  }
}

// x [B, K] -> xT [K, Bp] in the calling thread's scratch (Bp = B rounded up to 8, zero padded).
static const float* transpose_pad(const Tensor& x, int64_t Bp) {
  const int64_t B = x.size(0), K = x.size(1);
  float* xT = scratch(K * Bp);
  const float* xp = x.data_ptr<float>();
  at::parallel_for(0, K, std::max<int64_t>(16, 65536 / std::max<int64_t>(Bp, 1)),
                   [&](int64_t c0, int64_t c1) { transpose_block(xp, K, B, Bp, xT, Bp, c0, c1); });
  return xT;
}

// Run `body(std::integral_constant<int, T>)` for the tile size T chosen for `left` columns.
template <typename Body>
static void with_tile(int T, Body&& body) {
  switch (T) {
    case 64: body(std::integral_constant<int, 64>()); break;
    case 32: body(std::integral_constant<int, 32>()); break;
    case 16: body(std::integral_constant<int, 16>()); break;
    default: body(std::integral_constant<int, 8>()); break;
  }
}

// ------------------------------------------------------------------------------- CSR
template <typename Idx, typename V>
static Tensor csr_impl(const Tensor& ptr_, const Tensor& idx_, const Tensor& val_, const Tensor& x_,
                       const c10::optional<Tensor>& bias_, int64_t n_out) {
  Tensor x = x_.contiguous();
  const int64_t B = x.size(0), K = x.size(1);
  const int64_t nblk = ptr_.dim() == 2 ? ptr_.size(1) - 1 : 1;
  const int64_t stride = ptr_.dim() == 2 ? ptr_.size(1) : 1;
  TORCH_CHECK(sizeof(Idx) == 4 || K <= nblk * kBlock, "the column blocks do not cover the input width");
  const int32_t* ptr = ptr_.data_ptr<int32_t>();
  const Idx* idx = reinterpret_cast<const Idx*>(idx_.data_ptr());
  const V* val = reinterpret_cast<const V*>(val_.data_ptr());
  const float* bias = bias_.has_value() ? bias_->data_ptr<float>() : nullptr;
  Tensor y = at::empty({B, n_out}, x.options());
  float* yp = y.data_ptr<float>();
  const int64_t per_row = std::max<int64_t>(1, idx_.numel() / std::max<int64_t>(n_out, 1));
  if (B == 1) {
    const float* xp = x.data_ptr<float>();
    at::parallel_for(0, n_out, row_grain(per_row), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float acc = bias ? bias[r] : 0.f;
        for (int64_t b = 0; b < nblk; ++b)
          acc += row_dot(idx, val, ptr[r * stride + b], ptr[r * stride + b + 1], xp + b * kBlock);
        yp[r] = acc;
      }
    });
    return y;
  }
  const int64_t Bp = (B + 7) / 8 * 8;
  const float* xT = transpose_pad(x, Bp);
  for (int64_t j0 = 0; j0 < B;) {
    const int T = pick_tile(Bp - j0);
    const int64_t valid = std::min<int64_t>(T, B - j0);
    with_tile(T, [&](auto tile) {
      constexpr int TT = decltype(tile)::value;
      at::parallel_for(0, n_out, row_grain(per_row * TT), [&](int64_t r0, int64_t r1) {
        alignas(64) float acc[TT], part[TT];
        for (int64_t r = r0; r < r1; ++r) {
          const float b0 = bias ? bias[r] : 0.f;
          for (int j = 0; j < TT; ++j) acc[j] = b0;
          for (int64_t b = 0; b < nblk; ++b) {
            row_tile<TT>(idx, val, ptr[r * stride + b], ptr[r * stride + b + 1], xT + b * kBlock * Bp + j0, Bp, part);
            for (int j = 0; j < TT; ++j) acc[j] += part[j];
          }
          for (int64_t j = 0; j < valid; ++j) yp[(j0 + j) * n_out + r] = acc[j];
        }
      });
    });
    j0 += T;
  }
  return y;
}

Tensor csr_linear(Tensor ptr, Tensor idx, Tensor val, Tensor x, c10::optional<Tensor> bias, int64_t n_out) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be a 2-D float32 tensor");
  TORCH_CHECK(ptr.scalar_type() == at::kInt, "row pointers must be int32");
  const bool narrow = idx.scalar_type() == at::kShort;
  TORCH_CHECK(narrow || idx.scalar_type() == at::kInt, "column indices must be int16 or int32");
#define TL_CSR(V) return narrow ? csr_impl<int16_t, V>(ptr, idx, val, x, bias, n_out) : csr_impl<int32_t, V>(ptr, idx, val, x, bias, n_out)
  switch (val.scalar_type()) {
    case at::kFloat: TL_CSR(float);
    case at::kBFloat16: TL_CSR(c10::BFloat16);
    case at::kHalf: TL_CSR(c10::Half);
    default: TORCH_CHECK(false, "values must be float32, bfloat16 or float16");
  }
#undef TL_CSR
}

// --------------------------------------------------------------------- bitmask, batch 1
Tensor bitmask_linear(Tensor bits_, Tensor rowptr_, Tensor val_, Tensor x_, c10::optional<Tensor> bias_) {
  TORCH_CHECK(x_.dim() == 2 && x_.size(0) == 1 && x_.scalar_type() == at::kFloat, "x must be float32 [1, n_in]");
  Tensor x = x_.contiguous();
  const int64_t n_out = bits_.size(0), words = bits_.size(1);
  TORCH_CHECK(x.size(1) <= words * 64, "the bitmask is narrower than x");
  const uint64_t* bits = reinterpret_cast<const uint64_t*>(bits_.data_ptr<int64_t>());
  const int32_t* rowptr = rowptr_.data_ptr<int32_t>();
  const float* val = val_.data_ptr<float>();
  const float* bias = bias_.has_value() ? bias_->data_ptr<float>() : nullptr;
  const float* xp = x.data_ptr<float>();
  Tensor y = at::empty({1, n_out}, x.options());
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, n_out, row_grain(words * 16), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const uint64_t* row = bits + r * words;
      const float* v = val + rowptr[r];
#if defined(TL_AVX512)
      __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      for (int64_t w = 0; w < words; ++w) {
        const uint64_t word = row[w];
        if (!word) continue;
        const float* quarter[4];  // value offsets from independent popcounts (no loop-carried chain)
        quarter[0] = v;
        for (int q = 1; q < 4; ++q) quarter[q] = quarter[q - 1] + _mm_popcnt_u32(static_cast<unsigned>((word >> (16 * (q - 1))) & 0xFFFF));
        for (int q = 0; q < 4; ++q) {
          // gather the x values of the kept columns into the low lanes (masked load: lanes whose bit
          // is 0 are never read, so the last word may reach past x) and multiply with the next values;
          // lanes past the popcount hold 0 · (next values). Measured faster than expanding the values.
          const __mmask16 m = static_cast<__mmask16>(word >> (16 * q));
          const __m512 xs = _mm512_maskz_compress_ps(m, _mm512_maskz_loadu_ps(m, xp + w * 64 + q * 16));
          acc[q] = _mm512_fmadd_ps(xs, _mm512_loadu_ps(quarter[q]), acc[q]);
        }
        v += _mm_popcnt_u64(word);
      }
      yp[r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]))) + (bias ? bias[r] : 0.f);
#else
      float acc = 0.f;
      for (int64_t w = 0; w < words; ++w)
        for (uint64_t word = row[w]; word; word &= word - 1) acc += *v++ * xp[w * 64 + __builtin_ctzll(word)];
      yp[r] = acc + (bias ? bias[r] : 0.f);
#endif
    }
  });
  return y;
}

// ------------------------------------------------------------------ fused ReLU MLP
// meta int32 [L, 4]: (n_out, ptr offset, value offset, bias offset) per layer; every layer's ptr
// (int32, relative to its value offset), idx (int16, n_in <= 32767), val (fp32) and bias (fp32)
// concatenated. ReLU after every layer but the last.
template <int T>
static void mlp_tile(const int32_t* meta, int64_t L, const int32_t* ptr, const int16_t* idx, const float* val,
                     const float* bias, const float* xT, int64_t nvalid, float* out, int64_t n_last,
                     float* buf0, float* buf1) {
  using Vec = typename std::conditional<T == 8, v8f, v16f>::type;
  constexpr int VL = sizeof(Vec) / 4;
  const float* src = xT;  // activations transposed: src[unit · T + j]
  alignas(64) float acc[T];
  for (int64_t l = 0; l < L; ++l) {
    const int32_t n_out = meta[l * 4], po = meta[l * 4 + 1], vo = meta[l * 4 + 2], bo = meta[l * 4 + 3];
    const bool last = l == L - 1;
    float* dst = (l % 2) ? buf1 : buf0;
    for (int32_t r = 0; r < n_out; ++r) {
      row_tile<T>(idx + vo, val + vo, ptr[po + r], ptr[po + r + 1], src, T, acc);
      const float b = bias[bo + r];
      if (last) {
        for (int64_t j = 0; j < nvalid; ++j) out[j * n_last + r] = acc[j] + b;
      } else {
        for (int q = 0; q < T; q += VL) {
          const Vec a = loadu<Vec>(acc + q) + b;
          storeu(dst + r * T + q, a > 0 ? a : Vec{});
        }
      }
    }
    src = dst;
  }
}

Tensor mlp_forward(Tensor meta_, Tensor ptr_, Tensor idx_, Tensor val_, Tensor bias_, Tensor x_, int64_t max_width) {
  TORCH_CHECK(x_.dim() == 2 && x_.scalar_type() == at::kFloat, "x must be a 2-D float32 tensor");
  Tensor x = x_.contiguous();
  const int64_t B = x.size(0), K = x.size(1), L = meta_.size(0);
  const int32_t* meta = meta_.data_ptr<int32_t>();
  const int32_t* ptr = ptr_.data_ptr<int32_t>();
  const int16_t* idx = idx_.data_ptr<int16_t>();
  const float* val = val_.data_ptr<float>();
  const float* bias = bias_.data_ptr<float>();
  const int64_t n_last = meta[(L - 1) * 4];
  Tensor out = at::empty({B, n_last}, x.options());
  float* op = out.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  if (B == 1) {  // a chain of gather dot products on one thread
    float* b0 = scratch(2 * max_width);
    float* b1 = b0 + max_width;
    const float* src = xp;
    for (int64_t l = 0; l < L; ++l) {
      const int32_t n_out = meta[l * 4], po = meta[l * 4 + 1], vo = meta[l * 4 + 2], bo = meta[l * 4 + 3];
      const bool last = l == L - 1;
      float* dst = last ? op : (l % 2 ? b1 : b0);
      for (int32_t r = 0; r < n_out; ++r) {
        const float a = row_dot(idx + vo, val + vo, ptr[po + r], ptr[po + r + 1], src) + bias[bo + r];
        dst[r] = last ? a : std::max(a, 0.f);
      }
      src = dst;
    }
    return out;
  }
  constexpr int T = 16;  // tiles of 16 samples, one task per tile, every layer run on the tile
  const int64_t tiles = (B + T - 1) / T;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    float* xT = scratch(K * T + 2 * max_width * T);
    float* b0 = xT + K * T;
    float* b1 = b0 + max_width * T;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t j0 = t * T, valid = std::min<int64_t>(T, B - j0);
      transpose_block(xp + j0 * K, K, valid, T, xT, T, 0, K);
      mlp_tile<T>(meta, L, ptr, idx, val, bias, xT, valid, op + j0 * n_last, n_last, b0, b1);
    }
  });
  return out;
}

std::string simd_path() {
#if defined(TL_AVX512)
  return "avx512";
#elif defined(TL_AVX2)
  return "avx2";
#else
  return "scalar";
#endif
}
