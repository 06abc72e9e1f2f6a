// tinygpt::int8_linear_amx: int8_linear's math (matmul.cpp) on Intel's AMX tiles, for CPUs that have them
// (tinygpt.kernels builds it with AMX flags there; elsewhere the op exists and refuses).
//
// Why: a tile instruction multiplies 16 rows of x by 16 output rows' 64 weights (16,384 int8 products) at once,
// where a 512-bit VNNI instruction does 64. The sums are exact int32, as VNNI's, and the same float operations
// follow per output (dot * (w_scale * x_scale) + b, fused), so a row gets int8_linear's exact bits.
//
// Layout: w is (N, K) int8 in tiles of 16 output rows: for each, for each 4 columns of K, the 16 rows' 4 weights
// side by side (64 bytes), so one tile operand (64 columns of K) is 1 KB of contiguous memory. N % 16 == 0,
// K % 64 == 0 (the caller pads N).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

#include "amx.h"
#include "rows.h"

using torch::stable::Tensor;

namespace {

#ifdef TINYGPT_AMX
// y[m0..m0+15 (those < M), outputs n0..n0+15 (those < n)] from the tile of int32 sums in `sums`.
void scale_tile(const int32_t* sums, const QuantizedRows& xq, int64_t m0, int64_t M, const float* w_scale,
                const float* bias, float* y, int64_t n0, int64_t n) {
    const __m512 ws = _mm512_loadu_ps(w_scale + n0);
    const __m512 b = bias ? _mm512_loadu_ps(bias + n0) : _mm512_setzero_ps();
    const __mmask16 keep = n0 + 16 <= n ? 0xFFFF : static_cast<__mmask16>((1u << (n - n0)) - 1);
    for (int64_t r = 0; r < 16 && m0 + r < M; r++) {
        const __m512 dots = _mm512_cvtepi32_ps(_mm512_loadu_si512(sums + 16 * r));
        const __m512 out = _mm512_fmadd_ps(dots, _mm512_mul_ps(ws, _mm512_set1_ps(xq.scale[m0 + r])), b);
        _mm512_mask_storeu_ps(y + (m0 + r) * n + n0, keep, out);
    }
}

// Rows m < M of x times the 16 weight rows at w0 (K/4 runs of 64 bytes): their int32 sums, 16 per row, into
// `sums`. dpbusd's first operand is unsigned: it multiplies x + 128 (xu, 0..255) and subtracts 128 * sum(w).
void dot16(const uint8_t* xu, int64_t M, const int8_t* w0, int64_t K, int32_t* sums) {
    constexpr int kChains = 4;  // independent sums, so dpbusd's latency overlaps (K % 16 == 0)
    const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
    __m512i offset[kChains], acc[kTileRows - 1][kChains];
    for (int c = 0; c < kChains; c++) {
        offset[c] = _mm512_setzero_si512();
        for (int64_t m = 0; m < M; m++) acc[m][c] = _mm512_setzero_si512();
    }
    for (int64_t k = 0; k < K; k += 4 * kChains) {
        for (int c = 0; c < kChains; c++) {
            const __m512i wv = _mm512_loadu_si512(w0 + 16 * (k + 4 * c));
            offset[c] = _mm512_dpbusd_epi32(offset[c], bias, wv);
            for (int64_t m = 0; m < M; m++) {
                int32_t quad;
                std::memcpy(&quad, xu + m * K + k + 4 * c, 4);
                acc[m][c] = _mm512_dpbusd_epi32(acc[m][c], _mm512_set1_epi32(quad), wv);
            }
        }
    }
    const __m512i off = _mm512_add_epi32(_mm512_add_epi32(offset[0], offset[1]), _mm512_add_epi32(offset[2], offset[3]));
    for (int64_t m = 0; m < M; m++) {
        const __m512i a = _mm512_add_epi32(_mm512_add_epi32(acc[m][0], acc[m][1]), _mm512_add_epi32(acc[m][2], acc[m][3]));
        _mm512_storeu_si512(sums + 16 * m, _mm512_sub_epi32(a, off));
    }
}

Tensor int8_linear_amx(Tensor x, Tensor w, Tensor w_scale, std::optional<Tensor> bias, int64_t n) {
    STD_TORCH_CHECK(amx_permitted(), "int8_linear_amx: the OS refused AMX to this process");
    STD_TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.is_contiguous() && w.is_contiguous(),
                    "int8_linear_amx: x (M, K) and w (N, K) must be contiguous matrices");
    const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
    STD_TORCH_CHECK(w.size(1) == K && K % 64 == 0 && N % 16 == 0 && 0 < n && n <= N,
                    "int8_linear_amx: K % 64 and N % 16 must be 0, and 0 < n <= N");
    STD_TORCH_CHECK(x.scalar_type() == torch::headeronly::ScalarType::Float &&
                    w.scalar_type() == torch::headeronly::ScalarType::Char &&
                    w_scale.scalar_type() == torch::headeronly::ScalarType::Float,
                    "int8_linear_amx: x and w_scale must be float32, w int8");
    const int8_t* wp = w.const_data_ptr<int8_t>();
    const float* sp = w_scale.const_data_ptr<float>();
    const float* bp = bias.has_value() ? bias->const_data_ptr<float>() : nullptr;
    Tensor y = torch::stable::new_empty(x, {M, n});
    float* yp = y.mutable_data_ptr<float>();
    const int64_t rows = M < kTileRows ? M : (M + 15) / 16 * 16;  // whole tiles of x
    const QuantizedRows xq(x.const_data_ptr<float>(), M, K, false, rows);
    const int8_t* xp = xq.q.data();

    const int threads = static_cast<int>(std::min<int64_t>(torch::stable::get_num_threads(), N / 16));
    if (M < kTileRows) {
        std::vector<uint8_t> xu(M * K);
        for (int64_t i = 0; i < M * K; i++) xu[i] = static_cast<uint8_t>(xp[i] + 128);
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t n0 = 0; n0 < N; n0 += 16) {
            alignas(64) int32_t sums[256];
            dot16(xu.data(), M, wp + n0 * K, K, sums);
            scale_tile(sums, xq, 0, M, sp, bp, yp, n0, n);
        }
        return y;
    }
#pragma omp parallel num_threads(threads)
    {
        const TileConfig config;
        _tile_loadconfig(&config);
        alignas(64) int32_t sums[2][256];
#pragma omp for schedule(static)
        for (int64_t t = 0; t < N / 32 + N % 32 / 16; t++) {  // pairs of 16 outputs, and a last single one
            const int64_t n0 = 32 * t, pair = n0 + 32 <= N;
            const int8_t* w0 = wp + n0 * K;
            for (int64_t m0 = 0; m0 < rows; m0 += 16) {
                _tile_zero(0);
                _tile_zero(1);
                for (int64_t k = 0; k < K; k += 64) {
                    _tile_loadd(2, xp + m0 * K + k, K);
                    _tile_loadd(3, w0 + 16 * k, 64);
                    _tile_dpbssd(0, 2, 3);
                    if (pair) {
                        _tile_loadd(4, w0 + 16 * K + 16 * k, 64);
                        _tile_dpbssd(1, 2, 4);
                    }
                }
                _tile_stored(0, sums[0], 64);
                scale_tile(sums[0], xq, m0, M, sp, bp, yp, n0, n);
                if (pair && n0 + 16 < n) {
                    _tile_stored(1, sums[1], 64);
                    scale_tile(sums[1], xq, m0, M, sp, bp, yp, n0 + 16, n);
                }
            }
        }
        _tile_release();
    }
    return y;
}

#else
Tensor int8_linear_amx(Tensor, Tensor, Tensor, std::optional<Tensor>, int64_t) {
    STD_TORCH_CHECK(false, "int8_linear_amx: these kernels were built without AMX");
    return {};
}
#endif
}  // namespace

// For tinygpt.kernels (ctypes): 1 if int8_linear_amx runs here (built for AMX, and the OS allows it).
extern "C" int tinygpt_amx_ready() {
#ifdef TINYGPT_AMX
    return amx_permitted() ? 1 : 0;
#else
    return 0;
#endif
}

STABLE_TORCH_LIBRARY_FRAGMENT(tinygpt, m) {
    m.def("int8_linear_amx(Tensor x, Tensor w, Tensor w_scale, Tensor? bias, int n) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(tinygpt, CPU, m) {
    m.impl("int8_linear_amx", TORCH_BOX(&int8_linear_amx));
}
