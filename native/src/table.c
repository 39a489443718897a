/* Frequency tables, the decoder's half: a table read and checked
 * (FORMAT.md section 1) and the decode table derived from it.  The encoder's
 * half is table_encode.c. */
#include "internal.h"

size_t ggz_table_read(const uint8_t * src, size_t size, ggz_freqs * freqs, unsigned prob_bits)
{
    const uint32_t scale = 1u << prob_bits;
    if (size < 32) return GGZ_ERROR(SRC_TRUNCATED);
    memset(freqs, 0, sizeof(*freqs));
    size_t pos = 32;
    uint32_t sum = 0;
    for (int s = 0; s < 256; s++) {
        if (!(src[s >> 3] & (1u << (s & 7)))) continue;
        if (pos >= size) return GGZ_ERROR(SRC_TRUNCATED);
        uint32_t f = src[pos++];
        if (f & 0x80) {
            if (pos >= size) return GGZ_ERROR(SRC_TRUNCATED);
            f = ((f & 0x7F) << 8) | src[pos++];
            if (f < 128) return GGZ_ERROR(HEADER); /* only one encoding per value */
        }
        if (f < 1 || f >= scale) return GGZ_ERROR(HEADER);
        freqs->f[s] = (uint16_t)f;
        sum += f;
    }
    if (sum != scale) return GGZ_ERROR(HEADER);
    return pos;
}

void ggz_dtab_build(uint32_t * slots, const ggz_freqs * freqs)
{
    uint32_t cum = 0;
    for (uint32_t s = 0; s < 256; s++) {
        const uint32_t f = freqs->f[s];
        for (uint32_t b = 0; b < f; b++) slots[cum + b] = s | (b << 8) | (f << 20);
        cum += f;
    }
}
