// tinygpt::topk: the k largest of each row of a float32 matrix, descending (ties: the lower index first), as
// torch.topk answers, for ranking a model's 50,257 logits in one pass (tinygpt.kernels builds it).
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
}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(tinygpt, m) {
    m.def("topk(Tensor x, int k) -> (Tensor, Tensor)");
}

STABLE_TORCH_LIBRARY_IMPL(tinygpt, CPU, m) {
    m.impl("topk", TORCH_BOX(&topk));
}
