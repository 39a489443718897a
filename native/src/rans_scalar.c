/* The scalar rANS decoder: the specification every SIMD kernel must match byte
 * for byte (FORMAT.md section 2); its encoder is rans_encode.c.
 *
 * Read me first.  rANS keeps the message in an integer state x.  Coding symbol
 * s with frequency f and cumulative frequency c (out of M = 4096) is
 *     x' = C(s, x) = (x / f) * M + (x mod f) + c
 * and decoding inverts it from the low 12 bits of x' alone:
 *     s = symbol whose [c, c + f) holds x' mod M,  x = D(x') = f * (x' >> 12) + (x' mod M) - c.
 * Because D undoes C, the decoder sees symbols in the reverse order of the
 * encoder: we encode from the last symbol to the first and let the decoder run
 * forwards.  The state is kept in [L, 2^32) with L = 2^16 by moving 16 bits at
 * a time to/from the stream: the encoder emits before C when x >= f << 20
 * (else x' would overflow), the decoder reads after D when x < L.  The two
 * conditions mirror each other, so the decoder reads exactly the words the
 * encoder wrote, in reverse; written backwards, they read forwards.
 *
 * 32 states are interleaved: symbol i belongs to lane i mod 32.  The lanes
 * share one word stream, taken in lane order within each step of 32 symbols.
 * Independent lanes are what lets a CPU (and a SIMD register) overlap the
 * dependent chain of table load -> multiply -> renormalise. */
#include "internal.h"

/* Renormalise without a branch (about every other lane reads a word, a coin
 * flip no branch predictor can learn); the caller knows 2 bytes remain. */
static inline uint32_t renorm_fast(uint32_t v, const uint8_t ** pp)
{
    const uint32_t in = v < GGZ_RANS_L;
    v = (v << (16 * in)) | (ggz_rd16(*pp) & (0u - in));
    *pp += 2 * in;
    return v;
}

int ggz_decode_scalar(const uint8_t * src, size_t src_size,
                      uint8_t * dst, size_t n, size_t dst_stride,
                      const ggz_dtab * tabs, unsigned period, uint32_t * crc)
{
    *crc = ggz_crc32c(*crc, src, src_size);
    if (!n) return src_size ? GGZ_ERR_CORRUPT : GGZ_OK;
    uint32_t x[GGZ_LANES];
    int err = ggz_read_states(x, src, src_size);
    if (err) return err;

    const uint8_t * p = src + GGZ_STATE_BYTES;
    const uint8_t * const end = src + src_size;
    const size_t steps = n / GGZ_LANES;
    const uint32_t * const tab = tabs->slot[0];
    const unsigned pmask = period - 1;

    size_t k = 0;
    /* fast path: a step reads at most 32 words, so with 64 bytes left no
     * bounds check is needed inside it */
    for (; k < steps && end - p >= 2 * GGZ_LANES; k++) {
        uint8_t * out = dst + k * dst_stride;
        for (unsigned l = 0; l < GGZ_LANES; l++) {
            const uint32_t e = tab[((l & pmask) << GGZ_PROB_BITS) | (x[l] & GGZ_PROB_MASK)];
            out[l] = (uint8_t)e;
            /* x = D(x') = f * (x' >> 12) + bias */
            x[l] = renorm_fast((e >> 20) * (x[l] >> GGZ_PROB_BITS) + ((e >> 8) & GGZ_PROB_MASK), &p);
        }
    }
    for (; k < steps; k++)
        if (ggz_decode_lanes_checked(x, &p, end, dst + k * dst_stride, 0, GGZ_LANES, tabs, period))
            return GGZ_ERR_CORRUPT;
    return ggz_decode_finish(x, p, end, dst + steps * dst_stride, (unsigned)(n % GGZ_LANES), tabs, period);
}

/* Trellis-coded Q8_0 symbols (FORMAT.md section 2): each lane decodes with the
 * 11-bit table of its state's class (both in slot[0], class c at c << 11) and
 * moves on by bit 1 of the symbol.  n is whole
 * steps (32 symbols a block).  The checked loop is the reference for the SIMD
 * kernels' fast loops and finishes their streams. */
int ggz_decode_tcq_lanes(uint32_t * x, uint8_t * st, const uint8_t ** pp, const uint8_t * end,
                         uint8_t * dst, size_t steps, size_t dst_stride, const ggz_dtab * tabs)
{
    for (size_t k = 0; k < steps; k++) {
        uint8_t * out = dst + k * dst_stride;
        for (unsigned l = 0; l < GGZ_LANES; l++) {
            const uint32_t e = tabs->slot[0][(uint32_t)(st[l] >> 1) << GGZ_TCQ_PROB_BITS |
                                             (x[l] & ((1u << GGZ_TCQ_PROB_BITS) - 1))];
            out[l] = (uint8_t)e;
            st[l] = ggz_tcq_next[st[l]][(e >> 1) & 1];
            if (ggz_renorm_checked(&x[l], (e >> 20) * (x[l] >> GGZ_TCQ_PROB_BITS) + ((e >> 8) & GGZ_PROB_MASK), pp, end))
                return 1;
        }
    }
    return 0;
}

int ggz_decode_tcq_scalar(const uint8_t * src, size_t src_size,
                          uint8_t * dst, size_t n, size_t dst_stride,
                          const ggz_dtab * tabs, unsigned period, uint32_t * crc)
{
    (void)period;
    *crc = ggz_crc32c(*crc, src, src_size);
    if (!n) return src_size ? GGZ_ERR_CORRUPT : GGZ_OK;
    if (n % GGZ_LANES) return GGZ_ERR_CORRUPT;
    uint32_t x[GGZ_LANES];
    int err = ggz_read_states(x, src, src_size);
    if (err) return err;
    const uint8_t * p = src + GGZ_STATE_BYTES;
    const uint8_t * const end = src + src_size;
    const size_t steps = n / GGZ_LANES;
    const uint32_t * const tab = tabs->slot[0];
    /* each lane's state as its class's table offset C (class << 11) and the
     * previous symbol's class P, as in the x86 pair loop: C' = P ^ b << 11,
     * P' = C (GGZ_TCQ_NEXT), no next-state table */
    uint32_t C[GGZ_LANES] = { 0 }, P[GGZ_LANES] = { 0 };
    size_t k = 0;
    for (; k < steps && end - p >= 2 * GGZ_LANES; k++) {     /* as ggz_decode_scalar's fast path */
        uint8_t * out = dst + k * dst_stride;
        for (unsigned l = 0; l < GGZ_LANES; l++) {
            const uint32_t c = C[l], e = tab[c | (x[l] & ((1u << GGZ_TCQ_PROB_BITS) - 1))];
            out[l] = (uint8_t)e;
            C[l] = P[l] ^ (e & 2) << (GGZ_TCQ_PROB_BITS - 1);
            P[l] = c;
            x[l] = renorm_fast((e >> 20) * (x[l] >> GGZ_TCQ_PROB_BITS) + ((e >> 8) & GGZ_PROB_MASK), &p);
        }
    }
    uint8_t st[GGZ_LANES];   /* state = 2 class + previous class */
    for (unsigned l = 0; l < GGZ_LANES; l++) st[l] = (uint8_t)(2 * (C[l] >> GGZ_TCQ_PROB_BITS) + (P[l] >> GGZ_TCQ_PROB_BITS));
    if (ggz_decode_tcq_lanes(x, st, &p, end, dst + k * dst_stride, steps - k, dst_stride, tabs)) return GGZ_ERR_CORRUPT;
    return ggz_decode_finish(x, p, end, dst, 0, tabs, 2);
}
