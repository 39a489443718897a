/* Encoding a tensor into a frame: the chunk plan, the tables and stream
 * modes, the chunks (on threads), the index with its CRCs, the header. */
#include "frame.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

/* ---- planning ---------------------------------------------------------- */

/* no chunk count is rounded up below this many raw bytes a chunk (plan) */
#define GGZ_SPLIT_MIN (32u * 1024u)

/* The chunk plan of raw_size bytes: whole rows per chunk, at most chunk_size
 * (one row at least) and below 1 GiB, as even as whole rows allow, their count
 * a multiple of 4 or 2 where chunks stay large enough.  @return 0 or an error code */
static size_t plan(frame_hdr * h, size_t raw_size, const ggz_params * p)
{
    memset(h, 0, sizeof(*h));
    if (!p || p->layout < 0 || p->layout >= GGZ_LAYOUT_COUNT) return GGZ_ERROR(PARAM);
    h->layout = p->layout;
    h->n_streams = ggz_layout_streams[p->layout];
    for (unsigned s = 0; s < h->n_streams; s++) {
        h->period[s] = ggz_layout_period[p->layout][s];
        h->prob_bits[s] = GGZ_PROB_BITS;
    }
    if (p->trellis) {
        if (p->layout != GGZ_LAYOUT_Q8_0) return GGZ_ERROR(PARAM);
        h->flags |= FLAG_TRELLIS;
        h->period[0] = 2;           /* a table per trellis class */
        h->prob_bits[0] = GGZ_TCQ_PROB_BITS;
    }
    h->version = p->trellis ? GGZ_FORMAT_VERSION_TRELLIS : GGZ_FORMAT_VERSION;
    const unsigned unit = ggz_layout_unit[p->layout];
    const size_t row = p->row_size ? p->row_size : unit;
    if (row % unit || raw_size % row) return GGZ_ERROR(PARAM);
    /* stream sizes are u32: a chunk (one row at least) must stay well below 2 GiB */
    if (row > (1u << 30)) return GGZ_ERROR(PARAM);
    const size_t target = p->chunk_size ? p->chunk_size : GGZ_DEFAULT_CHUNK;
    size_t rpc = target / row;
    if (rpc < 1) rpc = 1;
    if (rpc * row > (1u << 30)) rpc = (1u << 30) / row;
    const uint64_t rows = raw_size / row;
    if (rows > UINT32_MAX) return GGZ_ERROR(PARAM);
    if (rows && rpc > rows) rpc = (size_t)rows;   /* a small tensor is one chunk of its own size */
    /* as many chunks, of equal rows: a short last chunk would leave threads (and
     * the two streams a kernel decodes side by side) waiting on the long ones.
     * Their count rounded up to a multiple of 4, else 2, where chunks stay at
     * least GGZ_SPLIT_MIN: a tensor kept compressed in RAM is decoded chunk by
     * chunk by every thread of a token, and an odd count idles one (Gemma-3's
     * one-chunk attn_k, three-chunk attn_q); about 270 bytes a chunk */
    if (rows) {
        uint64_t n = div_ceil(rows, rpc);
        for (uint64_t m = 4; m >= 2; m /= 2) {
            const uint64_t nm = div_ceil(n, m) * m;
            if (nm <= rows && raw_size / nm >= GGZ_SPLIT_MIN) { n = nm; break; }
        }
        rpc = (size_t)div_ceil(rows, n);
    }
    h->raw_size = raw_size;
    h->row_size = (uint32_t)row;
    h->rows_per_chunk = (uint32_t)rpc;
    h->n_chunks = (uint32_t)div_ceil(rows, rpc);
    h->chunk_raw = (uint64_t)rpc * row;
    h->index_entry = 4 * h->n_streams + 4;
    return 0;
}

static uint64_t header_size_max(const frame_hdr * h)
{
    uint64_t n = GGZ_FRAME_HEADER_SIZE;
    for (unsigned s = 0; s < h->n_streams; s++) n += 1 + h->period[s] * (32 + 2 * 256);
    return n + (uint64_t)h->n_chunks * h->index_entry;
}

size_t ggz_rows_per_chunk(size_t raw_size, const ggz_params * params)
{
    frame_hdr h;
    const size_t r = plan(&h, raw_size, params);
    return ggz_is_error(r) ? r : h.rows_per_chunk;
}

size_t ggz_frame_bound(size_t raw_size, const ggz_params * params)
{
    frame_hdr h;
    if (ggz_is_error(plan(&h, raw_size, params))) return 0;
    /* plan() keeps raw_size below 2^62 (2^32 rows of at most 2^30 bytes), so
     * the sum fits a u64; it may not fit a 32-bit size_t */
    uint64_t n = header_size_max(&h);
    for (unsigned s = 0; s < h.n_streams; s++)
        n += (uint64_t)h.n_chunks * ggz_stream_bound(1) + 2 * stream_symbols(h.layout, s, raw_size);
    return n == (size_t)n ? (size_t)n : 0;
}

/* ---- Q8_0 scales ------------------------------------------------------- */

/* The scale stream of blocks [b0, b0 + nb): each f16 scale, or with
 * FLAG_SCALE_DELTA its difference to the previous scale of the row. */
static void q8_scales_gather(uint8_t * out, const uint8_t * raw, size_t b0, size_t nb,
                             size_t blocks_per_row, int delta)
{
    uint16_t prev = 0;
    for (size_t b = 0; b < nb; b++) {
        const uint16_t d = ggz_rd16(raw + (b0 + b) * Q8_0_BLOCK);
        const int first = ((b0 + b) % blocks_per_row) == 0;
        ggz_wr16(out + 2 * b, (uint16_t)(delta && !first ? d - prev : d));
        prev = d;
    }
}

/* The MODE_ROWS scale stream of a chunk into out (capacity cap): its head,
 * then the rows' steps rANS-coded.  @return its size or an error code */
static size_t q8_rows_encode(const frame_hdr * h, const uint8_t * in, uint64_t raw, const ggz_etab * et,
                             uint8_t * out, size_t cap)
{
    const size_t rows = (size_t)(raw / h->row_size);
    uint8_t * steps = malloc(2 * rows + 1);
    if (!steps) return GGZ_ERROR(ALLOC);
    const size_t head = ggz_q8_rows_head(in, raw, h->row_size, steps, NULL, out, cap);
    /* count_rows keeps the head within cap */
    const size_t n = head > cap ? GGZ_ERROR(DST_TOO_SMALL)
                                : ggz_encode_scalar(steps, 2 * rows, GGZ_LANES, et, 2, NULL, out + head, cap - head);
    free(steps);
    return ggz_is_error(n) ? n : head + n;
}

/* ---- encode ------------------------------------------------------------ */

typedef struct {
    const frame_hdr * h;
    const uint8_t   * src;
    ggz_etab        * et[GGZ_MAX_STREAMS];
    uint8_t        ** bufs;       /* per chunk, when threaded */
    size_t          * sizes;      /* n_chunks * n_streams */
    atomic_uint       next;
    atomic_int        err;
} enc_job;

static size_t chunk_bound(const frame_hdr * h, uint64_t raw)
{
    size_t n = 0;
    for (unsigned s = 0; s < h->n_streams; s++) n += ggz_stream_bound(stream_symbols(h->layout, s, raw));
    return n;
}

/* Encode chunk j into dst (capacity chunk_bound); sizes[s] receive the stream sizes. */
static int encode_chunk(const frame_hdr * h, const uint8_t * src, ggz_etab * const * et,
                        uint32_t j, uint8_t * dst, size_t * sizes)
{
    const uint64_t raw = chunk_raw_len(h, j);
    const uint8_t * in = src + (uint64_t)j * h->chunk_raw;
    const ggz_encode_fn enc = ggz_encode_scalar;   /* the one encoder (ggzip.h, kernels) */
    size_t pos = 0;
    for (unsigned s = 0; s < h->n_streams; s++) {
        const size_t n = (size_t)stream_symbols(h->layout, s, raw);
        const size_t cap = ggz_stream_bound(n);
        uint8_t * out = dst + pos;
        if (h->mode[s] == MODE_ROWS) {
            sizes[s] = q8_rows_encode(h, in, raw, et[s], out, cap);
        } else if (h->layout == GGZ_LAYOUT_Q8_0 && s == 1) {
            /* scales: gathered (and delta coded) into a small buffer first */
            const size_t nb = n / 2;
            uint8_t * tmp = malloc(n ? n : 1);
            if (!tmp) return GGZ_ERR_ALLOC;
            q8_scales_gather(tmp, src, (size_t)((uint64_t)j * h->chunk_raw / Q8_0_BLOCK), nb,
                             h->row_size / Q8_0_BLOCK, h->flags & FLAG_SCALE_DELTA);
            if (h->mode[s] == MODE_RAW) { memcpy(out, tmp, n); sizes[s] = n; }
            else sizes[s] = enc(tmp, n, GGZ_LANES, et[s], h->period[s], NULL, out, cap);
            free(tmp);
        } else if (h->layout == GGZ_LAYOUT_Q8_0) {
            if (h->mode[s] == MODE_RAW) {
                for (size_t b = 0; b < n / Q8_0_QK; b++)
                    memcpy(out + b * Q8_0_QK, in + b * Q8_0_BLOCK + 2, Q8_0_QK);
                sizes[s] = n;
            } else if (h->flags & FLAG_TRELLIS) {
                /* each symbol's table is its lane's trellis class, known from
                 * the symbols before it: found forwards, coded backwards */
                uint8_t * cls = malloc(n ? n : 1);
                if (!cls) return GGZ_ERR_ALLOC;
                ggz_q8_tcq_classes(in, n / Q8_0_QK, n / Q8_0_QK, cls, NULL);
                sizes[s] = enc(in + 2, n, Q8_0_BLOCK, et[s], h->period[s], cls, out, cap);
                free(cls);
            } else {
                sizes[s] = enc(in + 2, n, Q8_0_BLOCK, et[s], h->period[s], NULL, out, cap);
            }
        } else {
            if (h->mode[s] == MODE_RAW) { memcpy(out, in, n); sizes[s] = n; }
            else sizes[s] = enc(in, n, GGZ_LANES, et[s], h->period[s], NULL, out, cap);
        }
        if (ggz_is_error(sizes[s])) return (int)ggz_error_code(sizes[s]);
        pos += sizes[s];
    }
    return GGZ_OK;
}

static void * enc_worker(void * arg)
{
    enc_job * job = arg;
    const frame_hdr * h = job->h;
    for (;;) {
        const unsigned j = atomic_fetch_add(&job->next, 1);
        if (j >= h->n_chunks || atomic_load(&job->err)) break;
        uint8_t * buf = malloc(chunk_bound(h, chunk_raw_len(h, j)) + 1);
        int err = buf ? encode_chunk(h, job->src, job->et, j, buf, job->sizes + (size_t)j * h->n_streams)
                      : GGZ_ERR_ALLOC;
        job->bufs[j] = buf;
        if (err) { int zero = 0; atomic_compare_exchange_strong(&job->err, &zero, err); }
    }
    return NULL;
}

/* Runs fn on up to n_threads threads, the caller being one of them.  A thread
 * the OS refuses is not an error (ggzip.h, "Threads"): fn shares the work out
 * through the job, so the threads that run do all of it. */
static void run_threads(void * (*fn)(void *), void * job, int n_threads)
{
    pthread_t tid[64];
    if (n_threads > 64) n_threads = 64;
    int started = 0;
    for (int t = 1; t < n_threads; t++) {
        if (pthread_create(&tid[started], NULL, fn, job)) break;
        started++;
    }
    fn(job);
    for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
}

/* What coding the Q8_0 scales by row steps (MODE_ROWS) would cost */
typedef struct {
    uint64_t head;     /* bytes of the chunks' heads (listed blocks) */
    int      fits;     /* every chunk's stream within the bound of its scales' */
} rows_cost;

/* The rows' steps counted into hist (low, high byte), the heads' bytes, and
 * whether every chunk's MODE_ROWS stream fits where its scales' stream is
 * bounded (chunk_bound) */
static void count_rows(const frame_hdr * h, const uint8_t * src, hist_t hist, rows_cost * rc)
{
    rc->head = 0;
    rc->fits = 1;
    for (uint32_t j = 0; j < h->n_chunks; j++) {
        const uint64_t raw = chunk_raw_len(h, j), rows = raw / h->row_size;
        const uint8_t * in = src + (uint64_t)j * h->chunk_raw;
        const size_t head = ggz_q8_rows_head(in, raw, h->row_size, NULL, hist, NULL, 0);
        rc->head += head;
        if (head + ggz_stream_bound(2 * rows) > ggz_stream_bound(stream_symbols(h->layout, 1, raw))) rc->fits = 0;
    }
}

/* Step 1: the histograms of each stream into hist[0..n_streams); for Q8_0 the
 * scales' coding, as stored or as row differences (whichever is cheaper), is
 * chosen here into h->flags, hist[2] holding the differences' counts, and the
 * rows' steps counted into hist[3] (choose_tables weighs MODE_ROWS). */
static void count_symbols(frame_hdr * h, const uint8_t * src, hist_t * hist, rows_cost * rc)
{
    if (h->layout == GGZ_LAYOUT_Q8_0) {
        ggz_q8_histograms(hist, src, h->raw_size / Q8_0_BLOCK, h->row_size / Q8_0_BLOCK);
        if (h->flags & FLAG_TRELLIS) {   /* the symbols by class instead */
            memset(hist[0], 0, sizeof(hist_t));
            ggz_q8_tcq_classes(src, h->raw_size / Q8_0_BLOCK, h->chunk_raw / Q8_0_BLOCK, NULL, hist[0]);
        }
        if (ggz_scale_bits(hist[2]) < ggz_scale_bits(hist[1])) {
            h->flags |= FLAG_SCALE_DELTA;
            memcpy(hist[1], hist[2], sizeof(hist_t));
        }
        count_rows(h, src, hist[3], rc);
    } else {
        ggz_hist_bytes(hist[0], src, h->raw_size, h->period[0]);
    }
}

/* bytes of stream s coded by rANS with tables normalised from hist into freqs */
static double rans_bytes(const frame_hdr * h, unsigned s, hist_t hist, ggz_freqs * freqs)
{
    double bits = 0, table_bytes = 0;
    for (unsigned t = 0; t < h->period[s]; t++) {
        ggz_normalize(hist[t], &freqs[t], h->prob_bits[s]);
        bits += ggz_cost_bits(hist[t], &freqs[t], h->prob_bits[s]);
        table_bytes += 32 + 256;
    }
    return bits / 8 + table_bytes + (double)h->n_chunks * GGZ_STATE_BYTES;
}

/* Step 2: each stream's tables, and its mode: raw where rANS would not pay
 * for its states and tables.  Writes the stream descriptors at p.
 * @return the end of the descriptors */
static uint8_t * choose_tables(frame_hdr * h, hist_t * hist, const rows_cost * rc, uint8_t * p)
{
    double sym_bytes = 0;   /* stream 0's */
    for (unsigned s = 0; s < h->n_streams; s++) {
        const uint64_t n = stream_symbols(h->layout, s, h->raw_size);
        const double rans = rans_bytes(h, s, hist[s], h->freqs[s]);
        h->mode[s] = (n && rans < (double)n) ? MODE_RANS : MODE_RAW;
        if (s == 0) sym_bytes = h->mode[s] == MODE_RANS ? rans : (double)n;
        if (h->layout == GGZ_LAYOUT_Q8_0 && s == 1 && n && rc->fits) {
            /* the scales by row steps where that costs at most 1/4096 of the
             * symbols' bytes more than the cheaper of the others: their
             * decode then handles two symbols a row, not two a block, and a
             * chunk decodes 2-10% faster (scripts/bench_codec.py) */
            ggz_freqs freqs[GGZ_MAX_PERIOD];
            const double rows = rans_bytes(h, s, hist[3], freqs) + (double)rc->head;
            if (rows <= (rans < (double)n ? rans : (double)n) + sym_bytes / 4096) {
                h->mode[s] = MODE_ROWS;
                h->flags &= ~FLAG_SCALE_DELTA;
                h->version = GGZ_FORMAT_VERSION_ROWS;
                memcpy(h->freqs[s], freqs, sizeof freqs);
            }
        }
        *p++ = (uint8_t)h->mode[s];
        if (h->mode[s] != MODE_RAW)
            for (unsigned t = 0; t < h->period[s]; t++)
                p += ggz_table_write(p, 32 + 2 * 256, &h->freqs[s][t]);
    }
    return p;
}

/* Step 3: the chunks, one after the other into data, on n_threads threads
 * (each into a buffer of its own, copied in order).  sizes[j * n_streams + s]
 * receives the size of stream s of chunk j.  @return 0 or a ggz_error */
static int encode_chunks(const frame_hdr * h, const uint8_t * src, ggz_etab * const * et,
                         int n_threads, uint8_t * data, size_t * sizes, uint8_t ** end)
{
    uint8_t * w = data;
    int err = GGZ_OK;
    if (n_threads <= 1) {
        for (uint32_t j = 0; j < h->n_chunks && !err; j++) {
            err = encode_chunk(h, src, et, j, w, sizes + (size_t)j * h->n_streams);
            for (unsigned s = 0; s < h->n_streams && !err; s++) w += sizes[(size_t)j * h->n_streams + s];
        }
        *end = w;
        return err;
    }
    enc_job job = { .h = h, .src = src, .et = { et[0], et[1] }, .sizes = sizes };
    atomic_init(&job.next, 0);
    atomic_init(&job.err, 0);
    job.bufs = calloc(h->n_chunks, sizeof(uint8_t *));
    if (!job.bufs) return GGZ_ERR_ALLOC;
    run_threads(enc_worker, &job, n_threads);
    err = atomic_load(&job.err);
    for (uint32_t j = 0; j < h->n_chunks; j++) {
        if (!err) {
            size_t len = 0;
            for (unsigned s = 0; s < h->n_streams; s++) len += sizes[(size_t)j * h->n_streams + s];
            memcpy(w, job.bufs[j], len);
            w += len;
        }
        free(job.bufs[j]);
    }
    free(job.bufs);
    *end = w;
    return err;
}

/* Step 4: the chunk index, stream sizes and the CRC of each chunk's bytes */
static void write_index(const frame_hdr * h, uint8_t * index, const uint8_t * data, const size_t * sizes)
{
    const uint8_t * c = data;
    for (uint32_t j = 0; j < h->n_chunks; j++) {
        uint8_t * e = index + (size_t)j * h->index_entry;
        size_t len = 0;
        for (unsigned s = 0; s < h->n_streams; s++) {
            ggz_wr32(e + 4 * s, (uint32_t)sizes[(size_t)j * h->n_streams + s]);
            len += sizes[(size_t)j * h->n_streams + s];
        }
        ggz_wr32(e + 4 * h->n_streams, ggz_crc32c(0, c, len));
        c += len;
    }
}

/* Step 5: the header, its CRC covering it, the descriptors and the index */
static void write_header(const frame_hdr * h, uint8_t * dst, const uint8_t * data)
{
    ggz_wr32(dst + 0, GGZ_FRAME_MAGIC);
    dst[4] = (uint8_t)h->version;
    dst[5] = (uint8_t)h->layout;
    dst[6] = (uint8_t)h->flags;
    dst[7] = (uint8_t)h->n_streams;
    ggz_wr64(dst + 8, h->raw_size);
    ggz_wr32(dst + 16, h->row_size);
    ggz_wr32(dst + 20, h->rows_per_chunk);
    ggz_wr32(dst + 24, h->n_chunks);
    uint32_t crc = ggz_crc32c(0, dst, 28);
    crc = ggz_crc32c(crc, dst + GGZ_FRAME_HEADER_SIZE, (size_t)(data - dst) - GGZ_FRAME_HEADER_SIZE);
    ggz_wr32(dst + 28, crc);
}

size_t ggz_encode_tensor(void * dst_, size_t dstCapacity, const void * src_, size_t raw_size,
                         const ggz_params * params)
{
    uint8_t * dst = dst_;
    const uint8_t * src = src_;
    frame_hdr h;
    size_t r = plan(&h, raw_size, params);
    if (ggz_is_error(r)) return r;
    if (!src && raw_size) return GGZ_ERROR(PARAM);
    const size_t bound = ggz_frame_bound(raw_size, params);
    if (!bound) return GGZ_ERROR(PARAM);   /* a bound past size_t */
    if (dstCapacity < bound) return GGZ_ERROR(DST_TOO_SMALL);

    hist_t * hist = calloc(GGZ_MAX_STREAMS + 2, sizeof(hist_t));
    if (!hist) return GGZ_ERROR(ALLOC);
    rows_cost rc = { 0, 0 };
    count_symbols(&h, src, hist, &rc);
    uint8_t * const index = choose_tables(&h, hist, &rc, dst + GGZ_FRAME_HEADER_SIZE);
    free(hist);

    int err = GGZ_OK;
    ggz_etab * et[GGZ_MAX_STREAMS] = { NULL, NULL };
    for (unsigned s = 0; s < h.n_streams && !err; s++) {
        if (h.mode[s] == MODE_RAW) continue;
        et[s] = malloc(sizeof(ggz_etab));
        if (!et[s]) { err = GGZ_ERR_ALLOC; break; }
        for (unsigned t = 0; t < h.period[s]; t++) ggz_etab_build(et[s]->sym[t], &h.freqs[s][t], h.prob_bits[s]);
    }
    uint8_t * const data = index + (size_t)h.n_chunks * h.index_entry;
    size_t * sizes = err ? NULL : malloc(((size_t)h.n_chunks * h.n_streams + 1) * sizeof(size_t));
    if (!err && !sizes) err = GGZ_ERR_ALLOC;
    const int n_threads = params->n_threads < 1 ? 1 : params->n_threads > (int)h.n_chunks ? (int)h.n_chunks : params->n_threads;
    uint8_t * end = data;
    if (!err) err = encode_chunks(&h, src, et, n_threads, data, sizes, &end);
    free(et[0]);
    free(et[1]);
    if (!err) {
        write_index(&h, index, data, sizes);
        write_header(&h, dst, data);
    }
    free(sizes);
    return err ? (size_t)-(ptrdiff_t)err : (size_t)(end - dst);
}
