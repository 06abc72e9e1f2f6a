// One query's attention over its slots of a KV cache (fp32 or fp16), and the vector math it needs: what
// attention.cpp's op and decode.cpp's one-pass step share, so a head's output is the same bits in either.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

// e^x for x <= 0, 8 at a time (Cephes' expf: 2^n times a degree-6 polynomial on [-ln2/2, ln2/2], ~1 ulp);
// below -87 it gives e^-87 (about 1e-38), which is 0 beside the row's largest term (e^0).
__m256 exp8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // x - n ln2, in two parts
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

[[maybe_unused]] float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

// 8 keys' or values' floats, from an fp32 or an fp16 cache.
__m256 load8(const float* p) { return _mm256_loadu_ps(p); }
__m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

// One query (D floats) over keys and values k, v (n, D): softmax(q . k / sqrt(D)) . v into y. `s` holds n floats.
template <typename KV>
void attend(const float* q, const KV* k, const KV* v, int64_t n, int64_t D, float* s, float* y) {
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    float m = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        __m256 a = _mm256_setzero_ps();
        for (int64_t d = 0; d < D; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(k + j * D + d), a);
        s[j] = hsum(a) * scale;
        m = std::max(m, s[j]);
    }
    const __m256 m8 = _mm256_set1_ps(m);
    __m256 total = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), m8));
        _mm256_storeu_ps(s + j, e);
        total = _mm256_add_ps(total, e);
    }
    float sum = hsum(total);
    for (; j < n; j++) {
        float e[8] = {s[j] - m};  // the same exp as the vector loop's
        _mm256_storeu_ps(e, exp8(_mm256_loadu_ps(e)));
        s[j] = e[0];
        sum += e[0];
    }
    const float inv = 1.0f / sum;
    for (int64_t d = 0; d < D; d += 8) {
        __m256 a = _mm256_setzero_ps();
        for (int64_t i = 0; i < n; i++) a = _mm256_fmadd_ps(_mm256_set1_ps(s[i]), load8(v + i * D + d), a);
        _mm256_storeu_ps(y + d, _mm256_mul_ps(a, _mm256_set1_ps(inv)));
    }
}

}  // namespace
