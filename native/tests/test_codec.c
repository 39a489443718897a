/* The codec's C tests: every kernel the host can run decoding the scalar
 * encoder's frames (the one encoder), on every layout and the sizes around the
 * lane and chunk boundaries; agreement of every kernel with the scalar
 * specification, also on damaged streams; damaged frames must give
 * an error, never a crash and never a wrong tensor reported as success.
 *
 *   ggzip_test [--expect-kernel NAME] [--bench]
 *
 * --expect-kernel fails unless the kernel chosen at start-up is NAME (the
 * emulator runs check that the intended SIMD path is the one tested);
 * --bench also prints the single-thread decode speed of each kernel (a
 * sanity check, not a benchmark: under an emulator the numbers mean little).  A
 * kernel the host cannot run is printed as SKIPPED and counted nowhere.
 * The last line is "N passed, N failed"; the exit code is 1 on any failure. */
#include "frame_util.h"
#include "ggzip.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__linux__)
#include <sys/resource.h>
#endif

uint32_t ggz_crc32c_portable(uint32_t crc, const void * buf, size_t size); /* internal.h */

#define CHUNK 4096 /* small chunks, so that the edge sizes cross chunk boundaries */

static int n_pass, n_fail;

/* One named check; only the first failures are printed in full. */
static int check(int ok, const char * what, const char * ctx)
{
    if (ok) { n_pass++; return 1; }
    if (++n_fail <= 50) printf("FAIL %s [%s]\n", what, ctx);
    return 0;
}

/* ---- data --------------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15u;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

/* int8 with a bell-shaped histogram (sum of four uniforms, about 5 bits of
 * entropy), like quantized weights */
static uint8_t bell8(void)
{
    const uint32_t r = rnd();
    return (uint8_t)(((int)(r & 0xFF) + (int)(r >> 8 & 0xFF) + (int)(r >> 16 & 0xFF) + (int)(rnd() & 0xFF) - 510) / 16);
}

enum { D_BELL, D_UNIFORM, D_SINGLE, D_Q8_CONST, D_Q8_RANDOM, D_Q8_STEPS, D_PLANE16, D_PLANE32 };

static void fill(uint8_t * p, size_t n, int dist, size_t row)
{
    switch (dist) {
    case D_BELL:    for (size_t i = 0; i < n; i++) p[i] = bell8(); break;
    case D_UNIFORM: for (size_t i = 0; i < n; i++) p[i] = (uint8_t)rnd(); break;
    case D_SINGLE:  memset(p, 0x5A, n); break;
    case D_Q8_CONST: case D_Q8_RANDOM: case D_Q8_STEPS: {
        uint16_t d = 0;
        for (size_t b = 0; b < n / 34; b++) {
            /* f16 scales around 1e-3..1e-2: exponent 0x14..0x20 */
            if (dist == D_Q8_RANDOM || (b * 34) % row == 0) d = (uint16_t)(0x1400 + rnd() % 0x0C00);
            /* row steps, about one block in 64 with a scale of its own (convert's escapes) */
            const uint16_t own = dist == D_Q8_STEPS && rnd() % 64 == 0 ? (uint16_t)(0x2000 + rnd() % 0x0400) : d;
            memcpy(p + b * 34, &own, 2);
            for (int i = 0; i < 32; i++) p[b * 34 + 2 + i] = bell8();
        }
        break;
    }
    case D_PLANE16: /* F16 weights: random mantissa byte, narrow sign+exponent byte */
        for (size_t i = 0; i + 1 < n; i += 2) { p[i] = (uint8_t)rnd(); p[i + 1] = (uint8_t)(0x20 + bell8() / 16 + (rnd() & 0x80)); }
        break;
    case D_PLANE32:
        for (size_t i = 0; i + 3 < n; i += 4) {
            const float v = (float)(int8_t)bell8() * 1e-3f;
            memcpy(p + i, &v, 4);
        }
        break;
    }
}

/* ---- kernels ------------------------------------------------------------ */

static const char * avail[8];
static int n_avail;

static void find_kernels(void)
{
    static const char * const known[] = { "scalar", "avx2", "avx512", "avx512vbmi", "neon" };
    for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++) {
        int compiled = 0, ok = 0;
        for (int i = 0; i < ggz_kernel_count(); i++) {
            int a, e;
            if (strcmp(ggz_kernel_info(i, &a, &e), known[k])) continue;
            compiled = 1;
            ok = a;
        }
        if (ok) {
            avail[n_avail++] = known[k];
            printf("kernel %s: available\n", known[k]);
            /* every round trip below decodes the scalar encoder's bytes */
            ggz_set_kernel(known[k]);
            check(!strcmp(ggz_encoder_kernel_name(), "scalar"), "the encoder is the scalar one", known[k]);
        }
        else printf("kernel %s: SKIPPED (%s)\n", known[k],
                    compiled ? "this CPU or OS cannot run it" : "not built for this architecture");
    }
}

static void use(const char * k)
{
    if (ggz_is_error(ggz_set_kernel(k))) {
        check(0, "ggz_set_kernel", k);
        printf("%d passed, %d failed\n", n_pass, n_fail);
        exit(1);
    }
}

/* ---- frames ------------------------------------------------------------- */

static int enc_trellis;   /* encode() makes trellis frames (Q8_0) */
static int expect_rows;   /* roundtrip(): 1 the scales must be coded by row steps, 0 never, -1 either */

static uint8_t * encode(const uint8_t * raw, size_t n, int layout, size_t row, size_t chunk, size_t * size)
{
    const ggz_params p = { layout, row, chunk, 1, enc_trellis };
    const size_t cap = ggz_frame_bound(n, &p);
    uint8_t * f = malloc(cap ? cap : 1);
    const size_t r = ggz_encode_tensor(f, cap, raw, n, &p);
    if (ggz_is_error(r)) { printf("encode failed: %s\n", ggz_error_name(r)); free(f); return NULL; }
    *size = r;
    return f;
}

/* a copy of exactly `n` bytes, so that the sanitizers see any read past it */
static uint8_t * dup_exact(const uint8_t * p, size_t n)
{
    uint8_t * q = malloc(n ? n : 1);
    memcpy(q, p, n);
    return q;
}

/* Damaged frame f: every API call must fail, or (decode_chunk) return the
 * chunk's true bytes.  @return 1 if it held. */
static int damaged_fails(const uint8_t * f, size_t size, const uint8_t * raw, size_t n, const char * ctx)
{
    uint8_t * out = malloc(n + 1);
    int ok = 1;
    ok &= check(ggz_is_error(ggz_decode_tensor(out, n + 1, f, size, 1, NULL)), "damaged frame: decode fails", ctx);
    ok &= check(ggz_is_error(ggz_verify_tensor(f, size, NULL)), "damaged frame: verify fails", ctx);
    ggz_frame_info fi;
    if (!ggz_is_error(ggz_frame_info_get(f, size, &fi)) && fi.n_chunks && fi.raw_size == n) {
        /* a chunk outside the damage still decodes: it must then be right */
        const uint32_t js[3] = { 0, fi.n_chunks / 2, fi.n_chunks - 1 };
        for (int i = 0; i < 3; i++) {
            const size_t r = ggz_decode_chunk(out, n + 1, f, size, js[i]);
            const size_t at = (size_t)(js[i] * fi.chunk_raw_size);
            ok &= check(ggz_is_error(r) || (at + r <= n && !memcmp(out, raw + at, r)),
                        "damaged frame: a chunk decoded without error is right", ctx);
        }
    }
    free(out);
    return ok;
}

/* ---- round trips ---------------------------------------------------------- */

static void roundtrip(const char * name, const uint8_t * raw, size_t n, int layout, size_t row, size_t chunk)
{
    char ctx[160];
    size_t size;
    uint8_t * f = encode(raw, n, layout, row, chunk, &size);
    snprintf(ctx, sizeof(ctx), "%s n=%zu layout=%d", name, n, layout);
    if (!check(f != NULL, "encode", ctx)) return;
    uint8_t * frame = dup_exact(f, size);
    free(f);
    uint8_t * out = malloc(n + 64);

    ggz_frame_info fi;
    check(ggz_frame_info_get(frame, size, &fi) == size && fi.raw_size == n && fi.layout == layout &&
          fi.frame_size == size, "frame info", ctx);
    const int rows_coded = fi.version == GGZ_FORMAT_VERSION_ROWS;
    check(fi.version == (rows_coded ? GGZ_FORMAT_VERSION_ROWS : enc_trellis ? GGZ_FORMAT_VERSION_TRELLIS : GGZ_FORMAT_VERSION) &&
          (expect_rows < 0 || rows_coded == expect_rows), "frame version (row steps as expected)", ctx);

    for (int k = 0; k < n_avail; k++) {
        use(avail[k]);
        snprintf(ctx, sizeof(ctx), "%s n=%zu layout=%d kernel=%s", name, n, layout, avail[k]);
        for (int threads = 1; threads <= 3; threads += 2) {
            memset(out, 0xEE, n + 64);
            int64_t bad = 7;
            const size_t r = ggz_decode_tensor(out, n, frame, size, threads, &bad);
            check(r == n && !memcmp(out, raw, n) && bad == -1, threads == 1 ? "decode" : "decode, 3 threads", ctx);
            check(out[n] == 0xEE, "decode writes nothing past raw_size", ctx);
        }
        if (n) check(ggz_error_code(ggz_decode_tensor(out, n - 1, frame, size, 1, NULL)) == GGZ_ERR_DST_TOO_SMALL,
                     "decode into a buffer one byte short", ctx);
        check(ggz_verify_tensor(frame, size, NULL) == n, "verify", ctx);
        /* every chunk of small frames; first, second and last of large ones */
        for (uint32_t j = 0; j < fi.n_chunks; j++) {
            if (fi.n_chunks > 8 && j > 1 && j + 1 < fi.n_chunks) continue;
            const size_t at = (size_t)(j * fi.chunk_raw_size);
            const size_t len = n - at < fi.chunk_raw_size ? n - at : (size_t)fi.chunk_raw_size;
            memset(out, 0xEE, len + 1);
            check(ggz_decode_chunk(out, len, frame, size, j) == len && !memcmp(out, raw + at, len) && out[len] == 0xEE,
                  "decode_chunk", ctx);
        }
        check(ggz_error_code(ggz_decode_chunk(out, n + 64, frame, size, fi.n_chunks)) == GGZ_ERR_PARAM,
              "decode_chunk past the last chunk", ctx);
    }
    use("scalar");
    free(out);
    free(frame);
}

/* rows: the scales coded by row steps (version 3), at least in the largest frame */
typedef struct { const char * name; int layout, dist; size_t row; int trellis, rows; } layout_case;

static const layout_case layouts[] = {
    { "bytes bell",        GGZ_LAYOUT_BYTES,   D_BELL,      1 },
    { "bytes uniform",     GGZ_LAYOUT_BYTES,   D_UNIFORM,   1 },
    { "bytes one symbol",  GGZ_LAYOUT_BYTES,   D_SINGLE,    1 },
    { "q8_0 row scales",   GGZ_LAYOUT_Q8_0,    D_Q8_CONST,  4 * 34, 0, 1 },
    { "q8_0 row steps, some blocks their own", GGZ_LAYOUT_Q8_0, D_Q8_STEPS, 16 * 34, 0, 1 },
    { "q8_0 random scales",GGZ_LAYOUT_Q8_0,    D_Q8_RANDOM, 4 * 34 },
    /* any symbols make a valid trellis frame (the states follow the data) */
    { "q8_0 trellis",      GGZ_LAYOUT_Q8_0,    D_Q8_CONST,  4 * 34, 1, 1 },
    { "q8_0 trellis row steps", GGZ_LAYOUT_Q8_0, D_Q8_STEPS, 16 * 34, 1, 1 },
    { "q8_0 trellis random scales", GGZ_LAYOUT_Q8_0, D_Q8_RANDOM, 4 * 34, 1 },
    { "plane16",           GGZ_LAYOUT_PLANE16, D_PLANE16,   2 },
    { "plane32",           GGZ_LAYOUT_PLANE32, D_PLANE32,   4 },
};
#define N_LAYOUTS (sizeof(layouts) / sizeof(layouts[0]))

static void test_roundtrips(void)
{
    for (size_t c = 0; c < N_LAYOUTS; c++) {
        const layout_case * L = &layouts[c];
        const size_t rpc = CHUNK / L->row; /* rows per chunk */
        const size_t rows[] = { 0, 1, 31, 32, 33, rpc - 1, rpc, rpc + 1, 300001 / L->row };
        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
            const size_t n = rows[i] * L->row;
            uint8_t * raw = malloc(n + 1);
            fill(raw, n, L->dist, L->row);
            enc_trellis = L->trellis;
            /* small frames may store their few scales raw, cheaper than any tables */
            expect_rows = i + 1 == sizeof(rows) / sizeof(rows[0]) ? L->rows : L->rows ? -1 : 0;
            roundtrip(L->name, raw, n, L->layout, L->row, CHUNK);
            if (i + 1 == sizeof(rows) / sizeof(rows[0]))  /* and once with the default chunk */
                roundtrip(L->name, raw, n, L->layout, L->row, 0);
            enc_trellis = 0;
            free(raw);
        }
    }
}

/* Trellis quantization: levels on the path the decoder's state machine
 * follows, errors within a step, and a trellis frame of them smaller than
 * the same symbols coded by plain tables; every kernel decodes it. */
/* whether the levels q (rows x cols) follow the trellis from state 0 at every
 * chunk of rpc rows: class 0 (states 0, 1) even levels, class 1 odd ones */
static int tcq_on_path(const int8_t * q, size_t rows, size_t cols, size_t rpc)
{
    static const uint8_t next[GGZ_TCQ_STATES][2] = GGZ_TCQ_NEXT;
    uint8_t st[32];
    int ok = 1;
    for (size_t r = 0; r < rows; r++) {
        if (r % rpc == 0) memset(st, 0, sizeof st);
        for (size_t c = 0; c < cols; c++) {
            const int L = q[r * cols + c], l = (int)(c % 32);
            ok &= (L & 1) == (st[l] >> 1);
            st[l] = next[st[l]][(L >> 1) & 1];
        }
    }
    return ok;
}

static void test_trellis(void)
{
    /* chunks of at most 64 rows: the encoder cuts 300 rows into five of 60 */
    const size_t rows = 300, cols = 256, nb = cols / 32, rpc = 60, chunk_rows = 64;
    float * w = malloc(rows * cols * sizeof(float)), * steps = malloc(rows * nb * sizeof(float));
    int8_t * q = malloc(rows * cols);
    uint64_t counts[2 * 256];
    for (size_t i = 0; i < rows * cols; i++) {        /* about Gaussian: a sum of 4 uniforms */
        float s = 0;
        for (int k = 0; k < 4; k++) s += (float)(rnd() & 0xFFFF) / 65536.0f - 0.5f;
        w[i] = s;
    }
    for (size_t i = 0; i < rows * nb; i++) steps[i] = 0.04f + 0.01f * (float)(i % 3);
    check(ggz_tcq_quantize(w, rows, cols, steps, rpc, 0.0f, NULL, q, counts) == 0, "tcq quantize", "");
    int near = 1;
    uint64_t total = 0;
    for (int i = 0; i < 512; i++) total += counts[i];
    for (size_t i = 0; i < rows * cols; i++)       /* within the union's spacing */
        near &= fabsf(w[i] - (float)q[i] * steps[i / 32]) <= 2.0f * steps[i / 32];
    check(tcq_on_path(q, rows, cols, rpc), "tcq levels follow the trellis", "");
    static const uint8_t next[GGZ_TCQ_STATES][2] = GGZ_TCQ_NEXT;
    int arith = 1;   /* the NEON loop's form of the table: s' = 2 ((s & 1) ^ b) + (s >> 1) */
    for (int s = 0; s < GGZ_TCQ_STATES; s++)
        for (int b = 0; b < 2; b++) arith &= next[s][b] == 2 * ((s & 1) ^ b) + (s >> 1);
    check(arith, "GGZ_TCQ_NEXT in arithmetic form", "");
    check(near, "tcq levels within two steps of the weight", "");
    check(total == rows * cols, "tcq counts every level", "");
    check(ggz_error_code(ggz_tcq_quantize(w, rows, cols + 1, steps, rpc, 0, NULL, q, NULL)) == GGZ_ERR_PARAM,
          "tcq: cols not a multiple of 32", "");
    check(ggz_error_code(ggz_tcq_quantize(w, rows, cols, steps, rpc, 0.5f, NULL, q, NULL)) == GGZ_ERR_PARAM,
          "tcq: rate weight without code lengths", "");

    /* Q8_0 blocks of the levels, coded both ways */
    const size_t n = rows * nb * 34, row = nb * 34;
    uint8_t * raw = malloc(n);
    for (size_t b = 0; b < rows * nb; b++) {
        const uint16_t h = 0x2A3D;
        memcpy(raw + b * 34, &h, 2);
        memcpy(raw + b * 34 + 2, q + b * 32, 32);
    }
    size_t plain_size = 0, tcq_size = 0;
    uint8_t * fp = encode(raw, n, GGZ_LAYOUT_Q8_0, row, chunk_rows * row, &plain_size);
    enc_trellis = 1;
    uint8_t * ft = encode(raw, n, GGZ_LAYOUT_Q8_0, row, chunk_rows * row, &tcq_size);
    enc_trellis = 0;
    char ctx[96];
    snprintf(ctx, sizeof ctx, "plain %zu bytes, trellis %zu", plain_size, tcq_size);
    /* the class bit of every symbol is known to the decoder: about 1 bit less each */
    check(fp && ft && tcq_size + rows * cols / 10 < plain_size, "trellis frame smaller by > 0.8 bit/symbol", ctx);
    free(fp);
    free(ft);
    enc_trellis = 1;
    roundtrip("q8_0 trellis-quantized", raw, n, GGZ_LAYOUT_Q8_0, row, chunk_rows * row);
    enc_trellis = 0;
    free(raw);
    free(w);
    free(steps);
    free(q);
}

/* Damage inside rANS streams behind valid CRCs reaches the decoders: each
 * kernel must fail as the scalar decoder does, which rejects nearly all of it
 * by the final states.  Flips in the states, the
 * first words (fast path) and the last words (checked tail). */
static void test_kernels_agree_on_damaged_streams(void)
{
    const size_t n = 3 * CHUNK + 77;
    uint8_t * raw = malloc(n);
    fill(raw, n, D_BELL, 1);
    size_t size;
    uint8_t * ref = encode(raw, n, GGZ_LAYOUT_BYTES, 1, CHUNK, &size);
    fu_frame fr;
    size_t off = 0, len = 0;
    if (!check(ref && !fu_walk(ref, size, &fr) && fr.mode[0] == 1 && !fu_stream(ref, size, &fr, 1, 0, &off, &len),
               "damaged streams: a rANS frame", "bytes bell")) { free(raw); free(ref); return; }
    uint8_t * out = malloc(n);
    int rejected = 0, trials = 0;
    for (size_t i = 0; i < len; i++) {
        if (i >= 160 && i + 96 < len && i % 97) continue;
        for (int bit = 0; bit < 8; bit += 3) {
            uint8_t * f = dup_exact(ref, size);
            f[off + i] ^= (uint8_t)(1u << bit);
            fu_fix_crcs(f, size);
            use("scalar");
            const size_t want = ggz_decode_tensor(out, n, f, size, 1, NULL);
            char ctx[96];
            snprintf(ctx, sizeof(ctx), "byte %zu of chunk 1 bit %d", i, bit);
            trials++;
            rejected += ggz_error_code(want) == GGZ_ERR_CORRUPT;
            for (int k = 1; k < n_avail; k++) {
                use(avail[k]);
                snprintf(ctx, sizeof(ctx), "byte %zu of chunk 1 bit %d kernel %s", i, bit, avail[k]);
                check(ggz_decode_tensor(out, n, f, size, 1, NULL) == want, "kernel fails like scalar on a damaged stream", ctx);
            }
            free(f);
        }
    }
    /* the final states catch nearly every flip, not all: one in a few hundred
     * can land on a stream that ends right (CRCs are what catch those) */
    char ctx[64];
    snprintf(ctx, sizeof(ctx), "%d of %d", rejected, trials);
    check(rejected >= trials - trials / 100, "scalar rejects >= 99% of damaged rANS streams", ctx);
    printf("damaged rANS streams behind valid CRCs: %d of %d rejected\n", rejected, trials);
    use("scalar");
    free(out);
    free(ref);
    free(raw);
}

/* Row-step scales (MODE_ROWS) whose list of blocks is damaged behind valid
 * CRCs: a count past the chunk's blocks, a gap past them, a gap of more than
 * five LEB128 bytes or of 2^32 each fail as CORRUPT; behind the original CRCs, as
 * CHECKSUM. */
static void test_rows_list_damage(void)
{
    const size_t row = 16 * 34, n = 200 * row, nb = 64 * 16;
    uint8_t * raw = malloc(n), * out = malloc(n);
    fill(raw, n, D_Q8_STEPS, row);
    size_t size;
    uint8_t * ref = encode(raw, n, GGZ_LAYOUT_Q8_0, row, 64 * row, &size);
    fu_frame fr;
    size_t off = 0, len = 0;
    if (!check(ref && !fu_walk(ref, size, &fr) && fr.mode[1] == 2 && !fu_stream(ref, size, &fr, 1, 1, &off, &len) &&
               fu_rd32(ref + off) >= 2, "rows damage: a row-step frame listing blocks", "")) {
        free(raw); free(out); free(ref); return;
    }
    static const struct { const char * what; unsigned at, n; uint8_t b[6]; } cases[] = {
        { "count past the blocks", 0, 4, { (uint8_t)(nb + 1), (uint8_t)((nb + 1) >> 8) } },
        { "gap past the blocks", 4, 2, { 0x80 | (nb & 0x7F), (uint8_t)(nb >> 7) } },
        { "gap of six LEB128 bytes", 4, 6, { 0x80, 0x80, 0x80, 0x80, 0x80, 0x80 } },
        { "gap of 2^32 in five LEB128 bytes", 4, 5, { 0x80, 0x80, 0x80, 0x80, 0x10 } },
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        for (int fix = 0; fix < 2; fix++) {
            uint8_t * f = dup_exact(ref, size);
            memcpy(f + off + cases[c].at, cases[c].b, cases[c].n);
            if (fix) fu_fix_crcs(f, size);
            for (int k = 0; k < n_avail; k++) {
                use(avail[k]);
                char ctx[96];
                snprintf(ctx, sizeof(ctx), "%s, kernel %s", cases[c].what, avail[k]);
                check(ggz_error_code(ggz_decode_tensor(out, n, f, size, 1, NULL)) == (fix ? GGZ_ERR_CORRUPT : GGZ_ERR_CHECKSUM),
                      fix ? "rows damage behind valid CRCs: CORRUPT" : "rows damage: CHECKSUM", ctx);
            }
            free(f);
        }
    }
    use("scalar");
    free(raw);
    free(out);
    free(ref);
}

/* A damaged chunk that still decodes cleanly: only its CRC can catch it, and
 * the kernels that take the CRC in their decode loop (x86, NEON) must.  Two
 * bytes of chunk 1 swapped keep the frame's histogram, hence its tables; a
 * swap whose stream has the original's length is spliced into the original
 * frame, behind the original CRCs. */
static void test_clean_damage_caught_by_crc(void)
{
    const size_t n = 3 * CHUNK;
    uint8_t * raw = malloc(n), * out = malloc(n);
    fill(raw, n, D_BELL, 1);
    size_t size, size2;
    uint8_t * ref = encode(raw, n, GGZ_LAYOUT_BYTES, 1, CHUNK, &size), * alt = NULL;
    fu_frame fr;
    size_t off = 0, len = 0, off2 = 0, len2 = 0;
    int found = 0;
    if (ref && !fu_walk(ref, size, &fr) && fr.mode[0] == 1 && !fu_stream(ref, size, &fr, 1, 0, &off, &len)) {
        for (int t = 0; t < 200 && !found; t++) {
            /* in the middle of the chunk, where the loops take the CRC */
            const size_t i = CHUNK + CHUNK / 4 + rnd() % (CHUNK / 2), j = CHUNK + CHUNK / 4 + rnd() % (CHUNK / 2);
            if (raw[i] == raw[j]) continue;
            uint8_t v = raw[i]; raw[i] = raw[j]; raw[j] = v;
            free(alt);
            alt = encode(raw, n, GGZ_LAYOUT_BYTES, 1, CHUNK, &size2);
            v = raw[i]; raw[i] = raw[j]; raw[j] = v;
            fu_frame fr2;
            found = alt && size2 == size && !fu_walk(alt, size2, &fr2) && fr2.data == fr.data &&
                    !memcmp(alt + GGZ_FRAME_HEADER_SIZE, ref + GGZ_FRAME_HEADER_SIZE, fr.index - GGZ_FRAME_HEADER_SIZE) &&
                    !fu_stream(alt, size2, &fr2, 1, 0, &off2, &len2) && off2 == off && len2 == len;
        }
    }
    if (check(found, "a swap in chunk 1 with a stream of the same length", "bytes bell")) {
        memcpy(ref + off, alt + off, len);
        for (int k = 0; k < n_avail; k++) {
            use(avail[k]);
            int64_t bad = -2;
            const size_t r = ggz_decode_tensor(out, n, ref, size, 1, &bad);
            check(ggz_error_code(r) == GGZ_ERR_CHECKSUM && bad == 1, "cleanly decoding damage: CHECKSUM in chunk 1", avail[k]);
            check(ggz_error_code(ggz_decode_chunk(out, n, ref, size, 1)) == GGZ_ERR_CHECKSUM,
                  "cleanly decoding damage: decode_chunk says CHECKSUM", avail[k]);
        }
        use("scalar");
    }
    free(alt);
    free(ref);
    free(out);
    free(raw);
}

/* Truncated and bit-flipped frames, small and large, for every kernel. */
static void test_damaged_frames(void)
{
    for (int big = 0; big < 2; big++) {
        /* Q8_0, two streams per chunk; the small frame has two chunks */
        const size_t row = 7 * 34, n = (big ? 850 : 12) * row;
        uint8_t * raw = malloc(n);
        fill(raw, n, D_Q8_RANDOM, row);
        size_t size;
        uint8_t * ref = encode(raw, n, GGZ_LAYOUT_Q8_0, row, big ? CHUNK : 6 * row, &size);
        if (!check(ref != NULL, "encode", "damaged frames")) { free(raw); return; }
        for (int k = 0; k < n_avail; k++) {
            use(avail[k]);
            char ctx[96];
            int ok = 1;
            for (size_t len = 0; len < size; len++) {
                if (big && len > 200 && len + 64 < size && len % 1999) continue;
                uint8_t * f = dup_exact(ref, len);
                snprintf(ctx, sizeof(ctx), "%s frame cut to %zu bytes, kernel %s", big ? "large" : "small", len, avail[k]);
                ok &= check(ggz_is_error(ggz_frame_info_get(f, len, NULL)), "truncated frame: info fails", ctx);
                ok &= damaged_fails(f, len, raw, n, ctx);
                free(f);
            }
            for (size_t i = 0; i < size; i++) {
                if (big && i > 600 && i + 64 < size && i % 499) continue;
                uint8_t * f = dup_exact(ref, size);
                f[i] ^= (uint8_t)(1u << (i % 8));
                snprintf(ctx, sizeof(ctx), "%s frame, bit flip at %zu, kernel %s", big ? "large" : "small", i, avail[k]);
                ok &= damaged_fails(f, size, raw, n, ctx);
                if (i + 64 >= size) {
                    /* in the last chunk's payload: the checksum names it, whatever the
                     * decoder met first (the kernels check the CRC while decoding) */
                    uint8_t * out = malloc(n);
                    int64_t bad = -2;
                    const size_t r = ggz_decode_tensor(out, n, f, size, 1, &bad);
                    ggz_frame_info fi;
                    ggz_frame_info_get(ref, size, &fi);
                    ok &= check(ggz_error_code(r) == GGZ_ERR_CHECKSUM && bad == (int64_t)fi.n_chunks - 1,
                                "a flipped payload byte: CHECKSUM in the last chunk", ctx);
                    free(out);
                }
                free(f);
            }
            printf("%s frame (%zu bytes), truncations and bit flips, kernel %s: %s\n",
                   big ? "large" : "small", size, avail[k], ok ? "ok" : "FAILED");
        }
        use("scalar");
        free(ref);
        free(raw);
    }
}

/* Header fields rewritten (with a valid header CRC) to claim more than the
 * frame holds: an error, not a crash or a huge allocation.  One more row
 * leaves the header consistent: only decoding the last chunk can tell. */
static void test_oversized_headers(void)
{
    const size_t n = 3 * CHUNK + 5;
    uint8_t * raw = malloc(n);
    fill(raw, n, D_BELL, 1);
    size_t size;
    uint8_t * ref = encode(raw, n, GGZ_LAYOUT_BYTES, 1, CHUNK, &size);
    fu_frame fr;
    if (!check(ref && !fu_walk(ref, size, &fr), "encode", "oversized headers")) { free(raw); free(ref); return; }
    struct { const char * what; size_t at; int width; uint64_t value; int parses; } edits[] = {
        { "raw size 2^64-1",           8, 8, UINT64_MAX, 0 },
        { "raw size 2^40",             8, 8, (uint64_t)1 << 40, 0 },
        { "raw size one row more",     8, 8, n + 1, 1 },
        { "row size 2^31",             16, 4, 1u << 31, 0 },
        { "rows per chunk 2^32-1",     20, 4, UINT32_MAX, 0 },
        { "chunks 2^32-1",             24, 4, UINT32_MAX, 0 },
        { "chunks 0",                  24, 4, 0, 0 },
        { "stream size 2^32-1",        fr.index, 4, UINT32_MAX, 0 },
        { "stream size one word more", fr.index, 4, fu_rd32(ref + fr.index) + 2, 0 },
        { "last stream size doubled",  fr.index + 3 * fr.entry, 4, 2 * (uint64_t)fu_rd32(ref + fr.index + 3 * fr.entry), 0 },
    };
    for (size_t e = 0; e < sizeof(edits) / sizeof(edits[0]); e++) {
        uint8_t * f = dup_exact(ref, size);
        memcpy(f + edits[e].at, &edits[e].value, (size_t)edits[e].width);
        uint32_t crc = ggz_crc32c(0, f, 28);
        fu_wr32(f + 28, ggz_crc32c(crc, f + GGZ_FRAME_HEADER_SIZE, fr.data - GGZ_FRAME_HEADER_SIZE));
        for (int k = 0; k < n_avail; k++) {
            use(avail[k]);
            char ctx[96];
            snprintf(ctx, sizeof(ctx), "%s, kernel %s", edits[e].what, avail[k]);
            check(edits[e].parses || ggz_is_error(ggz_frame_info_get(f, size, NULL)), "oversized header: info fails", ctx);
            damaged_fails(f, size, raw, n, ctx);
        }
        free(f);
    }
    use("scalar");
    free(ref);
    free(raw);

    /* No chunks for 2^64 - 1 bytes (rows + rows_per_chunk - 1 wrapped to 0 once):
     * header, one stored stream, no index. */
    uint8_t tiny[33] = { 0 };
    fu_wr32(tiny, GGZ_FRAME_MAGIC);
    tiny[4] = GGZ_FORMAT_VERSION;
    tiny[5] = GGZ_LAYOUT_BYTES;
    tiny[7] = 1;
    memset(tiny + 8, 0xFF, 8);
    fu_wr32(tiny + 16, 1);
    fu_wr32(tiny + 20, 2);
    fu_wr32(tiny + 24, 0);
    fu_wr32(tiny + 28, ggz_crc32c(ggz_crc32c(0, tiny, 28), tiny + 32, 1));
    uint8_t * f = dup_exact(tiny, sizeof(tiny));
    uint8_t out[16];
    check(ggz_error_code(ggz_frame_info_get(f, sizeof(tiny), NULL)) == GGZ_ERR_HEADER, "no chunks for 2^64-1 bytes: info fails", "");
    check(ggz_error_code(ggz_verify_tensor(f, sizeof(tiny), NULL)) == GGZ_ERR_HEADER, "no chunks for 2^64-1 bytes: verify fails", "");
    check(ggz_error_code(ggz_decode_tensor(out, sizeof(out), f, sizeof(tiny), 2, NULL)) == GGZ_ERR_HEADER,
          "no chunks for 2^64-1 bytes: decode fails", "");
    free(f);
}

static void test_crc32c(void)
{
    check(ggz_crc32c(0, "123456789", 9) == 0xE3069283u, "crc32c(\"123456789\") = 0xE3069283", "hardware path");
    check(ggz_crc32c_portable(0, "123456789", 9) == 0xE3069283u, "crc32c(\"123456789\") = 0xE3069283", "table path");
    check(ggz_crc32c(0, NULL, 0) == 0, "crc32c of nothing", "");
    static uint8_t buf[20000];
    fill(buf, sizeof(buf), D_UNIFORM, 1);
    int same = 1, chained = 1;
    /* every alignment and tail length of the 8-byte loops, and of the 3-lane split */
    for (size_t at = 0; at < 9; at++)
        for (size_t len = 0; len + at <= sizeof(buf); len += (len < 80 ? 1 : len < 1100 ? 37 : 997)) {
            const uint32_t c = ggz_crc32c(0, buf + at, len);
            same &= c == ggz_crc32c_portable(0, buf + at, len);
            chained &= c == ggz_crc32c(ggz_crc32c(0, buf + at, len / 3), buf + at + len / 3, len - len / 3);
        }
    check(same, "crc32c hardware = table path", "all alignments and lengths");
    check(chained, "crc32c continues from a previous value", "");
}

static void test_params(void)
{
    uint8_t raw[68] = { 0 }, dst[4096];
    const ggz_params bad_layout = { GGZ_LAYOUT_COUNT, 0, 0, 1 }, bad_row = { GGZ_LAYOUT_Q8_0, 35, 0, 1 };
    const ggz_params bytes = { GGZ_LAYOUT_BYTES, 0, 0, 1 }, q8 = { GGZ_LAYOUT_Q8_0, 0, 0, 1 };
    check(ggz_error_code(ggz_encode_tensor(dst, sizeof(dst), raw, 68, &bad_layout)) == GGZ_ERR_PARAM, "encode: bad layout", "");
    check(ggz_error_code(ggz_encode_tensor(dst, sizeof(dst), raw, 68, &bad_row)) == GGZ_ERR_PARAM, "encode: row not a multiple of 34", "");
    check(ggz_error_code(ggz_encode_tensor(dst, sizeof(dst), raw, 67, &q8)) == GGZ_ERR_PARAM, "encode: size not a multiple of the row", "");
    check(ggz_error_code(ggz_encode_tensor(dst, 10, raw, 68, &bytes)) == GGZ_ERR_DST_TOO_SMALL, "encode: dst too small", "");
    check(ggz_error_code(ggz_set_kernel("no-such-kernel")) == GGZ_ERR_KERNEL, "set_kernel: unknown name", "");
    check(ggz_error_code(ggz_frame_info_get("GGZ", 3, NULL)) == GGZ_ERR_SRC_TRUNCATED, "info: 3 bytes", "");
    memset(dst, 0, 64);
    check(ggz_error_code(ggz_frame_info_get(dst, 64, NULL)) == GGZ_ERR_BAD_MAGIC, "info: bad magic", "");
    check(!strcmp(ggz_error_name(0), "no error") && strcmp(ggz_error_name((size_t)-1), "no error"), "error names", "");
}

/* ---- batch decode ----------------------------------------------------------- */

static size_t batch_done_count;
static uint8_t batch_done_seen[16];
static int batch_done_nice[16];     /* the nice value of the thread that finished frame i (Linux) */

static void batch_done(void * opaque, size_t i)
{
    (void)opaque;
#if defined(__linux__)
    if (i < 16) batch_done_nice[i] = getpriority(PRIO_PROCESS, 0);
#endif
    if (i < 16) batch_done_seen[i]++;
    __atomic_store_n(&batch_done_count, batch_done_count + 1, __ATOMIC_RELEASE);
}

/* Frames of many sizes (empty, one chunk, many chunks) and layouts in one batch:
 * each must decode as alone; a damaged frame must fail the batch naming itself
 * (result and bad chunk), never report the frame as decoded, never crash. */
static void test_batch(void)
{
    enum { N = 9 };
    static const size_t sizes[N] = { 34 * 8, 0, 34 * 64 * 40, 34 * 2, 4096 * 3 + 100, 34 * 64 * 7, 2 * 999, 64 * 4 * 50, 34 * 64 };
    static const int lay[N] = { GGZ_LAYOUT_Q8_0, GGZ_LAYOUT_BYTES, GGZ_LAYOUT_Q8_0, GGZ_LAYOUT_Q8_0, GGZ_LAYOUT_BYTES,
                                GGZ_LAYOUT_Q8_0, GGZ_LAYOUT_PLANE16, GGZ_LAYOUT_PLANE32, GGZ_LAYOUT_Q8_0 };
    static const int dist[N] = { D_Q8_RANDOM, D_BELL, D_Q8_RANDOM, D_Q8_CONST, D_BELL, D_Q8_RANDOM, D_PLANE16, D_PLANE32, D_Q8_RANDOM };
    uint8_t * raw[N], * frame[N], * out[N];
    size_t fsize[N];
    int ok = 1;
    for (int i = 0; i < N; i++) {
        const size_t row = lay[i] == GGZ_LAYOUT_Q8_0 ? 34 * 2 : 0;
        raw[i] = malloc(sizes[i] + 1);
        fill(raw[i], sizes[i], dist[i], row ? row : 1);
        uint8_t * f = encode(raw[i], sizes[i], lay[i], row, CHUNK, &fsize[i]);
        if (!f) { ok = 0; frame[i] = NULL; out[i] = NULL; continue; }
        frame[i] = dup_exact(f, fsize[i]);
        free(f);
        out[i] = malloc(sizes[i] + 1);
    }
    if (!check(ok, "batch: encode", "")) return;

    ggz_batch_item items[N];
    char ctx[64];
    for (int k = 0; k < n_avail; k++) {
        use(avail[k]);
        for (int threads = 1; threads <= 3; threads++) {
            snprintf(ctx, sizeof(ctx), "kernel=%s threads=%d", avail[k], threads);
            for (int i = 0; i < N; i++) {
                memset(out[i], 0xEE, sizes[i] + 1);
                items[i] = (ggz_batch_item){ out[i], sizes[i], frame[i], fsize[i], 12345, 7 };
            }
            batch_done_count = 0;
            memset(batch_done_seen, 0, sizeof(batch_done_seen));
            int same = 1, once = 1;
            check(ggz_decode_batch(items, N, threads, batch_done, NULL) == N, "batch: decode", ctx);
            for (int i = 0; i < N; i++) {
                same &= items[i].result == sizes[i] && items[i].bad_chunk == -1 && !memcmp(out[i], raw[i], sizes[i]) &&
                        out[i][sizes[i]] == 0xEE;
                once &= batch_done_seen[i] == 1;
            }
            check(same, "batch: every frame as alone, nothing written past it", ctx);
            check(once && batch_done_count == N, "batch: done once per frame", ctx);

            /* a flipped byte in the last chunk of frame 2: its CRC fails */
            ggz_frame_info fi2;
            ggz_frame_info_get(frame[2], fsize[2], &fi2);
            uint8_t * bad = dup_exact(frame[2], fsize[2]);
            bad[fsize[2] - 100] ^= 0x40;
            items[2].src = bad;
            batch_done_seen[2] = 0;
            const size_t r = ggz_decode_batch(items, N, threads, batch_done, NULL);
            check(ggz_error_code(r) == GGZ_ERR_CHECKSUM && ggz_error_code(items[2].result) == GGZ_ERR_CHECKSUM &&
                  items[2].bad_chunk == (int64_t)fi2.n_chunks - 1 && batch_done_seen[2] == 0, "batch: damaged frame named, not reported done", ctx);
            for (int i = 0; i < N; i++)
                check(i == 2 || items[i].result == sizes[i] || ggz_error_code(items[i].result) == GGZ_ERR_GENERIC,
                      "batch: other frames decoded or marked not reached", ctx);
            /* a damaged header */
            bad[0] ^= 1;
            check(ggz_is_error(ggz_decode_batch(items, N, threads, NULL, NULL)) && items[2].bad_chunk == -1 &&
                  ggz_error_code(items[2].result) == GGZ_ERR_BAD_MAGIC, "batch: bad header named", ctx);
            free(bad);
            items[2].src = frame[2];
            items[5].dstCapacity = sizes[5] - 1;
            check(ggz_error_code(ggz_decode_batch(items, N, threads, NULL, NULL)) == GGZ_ERR_DST_TOO_SMALL &&
                  ggz_error_code(items[5].result) == GGZ_ERR_DST_TOO_SMALL, "batch: dst one byte short", ctx);
            items[5].dstCapacity = sizes[5];

            /* in the background: threads - 1 workers start, the caller finishes (0 workers: all on finish) */
            for (int i = 0; i < N; i++) memset(out[i], 0xEE, sizes[i] + 1);
            batch_done_count = 0;
            memset(batch_done_seen, 0, sizeof(batch_done_seen));
            ggz_batch * b = ggz_batch_start(items, N, threads - 1, batch_done, NULL);
            check(b != NULL && ggz_batch_finish(b) == N, "batch start/finish: decode", ctx);
            same = 1;
            for (int i = 0; i < N; i++)
                same &= items[i].result == sizes[i] && !memcmp(out[i], raw[i], sizes[i]) && out[i][sizes[i]] == 0xEE &&
                        batch_done_seen[i] == 1;
            check(same && batch_done_count == N, "batch start/finish: every frame, done once", ctx);
            /* cancelled at once: whatever was not finished is marked, nothing is reported twice */
            batch_done_count = 0;
            memset(batch_done_seen, 0, sizeof(batch_done_seen));
            ggz_batch_cancel(ggz_batch_start(items, N, threads - 1, batch_done, NULL));
            int marked = 1;
            for (int i = 0; i < N; i++)
                marked &= (items[i].result == sizes[i] && batch_done_seen[i] == 1) ||
                          (ggz_error_code(items[i].result) == GGZ_ERR_GENERIC && batch_done_seen[i] == 0);
            check(marked, "batch cancel: frames decoded or marked not reached", ctx);
        }
    }
#if defined(__linux__)
    /* a background batch's workers yield to the caller (nice + 10, at most 19); a synchronous
     * batch's workers do not. The caller waits, without joining, until the worker is done. */
    {
        const int base = getpriority(PRIO_PROCESS, 0), want = base + 10 < 19 ? base + 10 : 19;
        batch_done_count = 0;
        ggz_batch * b = ggz_batch_start(items, N, 1, batch_done, NULL);
        const struct timespec tick = { 0, 1000000 };
        for (int w = 0; w < 10000 && __atomic_load_n(&batch_done_count, __ATOMIC_ACQUIRE) < N; w++) nanosleep(&tick, NULL);
        const int all_by_worker = __atomic_load_n(&batch_done_count, __ATOMIC_ACQUIRE) == N;
        check(b != NULL && ggz_batch_finish(b) == N && all_by_worker, "batch start: the worker decodes alone", "");
        int yielded = 1;
        for (int i = 0; i < N; i++) yielded &= batch_done_nice[i] == want;
        check(yielded && getpriority(PRIO_PROCESS, 0) == base, "batch start: the worker runs at nice + 10, the caller as before", "");
        batch_done_count = 0;
        check(ggz_decode_batch(items, N, 4, batch_done, NULL) == N, "batch: decode", "nice");
        int kept = 1;
        for (int i = 0; i < N; i++) kept &= batch_done_nice[i] == base;
        check(kept, "batch: a synchronous batch's workers keep the caller's nice value", "");
    }
#endif
    ggz_batch_cancel(NULL);
    check(ggz_error_code(ggz_batch_finish(NULL)) == GGZ_ERR_PARAM, "batch finish: NULL", "");
    check(ggz_decode_batch(NULL, 0, 2, NULL, NULL) == 0, "batch: empty", "");
    check(ggz_error_code(ggz_decode_batch(NULL, 1, 2, NULL, NULL)) == GGZ_ERR_PARAM, "batch: NULL items", "");
    for (int i = 0; i < N; i++) { free(raw[i]); free(frame[i]); free(out[i]); }
}

/* Every chunk of a frame damaged near its end, large chunks: several threads
 * fail chunks of the same frame at the same time (the ThreadSanitizer build
 * checks how they report it); the first failure is named, every time. */
static void test_threads_fail_together(void)
{
    const size_t chunk = 64 * 1024, n = 8 * chunk;
    uint8_t * raw = malloc(n), * out = malloc(n);
    fill(raw, n, D_BELL, 1);
    size_t size;
    uint8_t * f = encode(raw, n, GGZ_LAYOUT_BYTES, 1, chunk, &size);
    fu_frame fr;
    int hit = f && !fu_walk(f, size, &fr) && fr.n_chunks == 8;
    for (uint32_t j = 0; hit && j < fr.n_chunks; j++) {
        size_t off, len;
        hit = !fu_stream(f, size, &fr, j, 0, &off, &len) && len > 64;
        if (hit) f[off + len - 40] ^= 0x10;   /* in the checked tail: found at the end of the chunk */
    }
    if (!check(hit, "threads fail together: a damaged 8-chunk frame", "")) { free(f); free(out); free(raw); return; }
    for (int threads = 2; threads <= 4; threads++) {
        char ctx[32];
        snprintf(ctx, sizeof(ctx), "threads=%d", threads);
        int named = 1;
        for (int rep = 0; rep < 4; rep++) {
            int64_t bad = -2;
            const size_t r = ggz_decode_tensor(out, n, f, size, threads, &bad);
            named &= ggz_error_code(r) == GGZ_ERR_CHECKSUM && bad >= 0 && bad < 8;
            ggz_batch_item items[2] = { { out, n, f, size, 0, -2 }, { out, n, f, size, 0, -2 } };
            const size_t rb = ggz_decode_batch(items, 2, threads, NULL, NULL);
            named &= ggz_error_code(rb) == GGZ_ERR_CHECKSUM && ggz_error_code(items[0].result) == GGZ_ERR_CHECKSUM &&
                     items[0].bad_chunk >= 0 && items[0].bad_chunk < 8 &&
                     ggz_error_code(items[1].result) == GGZ_ERR_GENERIC && items[1].bad_chunk == -1;
        }
        check(named, "threads fail together: CHECKSUM, one chunk named, the next frame not reached", ctx);
    }
    free(f);
    free(out);
    free(raw);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* decode MB/s of 4 MiB of bell-shaped bytes, best of 3 */
static void bench(void)
{
    const size_t n = (size_t)4 << 20;
    uint8_t * raw = malloc(n), * out = malloc(n);
    fill(raw, n, D_BELL, 1);
    size_t size;
    uint8_t * f = encode(raw, n, GGZ_LAYOUT_BYTES, 1, 0, &size);
    for (int k = 0; k < n_avail && f; k++) {
        use(avail[k]);
        double best = 1e30;
        for (int rep = 0; rep < 3; rep++) {
            const double t0 = now();
            const size_t r = ggz_decode_tensor(out, n, f, size, 1, NULL);
            const double t = now() - t0;
            check(r == n && !memcmp(out, raw, n), "bench decode", avail[k]);
            if (t < best) best = t;
        }
        printf("bench: kernel %-7s decodes %7.1f MB/s (1 thread, 4 MiB, %.2f bits/byte)\n",
               avail[k], (double)n / best / 1e6, 8.0 * (double)size / (double)n);
    }
    use("scalar");
    free(f);
    free(out);
    free(raw);
}


/* ---- activation sparsity kernels ------------------------------------------ */

/* f16 bits of a small positive scale: exponent 2^-7..2^-4, any mantissa */
static uint16_t rnd_scale16(void) { return (uint16_t)((8 + rnd() % 4) << 10 | (rnd() & 0x3ff)); }

static double f16d(uint16_t h) { return ldexp(1.0 + (h & 0x3ff) / 1024.0, (int)(h >> 10) - 15); }

static float rnd_act(int zero_pct)
{
    if ((int)(rnd() % 100) < zero_pct) return 0.0f;
    return ((float)(rnd() % 20001) - 10000.0f) / 4000.0f;
}

/* Every sparse kernel built in and runnable here against a double reference
 * of the same formulas, on random Q8_0 matrices, masks and thresholds, with
 * ranges that do not start at 0 and odd block counts (the tile tails). */
static void test_sparse_kernels(void)
{
    static const char * const names[] = { "scalar", "avx2", "avx512", "neon" };
    enum { N_IN = 96, N_OUT = 160, N_TOK = 7 };          /* 3 and 5 blocks */
    const size_t rb_up = N_IN / 32 * 34, rb_t = N_OUT / 32 * 34;
    uint8_t * w = malloc(N_OUT * rb_up), * wt = malloc(N_IN * rb_t);
    float x[N_IN], a[N_OUT], thr[N_OUT], xthr[N_IN], X[N_TOK * N_IN];
    for (size_t r = 0; r < N_OUT; r++)
        for (size_t b = 0; b < N_IN / 32; b++) {
            uint8_t * blk = w + r * rb_up + b * 34;
            const uint16_t d = rnd_scale16();
            memcpy(blk, &d, 2);
            for (int j = 0; j < 32; j++) blk[2 + j] = (uint8_t)(rnd() % 255 - 127);
        }
    for (size_t k = 0; k < N_IN; k++)
        for (size_t b = 0; b < N_OUT / 32; b++) {
            uint8_t * blk = wt + k * rb_t + b * 34;
            const uint16_t d = rnd_scale16();
            memcpy(blk, &d, 2);
            for (int j = 0; j < 32; j++) blk[2 + j] = bell8();
        }
    for (int k = 0; k < N_IN; k++) { x[k] = rnd_act(20); xthr[k] = (float)(rnd() % 100) / 100.0f; }
    for (int i = 0; i < N_OUT; i++) { a[i] = rnd_act(10); thr[i] = (float)(rnd() % 150) / 100.0f; }
    for (int i = 0; i < N_TOK * N_IN; i++) X[i] = rnd_act(0);

    /* the activation as the kernels see it */
    int8_t qx[N_IN + 4 * (N_IN / 32)];
    check(ggz_sparse_qx_size(N_IN) == sizeof qx, "sparse: qx size", "");
    ggz_sparse_quantize(x, N_IN, qx);
    const float * xd = (const float *)(qx + N_IN);
    int quant_ok = 1;
    for (int k = 0; k < N_IN; k++) quant_ok &= fabs(qx[k] * (double)xd[k / 32] - x[k]) <= xd[k / 32] * 0.5001;
    check(quant_ok, "sparse: quantized activation within half a step", "");

    double up_ref[N_OUT], up_ref_all[N_OUT], ax_ref[N_OUT], tmm_ref[N_TOK][N_OUT];
    for (int i = 0; i < N_OUT; i++) {
        double s = 0;
        for (int b = 0; b < N_IN / 32; b++) {
            const uint8_t * blk = w + i * rb_up + b * 34;
            uint16_t d; memcpy(&d, blk, 2);
            long acc = 0;
            for (int j = 0; j < 32; j++) acc += (int8_t)blk[2 + j] * qx[b * 32 + j];
            s += f16d(d) * xd[b] * (double)acc;
        }
        up_ref_all[i] = a[i] * s;
        up_ref[i] = (a[i] != 0 && fabsf(a[i]) >= thr[i]) ? a[i] * s : 0.0;
    }
    int32_t idx[N_IN];
    int64_t nnz_ref = 0;
    for (int k = 0; k < N_IN; k++) nnz_ref += x[k] != 0 && fabsf(x[k]) >= xthr[k];
    for (int j = 0; j < N_OUT; j++) {
        double s = 0;
        for (int k = 0; k < N_IN; k++) {
            if (!(x[k] != 0 && fabsf(x[k]) >= xthr[k])) continue;
            const uint8_t * blk = wt + k * rb_t + (j / 32) * 34;
            uint16_t d; memcpy(&d, blk, 2);
            s += x[k] * f16d(d) * (int8_t)blk[2 + j % 32];
        }
        ax_ref[j] = s;
        for (int t = 0; t < N_TOK; t++) {
            double u = 0;
            for (int k = 0; k < N_IN; k++) {
                const uint8_t * blk = wt + k * rb_t + (j / 32) * 34;
                uint16_t d; memcpy(&d, blk, 2);
                u += X[t * N_IN + k] * f16d(d) * (int8_t)blk[2 + j % 32];
            }
            tmm_ref[t][j] = u;
        }
    }
    const int64_t nnz = ggz_sparse_select(x, xthr, N_IN, idx);
    check(nnz == nnz_ref && nnz > 0 && nnz < N_IN, "sparse: select count", "");

    const char * start = ggz_sparse_kernel_name();
    for (size_t ki = 0; ki < sizeof names / sizeof names[0]; ki++) {
        if (ggz_is_error(ggz_sparse_set_kernel(names[ki]))) {
            printf("sparse kernel %s: not built in or not runnable here, skipped\n", names[ki]);
            continue;
        }
        float h[N_OUT], y[N_OUT], Y[N_TOK][N_OUT + 3];
        for (int i = 0; i < N_OUT; i++) h[i] = -999.0f;
        ggz_sparse_up(w, rb_up, N_IN, qx, a, thr, 1, N_OUT - 2, h);  /* a range: rows 1 .. N-3 */
        int ok = h[0] == -999.0f && h[N_OUT - 1] == -999.0f && h[N_OUT - 2] == -999.0f;
        for (int i = 1; i < N_OUT - 2; i++) ok &= fabs(h[i] - up_ref[i]) <= 1e-4 * (1 + fabs(up_ref[i]));
        for (int i = 1; i < N_OUT - 2; i++) ok &= (up_ref[i] == 0) == (h[i] == 0.0f);
        check(ok, "sparse up = reference, skipped rows exactly 0", names[ki]);

        /* outputs of blocks 1..4 (b0 = 1: y starts at output 32), then all */
        for (int b0 = 0; b0 <= 1; b0++) {
            for (int i = 0; i < N_OUT; i++) y[i] = -999.0f;
            ggz_sparse_axpy(wt, rb_t, idx, nnz, x, b0, N_OUT / 32, y);
            ok = 1;
            for (int j = 32 * b0; j < N_OUT; j++) ok &= fabs(y[j - 32 * b0] - ax_ref[j]) <= 1e-4 * (1 + fabs(ax_ref[j]));
            for (int j = N_OUT - 32 * b0; j < N_OUT; j++) ok &= y[j] == -999.0f;
            check(ok, b0 ? "sparse axpy = reference (outputs from block 1)" : "sparse axpy = reference", names[ki]);

            for (int t = 0; t < N_TOK; t++) for (int i = 0; i < N_OUT + 3; i++) Y[t][i] = -999.0f;
            ggz_sparse_tmm(wt, rb_t, N_IN, X, N_IN, N_TOK, b0, N_OUT / 32, &Y[0][0], N_OUT + 3);
            ok = 1;
            for (int t = 0; t < N_TOK; t++) {
                for (int j = 32 * b0; j < N_OUT; j++) ok &= fabs(Y[t][j - 32 * b0] - tmm_ref[t][j]) <= 1e-4 * (1 + fabs(tmm_ref[t][j]));
                for (int j = N_OUT - 32 * b0; j < N_OUT + 3; j++) ok &= Y[t][j] == -999.0f;
            }
            check(ok, b0 ? "sparse tmm = reference (outputs from block 1)" : "sparse tmm = reference", names[ki]);
        }

        /* up with every row passing, with these thresholds and with them x3 */
        for (int sc = 0; sc < 3; sc++) {
            const float scale = sc == 0 ? 0.0f : sc == 1 ? 1.0f : 3.0f;
            float t_up[N_OUT], hh[N_OUT];
            for (int i = 0; i < N_OUT; i++) t_up[i] = thr[i] * scale;
            ggz_sparse_up(w, rb_up, N_IN, qx, a, sc ? t_up : NULL, 0, N_OUT, hh);
            ok = 1;
            for (int i = 0; i < N_OUT; i++) {
                const double dot = a[i] != 0 ? up_ref_all[i] : 0.0;
                const double ref = (a[i] != 0 && fabsf(a[i]) >= t_up[i]) ? dot : 0.0;
                ok &= fabs(hh[i] - ref) <= 1e-4 * (1 + fabs(ref)) && (ref == 0) == (hh[i] == 0.0f);
            }
            check(ok, sc == 0 ? "sparse up, every row passing = reference" : "sparse up, thresholds scaled = reference", names[ki]);
        }
    }
    ggz_sparse_set_kernel(start);
    free(w);
    free(wt);
}

/* sum over rows of (w - q d) H (w - q d)^T with H^-1 = U^T U for the columns
 * in lane order (index l * nb + b = column 32 b + l): |y|^2, U^T y = (w - q d)^T */
static double tcq_output_error(const float * w, const int8_t * q, const float * steps, const float * u,
                               size_t rows, size_t cols, size_t nb)
{
    double e = 0, * y = malloc(cols * sizeof(double));
    for (size_t r = 0; r < rows; r++) {
        for (size_t i = 0; i < cols; i++) {
            const size_t c = (i % nb) * 32 + i / nb;        /* lane-order index i -> column */
            double x = w[r * cols + c] - (double)q[r * cols + c] * steps[(r * cols + c) / 32];
            for (size_t k = 0; k < i; k++) x -= u[k * cols + i] * y[k];
            y[i] = x / u[i * cols + i];
            e += y[i] * y[i];
        }
    }
    free(y);
    return e;
}

/* ggz_tcq_feedback: without feedback (U = I) and with one step it is the
 * Viterbi path of ggz_tcq_quantize; with a correlated input its levels follow
 * the trellis and cut the output error */
static void test_trellis_feedback(void)
{
    const size_t rows = 96, cols = 192, nb = cols / 32, rpc = 40;
    float * w = malloc(rows * cols * sizeof(float)), * steps = malloc(rows * nb * sizeof(float));
    float * u = calloc(cols * cols, sizeof(float));
    int8_t * q0 = malloc(rows * cols), * q1 = malloc(rows * cols);
    uint64_t c0[512], c1[512];
    for (size_t i = 0; i < rows * cols; i++) w[i] = (float)(rnd() & 0xFFFF) / 32768.0f - 1.0f;
    for (size_t i = 0; i < rows * nb; i++) steps[i] = 0.07f;
    for (size_t i = 0; i < cols; i++) u[i * cols + i] = 1.0f;
    check(ggz_tcq_quantize(w, rows, cols, steps, rpc, 0.0f, NULL, q0, c0) == 0, "tcq quantize", "");
    check(ggz_tcq_feedback(w, rows, cols, steps, rpc, u, q1, c1) == 0, "tcq feedback", "");
    check(!memcmp(q0, q1, rows * cols) && !memcmp(c0, c1, sizeof c0),
          "tcq feedback: U = I, one step: the Viterbi path", "");

    for (size_t i = 0; i < rows * nb; i++) steps[i] = 0.06f + 0.02f * (float)(i % 2);
    check(ggz_tcq_quantize(w, rows, cols, steps, rpc, 0.0f, NULL, q0, c0) == 0, "tcq quantize", "");
    for (size_t i = 0; i < cols; i++)       /* a banded U: neighbouring inputs correlate */
        for (size_t j = i + 1; j < cols && j < i + 48; j++)
            u[i * cols + j] = 0.2f * ((float)(rnd() & 0xFFFF) / 32768.0f - 1.0f);
    check(ggz_tcq_feedback(w, rows, cols, steps, rpc, u, q1, c1) == 0, "tcq feedback, correlated", "");
    uint64_t total = 0;
    for (int i = 0; i < 512; i++) total += c1[i];
    check(tcq_on_path(q1, rows, cols, rpc) && total == rows * cols, "tcq feedback: levels follow the trellis", "");
    const double e0 = tcq_output_error(w, q0, steps, u, rows, cols, nb);
    const double e1 = tcq_output_error(w, q1, steps, u, rows, cols, nb);
    char ctx[96];
    snprintf(ctx, sizeof ctx, "output error %.4g without feedback, %.4g with", e0, e1);
    check(e1 < 0.8 * e0, "tcq feedback: output error below 0.8x the Viterbi path's", ctx);
    check(ggz_error_code(ggz_tcq_feedback(w, rows, cols, steps, rpc, NULL, q1, NULL)) == GGZ_ERR_PARAM,
          "tcq feedback: no factor", "");
    u[5 * cols + 5] = 0.0f;
    check(ggz_error_code(ggz_tcq_feedback(w, rows, cols, steps, rpc, u, q1, NULL)) == GGZ_ERR_PARAM,
          "tcq feedback: a factor with a zero pivot", "");
    free(w); free(steps); free(u); free(q0); free(q1);
}

int main(int argc, char ** argv)
{
    const char * start_kernel = ggz_kernel_name();
    printf("ggzip %u, kernel chosen at start-up: %s\n", ggz_version_number(), start_kernel);
    int do_bench = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--bench")) do_bench = 1;
        else if (!strcmp(argv[i], "--expect-kernel") && i + 1 < argc) {
            const char * want = argv[++i];
            check(!strcmp(start_kernel, want), "kernel chosen at start-up", want);
        }
        else { fprintf(stderr, "usage: %s [--expect-kernel NAME] [--bench]\n", argv[0]); return 2; }
    }
    find_kernels();
    test_crc32c();
    test_params();
    test_roundtrips();
    test_kernels_agree_on_damaged_streams();
    test_rows_list_damage();
    test_clean_damage_caught_by_crc();
    test_damaged_frames();
    test_oversized_headers();
    test_batch();
    test_threads_fail_together();
    test_sparse_kernels();
    test_trellis();      /* last: its random draws would change the data of the tests above */
    test_trellis_feedback();
    if (do_bench) bench();
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
