// tinygpt::decode_step: a whole decode step of a serving copy (int8 blocks, an int8 or int4 head, an fp16 KV
// cache) in one pass, for x86 CPUs with AVX2 (tinygpt.kernels builds it; tinygpt.kernels.one_pass packs the
// arguments from the serving copy's own tensors and checks it against GPT.forward).
//
// Why: at batch 1 a token is ~40 small operations. Called one by one, each opens its own OpenMP region (a fork
// and a join), allocates its output and quantizes its input; that fixed cost, not the weights' bytes, was most
// of a token (bench/profile_step.py). Here the threads enter one parallel region per step and walk the whole
// model with barriers between the phases; each layer's input rows are quantized once into a shared buffer;
// LayerNorm, the biases, GELU and the residual additions happen in the loops beside the matmuls; and the head's
// top-k and logsumexp are found by each thread over the logits it has just computed (in a chunk that stays in
// L1), so the 50,257 logits are never written out or read again.
//
// The same math as GPT.forward over the serving copy's modules: the matmuls are matmul.cpp's dot products
// (dots.h) and attention is attention.cpp's (attend.h), so those are the same bits; LayerNorm and GELU are
// written here and round differently from PyTorch's by a few ulps.
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

#include "attend.h"
#include "dots.h"
#include "rank.h"
#include "rows.h"
#include "sample.h"

using torch::stable::Tensor;

namespace {

constexpr int64_t kChunk = 256;  // head rows per chunk: B x 256 logits, ranked while in L1
constexpr float kEps = 1e-5f;    // nn.LayerNorm's default

struct Linear {  // a matmul.cpp layer: int8 (w, scale, bias) or int4 (codes in w, fp16 scales and offsets)
    const int8_t* w = nullptr;
    const float* scale = nullptr;
    const float* bias = nullptr;
    const uint16_t* scales4 = nullptr;
    int64_t N = 0, K = 0;  // padded output rows, inputs
};

struct Norm {
    const float* w;
    const float* b;  // nullptr: no bias
};

struct Layer {
    Norm ln_1, ln_2;
    Linear attn, proj, fc, mlp_proj;
    uint16_t *k, *v;  // the layer's fp16 cache, (B, H, L, D)
};

struct Model {
    const float *wte, *wpe;
    const int32_t* row_of;  // id -> row, or nullptr when every id has its own row (kept tokens)
    const int64_t* id_of_row;  // row -> id, and the ids the last row stands for, ascending (kept tokens)
    const int64_t* shared_ids;
    int64_t n_shared;
    std::vector<Layer> layers;
    Norm ln_f;
    Linear head;
    bool head_int4;
    int64_t B, C, H, D, L, rows;  // rows: the head's real outputs
};

// Scratch for one step, reused across steps by the calling thread.
struct Scratch {
    std::vector<float> x, h, y, scale, group_sum, logits;
    std::vector<int8_t> q;
    std::vector<Ranking> ranking;  // (thread, row of x)
};

// The plan (tinygpt.kernels.one_pass.plan): a few sizes, then the addresses of the serving copy's tensors, which
// one_pass checked and keeps alive. Addresses, not a list of tensors: the stable ABI converts each tensor of a list
// on every call, about 1 us each, and a step took ~120 of them (a sixth of a token at batch 1).
enum Plan : int64_t { kLayers, kWidth, kHeads, kContext, kRows, kVocab, kShared, kHeadInt4, kHeadRows, kSizes };

template <class T>
const T* at(const int64_t* plan, int64_t i) { return reinterpret_cast<const T*>(plan[kSizes + i]); }

Linear int8_layer(const int64_t* plan, int64_t i, int64_t N, int64_t K) {
    Linear l;
    l.w = at<int8_t>(plan, i), l.scale = at<float>(plan, i + 1), l.bias = at<float>(plan, i + 2);
    l.N = N, l.K = K;
    return l;
}

// x (C floats) -> LayerNorm(x) in `out`.
void layer_norm(const float* x, const Norm& n, int64_t C, float* out) {
    __m256 s = _mm256_setzero_ps();
    for (int64_t c = 0; c < C; c += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(x + c));
    const __m256 mean = _mm256_set1_ps(hsum(s) / C);
    __m256 v = _mm256_setzero_ps();
    for (int64_t c = 0; c < C; c += 8) {
        const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + c), mean);
        v = _mm256_fmadd_ps(d, d, v);
    }
    const __m256 rstd = _mm256_set1_ps(1.0f / std::sqrt(hsum(v) / C + kEps));
    for (int64_t c = 0; c < C; c += 8) {
        const __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c), mean), rstd),
                                       _mm256_loadu_ps(n.w + c));
        _mm256_storeu_ps(out + c, n.b ? _mm256_add_ps(y, _mm256_loadu_ps(n.b + c)) : y);
    }
}

// GPT-2's GELU (tanh approximation), 4 at a time: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), as
// x sigmoid(2u) = x / (1 + e^-2u), with e = e^-2|u| <= 1 (exp8 is for arguments <= 0): x / (1 + e) for u >= 0, x e /
// (1 + e) below. No 1 - e: where u is small that difference would lose most of its digits.
__m128 gelu4(__m128 x) {
    const __m128 u = _mm_mul_ps(_mm_set1_ps(0.7978845608f),
                                _mm_fmadd_ps(_mm_mul_ps(_mm_set1_ps(0.044715f), x), _mm_mul_ps(x, x), x));
    const __m128 e = _mm256_castps256_ps128(
        exp8(_mm256_castps128_ps256(_mm_mul_ps(_mm_set1_ps(-2.0f), _mm_andnot_ps(_mm_set1_ps(-0.0f), u)))));
    const __m128 numerator = _mm_blendv_ps(x, _mm_mul_ps(x, e), u);  // the sign bit of u picks
    return _mm_div_ps(numerator, _mm_add_ps(_mm_set1_ps(1.0f), e));
}

// This thread's share [begin, end) of n items when `threads` split them in contiguous runs.
std::pair<int64_t, int64_t> share(int64_t n, int t, int threads) { return {n * t / threads, n * (t + 1) / threads}; }

// Rows of x (stride K) quantized into s.q (stride K) and s.scale (and group sums for int4), the rows split
// between the threads.
void quantize_rows(const float* x, int64_t B, int64_t K, bool sums, Scratch& s, int t, int threads) {
    for (int64_t b = t; b < B; b += threads) {
        int8_t* q = s.q.data() + b * K;
        s.scale[b] = quantize_row(x + b * K, K, q);
        for (int64_t g = 0; sums && g < K / 64; g++) {
            int32_t sum = 0;
            for (int64_t k = 0; k < 64; k++) sum += q[g * 64 + k];
            s.group_sum[b * (K / 64) + g] = static_cast<float>(sum);
        }
    }
}

// This thread's share of an int8 layer's output blocks over every quantized row: f(b, n0, its 4 outputs).
template <class F>
void int8_share(const Linear& l, int64_t B, const Scratch& s, int t, int threads, F&& f) {
    const auto [begin, end] = share(l.N / 4, t, threads);
    for (int64_t blk = begin; blk < end; blk++) {
        const int64_t n0 = 4 * blk;
        const __m128 ws = _mm_loadu_ps(l.scale + n0), b = l.bias ? _mm_loadu_ps(l.bias + n0) : _mm_setzero_ps();
        int8_block(s.q.data(), s.scale.data(), B, l.K, l.w + n0 * l.K, ws, b,
                   [&](int64_t m, __m128 v) { f(m, n0, v); });
    }
}

// Write this step's key and value of each (row, head) this thread owns into the cache, then attend.
void attention(const Model& m, const Layer& layer, const int64_t* pos, Scratch& s, std::vector<float>& scores,
               int t, int threads) {
    const int64_t C = m.C, D = m.D, L = m.L;
    for (int64_t item = t; item < m.B * m.H; item += threads) {
        const int64_t b = item / m.H, head = item % m.H, slot = pos[b];
        const float* qkv = s.h.data() + b * 3 * C;
        const int64_t base = (b * m.H + head) * L * D;
        for (int64_t d = 0; d < D; d += 8) {
            constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;  // as torch's .half()
            _mm_storeu_si128(reinterpret_cast<__m128i*>(layer.k + base + slot * D + d),
                             _mm256_cvtps_ph(_mm256_loadu_ps(qkv + C + head * D + d), kRound));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(layer.v + base + slot * D + d),
                             _mm256_cvtps_ph(_mm256_loadu_ps(qkv + 2 * C + head * D + d), kRound));
        }
        attend(qkv + head * D, layer.k + base, layer.v + base, slot + 1, D, scores.data(),
               s.y.data() + b * C + head * D);
    }
}

void add4(float* x, __m128 v) { _mm_storeu_ps(x, _mm_add_ps(_mm_loadu_ps(x), v)); }

void block(const Model& m, const Layer& layer, const int64_t* pos, Scratch& s, std::vector<float>& scores, int t,
           int threads) {
    const int64_t B = m.B, C = m.C;
    for (int64_t b = t; b < B; b += threads) layer_norm(s.x.data() + b * C, layer.ln_1, C, s.y.data() + b * C);
    quantize_rows(s.y.data(), B, C, false, s, t, threads);
#pragma omp barrier
    int8_share(layer.attn, B, s, t, threads,
               [&](int64_t b, int64_t n0, __m128 v) { _mm_storeu_ps(&s.h[b * 3 * C + n0], v); });
#pragma omp barrier
    attention(m, layer, pos, s, scores, t, threads);
#pragma omp barrier
    quantize_rows(s.y.data(), B, C, false, s, t, threads);
#pragma omp barrier
    int8_share(layer.proj, B, s, t, threads, [&](int64_t b, int64_t n0, __m128 v) { add4(&s.x[b * C + n0], v); });
#pragma omp barrier
    for (int64_t b = t; b < B; b += threads) layer_norm(s.x.data() + b * C, layer.ln_2, C, s.y.data() + b * C);
    quantize_rows(s.y.data(), B, C, false, s, t, threads);
#pragma omp barrier
    int8_share(layer.fc, B, s, t, threads,
               [&](int64_t b, int64_t n0, __m128 v) { _mm_storeu_ps(&s.h[b * 4 * C + n0], gelu4(v)); });
#pragma omp barrier
    quantize_rows(s.h.data(), B, 4 * C, false, s, t, threads);
#pragma omp barrier
    int8_share(layer.mlp_proj, B, s, t, threads, [&](int64_t b, int64_t n0, __m128 v) { add4(&s.x[b * C + n0], v); });
#pragma omp barrier
}

// This thread's share of the head: its blocks of 4 rows in chunks of kChunk rows, each chunk's outputs for
// every row of x computed into this thread's buffer and ranked there.
void head_share(const Model& m, Scratch& s, int64_t k, float offset, int t, int threads) {
    const Linear& l = m.head;
    const int64_t B = m.B, blocks = (m.rows + 3) / 4, G = l.K / 64;
    const auto [begin, end] = share(blocks, t, threads);
    float* buf = s.logits.data() + t * B * kChunk;
    Ranking* ranking = s.ranking.data() + t * B;
    for (int64_t c0 = begin; c0 < end; c0 += kChunk / 4) {
        const int64_t c1 = std::min(end, c0 + kChunk / 4);
        for (int64_t blk = c0; blk < c1; blk++) {
            const int64_t n0 = 4 * blk;
            auto store = [&](int64_t b, __m128 v) { _mm_storeu_ps(buf + b * kChunk + (n0 - 4 * c0), v); };
            if (m.head_int4) {
                int4_block(s.q.data(), s.group_sum.data(), s.scale.data(), B, l.K,
                           reinterpret_cast<const uint8_t*>(l.w) + n0 * l.K / 2, l.scales4 + n0 * G * 2, store);
            } else {
                const __m128 ws = _mm_loadu_ps(l.scale + n0);
                const __m128 bias = l.bias ? _mm_loadu_ps(l.bias + n0) : _mm_setzero_ps();
                int8_block(s.q.data(), s.scale.data(), B, l.K, l.w + n0 * l.K, ws, bias, store);
            }
        }
        const int64_t first = 4 * c0, n = std::min(4 * c1, m.rows) - first;  // padding rows are not outputs
        for (int64_t b = 0; b < B; b++) rank_chunk(buf + b * kChunk, first, n, k, m.rows, offset, ranking[b]);
    }
    for (int64_t b = 0; b < B; b++) ranking[b].prune(k);
}

// Row b's k best ids over every thread's candidates, best first (with kept tokens, the shared row's place is
// taken by its ids in order, as tinygpt.inference.vocab.VocabTopK.expand does), and its logsumexp over all head
// outputs.
void merge(const Model& m, Scratch& s, int64_t b, int64_t k, int threads, float* values, int64_t* ids, float* lse) {
    const int64_t B = m.B;
    std::vector<Entry> all;
    float max = -INFINITY, sum = 0.0f;
    for (int t = 0; t < threads; t++) max = std::max(max, s.ranking[t * B + b].max);
    for (int t = 0; t < threads; t++) {
        const Ranking& r = s.ranking[t * B + b];
        all.insert(all.end(), r.kept.begin(), r.kept.end());
        if (r.sum > 0.0f) sum += r.sum * std::exp(r.max - max);
    }
    const int64_t ranked = std::min<int64_t>(k, all.size());
    std::partial_sort(all.begin(), all.begin() + ranked, all.end(), better);
    for (int64_t i = 0, j = 0; j < k && i < ranked; i++) {
        const bool shared = m.id_of_row && all[i].second == m.rows - 1;
        for (int64_t x = 0; j < k && x < (shared ? m.n_shared : 1); x++, j++) {
            values[b * k + j] = all[i].first;
            ids[b * k + j] = shared ? m.shared_ids[x] : m.id_of_row ? m.id_of_row[all[i].second] : all[i].second;
        }
    }
    lse[b] = max + std::log(sum);
}

// The plan's model over B streams; cache: the cache's rows, then each layer's keys' and values' addresses.
Model unpack(const int64_t* plan, const int64_t* cache, int64_t B) {
    Model m;
    m.B = B, m.C = plan[kWidth], m.H = plan[kHeads], m.D = m.C / m.H, m.L = plan[kContext], m.rows = plan[kRows];
    m.wte = at<float>(plan, 0), m.wpe = at<float>(plan, 1), m.row_of = at<int32_t>(plan, 2);
    m.id_of_row = at<int64_t>(plan, 3), m.shared_ids = at<int64_t>(plan, 4), m.n_shared = plan[kShared];
    const int64_t C = m.C;
    for (int64_t i = 0; i < plan[kLayers]; i++) {
        const int64_t o = 5 + 16 * i;
        Layer l;
        l.ln_1 = {at<float>(plan, o), at<float>(plan, o + 1)};
        l.attn = int8_layer(plan, o + 2, 3 * C, C), l.proj = int8_layer(plan, o + 5, C, C);
        l.ln_2 = {at<float>(plan, o + 8), at<float>(plan, o + 9)};
        l.fc = int8_layer(plan, o + 10, 4 * C, C), l.mlp_proj = int8_layer(plan, o + 13, C, 4 * C);
        l.k = reinterpret_cast<uint16_t*>(cache[1 + 2 * i]), l.v = reinterpret_cast<uint16_t*>(cache[2 + 2 * i]);
        m.layers.push_back(l);
    }
    const int64_t o = 5 + 16 * plan[kLayers];
    m.ln_f = {at<float>(plan, o), at<float>(plan, o + 1)};
    m.head_int4 = plan[kHeadInt4] != 0;
    m.head.w = at<int8_t>(plan, o + 2), m.head.N = plan[kHeadRows], m.head.K = C;
    if (m.head_int4) {
        m.head.scales4 = at<uint16_t>(plan, o + 3);
    } else {
        m.head.scale = at<float>(plan, o + 3);
    }
    return m;
}

// Scratch of the calling thread, reused by its steps (in a parallel region, a thread_local's name would mean each
// thread's own: the region gets this reference).
Scratch& scratch(const Model& m, int threads) {
    static thread_local Scratch mine;
    Scratch& s = mine;
    const int64_t B = m.B, C = m.C;
    s.x.resize(B * C), s.y.resize(B * C), s.h.resize(B * 4 * C), s.q.resize(B * 4 * C), s.scale.resize(B);
    s.group_sum.resize(B * C / 64), s.logits.resize(threads * B * kChunk);
    s.ranking.resize(threads * B);
    for (Ranking& r : s.ranking) r = Ranking{std::move(r.kept)}, r.kept.clear();  // their memory is kept
    return s;
}

// One decode step of B streams. idx (B,) token ids; pos (B,) each stream's position, advanced by one (as
// GPT.hidden advances its cache); plan and cache: tinygpt.kernels.one_pass's (sizes, addresses); settings (B, 5) and
// u (B,) as the engine passes them to sampling.pick_top, seen (B, vocab) bool or empty (no penalty anywhere).
// Returns each stream's packed row (B, 2 + 2 * alternatives) float64 (sampling.describe's), and the k best
// (values (B, k), ids (B, k): descending, ties to the lower row) and the logsumexp (B,) it sampled from.
std::tuple<Tensor, Tensor, Tensor, Tensor> decode_step(Tensor idx, Tensor pos, Tensor plan, Tensor cache, int64_t k,
                                                       double offset, Tensor settings, Tensor u, Tensor seen,
                                                       int64_t alternatives) {
    using torch::headeronly::ScalarType;
    STD_TORCH_CHECK(idx.dim() == 1 && pos.dim() == 1 && idx.size(0) == pos.size(0) && idx.is_contiguous() &&
                    pos.is_contiguous() && idx.scalar_type() == ScalarType::Long &&
                    pos.scalar_type() == ScalarType::Long,
                    "decode_step: idx and pos must be int64 vectors of one length");
    STD_TORCH_CHECK(plan.scalar_type() == ScalarType::Long && cache.scalar_type() == ScalarType::Long &&
                    plan.is_contiguous() && cache.is_contiguous() && plan.numel() > kSizes &&
                    plan.numel() == kSizes + 9 + 16 * plan.const_data_ptr<int64_t>()[kLayers] &&
                    cache.numel() == 1 + 2 * plan.const_data_ptr<int64_t>()[kLayers],
                    "decode_step: plan and cache must be tinygpt.kernels.one_pass's");
    const int64_t B = idx.size(0);
    STD_TORCH_CHECK(B <= cache.const_data_ptr<int64_t>()[0], "decode_step: more streams than the cache has rows");
    const Model m = unpack(plan.const_data_ptr<int64_t>(), cache.const_data_ptr<int64_t>(), B);
    const int64_t vocab = plan.const_data_ptr<int64_t>()[kVocab];
    STD_TORCH_CHECK(settings.dim() == 2 && settings.size(0) == B && settings.size(1) == 5 && settings.is_contiguous() &&
                    settings.scalar_type() == ScalarType::Float && u.numel() == B && u.is_contiguous() &&
                    u.scalar_type() == ScalarType::Float && (seen.numel() == 0 || (seen.dim() == 2 &&
                    seen.size(0) == B && seen.size(1) == vocab && seen.is_contiguous() &&
                    seen.scalar_type() == ScalarType::Bool)) && 0 < k && k <= vocab && 0 <= alternatives &&
                    alternatives <= k,
                    "decode_step: settings (B, 5) float32, u (B,) float32, seen (B, vocab) bool or empty, "
                    "0 < k <= vocab, alternatives <= k");
    const int64_t* ids = idx.const_data_ptr<int64_t>();
    int64_t* positions = pos.mutable_data_ptr<int64_t>();
    for (int64_t b = 0; b < B; b++) {
        STD_TORCH_CHECK(0 <= positions[b] && positions[b] < m.L, "decode_step: a position is outside the context");
        STD_TORCH_CHECK(0 <= ids[b] && ids[b] < vocab, "decode_step: a token id is outside the vocabulary");
    }
    const int threads = static_cast<int>(std::max<int64_t>(1, torch::stable::get_num_threads()));
    Scratch& s = scratch(m, threads);
    Tensor values = torch::stable::new_empty(settings, {B, k});
    Tensor top_ids = torch::stable::new_empty(settings, {B, k}, ScalarType::Long);
    Tensor lse = torch::stable::new_empty(settings, {B});
    Tensor packed = torch::stable::new_empty(settings, {B, 2 + 2 * alternatives}, ScalarType::Double);
    float *vp = values.mutable_data_ptr<float>(), *lp = lse.mutable_data_ptr<float>();
    int64_t* ip = top_ids.mutable_data_ptr<int64_t>();
    const float* sp = settings.const_data_ptr<float>();
    const float* up = u.const_data_ptr<float>();
    const bool* seen_p = seen.numel() ? seen.const_data_ptr<bool>() : nullptr;
    double* out = packed.mutable_data_ptr<double>();
    const int64_t ranked = std::min(k, m.rows);  // head rows ranked: with kept tokens, the shared row is many ids
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        std::vector<float> scores(m.L);
        for (int64_t b = t; b < B; b += T) {
            const int64_t row = m.row_of ? m.row_of[ids[b]] : ids[b];
            for (int64_t c = 0; c < m.C; c++) s.x[b * m.C + c] = m.wte[row * m.C + c] + m.wpe[positions[b] * m.C + c];
        }
#pragma omp barrier
        for (const Layer& layer : m.layers) block(m, layer, positions, s, scores, t, T);
        for (int64_t b = t; b < B; b += T) layer_norm(s.x.data() + b * m.C, m.ln_f, m.C, s.y.data() + b * m.C);
        quantize_rows(s.y.data(), B, m.C, m.head_int4, s, t, T);
#pragma omp barrier
        head_share(m, s, ranked, static_cast<float>(offset), t, T);
#pragma omp barrier
        for (int64_t b = t; b < B; b += T) {
            merge(m, s, b, k, T, vp, ip, lp);
            sample_row(vp + b * k, ip + b * k, k, lp[b], sp + 5 * b, up[b], seen_p ? seen_p + b * vocab : nullptr,
                       alternatives, out + b * (2 + 2 * alternatives));
        }
    }
    for (int64_t b = 0; b < B; b++) positions[b] += 1;
    return {packed, values, top_ids, lse};
}

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(tinygpt, m) {
    m.def("decode_step(Tensor idx, Tensor(a!) pos, Tensor plan, Tensor cache, int k, float offset, Tensor settings, "
          "Tensor u, Tensor seen, int alternatives) -> (Tensor, Tensor, Tensor, Tensor)");
}

STABLE_TORCH_LIBRARY_IMPL(tinygpt, CPU, m) {
    m.impl("decode_step", TORCH_BOX(&decode_step));
}
