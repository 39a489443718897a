/* Frames (FORMAT.md section 1) inside the library: the parsed header, the
 * layouts' geometry and what the encoder, the decoder and the batch pool
 * share.  Not installed. */
#ifndef GGZIP_FRAME_H
#define GGZIP_FRAME_H

#include "internal.h"

/* how a stream is stored; MODE_ROWS only for the scales of Q8_0 (version 3):
 * one step per row, rANS-coded, after a list of the blocks that differ */
enum { MODE_RAW = 0, MODE_RANS = 1, MODE_ROWS = 2 };
#define FLAG_SCALE_DELTA GGZ_FLAG_SCALE_DELTA
#define FLAG_TRELLIS     GGZ_FLAG_TRELLIS
#define Q8_0_BLOCK 34
#define Q8_0_QK    32

/* per layout: bytes a row is a multiple of, streams, and tables per stream */
extern const unsigned ggz_layout_unit[GGZ_LAYOUT_COUNT];
extern const unsigned ggz_layout_streams[GGZ_LAYOUT_COUNT];
extern const unsigned ggz_layout_period[GGZ_LAYOUT_COUNT][GGZ_MAX_STREAMS];

/* Everything the header, descriptors and index say, checked. */
typedef struct {
    int       layout;
    unsigned  version;
    unsigned  flags, n_streams;
    unsigned  period[GGZ_MAX_STREAMS];
    unsigned  prob_bits[GGZ_MAX_STREAMS];   /* of the stream's tables: 12, 11 for trellis symbols */
    unsigned  mode[GGZ_MAX_STREAMS];
    ggz_freqs freqs[GGZ_MAX_STREAMS][GGZ_MAX_PERIOD];
    uint64_t  raw_size;
    uint32_t  row_size, rows_per_chunk, n_chunks;
    uint64_t  chunk_raw;       /* raw bytes of a full chunk */
    const uint8_t * index;     /* n_chunks entries of 4 * n_streams + 4 bytes */
    size_t    index_entry;
    size_t    data_offset;     /* first chunk */
    uint64_t  frame_size;
} frame_hdr;

/* ceil(a / b) for b > 0, without the a + b - 1 that wraps for a near 2^64 */
static inline uint64_t div_ceil(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

static inline uint64_t chunk_raw_len(const frame_hdr * h, uint32_t j)
{
    const uint64_t start = (uint64_t)j * h->chunk_raw;
    return h->raw_size - start < h->chunk_raw ? h->raw_size - start : h->chunk_raw;
}

/* symbols of stream s in a chunk of `raw` bytes */
static inline uint64_t stream_symbols(int layout, unsigned s, uint64_t raw)
{
    if (layout != GGZ_LAYOUT_Q8_0) return raw;
    const uint64_t blocks = raw / Q8_0_BLOCK;
    return s == 0 ? blocks * Q8_0_QK : blocks * 2;
}

/* ---- frame.c: the parser ------------------------------------------------- */

/* Parse and check header, tables and index of the frame src[0, size).
 * @return the frame size, or an error code */
size_t ggz_frame_parse(frame_hdr * h, const uint8_t * src, size_t size);

/* ---- decode.c ------------------------------------------------------------- */

/* the decode tables of a frame's rANS streams */
typedef struct {
    ggz_dtab * dt[GGZ_MAX_STREAMS];
} dtabs;

int  ggz_dtabs_build(dtabs * d, const frame_hdr * h);   /* 0 or GGZ_ERR_ALLOC */
void ggz_dtabs_free(dtabs * d);

/* Chunk j, starting at in, checked and decoded into out (its Q8_0 scales
 * through scratch, (raw / 34) * 2 + 64 bytes).  @return 0 or a ggz_error. */
int ggz_chunk_decode(const frame_hdr * h, const dtabs * d, const uint8_t * in,
                     uint32_t j, uint8_t * out, uint8_t * scratch);
/* Chunks j[0] and j[1] of one frame at in[0] and in[1], as ggz_chunk_decode
 * on each (err[i] its result), their symbol streams decoded side by side
 * where the kernel can (ggz_decode2_fn).  out and scratch must not overlap. */
void ggz_chunk_decode2(const frame_hdr * h, const dtabs * d, const uint8_t * const * in, const uint32_t * j,
                       uint8_t * const * out, uint8_t * const * scratch, int * err);

/* ---- histogram.c (encoder side) ------------------------------------------- */

typedef uint64_t hist_t[GGZ_MAX_PERIOD][256];

/* adds the n bytes of p, table i % period for byte i, to h */
void   ggz_hist_bytes(hist_t h, const uint8_t * p, size_t n, unsigned period);
/* A Q8_0 tensor of nb blocks, rows of bpr blocks: h[0][0] counts the int8
 * symbols, h[1] the low and high bytes of the f16 scales (tables 0 and 1),
 * h[2] the same of the scales coded as differences along each row. */
void   ggz_q8_histograms(hist_t * h, const uint8_t * src, size_t nb, size_t bpr);
/* the trellis classes of the symbols of nb Q8_0 blocks (32 per block, lanes
 * restarting every bpc blocks) into cls, or counted by class into h[cls] */
void   ggz_q8_tcq_classes(const uint8_t * src, size_t nb, size_t bpc, uint8_t * cls, hist_t h);
/* MODE_ROWS (encoder side), one pass over a chunk's (`raw` bytes) rows: each
 * row's step (the scale most of its blocks share, else its first block's)
 * into steps (2 bytes a row) and counted into counts (low, high byte), the
 * head of its stream into head[0, cap); any of them may be NULL.  @return the
 * head's bytes (beyond cap: head holds only what fitted) */
size_t ggz_q8_rows_head(const uint8_t * in, uint64_t raw, size_t row_size, uint8_t * steps, hist_t counts,
                        uint8_t * head, size_t cap);
/* order-0 bits of a scale stream: its low and high bytes, a table each */
double ggz_scale_bits(hist_t h);

#endif /* GGZIP_FRAME_H */
