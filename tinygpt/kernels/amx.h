// What the AMX kernels (amx.cpp: int8, amx_int4.cpp: int4) share: the permission to use the
// tiles, their configuration, and where VNNI takes over from them. TINYGPT_AMX: built with AMX (kernels.py's
// flags on a CPU that has it).
#pragma once
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>

#if defined(__AMX_INT8__) && defined(__AMX_TILE__) && defined(__AVX512F__)
#define TINYGPT_AMX 1
namespace {

// Linux hands out the tiles' 8 KB of state only to a process that asks (else the first tile instruction faults).
bool amx_permitted() {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    static const bool ok = syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
    return ok;
}

// Eight tiles of 16 rows by 64 bytes. int8: tiles 0-1 int32 sums (16 rows of x by 16 outputs each), 2 16 rows of
// x by 64 columns, 3-4 weights; int4: see tile_groups.
struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
    uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// Below this many rows of x, 512-bit VNNI on the same layout is faster than the tiles (each call's first tile
// instruction costs about 4 us): one pass over a tile of weights for each row, the row's 4 columns broadcast
// against the 16 rows' 4 weights. The same exact sums.
constexpr int64_t kTileRows = 4;
constexpr int64_t kAmxPrefetch = 2048;  // bytes ahead in a stream of packed weights

}  // namespace
#endif
