/* Decoding a frame's chunks: tables, streams into their places (Q8_0 symbols
 * into the blocks, scales through scratch), the CRC taken as the chunk
 * decodes; and ggz_decode_chunk, one chunk alone.  The thread pool that
 * decodes whole frames is batch.c. */
#include "frame.h"

#include <stdlib.h>

/* The scales of nb Q8_0 blocks from their stream into the blocks, the row
 * differences undone when delta is set (q8_scales_gather in encode.c). */
static void q8_scales_scatter(uint8_t * raw, const uint8_t * in, size_t nb,
                              size_t blocks_per_row, int delta)
{
    uint16_t prev = 0;
    for (size_t b = 0; b < nb; b++) {
        uint16_t d = ggz_rd16(in + 2 * b);
        if (delta && (b % blocks_per_row) != 0) d = (uint16_t)(d + prev);
        ggz_wr16(raw + b * Q8_0_BLOCK, d);
        prev = d;
    }
}

/* A LEB128 number below 2^32 (5 bytes at most) from in[*pos, len) into *v;
 * @return 0, or -1 if it runs past len, is longer or larger */
static int leb128(const uint8_t * in, size_t len, size_t * pos, uint32_t * v)
{
    *v = 0;
    for (unsigned shift = 0; shift < 35; shift += 7) {
        if (*pos >= len) return -1;
        const uint8_t c = in[(*pos)++];
        if (shift == 28 && (c & 0x70)) return -1;
        *v |= (uint32_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) return 0;
    }
    return -1;
}

/* The head of a MODE_ROWS stream (FORMAT.md: the count of listed blocks,
 * each one's gap to the one before and its scale less its row's step, both
 * LEB128, a pad to an even length) at in[0, len), for a chunk of rows of bpr
 * blocks, checked; with out, the listed blocks' scales written into them
 * (the rows' steps at steps).  @return the head's bytes, or 0 if it is damaged */
static size_t q8_rows_list(const uint8_t * in, size_t len, size_t rows, size_t bpr, const uint8_t * steps,
                           uint8_t * out)
{
    const uint32_t count = ggz_rd32(in);   /* the parser checked len >= 4 */
    const size_t nb = rows * bpr;
    if (count > nb) return 0;
    size_t pos = 4, next = 0;
    for (uint32_t e = 0; e < count; e++) {
        uint32_t gap, d;
        if (leb128(in, len, &pos, &gap) || gap >= nb - next || leb128(in, len, &pos, &d) || d > 0xFFFF) return 0;
        next += gap;
        if (out) ggz_wr16(out + next * Q8_0_BLOCK, (uint16_t)(ggz_rd16(steps + 2 * (next / bpr)) + d));
        next++;
    }
    pos += pos & 1;
    return pos <= len ? pos : 0;
}

/* A MODE_ROWS scale stream of a chunk of `raw` bytes: its head checked, the
 * rANS stream of the rows' steps decoded through scratch, every row's blocks
 * given its step, then the listed blocks their own scale. */
static int q8_rows_decode(const frame_hdr * h, const dtabs * d, const uint8_t * in, size_t len, uint64_t raw,
                          uint8_t * out, uint8_t * scratch, uint32_t * crc)
{
    const size_t bpr = h->row_size / Q8_0_BLOCK, rows = (size_t)(raw / h->row_size);
    const size_t head = q8_rows_list(in, len, rows, bpr, NULL, NULL);
    if (!head) return GGZ_ERR_CORRUPT;
    *crc = ggz_crc32c(*crc, in, head);
    const int err = ggz_decoder()->decode(in + head, len - head, scratch, 2 * rows, GGZ_LANES, d->dt[1], 2, crc);
    if (err) return err;
    for (size_t r = 0; r < rows; r++) {
        const uint16_t step = ggz_rd16(scratch + 2 * r);
        uint8_t * o = out + r * h->row_size;
        for (size_t b = 0; b < bpr; b++) ggz_wr16(o + b * Q8_0_BLOCK, step);
    }
    q8_rows_list(in, len, rows, bpr, scratch, out);
    return GGZ_OK;
}

int ggz_dtabs_build(dtabs * d, const frame_hdr * h)
{
    d->dt[0] = d->dt[1] = NULL;
    for (unsigned s = 0; s < h->n_streams; s++) {
        if (h->mode[s] == MODE_RAW) continue;
        /* only the period's tables (16 KiB each; Q8_0 streams have one): a
         * reader lives as long as llama.cpp keeps its tensor compressed */
        /* trellis symbols: both 11-bit tables in slot[0], class c at c << 11 */
        const int tcq = h->prob_bits[s] == GGZ_TCQ_PROB_BITS;
        d->dt[s] = malloc((tcq ? 1 : h->period[s]) * sizeof d->dt[s]->slot[0]);
        if (!d->dt[s]) { free(d->dt[0]); return GGZ_ERR_ALLOC; }
        for (unsigned t = 0; t < h->period[s]; t++)
            ggz_dtab_build(tcq ? d->dt[s]->slot[0] + (t << GGZ_TCQ_PROB_BITS) : d->dt[s]->slot[t], &h->freqs[s][t]);
    }
    return GGZ_OK;
}

void ggz_dtabs_free(dtabs * d) { free(d->dt[0]); free(d->dt[1]); }

static const uint8_t * chunk_ptr(const frame_hdr * h, const uint8_t * src, uint32_t j)
{
    /* sum of the sizes before chunk j; callers walking all chunks use offsets[] */
    uint64_t off = h->data_offset;
    for (uint32_t i = 0; i < j; i++)
        for (unsigned s = 0; s < h->n_streams; s++) off += ggz_rd32(h->index + (size_t)i * h->index_entry + 4 * s);
    return src + off;
}

/* Where stream s of a chunk decodes to: Q8_0 symbols go straight into the
 * blocks (stride 34), scales to scratch, everything else contiguously. */
static ggz_stream stream_desc(const frame_hdr * h, const dtabs * d, unsigned s, const uint8_t * in,
                              size_t len, uint64_t raw, uint8_t * out, uint8_t * scratch)
{
    ggz_stream st = { in, len, out, (size_t)stream_symbols(h->layout, s, raw), GGZ_LANES, d->dt[s], h->period[s] };
    if (h->layout == GGZ_LAYOUT_Q8_0) {
        if (s == 0) { st.dst = out + 2; st.stride = Q8_0_BLOCK; }
        else        { st.dst = scratch; }
    }
    return st;
}

/* Stream s into its output, chaining the CRC-32C of its bytes onto *crc (the
 * rANS kernels take the CRC in the same pass as the decode). */
static int decode_stream(const frame_hdr * h, unsigned s, const ggz_stream * st, uint32_t * crc)
{
    if (h->mode[s] == MODE_RANS) {
        const ggz_kernel * k = ggz_decoder();
        const ggz_decode_fn fn = (s == 0 && (h->flags & FLAG_TRELLIS))
            ? (k->decode_tcq ? k->decode_tcq : ggz_decode_tcq_scalar) : k->decode;
        return fn(st->src, st->size, st->dst, st->n, st->stride, st->tabs, st->period, crc);
    }
    *crc = ggz_crc32c(*crc, st->src, st->size);
    if (st->stride == GGZ_LANES) memcpy(st->dst, st->src, st->n);
    else for (size_t b = 0; b < st->n / Q8_0_QK; b++) memcpy(st->dst + b * st->stride, st->src + b * Q8_0_QK, Q8_0_QK);
    return GGZ_OK;
}

/* Chunk j at in failed with err: a checksum mismatch over its bytes wins */
static int chunk_fail(const frame_hdr * h, const uint8_t * in, uint32_t j, int err)
{
    const uint8_t * e = h->index + (size_t)j * h->index_entry;
    size_t total = 0;
    for (unsigned s = 0; s < h->n_streams; s++) total += ggz_rd32(e + 4 * s);
    return ggz_crc32c(0, in, total) != ggz_rd32(e + 4 * h->n_streams) ? GGZ_ERR_CHECKSUM : err;
}

/* Streams s and on of chunk j; those before are decoded (their bytes total,
 * their CRC crc). */
static int chunk_decode_from(const frame_hdr * h, const dtabs * d, const uint8_t * in, uint32_t j,
                             uint8_t * out, uint8_t * scratch, unsigned s, uint32_t crc, size_t total)
{
    const uint8_t * e = h->index + (size_t)j * h->index_entry;
    const uint64_t raw = chunk_raw_len(h, j);
    for (; s < h->n_streams; s++) {
        const size_t len = ggz_rd32(e + 4 * s);
        if (h->mode[s] == MODE_ROWS) {
            const int err = q8_rows_decode(h, d, in + total, len, raw, out, scratch, &crc);
            total += len;
            if (err) return chunk_fail(h, in, j, err);
            continue;
        }
        const ggz_stream st = stream_desc(h, d, s, in + total, len, raw, out, scratch);
        const int err = decode_stream(h, s, &st, &crc);
        total += len;
        if (err) return chunk_fail(h, in, j, err);
        if (h->layout == GGZ_LAYOUT_Q8_0 && s == 1)
            q8_scales_scatter(out, scratch, st.n / 2, h->row_size / Q8_0_BLOCK, h->flags & FLAG_SCALE_DELTA);
    }
    return crc != ggz_rd32(e + 4 * h->n_streams) ? GGZ_ERR_CHECKSUM : GGZ_OK;
}

/* Chunk j, starting at in, checked and decoded into out (its Q8_0 scales through scratch).
 * The checksum is taken while the chunk decodes, so damaged bytes may reach
 * the decoders (which bound every read and write) and out is undefined on
 * error; a checksum mismatch wins over the error a decoder may report first.
 * @return 0 or an error. */
int ggz_chunk_decode(const frame_hdr * h, const dtabs * d, const uint8_t * in,
                        uint32_t j, uint8_t * out, uint8_t * scratch)
{
    return chunk_decode_from(h, d, in, j, out, scratch, 0, 0, 0);
}

void ggz_chunk_decode2(const frame_hdr * h, const dtabs * d, const uint8_t * const * in, const uint32_t * j,
                       uint8_t * const * out, uint8_t * const * scratch, int * err)
{
    const ggz_decode2_fn fn = ggz_decoder()->decode2;
    const int tcq = (h->flags & FLAG_TRELLIS) != 0;
    if (!fn || h->mode[0] != MODE_RANS || (!tcq && h->period[0] != 1)) {
        for (unsigned i = 0; i < 2; i++) err[i] = ggz_chunk_decode(h, d, in[i], j[i], out[i], scratch[i]);
        return;
    }
    ggz_stream st[2];
    uint32_t crc[2] = { 0, 0 };
    int e[2];
    for (unsigned i = 0; i < 2; i++)
        st[i] = stream_desc(h, d, 0, in[i], ggz_rd32(h->index + (size_t)j[i] * h->index_entry),
                            chunk_raw_len(h, j[i]), out[i], scratch[i]);
    fn(st, crc, e, tcq);
    for (unsigned i = 0; i < 2; i++)
        err[i] = e[i] ? chunk_fail(h, in[i], j[i], e[i])
                      : chunk_decode_from(h, d, in[i], j[i], out[i], scratch[i], 1, crc[i], st[i].size);
}

size_t ggz_decode_chunk(void * dst, size_t dstCapacity, const void * src, size_t srcSize, uint32_t index)
{
    frame_hdr h;
    size_t r = ggz_frame_parse(&h, src, srcSize);
    if (ggz_is_error(r)) return r;
    if (index >= h.n_chunks) return GGZ_ERROR(PARAM);
    const uint64_t raw = chunk_raw_len(&h, index);
    if (!dst || dstCapacity < raw) return GGZ_ERROR(DST_TOO_SMALL);
    dtabs d;
    if (ggz_dtabs_build(&d, &h)) return GGZ_ERROR(ALLOC);
    uint8_t * scratch = malloc((size_t)(raw / Q8_0_BLOCK) * 2 + 64);
    const int err = scratch ? ggz_chunk_decode(&h, &d, chunk_ptr(&h, src, index), index, dst, scratch) : GGZ_ERR_ALLOC;
    free(scratch);
    ggz_dtabs_free(&d);
    return err ? (size_t)-(ptrdiff_t)err : (size_t)raw;
}
