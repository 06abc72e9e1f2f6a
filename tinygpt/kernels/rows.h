// What the matmul kernels (matmul.cpp, amx.cpp) share: each row of x quantized to int8 as it
// arrives, and writing a few outputs of a row of y.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

// Row m of x (K floats) -> q (K int8) with x ~= q * scale; returns scale (0 for a row of zeros).
float quantize_row(const float* x, int64_t K, int8_t* q) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 amax = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 8) amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + k)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float a = _mm_cvtss_f32(m4);
    const __m256 inv = _mm256_set1_ps(a > 0.0f ? 127.0f / a : 0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undo the packs' lane interleaving
    for (int64_t k = 0; k < K; k += 32) {
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), inv));  // round to nearest
        __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8), inv));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 16), inv));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 24), inv));
        __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + k), _mm256_permutevar8x32_epi32(b, order));
    }
    return a / 127.0f;
}

// Every row of x (M, K), quantized: codes, one scale per row and, for int4's offsets, each group of 64's sum.
// `rows` >= M: the codes of rows M..rows-1 are zeros (AMX multiplies whole tiles of 16 rows).
struct QuantizedRows {
    std::vector<int8_t> q;
    std::vector<float> scale, group_sum;

    QuantizedRows(const float* x, int64_t M, int64_t K, bool sums, int64_t rows = 0)
        : q(std::max(M, rows) * K), scale(M), group_sum(sums ? M * K / 64 : 0) {
        for (int64_t m = 0; m < M; m++) scale[m] = quantize_row(x + m * K, K, q.data() + m * K);
        for (int64_t g = 0; g < static_cast<int64_t>(group_sum.size()); g++) {
            int32_t s = 0;
            for (int64_t k = 0; k < 64; k++) s += q[g * 64 + k];
            group_sum[g] = static_cast<float>(s);
        }
    }
};

// Outputs n0..n0+3 of a row of y, but none at or past n (the weights' padding rows have no column in y).
[[maybe_unused]] void store4(float* y, int64_t n0, int64_t n, __m128 v) {
    if (n0 + 4 <= n) {
        _mm_storeu_ps(y + n0, v);
        return;
    }
    float t[4];
    _mm_storeu_ps(t, v);
    for (int64_t i = 0; n0 + i < n; i++) y[n0 + i] = t[i];
}

}  // namespace
