/* AArch64 NEON decoder: the 32 lanes are eight registers of 4 states.  Same
 * bytes as rans_scalar.c; only the hot loop lives here, the tail goes through
 * the shared checked scalar code.
 *
 * NEON has no gather: the table entries are fetched with scalar loads, two
 * lane indices per 64-bit move out of the vector register, and the entries
 * are paired back the same way.  The arithmetic and the renormalisation stay
 * in vectors: a compare gives the lanes below L, and a byte shuffle (tbl)
 * spreads the next words over exactly those lanes, in lane order.
 *
 * Under qemu-user 7.2 this loop decodes at ~0.75x the scalar kernel (tbl and
 * crc32cx are out-of-line helpers there, ~20-25 ns each).  A variant that
 * renormalised with multiplies by a mask-picked row instead of tbl reached
 * ~1.15x under qemu but took 18% more instructions and many more multiplier
 * slots: likely slower on a phone, so not kept until real hardware decides
 * (git history: "neon: renormalise with multiplies"; scripts/bench_arm.py). */
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

/* Byte shuffle for each 4-bit mask m of renormalising lanes: lane l (bit l of
 * m) takes word k = popcount(m & ((1 << l) - 1)) of the input, i.e. bytes 2k
 * and 2k + 1, zero extended; other lanes get zeros (tbl yields 0 for 0xFF). */
#define POP4(m)      (((m) & 1) + ((m) >> 1 & 1) + ((m) >> 2 & 1) + ((m) >> 3 & 1))
#define SRC(m, l, b) (((m) >> (l) & 1) ? 2 * POP4((m) & ((1 << (l)) - 1)) + (b) : 0xFF)
#define LANE(m, l)   SRC(m, l, 0), SRC(m, l, 1), 0xFF, 0xFF
#define ROW(m)       { LANE(m, 0), LANE(m, 1), LANE(m, 2), LANE(m, 3) }
static const uint8_t expand_lut[16][16] = {
    ROW(0), ROW(1), ROW(2),  ROW(3),  ROW(4),  ROW(5),  ROW(6),  ROW(7),
    ROW(8), ROW(9), ROW(10), ROW(11), ROW(12), ROW(13), ROW(14), ROW(15),
};
/* bytes consumed for each mask */
#define BYTES(m) (2 * POP4(m))
static const uint8_t consumed[16] = {
    BYTES(0), BYTES(1), BYTES(2),  BYTES(3),  BYTES(4),  BYTES(5),  BYTES(6),  BYTES(7),
    BYTES(8), BYTES(9), BYTES(10), BYTES(11), BYTES(12), BYTES(13), BYTES(14), BYTES(15),
};

/* loaded rather than brace-initialised: MSVC's NEON types are not arrays */
static const uint32_t lane_bit[4] = { 1, 2, 4, 8 };
static const uint32_t lane_index[4] = { 0, 1, 2, 3 };

/* tab[idx] for the 4 lanes of idx */
GGZ_INLINE uint32x4_t gather4(const uint32_t * tab, uint32x4_t idx)
{
    const uint64x2_t i = vreinterpretq_u64_u32(idx);
    const uint64_t lo = vgetq_lane_u64(i, 0), hi = vgetq_lane_u64(i, 1);
    const uint64_t a = tab[(uint32_t)lo] | (uint64_t)tab[lo >> 32] << 32;
    const uint64_t b = tab[(uint32_t)hi] | (uint64_t)tab[hi >> 32] << 32;
    return vreinterpretq_u32_u64(vcombine_u64(vcreate_u64(a), vcreate_u64(b)));
}

/* The lanes of x below L take the next words from *pp, in lane order. */
GGZ_INLINE uint32x4_t renorm4(uint32x4_t x, const uint8_t ** pp)
{
    const uint32x4_t bit = vld1q_u32(lane_bit);
    const uint32x4_t low = vcltq_u32(x, vdupq_n_u32(GGZ_RANS_L));
    const unsigned m = vaddvq_u32(vandq_u32(low, bit));
    /* 8 bytes (the most 4 lanes can take), so a step never reads past its 64 */
    const uint8x16_t words = vcombine_u8(vld1_u8(*pp), vdup_n_u8(0));
    const uint32x4_t w = vreinterpretq_u32_u8(vqtbl1q_u8(words, vld1q_u8(expand_lut[m])));
    *pp += consumed[m];
    return vbslq_u32(low, vorrq_u32(vshlq_n_u32(x, 16), w), x);
}

/* One quarter-step: 4 lanes decode a symbol (entry returned in *e) and
 * renormalise from *pp. */
GGZ_INLINE uint32x4_t step4(uint32x4_t x, uint32x4_t toff, const uint32_t * tab,
                            uint32x4_t * e, const uint8_t ** pp)
{
    const uint32x4_t mask = vdupq_n_u32(GGZ_PROB_MASK);
    const uint32x4_t t = gather4(tab, vaddq_u32(vandq_u32(x, mask), toff));
    *e = t;
    /* x = f * (x >> 12) + bias */
    return renorm4(vmlaq_u32(vandq_u32(vshrq_n_u32(t, 8), mask), vshrq_n_u32(t, 20), vshrq_n_u32(x, GGZ_PROB_BITS)), pp);
}

/* A trellis quarter-step (11-bit tables, class c's at c << 11).  S holds each
 * lane's state s = 2 hi + lo as hi << 11 | lo: hi is the class, so S above
 * the slot bits is the offset of the class's table, and GGZ_TCQ_NEXT is
 * s' = 2 (lo ^ b) + hi for the symbol's bit 1, b (the C tests check this
 * form against the table). */
GGZ_INLINE uint32x4_t step4_tcq(uint32x4_t x, uint32x4_t * S, const uint32_t * tab,
                                uint32x4_t * e, const uint8_t ** pp)
{
    const uint32x4_t mask = vdupq_n_u32(GGZ_PROB_MASK);    /* the entries' 12-bit bias field */
    const uint32x4_t t = gather4(tab, vbslq_u32(vdupq_n_u32((1u << GGZ_TCQ_PROB_BITS) - 1), x, *S));
    *e = t;
    const uint32x4_t hi = vandq_u32(veorq_u32(*S, vshrq_n_u32(t, 1)), vdupq_n_u32(1));
    *S = vsliq_n_u32(vshrq_n_u32(*S, GGZ_TCQ_PROB_BITS), hi, GGZ_TCQ_PROB_BITS);
    return renorm4(vmlaq_u32(vandq_u32(vshrq_n_u32(t, 8), mask), vshrq_n_u32(t, 20),
                             vshrq_n_u32(x, GGZ_TCQ_PROB_BITS)), pp);
}

/* low bytes of 16 entries, in lane order */
GGZ_INLINE uint8x16_t symbols16(uint32x4_t a, uint32x4_t b, uint32x4_t c, uint32x4_t d)
{
    return vcombine_u8(vmovn_u16(vcombine_u16(vmovn_u32(a), vmovn_u32(b))),
                       vmovn_u16(vcombine_u16(vmovn_u32(c), vmovn_u32(d))));
}

/* ggz_decode_fn; with loop_crc the loop takes the CRC, else the pass at the
 * end takes it all.  The CRC pointer q, at 32 bytes a step against the words'
 * 2 * 32 * entropy / 16 on average, ends before them or keeps pace. */
GGZ_INLINE int decode(const uint8_t * src, size_t src_size, uint8_t * dst, size_t n, size_t dst_stride,
                      const ggz_dtab * tabs, unsigned period, uint32_t * crc, const int loop_crc)
{
    uint32_t x[GGZ_LANES];
    const int r = ggz_stream_begin(src, src_size, n, 0, x, crc);
    if (r >= 0) return r;

    const uint8_t * p = src + GGZ_STATE_BYTES;
    const uint8_t * const end = src + src_size;
    const uint8_t * q = src;        /* bytes before q are in the CRC c */
    uint32_t c = ~*crc;
    const size_t steps = n / GGZ_LANES;
    /* lane l reads table l mod period (period divides 4, so every register
     * of 4 lanes has the same offsets into the [4][4096] slots) */
    const uint32x4_t toff = vshlq_n_u32(vandq_u32(vld1q_u32(lane_index), vdupq_n_u32(period - 1)), GGZ_PROB_BITS);
    const uint32_t * tab = tabs->slot[0];

    uint32x4_t x0 = vld1q_u32(x),      x1 = vld1q_u32(x + 4),  x2 = vld1q_u32(x + 8),  x3 = vld1q_u32(x + 12);
    uint32x4_t x4 = vld1q_u32(x + 16), x5 = vld1q_u32(x + 20), x6 = vld1q_u32(x + 24), x7 = vld1q_u32(x + 28);
    size_t k = 0;
    /* a step reads at most 32 words: with 64 bytes left no check is needed */
    for (; k < steps && end - p >= 2 * GGZ_LANES; k++) {
        uint8_t * out = dst + k * dst_stride;
#ifdef NEON_LOOP_CRC
        if (loop_crc) crc_step32(&c, &q, end);
#endif
        uint32x4_t e0, e1, e2, e3, e4, e5, e6, e7;
        x0 = step4(x0, toff, tab, &e0, &p);
        x1 = step4(x1, toff, tab, &e1, &p);
        x2 = step4(x2, toff, tab, &e2, &p);
        x3 = step4(x3, toff, tab, &e3, &p);
        x4 = step4(x4, toff, tab, &e4, &p);
        x5 = step4(x5, toff, tab, &e5, &p);
        x6 = step4(x6, toff, tab, &e6, &p);
        x7 = step4(x7, toff, tab, &e7, &p);
        vst1q_u8(out, symbols16(e0, e1, e2, e3));
        vst1q_u8(out + 16, symbols16(e4, e5, e6, e7));
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

/* Trellis-coded Q8_0 symbols (FORMAT.md section 2): the loop above with
 * per-lane table offsets from the trellis states; n is whole steps. */
GGZ_INLINE int decode_tcq(const uint8_t * src, size_t src_size, uint8_t * dst, size_t n, size_t dst_stride,
                          const ggz_dtab * tabs, uint32_t * crc, const int loop_crc)
{
    uint32_t x[GGZ_LANES], sv[GGZ_LANES];
    const int r = ggz_stream_begin(src, src_size, n, 1, x, crc);
    if (r >= 0) return r;
    const uint8_t * p = src + GGZ_STATE_BYTES;
    const uint8_t * const end = src + src_size;
    const uint8_t * q = src;
    uint32_t c = ~*crc;
    const size_t steps = n / GGZ_LANES;
    const uint32_t * tab = tabs->slot[0];
    uint32x4_t xs[8], S[8];
    for (int g = 0; g < 8; g++) { xs[g] = vld1q_u32(x + 4 * g); S[g] = vdupq_n_u32(0); }
    size_t k = 0;
    for (; k < steps && end - p >= 2 * GGZ_LANES; k++) {
        uint8_t * out = dst + k * dst_stride;
#ifdef NEON_LOOP_CRC
        if (loop_crc) crc_step32(&c, &q, end);
#endif
        uint32x4_t e[8];
        for (int g = 0; g < 8; g++) xs[g] = step4_tcq(xs[g], &S[g], tab, &e[g], &p);
        vst1q_u8(out, symbols16(e[0], e[1], e[2], e[3]));
        vst1q_u8(out + 16, symbols16(e[4], e[5], e[6], e[7]));
    }
    *crc = ggz_crc32c(~c, q, (size_t)(end - q));
    uint8_t st[GGZ_LANES];
    for (int g = 0; g < 8; g++) { vst1q_u32(x + 4 * g, xs[g]); vst1q_u32(sv + 4 * g, S[g]); }
    for (unsigned l = 0; l < GGZ_LANES; l++) st[l] = (uint8_t)(2 * (sv[l] >> GGZ_TCQ_PROB_BITS) + (sv[l] & 1));
    if (ggz_decode_tcq_lanes(x, st, &p, end, dst + k * dst_stride, steps - k, dst_stride, tabs))
        return GGZ_ERR_CORRUPT;
    return ggz_decode_finish(x, p, end, dst, 0, tabs, 2);
}

#ifdef NEON_LOOP_CRC
CRC_TARGET static int decode_tcq_loop_crc(const uint8_t * src, size_t src_size, uint8_t * dst, size_t n,
                                          size_t dst_stride, const ggz_dtab * tabs, uint32_t * crc)
{
    return decode_tcq(src, src_size, dst, n, dst_stride, tabs, crc, 1);
}
#endif

int ggz_decode_tcq_neon(const uint8_t * src, size_t src_size, uint8_t * dst, size_t n, size_t dst_stride,
                        const ggz_dtab * tabs, unsigned period, uint32_t * crc)
{
    (void)period;
#ifdef NEON_LOOP_CRC
    if (crc_hw()) return decode_tcq_loop_crc(src, src_size, dst, n, dst_stride, tabs, crc);
#endif
    return decode_tcq(src, src_size, dst, n, dst_stride, tabs, crc, 0);
}
