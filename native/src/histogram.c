/* Histograms of a tensor's streams (the encoder's tables come from them) and
 * the order-0 entropy bound. */
#include "frame.h"

#include <stdlib.h>

/* bytes with period P (1, 2 or 4): four count arrays cut the store-to-load
 * stalls of runs of equal bytes */
static void hist_bytes_small(hist_t h, const uint8_t * p, size_t n, unsigned period)
{
    if (period == 1) {
        uint32_t c[4][256];
        memset(c, 0, sizeof(c));
        size_t i = 0;
        for (; i + 4 <= n; i += 4) { c[0][p[i]]++; c[1][p[i + 1]]++; c[2][p[i + 2]]++; c[3][p[i + 3]]++; }
        for (; i < n; i++) c[0][p[i]]++;
        for (int s = 0; s < 256; s++) h[0][s] += (uint64_t)c[0][s] + c[1][s] + c[2][s] + c[3][s];
        return;
    }
    for (size_t i = 0; i < n; i++) h[i & (period - 1)][p[i]]++;
}

/* uint32 counters would overflow past 4 GiB: count in slices */
void ggz_hist_bytes(hist_t h, const uint8_t * p, size_t n, unsigned period)
{
    const size_t slice = (size_t)1 << 30;
    for (size_t off = 0; off < n; off += slice)
        hist_bytes_small(h, p + off, n - off < slice ? n - off : slice, period);
}

/* A Q8_0 tensor of nb blocks, rows of bpr blocks: h[0][0] counts the int8
 * symbols, h[1] the low and high bytes of the f16 scales (tables 0 and 1),
 * h[2] the same of the scales coded as differences along each row. */
void ggz_q8_histograms(hist_t * h, const uint8_t * src, size_t nb, size_t bpr)
{
    uint32_t c[4][256];
    memset(c, 0, sizeof(c));
    for (size_t b = 0; b < nb; b++) {
        const uint8_t * q = src + b * Q8_0_BLOCK + 2;
        for (int i = 0; i < Q8_0_QK; i += 4) { c[0][q[i]]++; c[1][q[i + 1]]++; c[2][q[i + 2]]++; c[3][q[i + 3]]++; }
        if ((b & 0xFFFFF) == 0xFFFFF) { /* flush before the u32 counts can overflow */
            for (int s = 0; s < 256; s++) h[0][0][s] += (uint64_t)c[0][s] + c[1][s] + c[2][s] + c[3][s];
            memset(c, 0, sizeof(c));
        }
        const uint16_t d = ggz_rd16(src + b * Q8_0_BLOCK);
        const uint16_t dd = b % bpr ? (uint16_t)(d - ggz_rd16(src + (b - 1) * Q8_0_BLOCK)) : d;
        h[1][0][d & 0xFF]++;  h[1][1][d >> 8]++;
        h[2][0][dd & 0xFF]++; h[2][1][dd >> 8]++;
    }
    for (int s = 0; s < 256; s++) h[0][0][s] += (uint64_t)c[0][s] + c[1][s] + c[2][s] + c[3][s];
}

void ggz_q8_tcq_classes(const uint8_t * src, size_t nb, size_t bpc, uint8_t * cls, hist_t h)
{
    uint8_t st[Q8_0_QK];
    for (size_t b = 0; b < nb; b++) {
        if (b % bpc == 0) memset(st, 0, sizeof st);
        const uint8_t * q = src + b * Q8_0_BLOCK + 2;
        for (int l = 0; l < Q8_0_QK; l++) {
            const unsigned c = st[l] >> 1;
            if (cls) cls[b * Q8_0_QK + l] = (uint8_t)c;
            if (h) h[c][q[l]]++;
            st[l] = ggz_tcq_next[st[l]][(q[l] >> 1) & 1];
        }
    }
}

/* the step of a row of bpr blocks: a majority vote, then checked */
static uint16_t q8_row_step(const uint8_t * row, size_t bpr)
{
    uint16_t step = 0;
    size_t votes = 0, same = 0;
    for (size_t b = 0; b < bpr; b++) {
        const uint16_t d = ggz_rd16(row + b * Q8_0_BLOCK);
        if (!votes) step = d;
        votes = d == step ? votes + 1 : votes - 1;
    }
    for (size_t b = 0; b < bpr; b++) same += ggz_rd16(row + b * Q8_0_BLOCK) == step;
    return 2 * same > bpr ? step : ggz_rd16(row);
}

/* v as LEB128 at out + pos, the bytes below cap (out may be NULL); @return
 * the position after it */
static size_t leb128(uint8_t * out, size_t cap, size_t pos, size_t v)
{
    for (;; v >>= 7) {
        if (out && pos < cap) out[pos] = (uint8_t)((v & 0x7F) | (v > 0x7F ? 0x80 : 0));
        pos++;
        if (v <= 0x7F) return pos;
    }
}

/* the head (FORMAT.md): the count of listed blocks, each one's gap to the one
 * before and its scale less its row's step (mod 2^16), both LEB128, then a
 * pad to an even length */
size_t ggz_q8_rows_head(const uint8_t * in, uint64_t raw, size_t row_size, uint8_t * steps, hist_t counts,
                        uint8_t * head, size_t cap)
{
    const size_t bpr = row_size / Q8_0_BLOCK, rows = (size_t)(raw / row_size);
    size_t pos = 4, count = 0, next = 0;
    for (size_t r = 0; r < rows; r++) {
        const uint16_t step = q8_row_step(in + r * row_size, bpr);
        if (steps) ggz_wr16(steps + 2 * r, step);
        if (counts) { counts[0][step & 0xFF]++; counts[1][step >> 8]++; }
        for (size_t b = r * bpr; b < (r + 1) * bpr; b++) {
            const uint16_t d = ggz_rd16(in + b * Q8_0_BLOCK);
            if (d == step) continue;
            pos = leb128(head, cap, pos, b - next);
            pos = leb128(head, cap, pos, (uint16_t)(d - step));
            next = b + 1;
            count++;
        }
    }
    if (head && cap >= 4) ggz_wr32(head, (uint32_t)count);
    if (pos & 1) { if (head && pos < cap) head[pos] = 0; pos++; }
    return pos;
}

/* order-0 bits of a scale stream: its low and high bytes, a table each */
double ggz_scale_bits(hist_t h) { return ggz_entropy_bits(h[0]) + ggz_entropy_bits(h[1]); }

double ggz_entropy_bound(const void * src_, size_t raw_size, int layout, size_t row_size)
{
    const uint8_t * src = src_;
    if (layout < 0 || layout >= GGZ_LAYOUT_COUNT) return -1.0;
    const size_t row = row_size ? row_size : ggz_layout_unit[layout];   /* as ggz_params.row_size */
    if (row % ggz_layout_unit[layout] || raw_size % row) return -1.0;
    hist_t * hist = calloc(3, sizeof(hist_t));
    if (!hist) return -1.0;
    double bits = 0;
    if (layout == GGZ_LAYOUT_Q8_0) {
        /* the scales as the encoder codes them: plain or row deltas, the cheaper */
        ggz_q8_histograms(hist, src, raw_size / Q8_0_BLOCK, row / Q8_0_BLOCK);
        const double plain = ggz_scale_bits(hist[1]), delta = ggz_scale_bits(hist[2]);
        /* or by row steps: theirs, and the list of blocks that differ as stored */
        memset(hist[1], 0, sizeof(hist_t));
        const size_t head = ggz_q8_rows_head(src, raw_size, row, NULL, hist[1], NULL, 0);
        const double rows = ggz_scale_bits(hist[1]) + 8.0 * (double)head;
        const double least = delta < plain ? delta : plain;
        bits = ggz_entropy_bits(hist[0][0]) + (rows < least ? rows : least);
    } else {
        ggz_hist_bytes(hist[0], src, raw_size, ggz_layout_period[layout][0]);
        for (int t = 0; t < GGZ_MAX_PERIOD; t++) bits += ggz_entropy_bits(hist[0][t]);
    }
    free(hist);
    return bits / 8.0;
}
