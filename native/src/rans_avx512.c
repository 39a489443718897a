/* AVX-512 (F + BW + VL) decoder: the 32 lanes are two zmm registers of 16
 * states.  Same bytes as rans_scalar.c; only the hot loops live here.  The
 * loops keep every piece of state in locals: byte stores may alias anything
 * reached through a pointer, which would reload it on every step. */
#include "internal.h"

#include <immintrin.h>

/* One half-step: 16 lanes decode a symbol and renormalise from *pp. */
GGZ_INLINE __m512i step16(__m512i x, __m512i toff, const uint32_t * tab,
                          uint8_t * out, const uint8_t ** pp)
{
    const __m512i mask = _mm512_set1_epi32(GGZ_PROB_MASK);
    const __m512i e = _mm512_i32gather_epi32(_mm512_add_epi32(_mm512_and_si512(x, mask), toff), (const void *)tab, 4);
    _mm_storeu_si128((__m128i *)out, _mm512_cvtepi32_epi8(e));
    /* x = f * (x >> 12) + bias */
    x = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_srli_epi32(e, 20), _mm512_srli_epi32(x, GGZ_PROB_BITS)),
                         _mm512_and_si512(_mm512_srli_epi32(e, 8), mask));
    /* lanes below L take the next words, in lane order */
    const __mmask16 m = _mm512_cmplt_epu32_mask(x, _mm512_set1_epi32((int)GGZ_RANS_L));
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)*pp));
    x = _mm512_mask_or_epi32(x, m, _mm512_slli_epi32(x, 16), _mm512_maskz_expand_epi32(m, w));
    *pp += 2 * (size_t)_mm_popcnt_u32(m);
    return x;
}

static __m512i table_offsets(unsigned period)
{
    /* lane l reads table l mod period: an offset into the [4][4096] slots */
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return _mm512_slli_epi32(_mm512_and_si512(lane, _mm512_set1_epi32((int)period - 1)), GGZ_PROB_BITS);
}

/* Fast steps of one stream from step *k while 64 bytes remain (a step reads
 * at most 32 words, so no bounds check is needed inside). */
GGZ_INLINE void run1(__m512i * x0p, __m512i * x1p, const uint8_t ** pp, size_t * kp, const ggz_stream * s)
{
    const __m512i toff = table_offsets(s->period);
    const uint32_t * const tab = s->tabs->slot[0];
    const uint8_t * const end = s->src + s->size;
    uint8_t * const dst = s->dst;
    const size_t stride = s->stride, steps = s->n / GGZ_LANES;
    __m512i x0 = *x0p, x1 = *x1p;
    const uint8_t * p = *pp;
    size_t k = *kp;
    for (; k < steps && end - p >= 2 * GGZ_LANES; k++) {
        uint8_t * out = dst + k * stride;
        x0 = step16(x0, toff, tab, out, &p);
        x1 = step16(x1, toff, tab, out + 16, &p);
    }
    *x0p = x0; *x1p = x1; *pp = p; *kp = k;
}

GGZ_INLINE int start(const ggz_stream * s, __m512i * x0, __m512i * x1)
{
    uint32_t x[GGZ_LANES] = { 0 };
    const int err = ggz_read_states(x, s->src, s->size);
    *x0 = _mm512_loadu_si512(x);
    *x1 = _mm512_loadu_si512(x + 16);
    return err;
}

/* The rest after the fast steps: checked steps, tail, final check. */
static int finish(const ggz_stream * s, __m512i x0, __m512i x1, const uint8_t * p, size_t k)
{
    uint32_t x[GGZ_LANES];
    _mm512_storeu_si512(x, x0);
    _mm512_storeu_si512(x + 16, x1);
    const uint8_t * end = s->src + s->size;
    const size_t steps = s->n / GGZ_LANES;
    for (; k < steps; k++)
        if (ggz_decode_lanes_checked(x, &p, end, s->dst + k * s->stride, 0, GGZ_LANES, s->tabs, s->period))
            return GGZ_ERR_CORRUPT;
    return ggz_decode_finish(x, p, end, s->dst + steps * s->stride, (unsigned)(s->n % GGZ_LANES), s->tabs, s->period);
}

GGZ_INLINE int decode1(const ggz_stream * s)
{
    if (!s->n) return s->size ? GGZ_ERR_CORRUPT : GGZ_OK;
    __m512i x0, x1;
    const int err = start(s, &x0, &x1);
    if (err) return err;
    const uint8_t * p = s->src + GGZ_STATE_BYTES;
    size_t k = 0;
    run1(&x0, &x1, &p, &k, s);
    return finish(s, x0, x1, p, k);
}

int ggz_decode_avx512(const uint8_t * src, size_t src_size, uint8_t * dst, size_t n, size_t dst_stride,
                      const ggz_dtab * tabs, unsigned period)
{
    const ggz_stream s = { src, src_size, dst, n, dst_stride, tabs, period };
    return decode1(&s);
}

void ggz_decode2_avx512(const ggz_stream * a, const ggz_stream * b, int err[2])
{
    if (!a->n || !b->n || a->size < GGZ_STATE_BYTES || b->size < GGZ_STATE_BYTES) {
        err[0] = decode1(a);
        err[1] = decode1(b);
        return;
    }
    __m512i a0, a1, b0, b1;
    err[0] = start(a, &a0, &a1);
    err[1] = start(b, &b0, &b1);
    if (err[0] || err[1]) {
        if (!err[0]) err[0] = decode1(a);
        if (!err[1]) err[1] = decode1(b);
        return;
    }
    const __m512i ta = table_offsets(a->period), tb = table_offsets(b->period);
    const uint32_t * const taba = a->tabs->slot[0], * const tabb = b->tabs->slot[0];
    const uint8_t * pa = a->src + GGZ_STATE_BYTES, * pb = b->src + GGZ_STATE_BYTES;
    const uint8_t * const ea = a->src + a->size, * const eb = b->src + b->size;
    uint8_t * const da = a->dst, * const db = b->dst;
    const size_t sa = a->stride, sb = b->stride;
    const size_t steps = (a->n < b->n ? a->n : b->n) / GGZ_LANES;
    size_t k = 0;
    /* four independent dependency chains in flight */
    for (; k < steps && ea - pa >= 2 * GGZ_LANES && eb - pb >= 2 * GGZ_LANES; k++) {
        uint8_t * oa = da + k * sa, * ob = db + k * sb;
        a0 = step16(a0, ta, taba, oa, &pa);
        b0 = step16(b0, tb, tabb, ob, &pb);
        a1 = step16(a1, ta, taba, oa + 16, &pa);
        b1 = step16(b1, tb, tabb, ob + 16, &pb);
    }
    size_t ka = k, kb = k;
    run1(&a0, &a1, &pa, &ka, a);
    run1(&b0, &b1, &pb, &kb, b);
    err[0] = finish(a, a0, a1, pa, ka);
    err[1] = finish(b, b0, b1, pb, kb);
}
