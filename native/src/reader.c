/* Random access to a frame (ggz_reader): parsed and its tables built once, then
 * chunks decoded one at a time, concurrently, into buffers of the caller's.  What
 * the patched llama.cpp uses for tensors kept coded in RAM. */
#include "frame.h"

#include <stdlib.h>

struct ggz_reader {
    frame_hdr       h;
    dtabs           d;
    const uint8_t * src;
    uint64_t *      offset;   /* n_chunks + 1 starts of the chunks' stored bytes */
};

void ggz_reader_free(ggz_reader * r)
{
    if (!r) return;
    ggz_dtabs_free(&r->d);
    free(r->offset);
    free(r);
}

size_t ggz_reader_open(ggz_reader ** out, const void * src, size_t srcSize)
{
    if (!out) return GGZ_ERROR(PARAM);
    *out = NULL;
    ggz_reader * r = calloc(1, sizeof(*r));
    if (!r) return GGZ_ERROR(ALLOC);
    const size_t size = ggz_frame_parse(&r->h, src, srcSize);
    if (ggz_is_error(size)) { free(r); return size; }
    r->src = src;
    r->offset = malloc(((size_t)r->h.n_chunks + 1) * sizeof(uint64_t));
    if (!r->offset || ggz_dtabs_build(&r->d, &r->h)) {
        free(r->offset);
        free(r);
        return GGZ_ERROR(ALLOC);
    }
    uint64_t off = r->h.data_offset;   /* the parser checked that these sums fit the frame */
    for (uint32_t j = 0; j < r->h.n_chunks; j++) {
        r->offset[j] = off;
        for (unsigned s = 0; s < r->h.n_streams; s++) off += ggz_rd32(r->h.index + (size_t)j * r->h.index_entry + 4 * s);
    }
    r->offset[r->h.n_chunks] = off;
    *out = r;
    return size;
}

void ggz_reader_info(const ggz_reader * r, ggz_frame_info * info)
{
    const frame_hdr * h = &r->h;
    info->version = (int)h->version;
    info->layout = h->layout;
    info->raw_size = h->raw_size;
    info->frame_size = h->frame_size;
    info->row_size = h->row_size;
    info->rows_per_chunk = h->rows_per_chunk;
    info->n_chunks = h->n_chunks;
    info->n_streams = h->n_streams;
    info->chunk_raw_size = h->chunk_raw;
    info->flags = h->flags;
}

size_t ggz_reader_check(const ggz_reader * r, int64_t * bad_chunk)
{
    if (bad_chunk) *bad_chunk = -1;
    for (uint32_t j = 0; j < r->h.n_chunks; j++) {
        const uint32_t want = ggz_rd32(r->h.index + (size_t)j * r->h.index_entry + 4 * r->h.n_streams);
        if (ggz_crc32c(0, r->src + r->offset[j], (size_t)(r->offset[j + 1] - r->offset[j])) != want) {
            if (bad_chunk) *bad_chunk = j;
            return GGZ_ERROR(CHECKSUM);
        }
    }
    return (size_t)r->h.raw_size;
}

size_t ggz_reader_scratch_size(const ggz_reader * r)
{
    /* the Q8_0 scales of one chunk pass through scratch (ggz_chunk_decode) */
    return (size_t)(r->h.chunk_raw / Q8_0_BLOCK) * 2 + 64;
}

size_t ggz_reader_decode_chunk(const ggz_reader * r, uint32_t index, void * dst, size_t dstCapacity, void * scratch)
{
    if (!r || index >= r->h.n_chunks) return GGZ_ERROR(PARAM);
    const uint64_t raw = chunk_raw_len(&r->h, index);
    if (!dst || dstCapacity < raw) return GGZ_ERROR(DST_TOO_SMALL);
    if (!scratch) return GGZ_ERROR(PARAM);
    const int err = ggz_chunk_decode(&r->h, &r->d, r->src + r->offset[index], index, dst, scratch);
    return err ? (size_t)-(ptrdiff_t)err : (size_t)raw;
}

size_t ggz_reader_decode_pair(const ggz_reader * r, uint32_t index, void * const dst[2], size_t dstCapacity,
                              void * const scratch[2], int64_t * bad_chunk)
{
    if (bad_chunk) *bad_chunk = -1;
    if (!r || !dst || !scratch || index >= r->h.n_chunks || r->h.n_chunks - index < 2) return GGZ_ERROR(PARAM);
    const uint32_t j[2] = { index, index + 1 };
    const uint8_t * in[2];
    uint8_t * out[2], * sc[2];
    uint64_t raw = 0;
    for (unsigned i = 0; i < 2; i++) {
        const uint64_t len = chunk_raw_len(&r->h, j[i]);
        if (!dst[i] || dstCapacity < len) return GGZ_ERROR(DST_TOO_SMALL);
        if (!scratch[i]) return GGZ_ERROR(PARAM);
        in[i] = r->src + r->offset[j[i]];
        out[i] = dst[i];
        sc[i] = scratch[i];
        raw += len;
    }
    int err[2];
    ggz_chunk_decode2(&r->h, &r->d, in, j, out, sc, err);
    for (unsigned i = 0; i < 2; i++)
        if (err[i]) {
            if (bad_chunk) *bad_chunk = j[i];
            return (size_t)-(ptrdiff_t)err[i];
        }
    return (size_t)raw;
}
