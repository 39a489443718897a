/* AArch64 NEON decoder: the 32 lanes are eight registers of 4 states.  Same
 * bytes as rans_scalar.c; only the hot loop lives here, the tail goes through
 * the shared checked scalar code.
 *
 * NEON has no gather: the table entries are fetched with scalar loads, two
 * lane indices per 64-bit move out of the vector register, masked there (each
 * lane's table has its own pointer), and the entries are paired back the same
 * way.  The arithmetic and the renormalisation stay in vectors: a compare
 * gives the lanes below L, and multiplies by a row picked by that lane mask
 * move the next words into exactly those lanes, in lane order.
 *
 * Why multiplies and not a byte shuffle (tbl): measured only under qemu-user
 * 7.2 (TCG on an x86 host, one thread, ggzip-bench on a ggzip SmolLM2-135M
 * Q4_1, decoded MB/s, median of 3 in-process and max of 3 interleaved runs);
 * qemu speed is a proxy until real ARM hardware is measured.  qemu runs tbl
 * as an out-of-line helper (~20 ns each in a microbenchmark, against ~0.5 ns
 * for a vector add; crc32cx is a helper too, ~25 ns), eight a step:
 *                        cortex-a76   cortex-a53   loop insns / 32 symbols
 *   scalar kernel           96          93
 *   tbl (before)            74          75          301
 *   tbl, these lookups      76          75          298
 *   shifts (ushl)           78          89          382
 *   multiplies (this)      105         107          356
 * So under qemu this is ~1.1x scalar, not the 2x hoped for: the CRC alone
 * (4 crc32cx helpers a step, ~3 ns a decoded byte) is a quarter of the
 * scalar time, and the 32 table loads (each address cleaned of its tag
 * byte, ~11 host instructions) and the vector ops (each a round trip
 * through qemu's register file in memory) take most of the rest.  On real
 * cores the multiplies cost instructions (18% more than tbl) and multiplier
 * issue slots; measure there before keeping them. */
#include "internal.h"

#include <arm_neon.h>

/* The chunk's CRC-32C is taken in the decode loop, 32 bytes a step, on the
 * integer pipes the vector loop leaves idle, as the x86 loops do
 * (ggz_crc_step32 in internal.h, where it saved a separate pass's 10-12%; not
 * yet measured on ARM hardware, qemu cannot tell).  The CRC instructions are mandatory from
 * ARMv8.1 and optional in ARMv8.0: a baseline build asks the kernel, and
 * without them (or off Linux) the whole stream goes through ggz_crc32c. */
#if defined(__ARM_FEATURE_CRC32) || (defined(__GNUC__) && defined(__linux__))
#include <arm_acle.h>
#define NEON_LOOP_CRC 1
#if defined(__ARM_FEATURE_CRC32)
#define CRC_TARGET
static int crc_hw(void) { return 1; }
#else
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#define CRC_TARGET __attribute__((target("+crc")))
static int crc_hw(void) { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
#endif

/* not always_inline: the loop without CRC instructions must not inline it */
CRC_TARGET static inline void crc_step32(uint32_t * c, const uint8_t ** q, const uint8_t * end)
{
    if (GGZ_LIKELY(end - *q >= 32)) {
        uint32_t v = *c;
        v = __crc32cd(v, ggz_rd64(*q));
        v = __crc32cd(v, ggz_rd64(*q + 8));
        v = __crc32cd(v, ggz_rd64(*q + 16));
        v = __crc32cd(v, ggz_rd64(*q + 24));
        *c = v;
        *q += 32;
    }
}
#endif

/* For each 4-bit mask m of renormalising lanes, the multipliers that put word
 * k = popcount(m & ((1 << l) - 1)) of the 8-byte window in the top half of
 * lane l (bit l of m), mod 2^32: 1 << 16 or 1 times A (words 0, 1 in every
 * lane) or B (words 2, 3), 0 for the other; then >> 16 leaves the word zero
 * extended, and 0 in the other lanes.  Row 2 multiplies the state: by 1 << 16
 * where the lane renormalises (x < L, so it fits), else by 1. */
#define POP4(m)     (((m) & 1) + ((m) >> 1 & 1) + ((m) >> 2 & 1) + ((m) >> 3 & 1))
#define K(m, l)     (((m) >> (l) & 1) ? POP4((m) & ((1 << (l)) - 1)) : 4)
#define MA(m, l)    (K(m, l) == 0 ? 0x10000u : K(m, l) == 1 ? 1u : 0u)
#define MB(m, l)    (K(m, l) == 2 ? 0x10000u : K(m, l) == 3 ? 1u : 0u)
#define MX(m, l)    (((m) >> (l) & 1) ? 0x10000u : 1u)
#define ROW(m)      { MA(m, 0), MA(m, 1), MA(m, 2), MA(m, 3), MB(m, 0), MB(m, 1), MB(m, 2), MB(m, 3), \
                      MX(m, 0), MX(m, 1), MX(m, 2), MX(m, 3), 0, 0, 0, 0 }
static const uint32_t expand_mul[16][16] = {
    ROW(0), ROW(1), ROW(2),  ROW(3),  ROW(4),  ROW(5),  ROW(6),  ROW(7),
    ROW(8), ROW(9), ROW(10), ROW(11), ROW(12), ROW(13), ROW(14), ROW(15),
};
/* lane l's weight in the mask sum: its bit, plus 32 so that sum >> 4 is the
 * bytes the lanes below L take (2 each); loaded rather than brace-initialised:
 * MSVC's NEON types are not arrays */
static const uint32_t lane_weight[4] = { 1 + 32, 2 + 32, 4 + 32, 8 + 32 };

/* the entries of the 4 lanes of x, lane l's from tb[l] */
GGZ_INLINE uint32x4_t gather4(const uint32_t * const tb[4], uint32x4_t x)
{
    const uint64x2_t i = vreinterpretq_u64_u32(x);
    const uint64_t lo = vgetq_lane_u64(i, 0), hi = vgetq_lane_u64(i, 1);
    const uint64_t a = tb[0][lo & GGZ_PROB_MASK] | (uint64_t)tb[1][lo >> 32 & GGZ_PROB_MASK] << 32;
    const uint64_t b = tb[2][hi & GGZ_PROB_MASK] | (uint64_t)tb[3][hi >> 32 & GGZ_PROB_MASK] << 32;
    return vreinterpretq_u32_u64(vcombine_u64(vcreate_u64(a), vcreate_u64(b)));
}

/* One quarter-step: 4 lanes decode a symbol (entry returned in *e) and
 * renormalise from *pp. */
GGZ_INLINE uint32x4_t step4(uint32x4_t x, const uint32_t * const tb[4],
                            uint32x4_t * e, const uint8_t ** pp)
{
    const uint32x4_t mask = vdupq_n_u32(GGZ_PROB_MASK);
    const uint32x4_t bit = vld1q_u32(lane_weight);
    const uint32x4_t t = gather4(tb, x);
    *e = t;
    /* x = f * (x >> 12) + bias */
    x = vmlaq_u32(vandq_u32(vshrq_n_u32(t, 8), mask), vshrq_n_u32(t, 20), vshrq_n_u32(x, GGZ_PROB_BITS));
    const uint32x4_t low = vcltq_u32(x, vdupq_n_u32(GGZ_RANS_L));
    const unsigned sum = vaddvq_u32(vandq_u32(low, bit));
    /* 8 bytes (the most 4 lanes can take), so a step never reads past its 64 */
    uint32x4_t a = vdupq_n_u32(ggz_rd32(*pp)), b = vdupq_n_u32(ggz_rd32(*pp + 4));
    const uint32_t * r = expand_mul[sum & 15];
#if defined(__GNUC__)
    /* hide the dups, or GCC multiplies by element: a helper call in qemu */
    __asm__("" : "+w"(a), "+w"(b));
#endif
    const uint32x4_t w = vshrq_n_u32(vmlaq_u32(vmulq_u32(a, vld1q_u32(r)), b, vld1q_u32(r + 4)), 16);
    *pp += sum >> 4;
    return vmlaq_u32(w, x, vld1q_u32(r + 8)); /* x << 16 | w or x */
}

/* ggz_decode_fn; with loop_crc the loop takes the CRC, else the pass at the
 * end takes it all.  The CRC pointer q, at 32 bytes a step against the words'
 * 2 * 32 * entropy / 16 on average, ends before them or keeps pace. */
GGZ_INLINE int decode(const uint8_t * src, size_t src_size, uint8_t * dst, size_t n, size_t dst_stride,
                      const ggz_dtab * tabs, unsigned period, uint32_t * crc, const int loop_crc)
{
    if (!n) {
        *crc = ggz_crc32c(*crc, src, src_size);
        return src_size ? GGZ_ERR_CORRUPT : GGZ_OK;
    }
    uint32_t x[GGZ_LANES];
    int err = ggz_read_states(x, src, src_size);
    if (err) return err;

    const uint8_t * p = src + GGZ_STATE_BYTES;
    const uint8_t * const end = src + src_size;
    const uint8_t * q = src;        /* bytes before q are in the CRC c */
    uint32_t c = ~*crc;
    const size_t steps = n / GGZ_LANES;
    /* lane l reads table l mod period (period divides 4, so lane l of every
     * register of 4 lanes reads tb[l]) */
    const uint32_t * const tb[4] = { tabs->slot[0], tabs->slot[1 & (period - 1)], tabs->slot[2 & (period - 1)],
                                     tabs->slot[3 & (period - 1)] };

    uint32x4_t x0 = vld1q_u32(x),      x1 = vld1q_u32(x + 4),  x2 = vld1q_u32(x + 8),  x3 = vld1q_u32(x + 12);
    uint32x4_t x4 = vld1q_u32(x + 16), x5 = vld1q_u32(x + 20), x6 = vld1q_u32(x + 24), x7 = vld1q_u32(x + 28);
    size_t k = 0;
    /* a step reads at most 32 words: with 64 bytes left no check is needed */
    for (; k < steps && end - p >= 2 * GGZ_LANES; k++) {
        uint8_t * out = dst + k * dst_stride;
#ifdef NEON_LOOP_CRC
        if (loop_crc) crc_step32(&c, &q, end);
#endif
        /* the entries narrowed as they come: fewer registers live, fewer spills */
        uint32x4_t e0, e1;
        x0 = step4(x0, tb, &e0, &p);
        x1 = step4(x1, tb, &e1, &p);
        const uint16x8_t h0 = vuzp1q_u16(vreinterpretq_u16_u32(e0), vreinterpretq_u16_u32(e1));
        x2 = step4(x2, tb, &e0, &p);
        x3 = step4(x3, tb, &e1, &p);
        const uint16x8_t h1 = vuzp1q_u16(vreinterpretq_u16_u32(e0), vreinterpretq_u16_u32(e1));
        vst1q_u8(out, vuzp1q_u8(vreinterpretq_u8_u16(h0), vreinterpretq_u8_u16(h1)));
        x4 = step4(x4, tb, &e0, &p);
        x5 = step4(x5, tb, &e1, &p);
        const uint16x8_t h2 = vuzp1q_u16(vreinterpretq_u16_u32(e0), vreinterpretq_u16_u32(e1));
        x6 = step4(x6, tb, &e0, &p);
        x7 = step4(x7, tb, &e1, &p);
        const uint16x8_t h3 = vuzp1q_u16(vreinterpretq_u16_u32(e0), vreinterpretq_u16_u32(e1));
        vst1q_u8(out + 16, vuzp1q_u8(vreinterpretq_u8_u16(h2), vreinterpretq_u8_u16(h3)));
    }
    *crc = ggz_crc32c(~c, q, (size_t)(end - q));
    vst1q_u32(x, x0);      vst1q_u32(x + 4, x1);  vst1q_u32(x + 8, x2);  vst1q_u32(x + 12, x3);
    vst1q_u32(x + 16, x4); vst1q_u32(x + 20, x5); vst1q_u32(x + 24, x6); vst1q_u32(x + 28, x7);
    for (; k < steps; k++)
        if (ggz_decode_lanes_checked(x, &p, end, dst + k * dst_stride, 0, GGZ_LANES, tabs, period))
            return GGZ_ERR_CORRUPT;
    return ggz_decode_finish(x, p, end, dst + steps * dst_stride, (unsigned)(n % GGZ_LANES), tabs, period);
}

#ifdef NEON_LOOP_CRC
CRC_TARGET static int decode_loop_crc(const uint8_t * src, size_t src_size, uint8_t * dst, size_t n, size_t dst_stride,
                                      const ggz_dtab * tabs, unsigned period, uint32_t * crc)
{
    return decode(src, src_size, dst, n, dst_stride, tabs, period, crc, 1);
}
#endif

int ggz_decode_neon(const uint8_t * src, size_t src_size, uint8_t * dst, size_t n, size_t dst_stride,
                    const ggz_dtab * tabs, unsigned period, uint32_t * crc)
{
#ifdef NEON_LOOP_CRC
    if (crc_hw()) return decode_loop_crc(src, src_size, dst, n, dst_stride, tabs, period, crc);
#endif
    return decode(src, src_size, dst, n, dst_stride, tabs, period, crc, 0);
}
