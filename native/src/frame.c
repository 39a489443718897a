/* Tensor frames (FORMAT.md section 1): planning chunks, choosing tables and
 * stream modes, the chunk index with its CRCs, and multi-threaded
 * encode / decode / verify. */
#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#if defined(__linux__)
#include <errno.h>
#include <sys/resource.h>
#endif

enum { MODE_RAW = 0, MODE_RANS = 1 };
#define FLAG_SCALE_DELTA 1u
#define Q8_0_BLOCK 34
#define Q8_0_QK    32

static const unsigned layout_unit[GGZ_LAYOUT_COUNT]    = { 1, Q8_0_BLOCK, 2, 4 };
static const unsigned layout_streams[GGZ_LAYOUT_COUNT] = { 1, 2, 1, 1 };
static const unsigned layout_period[GGZ_LAYOUT_COUNT][GGZ_MAX_STREAMS] = { {1, 0}, {1, 2}, {2, 0}, {4, 0} };

/* Everything the header, descriptors and index say, checked. */
typedef struct {
    int       layout;
    unsigned  flags, n_streams;
    unsigned  period[GGZ_MAX_STREAMS];
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
static uint64_t div_ceil(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

static uint64_t chunk_raw_len(const frame_hdr * h, uint32_t j)
{
    const uint64_t start = (uint64_t)j * h->chunk_raw;
    return h->raw_size - start < h->chunk_raw ? h->raw_size - start : h->chunk_raw;
}

/* symbols of stream s in a chunk of `raw` bytes */
static uint64_t stream_symbols(int layout, unsigned s, uint64_t raw)
{
    if (layout != GGZ_LAYOUT_Q8_0) return raw;
    const uint64_t blocks = raw / Q8_0_BLOCK;
    return s == 0 ? blocks * Q8_0_QK : blocks * 2;
}

/* ---- planning ---------------------------------------------------------- */

static size_t plan(frame_hdr * h, size_t raw_size, const ggz_params * p)
{
    memset(h, 0, sizeof(*h));
    if (!p || p->layout < 0 || p->layout >= GGZ_LAYOUT_COUNT) return GGZ_ERROR(PARAM);
    h->layout = p->layout;
    h->n_streams = layout_streams[p->layout];
    for (unsigned s = 0; s < h->n_streams; s++) h->period[s] = layout_period[p->layout][s];
    const unsigned unit = layout_unit[p->layout];
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

/* ---- histograms -------------------------------------------------------- */

typedef uint64_t hist_t[GGZ_MAX_PERIOD][256];

/* bytes with period P (1, 2 or 4): four count arrays cut the store-to-load
 * stalls of runs of equal bytes */
static void hist_bytes(hist_t h, const uint8_t * p, size_t n, unsigned period)
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
static void hist_bytes_big(hist_t h, const uint8_t * p, size_t n, unsigned period)
{
    const size_t slice = (size_t)1 << 30;
    for (size_t off = 0; off < n; off += slice)
        hist_bytes(h, p + off, n - off < slice ? n - off : slice, period);
}

/* A Q8_0 tensor of nb blocks, rows of bpr blocks: h[0][0] counts the int8
 * symbols, h[1] the low and high bytes of the f16 scales (tables 0 and 1),
 * h[2] the same of the scales coded as differences along each row. */
static void q8_histograms(hist_t * h, const uint8_t * src, size_t nb, size_t bpr)
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

/* order-0 bits of a scale stream: its low and high bytes, a table each */
static double scale_bits(const hist_t h) { return ggz_entropy_bits(h[0]) + ggz_entropy_bits(h[1]); }

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
    const ggz_encode_fn enc = ggz_encoder()->encode;
    size_t pos = 0;
    for (unsigned s = 0; s < h->n_streams; s++) {
        const size_t n = (size_t)stream_symbols(h->layout, s, raw);
        const size_t cap = ggz_stream_bound(n);
        uint8_t * out = dst + pos;
        if (h->layout == GGZ_LAYOUT_Q8_0 && s == 1) {
            /* scales: gathered (and delta coded) into a small buffer first */
            const size_t nb = n / 2;
            uint8_t * tmp = malloc(n ? n : 1);
            if (!tmp) return GGZ_ERR_ALLOC;
            q8_scales_gather(tmp, src, (size_t)((uint64_t)j * h->chunk_raw / Q8_0_BLOCK), nb,
                             h->row_size / Q8_0_BLOCK, h->flags & FLAG_SCALE_DELTA);
            if (h->mode[s] == MODE_RAW) { memcpy(out, tmp, n); sizes[s] = n; }
            else sizes[s] = enc(tmp, n, GGZ_LANES, et[s], h->period[s], out, cap);
            free(tmp);
        } else if (h->layout == GGZ_LAYOUT_Q8_0) {
            if (h->mode[s] == MODE_RAW) {
                for (size_t b = 0; b < n / Q8_0_QK; b++)
                    memcpy(out + b * Q8_0_QK, in + b * Q8_0_BLOCK + 2, Q8_0_QK);
                sizes[s] = n;
            } else {
                sizes[s] = enc(in + 2, n, Q8_0_BLOCK, et[s], h->period[s], out, cap);
            }
        } else {
            if (h->mode[s] == MODE_RAW) { memcpy(out, in, n); sizes[s] = n; }
            else sizes[s] = enc(in, n, GGZ_LANES, et[s], h->period[s], out, cap);
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

    /* histograms of each stream (and, for Q8_0 scales, of both codings) */
    hist_t * hist = calloc(GGZ_MAX_STREAMS + 1, sizeof(hist_t));
    if (!hist) return GGZ_ERROR(ALLOC);
    if (h.layout == GGZ_LAYOUT_Q8_0) {
        q8_histograms(hist, src, raw_size / Q8_0_BLOCK, h.row_size / Q8_0_BLOCK);
        if (scale_bits(hist[2]) < scale_bits(hist[1])) { h.flags |= FLAG_SCALE_DELTA; memcpy(hist[1], hist[2], sizeof(hist_t)); }
    } else {
        hist_bytes_big(hist[0], src, raw_size, h.period[0]);
    }

    /* tables, and raw mode where rANS would not pay for its states and tables */
    uint8_t * p = dst + GGZ_FRAME_HEADER_SIZE;
    for (unsigned s = 0; s < h.n_streams; s++) {
        const uint64_t n = stream_symbols(h.layout, s, raw_size);
        double bits = 0, table_bytes = 0;
        for (unsigned t = 0; t < h.period[s]; t++) {
            ggz_normalize(hist[s][t], &h.freqs[s][t]);
            bits += ggz_cost_bits(hist[s][t], &h.freqs[s][t]);
            table_bytes += 32 + 256;
        }
        const double rans = bits / 8 + table_bytes + (double)h.n_chunks * GGZ_STATE_BYTES;
        h.mode[s] = (n && rans < (double)n) ? MODE_RANS : MODE_RAW;
        *p++ = (uint8_t)h.mode[s];
        if (h.mode[s] == MODE_RANS)
            for (unsigned t = 0; t < h.period[s]; t++)
                p += ggz_table_write(p, 32 + 2 * 256, &h.freqs[s][t]);
    }
    free(hist);

    ggz_etab * et[GGZ_MAX_STREAMS] = { NULL, NULL };
    for (unsigned s = 0; s < h.n_streams; s++) {
        if (h.mode[s] != MODE_RANS) continue;
        et[s] = malloc(sizeof(ggz_etab));
        if (!et[s]) { free(et[0]); return GGZ_ERROR(ALLOC); }
        for (unsigned t = 0; t < h.period[s]; t++) ggz_etab_build(et[s]->sym[t], &h.freqs[s][t]);
    }

    uint8_t * index = p;
    uint8_t * data = index + (size_t)h.n_chunks * h.index_entry;
    size_t * sizes = malloc(((size_t)h.n_chunks * h.n_streams + 1) * sizeof(size_t));
    int err = sizes ? GGZ_OK : GGZ_ERR_ALLOC;
    int n_threads = params->n_threads > 1 ? params->n_threads : 1;
    if (n_threads > (int)h.n_chunks) n_threads = (int)h.n_chunks;

    uint8_t * w = data;
    if (!err && n_threads <= 1) {
        for (uint32_t j = 0; j < h.n_chunks && !err; j++) {
            err = encode_chunk(&h, src, et, j, w, sizes + (size_t)j * h.n_streams);
            for (unsigned s = 0; s < h.n_streams && !err; s++) w += sizes[(size_t)j * h.n_streams + s];
        }
    } else if (!err) {
        enc_job job = { .h = &h, .src = src, .et = { et[0], et[1] }, .sizes = sizes };
        atomic_init(&job.next, 0);
        atomic_init(&job.err, 0);
        job.bufs = calloc(h.n_chunks, sizeof(uint8_t *));
        if (!job.bufs) err = GGZ_ERR_ALLOC;
        else {
            run_threads(enc_worker, &job, n_threads);
            err = atomic_load(&job.err);
            for (uint32_t j = 0; j < h.n_chunks; j++) {
                if (!err) {
                    size_t len = 0;
                    for (unsigned s = 0; s < h.n_streams; s++) len += sizes[(size_t)j * h.n_streams + s];
                    memcpy(w, job.bufs[j], len);
                    w += len;
                }
                free(job.bufs[j]);
            }
            free(job.bufs);
        }
    }
    free(et[0]);
    free(et[1]);
    if (err) { free(sizes); return (size_t)-(ptrdiff_t)err; }

    /* chunk index: stream sizes and the CRC of each chunk's bytes */
    const uint8_t * c = data;
    for (uint32_t j = 0; j < h.n_chunks; j++) {
        uint8_t * e = index + (size_t)j * h.index_entry;
        size_t len = 0;
        for (unsigned s = 0; s < h.n_streams; s++) {
            ggz_wr32(e + 4 * s, (uint32_t)sizes[(size_t)j * h.n_streams + s]);
            len += sizes[(size_t)j * h.n_streams + s];
        }
        ggz_wr32(e + 4 * h.n_streams, ggz_crc32c(0, c, len));
        c += len;
    }
    free(sizes);

    ggz_wr32(dst + 0, GGZ_FRAME_MAGIC);
    dst[4] = GGZ_FORMAT_VERSION;
    dst[5] = (uint8_t)h.layout;
    dst[6] = (uint8_t)h.flags;
    dst[7] = (uint8_t)h.n_streams;
    ggz_wr64(dst + 8, h.raw_size);
    ggz_wr32(dst + 16, h.row_size);
    ggz_wr32(dst + 20, h.rows_per_chunk);
    ggz_wr32(dst + 24, h.n_chunks);
    uint32_t crc = ggz_crc32c(0, dst, 28);
    crc = ggz_crc32c(crc, dst + GGZ_FRAME_HEADER_SIZE, (size_t)(data - dst) - GGZ_FRAME_HEADER_SIZE);
    ggz_wr32(dst + 28, crc);
    return (size_t)(w - dst);
}

/* ---- parse ------------------------------------------------------------- */

static size_t parse(frame_hdr * h, const uint8_t * src, size_t size)
{
    memset(h, 0, sizeof(*h));
    if (!src || size < GGZ_FRAME_HEADER_SIZE) return GGZ_ERROR(SRC_TRUNCATED);
    if (ggz_rd32(src) != GGZ_FRAME_MAGIC) return GGZ_ERROR(BAD_MAGIC);
    if (src[4] != GGZ_FORMAT_VERSION) return GGZ_ERROR(VERSION);
    h->layout = src[5];
    h->flags = src[6];
    h->n_streams = src[7];
    h->raw_size = ggz_rd64(src + 8);
    h->row_size = ggz_rd32(src + 16);
    h->rows_per_chunk = ggz_rd32(src + 20);
    h->n_chunks = ggz_rd32(src + 24);
    if (h->layout >= GGZ_LAYOUT_COUNT || h->n_streams != layout_streams[h->layout]) return GGZ_ERROR(HEADER);
    if (h->flags & ~FLAG_SCALE_DELTA) return GGZ_ERROR(HEADER);
    if (!h->row_size || h->row_size % layout_unit[h->layout] || h->raw_size % h->row_size) return GGZ_ERROR(HEADER);
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
        h->period[s] = layout_period[h->layout][s];
        if (pos >= size) return GGZ_ERROR(SRC_TRUNCATED);
        h->mode[s] = src[pos++];
        if (h->mode[s] > MODE_RANS) return GGZ_ERROR(HEADER);
        if (h->mode[s] != MODE_RANS) continue;
        for (unsigned t = 0; t < h->period[s]; t++) {
            const size_t r = ggz_table_read(src + pos, size - pos, &h->freqs[s][t]);
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
            if (h->mode[s] == MODE_RAW ? len != n : (n ? (len < GGZ_STATE_BYTES || len > ggz_stream_bound(n)) : len != 0))
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
    const size_t r = parse(&h, src, srcSize);
    if (ggz_is_error(r)) return r;
    if (info) {
        info->version = GGZ_FORMAT_VERSION;
        info->layout = h.layout;
        info->raw_size = h.raw_size;
        info->frame_size = h.frame_size;
        info->row_size = h.row_size;
        info->rows_per_chunk = h.rows_per_chunk;
        info->n_chunks = h.n_chunks;
        info->n_streams = h.n_streams;
        info->chunk_raw_size = h.chunk_raw;
    }
    return r;
}

/* ---- decode ------------------------------------------------------------ */

typedef struct {
    ggz_dtab * dt[GGZ_MAX_STREAMS];
} dtabs;

static int dtabs_build(dtabs * d, const frame_hdr * h)
{
    d->dt[0] = d->dt[1] = NULL;
    for (unsigned s = 0; s < h->n_streams; s++) {
        if (h->mode[s] != MODE_RANS) continue;
        d->dt[s] = malloc(sizeof(ggz_dtab));
        if (!d->dt[s]) { free(d->dt[0]); return GGZ_ERR_ALLOC; }
        for (unsigned t = 0; t < h->period[s]; t++) ggz_dtab_build(d->dt[s]->slot[t], &h->freqs[s][t]);
    }
    return GGZ_OK;
}

static void dtabs_free(dtabs * d) { free(d->dt[0]); free(d->dt[1]); }

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
    if (h->mode[s] == MODE_RANS)
        return ggz_decoder()->decode(st->src, st->size, st->dst, st->n, st->stride, st->tabs, st->period, crc);
    *crc = ggz_crc32c(*crc, st->src, st->size);
    if (st->stride == GGZ_LANES) memcpy(st->dst, st->src, st->n);
    else for (size_t b = 0; b < st->n / Q8_0_QK; b++) memcpy(st->dst + b * st->stride, st->src + b * Q8_0_QK, Q8_0_QK);
    return GGZ_OK;
}

/* Chunk j, starting at in, checked and decoded into out (its Q8_0 scales through scratch).
 * The checksum is taken while the chunk decodes, so damaged bytes may reach
 * the decoders (which bound every read and write) and out is undefined on
 * error; a checksum mismatch wins over the error a decoder may report first.
 * @return 0 or an error. */
static int decode_chunk(const frame_hdr * h, const dtabs * d, const uint8_t * in,
                        uint32_t j, uint8_t * out, uint8_t * scratch)
{
    const uint8_t * e = h->index + (size_t)j * h->index_entry;
    const uint64_t raw = chunk_raw_len(h, j);
    const uint32_t want = ggz_rd32(e + 4 * h->n_streams);
    uint32_t crc = 0;
    size_t total = 0;
    for (unsigned s = 0; s < h->n_streams; s++) {
        const size_t len = ggz_rd32(e + 4 * s);
        const ggz_stream st = stream_desc(h, d, s, in + total, len, raw, out, scratch);
        const int err = decode_stream(h, s, &st, &crc);
        total += len;
        if (err) {
            for (unsigned r = s + 1; r < h->n_streams; r++) total += ggz_rd32(e + 4 * r);
            return ggz_crc32c(0, in, total) != want ? GGZ_ERR_CHECKSUM : err;
        }
        if (h->layout == GGZ_LAYOUT_Q8_0 && s == 1)
            q8_scales_scatter(out, scratch, st.n / 2, h->row_size / Q8_0_BLOCK, h->flags & FLAG_SCALE_DELTA);
    }
    return crc != want ? GGZ_ERR_CHECKSUM : GGZ_OK;
}

/* ---- batch decode: one pool for many frames ------------------------------ */

/* A frame of the batch once opened: its parsed header, decode tables and chunk
 * offsets, freed by the thread that decodes its last chunk. */
typedef struct {
    frame_hdr   h;
    dtabs       d;
    uint64_t  * offsets;
    atomic_uint remaining;    /* chunks not yet decoded */
    atomic_int  failed;
} batch_frame;

typedef struct {
    ggz_batch_item  * items;
    size_t            n;
    int               n_threads;
    pthread_mutex_t   lock;       /* guards cur, next_chunk, open */
    size_t            cur;        /* frame whose chunks are handed out */
    uint32_t          next_chunk;
    batch_frame     * open;       /* frame cur once opened */
    batch_frame    ** frames;     /* every opened frame not yet freed */
    pthread_mutex_t   done_lock;
    ggz_frame_done_fn done;
    void            * opaque;
    atomic_int        err;
    atomic_int        cancel;     /* ggz_batch_cancel: hand out no more chunks */
    int               verify;     /* check and decode into scratch, write nothing */
} batch_job;

static void batch_frame_free(batch_frame * f)
{
    if (!f) return;
    free(f->offsets);
    dtabs_free(&f->d);
    free(f);
}

/* Frame i failed (f: the frame, NULL before it was opened).  Two chunks of one
 * frame may fail on two threads at once: the first to mark f writes the item,
 * the other leaves it alone (the item is read only after every thread joined). */
static void batch_fail(batch_job * job, size_t i, batch_frame * f, int err, int64_t bad)
{
    if (f && atomic_exchange(&f->failed, 1)) return;
    job->items[i].result = (size_t)-(ptrdiff_t)err;
    job->items[i].bad_chunk = bad;
    int zero = 0;
    atomic_compare_exchange_strong(&job->err, &zero, err);
}

/* frame i is decoded: report it and free what it held */
static void batch_finish(batch_job * job, size_t i, batch_frame * f)
{
    if (!f || !atomic_load(&f->failed)) {
        job->items[i].result = f ? (size_t)f->h.raw_size : 0;
        if (job->done) {
            pthread_mutex_lock(&job->done_lock);
            job->done(job->opaque, i);
            pthread_mutex_unlock(&job->done_lock);
        }
    }
    if (f) {
        job->frames[i] = NULL;
        batch_frame_free(f);
    }
}

/* Parse frame i, build its tables and chunk offsets (called under job->lock).
 * @return the frame, or NULL with the error recorded (or, for an empty frame,
 * NULL after finishing it: *empty set). */
static batch_frame * batch_open(batch_job * job, size_t i, int * empty)
{
    ggz_batch_item * it = &job->items[i];
    *empty = 0;
    batch_frame * f = calloc(1, sizeof(*f));
    if (!f) { batch_fail(job, i, NULL, GGZ_ERR_ALLOC, -1); return NULL; }
    const size_t r = it->src ? parse(&f->h, it->src, it->srcSize) : GGZ_ERROR(PARAM);
    int err = ggz_is_error(r) ? (int)ggz_error_code(r) : GGZ_OK;
    if (!err && !job->verify && (it->dst ? it->dstCapacity < f->h.raw_size : f->h.raw_size != 0)) err = GGZ_ERR_DST_TOO_SMALL;
    if (err) { free(f); batch_fail(job, i, NULL, err, -1); return NULL; }
    if (!f->h.n_chunks) { free(f); *empty = 1; batch_finish(job, i, NULL); return NULL; }
    if (dtabs_build(&f->d, &f->h)) { free(f); batch_fail(job, i, NULL, GGZ_ERR_ALLOC, -1); return NULL; }
    f->offsets = malloc(f->h.n_chunks * sizeof(uint64_t));
    if (!f->offsets) { dtabs_free(&f->d); free(f); batch_fail(job, i, NULL, GGZ_ERR_ALLOC, -1); return NULL; }
    uint64_t off = f->h.data_offset;
    for (uint32_t j = 0; j < f->h.n_chunks; j++) {
        f->offsets[j] = off;
        for (unsigned s = 0; s < f->h.n_streams; s++) off += ggz_rd32(f->h.index + (size_t)j * f->h.index_entry + 4 * s);
    }
    atomic_init(&f->remaining, f->h.n_chunks);
    atomic_init(&f->failed, 0);
    job->frames[i] = f;
    return f;
}

static void * batch_worker(void * arg)
{
    batch_job * job = arg;
    /* the Q8_0 scales of a chunk, plus the whole chunk when verifying;
     * grown on demand, sized from the largest chunk there is, never from
     * rows_per_chunk alone (a header may claim 1 GiB chunks for a 100-byte tensor) */
    uint8_t * scratch = NULL;
    size_t scratch_per = 0;
    for (;;) {
        /* claim the next chunk, opening frames in order */
        batch_frame * f = NULL;
        size_t fi = 0;
        uint32_t j = 0;
        pthread_mutex_lock(&job->lock);
        while (!atomic_load(&job->err) && !atomic_load(&job->cancel) && job->cur < job->n) {
            if (!job->open) {
                int empty;
                job->open = batch_open(job, job->cur, &empty);
                job->next_chunk = 0;
                if (!job->open) {
                    if (empty) { job->cur++; continue; }
                    break;
                }
            }
            f = job->open;
            fi = job->cur;
            j = job->next_chunk++;
            if (job->next_chunk == f->h.n_chunks) { job->cur++; job->open = NULL; }
            break;
        }
        pthread_mutex_unlock(&job->lock);
        if (!f) break;

        const frame_hdr * h = &f->h;
        const uint64_t max_chunk = h->chunk_raw < h->raw_size ? h->chunk_raw : h->raw_size;
        const size_t scales = (size_t)(max_chunk / Q8_0_BLOCK) * 2 + 64;
        const size_t per = scales + (job->verify ? (size_t)max_chunk : 0);
        if (per > scratch_per) {
            free(scratch);
            scratch = malloc(per);
            scratch_per = scratch ? per : 0;
            if (!scratch) {
                batch_fail(job, fi, f, GGZ_ERR_ALLOC, -1);
                atomic_fetch_sub(&f->remaining, 1);
                break;
            }
        }
        uint8_t * const out = job->verify ? scratch + scales : (uint8_t *)job->items[fi].dst + (uint64_t)j * h->chunk_raw;
        const int err = decode_chunk(h, &f->d, (const uint8_t *)job->items[fi].src + f->offsets[j], j, out, scratch);
        if (err) batch_fail(job, fi, f, err, j);
        /* the thread that decodes a frame's last chunk finishes it; a failed frame
         * is left for the caller to free (other threads may still decode in it) */
        if (atomic_fetch_sub(&f->remaining, 1) == 1 && !atomic_load(&f->failed)) batch_finish(job, fi, f);
        if (err) break;
    }
    free(scratch);
    return NULL;
}

/* A background batch's worker: while the thread that started the batch still has
 * work of its own (a model loader reading the vocabulary, say), it keeps its core
 * and the workers take what the other cores leave; once it joins in, nothing else
 * competes and they run at full speed. On Linux the nice value is per thread and
 * raising it needs no privilege. */
static void * batch_worker_bg(void * arg)
{
#if defined(__linux__)
    errno = 0;
    const int nice = getpriority(PRIO_PROCESS, 0);
    if (errno == 0) (void)setpriority(PRIO_PROCESS, 0, nice + 10 < 19 ? nice + 10 : 19);
#endif
    return batch_worker(arg);
}

struct ggz_batch {
    batch_job job;
    pthread_t tid[64];
    int       started;
};

static ggz_batch * batch_begin(ggz_batch_item * items, size_t n, int n_threads,
                               ggz_frame_done_fn done, void * opaque, int verify, int background)
{
    if (!items && n) return NULL;
    for (size_t i = 0; i < n; i++) {
        items[i].result = GGZ_ERROR(GENERIC);
        items[i].bad_chunk = -1;
    }
    ggz_batch * b = calloc(1, sizeof(*b));
    if (!b) return NULL;
    batch_job * job = &b->job;
    job->items = items;
    job->n = n;
    job->done = done;
    job->opaque = opaque;
    job->verify = verify;
    job->frames = calloc(n ? n : 1, sizeof(batch_frame *));
    if (!job->frames) { free(b); return NULL; }
    if (n_threads < 0) n_threads = 0;
    if (n_threads > 63) n_threads = 63;
    job->n_threads = n_threads + 1;   /* the finishing thread joins in */
    atomic_init(&job->err, 0);
    atomic_init(&job->cancel, 0);
    pthread_mutex_init(&job->lock, NULL);
    pthread_mutex_init(&job->done_lock, NULL);
    /* threads the OS refuses are not an error (ggzip.h, "Threads"): the
     * finishing thread decodes whatever no worker took */
    for (int t = 0; t < n_threads; t++) {
        if (pthread_create(&b->tid[b->started], NULL, background ? batch_worker_bg : batch_worker, job)) break;
        b->started++;
    }
    return b;
}

ggz_batch * ggz_batch_start(ggz_batch_item * items, size_t n, int n_threads,
                            ggz_frame_done_fn done, void * opaque)
{
    return batch_begin(items, n, n_threads, done, opaque, 0, 1);
}

size_t ggz_batch_finish(ggz_batch * b)
{
    if (!b) return GGZ_ERROR(PARAM);
    batch_job * job = &b->job;
    batch_worker(job);
    for (int t = 0; t < b->started; t++) pthread_join(b->tid[t], NULL);
    pthread_mutex_destroy(&job->done_lock);
    pthread_mutex_destroy(&job->lock);
    /* frames opened but not finished: a failure or a cancel stopped the batch */
    for (size_t i = 0; i < job->n; i++) batch_frame_free(job->frames[i]);
    free(job->frames);
    const int err = atomic_load(&job->err);
    const size_t n = job->n;
    free(b);
    return err ? (size_t)-(ptrdiff_t)err : n;
}

void ggz_batch_cancel(ggz_batch * b)
{
    if (!b) return;
    atomic_store(&b->job.cancel, 1);
    (void)ggz_batch_finish(b);
}

size_t ggz_decode_batch(ggz_batch_item * items, size_t n, int n_threads,
                        ggz_frame_done_fn done, void * opaque)
{
    if (!items && n) return GGZ_ERROR(PARAM);
    if (!n) return 0;
    ggz_batch * b = batch_begin(items, n, n_threads > 1 ? n_threads - 1 : 0, done, opaque, 0, 0);
    return b ? ggz_batch_finish(b) : GGZ_ERROR(ALLOC);
}

/* One frame through the batch pool, on at most one thread per chunk. */
static size_t decode_one(void * dst, size_t dstCapacity, const void * src, size_t srcSize,
                         int n_threads, int verify, int64_t * bad_chunk)
{
    if (bad_chunk) *bad_chunk = -1;
    /* the header alone first: its errors as they are, and the thread count */
    ggz_frame_info fi;
    const size_t r = ggz_frame_info_get(src, srcSize, &fi);
    if (ggz_is_error(r)) return r;
    if (n_threads > (int)fi.n_chunks) n_threads = fi.n_chunks ? (int)fi.n_chunks : 1;
    ggz_batch_item it = { dst, dstCapacity, src, srcSize, 0, -1 };
    ggz_batch * b = batch_begin(&it, 1, n_threads > 1 ? n_threads - 1 : 0, NULL, NULL, verify, 0);
    if (!b) return GGZ_ERROR(ALLOC);
    (void)ggz_batch_finish(b);
    if (bad_chunk) *bad_chunk = it.bad_chunk;
    return it.result;
}

size_t ggz_decode_tensor(void * dst, size_t dstCapacity, const void * src, size_t srcSize,
                         int n_threads, int64_t * bad_chunk)
{
    if (!dst && dstCapacity) return GGZ_ERROR(PARAM);
    return decode_one(dst, dstCapacity, src, srcSize, n_threads, 0, bad_chunk);
}

size_t ggz_verify_tensor(const void * src, size_t srcSize, int64_t * bad_chunk)
{
    return decode_one(NULL, 0, src, srcSize, 1, 1, bad_chunk);
}

size_t ggz_decode_chunk(void * dst, size_t dstCapacity, const void * src, size_t srcSize, uint32_t index)
{
    frame_hdr h;
    size_t r = parse(&h, src, srcSize);
    if (ggz_is_error(r)) return r;
    if (index >= h.n_chunks) return GGZ_ERROR(PARAM);
    const uint64_t raw = chunk_raw_len(&h, index);
    if (!dst || dstCapacity < raw) return GGZ_ERROR(DST_TOO_SMALL);
    dtabs d;
    if (dtabs_build(&d, &h)) return GGZ_ERROR(ALLOC);
    uint8_t * scratch = malloc((size_t)(raw / Q8_0_BLOCK) * 2 + 64);
    const int err = scratch ? decode_chunk(&h, &d, chunk_ptr(&h, src, index), index, dst, scratch) : GGZ_ERR_ALLOC;
    free(scratch);
    dtabs_free(&d);
    return err ? (size_t)-(ptrdiff_t)err : (size_t)raw;
}

/* ---- entropy bound ------------------------------------------------------ */

double ggz_entropy_bound(const void * src_, size_t raw_size, int layout, size_t row_size)
{
    const uint8_t * src = src_;
    if (layout < 0 || layout >= GGZ_LAYOUT_COUNT) return -1.0;
    const size_t row = row_size ? row_size : layout_unit[layout];   /* as ggz_params.row_size */
    if (row % layout_unit[layout] || raw_size % row) return -1.0;
    hist_t * hist = calloc(3, sizeof(hist_t));
    if (!hist) return -1.0;
    double bits = 0;
    if (layout == GGZ_LAYOUT_Q8_0) {
        /* the scales as the encoder codes them: plain or row deltas, the cheaper */
        q8_histograms(hist, src, raw_size / Q8_0_BLOCK, row / Q8_0_BLOCK);
        const double plain = scale_bits(hist[1]), delta = scale_bits(hist[2]);
        bits = ggz_entropy_bits(hist[0][0]) + (delta < plain ? delta : plain);
    } else {
        hist_bytes_big(hist[0], src, raw_size, layout_period[layout][0]);
        for (int t = 0; t < GGZ_MAX_PERIOD; t++) bits += ggz_entropy_bits(hist[0][t]);
    }
    free(hist);
    return bits / 8.0;
}
