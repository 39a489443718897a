/* Frames (FORMAT.md section 1): the layouts, and the parser that checks a
 * frame's header, tables and chunk index before anything is decoded. */
#include "frame.h"

const unsigned ggz_layout_unit[GGZ_LAYOUT_COUNT]    = { 1, Q8_0_BLOCK, 2, 4 };
const unsigned ggz_layout_streams[GGZ_LAYOUT_COUNT] = { 1, 2, 1, 1 };
const unsigned ggz_layout_period[GGZ_LAYOUT_COUNT][GGZ_MAX_STREAMS] = { {1, 0}, {1, 2}, {2, 0}, {4, 0} };
const uint8_t ggz_tcq_next[GGZ_TCQ_STATES][2] = GGZ_TCQ_NEXT;

size_t ggz_frame_parse(frame_hdr * h, const uint8_t * src, size_t size)
{
    memset(h, 0, sizeof(*h));
    if (!src || size < GGZ_FRAME_HEADER_SIZE) return GGZ_ERROR(SRC_TRUNCATED);
    if (ggz_rd32(src) != GGZ_FRAME_MAGIC) return GGZ_ERROR(BAD_MAGIC);
    const unsigned version = src[4];
    if (version < GGZ_FORMAT_VERSION || version > GGZ_FORMAT_VERSION_ROWS) return GGZ_ERROR(VERSION);
    h->layout = src[5];
    h->flags = src[6];
    h->n_streams = src[7];
    h->raw_size = ggz_rd64(src + 8);
    h->row_size = ggz_rd32(src + 16);
    h->rows_per_chunk = ggz_rd32(src + 20);
    h->n_chunks = ggz_rd32(src + 24);
    if (h->layout >= GGZ_LAYOUT_COUNT || h->n_streams != ggz_layout_streams[h->layout]) return GGZ_ERROR(HEADER);
    if (h->flags & ~(FLAG_SCALE_DELTA | FLAG_TRELLIS)) return GGZ_ERROR(HEADER);
    /* version 2 is exactly the frames with trellis-coded Q8_0 symbols and
     * version 3 the Q8_0 frames with row-step scales (MODE_ROWS, below), with
     * or without the trellis */
    if ((h->flags & FLAG_TRELLIS) && (version == GGZ_FORMAT_VERSION || h->layout != GGZ_LAYOUT_Q8_0))
        return GGZ_ERROR(HEADER);
    if ((version == GGZ_FORMAT_VERSION_TRELLIS && !(h->flags & FLAG_TRELLIS)) ||
        (version == GGZ_FORMAT_VERSION_ROWS && h->layout != GGZ_LAYOUT_Q8_0)) return GGZ_ERROR(HEADER);
    h->version = version;
    if (!h->row_size || h->row_size % ggz_layout_unit[h->layout] || h->raw_size % h->row_size) return GGZ_ERROR(HEADER);
    if (!h->rows_per_chunk || (uint64_t)h->rows_per_chunk * h->row_size > (1u << 30)) return GGZ_ERROR(HEADER);
    /* n_chunks (a u32) must be exactly the chunks the rows fill, so raw_size is
     * below 2^32 chunks of at most 1 GiB: every size derived from it below
     * (chunk starts, index bytes, stream sums) fits a u64 */
    const uint64_t rows = h->raw_size / h->row_size;
    if (h->n_chunks != div_ceil(rows, h->rows_per_chunk)) return GGZ_ERROR(HEADER);
    if ((uint64_t)(size_t)h->raw_size != h->raw_size) return GGZ_ERROR(HEADER);
    h->chunk_raw = (uint64_t)h->rows_per_chunk * h->row_size;
    h->index_entry = 4 * h->n_streams + 4;

    size_t pos = GGZ_FRAME_HEADER_SIZE;
    for (unsigned s = 0; s < h->n_streams; s++) {
        const int tcq = s == 0 && (h->flags & FLAG_TRELLIS);
        h->period[s] = tcq ? 2 : ggz_layout_period[h->layout][s];
        h->prob_bits[s] = tcq ? GGZ_TCQ_PROB_BITS : GGZ_PROB_BITS;
        if (pos >= size) return GGZ_ERROR(SRC_TRUNCATED);
        h->mode[s] = src[pos++];
        if (h->mode[s] > MODE_ROWS) return GGZ_ERROR(HEADER);
        /* row steps: the scales of a version-3 Q8_0 frame, never row deltas */
        if ((h->mode[s] == MODE_ROWS) != (version == GGZ_FORMAT_VERSION_ROWS && s == 1) ||
            (h->mode[s] == MODE_ROWS && (h->layout != GGZ_LAYOUT_Q8_0 || (h->flags & FLAG_SCALE_DELTA))))
            return GGZ_ERROR(HEADER);
        if (h->mode[s] == MODE_RAW) continue;
        for (unsigned t = 0; t < h->period[s]; t++) {
            const size_t r = ggz_table_read(src + pos, size - pos, &h->freqs[s][t], h->prob_bits[s]);
            if (ggz_is_error(r)) return r;
            pos += r;
        }
    }
    h->index = src + pos;
    const uint64_t index_bytes = (uint64_t)h->n_chunks * h->index_entry;
    if (index_bytes > size - pos) return GGZ_ERROR(SRC_TRUNCATED);
    h->data_offset = pos + (size_t)index_bytes;

    uint32_t crc = ggz_crc32c(0, src, 28);
    crc = ggz_crc32c(crc, src + GGZ_FRAME_HEADER_SIZE, h->data_offset - GGZ_FRAME_HEADER_SIZE);
    if (crc != ggz_rd32(src + 28)) return GGZ_ERROR(CHECKSUM);

    /* every stream size must fit what its chunk holds */
    uint64_t total = h->data_offset;
    for (uint32_t j = 0; j < h->n_chunks; j++) {
        const uint8_t * e = h->index + (size_t)j * h->index_entry;
        const uint64_t raw = chunk_raw_len(h, j);
        for (unsigned s = 0; s < h->n_streams; s++) {
            const uint64_t n = stream_symbols(h->layout, s, raw), len = ggz_rd32(e + 4 * s);
            /* row steps: a u32 count of listed blocks first (their sizes are
             * checked as the chunk decodes), their rANS stream as long as the
             * blocks' would be at most */
            const uint64_t least = GGZ_STATE_BYTES + (h->mode[s] == MODE_ROWS ? 4 : 0);
            if (h->mode[s] == MODE_RAW ? len != n : (n ? (len < least || len > ggz_stream_bound(n)) : len != 0))
                return GGZ_ERROR(HEADER);
            total += len;
        }
        /* per chunk: the sum stays below size + 2^33, far from wrapping */
        if (total > size) return GGZ_ERROR(SRC_TRUNCATED);
    }
    h->frame_size = total;
    return (size_t)total;
}

size_t ggz_frame_info_get(const void * src, size_t srcSize, ggz_frame_info * info)
{
    frame_hdr h;
    const size_t r = ggz_frame_parse(&h, src, srcSize);
    if (ggz_is_error(r)) return r;
    if (info) {
        info->version = (int)h.version;
        info->layout = h.layout;
        info->raw_size = h.raw_size;
        info->frame_size = h.frame_size;
        info->row_size = h.row_size;
        info->rows_per_chunk = h.rows_per_chunk;
        info->n_chunks = h.n_chunks;
        info->n_streams = h.n_streams;
        info->chunk_raw_size = h.chunk_raw;
        info->flags = h.flags;
    }
    return r;
}
