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

#include "attend.h"

using torch::stable::Tensor;

namespace {

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
