/* Frequency tables, the encoder's half: counts normalised to frequencies,
 * their cost, a table written (FORMAT.md section 1) and the encode table. */
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

double ggz_cost_bits(const uint64_t counts[256], const ggz_freqs * freqs, unsigned prob_bits)
{
    double bits = 0.0;
    for (int s = 0; s < 256; s++)
        if (counts[s]) bits += (double)counts[s] * (prob_bits - log2((double)freqs->f[s]));
    return bits;
}

/* Rounds p * M (M = 2^prob_bits) with every present symbol at least 1, then moves the
 * difference one unit at a time to where it costs least (the exact change of
 * cost in bits, so the result is near the best table for these counts). */
void ggz_normalize(const uint64_t counts[256], ggz_freqs * out, unsigned prob_bits)
{
    const uint32_t scale = 1u << prob_bits;
    uint64_t total = 0;
    int present = 0, only = 0;
    for (int s = 0; s < 256; s++) {
        total += counts[s];
        if (counts[s]) { present++; only = s; }
    }
    memset(out, 0, sizeof(*out));
    if (present <= 1) {
        /* one symbol (or none): f = 4095 plus a dummy so that no f is 4096 */
        out->f[only] = scale - 1;
        out->f[(only + 1) & 255] = 1;
        return;
    }
    int32_t sum = 0;
    for (int s = 0; s < 256; s++) {
        if (!counts[s]) continue;
        double v = (double)counts[s] * scale / (double)total;
        uint32_t f = (uint32_t)(v + 0.5);
        if (f < 1) f = 1;
        if (f > scale - 1) f = scale - 1;
        out->f[s] = (uint16_t)f;
        sum += (int32_t)f;
    }
    while (sum != (int32_t)scale) {
        int best = -1;
        double best_d = 0.0;
        for (int s = 0; s < 256; s++) {
            if (!counts[s]) continue;
            const double f = out->f[s];
            double d; /* bits saved (sum too small) or lost (sum too large) */
            if (sum < (int32_t)scale) {
                if (f >= scale - 1) continue;
                d = (double)counts[s] * log2((f + 1) / f);
                if (best < 0 || d > best_d) { best = s; best_d = d; }
            } else {
                if (f <= 1) continue;
                d = (double)counts[s] * log2(f / (f - 1));
                if (best < 0 || d < best_d) { best = s; best_d = d; }
            }
        }
        if (sum < (int32_t)scale) { out->f[best]++; sum++; }
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

void ggz_etab_build(ggz_esym * syms, const ggz_freqs * freqs, unsigned prob_bits)
{
    uint32_t cum = 0;
    for (int s = 0; s < 256; s++) {
        const uint32_t f = freqs->f[s];
        ggz_esym * e = &syms[s];
        if (f) {
            e->rcp  = UINT64_MAX / f;
            e->xmax = f << (32 - prob_bits); /* ((L >> prob_bits) << 16) * f */
            e->cum  = (uint16_t)cum;
            e->cmpl = (uint16_t)((1u << prob_bits) - f);
        } else {
            memset(e, 0, sizeof(*e));
        }
        cum += f;
    }
}
