/* The decode thread pool: one pool for a batch of frames, whose chunks all
 * threads share (ggz_decode_batch, ggz_batch_start); a single frame is a batch
 * of one (ggz_decode_tensor, ggz_verify_tensor). */
#include "frame.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#if defined(__linux__)
#include <errno.h>
#include <sys/resource.h>
#endif

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
    ggz_dtabs_free(&f->d);
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
    const size_t r = it->src ? ggz_frame_parse(&f->h, it->src, it->srcSize) : GGZ_ERROR(PARAM);
    int err = ggz_is_error(r) ? (int)ggz_error_code(r) : GGZ_OK;
    if (!err && !job->verify && (it->dst ? it->dstCapacity < f->h.raw_size : f->h.raw_size != 0)) err = GGZ_ERR_DST_TOO_SMALL;
    if (err) { free(f); batch_fail(job, i, NULL, err, -1); return NULL; }
    if (!f->h.n_chunks) { free(f); *empty = 1; batch_finish(job, i, NULL); return NULL; }
    if (ggz_dtabs_build(&f->d, &f->h)) { free(f); batch_fail(job, i, NULL, GGZ_ERR_ALLOC, -1); return NULL; }
    f->offsets = malloc(f->h.n_chunks * sizeof(uint64_t));
    if (!f->offsets) { ggz_dtabs_free(&f->d); free(f); batch_fail(job, i, NULL, GGZ_ERR_ALLOC, -1); return NULL; }
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
    /* the Q8_0 scales of two chunks, plus the chunks when verifying;
     * grown on demand, sized from the largest chunk there is, never from
     * rows_per_chunk alone (a header may claim 1 GiB chunks for a 100-byte tensor) */
    uint8_t * scratch = NULL;
    size_t scratch_per = 0;
    const int pairs = ggz_decoder()->decode2 != NULL;
    for (;;) {
        /* claim the next chunk, and the one after it where the kernel decodes
         * two side by side and enough are left for the other threads;
         * frames are opened in order */
        batch_frame * f = NULL;
        size_t fi = 0;
        uint32_t j = 0, nj = 1;
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
            const uint32_t left = f->h.n_chunks - job->next_chunk;
            if (pairs && left && (left >= (uint32_t)job->n_threads || job->cur + 1 < job->n)) {
                nj = 2;
                job->next_chunk++;
            }
            if (job->next_chunk == f->h.n_chunks) { job->cur++; job->open = NULL; }
            break;
        }
        pthread_mutex_unlock(&job->lock);
        if (!f) break;

        const frame_hdr * h = &f->h;
        const uint64_t max_chunk = h->chunk_raw < h->raw_size ? h->chunk_raw : h->raw_size;
        const size_t scales = (size_t)(max_chunk / Q8_0_BLOCK) * 2 + 64;
        const size_t per = scales + (job->verify ? (size_t)max_chunk : 0);
        if (2 * per > scratch_per) {
            free(scratch);
            scratch = malloc(2 * per);
            scratch_per = scratch ? 2 * per : 0;
            if (!scratch) {
                batch_fail(job, fi, f, GGZ_ERR_ALLOC, -1);
                atomic_fetch_sub(&f->remaining, nj);
                break;
            }
        }
        const uint8_t * in[2];
        uint8_t * out[2], * sc[2];
        uint32_t jj[2];
        int err[2] = { 0, 0 };
        for (uint32_t i = 0; i < nj; i++) {
            jj[i] = j + i;
            sc[i] = scratch + i * per;
            in[i] = (const uint8_t *)job->items[fi].src + f->offsets[j + i];
            out[i] = job->verify ? sc[i] + scales : (uint8_t *)job->items[fi].dst + (uint64_t)(j + i) * h->chunk_raw;
        }
        if (nj == 2) ggz_chunk_decode2(h, &f->d, in, jj, out, sc, err);
        else         err[0] = ggz_chunk_decode(h, &f->d, in[0], j, out[0], sc[0]);
        for (uint32_t i = 0; i < nj; i++)
            if (err[i]) batch_fail(job, fi, f, err[i], j + i);
        /* the thread that decodes a frame's last chunk finishes it; a failed frame
         * is left for the caller to free (other threads may still decode in it) */
        if (atomic_fetch_sub(&f->remaining, nj) == nj && !atomic_load(&f->failed)) batch_finish(job, fi, f);
        if (err[0] || err[1]) break;
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
