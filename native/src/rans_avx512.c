/* AVX-512 (F + BW + VL) decoder: the 32 lanes are two zmm registers of 16
 * states.  Same bytes as rans_scalar.c; only the hot loops live here. */
#include "internal.h"

#include <immintrin.h>

typedef struct {
    __m512i         x0, x1;   /* lanes 0-15, 16-31 */
    const uint8_t * p;
    const uint8_t * end;
    size_t          k;        /* next step */
    size_t          steps;
    int             err;
} dec_state;

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

static void start(dec_state * st, const ggz_stream * s)
{
    uint32_t x[GGZ_LANES];
    st->err = s->n ? ggz_read_states(x, s->src, s->size) : (s->size ? GGZ_ERR_CORRUPT : GGZ_OK);
    st->k = 0;
    st->steps = s->n / GGZ_LANES;
    st->p = s->src + GGZ_STATE_BYTES;
    st->end = s->src + s->size;
    if (st->err || !s->n) { st->steps = 0; st->err = st->err ? st->err : -1; return; }
    st->x0 = _mm512_loadu_si512(x);
    st->x1 = _mm512_loadu_si512(x + 16);
}

/* The rest of a stream on its own: fast steps, checked steps, tail, final check. */
static int finish(dec_state * st, const ggz_stream * s)
{
    if (st->err) return st->err < 0 ? GGZ_OK : st->err;
    const __m512i toff = table_offsets(s->period);
    const uint32_t * tab = s->tabs->slot[0];
    __m512i x0 = st->x0, x1 = st->x1;
    const uint8_t * p = st->p;
    size_t k = st->k;
    for (; k < st->steps && st->end - p >= 2 * GGZ_LANES; k++) {
        uint8_t * out = s->dst + k * s->stride;
        x0 = step16(x0, toff, tab, out, &p);
        x1 = step16(x1, toff, tab, out + 16, &p);
    }
    st->k = k;
    uint32_t x[GGZ_LANES];
    _mm512_storeu_si512(x, x0);
    _mm512_storeu_si512(x + 16, x1);
    for (; st->k < st->steps; st->k++)
        if (ggz_decode_lanes_checked(x, &p, st->end, s->dst + st->k * s->stride, 0, GGZ_LANES, s->tabs, s->period))
            return GGZ_ERR_CORRUPT;
    return ggz_decode_finish(x, p, st->end, s->dst + st->steps * s->stride, (unsigned)(s->n % GGZ_LANES),
                             s->tabs, s->period);
}

int ggz_decode_avx512(const uint8_t * src, size_t src_size, uint8_t * dst, size_t n, size_t dst_stride,
                      const ggz_dtab * tabs, unsigned period)
{
    const ggz_stream s = { src, src_size, dst, n, dst_stride, tabs, period };
    dec_state st;
    start(&st, &s);
    return finish(&st, &s);
}

void ggz_decode2_avx512(const ggz_stream * a, const ggz_stream * b, int err[2])
{
    dec_state sa, sb;
    start(&sa, a);
    start(&sb, b);
    const __m512i ta = table_offsets(a->period), tb = table_offsets(b->period);
    const uint32_t * taba = a->tabs ? a->tabs->slot[0] : NULL;
    const uint32_t * tabb = b->tabs ? b->tabs->slot[0] : NULL;
    /* four independent chains in flight while both streams have fast steps;
     * locals, not the escaping structs, so that byte stores cannot alias them */
    __m512i a0 = sa.x0, a1 = sa.x1, b0 = sb.x0, b1 = sb.x1;
    const uint8_t * pa = sa.p, * pb = sb.p;
    size_t ka = sa.k, kb = sb.k;
    const size_t n2 = sa.steps - ka < sb.steps - kb ? sa.steps - ka : sb.steps - kb;
    uint8_t * oa = a->dst, * ob = b->dst;
    for (size_t i = 0; i < n2 && sa.end - pa >= 2 * GGZ_LANES && sb.end - pb >= 2 * GGZ_LANES; i++) {
        uint8_t * qa = oa + ka * a->stride, * qb = ob + kb * b->stride;
        a0 = step16(a0, ta, taba, qa, &pa);
        b0 = step16(b0, tb, tabb, qb, &pb);
        a1 = step16(a1, ta, taba, qa + 16, &pa);
        b1 = step16(b1, tb, tabb, qb + 16, &pb);
        ka++;
        kb++;
    }
    sa.x0 = a0; sa.x1 = a1; sa.p = pa; sa.k = ka;
    sb.x0 = b0; sb.x1 = b1; sb.p = pb; sb.k = kb;
    err[0] = finish(&sa, a);
    err[1] = finish(&sb, b);
}
