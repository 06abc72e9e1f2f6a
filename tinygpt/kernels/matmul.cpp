// Our CPU matmul kernels, for x86 CPUs with AVX2 (tinygpt.kernels builds them with topk.cpp and
// attention.cpp; tinygpt.kernels.quantize packs the weights):
//   tinygpt::int8_linear: y = x @ (w * w_scale).T + b for fp32 activations x and int8 weights w;
//   tinygpt::int4_linear: y = x @ w.T for 4-bit weights with a scale and an offset per group of 64.
// Both write only the first n outputs of each row (the weights' rows are padded to a multiple of 4).
//
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
//
// Built with AVX-512 VNNI (kernels.py's flags for such a CPU), several rows of x go through each pass over a block's
// weights in 512-bit registers (dot4_512, dot4_int4_512): the same integer sums and float operations per row, so a
// row's numbers do not depend on the batch (bench/cpu_kernels.py measures the gain).
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

#include "dots.h"
#include "rows.h"

using torch::stable::Tensor;

namespace {


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
        int8_block(xq.q.data(), xq.scale.data(), M, K, wp + n0 * K, ws, b,
                   [&](int64_t m, __m128 v) { store4(yp + m * n, n0, n, v); });
    }
    return y;
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
        int4_block(xq.q.data(), xq.group_sum.data(), xq.scale.data(), M, K, cp + n0 * K / 2, sp + n0 * G * 2,
                   [&](int64_t m, __m128 v) { store4(yp + m * n, n0, n, v); });
    }
    return y;
}
}  // namespace

STABLE_TORCH_LIBRARY(tinygpt, m) {
    m.def("int8_linear(Tensor x, Tensor w, Tensor w_scale, Tensor? bias, int n) -> Tensor");
    m.def("int4_linear(Tensor x, Tensor codes, Tensor scales, int n) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(tinygpt, CPU, m) {
    m.impl("int8_linear", TORCH_BOX(&int8_linear));
    m.impl("int4_linear", TORCH_BOX(&int4_linear));
}
