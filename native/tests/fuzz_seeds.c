/* Writes the fuzzer's seed corpus into DIR: small valid frames of every
 * layout, each with and without the "fix the CRCs" control byte of
 * fuzz_decode.c.   ggzip_fuzz_seeds DIR */
#include "frame_util.h"
#include "ggzip.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int write_seed(const char * dir, const char * name, uint8_t ctl, const uint8_t * f, size_t n)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s-%u", dir, name, ctl);
    FILE * out = fopen(path, "wb");
    if (!out) { perror(path); return 1; }
    const int bad = fwrite(&ctl, 1, 1, out) != 1 || fwrite(f, 1, n, out) != n;
    return fclose(out) || bad;
}

int main(int argc, char ** argv)
{
    if (argc != 2) { fprintf(stderr, "usage: %s DIR\n", argv[0]); return 2; }
    /* two chunks at most, so that rANS pays for its states and the
     * streams are rANS coded, not stored raw */
    static const struct { const char * name; int layout; size_t row, n, chunk; int trellis, rows; } seeds[] = {
        { "bytes",      GGZ_LAYOUT_BYTES,   1,      3000, 2000 },
        { "bytes-tail", GGZ_LAYOUT_BYTES,   1,      1000, 0 },
        { "q8_0",       GGZ_LAYOUT_Q8_0,    4 * 34, 3264, 1632 },
        { "q8_0-trellis", GGZ_LAYOUT_Q8_0,  4 * 34, 3264, 1632, 1 },
        /* scales by row steps (version 3): enough blocks for rANS to pay */
        { "q8_0-rows",  GGZ_LAYOUT_Q8_0,    16 * 34, 40 * 16 * 34, 0, 1, 1 },
        { "plane16",    GGZ_LAYOUT_PLANE16, 2,      3000, 2000 },
        { "plane32",    GGZ_LAYOUT_PLANE32, 4,      3000, 2000 },
    };
    uint32_t s = 12345;
    int err = 0;
    for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
        uint8_t raw[40 * 16 * 34];
        /* about 2 bits per byte */
        for (size_t j = 0; j < seeds[i].n; j++) {
            s = s * 1103515245u + 12345u;
            raw[j] = (uint8_t)((s >> 16) % 3 + ((s >> 24) % 8 == 0) * (s >> 28));
        }
        if (seeds[i].rows)   /* one step a row, but every 50th block */
            for (size_t b = 0; b < seeds[i].n / 34; b++) {
                const uint16_t d = (uint16_t)(0x1C00 + (b / 16) % 3 + (b % 50 == 7) * 0x40);
                memcpy(raw + 34 * b, &d, 2);
            }
        const ggz_params p = { seeds[i].layout, seeds[i].row, seeds[i].chunk, 1, seeds[i].trellis };
        static uint8_t f[65536];
        const size_t n = ggz_encode_tensor(f, sizeof(f), raw, seeds[i].n, &p);
        if (ggz_is_error(n)) { fprintf(stderr, "%s: %s\n", seeds[i].name, ggz_error_name(n)); return 1; }
        /* a stored stream would leave the rANS decoders unfuzzed */
        fu_frame fr;
        if (fu_walk(f, n, &fr) || fr.mode[0] != 1) { fprintf(stderr, "%s: stream 0 not rANS coded\n", seeds[i].name); return 1; }
        if (seeds[i].rows && fr.mode[1] != 2) { fprintf(stderr, "%s: scales not by row steps\n", seeds[i].name); return 1; }
        err |= write_seed(argv[1], seeds[i].name, 0, f, n) | write_seed(argv[1], seeds[i].name, 1, f, n);
    }
    return err;
}
