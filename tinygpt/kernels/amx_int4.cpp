// tinygpt::int4_linear_amx: int4_linear's math (matmul.cpp) on Intel's AMX tiles, for CPUs that have them
// (tinygpt.kernels builds it with AMX flags there; elsewhere the op exists and refuses). Why tiles, and
// where VNNI takes over: amx.cpp.
//
// int4: for each tile of 16 output rows and each group of 64 columns, the tile operand's 16 runs of 64 bytes
// (run i: the 16 rows' codes for columns 4i..4i+3 of the group) packed two to a byte: 8 runs of 64 bytes, run
// i's codes in the low nibbles and run i + 8's in the high; then per tile and group, 16 fp16 scales and 16
// offsets. Each group's dot products are exact int32 (tiles, or VNNI below kTileRows rows), and every row's
// floats follow the same steps in the same order: acc += dot * scale per group, then (acc + sum over groups of
// offset * sum(x's codes in the group)) * x's scale.
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
// The 16 weight rows' codes for one group, as the tile operand (16 runs of 64 bytes) into `out`.
void unpack_group(const uint8_t* packed, uint8_t* out) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int i = 0; i < 8; i++) {
        _mm_prefetch(reinterpret_cast<const char*>(packed + kAmxPrefetch + 64 * i), _MM_HINT_T0);
        const __m512i v = _mm512_loadu_si512(packed + 64 * i);
        _mm512_store_si512(out + 64 * i, _mm512_and_si512(v, low));
        _mm512_store_si512(out + 64 * (i + 8), _mm512_and_si512(_mm512_srli_epi16(v, 4), low));
    }
}

// acc[r] += dots[r] * this group's 16 scales, for the tile's rows r < R.
template <int R>
void add_group(__m512* acc, const int32_t* dots, const uint16_t* group_scales) {
    const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(group_scales)));
    for (int r = 0; r < R; r++)
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(dots + 16 * r)), scale, acc[r]);
}

// C (<= 4) groups of 64 columns of a tile of 16 rows of x (x: the first group, row stride K) times the weights'
// unpacked groups: each group's exact int32 sums into dots[j]. Tiles 0-3 hold the sums, so C products are in
// flight at once (one product's latency is several times its throughput); 4-5 x, 6-7 the weights.
template <int C>
void tile_groups(const int8_t* x, int64_t K, const uint8_t* unpacked, int32_t (*dots)[256]) {
// (gcc's tile intrinsics paste the tile number into the assembly: literals only)
    _tile_zero(0);
    _tile_loadd(4, x, K);
    _tile_loadd(6, unpacked, 64);
    _tile_dpbsud(0, 4, 6);
    if constexpr (C > 1) {
        _tile_zero(1);
        _tile_loadd(5, x + 64, K);
        _tile_loadd(7, unpacked + 1024, 64);
        _tile_dpbsud(1, 5, 7);
    }
    if constexpr (C > 2) {
        _tile_zero(2);
        _tile_loadd(4, x + 128, K);
        _tile_loadd(6, unpacked + 2048, 64);
        _tile_dpbsud(2, 4, 6);
    }
    if constexpr (C > 3) {
        _tile_zero(3);
        _tile_loadd(5, x + 192, K);
        _tile_loadd(7, unpacked + 3072, 64);
        _tile_dpbsud(3, 5, 7);
    }
    _tile_stored(0, dots[0], 64);
    if constexpr (C > 1) _tile_stored(1, dots[1], 64);
    if constexpr (C > 2) _tile_stored(2, dots[2], 64);
    if constexpr (C > 3) _tile_stored(3, dots[3], 64);
}

// add_group for the first R rows (4, 8, 12 or 16).
void add_groups(int R, __m512* acc, const int32_t* dots, const uint16_t* group_scales) {
    if (R == 4) add_group<4>(acc, dots, group_scales);
    else if (R == 8) add_group<8>(acc, dots, group_scales);
    else if (R == 12) add_group<12>(acc, dots, group_scales);
    else add_group<16>(acc, dots, group_scales);
}

// Rows m0.. (those < M) of y for the 16 outputs at n0, from their accumulated products.
void finish_int4(const __m512* acc, const QuantizedRows& xq, int64_t m0, int64_t M, int64_t G,
                 const uint16_t* tile_scales, float* y, int64_t n0, int64_t n) {
    const __mmask16 keep = n0 + 16 <= n ? 0xFFFF : static_cast<__mmask16>((1u << (n - n0)) - 1);
    const int64_t R = std::min<int64_t>(16, M - m0);
    __m512 offsets[16];
    for (int64_t r = 0; r < R; r++) offsets[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        const __m512 offset = _mm512_cvtph_ps(_mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(tile_scales + 32 * g + 16)));
        for (int64_t r = 0; r < R; r++)
            offsets[r] = _mm512_fmadd_ps(offset, _mm512_set1_ps(xq.group_sum[(m0 + r) * G + g]), offsets[r]);
    }
    for (int64_t r = 0; r < R; r++) {
        const __m512 out = _mm512_mul_ps(_mm512_add_ps(acc[r], offsets[r]), _mm512_set1_ps(xq.scale[m0 + r]));
        _mm512_mask_storeu_ps(y + (m0 + r) * n + n0, keep, out);
    }
}

// The 16 outputs at `packed` (a tile of int4 weights) for R < kTileRows rows of x (int8, row stride K): per group
// VNNI, the codes (0..15) as the unsigned operand, x's 4 columns broadcast; the group's 16 runs summed as a tree
// (exact int32 either way), then add_group's float step.
template <int R>
void rows_int4(const int8_t* x, int64_t K, int64_t G, const uint8_t* packed, const uint16_t* tile_scales,
               __m512* acc) {
    const __m512i low = _mm512_set1_epi8(0x0F), zero = _mm512_setzero_si512();
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        const uint8_t* wg = packed + 512 * g;
        __m512i part[R][8];
        for (int i = 0; i < 8; i++) {
            _mm_prefetch(reinterpret_cast<const char*>(wg + kAmxPrefetch + 64 * i), _MM_HINT_T0);
            const __m512i v = _mm512_loadu_si512(wg + 64 * i);
            const __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
            for (int r = 0; r < R; r++) {
                int32_t a, b;
                std::memcpy(&a, x + r * K + 64 * g + 4 * i, 4);
                std::memcpy(&b, x + r * K + 64 * g + 4 * (i + 8), 4);
                part[r][i] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo, _mm512_set1_epi32(a)), hi,
                                                 _mm512_set1_epi32(b));
            }
        }
        const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile_scales + 32 * g)));
        for (int r = 0; r < R; r++) {
            for (int w = 4; w > 0; w /= 2)
                for (int i = 0; i < w; i++) part[r][i] = _mm512_add_epi32(part[r][i], part[r][i + w]);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(part[r][0]), scale, acc[r]);
        }
    }
}

Tensor int4_linear_amx(Tensor x, Tensor codes, Tensor scales, int64_t n) {
    STD_TORCH_CHECK(amx_permitted(), "int4_linear_amx: the OS refused AMX to this process");
    STD_TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && codes.is_contiguous() && scales.is_contiguous(),
                    "int4_linear_amx: x (M, K), codes and scales must be contiguous");
    const int64_t M = x.size(0), K = x.size(1), N = codes.size(0), G = K / 64;
    STD_TORCH_CHECK(codes.dim() == 2 && codes.size(1) * 2 == K && K % 64 == 0 && N % 16 == 0 &&
                    scales.numel() == N * G * 2 && 0 < n && n <= N,
                    "int4_linear_amx: codes (N, K/2), K % 64 and N % 16 must be 0, and 0 < n <= N");
    STD_TORCH_CHECK(x.scalar_type() == torch::headeronly::ScalarType::Float &&
                    codes.scalar_type() == torch::headeronly::ScalarType::Byte &&
                    scales.scalar_type() == torch::headeronly::ScalarType::Half,
                    "int4_linear_amx: x must be float32, codes uint8, scales float16");
    const uint8_t* cp = codes.const_data_ptr<uint8_t>();
    const uint16_t* sp = static_cast<const uint16_t*>(scales.const_data_ptr());
    Tensor y = torch::stable::new_empty(x, {M, n});
    float* yp = y.mutable_data_ptr<float>();
    const int64_t rows = M < kTileRows ? M : (M + 15) / 16 * 16;
    const QuantizedRows xq(x.const_data_ptr<float>(), M, K, true, rows);
    const int8_t* xp = xq.q.data();
    const int threads = static_cast<int>(std::min<int64_t>(torch::stable::get_num_threads(), N / 16));
    if (M < kTileRows) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t n0 = 0; n0 < N; n0 += 16) {
            __m512 acc[kTileRows - 1];
            const uint8_t* tile = cp + n0 * K / 2;
            const uint16_t* tile_scales = sp + n0 * G * 2;
            if (M == 1) rows_int4<1>(xp, K, G, tile, tile_scales, acc);
            else if (M == 2) rows_int4<2>(xp, K, G, tile, tile_scales, acc);
            else rows_int4<3>(xp, K, G, tile, tile_scales, acc);
            finish_int4(acc, xq, 0, M, G, tile_scales, yp, n0, n);
        }
        return y;
    }
#pragma omp parallel num_threads(threads)
    {
        const TileConfig config;
        _tile_loadconfig(&config);
        std::vector<uint8_t> unpacked_(G * 1024 + 64);
        uint8_t* unpacked = unpacked_.data() + (64 - reinterpret_cast<uintptr_t>(unpacked_.data()) % 64) % 64;
        alignas(64) int32_t dots[4][256];
#pragma omp for schedule(static)
        for (int64_t n0 = 0; n0 < N; n0 += 16) {
            const uint16_t* tile_scales = sp + n0 * G * 2;
            for (int64_t g = 0; g < G; g++) unpack_group(cp + n0 * K / 2 + 512 * g, unpacked + 1024 * g);
            for (int64_t m0 = 0; m0 < rows; m0 += 16) {
                const int R = static_cast<int>(std::min<int64_t>(16, (M - m0 + 3) / 4 * 4));  // rows, in fours
                __m512 acc[16];
                for (int r = 0; r < 16; r++) acc[r] = _mm512_setzero_ps();
                for (int64_t g = 0; g < G; g += 4) {
                    const int64_t count = std::min<int64_t>(4, G - g);
                    const int8_t* xg = xp + m0 * K + 64 * g;
                    const uint8_t* wg = unpacked + 1024 * g;
                    if (count == 4) tile_groups<4>(xg, K, wg, dots);
                    else if (count == 3) tile_groups<3>(xg, K, wg, dots);
                    else if (count == 2) tile_groups<2>(xg, K, wg, dots);
                    else tile_groups<1>(xg, K, wg, dots);
                    for (int64_t j = 0; j < count; j++) add_groups(R, acc, dots[j], tile_scales + 32 * (g + j));
                }
                finish_int4(acc, xq, m0, M, G, tile_scales, yp, n0, n);
            }
        }
        _tile_release();
    }
    return y;
}
#else
Tensor int4_linear_amx(Tensor, Tensor, Tensor, int64_t) {
    STD_TORCH_CHECK(false, "int4_linear_amx: these kernels were built without AMX");
    return {};
}
#endif
}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(tinygpt, m) {
    m.def("int4_linear_amx(Tensor x, Tensor codes, Tensor scales, int n) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(tinygpt, CPU, m) {
    m.impl("int4_linear_amx", TORCH_BOX(&int4_linear_amx));
}
