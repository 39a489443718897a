/* The rANS encoder, scalar: the one encoder (the SIMD kernels decode only).
 * rans_scalar.c explains the coder; this is C(s, x), run from the last symbol
 * to the first so that the decoder runs forwards. */
#include "internal.h"

size_t ggz_encode_scalar(const uint8_t * src, size_t n, size_t src_stride,
                         const ggz_etab * tabs, unsigned period, const uint8_t * sel,
                         uint8_t * dst, size_t dst_capacity)
{
    if (!n) return 0;
    if (dst_capacity < ggz_stream_bound(n)) return GGZ_ERROR(DST_TOO_SMALL);

    uint32_t x[GGZ_LANES];
    for (unsigned l = 0; l < GGZ_LANES; l++) x[l] = GGZ_RANS_L;

    /* words go backwards from the end of dst; w[-1] is always writable
     * because every symbol emits at most one word */
    uint8_t * const end = dst + dst_capacity;
    uint8_t * w = end;
    const size_t steps = n / GGZ_LANES;
    const unsigned tail = (unsigned)(n % GGZ_LANES);
    const unsigned pmask = period - 1;

    for (size_t k = steps + (tail ? 1 : 0); k-- > 0;) {
        const uint8_t * in = src + k * src_stride;
        const unsigned lanes = (k == steps) ? tail : GGZ_LANES;
        for (unsigned l = lanes; l-- > 0;) {
            const ggz_esym * e = &tabs->sym[sel ? sel[k * GGZ_LANES + l] : (l & pmask)][in[l]];
            uint32_t v = x[l];
            /* renormalise: emit the low 16 bits while v >= f << 20 (at most once) */
            const uint32_t out = v >= e->xmax;
            ggz_wr16(w - 2, (uint16_t)v);
            w -= 2 * out;
            v >>= 16 * out;
            /* x' = C(s, x) = x + c + (x / f) * (M - f); __extension__: __int128 is
             * GCC's and Clang's, which -Wpedantic (llama.cpp's builds) would flag */
            const uint64_t q = __extension__ (uint64_t)(((unsigned __int128)((uint64_t)v + 1) * e->rcp) >> 64);
            x[l] = v + e->cum + (uint32_t)q * e->cmpl;
        }
    }

    const size_t words = (size_t)(end - w);
    memmove(dst + GGZ_STATE_BYTES, w, words);
    for (unsigned l = 0; l < GGZ_LANES; l++) ggz_wr32(dst + 4 * l, x[l]);
    return GGZ_STATE_BYTES + words;
}
