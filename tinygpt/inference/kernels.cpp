// Our CPU kernels, for x86 CPUs with AVX2 (tinygpt.inference.kernels builds them; tinygpt.inference.quantize packs
// the weights):
//   tinygpt::int8_linear: y = x @ (w * w_scale).T + b for fp32 activations x and int8 weights w;
//   tinygpt::int4_linear: y = x @ w.T for 4-bit weights with a scale and an offset per group of 64;
//   tinygpt::topk: the k largest of each row, descending (ties: the lower index first), as torch.topk;
//   tinygpt::cache_attention: a few new queries' attention over a KV cache, each to the slots up to its position.
//
// Why: decoding reads every weight once per step. PyTorch's weight-only int8 kernel converts each weight to
// bf16 and multiplies in floating point; on a CPU without native bf16 (AVX2) that arithmetic, not memory, is
// the limit. Here each row of x is quantized to int8 too (one scale per row, symmetric), and the dot products
// run on 8-bit integer multiplies (vpmaddubsw: 32 per instruction) with exact int32 sums.
//
// Layout: w is (N, K) int8 packed in blocks of 4 output rows: for each block, for each 32-wide slice of K, the
// 4 rows' 32 weights side by side (128 bytes). One block is then one contiguous run of memory, which the
// hardware prefetcher streams. N % 4 == 0 and K % 32 == 0 (the caller pads N).
//
// int4: w[n, k] = code * scale + offset for the group of 64 that k falls in, codes 0..15. A block of 4 rows holds,
// for each group, each row's 32 bytes: low nibbles the group's first 32 codes, high nibbles the next 32. Scales
// and offsets are fp16, per block and group: the 4 rows' scales, then their 4 offsets. With x quantized (x ~= sx *
// q), each group adds scale * (q . codes) + offset * sum(q): the codes are unsigned, so they are vpmaddubsw's
// unsigned operand as they are. K % 64 == 0.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <cstdint>
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

// Every row of x (M, K), quantized: codes, one scale per row and, for int4's offsets, each group of 64's sum.
struct QuantizedRows {
    std::vector<int8_t> q;
    std::vector<float> scale, group_sum;

    QuantizedRows(const float* x, int64_t M, int64_t K, bool sums)
        : q(M * K), scale(M), group_sum(sums ? M * K / 64 : 0) {
        for (int64_t m = 0; m < M; m++) scale[m] = quantize_row(x + m * K, K, q.data() + m * K);
        for (int64_t g = 0; g < static_cast<int64_t>(group_sum.size()); g++) {
            int32_t s = 0;
            for (int64_t k = 0; k < 64; k++) s += q[g * 64 + k];
            group_sum[g] = static_cast<float>(s);
        }
    }
};

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

// Outputs n0..n0+3 of a row of y, but none at or past n (the weights' padding rows have no column in y).
void store4(float* y, int64_t n0, int64_t n, __m128 v) {
    if (n0 + 4 <= n) {
        _mm_storeu_ps(y + n0, v);
        return;
    }
    float t[4];
    _mm_storeu_ps(t, v);
    for (int64_t i = 0; n0 + i < n; i++) y[n0 + i] = t[i];
}

// n: the output columns, at most w's rows (the rest are padding to a multiple of 4).
Tensor int8_linear(Tensor x, Tensor w, Tensor w_scale, std::optional<Tensor> bias, int64_t n) {
    STD_TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.is_contiguous() && w.is_contiguous(),
                    "int8_linear: x (M, K) and w (N, K) must be contiguous matrices");
    const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
    STD_TORCH_CHECK(w.size(1) == K && K % 32 == 0 && N % 4 == 0 && 0 < n && n <= N,
                    "int8_linear: K % 32 and N % 4 must be 0, and 0 < n <= N");
    STD_TORCH_CHECK(x.scalar_type() == torch::headeronly::ScalarType::Float &&
                    w.scalar_type() == torch::headeronly::ScalarType::Char &&
                    w_scale.scalar_type() == torch::headeronly::ScalarType::Float,
                    "int8_linear: x and w_scale must be float32, w int8");
    const float* xp = x.const_data_ptr<float>();
    const int8_t* wp = w.const_data_ptr<int8_t>();
    const float* sp = w_scale.const_data_ptr<float>();
    const float* bp = bias.has_value() ? bias->const_data_ptr<float>() : nullptr;
    Tensor y = torch::stable::new_empty(x, {M, n});
    float* yp = y.mutable_data_ptr<float>();

    const QuantizedRows xq(xp, M, K, false);

    const int threads = static_cast<int>(std::min<int64_t>(torch::stable::get_num_threads(), N / 4));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += 4) {  // each block's weights are read once, for every row of x
        const __m128 ws = _mm_loadu_ps(sp + n0);
        const __m128 b = bp ? _mm_loadu_ps(bp + n0) : _mm_setzero_ps();
        for (int64_t m = 0; m < M; m++) {
            const __m128 dots = _mm_cvtepi32_ps(dot4(xq.q.data() + m * K, wp + n0 * K, K));
            store4(yp + m * n, n0, n, _mm_fmadd_ps(dots, _mm_mul_ps(ws, _mm_set1_ps(xq.scale[m])), b));
        }
    }
    return y;
}

// R quantized rows' products with one int4 block's 4 rows, before each row's scale: 4 floats per row. A group is
// 64 columns, one 32-byte load per weight row: the low nibbles' products with x's first 32 and the high nibbles'
// with the next 32 add up in int16 (each vpmaddubsw pair is at most 2 * 15 * 128), so a group costs one widening
// and one scale, not two. The nibbles are unpacked once for all R rows of x; each row's sums are the same
// operations in the same order whatever R is, so a row gets the same bits alone or in a batch.
template <int R>
void dot4_int4(const int8_t* xq, const float* xsum, int64_t K, const uint8_t* block, const uint16_t* scales,
               __m128* out) {
    const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0F);
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
                const __m256i pairs = _mm256_add_epi16(
                    _mm256_maddubs_epi16(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x))),
                    _mm256_maddubs_epi16(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32))));
                acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones)), sj, acc[r][j]);
            }
        }
    }
    for (int r = 0; r < R; r++) {
        const __m256 sum = _mm256_hadd_ps(_mm256_hadd_ps(acc[r][0], acc[r][1]), _mm256_hadd_ps(acc[r][2], acc[r][3]));
        out[r] = _mm_add_ps(_mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1)), offsets[r]);
    }
}

Tensor int4_linear(Tensor x, Tensor codes, Tensor scales, int64_t n) {
    STD_TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && codes.is_contiguous() && scales.is_contiguous(),
                    "int4_linear: x (M, K), codes and scales must be contiguous");
    const int64_t M = x.size(0), K = x.size(1), N = codes.size(0);
    STD_TORCH_CHECK(codes.dim() == 2 && codes.size(1) * 2 == K && K % 64 == 0 && N % 4 == 0 &&
                    scales.numel() == N * (K / 64) * 2 && 0 < n && n <= N,
                    "int4_linear: codes (N, K/2), K % 64 and N % 4 must be 0, and 0 < n <= N");
    STD_TORCH_CHECK(x.scalar_type() == torch::headeronly::ScalarType::Float &&
                    codes.scalar_type() == torch::headeronly::ScalarType::Byte &&
                    scales.scalar_type() == torch::headeronly::ScalarType::Half,
                    "int4_linear: x must be float32, codes uint8, scales float16");
    const float* xp = x.const_data_ptr<float>();
    const uint8_t* cp = codes.const_data_ptr<uint8_t>();
    const uint16_t* sp = static_cast<const uint16_t*>(scales.const_data_ptr());
    Tensor y = torch::stable::new_empty(x, {M, n});
    float* yp = y.mutable_data_ptr<float>();

    const int64_t G = K / 64;
    const QuantizedRows xq(xp, M, K, true);
    const int threads = static_cast<int>(std::min<int64_t>(torch::stable::get_num_threads(), N / 4));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += 4) {
        const uint8_t* block = cp + n0 * K / 2;
        const uint16_t* sb = sp + n0 * G * 2;
        __m128 dots[2];
        int64_t m = 0;
        for (; m + 2 <= M; m += 2) {  // two rows of x per unpacking of the weights
            dot4_int4<2>(xq.q.data() + m * K, xq.group_sum.data() + m * G, K, block, sb, dots);
            for (int r = 0; r < 2; r++)
                store4(yp + (m + r) * n, n0, n, _mm_mul_ps(dots[r], _mm_set1_ps(xq.scale[m + r])));
        }
        if (m < M) {
            dot4_int4<1>(xq.q.data() + m * K, xq.group_sum.data() + m * G, K, block, sb, dots);
            store4(yp + m * n, n0, n, _mm_mul_ps(dots[0], _mm_set1_ps(xq.scale[m])));
        }
    }
    return y;
}

// The k best (value, index) of x[begin:end), best first. A threshold first: the k-th largest of the maxima of
// 2k chunks (k chunk maxima >= t mean at least k values >= t, so every one of the k best is >= t); then one
// pass keeps the values >= t (a few k of them) and only those are sorted.
using Entry = std::pair<float, int64_t>;
bool better(const Entry& a, const Entry& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); }

std::vector<Entry> best_of(const float* x, int64_t begin, int64_t end, int64_t k) {
    const int64_t n = end - begin, chunks = std::min(n, 2 * k);
    std::vector<float> maxima(chunks);
    for (int64_t c = 0; c < chunks; c++) {
        int64_t i = begin + c * n / chunks;
        const int64_t stop = begin + (c + 1) * n / chunks;
        __m256 m8 = _mm256_set1_ps(-INFINITY);
        for (; i + 8 <= stop; i += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(x + i));
        float m[8];
        _mm256_storeu_ps(m, m8);
        float best = *std::max_element(m, m + 8);
        for (; i < stop; i++) best = std::max(best, x[i]);
        maxima[c] = best;
    }
    std::nth_element(maxima.begin(), maxima.begin() + (k - 1), maxima.end(), std::greater<float>());
    const float t = maxima[k - 1];
    std::vector<Entry> kept;
    kept.reserve(4 * k);
    const __m256 t8 = _mm256_set1_ps(t);
    int64_t i = begin;
    for (; i + 8 <= end; i += 8) {  // most blocks of 8 hold none
        int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), t8, _CMP_GE_OQ));
        for (; mask; mask &= mask - 1) kept.emplace_back(x[i + __builtin_ctz(mask)], i + __builtin_ctz(mask));
    }
    for (; i < end; i++) {
        if (x[i] >= t) kept.emplace_back(x[i], i);
    }
    std::partial_sort(kept.begin(), kept.begin() + k, kept.end(), better);
    kept.resize(k);
    return kept;
}

std::tuple<Tensor, Tensor> topk(Tensor x, int64_t k) {
    STD_TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == torch::headeronly::ScalarType::Float,
                    "topk: x must be a contiguous float32 matrix");
    const int64_t B = x.size(0), N = x.size(1);
    STD_TORCH_CHECK(0 < k && k <= N, "topk: k must be in [1, row length]");
    const float* xp = x.const_data_ptr<float>();
    Tensor values = torch::stable::new_empty(x, {B, k});
    Tensor indices = torch::stable::new_empty(x, {B, k}, torch::headeronly::ScalarType::Long);
    float* vp = values.mutable_data_ptr<float>();
    int64_t* ip = indices.mutable_data_ptr<int64_t>();
    // a lone row is split in two halves, one per thread, and merged: the same answer, as the order is total
    const int64_t parts = (B == 1 && N >= 4 * k) ? 2 : 1;
    std::vector<std::vector<Entry>> found(B * parts);
    const int threads = static_cast<int>(std::min<int64_t>(torch::stable::get_num_threads(), B * parts));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < B * parts; t++) {
        const int64_t row = t / parts, part = t % parts;
        found[t] = best_of(xp + row * N, part * N / parts, (part + 1) * N / parts, k);
    }
    for (int64_t row = 0; row < B; row++) {
        std::vector<Entry> all;
        for (int64_t part = 0; part < parts; part++) all.insert(all.end(), found[row * parts + part].begin(),
                                                                 found[row * parts + part].end());
        std::partial_sort(all.begin(), all.begin() + k, all.end(), better);
        for (int64_t j = 0; j < k; j++) {
            vp[row * k + j] = all[j].first;
            ip[row * k + j] = all[j].second;
        }
    }
    return {values, indices};
}

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

STABLE_TORCH_LIBRARY(tinygpt, m) {
    m.def("int8_linear(Tensor x, Tensor w, Tensor w_scale, Tensor? bias, int n) -> Tensor");
    m.def("int4_linear(Tensor x, Tensor codes, Tensor scales, int n) -> Tensor");
    m.def("topk(Tensor x, int k) -> (Tensor, Tensor)");
    m.def("cache_attention(Tensor q, Tensor k, Tensor v, Tensor positions) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(tinygpt, CPU, m) {
    m.impl("int8_linear", TORCH_BOX(&int8_linear));
    m.impl("int4_linear", TORCH_BOX(&int4_linear));
    m.impl("topk", TORCH_BOX(&topk));
    m.impl("cache_attention", TORCH_BOX(&cache_attention));
}
