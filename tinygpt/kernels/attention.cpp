// tinygpt::cache_attention: a few new queries' attention over a KV cache (fp32 or fp16), each query to the slots
// up to its position, for x86 CPUs with AVX2 (tinygpt.kernels builds it; quantize.KernelAttention
// calls it). Inductor's fused math attention reads every slot with scalar loops; this reads only the slots a
// query may see, 8 floats at a time.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

using torch::stable::Tensor;

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

template <typename KV>
void attend_all(const float* qp, int64_t sb, int64_t st, const KV* kp, const KV* vp, const int64_t* pp, int64_t B,
                int64_t T, int64_t H, int64_t L, int64_t D, float* yp) {
    const int64_t items = B * T * H, C = H * D;
    const int threads = static_cast<int>(std::min<int64_t>(torch::stable::get_num_threads(), items));
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> s(L);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < items; i++) {
            const int64_t b = i / (T * H), t = i / H % T, h = i % H;
            const int64_t n = std::min<int64_t>(std::max<int64_t>(pp[b * T + t] + 1, 1), L);
            const int64_t kv = (b * H + h) * L * D;
            attend(qp + b * sb + t * st + h * D, kp + kv, vp + kv, n, D, s.data(), yp + (b * T + t) * C + h * D);
        }
    }
}

// q (B, T, H * D): each row's heads side by side (any strides for B and T); k, v (B, H, L, D) contiguous, fp32
// or fp16 (half the memory traffic: at 16 streams the cache is read from memory, not cache); positions (B, T).
// Query t of stream b attends to slots 0..positions[b, t]. Returns (B, T, H * D) in fp32. Each (stream, query,
// head) is computed alone, in one order, so a stream gets the same bits in any batch.
Tensor cache_attention(Tensor q, Tensor k, Tensor v, Tensor positions) {
    using torch::headeronly::ScalarType;
    STD_TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && v.dim() == 4 && positions.dim() == 2,
                    "cache_attention: q (B, T, C), k and v (B, H, L, D), positions (B, T)");
    const int64_t B = q.size(0), T = q.size(1), C = q.size(2), H = k.size(1), L = k.size(2), D = k.size(3);
    STD_TORCH_CHECK(q.stride(2) == 1 && k.is_contiguous() && v.is_contiguous() && positions.is_contiguous() &&
                    k.size(0) == B && H * D == C && D % 8 == 0 && positions.size(0) == B && positions.size(1) == T,
                    "cache_attention: shapes or layout do not match (D % 8 must be 0)");
    const bool half = k.scalar_type() == ScalarType::Half;
    STD_TORCH_CHECK(q.scalar_type() == ScalarType::Float && k.scalar_type() == v.scalar_type() &&
                    (half || k.scalar_type() == ScalarType::Float) && positions.scalar_type() == ScalarType::Long,
                    "cache_attention: q must be float32, k and v both float32 or both float16, positions int64");
    Tensor y = torch::stable::new_empty(q, {B, T, C});
    const float* qp = q.const_data_ptr<float>();
    const int64_t* pp = positions.const_data_ptr<int64_t>();
    float* yp = y.mutable_data_ptr<float>();
    if (half) {
        attend_all(qp, q.stride(0), q.stride(1), static_cast<const uint16_t*>(k.const_data_ptr()),
                   static_cast<const uint16_t*>(v.const_data_ptr()), pp, B, T, H, L, D, yp);
    } else {
        attend_all(qp, q.stride(0), q.stride(1), k.const_data_ptr<float>(), v.const_data_ptr<float>(), pp, B, T, H,
                   L, D, yp);
    }
    return y;
}

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(tinygpt, m) {
    m.def("cache_attention(Tensor q, Tensor k, Tensor v, Tensor positions) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(tinygpt, CPU, m) {
    m.impl("cache_attention", TORCH_BOX(&cache_attention));
}
