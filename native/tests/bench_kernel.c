/* Decode-loop prototype bench (x86, AVX2): the Q8_0 symbol streams of a real
 * frame decoded on one core by the library's kernel and by variants of its
 * loop defined here, all interleaved in every run so that a noisy shared host
 * hits them alike.  Time is the thread's CPU time; MB/s are of Q8_0 bytes (34
 * per 32 symbols); every exact variant's output and CRC are checked.
 *
 *   cmake -S native -B /tmp/kb/build -DCMAKE_BUILD_TYPE=Release -DGGZIP_BUILD_TESTS=ON
 *   cmake --build /tmp/kb/build --target ggzip_bench_kernel
 *   taskset -c 1 /tmp/kb/build/ggzip_bench_kernel FRAME RAW [runs] [scratch]
 *
 * FRAME: a Q8_0 frame, e.g. ggzip.codec.encode(raw, layout="q8_0", row_size=...)
 * of SmolLM2's token_embd.weight; RAW: the tensor's bytes.  "scratch" decodes
 * every chunk into one buffer, as a thread decoding kept tensors does; the
 * library row is then ggz_reader_decode_pair (symbols, scales, CRC; pairs of chunks), else
 * ggz_decode_tensor on one thread.  The 64-lane streams are the same symbols
 * re-encoded here by a 64-lane copy of the encoder (+0.04% bytes).
 *
 * Measured on AMD EPYC (Zen 3, AVX2, no AVX-512, 2 shared vCPUs, load 5-6),
 * 30.1 MB token_embd, scratch, median of 21 runs (MB/s):
 *   v32, the loop of rans_x86.h            1725   library kernel 1698, reader 1533
 *   v32 without the CRC in the loop        1757   (+2..4% over runs)
 *   vpgatherdd lookups                     1454   indices via the stack 1598,
 *   entries joined in int registers        1554   prefix-count permute 1395,
 *   xor+cmpgt renorm test                  1730   v32 phase by phase 1706
 *   scalar lanes 24-31 beside 3 ymm (earlier build of this bench)  874
 *   ceilings: no lookup 4894, no word permute 2377
 *   v64 (64 lanes, group by group)         1693
 *   v64 phase by phase                     2010   lookups first 2023 (+17%),
 *                                                 without CRC 2073
 *   two 32-lane chunks phase by phase      1913   (+11%, no format change)
 *   two 64-lane chunks (spills)            1835
 *   v64 lookups first, other lookups (another run, where it made 1880):
 *   entries joined in int registers 1439, indices via the stack 1563,
 *   vpgatherdd 1494
 * Reading: the table lookup is 2/3 of the time (the no-lookup ceiling is
 * 2.8x); four groups of 8 lanes are a latency chain the out-of-order window
 * cannot overlap further, and eight groups only help when the step is written
 * phase by phase (all lookups, then the products and renormalisations), so
 * that the window holds every group at once.  Nothing within the 32-lane
 * format beat the current loop here. */
#include "frame.h"

#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* ---- a copy of the encoder for any lane count (rans_encode.c) ----------- */
static size_t encode_lanes(const uint8_t * src, size_t n, unsigned lanes, const ggz_esym * es,
                           uint8_t * dst, size_t cap)
{
    uint32_t x[64];
    for (unsigned l = 0; l < lanes; l++) x[l] = GGZ_RANS_L;
    uint8_t * const end = dst + cap;
    uint8_t * w = end;
    const size_t steps = n / lanes;
    const unsigned tail = (unsigned)(n % lanes);
    for (size_t k = steps + (tail ? 1 : 0); k-- > 0;) {
        const uint8_t * in = src + k * lanes;
        for (unsigned l = (k == steps) ? tail : lanes; l-- > 0;) {
            const ggz_esym * e = &es[in[l]];
            uint32_t v = x[l];
            const uint32_t out = v >= e->xmax;
            ggz_wr16(w - 2, (uint16_t)v);
            w -= 2 * out;
            v >>= 16 * out;
            const uint64_t q = __extension__ (uint64_t)(((unsigned __int128)((uint64_t)v + 1) * e->rcp) >> 64);
            x[l] = v + e->cum + (uint32_t)q * e->cmpl;
        }
    }
    const size_t words = (size_t)(end - w);
    memmove(dst + lanes * 4, w, words);
    for (unsigned l = 0; l < lanes; l++) ggz_wr32(dst + 4 * l, x[l]);
    return lanes * 4 + words;
}

/* ---- the loop, parametrised ------------------------------------------------ */
static uint32_t expand_lut[256][8];

GGZ_INLINE __m256i lookup_scalar(const uint32_t * tab, __m256i idx)
{
    const __m128i lo = _mm256_castsi256_si128(idx), hi = _mm256_extracti128_si256(idx, 1);
    const uint64_t a = (uint64_t)_mm_cvtsi128_si64(lo), b = (uint64_t)_mm_extract_epi64(lo, 1);
    const uint64_t c = (uint64_t)_mm_cvtsi128_si64(hi), d = (uint64_t)_mm_extract_epi64(hi, 1);
    return _mm256_setr_epi32((int)tab[(uint32_t)a], (int)tab[a >> 32], (int)tab[(uint32_t)b], (int)tab[b >> 32],
                             (int)tab[(uint32_t)c], (int)tab[c >> 32], (int)tab[(uint32_t)d], (int)tab[d >> 32]);
}

/* lookups: LK_EXTRACT indices out by vmovq/vpextrq (rans_x86.h), LK_GATHER
 * vpgatherdd, LK_STORE indices through a store to the stack and 8 scalar
 * loads, LK_COMP64 entries joined in integer registers, LK_NONE no lookup at
 * all (wrong output: a ceiling), LK_GIVEN entries looked up by the caller */
enum { LK_EXTRACT, LK_GATHER, LK_STORE, LK_COMP64, LK_NONE, LK_GIVEN };
/* renormalisation and order: RN_LUT movemask -> permutation from a table
 * (rans_x86.h), RN_CMPGT the same with the test by xor + cmpgt, RN_PREFIX the
 * permutation by an in-register prefix count, RN_NONE words not moved into
 * place (wrong output: a ceiling); RN_PHASED the step phase by phase over all
 * groups (all lookups, all products, all renormalisations) instead of group
 * by group, RN_LATE all lookups first, then each group to its end */
enum { RN_NONE, RN_LUT, RN_CMPGT, RN_PREFIX, RN_PHASED, RN_LATE };

/* entries joined two by two in integer registers (shift, or), then into the
 * vector with vmovq/vpinsrq: half the vector inserts of setr_epi32 */
GGZ_INLINE __m128i pair2(const uint32_t * tab, uint64_t a, uint64_t b)
{
    const uint64_t lo = tab[(uint32_t)a] | (uint64_t)tab[a >> 32] << 32;
    const uint64_t hi = tab[(uint32_t)b] | (uint64_t)tab[b >> 32] << 32;
    return _mm_insert_epi64(_mm_cvtsi64_si128((long long)lo), (long long)hi, 1);
}

GGZ_INLINE __m256i lookup_comp64(const uint32_t * tab, __m256i idx)
{
    const __m128i lo = _mm256_castsi256_si128(idx), hi = _mm256_extracti128_si256(idx, 1);
    const uint64_t a = (uint64_t)_mm_cvtsi128_si64(lo), b = (uint64_t)_mm_extract_epi64(lo, 1);
    const uint64_t c = (uint64_t)_mm_cvtsi128_si64(hi), d = (uint64_t)_mm_extract_epi64(hi, 1);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(pair2(tab, a, b)), pair2(tab, c, d), 1);
}

GGZ_INLINE __m256i lookup_store(const uint32_t * tab, __m256i idx)
{
    uint32_t i[8];
    _mm256_storeu_si256((__m256i *)i, idx);
    return _mm256_setr_epi32((int)tab[i[0]], (int)tab[i[1]], (int)tab[i[2]], (int)tab[i[3]],
                             (int)tab[i[4]], (int)tab[i[5]], (int)tab[i[6]], (int)tab[i[7]]);
}

GGZ_INLINE __m256i step8(__m256i x, const uint32_t * tab, int lk, int renorm, __m256i * sym, const uint8_t ** pp,
                         __m256i given)
{
    const __m256i mask = _mm256_set1_epi32(GGZ_PROB_MASK);
    const __m256i idx = _mm256_and_si256(x, mask);
    const __m256i e = lk == LK_GATHER ? _mm256_i32gather_epi32((const int *)tab, idx, 4)
                    : lk == LK_STORE ? lookup_store(tab, idx)
                    : lk == LK_COMP64 ? lookup_comp64(tab, idx)
                    : lk == LK_GIVEN ? given
                    : lk == LK_NONE ? _mm256_or_si256(idx, _mm256_set1_epi32(0x00100000))
                    : lookup_scalar(tab, idx);
    *sym = e;
    x = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_srli_epi32(e, 20), _mm256_srli_epi32(x, GGZ_PROB_BITS)),
                         _mm256_and_si256(_mm256_srli_epi32(e, 8), mask));
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)*pp));
    const __m256i low = renorm == RN_CMPGT
        ? _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(0x80000000u + GGZ_RANS_L)), _mm256_xor_si256(x, _mm256_set1_epi32((int)0x80000000u)))
        : _mm256_cmpeq_epi32(_mm256_srli_epi32(x, 16), _mm256_setzero_si256());
    if (renorm == RN_NONE) /* ceiling: the words not moved into place (wrong output) */
        return _mm256_blendv_epi8(x, _mm256_or_si256(_mm256_slli_epi32(x, 16), w), low);
    const unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(low));
    __m256i perm;
    if (renorm == RN_PREFIX) {
        /* the k-th word to the k-th renormalising lane by an in-register
         * prefix count of the lanes, off the movemask -> LUT load path */
        const __m256i c = _mm256_sub_epi32(_mm256_setzero_si256(), low);
        __m256i s1 = _mm256_add_epi32(c, _mm256_slli_si256(c, 4));
        s1 = _mm256_add_epi32(s1, _mm256_slli_si256(s1, 8));
        const __m256i carry = _mm256_shuffle_epi32(_mm256_permute2x128_si256(s1, s1, 0x08), 0xFF);
        perm = _mm256_add_epi32(_mm256_add_epi32(s1, carry), _mm256_set1_epi32(-1));
    } else {
        perm = _mm256_loadu_si256((const __m256i *)expand_lut[m]);
    }
    const __m256i wl = _mm256_permutevar8x32_epi32(w, perm);
    x = _mm256_blendv_epi8(x, _mm256_or_si256(_mm256_slli_epi32(x, 16), wl), low);
    *pp += 2 * (size_t)_mm_popcnt_u32(m);
    return x;
}

/* One step of ns streams of G groups, RN_PHASED or RN_LATE: the out-of-order
 * window then holds the same phase of every group, not two or three groups'
 * whole chains. */
GGZ_INLINE void step_phased(__m256i * x, unsigned ns, unsigned G, const uint32_t * tab, int lk, int late, __m256i * e,
                            const uint8_t ** pp)
{
    const __m256i mask = _mm256_set1_epi32(GGZ_PROB_MASK);
    _Pragma("GCC unroll 16")
    for (unsigned g = 0; g < ns * G; g++) {
        const __m256i idx = _mm256_and_si256(x[g], mask);
        e[g] = lk == LK_GATHER ? _mm256_i32gather_epi32((const int *)tab, idx, 4)
             : lk == LK_STORE ? lookup_store(tab, idx)
             : lk == LK_COMP64 ? lookup_comp64(tab, idx)
             : lookup_scalar(tab, idx);
    }
    if (late) { /* then each group on to its end, in order */
        _Pragma("GCC unroll 16")
        for (unsigned i = 0; i < ns; i++)
            _Pragma("GCC unroll 16")
            for (unsigned g = i * G; g < (i + 1) * G; g++) {
                __m256i ee;
                x[g] = step8(x[g], NULL, LK_GIVEN, RN_LUT, &ee, &pp[i], e[g]);
            }
        return;
    }
    __m256i low[16];
    unsigned m[16];
    _Pragma("GCC unroll 16")
    for (unsigned g = 0; g < ns * G; g++) {
        x[g] = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_srli_epi32(e[g], 20), _mm256_srli_epi32(x[g], GGZ_PROB_BITS)),
                                _mm256_and_si256(_mm256_srli_epi32(e[g], 8), mask));
        low[g] = _mm256_cmpeq_epi32(_mm256_srli_epi32(x[g], 16), _mm256_setzero_si256());
        m[g] = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(low[g]));
    }
    _Pragma("GCC unroll 16")
    for (unsigned i = 0; i < ns; i++) {
        const uint8_t * p = pp[i];
        _Pragma("GCC unroll 16")
        for (unsigned g = i * G; g < (i + 1) * G; g++) {
            const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
            const __m256i wl = _mm256_permutevar8x32_epi32(w, _mm256_loadu_si256((const __m256i *)expand_lut[m[g]]));
            x[g] = _mm256_blendv_epi8(x[g], _mm256_or_si256(_mm256_slli_epi32(x[g], 16), wl), low[g]);
            p += 2 * (size_t)_mm_popcnt_u32(m[g]);
        }
        pp[i] = p;
    }
}

GGZ_INLINE __m256i symbols32(__m256i e0, __m256i e1, __m256i e2, __m256i e3)
{
    const __m256i low8 = _mm256_set1_epi32(0xFF);
    const __m256i a = _mm256_packus_epi32(_mm256_and_si256(e0, low8), _mm256_and_si256(e1, low8));
    const __m256i b = _mm256_packus_epi32(_mm256_and_si256(e2, low8), _mm256_and_si256(e3, low8));
    return _mm256_permutevar8x32_epi32(_mm256_packus_epi16(a, b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* One pass over ns streams (1 or 2) of 8 * G lanes each, side by side, while
 * all have whole steps and 4 * lanes bytes left; then each alone, scalar.
 * Symbols of step k, lane l go to dst + (k * G/4 + l / 32) * 34 + l % 32. */
typedef struct {
    const uint8_t * src; size_t size; uint8_t * dst; size_t n;
    uint32_t crc, want;    /* the stream's CRC32C as the loop took it, and as it is */
} bstream;

GGZ_INLINE int run(bstream * s, const unsigned ns, const unsigned G, const int crc_on, const int lk, const int renorm,
                   const uint32_t * tab)
{
    const unsigned lanes = 8 * G;
    __m256i x[16];
    const uint8_t * p[4], * q[4], * end[4];
    uint64_t c[4];
    size_t steps = (size_t)-1;
    _Pragma("GCC unroll 16")
    for (unsigned i = 0; i < ns; i++) {
        _Pragma("GCC unroll 16")
        for (unsigned g = 0; g < G; g++) x[i * G + g] = _mm256_loadu_si256((const __m256i *)(s[i].src + 32 * g));
        p[i] = s[i].src + 4 * lanes; q[i] = s[i].src; end[i] = s[i].src + s[i].size; c[i] = ~0ull;
        if (s[i].n / lanes < steps) steps = s[i].n / lanes;
    }
    size_t k = 0;
    for (; k < steps; k++) {
        int ok = 1;
        _Pragma("GCC unroll 16")
        for (unsigned i = 0; i < ns; i++) ok &= end[i] - p[i] >= 2 * (ptrdiff_t)lanes;
        if (!ok) break;
        if (renorm == RN_PHASED || renorm == RN_LATE) {
            __m256i e[16];
            _Pragma("GCC unroll 16")
            for (unsigned i = 0; i < ns; i++)
                if (crc_on) for (unsigned r = 0; r < G / 4; r++) ggz_crc_step32(&c[i], &q[i], end[i]);
            step_phased(x, ns, G, tab, lk, renorm == RN_LATE, e, p);
            _Pragma("GCC unroll 16")
            for (unsigned i = 0; i < ns; i++)
                _Pragma("GCC unroll 16")
                for (unsigned b = 0; b < G / 4; b++)
                    _mm256_storeu_si256((__m256i *)(s[i].dst + (k * (G / 4) + b) * Q8_0_BLOCK),
                                        symbols32(e[i * G + 4 * b], e[i * G + 4 * b + 1], e[i * G + 4 * b + 2], e[i * G + 4 * b + 3]));
            continue;
        }
        _Pragma("GCC unroll 16")
        for (unsigned i = 0; i < ns; i++) {
            if (crc_on) for (unsigned r = 0; r < G / 4; r++) ggz_crc_step32(&c[i], &q[i], end[i]);
            __m256i e[8];
            _Pragma("GCC unroll 16")
            for (unsigned g = 0; g < G; g++) x[i * G + g] = step8(x[i * G + g], tab, lk, renorm, &e[g], &p[i], _mm256_setzero_si256());
            _Pragma("GCC unroll 16")
            for (unsigned b = 0; b < G / 4; b++)
                _mm256_storeu_si256((__m256i *)(s[i].dst + (k * (G / 4) + b) * Q8_0_BLOCK),
                                    symbols32(e[4 * b], e[4 * b + 1], e[4 * b + 2], e[4 * b + 3]));
        }
    }
    int bad = 0;
    _Pragma("GCC unroll 16")
    for (unsigned i = 0; i < ns; i++) {
        uint32_t xs[64];
        _Pragma("GCC unroll 16")
        for (unsigned g = 0; g < G; g++) _mm256_storeu_si256((__m256i *)(xs + 8 * g), x[i * G + g]);
        const uint8_t * pp = p[i];
        for (size_t kk = k; kk < s[i].n / lanes + (s[i].n % lanes != 0); kk++) {
            const unsigned nl = kk < s[i].n / lanes ? lanes : (unsigned)(s[i].n % lanes);
            for (unsigned l = 0; l < nl; l++) {
                const uint32_t e = tab[xs[l] & GGZ_PROB_MASK];
                s[i].dst[(kk * (G / 4) + l / 32) * Q8_0_BLOCK + l % 32] = (uint8_t)e;
                uint32_t v = (e >> 20) * (xs[l] >> GGZ_PROB_BITS) + ((e >> 8) & GGZ_PROB_MASK);
                if (v < GGZ_RANS_L) {
                    if (end[i] - pp < 2) return 1;
                    v = (v << 16) | ggz_rd16(pp);
                    pp += 2;
                }
                xs[l] = v;
            }
        }
        for (unsigned l = 0; l < lanes; l++) bad |= xs[l] != GGZ_RANS_L;
        bad |= pp != end[i];
        s[i].crc = crc_on ? ggz_crc32c(~(uint32_t)c[i], q[i], (size_t)(end[i] - q[i])) : 0;
    }
    return bad;
}

/* ---- the bench ---------------------------------------------------------- */
typedef struct { const char * name; unsigned ns, G; int crc, lk, renorm, exact; } variant;

static const variant variants[] = {
    { "v32: the loop of rans_x86.h",                 1, 4, 1, LK_EXTRACT, RN_LUT,    1 },
    { "v32 without CRC",                             1, 4, 0, LK_EXTRACT, RN_LUT,    1 },
    { "v32 vpgatherdd lookups",                      1, 4, 1, LK_GATHER,  RN_LUT,    1 },
    { "v32 indices through the stack",               1, 4, 1, LK_STORE,   RN_LUT,    1 },
    { "v32 entries joined in int regs",              1, 4, 1, LK_COMP64,  RN_LUT,    1 },
    { "v32 renorm test by xor+cmpgt",                1, 4, 1, LK_EXTRACT, RN_CMPGT,  1 },
    { "v32 word permute by prefix count",            1, 4, 1, LK_EXTRACT, RN_PREFIX, 1 },
    { "v32 phased",                                  1, 4, 1, LK_EXTRACT, RN_PHASED, 1 },
    { "v32 no lookup (ceiling, wrong output)",       1, 4, 1, LK_NONE,    RN_LUT,    0 },
    { "v32 no word permute (ceiling, wrong output)", 1, 4, 1, LK_EXTRACT, RN_NONE,   0 },
    { "v64: 64 lanes, 8 ymm [format change]",        1, 8, 1, LK_EXTRACT, RN_LUT,    1 },
    { "v64 phased [format change]",                  1, 8, 1, LK_EXTRACT, RN_PHASED, 1 },
    { "v64 lookups first [format change]",           1, 8, 1, LK_EXTRACT, RN_LATE,   1 },
    { "v64 lookups first, without CRC",              1, 8, 0, LK_EXTRACT, RN_LATE,   1 },
    { "v64 lookups first, entries joined in int regs", 1, 8, 1, LK_COMP64, RN_LATE,   1 },
    { "v64 lookups first, indices via the stack",    1, 8, 1, LK_STORE,   RN_LATE,   1 },
    { "v64 lookups first, vpgatherdd",               1, 8, 1, LK_GATHER,  RN_LATE,   1 },
    { "pair: two 32-lane chunks side by side",       2, 4, 1, LK_EXTRACT, RN_LUT,    1 },
    { "pair phased",                                 2, 4, 1, LK_EXTRACT, RN_PHASED, 1 },
    { "pair of v64 phased (128 lanes)",              2, 8, 1, LK_EXTRACT, RN_PHASED, 1 },
    { "three 32-lane chunks phased",                 3, 4, 1, LK_EXTRACT, RN_PHASED, 1 },
    { "four 32-lane chunks phased",                  4, 4, 1, LK_EXTRACT, RN_PHASED, 1 },
};
#define V_COUNT ((int)(sizeof variants / sizeof variants[0]) + 2)  /* + the library's kernel, whole frame */

/* every variant a function of its own, its parameters constants there */
#define VARIANT_FN(i) static int var##i(bstream * s, const uint32_t * tab) { \
    return run(s, variants[i].ns, variants[i].G, variants[i].crc, variants[i].lk, variants[i].renorm, tab); }
VARIANT_FN(0) VARIANT_FN(1) VARIANT_FN(2) VARIANT_FN(3) VARIANT_FN(4) VARIANT_FN(5) VARIANT_FN(6) VARIANT_FN(7)
VARIANT_FN(8) VARIANT_FN(9) VARIANT_FN(10) VARIANT_FN(11) VARIANT_FN(12) VARIANT_FN(13) VARIANT_FN(14) VARIANT_FN(15) VARIANT_FN(16) VARIANT_FN(17) VARIANT_FN(18) VARIANT_FN(19) VARIANT_FN(20) VARIANT_FN(21)
#define V_SINGLE32 0   /* what decodes the chunks left over by the pairs */
#define V_SINGLE64 12
static int (* const var_fn[])(bstream *, const uint32_t *) = { var0, var1, var2, var3, var4, var5, var6, var7, var8, var9, var10,
                                                              var11, var12, var13, var14, var15, var16, var17, var18, var19, var20, var21 };

static int scratch; /* every chunk into the same buffer */

static const char * vname(int v)
{
    return v == V_COUNT - 1 ? "library kernel in use, symbols only (pairs)"
         : v == V_COUNT - 2 ? (scratch ? "ggz_reader_decode_pair, whole chunks" : "ggz_decode_tensor, 1 thread")
         : variants[v].name;
}

static uint8_t * slurp(const char * path, size_t * size)
{
    FILE * f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t * b = malloc(*size + 64);
    if (fread(b, 1, *size, f) != *size) { perror(path); exit(1); }
    fclose(f);
    return b;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void * a, const void * b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char ** argv)
{
    if (argc < 3) { fprintf(stderr, "usage: %s FRAME RAW [runs]\n", argv[0]); return 2; }
    const int runs = argc > 3 && atoi(argv[3]) > 0 ? (atoi(argv[3]) < 256 ? atoi(argv[3]) : 255) : 11;
    scratch = argc > 4 && !strcmp(argv[4], "scratch");
    size_t fsize, rsize;
    const uint8_t * frame = slurp(argv[1], &fsize);
    const uint8_t * raw = slurp(argv[2], &rsize);
    frame_hdr h;
    if (ggz_is_error(ggz_frame_parse(&h, frame, fsize)) || h.layout != GGZ_LAYOUT_Q8_0 || h.raw_size != rsize
        || h.mode[0] != MODE_RANS) {
        fprintf(stderr, "%s: not a rANS-coded Q8_0 frame of %s\n", argv[1], argv[2]);
        return 1;
    }
    for (unsigned m = 0; m < 256; m++) {
        unsigned k = 0;
        for (unsigned l = 0; l < 8; l++) expand_lut[m][l] = (m >> l & 1) ? k++ : 0;
    }
    dtabs d;
    ggz_dtabs_build(&d, &h);
    const uint32_t * tab = d.dt[0]->slot[0];
    static ggz_etab et;
    ggz_etab_build(et.sym[0], &h.freqs[0][0], GGZ_PROB_BITS);

    /* the chunks' symbol streams: as in the frame (32 lanes) and re-encoded with 64 */
    const uint32_t nc = h.n_chunks;
    bstream * s32 = calloc(nc, sizeof *s32), * s64 = calloc(nc, sizeof *s64);
    uint8_t * out = aligned_alloc(64, (rsize + 63) / 64 * 64 + 128);
    uint8_t * want = malloc(rsize);
    size_t off = h.data_offset, nsym = 0;
    for (uint32_t j = 0; j < nc; j++) {
        const uint8_t * e = h.index + (size_t)j * h.index_entry;
        const uint64_t rawj = chunk_raw_len(&h, j), start = (uint64_t)j * h.chunk_raw;
        const size_t n = (size_t)stream_symbols(h.layout, 0, rawj);
        /* scratch: every chunk into the same buffer, as a thread decoding kept tensors does */
        uint8_t * const o = (scratch ? out : out + start) + 2;
        s32[j] = (bstream){ frame + off, ggz_rd32(e), o, n, 0, ggz_crc32c(0, frame + off, ggz_rd32(e)) };
        uint8_t * sym = malloc(n);
        for (size_t b = 0; b < n / 32; b++) memcpy(sym + 32 * b, raw + start + b * 34 + 2, 32);
        uint8_t * buf = malloc(ggz_stream_bound(n) + 256);
        const size_t len32 = encode_lanes(sym, n, 32, et.sym[0], buf, ggz_stream_bound(n) + 256);
        if (len32 != s32[j].size || memcmp(buf, s32[j].src, len32)) { fprintf(stderr, "encoder copy differs\n"); return 1; }
        const size_t len64 = encode_lanes(sym, n, 64, et.sym[0], buf, ggz_stream_bound(n) + 256);
        s64[j] = (bstream){ buf, len64, o, n, 0, ggz_crc32c(0, buf, len64) };
        for (uint32_t t = 0; t < h.n_streams; t++) off += ggz_rd32(e + 4 * t);
        nsym += n;
        free(sym);
    }
    memcpy(want, raw, rsize);
    const double mbytes = (double)nsym / 32 * 34 / 1e6;
    printf("%s: %u chunks, %.1f MB of Q8_0; kernel in use %s\n", argv[1], nc, mbytes, ggz_kernel_name());
    {
        size_t b32 = 0, b64 = 0;
        for (uint32_t j = 0; j < nc; j++) { b32 += s32[j].size; b64 += s64[j].size; }
        printf("symbol stream bytes: 32 lanes %zu, 64 lanes %zu (+%zd)\n", b32, b64, (ptrdiff_t)(b64 - b32));
    }

    ggz_reader * rd = NULL;
    if (ggz_is_error(ggz_reader_open(&rd, frame, fsize))) { fprintf(stderr, "%s: ggz_reader_open failed\n", argv[1]); return 1; }
    void * rscratch = malloc(2 * ggz_reader_scratch_size(rd));
    double * t = calloc((size_t)runs * V_COUNT, sizeof *t);
    for (int r = 0; r < runs; r++) {
        for (int v = 0; v < V_COUNT; v++) {
            memset(out, 0, rsize);
            for (size_t i = 0; i < rsize; i += 34) memcpy(out + i, raw + i, 2); /* scales: not decoded here */
            int bad = 0;
            const double t0 = now();
            if (v == V_COUNT - 2 && scratch) {
                /* pairs of chunks into the scratch, as the kept tensors are decoded (patch 0008) */
                uint32_t j = 0;
                for (; j + 2 <= nc; j += 2) {
                    void * dst[2] = { out, out + rsize / 2 };
                    void * scr[2] = { rscratch, (uint8_t *)rscratch + ggz_reader_scratch_size(rd) };
                    bad |= ggz_is_error(ggz_reader_decode_pair(rd, j, dst, rsize / 2, scr, NULL));
                }
                for (; j < nc; j++) bad |= ggz_is_error(ggz_reader_decode_chunk(rd, j, out, rsize, rscratch));
            } else if (v == V_COUNT - 2) {
                /* the whole frame (scales too, CRCs, one thread): MB/s against the symbols' bytes, like the rest */
                bad |= ggz_is_error(ggz_decode_tensor(out, rsize, frame, fsize, 1, NULL));
            } else if (v == V_COUNT - 1) {
                /* in pairs where the kernel decodes two streams side by side, as the library does */
                uint32_t j = 0;
                if (ggz_decoder()->decode2)
                    for (; j + 2 <= nc; j += 2) {
                        ggz_stream st[2];
                        uint32_t crc[2] = { 0, 0 };
                        int err[2];
                        for (int i = 0; i < 2; i++)
                            st[i] = (ggz_stream){ s32[j + i].src, s32[j + i].size, s32[j + i].dst, s32[j + i].n,
                                                  Q8_0_BLOCK, d.dt[0], 1 };
                        ggz_decoder()->decode2(st, crc, err, 0);
                        bad |= err[0] | err[1];
                    }
                for (; j < nc; j++) {
                    uint32_t crc = 0;
                    bad |= ggz_decoder()->decode(s32[j].src, s32[j].size, s32[j].dst, s32[j].n, Q8_0_BLOCK, d.dt[0], 1, &crc);
                }
            } else {
                const variant * vv = &variants[v];
                bstream * S = vv->G == 8 ? s64 : s32;
                uint32_t j = 0;
                for (; j + vv->ns <= nc; j += vv->ns) bad |= var_fn[v](&S[j], tab) && vv->exact;
                for (; j < nc; j++) bad |= var_fn[vv->G == 8 ? V_SINGLE64 : V_SINGLE32](&S[j], tab);
            }
            t[r * V_COUNT + v] = now() - t0;
            if (v < V_COUNT - 2 && !variants[v].exact) continue;
            if (v < V_COUNT - 2 && variants[v].crc) {
                const bstream * S = variants[v].G == 8 ? s64 : s32;
                for (uint32_t j = 0; j < nc; j++) bad |= S[j].crc != S[j].want;
            }
            if (bad || (!scratch && memcmp(out, want, rsize))) { fprintf(stderr, "variant %s: wrong output\n", vname(v)); return 1; }
        }
    }
    for (int v = 0; v < V_COUNT; v++) {
        double col[256];
        for (int r = 0; r < runs; r++) col[r] = mbytes / t[r * V_COUNT + v];
        qsort(col, (size_t)runs, sizeof(double), cmp_double);
        printf("%-46s median %7.1f MB/s  (min %7.1f max %7.1f)\n", vname(v), col[runs / 2], col[0], col[runs - 1]);
    }
    return 0;
}
