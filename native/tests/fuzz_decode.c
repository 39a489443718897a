/* libFuzzer target for every decoder entry point, on every kernel the host
 * can run:  ggz_frame_info_get, ggz_decode_tensor, ggz_decode_chunk and
 * ggz_verify_tensor must return an error or the right size, never crash, and
 * every kernel must give the scalar kernel's result and bytes.
 *
 * Input: one control byte, then the frame.  Control bit 0 recomputes the
 * CRCs first, so that mutations get past the checksums into the tables and
 * the rANS decoders; the other bits pick the chunk for ggz_decode_chunk.
 * Seeds: ggzip_fuzz_seeds DIR (tests/fuzz_seeds.c). */
#include "frame_util.h"
#include "ggzip.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bounds the work of one input: a header may claim any size, and decoding
 * time follows the claim. */
#define OUT_CAP ((size_t)1 << 20)

static const char * kernels[8];
static int n_kernels;

static void init(void)
{
    for (int i = 0; i < ggz_kernel_count() && n_kernels < 8; i++) {
        int avail, enc;
        const char * name = ggz_kernel_info(i, &avail, &enc);
        if (avail) kernels[n_kernels++] = name; /* "scalar" is first */
    }
}

typedef struct { size_t decode, chunk, verify; } results;

static void run(const uint8_t * f, size_t size, size_t cap, uint32_t chunk, uint8_t * out, uint8_t * out_chunk,
                results * r)
{
    int64_t bad;
    r->decode = ggz_decode_tensor(out, cap, f, size, 1, &bad);
    r->chunk = ggz_decode_chunk(out_chunk, cap, f, size, chunk);
    /* verify has no output buffer to cap its work: only frames that fit */
    r->verify = cap ? ggz_verify_tensor(f, size, &bad) : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size)
{
    if (!n_kernels) init();
    if (size < 1) return 0;
    const uint8_t ctl = data[0];
    size -= 1;
    /* an exact-size copy: ASan sees any read past the frame */
    uint8_t * f = malloc(size ? size : 1);
    memcpy(f, data + 1, size);
    if (ctl & 1) fu_fix_crcs(f, size);

    ggz_frame_info fi;
    const size_t info = ggz_frame_info_get(f, size, &fi);
    if (!ggz_is_error(info) && (info > size || fi.frame_size != info)) abort();
    const size_t cap = !ggz_is_error(info) && fi.raw_size <= OUT_CAP ? (size_t)fi.raw_size : 0;
    const uint32_t chunk = !ggz_is_error(info) && fi.n_chunks ? (uint32_t)(ctl >> 1) % fi.n_chunks : 0;

    uint8_t * out[2] = { malloc(cap + 1), malloc(cap + 1) };
    uint8_t * out_chunk[2] = { malloc(cap + 1), malloc(cap + 1) };
    results ref;
    ggz_set_kernel(kernels[0]);
    run(f, size, cap, chunk, out[0], out_chunk[0], &ref);
    /* a success is the declared size; decode and verify agree */
    if (!ggz_is_error(ref.decode) && ref.decode != fi.raw_size) abort();
    if (cap && ggz_is_error(ref.decode) != ggz_is_error(ref.verify)) abort();
    if (!ggz_is_error(ref.chunk) && ref.chunk > cap) abort();
    for (int k = 1; k < n_kernels; k++) {
        results r;
        ggz_set_kernel(kernels[k]);
        run(f, size, cap, chunk, out[1], out_chunk[1], &r);
        if (r.decode != ref.decode || r.chunk != ref.chunk || r.verify != ref.verify) abort();
        if (!ggz_is_error(r.decode) && memcmp(out[0], out[1], r.decode)) abort();
        if (!ggz_is_error(r.chunk) && memcmp(out_chunk[0], out_chunk[1], r.chunk)) abort();
    }
    free(out[0]); free(out[1]); free(out_chunk[0]); free(out_chunk[1]);
    free(f);
    return 0;
}
