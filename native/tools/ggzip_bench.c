/* ggzip-bench: decodes every ggzip frame of a ggzip GGUF with each decode
 * kernel the host runs, and prints the decode speed and the CRC-32C of what
 * was decoded, so that two machines (or an emulator and a host) can be
 * compared byte for byte without the Python package.
 *
 *   ggzip-bench [--kernel NAME]... [--threads N] [--repeat R] [--tensors] FILE
 *
 * Output: a header line, then per kernel (e.g.)
 *   kernel neon: 412.5 MB/s (decoded MB/s, median of 3) crc32c 0x78fdfe86
 * (the CRC of all decoded bytes, frames in file order); with --tensors one
 * line per frame: tensor name, "crc32c", its decoded bytes' CRC in hex and
 * their count.  Exit 1 if the
 * file is bad, a frame fails or the kernels disagree; 2 on a usage error.
 * Needs only the decoder (ggzip_decode_static). */
#define _POSIX_C_SOURCE 200809L
#include "ggzip.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_KERNELS 16

static const char * path;

/* the message, naming the file and (if not NULL) the tensor; exit 1 */
static void die(const char * tensor, const char * fmt, ...)
{
    va_list ap;
    fprintf(stderr, "ggzip-bench: %s: ", path);
    if (tensor) fprintf(stderr, "tensor '%s': ", tensor);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* ---- a minimal GGUF reader: every read checked against the file's end ---- */

typedef struct { const uint8_t * p, * end; } cursor;

static const uint8_t * take(cursor * c, uint64_t n)
{
    if ((uint64_t)(c->end - c->p) < n) die(NULL, "truncated GGUF header (a field runs past the end of the file)");
    const uint8_t * at = c->p;
    c->p += n;
    return at;
}

static uint32_t u32(cursor * c) { uint32_t v; memcpy(&v, take(c, 4), 4); return v; }
static uint64_t u64(cursor * c) { uint64_t v; memcpy(&v, take(c, 8), 8); return v; }

typedef struct { const char * s; uint64_t n; } str;

static str string(cursor * c)
{
    str s;
    s.n = u64(c);
    s.s = (const char *)take(c, s.n);
    return s;
}

static int str_is(str s, const char * z) { return s.n == strlen(z) && !memcmp(s.s, z, s.n); }

enum { T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STRING, T_ARRAY, T_U64, T_I64, T_F64 };
static const uint8_t type_size[] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };

static void skip_value(cursor * c, uint32_t type, int depth)
{
    if (type > T_F64) die(NULL, "damaged metadata: unknown GGUF value type %u", type);
    if (type == T_STRING) { string(c); return; }
    if (type != T_ARRAY) { take(c, type_size[type]); return; }
    const uint32_t sub = u32(c);
    const uint64_t n = u64(c);
    if (sub > T_F64 || depth > 8) die(NULL, "damaged metadata: bad GGUF array (type %u)", sub);
    if (sub != T_STRING && sub != T_ARRAY) {
        if (n > (uint64_t)(c->end - c->p) / type_size[sub]) die(NULL, "truncated GGUF header (an array runs past the end of the file)");
        c->p += n * type_size[sub];
        return;
    }
    for (uint64_t i = 0; i < n; i++) skip_value(c, sub, depth + 1);
}

typedef struct {
    char *          name;
    const uint8_t * frame;
    size_t          size;
    size_t          raw;
    uint32_t        crc;   /* of the decoded bytes, by the first kernel */
} frame;

/* The ggzip frames of the file, in file order; *n_plain gets the tensors
 * that are stored as they are. */
static frame * parse(const uint8_t * buf, size_t size, size_t * n_frames, size_t * n_plain)
{
    cursor c = { buf, buf + size };
    if (size < 4 || memcmp(take(&c, 4), "GGUF", 4)) die(NULL, "not a GGUF file");
    const uint32_t version = u32(&c);
    if (version < 2 || version > 3) die(NULL, "GGUF version %u not supported (2 or 3)", version);
    const uint64_t n_tensors = u64(&c), n_kv = u64(&c);
    if (n_tensors > size / 24 || n_kv > size / 12) die(NULL, "damaged GGUF header (counts larger than the file)");
    uint64_t alignment = 32;
    int is_ggzip = 0;
    cursor names = { NULL, NULL };   /* at the elements of ggzip.tensor_names */
    uint64_t n_names = 0;
    for (uint64_t i = 0; i < n_kv; i++) {
        const str key = string(&c);
        const uint32_t type = u32(&c);
        if (str_is(key, "general.alignment") && type == T_U32) {
            alignment = u32(&c);
            if (!alignment || (alignment & (alignment - 1))) die(NULL, "general.alignment %u is not a power of two", (unsigned)alignment);
            continue;
        }
        if (str_is(key, "ggzip.format_version")) is_ggzip = 1;
        if (str_is(key, "ggzip.tensor_names") && type == T_ARRAY) {
            cursor at = c;
            if (u32(&at) != T_STRING) die(NULL, "ggzip.tensor_names is not an array of strings");
            n_names = u64(&at);
            names = at;
        }
        skip_value(&c, type, 0);
    }
    if (!is_ggzip) die(NULL, "not a ggzip GGUF (no ggzip.format_version)");

    frame * fr = calloc(n_tensors ? n_tensors : 1, sizeof(frame));
    typedef struct { str name; uint32_t n_dims, type; uint64_t ne0, offset; } info;
    info * ti = calloc(n_tensors ? n_tensors : 1, sizeof(info));
    if (!fr || !ti) die(NULL, "out of memory");
    for (uint64_t i = 0; i < n_tensors; i++) {
        ti[i].name = string(&c);
        ti[i].n_dims = u32(&c);
        if (ti[i].n_dims > 4) die(NULL, "tensor info %llu: more than 4 dimensions", (unsigned long long)i);
        for (uint32_t d = 0; d < ti[i].n_dims; d++) {
            const uint64_t ne = u64(&c);
            if (!d) ti[i].ne0 = ne;
        }
        ti[i].type = u32(&c);
        ti[i].offset = u64(&c);
    }
    const uint64_t data = ((uint64_t)(c.p - buf) + alignment - 1) / alignment * alignment;

    *n_frames = *n_plain = 0;
    for (uint64_t i = 0; i < n_tensors; i++) {
        char * name = malloc(ti[i].name.n + 1);
        if (!name) die(NULL, "out of memory");
        memcpy(name, ti[i].name.s, ti[i].name.n);
        name[ti[i].name.n] = 0;
        int coded = 0;
        cursor nc = names;
        for (uint64_t k = 0; k < n_names && !coded; k++) coded = str_is(string(&nc), name);
        if (!coded) { (*n_plain)++; free(name); continue; }
        /* a frame is stored as a 1-D I8 tensor (GGML_TYPE_I8 = 24) of its bytes */
        if (ti[i].type != 24 || ti[i].n_dims != 1) die(name, "listed as compressed but not a 1-D I8 frame");
        if (data > size || ti[i].offset > size - data || ti[i].ne0 > size - data - ti[i].offset)
            die(name, "truncated: the frame ends past the end of the file (%zu bytes)", size);
        frame * f = &fr[(*n_frames)++];
        f->name = name;
        f->frame = buf + data + ti[i].offset;
        f->size = (size_t)ti[i].ne0;
        ggz_frame_info fi;
        const size_t r = ggz_frame_info_get(f->frame, f->size, &fi);
        if (ggz_is_error(r)) die(name, "frame header is damaged (%s)", ggz_error_name(r));
        if (fi.raw_size > SIZE_MAX / 2) die(name, "frame claims too many decoded bytes");
        f->raw = (size_t)fi.raw_size;
    }
    free(ti);
    return fr;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void * a, const void * b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int usage(void)
{
    fprintf(stderr, "usage: ggzip-bench [--kernel NAME]... [--threads N] [--repeat R] [--tensors] FILE\n");
    return 2;
}

int main(int argc, char ** argv)
{
    const char * kernels[MAX_KERNELS];
    int n_kernels = 0, threads = 1, repeat = 3, tensors = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--kernel") && i + 1 < argc && n_kernels < MAX_KERNELS) kernels[n_kernels++] = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc) repeat = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tensors")) tensors = 1;
        else if (argv[i][0] == '-' || path) return usage();
        else path = argv[i];
    }
    if (!path || threads < 1 || repeat < 1 || repeat > 1000) return usage();

    /* each kernel asked for must be compiled in and runnable here */
    for (int k = 0; k < n_kernels; k++) {
        int found = 0, avail = 0, enc;
        for (int i = 0; i < ggz_kernel_count(); i++)
            if (!strcmp(ggz_kernel_info(i, &avail, &enc), kernels[k])) { found = 1; break; }
        if (!found || !avail) {
            fprintf(stderr, "ggzip-bench: kernel %s: %s\n", kernels[k], found ? "this CPU cannot run it" : "not compiled in");
            return 2;
        }
    }
    if (!n_kernels)
        for (int i = 0; i < ggz_kernel_count() && n_kernels < MAX_KERNELS; i++) {
            int avail, enc;
            const char * name = ggz_kernel_info(i, &avail, &enc);
            if (avail) kernels[n_kernels++] = name;
        }

    FILE * fp = fopen(path, "rb");
    if (!fp) die(NULL, "cannot open: %s", strerror(errno));
    if (fseek(fp, 0, SEEK_END)) die(NULL, "cannot seek: %s", strerror(errno));
    const long len = ftell(fp);
    if (len < 0 || fseek(fp, 0, SEEK_SET)) die(NULL, "cannot read: %s", ferror(fp) ? strerror(errno) : "shorter than its size");
    uint8_t * buf = malloc(len ? (size_t)len : 1);
    if (!buf) die(NULL, "out of memory");
    if (fread(buf, 1, (size_t)len, fp) != (size_t)len) die(NULL, "cannot read: %s", ferror(fp) ? strerror(errno) : "shorter than its size");
    fclose(fp);

    size_t n_frames, n_plain, stored = 0, raw = 0, max_raw = 1;
    frame * fr = parse(buf, (size_t)len, &n_frames, &n_plain);
    for (size_t i = 0; i < n_frames; i++) {
        stored += fr[i].size;
        raw += fr[i].raw;
        if (fr[i].raw > max_raw) max_raw = fr[i].raw;
    }
    printf("%s: %zu frames (%zu plain tensors skipped), %zu compressed bytes, %zu decoded bytes, %d thread%s\n",
           path, n_frames, n_plain, stored, raw, threads, threads > 1 ? "s" : "");
    uint8_t * out = malloc(max_raw);
    double * times = malloc(sizeof(double) * (size_t)repeat);
    if (!out || !times) die(NULL, "out of memory");

    int disagree = 0;
    uint32_t first_crc = 0;
    for (int k = 0; k < n_kernels; k++) {
        if (ggz_is_error(ggz_set_kernel(kernels[k]))) die(NULL, "kernel %s cannot be set", kernels[k]);
        uint32_t crc = 0;
        for (int rep = 0; rep < repeat; rep++) {
            double t = 0;
            crc = 0;
            for (size_t i = 0; i < n_frames; i++) {
                int64_t bad = -1;
                const double t0 = now();
                const size_t r = ggz_decode_tensor(out, max_raw, fr[i].frame, fr[i].size, threads, &bad);
                t += now() - t0;
                if (ggz_is_error(r) || r != fr[i].raw) {
                    fprintf(stderr, "ggzip-bench: %s: tensor '%s': frame is damaged (%s, chunk %lld, kernel %s)\n", path,
                            fr[i].name, ggz_is_error(r) ? ggz_error_name(r) : "wrong size", (long long)bad, kernels[k]);
                    return 1;
                }
                /* the CRC is taken outside the timed decode */
                const uint32_t c = ggz_crc32c(0, out, r);
                crc = ggz_crc32c(crc, out, r);
                if (!k) fr[i].crc = c;
                else if (c != fr[i].crc) {
                    fprintf(stderr, "ggzip-bench: %s: tensor '%s': kernel %s decodes crc32c 0x%08x, kernel %s 0x%08x\n",
                            path, fr[i].name, kernels[k], (unsigned)c, kernels[0], (unsigned)fr[i].crc);
                    disagree = 1;
                }
            }
            times[rep] = t;
        }
        qsort(times, (size_t)repeat, sizeof(double), cmp_double);
        const double med = repeat % 2 ? times[repeat / 2] : 0.5 * (times[repeat / 2 - 1] + times[repeat / 2]);
        printf("kernel %s: %.1f MB/s (decoded MB/s, median of %d) crc32c 0x%08x\n",
               kernels[k], med > 0 ? (double)raw / med / 1e6 : 0.0, repeat, (unsigned)crc);
        if (!k) first_crc = crc;
        else if (crc != first_crc) disagree = 1;
    }
    if (tensors)
        for (size_t i = 0; i < n_frames; i++) printf("%s crc32c 0x%08x %zu\n", fr[i].name, (unsigned)fr[i].crc, fr[i].raw);
    if (disagree) {
        fprintf(stderr, "ggzip-bench: %s: the kernels decode different bytes\n", path);
        return 1;
    }
    for (size_t i = 0; i < n_frames; i++) free(fr[i].name);
    free(fr);
    free(out);
    free(times);
    free(buf);
    return 0;
}
