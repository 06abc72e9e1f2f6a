// Ranking a row of logits as it is computed, chunk by chunk: a running top-k (candidates above a rising
// threshold) and a running logsumexp, so decode.cpp's head never writes its 50,257 logits out. Ties go to the
// lower row, as tinygpt::topk (topk.cpp) and torch.topk break them.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "attend.h"

namespace {

using Entry = std::pair<float, int64_t>;  // (value, row), as topk.cpp ranks them
bool better(const Entry& a, const Entry& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); }

// What each thread keeps of the head's outputs for one row of x: its best candidates and a running logsumexp.
struct Ranking {
    std::vector<Entry> kept;
    float threshold = -INFINITY, max = -INFINITY, sum = 0.0f;

    void prune(int64_t k) {
        if (static_cast<int64_t>(kept.size()) <= k) return;
        std::nth_element(kept.begin(), kept.begin() + (k - 1), kept.end(), better);
        kept.resize(k);
        threshold = kept[k - 1].first;
    }
};

// Rank one chunk of n head outputs y (rows first..first+n-1) for one row of x: add their terms to the running
// logsumexp, then keep those at or above the threshold as candidates. When the chunk ends with the row that
// stands for many ids (`offset` != 0: a model with kept tokens), that row is ranked at its value minus offset,
// as tinygpt.inference.vocab ranks it.
void rank_chunk(float* y, int64_t first, int64_t n, int64_t k, int64_t rows, float offset, Ranking& r) {
    __m256 m8 = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(y + i));
    float chunk_max = -INFINITY;
    for (; i < n; i++) chunk_max = std::max(chunk_max, y[i]);
    chunk_max = std::max(chunk_max, std::max(hmax(m8), r.max));
    r.sum *= std::exp(r.max - chunk_max);  // 0 * 0 for the first chunk
    r.max = chunk_max;
    const __m256 max8 = _mm256_set1_ps(r.max);
    __m256 sum8 = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) sum8 = _mm256_add_ps(sum8, exp8(_mm256_sub_ps(_mm256_loadu_ps(y + i), max8)));
    float tail[8];  // the last few; unused lanes at -87, whose e^-87 (1e-38) is nothing beside e^0
    for (int64_t j = 0; j < 8; j++) tail[j] = i + j < n ? y[i + j] - r.max : -87.0f;
    r.sum += hsum(_mm256_add_ps(sum8, exp8(_mm256_loadu_ps(tail))));
    if (offset != 0.0f && first + n == rows) y[n - 1] -= offset;
    const __m256 t8 = _mm256_set1_ps(r.threshold);
    for (i = 0; i + 8 <= n; i += 8) {  // after the first chunks, most blocks of 8 hold none
        int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(y + i), t8, _CMP_GE_OQ));
        for (; mask; mask &= mask - 1) r.kept.emplace_back(y[i + __builtin_ctz(mask)], first + i + __builtin_ctz(mask));
    }
    for (; i < n; i++)
        if (y[i] >= r.threshold) r.kept.emplace_back(y[i], first + i);
    if (static_cast<int64_t>(r.kept.size()) >= 4 * k) r.prune(k);
}

}  // namespace
