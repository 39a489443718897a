/* AVX-512 (F + BW + VL) decoder: the 32 lanes are two zmm registers of 16
 * states.  Same bytes as rans_scalar.c; only the hot loop lives here, the
 * tail goes through the shared checked scalar code.
 *
 * Measured on Zen 5: decoding two chunks interleaved (four chains) was no
 * faster, and moving loop state into structs or helpers cost 15-25%, so the
 * loop stays one plain function with every value in a local. */
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

int ggz_decode_avx512(const uint8_t * src, size_t src_size, uint8_t * dst, size_t n, size_t dst_stride,
                      const ggz_dtab * tabs, unsigned period, uint32_t * crc)
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
    uint64_t c = ~*crc;
    const size_t steps = n / GGZ_LANES;
    /* lane l reads table l mod period: an offset into the [4][4096] slots */
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i toff = _mm512_slli_epi32(_mm512_and_si512(lane, _mm512_set1_epi32((int)period - 1)), GGZ_PROB_BITS);
    const uint32_t * tab = tabs->slot[0];

    __m512i x0 = _mm512_loadu_si512(x), x1 = _mm512_loadu_si512(x + 16);
    size_t k = 0;
    /* a step reads at most 32 words: with 64 bytes left no check is needed */
    if (period == 1) {  /* one table: no per-lane offset (the common case) */
        const __m512i zero = _mm512_setzero_si512();
        for (; k < steps && end - p >= 2 * GGZ_LANES; k++) {
            uint8_t * out = dst + k * dst_stride;
            ggz_crc_step32(&c, &q, end);
            x0 = step16(x0, zero, tab, out, &p);
            x1 = step16(x1, zero, tab, out + 16, &p);
        }
    }
    for (; k < steps && end - p >= 2 * GGZ_LANES; k++) {
        uint8_t * out = dst + k * dst_stride;
        ggz_crc_step32(&c, &q, end);
        x0 = step16(x0, toff, tab, out, &p);
        x1 = step16(x1, toff, tab, out + 16, &p);
    }
    *crc = ggz_crc32c(~(uint32_t)c, q, (size_t)(end - q));
    _mm512_storeu_si512(x, x0);
    _mm512_storeu_si512(x + 16, x1);
    for (; k < steps; k++)
        if (ggz_decode_lanes_checked(x, &p, end, dst + k * dst_stride, 0, GGZ_LANES, tabs, period))
            return GGZ_ERR_CORRUPT;
    return ggz_decode_finish(x, p, end, dst + steps * dst_stride, (unsigned)(n % GGZ_LANES), tabs, period);
}
