/* The x86 decode loop, compiled three times: by rans_avx2.c with AVX2, by
 * rans_avx512.c with AVX-512 (F, BW, VL) and by rans_avx512vbmi.c with VBMI as
 * well.  All keep the 32 lanes in four ymm registers of 8 states.  AVX2 moves
 * the renormalising words into place with a permutation from a table indexed
 * by the lane mask, AVX-512 with vpexpandd under an opmask; VBMI also packs the
 * symbols with two byte permutes.  Same bytes as rans_scalar.c; only the hot
 * loop lives here.  Two streams (two chunks of a frame) can also go side by
 * side, eight groups a step phase by phase (loop32x2, ggz_decode2_fn): one
 * stream's four groups are a latency chain, two keep the core busier.
 *
 * Why ymm and not zmm for AVX-512: measured on Zen 5 (EPYC VM, one pinned
 * core, median of 11 runs, SmolLM2's Q8_0 token_embd), this loop decodes
 * 2060-2120 MB/s with the opmask renormalisation, 1775-1850 with the AVX2 one,
 * 1715 with two zmm registers of 16 lanes looked up the same way and 1596 with
 * zmm gathers.  vpexpandw (words straight into place, VBMI2) was slower still
 * (1720), and so was a vpgatherdd lookup (1320).
 *
 * On Zen 3 (AVX2 only) the same choices hold (native/tests/bench_kernel.c:
 * gathers -16%, other lookups -7..-10%).  There the four groups of a step
 * are one latency chain the out-of-order window cannot overlap further;
 * eight groups (64 lanes, a format change) decoded phase by phase, all
 * lookups first, measured +17%. */
#ifndef GGZIP_RANS_X86_H
#define GGZIP_RANS_X86_H

#include "internal.h"

#include <immintrin.h>

#include <pthread.h>

/* For each 8-bit mask of lanes that renormalise, the permutation that moves
 * the k-th loaded word to the k-th set lane. */
static uint32_t expand_lut[256][8];
static pthread_once_t lut_once = PTHREAD_ONCE_INIT;

static void lut_init(void)
{
    for (unsigned m = 0; m < 256; m++) {
        unsigned k = 0;
        for (unsigned l = 0; l < 8; l++) expand_lut[m][l] = (m >> l & 1) ? k++ : 0;
    }
}

/* tab[idx] for 8 lanes with 8 scalar loads, the indices leaving the register
 * two at a time (vmovq/vpextrq), instead of one vpgatherdd: the loop is bound
 * by the table lookups, and on Zen 5 a ymm gather costs ~8.5 cycles.  Measured
 * there (EPYC VM, one pinned core, median of 11 interleaved runs), decode with
 * gathers -> with scalar loads: SmolLM2's Q8_0 token_embd 1626 -> 1777 MB/s,
 * an F16 tensor (two tables, the loop with per-lane offsets) 1398 -> 1607 MB/s.
 * Both loops gain, so neither keeps the gather. */
GGZ_INLINE __m256i lookup8(const uint32_t * tab, __m256i idx)
{
#if !defined(__x86_64__) && !defined(_M_X64) /* 32-bit x86: no 64-bit extracts */
    uint32_t i[8];
    _mm256_storeu_si256((__m256i *)i, idx);
    return _mm256_setr_epi32((int)tab[i[0]], (int)tab[i[1]], (int)tab[i[2]], (int)tab[i[3]],
                             (int)tab[i[4]], (int)tab[i[5]], (int)tab[i[6]], (int)tab[i[7]]);
#else
    const __m128i lo = _mm256_castsi256_si128(idx), hi = _mm256_extracti128_si256(idx, 1);
    const uint64_t a = (uint64_t)_mm_cvtsi128_si64(lo), b = (uint64_t)_mm_extract_epi64(lo, 1);
    const uint64_t c = (uint64_t)_mm_cvtsi128_si64(hi), d = (uint64_t)_mm_extract_epi64(hi, 1);
    /* the low index: every one is below 2^16 (period 4 at most), and "& 0xFFFF"
     * keeps GCC 12 from zero-extending through a vector register (vmovd + vmovq)
     * in the AVX-512 two-stream loop (+2.6%); with AVX2 the cast is 3% faster */
#if defined(__AVX512VL__)
    return _mm256_setr_epi32((int)tab[a & 0xFFFF], (int)tab[a >> 32], (int)tab[b & 0xFFFF], (int)tab[b >> 32],
                             (int)tab[c & 0xFFFF], (int)tab[c >> 32], (int)tab[d & 0xFFFF], (int)tab[d >> 32]);
#else
    return _mm256_setr_epi32((int)tab[(uint32_t)a], (int)tab[a >> 32], (int)tab[(uint32_t)b], (int)tab[b >> 32],
                             (int)tab[(uint32_t)c], (int)tab[c >> 32], (int)tab[(uint32_t)d], (int)tab[d >> 32]);
#endif
#endif
}

/* x = D(x) from the entries e (tables of prob_bits, a constant) */
GGZ_INLINE __m256i advance8(__m256i x, __m256i e, const int prob_bits)
{
    const __m256i mask = _mm256_set1_epi32(GGZ_PROB_MASK);   /* the entries' 12-bit bias field */
    return _mm256_add_epi32(_mm256_mullo_epi32(_mm256_srli_epi32(e, 20), _mm256_srli_epi32(x, prob_bits)),
                            _mm256_and_si256(_mm256_srli_epi32(e, 8), mask));
}

/* lanes below L take the next words, in lane order */
GGZ_INLINE __m256i renorm8(__m256i x, const uint8_t ** pp)
{
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)*pp));
#if defined(__AVX512VL__)
    const __mmask8 m = _mm256_cmplt_epu32_mask(x, _mm256_set1_epi32((int)GGZ_RANS_L));
    x = _mm256_mask_or_epi32(x, m, _mm256_slli_epi32(x, 16), _mm256_maskz_expand_epi32(m, w));
#else
    const __m256i low = _mm256_cmpeq_epi32(_mm256_srli_epi32(x, 16), _mm256_setzero_si256());
    const unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(low));
    const __m256i wl = _mm256_permutevar8x32_epi32(w, _mm256_loadu_si256((const __m256i *)expand_lut[m]));
    x = _mm256_blendv_epi8(x, _mm256_or_si256(_mm256_slli_epi32(x, 16), wl), low);
#endif
    *pp += 2 * (size_t)_mm_popcnt_u32(m);
    return x;
}

GGZ_INLINE __m256i update8(__m256i x, __m256i e, const uint8_t ** pp, const int prob_bits)
{
    return renorm8(advance8(x, e, prob_bits), pp);
}

GGZ_INLINE __m256i step8(__m256i x, __m256i toff, const uint32_t * tab, __m256i * sym, const uint8_t ** pp)
{
    const __m256i e = lookup8(tab, _mm256_add_epi32(_mm256_and_si256(x, _mm256_set1_epi32(GGZ_PROB_MASK)), toff));
    *sym = e;
    return update8(x, e, pp, GGZ_PROB_BITS);
}

/* A trellis step (11-bit tables, class c's at c << 11): S holds each lane's
 * state as 2 * state | class << 11, so that S above the slot bits is the
 * offset of its class's table and S | (bit 1 of the symbol) indexes tnext
 * (vpermd reads the low 3 bits), whose entries are the next states in the
 * same form.  Off the x chain: the lookup waits for x. */
#define TCQ_MASK ((1 << GGZ_TCQ_PROB_BITS) - 1)
/* The entries of a trellis step, and each lane's next state into *S */
GGZ_INLINE __m256i lookup8_tcq(__m256i x, __m256i * S, __m256i tnext, const uint32_t * tab)
{
#if defined(__AVX512VL__)
    /* bitwise selects: slot bits from x, the class bit from S (S < 2^13); then S | (e >> 1 & 1) */
    const __m256i e = lookup8(tab, _mm256_ternarylogic_epi32(_mm256_set1_epi32(TCQ_MASK), x, *S, 0xCA));
    *S = _mm256_permutevar8x32_epi32(tnext, _mm256_ternarylogic_epi32(*S, _mm256_srli_epi32(e, 1),
                                                                      _mm256_set1_epi32(1), 0xF8));
#else
    const __m256i cls = _mm256_and_si256(*S, _mm256_set1_epi32(TCQ_MASK + 1));
    const __m256i e = lookup8(tab, _mm256_or_si256(_mm256_and_si256(x, _mm256_set1_epi32(TCQ_MASK)), cls));
    const __m256i b = _mm256_and_si256(_mm256_srli_epi32(e, 1), _mm256_set1_epi32(1));
    *S = _mm256_permutevar8x32_epi32(tnext, _mm256_or_si256(*S, b));
#endif
    return e;
}

GGZ_INLINE __m256i step8_tcq(__m256i x, __m256i * S, __m256i tnext, const uint32_t * tab, __m256i * sym,
                             const uint8_t ** pp)
{
    const __m256i e = lookup8_tcq(x, S, tnext, tab);
    *sym = e;
    return update8(x, e, pp, GGZ_TCQ_PROB_BITS);
}

/* The low bytes of 32 entries: the 32 symbols in lane order.  VBMI picks them
 * with two vpermt2b (+1.2-2.5% decode on Zen 5 against the 8 ops of packing) */
GGZ_INLINE __m256i symbols32(__m256i e0, __m256i e1, __m256i e2, __m256i e3)
{
#if defined(__AVX512VBMI__)
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60,
                                          0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60);
    return _mm256_blend_epi32(_mm256_permutex2var_epi8(e0, pick, e1), _mm256_permutex2var_epi8(e2, pick, e3), 0xF0);
#else
    const __m256i low8 = _mm256_set1_epi32(0xFF);
    const __m256i a = _mm256_packus_epi32(_mm256_and_si256(e0, low8), _mm256_and_si256(e1, low8));
    const __m256i b = _mm256_packus_epi32(_mm256_and_si256(e2, low8), _mm256_and_si256(e3, low8));
    return _mm256_permutevar8x32_epi32(_mm256_packus_epi16(a, b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
#endif
}

/* Whole steps of 32 lanes while 64 bytes remain (a step reads at most 32
 * words, so no check is needed inside); returns the steps done.  The CRC
 * pointer q, at 32 bytes a step against the words' 2 * 32 * entropy / 16 on
 * average, ends before them or keeps pace. */
GGZ_INLINE size_t loop32(__m256i * px0, __m256i * px1, __m256i * px2, __m256i * px3, __m256i toff,
                         const uint32_t * tab, uint8_t * dst, size_t dst_stride, size_t steps,
                         const uint8_t ** pp, const uint8_t * end, const uint8_t ** pq, uint64_t * pc)
{
    __m256i x0 = *px0, x1 = *px1, x2 = *px2, x3 = *px3;
    const uint8_t * p = *pp, * q = *pq;
    uint64_t c = *pc;
    size_t k = 0;
    for (; k < steps && end - p >= 2 * GGZ_LANES; k++) {
        ggz_crc_step32(&c, &q, end);
        __m256i e0, e1, e2, e3;
        x0 = step8(x0, toff, tab, &e0, &p);
        x1 = step8(x1, toff, tab, &e1, &p);
        x2 = step8(x2, toff, tab, &e2, &p);
        x3 = step8(x3, toff, tab, &e3, &p);
        _mm256_storeu_si256((__m256i *)(dst + k * dst_stride), symbols32(e0, e1, e2, e3));
    }
    *px0 = x0; *px1 = x1; *px2 = x2; *px3 = x3;
    *pp = p; *pq = q; *pc = c;
    return k;
}

/* The rest of a stream from a whole step on: n symbols left for dst, the
 * states in x0..x3, the words at p, the CRC c of the bytes before q. */
GGZ_INLINE int decode_x86_from(__m256i x0, __m256i x1, __m256i x2, __m256i x3, const uint8_t * p,
                               const uint8_t * end, const uint8_t * q, uint64_t c, uint8_t * dst, size_t n,
                               size_t dst_stride, const ggz_dtab * tabs, unsigned period, uint32_t * crc)
{
    const size_t steps = n / GGZ_LANES;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i toff = _mm256_slli_epi32(_mm256_and_si256(lane, _mm256_set1_epi32((int)period - 1)), GGZ_PROB_BITS);
    const uint32_t * tab = tabs->slot[0];
    uint32_t x[GGZ_LANES];
    size_t k = 0;
    /* one table (bytes, Q8_0 symbols): the loop again without per-lane offsets */
    if (period == 1)
        k = loop32(&x0, &x1, &x2, &x3, _mm256_setzero_si256(), tab, dst, dst_stride, steps, &p, end, &q, &c);
    k += loop32(&x0, &x1, &x2, &x3, toff, tab, dst + k * dst_stride, dst_stride, steps - k, &p, end, &q, &c);
    *crc = ggz_crc32c(~(uint32_t)c, q, (size_t)(end - q));
    _mm256_storeu_si256((__m256i *)x, x0);
    _mm256_storeu_si256((__m256i *)(x + 8), x1);
    _mm256_storeu_si256((__m256i *)(x + 16), x2);
    _mm256_storeu_si256((__m256i *)(x + 24), x3);
    for (; k < steps; k++)
        if (ggz_decode_lanes_checked(x, &p, end, dst + k * dst_stride, 0, GGZ_LANES, tabs, period))
            return GGZ_ERR_CORRUPT;
    return ggz_decode_finish(x, p, end, dst + steps * dst_stride, (unsigned)(n % GGZ_LANES), tabs, period);
}

/* ggz_decode_fn, for rans_avx2.c and rans_avx512.c */
GGZ_INLINE int decode_x86(const uint8_t * src, size_t src_size, uint8_t * dst, size_t n, size_t dst_stride,
                          const ggz_dtab * tabs, unsigned period, uint32_t * crc)
{
    uint32_t x[GGZ_LANES];
    const int r = ggz_stream_begin(src, src_size, n, 0, x, crc);
    if (r >= 0) return r;
#if !defined(__AVX512VL__)     /* the one-stream loop expands by opmask */
    pthread_once(&lut_once, lut_init);
#endif
    return decode_x86_from(_mm256_loadu_si256((const __m256i *)x), _mm256_loadu_si256((const __m256i *)(x + 8)),
                           _mm256_loadu_si256((const __m256i *)(x + 16)), _mm256_loadu_si256((const __m256i *)(x + 24)),
                           src + GGZ_STATE_BYTES, src + src_size, src, (uint32_t)~*crc, dst, n,
                           dst_stride, tabs, period, crc);
}

/* The next states of the trellis in S's form (step8_tcq) */
GGZ_INLINE __m256i tcq_tnext(void)
{
    uint32_t nx[8];
    for (unsigned i = 0; i < 8; i++) {
        const unsigned s = ggz_tcq_next[i >> 1][i & 1];
        nx[i] = 2 * s | (s >> 1) << GGZ_TCQ_PROB_BITS;
    }
    return _mm256_loadu_si256((const __m256i *)nx);
}

/* The rest of a trellis-coded stream from a whole step on (as decode_x86_from),
 * the lanes' trellis states in S0..S3 */
GGZ_INLINE int decode_x86_tcq_from(__m256i x0, __m256i x1, __m256i x2, __m256i x3, __m256i S0, __m256i S1,
                                   __m256i S2, __m256i S3, const uint8_t * p, const uint8_t * end,
                                   const uint8_t * q, uint64_t c, uint8_t * dst, size_t n, size_t dst_stride,
                                   const ggz_dtab * tabs, uint32_t * crc)
{
    const size_t steps = n / GGZ_LANES;
    const __m256i tnext = tcq_tnext();
    const uint32_t * tab = tabs->slot[0];
    size_t k = 0;
    for (; k < steps && end - p >= 2 * GGZ_LANES; k++) {
        ggz_crc_step32(&c, &q, end);
        __m256i e0, e1, e2, e3;
        x0 = step8_tcq(x0, &S0, tnext, tab, &e0, &p);
        x1 = step8_tcq(x1, &S1, tnext, tab, &e1, &p);
        x2 = step8_tcq(x2, &S2, tnext, tab, &e2, &p);
        x3 = step8_tcq(x3, &S3, tnext, tab, &e3, &p);
        _mm256_storeu_si256((__m256i *)(dst + k * dst_stride), symbols32(e0, e1, e2, e3));
    }
    *crc = ggz_crc32c(~(uint32_t)c, q, (size_t)(end - q));
    uint32_t x[GGZ_LANES], sv[GGZ_LANES];
    uint8_t st[GGZ_LANES];
    _mm256_storeu_si256((__m256i *)x, x0);
    _mm256_storeu_si256((__m256i *)(x + 8), x1);
    _mm256_storeu_si256((__m256i *)(x + 16), x2);
    _mm256_storeu_si256((__m256i *)(x + 24), x3);
    _mm256_storeu_si256((__m256i *)sv, S0);
    _mm256_storeu_si256((__m256i *)(sv + 8), S1);
    _mm256_storeu_si256((__m256i *)(sv + 16), S2);
    _mm256_storeu_si256((__m256i *)(sv + 24), S3);
    for (unsigned l = 0; l < GGZ_LANES; l++) st[l] = (uint8_t)(sv[l] >> 1 & 3);
    if (ggz_decode_tcq_lanes(x, st, &p, end, dst + k * dst_stride, steps - k, dst_stride, tabs))
        return GGZ_ERR_CORRUPT;
    return ggz_decode_finish(x, p, end, dst, 0, tabs, 2);
}

/* ggz_decode_fn of trellis-coded Q8_0 symbols (two tables, by lane state) */
GGZ_INLINE int decode_x86_tcq(const uint8_t * src, size_t src_size, uint8_t * dst, size_t n, size_t dst_stride,
                              const ggz_dtab * tabs, uint32_t * crc)
{
    uint32_t x[GGZ_LANES];
    const int r = ggz_stream_begin(src, src_size, n, 1, x, crc);
    if (r >= 0) return r;
#if !defined(__AVX512VL__)     /* the one-stream loop expands by opmask */
    pthread_once(&lut_once, lut_init);
#endif
    const __m256i z = _mm256_setzero_si256();
    return decode_x86_tcq_from(_mm256_loadu_si256((const __m256i *)x), _mm256_loadu_si256((const __m256i *)(x + 8)),
                               _mm256_loadu_si256((const __m256i *)(x + 16)), _mm256_loadu_si256((const __m256i *)(x + 24)),
                               z, z, z, z, src + GGZ_STATE_BYTES, src + src_size, src, (uint32_t)~*crc, dst, n,
                               dst_stride, tabs, crc);
}

/* The renormalisation of a pair step (loop32x2): the lanes' test in the
 * products' phase, then the words by a permutation from a table (as AVX2 does
 * for one stream).  Here that beats the opmask expansion of the one-stream
 * AVX-512 loop: SmolLM2's token_embd decoded whole on one Zen 4 core, 2290 MB/s
 * against 2060 with the expansion and 2100 for one stream at a time. */
GGZ_INLINE void renorm8x8(__m256i * x, const __m256i * e, const uint8_t ** p, const int prob_bits)
{
    __m256i low[8];
    unsigned m[8];
    _Pragma("GCC unroll 8")
    for (unsigned g = 0; g < 8; g++) {
        x[g] = advance8(x[g], e[g], prob_bits);
        low[g] = _mm256_cmpeq_epi32(_mm256_srli_epi32(x[g], 16), _mm256_setzero_si256());
        m[g] = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(low[g]));
    }
    _Pragma("GCC unroll 8")
    for (unsigned g = 0; g < 8; g++) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p[g >> 2]));
        const __m256i wl = _mm256_permutevar8x32_epi32(w, _mm256_loadu_si256((const __m256i *)expand_lut[m[g]]));
        x[g] = _mm256_blendv_epi8(x[g], _mm256_or_si256(_mm256_slli_epi32(x[g], 16), wl), low[g]);
        p[g >> 2] += 2 * (size_t)_mm_popcnt_u32(m[g]);
    }
}

/* Two streams of one table (stream 0 of two chunks of a frame) side by side,
 * each step over their eight groups phase by phase: all lookups, then all
 * products, then the renormalisations (renorm8x8); trellis-coded streams
 * (tcq, their lanes' states in S) take each group on to its end after the
 * lookups.  One stream's four groups are a latency chain the out-of-order
 * window cannot overlap further; written this way the window holds both
 * streams' lookups at once (native/tests/bench_kernel.c, "pair phased": +22%
 * over one stream on Zen 4, the same bytes).  Steps run while both streams
 * have 64 bytes left; then each goes on alone. */
GGZ_INLINE size_t loop32x2(__m256i * x, __m256i * S, const uint32_t * tab, uint8_t * const * dst,
                           size_t dst_stride, size_t steps, const uint8_t ** p, const uint8_t * const * end,
                           const uint8_t ** q, uint64_t * c, const int tcq)
{
    /* the states and pointers in locals for the loop: the symbol stores (bytes)
     * may alias the caller's arrays, which kept them in memory (-4%).
     * Trellis states as two vectors a group: each lane's class (state >> 1)
     * as C = class << 11, the offset of its table, and P the same of the
     * previous symbol's class (state & 1).  GGZ_TCQ_NEXT is class' = (state &
     * 1) ^ b, (state' & 1) = class, so C' = P ^ b << 11 and P' = C, without
     * the table permute of lookup8_tcq.  Every trellis frame of SmolLM2 at
     * 4.5 bpw on one Zen 4 core: +6-10% with AVX-512, +1-6% with VBMI, and
     * +6% with AVX2, whose 16 registers cannot hold P: there it lives in
     * memory on purpose (volatile; left to the compiler, its spills made the
     * loop 3-4% slower than the permute's, and 5-25% slower than this).
     * A state the entries carry (4 tables of 2048 by class and previous
     * class, the next state in spare entry bits: one and a step, no P) was
     * 1-5% slower on Zen 5 with every ISA, though the scalar loop gained 13%:
     * the lookups bind, and the tables double to 32 KiB.  Nor is the AVX2 gap
     * the update's ops: the branch bit kept at entry bit 19 (one op less) gave
     * 0.99-1.00x, C and P both in memory with the phased products 1.00x, and
     * one stream at a time 0.73-0.82x. */
    __m256i xl[8], C[8];
#if defined(__AVX512VL__)
    __m256i P[8];
#else
    volatile __m256i P[8];
#endif
    const __m256i cbit = _mm256_set1_epi32(TCQ_MASK + 1), tmask = _mm256_set1_epi32(TCQ_MASK);
    _Pragma("GCC unroll 8")
    for (unsigned g = 0; g < 8; g++) {
        xl[g] = x[g];
        C[g] = tcq ? _mm256_and_si256(S[g], cbit) : _mm256_setzero_si256();
        P[g] = tcq ? _mm256_and_si256(_mm256_slli_epi32(S[g], 10), cbit) : _mm256_setzero_si256();
    }
    const uint8_t * pl[2] = { p[0], p[1] }, * ql[2] = { q[0], q[1] };
    const uint8_t * const end0 = end[0], * const end1 = end[1];
    uint8_t * const dst0 = dst[0], * const dst1 = dst[1];
    uint64_t cl[2] = { c[0], c[1] };
    const __m256i mask = _mm256_set1_epi32(GGZ_PROB_MASK);
    size_t k = 0;
    for (; k < steps && end0 - pl[0] >= 2 * GGZ_LANES && end1 - pl[1] >= 2 * GGZ_LANES; k++) {
        ggz_crc_step32(&cl[0], &ql[0], end0);
        ggz_crc_step32(&cl[1], &ql[1], end1);
        __m256i e[8];
        _Pragma("GCC unroll 8")
        for (unsigned g = 0; g < 8; g++) {
            if (!tcq) { e[g] = lookup8(tab, _mm256_and_si256(xl[g], mask)); continue; }
            const __m256i cls = C[g];
#if defined(__AVX512VL__)   /* slot bits from x, then P ^ (b at bit 11) */
            e[g] = lookup8(tab, _mm256_ternarylogic_epi32(tmask, xl[g], cls, 0xCA));
            C[g] = _mm256_ternarylogic_epi32(P[g], _mm256_slli_epi32(e[g], 10), cbit, 0x78);
#else
            e[g] = lookup8(tab, _mm256_or_si256(_mm256_and_si256(xl[g], tmask), cls));
            C[g] = _mm256_xor_si256(P[g], _mm256_and_si256(_mm256_slli_epi32(e[g], 10), cbit));
#endif
            P[g] = cls;
        }
        if (tcq) {
            /* with the trellis states in registers too, the products' phase
             * measured 5-15% slower (SmolLM2 at 4.5 bpw, AVX-512 and AVX2) */
            _Pragma("GCC unroll 8")
            for (unsigned g = 0; g < 8; g++) xl[g] = update8(xl[g], e[g], &pl[g >> 2], GGZ_TCQ_PROB_BITS);
        } else {
            renorm8x8(xl, e, pl, GGZ_PROB_BITS);
        }
        _mm256_storeu_si256((__m256i *)(dst0 + k * dst_stride), symbols32(e[0], e[1], e[2], e[3]));
        _mm256_storeu_si256((__m256i *)(dst1 + k * dst_stride), symbols32(e[4], e[5], e[6], e[7]));
    }
    _Pragma("GCC unroll 8")
    for (unsigned g = 0; g < 8; g++) {   /* S: 2 (2 class + prev) | class << 11 */
        x[g] = xl[g];
        if (tcq) S[g] = _mm256_or_si256(_mm256_or_si256(_mm256_srli_epi32(C[g], 9), _mm256_srli_epi32(P[g], 10)), C[g]);
    }
    p[0] = pl[0]; p[1] = pl[1]; q[0] = ql[0]; q[1] = ql[1]; c[0] = cl[0]; c[1] = cl[1];
    return k;
}

/* ggz_decode2_fn: streams s[0] and s[1] of period 1 and one table, or
 * trellis-coded (tcq) */
GGZ_INLINE void decode2_x86(const ggz_stream * s, uint32_t * crc, int * err, const int tcq)
{
    uint32_t xs[2][GGZ_LANES];
    if (!s[0].n || !s[1].n || (tcq && (s[0].n % GGZ_LANES || s[1].n % GGZ_LANES)) ||
        ggz_read_states(xs[0], s[0].src, s[0].size) || ggz_read_states(xs[1], s[1].src, s[1].size)) {
        for (unsigned i = 0; i < 2; i++)   /* no pair to make: one at a time, errors as they come */
            err[i] = tcq ? decode_x86_tcq(s[i].src, s[i].size, s[i].dst, s[i].n, s[i].stride, s[i].tabs, &crc[i])
                         : decode_x86(s[i].src, s[i].size, s[i].dst, s[i].n, s[i].stride, s[i].tabs, 1, &crc[i]);
        return;
    }
    pthread_once(&lut_once, lut_init);   /* renorm8x8's permutations, whatever the ISA */
    __m256i x[8], S[8];
    const uint8_t * p[2], * q[2], * end[2];
    uint8_t * dst[2];
    uint64_t c[2];
    for (unsigned i = 0; i < 2; i++) {
        for (unsigned g = 0; g < 4; g++) {
            x[4 * i + g] = _mm256_loadu_si256((const __m256i *)(xs[i] + 8 * g));
            S[4 * i + g] = _mm256_setzero_si256();
        }
        p[i] = s[i].src + GGZ_STATE_BYTES; q[i] = s[i].src; end[i] = s[i].src + s[i].size;
        c[i] = (uint32_t)~crc[i]; dst[i] = s[i].dst;
    }
    const size_t n = s[0].n < s[1].n ? s[0].n : s[1].n;
    const size_t k = loop32x2(x, S, s[0].tabs->slot[0], dst, s[0].stride, n / GGZ_LANES, p, end, q, c, tcq);
    for (unsigned i = 0; i < 2; i++) {
        const __m256i * xi = x + 4 * i, * Si = S + 4 * i;
        uint8_t * const out = s[i].dst + k * s[i].stride;
        const size_t left = s[i].n - k * GGZ_LANES;
        err[i] = tcq ? decode_x86_tcq_from(xi[0], xi[1], xi[2], xi[3], Si[0], Si[1], Si[2], Si[3], p[i], end[i], q[i],
                                           c[i], out, left, s[i].stride, s[i].tabs, &crc[i])
                     : decode_x86_from(xi[0], xi[1], xi[2], xi[3], p[i], end[i], q[i], c[i], out, left, s[i].stride,
                                       s[i].tabs, 1, &crc[i]);
    }
}

/* ggz_decode2_fn for rans_avx2.c and the AVX-512 files: decode2_x86 with tcq a
 * constant, each instance a function of its own (both inlined into one, the
 * plain pair loop measured 2.6% slower) */
GGZ_NOINLINE void decode2_x86_plain(const ggz_stream * s, uint32_t * crc, int * err)
{
    decode2_x86(s, crc, err, 0);
}

GGZ_NOINLINE void decode2_x86_trellis(const ggz_stream * s, uint32_t * crc, int * err)
{
    decode2_x86(s, crc, err, 1);
}

#endif /* GGZIP_RANS_X86_H */
