// The dot products of the int8 and int4 matmuls (matmul.cpp's layouts, described there), and one block of 4
// weight rows against every quantized row of x: what matmul.cpp's layers and decode.cpp's one-pass step share, so
// a layer's outputs are the same bits in either.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace {
// With VNNI (4 byte products summed into each int32 lane by one instruction) the same sums, exact either way.
#if defined(__AVXVNNI__)
#define TINYGPT_VNNI _mm256_dpbusd_avx_epi32
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define TINYGPT_VNNI _mm256_dpbusd_epi32
#endif

constexpr int64_t kPrefetch = 1024;  // bytes ahead of the current slice: a few slices, in L1 when needed

// The int32 dot products of one quantized row with one block's 4 weight rows.
__m128i dot4(const int8_t* xq, const int8_t* block, int64_t K) {
    [[maybe_unused]] const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                      _mm256_setzero_si256()};
    for (int64_t k = 0; k < K; k += 32) {
        const int8_t* wk = block + 4 * k;
        _mm_prefetch(reinterpret_cast<const char*>(wk + kPrefetch), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(wk + kPrefetch + 64), _MM_HINT_T0);
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + k));
        const __m256i ax = _mm256_sign_epi8(xv, xv);  // |x| as the unsigned operand, x's sign moved onto w
        for (int j = 0; j < 4; j++) {
            const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wk + 32 * j));
#ifdef TINYGPT_VNNI
            acc[j] = TINYGPT_VNNI(acc[j], ax, _mm256_sign_epi8(wv, xv));
#else
            // pairs of products fit int16: |x|, |w| <= 127
            const __m256i pairs = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, xv));
            acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(pairs, ones));
#endif
        }
    }
    const __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(acc[0], acc[1]), _mm256_hadd_epi32(acc[2], acc[3]));
    return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// dot4 for R rows of x at once in 512-bit registers: one load holds two weight rows' 32-byte slice, x's slice is
// broadcast to both halves; x's sign moves onto w by a masked negation (AVX-512 has no vpsignb). Exact int32 sums,
// as dot4's.
template <int R>
void dot4_512(const int8_t* xq, const int8_t* block, int64_t K, __m128i* out) {
    const __m512i zero = _mm512_setzero_si512();
    __m512i acc[R][2];
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = zero;
    for (int64_t k = 0; k < K; k += 32) {
        const int8_t* wk = block + 4 * k;
        _mm_prefetch(reinterpret_cast<const char*>(wk + kPrefetch), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(wk + kPrefetch + 64), _MM_HINT_T0);
        const __m512i w[2] = {_mm512_loadu_si512(wk), _mm512_loadu_si512(wk + 64)};  // rows 0-1, rows 2-3
        for (int r = 0; r < R; r++) {
            const __m256i x256 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + r * K + k));
            const __m512i xv = _mm512_broadcast_i64x4(x256);
            const __mmask64 negative = _mm512_movepi8_mask(xv);
            const __m512i ax = _mm512_abs_epi8(xv);
            for (int h = 0; h < 2; h++)
                acc[r][h] = _mm512_dpbusd_epi32(acc[r][h], ax, _mm512_mask_sub_epi8(w[h], negative, zero, w[h]));
        }
    }
    for (int r = 0; r < R; r++) {
        const __m256i a0 = _mm512_castsi512_si256(acc[r][0]), a1 = _mm512_extracti32x8_epi32(acc[r][0], 1);
        const __m256i a2 = _mm512_castsi512_si256(acc[r][1]), a3 = _mm512_extracti32x8_epi32(acc[r][1], 1);
        const __m256i sum = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
        out[r] = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    }
}
#endif


// R quantized rows' products with one int4 block's 4 rows, before each row's scale: 4 floats per row. A group is
// 64 columns, one 32-byte load per weight row: the low nibbles' products with x's first 32 and the high nibbles'
// with the next 32 add up in int16 (each vpmaddubsw pair is at most 2 * 15 * 128), so a group costs one widening
// and one scale, not two. The nibbles are unpacked once for all R rows of x; each row's sums are the same
// operations in the same order whatever R is, so a row gets the same bits alone or in a batch.
template <int R>
void dot4_int4(const int8_t* xq, const float* xsum, int64_t K, const uint8_t* block, const uint16_t* scales,
               __m128* out) {
    [[maybe_unused]] const __m256i ones = _mm256_set1_epi16(1);
    const __m256i low = _mm256_set1_epi8(0x0F);
    const int64_t G = K / 64;
    __m256 acc[R][4];
    __m128 offsets[R];
    for (int r = 0; r < R; r++) {
        offsets[r] = _mm_setzero_ps();
        for (int j = 0; j < 4; j++) acc[r][j] = _mm256_setzero_ps();
    }
    for (int64_t g = 0; g < G; g++) {
        const uint8_t* wk = block + 128 * g;  // 4 rows x 32 bytes per group
        _mm_prefetch(reinterpret_cast<const char*>(wk + kPrefetch), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(wk + kPrefetch + 64), _MM_HINT_T0);
        // [4 scales, 4 offsets] of this group; the scales in both halves, for broadcasting one with a shuffle
        const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + g * 8)));
        const __m256 ss = _mm256_permute2f128_ps(s, s, 0x00);
        for (int r = 0; r < R; r++)
            offsets[r] = _mm_fmadd_ps(_mm256_extractf128_ps(s, 1), _mm_set1_ps(xsum[r * G + g]), offsets[r]);
        for (int j = 0; j < 4; j++) {
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wk + 32 * j));
            const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
            const __m256 sj = j == 0 ? _mm256_shuffle_ps(ss, ss, 0x00) : j == 1 ? _mm256_shuffle_ps(ss, ss, 0x55)
                            : j == 2 ? _mm256_shuffle_ps(ss, ss, 0xAA) : _mm256_shuffle_ps(ss, ss, 0xFF);
            for (int r = 0; r < R; r++) {
                const int8_t* x = xq + r * K + 64 * g;
                const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
                const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32));
#ifdef TINYGPT_VNNI
                const __m256i sums = TINYGPT_VNNI(TINYGPT_VNNI(_mm256_setzero_si256(), lo, x0), hi, x1);
#else
                const __m256i sums = _mm256_madd_epi16(
                    _mm256_add_epi16(_mm256_maddubs_epi16(lo, x0), _mm256_maddubs_epi16(hi, x1)), ones);
#endif
                acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), sj, acc[r][j]);
            }
        }
    }
    for (int r = 0; r < R; r++) {
        const __m256 sum = _mm256_hadd_ps(_mm256_hadd_ps(acc[r][0], acc[r][1]), _mm256_hadd_ps(acc[r][2], acc[r][3]));
        out[r] = _mm_add_ps(_mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1)), offsets[r]);
    }
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// dot4_int4 in 512-bit registers: one load holds two weight rows' 32 bytes of a group, x's halves are broadcast to
// both, so each instruction does two rows' work. Each lane sums the same products in the same order as in
// dot4_int4, and the lanes are reduced as there: the same bits.
template <int R>
void dot4_int4_512(const int8_t* xq, const float* xsum, int64_t K, const uint8_t* block, const uint16_t* scales,
                   __m128* out) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    const __m512i pick01 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i pick23 = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const int64_t G = K / 64;
    __m512 acc[R][2];
    __m128 offsets[R];
    for (int r = 0; r < R; r++) {
        offsets[r] = _mm_setzero_ps();
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    }
    for (int64_t g = 0; g < G; g++) {
        const uint8_t* wk = block + 128 * g;
        _mm_prefetch(reinterpret_cast<const char*>(wk + kPrefetch), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(wk + kPrefetch + 64), _MM_HINT_T0);
        const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + g * 8)));
        const __m512 s512 = _mm512_castps256_ps512(s);
        const __m512 scale[2] = {_mm512_permutexvar_ps(pick01, s512), _mm512_permutexvar_ps(pick23, s512)};
        for (int r = 0; r < R; r++)
            offsets[r] = _mm_fmadd_ps(_mm256_extractf128_ps(s, 1), _mm_set1_ps(xsum[r * G + g]), offsets[r]);
        for (int h = 0; h < 2; h++) {  // rows 0-1, then 2-3
            const __m512i v = _mm512_loadu_si512(wk + 64 * h);
            const __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
            for (int r = 0; r < R; r++) {
                const int8_t* x = xq + r * K + 64 * g;
                const __m512i x0 = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
                const __m512i x1 = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32)));
                const __m512i sums = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, x0), hi, x1);
                acc[r][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale[h], acc[r][h]);
            }
        }
    }
    for (int r = 0; r < R; r++) {
        const __m256 a0 = _mm512_castps512_ps256(acc[r][0]), a1 = _mm512_extractf32x8_ps(acc[r][0], 1);
        const __m256 a2 = _mm512_castps512_ps256(acc[r][1]), a3 = _mm512_extractf32x8_ps(acc[r][1], 1);
        const __m256 sum = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
        out[r] = _mm_add_ps(_mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1)), offsets[r]);
    }
}
#define TINYGPT_DOT4_INT4 dot4_int4_512
#else
#define TINYGPT_DOT4_INT4 dot4_int4
#endif

// One block of 4 int8 weight rows (`block`, K columns) against M quantized rows of x (xq: M x K codes, xscale: M
// scales): f(m, v) for each row m, v its 4 outputs dot * w_scale * x_scale + b.
template <class F>
void int8_block(const int8_t* xq, const float* xscale, int64_t M, int64_t K, const int8_t* block, __m128 ws, __m128 b,
                F&& f) {
    int64_t m = 0;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    __m128i sums[4];
    for (; m + 4 <= M; m += 4) {  // four rows of x per pass over the block's weights
        dot4_512<4>(xq + m * K, block, K, sums);
        for (int r = 0; r < 4; r++)
            f(m + r, _mm_fmadd_ps(_mm_cvtepi32_ps(sums[r]), _mm_mul_ps(ws, _mm_set1_ps(xscale[m + r])), b));
    }
#endif
    for (; m < M; m++)
        f(m, _mm_fmadd_ps(_mm_cvtepi32_ps(dot4(xq + m * K, block, K)), _mm_mul_ps(ws, _mm_set1_ps(xscale[m])), b));
}

// Rows m, m+1, ... of x against one int4 block, R rows at a time while R remain: f(row, its 4 outputs); returns
// the first row not done. xsum: each row's sums of its codes per group of 64.
template <int R, class F>
int64_t int4_rows(const int8_t* xq, const float* xsum, const float* xscale, int64_t m, int64_t M, int64_t K,
                  const uint8_t* block, const uint16_t* scales, F& f) {
    const int64_t G = K / 64;
    __m128 dots[R];
    for (; m + R <= M; m += R) {
        TINYGPT_DOT4_INT4<R>(xq + m * K, xsum + m * G, K, block, scales, dots);
        for (int r = 0; r < R; r++) f(m + r, _mm_mul_ps(dots[r], _mm_set1_ps(xscale[m + r])));
    }
    return m;
}

// One int4 block of 4 weight rows against M quantized rows: f(m, v) for each row m, v its 4 outputs.
template <class F>
void int4_block(const int8_t* xq, const float* xsum, const float* xscale, int64_t M, int64_t K, const uint8_t* block,
                const uint16_t* scales, F&& f) {
    int64_t m = int4_rows<4>(xq, xsum, xscale, 0, M, K, block, scales, f);  // four rows per unpacking of the weights
    m = int4_rows<2>(xq, xsum, xscale, m, M, K, block, scales, f);
    int4_rows<1>(xq, xsum, xscale, m, M, K, block, scales, f);
}

}  // namespace
