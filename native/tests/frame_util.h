/* Test helpers that know the frame layout (FORMAT.md section 1) without the
 * library's internals: where the chunk index and the streams are, and how to
 * recompute the CRCs after a deliberate change, so that damage reaches the
 * rANS decoders instead of stopping at a checksum. */
#ifndef GGZIP_TEST_FRAME_UTIL_H
#define GGZIP_TEST_FRAME_UTIL_H

#include "ggzip.h"

#include <string.h>

static uint32_t fu_rd32(const uint8_t * p) { uint32_t v; memcpy(&v, p, 4); return v; }
static void fu_wr32(uint8_t * p, uint32_t v) { memcpy(p, &v, 4); }

typedef struct {
    unsigned n_streams;
    unsigned mode[GGZ_MAX_STREAMS];  /* 0 raw, 1 rANS, 2 row steps */
    uint32_t n_chunks;
    size_t   index;                  /* offset of the chunk index */
    size_t   entry;                  /* bytes per index entry */
    size_t   data;                   /* offset of chunk 0 */
} fu_frame;

/* Walks header, descriptors and tables; @return 0, or -1 if the frame is too
 * damaged to find its index. */
static int fu_walk(const uint8_t * f, size_t size, fu_frame * fr)
{
    static const unsigned period[GGZ_LAYOUT_COUNT][GGZ_MAX_STREAMS] = { {1, 0}, {1, 2}, {2, 0}, {4, 0} };
    if (size < GGZ_FRAME_HEADER_SIZE || f[5] >= GGZ_LAYOUT_COUNT) return -1;
    fr->n_streams = f[7];
    if (fr->n_streams < 1 || fr->n_streams > GGZ_MAX_STREAMS || !period[f[5]][fr->n_streams - 1]) return -1;
    fr->n_chunks = fu_rd32(f + 24);
    size_t pos = GGZ_FRAME_HEADER_SIZE;
    for (unsigned s = 0; s < fr->n_streams; s++) {
        if (pos >= size) return -1;
        fr->mode[s] = f[pos++];
        if (fr->mode[s] == 0) continue;   /* rANS (1) and row steps (2) have tables */
        /* flag bit 1 (trellis): two tables for the Q8_0 symbols */
        const unsigned np = (s == 0 && (f[6] & 2)) ? 2 : period[f[5]][s];
        for (unsigned t = 0; t < np; t++) {
            if (size - pos < 32) return -1;
            const uint8_t * bitmap = f + pos;
            pos += 32;
            for (unsigned sym = 0; sym < 256; sym++) {
                if (!(bitmap[sym >> 3] >> (sym & 7) & 1)) continue;
                if (pos >= size) return -1;
                pos += (f[pos] & 0x80) ? 2 : 1;
            }
            if (pos > size) return -1;
        }
    }
    fr->index = pos;
    fr->entry = 4 * (size_t)fr->n_streams + 4;
    if ((uint64_t)fr->n_chunks * fr->entry > size - pos) return -1;
    fr->data = pos + (size_t)fr->n_chunks * fr->entry;
    return 0;
}

/* Offset of stream s of chunk j and its size (*len); @return 0 or -1 if it
 * lies outside the frame. */
static int fu_stream(const uint8_t * f, size_t size, const fu_frame * fr, uint32_t j, unsigned s,
                     size_t * off, size_t * len)
{
    uint64_t o = fr->data;
    for (uint32_t i = 0; i <= j; i++)
        for (unsigned t = 0; t < fr->n_streams; t++) {
            const uint32_t l = fu_rd32(f + fr->index + i * fr->entry + 4 * t);
            if (i == j && t == s) {
                if (o + l > size) return -1;
                *off = (size_t)o;
                *len = l;
                return 0;
            }
            o += l;
        }
    return -1;
}

/* Recomputes every chunk CRC (as far as the chunks lie inside the frame) and
 * the header CRC.  @return 0, or -1 if the index cannot be found. */
static int fu_fix_crcs(uint8_t * f, size_t size)
{
    fu_frame fr;
    if (fu_walk(f, size, &fr)) return -1;
    uint64_t o = fr.data;
    for (uint32_t j = 0; j < fr.n_chunks; j++) {
        uint8_t * e = f + fr.index + j * fr.entry;
        uint64_t len = 0;
        for (unsigned s = 0; s < fr.n_streams; s++) len += fu_rd32(e + 4 * s);
        if (o + len > size) break;
        fu_wr32(e + 4 * fr.n_streams, ggz_crc32c(0, f + o, (size_t)len));
        o += len;
    }
    uint32_t crc = ggz_crc32c(0, f, 28);
    crc = ggz_crc32c(crc, f + GGZ_FRAME_HEADER_SIZE, fr.data - GGZ_FRAME_HEADER_SIZE);
    fu_wr32(f + 28, crc);
    return 0;
}

#endif /* GGZIP_TEST_FRAME_UTIL_H */
