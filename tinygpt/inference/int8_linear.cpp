// tinygpt::int8_linear: y = x @ (w * w_scale).T + b for fp32 activations x and int8 weights w, on x86 CPUs with
// AVX2 (tinygpt.inference.kernels builds it; tinygpt.inference.quantize packs the weights).
//
// Why: decoding reads every weight once per step. PyTorch's weight-only int8 kernel converts each weight to
// bf16 and multiplies in floating point; on a CPU without native bf16 (AVX2) that arithmetic, not memory, is
// the limit. Here each row of x is quantized to int8 too (one scale per row, symmetric), and the dot products
// run on 8-bit integer multiplies (vpmaddubsw: 32 per instruction) with exact int32 sums.
//
// Layout: w is (N, K) int8 packed in blocks of 4 output rows: for each block, for each 32-wide slice of K, the
// 4 rows' 32 weights side by side (128 bytes). One block is then one contiguous run of memory, which the
// hardware prefetcher streams. N % 4 == 0 and K % 32 == 0 (the caller pads N).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

using torch::stable::Tensor;

namespace {

constexpr int64_t kPrefetch = 1024;  // bytes ahead of the current slice: a few slices, in L1 when needed

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

// The int32 dot products of one quantized row with one block's 4 weight rows.
__m128i dot4(const int8_t* xq, const int8_t* block, int64_t K) {
    const __m256i ones = _mm256_set1_epi16(1);
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
            // pairs of products fit int16: |x|, |w| <= 127
            const __m256i pairs = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, xv));
            acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(pairs, ones));
        }
    }
    const __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(acc[0], acc[1]), _mm256_hadd_epi32(acc[2], acc[3]));
    return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

Tensor int8_linear(Tensor x, Tensor w, Tensor w_scale, std::optional<Tensor> bias) {
    STD_TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.is_contiguous() && w.is_contiguous(),
                    "int8_linear: x (M, K) and w (N, K) must be contiguous matrices");
    const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
    STD_TORCH_CHECK(w.size(1) == K && K % 32 == 0 && N % 4 == 0, "int8_linear: K % 32 and N % 4 must be 0");
    STD_TORCH_CHECK(x.scalar_type() == torch::headeronly::ScalarType::Float &&
                    w.scalar_type() == torch::headeronly::ScalarType::Char &&
                    w_scale.scalar_type() == torch::headeronly::ScalarType::Float,
                    "int8_linear: x and w_scale must be float32, w int8");
    const float* xp = x.const_data_ptr<float>();
    const int8_t* wp = w.const_data_ptr<int8_t>();
    const float* sp = w_scale.const_data_ptr<float>();
    const float* bp = bias.has_value() ? bias->const_data_ptr<float>() : nullptr;
    Tensor y = torch::stable::new_empty(x, {M, N});
    float* yp = y.mutable_data_ptr<float>();

    std::vector<int8_t> xq(M * K);
    std::vector<float> x_scale(M);
    for (int64_t m = 0; m < M; m++) x_scale[m] = quantize_row(xp + m * K, K, xq.data() + m * K);

    const int threads = static_cast<int>(std::min<int64_t>(torch::stable::get_num_threads(), N / 4));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += 4) {  // each block's weights are read once, for every row of x
        const __m128 ws = _mm_loadu_ps(sp + n0);
        const __m128 b = bp ? _mm_loadu_ps(bp + n0) : _mm_setzero_ps();
        for (int64_t m = 0; m < M; m++) {
            const __m128 dots = _mm_cvtepi32_ps(dot4(xq.data() + m * K, wp + n0 * K, K));
            _mm_storeu_ps(yp + m * N + n0, _mm_fmadd_ps(dots, _mm_mul_ps(ws, _mm_set1_ps(x_scale[m])), b));
        }
    }
    return y;
}

}  // namespace

STABLE_TORCH_LIBRARY(tinygpt, m) {
    m.def("int8_linear(Tensor x, Tensor w, Tensor w_scale, Tensor? bias) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(tinygpt, CPU, m) {
    m.impl("int8_linear", TORCH_BOX(&int8_linear));
}
