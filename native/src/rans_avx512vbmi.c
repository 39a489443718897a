/* AVX-512 decoder with VBMI (Ice Lake, Zen 4 and later), kernel avx512vbmi:
 * the loop of rans_x86.h, compiled with -mavx512vbmi as well, which packs the
 * symbols with byte permutes. */
#include "rans_x86.h"

int ggz_decode_avx512vbmi(const uint8_t * src, size_t src_size, uint8_t * dst, size_t n, size_t dst_stride,
                          const ggz_dtab * tabs, unsigned period, uint32_t * crc)
{
    return decode_x86(src, src_size, dst, n, dst_stride, tabs, period, crc);
}

int ggz_decode_tcq_avx512vbmi(const uint8_t * src, size_t src_size, uint8_t * dst, size_t n, size_t dst_stride,
                    const ggz_dtab * tabs, unsigned period, uint32_t * crc)
{
    (void)period;
    return decode_x86_tcq(src, src_size, dst, n, dst_stride, tabs, crc);
}

void ggz_decode2_avx512vbmi(const ggz_stream * s, uint32_t * crc, int * err, int tcq)
{
    if (tcq) decode2_x86_trellis(s, crc, err);
    else     decode2_x86_plain(s, crc, err);
}
