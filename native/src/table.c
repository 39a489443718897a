/* Frequency tables: normalisation, serialisation (FORMAT.md section 1) and the
 * derived decode / encode tables. */
#include "internal.h"

#include <math.h>

double ggz_entropy_bits(const uint64_t counts[256])
{
    uint64_t total = 0;
    for (int s = 0; s < 256; s++) total += counts[s];
    if (!total) return 0.0;
    double bits = 0.0;
    for (int s = 0; s < 256; s++)
        if (counts[s]) bits -= (double)counts[s] * log2((double)counts[s] / (double)total);
    return bits;
}

double ggz_cost_bits(const uint64_t counts[256], const ggz_freqs * freqs)
{
    double bits = 0.0;
    for (int s = 0; s < 256; s++)
        if (counts[s]) bits += (double)counts[s] * (GGZ_PROB_BITS - log2((double)freqs->f[s]));
    return bits;
}

/* Rounds p * 4096 with every present symbol at least 1, then moves the
 * difference one unit at a time to where it costs least (the exact change of
 * cost in bits, so the result is near the best table for these counts). */
void ggz_normalize(const uint64_t counts[256], ggz_freqs * out)
{
    uint64_t total = 0;
    int present = 0, only = 0;
    for (int s = 0; s < 256; s++) {
        total += counts[s];
        if (counts[s]) { present++; only = s; }
    }
    memset(out, 0, sizeof(*out));
    if (present <= 1) {
        /* one symbol (or none): f = 4095 plus a dummy so that no f is 4096 */
        out->f[only] = GGZ_PROB_SCALE - 1;
        out->f[(only + 1) & 255] = 1;
        return;
    }
    int32_t sum = 0;
    for (int s = 0; s < 256; s++) {
        if (!counts[s]) continue;
        double v = (double)counts[s] * GGZ_PROB_SCALE / (double)total;
        uint32_t f = (uint32_t)(v + 0.5);
        if (f < 1) f = 1;
        if (f > GGZ_PROB_SCALE - 1) f = GGZ_PROB_SCALE - 1;
        out->f[s] = (uint16_t)f;
        sum += (int32_t)f;
    }
    while (sum != (int32_t)GGZ_PROB_SCALE) {
        int best = -1;
        double best_d = 0.0;
        for (int s = 0; s < 256; s++) {
            if (!counts[s]) continue;
            const double f = out->f[s];
            double d; /* bits saved (sum too small) or lost (sum too large) */
            if (sum < (int32_t)GGZ_PROB_SCALE) {
                if (f >= GGZ_PROB_SCALE - 1) continue;
                d = (double)counts[s] * log2((f + 1) / f);
                if (best < 0 || d > best_d) { best = s; best_d = d; }
            } else {
                if (f <= 1) continue;
                d = (double)counts[s] * log2(f / (f - 1));
                if (best < 0 || d < best_d) { best = s; best_d = d; }
            }
        }
        if (sum < (int32_t)GGZ_PROB_SCALE) { out->f[best]++; sum++; }
        else                                { out->f[best]--; sum--; }
    }
}

size_t ggz_table_write(uint8_t * dst, size_t cap, const ggz_freqs * freqs)
{
    if (cap < 32 + 2 * 256) return GGZ_ERROR(DST_TOO_SMALL);
    memset(dst, 0, 32);
    size_t pos = 32;
    for (int s = 0; s < 256; s++) {
        const uint32_t f = freqs->f[s];
        if (!f) continue;
        dst[s >> 3] |= (uint8_t)(1u << (s & 7));
        if (f < 128) {
            dst[pos++] = (uint8_t)f;
        } else {
            dst[pos++] = (uint8_t)(0x80 | (f >> 8));
            dst[pos++] = (uint8_t)(f & 0xFF);
        }
    }
    return pos;
}

size_t ggz_table_read(const uint8_t * src, size_t size, ggz_freqs * freqs)
{
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
        if (f < 1 || f >= GGZ_PROB_SCALE) return GGZ_ERROR(HEADER);
        freqs->f[s] = (uint16_t)f;
        sum += f;
    }
    if (sum != GGZ_PROB_SCALE) return GGZ_ERROR(HEADER);
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

void ggz_etab_build(ggz_esym * syms, const ggz_freqs * freqs)
{
    uint32_t cum = 0;
    for (int s = 0; s < 256; s++) {
        const uint32_t f = freqs->f[s];
        ggz_esym * e = &syms[s];
        if (f) {
            e->rcp  = UINT64_MAX / f;
            e->xmax = f << (32 - GGZ_PROB_BITS); /* ((L >> PROB_BITS) << 16) * f */
            e->cum  = (uint16_t)cum;
            e->cmpl = (uint16_t)(GGZ_PROB_SCALE - f);
        } else {
            memset(e, 0, sizeof(*e));
        }
        cum += f;
    }
}
