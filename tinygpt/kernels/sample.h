// Sampling one stream's next token from its K best logits, as tinygpt.inference.sampling.pick_top does it (the
// definition; tests/test_one_pass.py checks this against it): the repetition penalty re-ranks the candidates,
// then temperature, top-k, min-p and top-p, and a draw u by inverting the CDF; temperature 0 takes the first.
// decode.cpp calls it once per stream at the end of its step, so a token costs no further call.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace {

// settings: [temperature, top_k, top_p, min_p, repetition_penalty] (sampling.settings_tensor); seen: the story's
// tokens by id (nullptr: none). Writes `describe`'s packed row: token, its probability, then `alternatives` ids
// and their probabilities (the K best, unpenalized, best first), probabilities at temperature 1 (exp(v - lse)).
void sample_row(const float* values, const int64_t* ids, int64_t K, float lse, const float* settings, float u,
                const bool* seen, int64_t alternatives, double* out) {
    const float temperature = settings[0], top_k = settings[1], top_p = settings[2], min_p = settings[3];
    const float penalty = settings[4];
    std::vector<float> scores(values, values + K);
    std::vector<int64_t> order(K);
    std::iota(order.begin(), order.end(), 0);
    if (seen && penalty != 1.0f) {  // CTRL's penalty, then a stable re-ranking
        for (int64_t i = 0; i < K; i++)
            if (seen[ids[i]]) scores[i] = scores[i] > 0 ? scores[i] / penalty : scores[i] * penalty;
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
    }
    int64_t j = 0;
    if (temperature != 0.0f) {
        std::vector<float> p(K);
        const float t = std::max(temperature, 1e-6f);
        float max = -INFINITY;
        for (int64_t i = 0; i < K; i++) {
            p[i] = top_k > 0 && i >= top_k ? -INFINITY : scores[order[i]] / t;
            max = std::max(max, p[i]);
        }
        float sum = 0.0f, top = 0.0f;
        for (int64_t i = 0; i < K; i++) sum += p[i] = std::exp(p[i] - max);
        for (int64_t i = 0; i < K; i++) top = std::max(top, p[i] /= sum);
        float before = 0.0f;  // the mass ranked above candidate i, before min-p and top-p cut
        for (int64_t i = 0; i < K; i++) {
            const float prob = p[i] < min_p * top ? 0.0f : p[i];
            p[i] = top_p < 1.0f && before >= top_p ? 0.0f : prob;
            before += prob;
        }
        std::partial_sum(p.begin(), p.end(), p.begin());  // the CDF; the draw's place in it
        const float target = u * p[K - 1];
        j = std::min<int64_t>(std::upper_bound(p.begin(), p.end(), target) - p.begin(), K - 1);
    }
    out[0] = static_cast<double>(ids[order[j]]);
    out[1] = std::exp(values[order[j]] - lse);
    for (int64_t a = 0; a < alternatives; a++) {
        out[2 + a] = static_cast<double>(ids[a]);
        out[2 + alternatives + a] = std::exp(values[a] - lse);
    }
}

}  // namespace
