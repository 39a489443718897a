/* AVX-512 decoder (F, BW, VL): the loop of rans_x86.h, compiled with
 * -mavx512f -mavx512bw -mavx512vl (native/CMakeLists.txt), which gives its lanes
 * opmask renormalisation on the same four ymm registers as AVX2. */
#include "rans_x86.h"

int ggz_decode_avx512(const uint8_t * src, size_t src_size, uint8_t * dst, size_t n, size_t dst_stride,
                      const ggz_dtab * tabs, unsigned period, uint32_t * crc)
{
    return decode_x86(src, src_size, dst, n, dst_stride, tabs, period, crc);
}

int ggz_decode_tcq_avx512(const uint8_t * src, size_t src_size, uint8_t * dst, size_t n, size_t dst_stride,
                    const ggz_dtab * tabs, unsigned period, uint32_t * crc)
{
    (void)period;
    return decode_x86_tcq(src, src_size, dst, n, dst_stride, tabs, crc);
}

void ggz_decode2_avx512(const ggz_stream * s, uint32_t * crc, int * err, int tcq)
{
    if (tcq) decode2_x86_trellis(s, crc, err);
    else     decode2_x86_plain(s, crc, err);
}
