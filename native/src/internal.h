/* Internal declarations shared by the codec's source files (not installed). */
#ifndef GGZIP_INTERNAL_H
#define GGZIP_INTERNAL_H

#include "ggzip.h"

#include <string.h>

#define GGZ_PROB_SCALE  (1u << GGZ_PROB_BITS)
#define GGZ_PROB_MASK   (GGZ_PROB_SCALE - 1)
#define GGZ_MAX_PERIOD  4
/* an rANS stream starts with the 32 final encoder states */
#define GGZ_STATE_BYTES (GGZ_LANES * 4)

#define GGZ_ERROR(e) ((size_t) - (ptrdiff_t)(GGZ_ERR_##e))

#if defined(__GNUC__)
#  define GGZ_LIKELY(x)   __builtin_expect(!!(x), 1)
#  define GGZ_UNLIKELY(x) __builtin_expect(!!(x), 0)
#  define GGZ_INLINE      static inline __attribute__((always_inline))
#  define GGZ_NOINLINE    static __attribute__((noinline))
#else
#  define GGZ_LIKELY(x)   (x)
#  define GGZ_UNLIKELY(x) (x)
#  define GGZ_INLINE      static inline
#  define GGZ_NOINLINE    static
#endif

/* Little-endian loads and stores; memcpy keeps them legal on any alignment and
 * compiles to a single move on the targets we support (all little endian). */
GGZ_INLINE uint16_t ggz_rd16(const uint8_t * p) { uint16_t v; memcpy(&v, p, 2); return v; }
GGZ_INLINE uint32_t ggz_rd32(const uint8_t * p) { uint32_t v; memcpy(&v, p, 4); return v; }
GGZ_INLINE uint64_t ggz_rd64(const uint8_t * p) { uint64_t v; memcpy(&v, p, 8); return v; }
GGZ_INLINE void ggz_wr16(uint8_t * p, uint16_t v) { memcpy(p, &v, 2); }
GGZ_INLINE void ggz_wr32(uint8_t * p, uint32_t v) { memcpy(p, &v, 4); }
GGZ_INLINE void ggz_wr64(uint8_t * p, uint64_t v) { memcpy(p, &v, 8); }

/* ---- frequency tables (table.c) ----------------------------------------- */

/* Decode table: one packed uint32 per slot of [0, 4096):
 *   bits 0-7 symbol, bits 8-19 bias = slot - cum[s], bits 20-31 f[s] (1..4095)
 * so that one load gives x' = f * (x >> 12) + bias.  f never reaches 4096
 * (FORMAT.md), which is what lets it fit in 12 bits. */
typedef struct {
    uint32_t slot[GGZ_MAX_PERIOD][GGZ_PROB_SCALE];
} ggz_dtab;

/* Encode entry of one symbol: x' = x + cum + q * (4096 - f), q = x / f computed
 * as mulhi64(x + 1, rcp) with rcp = floor((2^64 - 1) / f).  That is exact for
 * every x < 2^32 and f in [1, 4096]: (x+1)*rcp/2^64 = q + (r+1)/f - d with
 * 0 < d < 2^-32 < 1/f, r = x mod f.  A state is renormalised first while
 * x >= xmax = f << 20, which keeps x' < 2^32. */
typedef struct {
    uint64_t rcp;
    uint32_t xmax;
    uint16_t cum;
    uint16_t cmpl;  /* 4096 - f */
} ggz_esym;

typedef struct {
    ggz_esym sym[GGZ_MAX_PERIOD][256];
} ggz_etab;

typedef struct {
    uint16_t f[256];
} ggz_freqs;

/* encoder's half (table_encode.c):
 * counts -> frequencies summing to 4096, each present symbol >= 1, max 4095 */
void   ggz_normalize(const uint64_t counts[256], ggz_freqs * out, unsigned prob_bits);
/* cost in bits of coding `counts` with `freqs` */
double ggz_cost_bits(const uint64_t counts[256], const ggz_freqs * freqs, unsigned prob_bits);
double ggz_entropy_bits(const uint64_t counts[256]);
size_t ggz_table_write(uint8_t * dst, size_t cap, const ggz_freqs * freqs);
void   ggz_etab_build(ggz_esym * syms, const ggz_freqs * freqs, unsigned prob_bits);
/* decoder's half (table.c): parse and validate; @return bytes read or an error code */
size_t ggz_table_read(const uint8_t * src, size_t size, ggz_freqs * freqs, unsigned prob_bits);
void   ggz_dtab_build(uint32_t * slots, const ggz_freqs * freqs);   /* slots: the sum of the frequencies */

/* CRC-32C by table, whatever the CPU (tests compare it with the hardware path) */
uint32_t ggz_crc32c_portable(uint32_t crc, const void * buf, size_t size);

/* frame.c: GGZ_TCQ_NEXT as an array, for the decoders and the encoder */
extern const uint8_t ggz_tcq_next[GGZ_TCQ_STATES][2];

/* ---- kernels ------------------------------------------------------------- */

/* Decode one rANS stream of n symbols.  Symbol i is written to
 * dst[(i / 32) * dst_stride + i % 32] (dst_stride >= 32: 32 for contiguous
 * bytes, 34 for the int8 part of Q8_0 blocks) using table (i % period) of
 * `tabs`, and *crc becomes ggz_crc32c(*crc, src, src_size) (undefined on
 * error): a kernel may take the checksum in its decode loop, where the bytes
 * are read anyway.  @return GGZ_OK or a ggz_error. */
typedef int (*ggz_decode_fn)(const uint8_t * src, size_t src_size,
                             uint8_t * dst, size_t n, size_t dst_stride,
                             const ggz_dtab * tabs, unsigned period, uint32_t * crc);

/* Encode n symbols read from src[(i / 32) * src_stride + i % 32] into dst,
 * which must hold ggz_stream_bound(n) bytes, symbol i with table sel[i]
 * (trellis classes) or, sel NULL, i mod period.  @return bytes written. */
typedef size_t (*ggz_encode_fn)(const uint8_t * src, size_t n, size_t src_stride,
                                const ggz_etab * tabs, unsigned period, const uint8_t * sel,
                                uint8_t * dst, size_t dst_capacity);

/* One rANS stream to decode (arguments of ggz_decode_fn). */
typedef struct {
    const uint8_t *  src;
    size_t           size;
    uint8_t *        dst;
    size_t           n;
    size_t           stride;
    const ggz_dtab * tabs;
    unsigned         period;
} ggz_stream;

/* Decode two streams with the same table (stream 0 of two chunks of one
 * frame: period 1, or trellis-coded when tcq) side by side: the same bytes as
 * ggz_decode_fn on each, faster where one stream cannot keep the core busy.
 * err[i] and crc[i] as the return value and *crc of ggz_decode_fn on s[i]. */
typedef void (*ggz_decode2_fn)(const ggz_stream * s, uint32_t * crc, int * err, int tcq);

static inline size_t ggz_stream_bound(size_t n) { return n ? GGZ_STATE_BYTES + 2 * n + 2 : 0; }

typedef struct {
    const char *  name;
    int           (*available)(void);
    ggz_decode_fn decode;
    ggz_decode_fn decode_tcq;   /* trellis-coded Q8_0 symbols; NULL: the scalar one */
    ggz_decode2_fn decode2;     /* two streams side by side; NULL: one after the other */
} ggz_kernel;

int    ggz_decode_scalar(const uint8_t *, size_t, uint8_t *, size_t, size_t, const ggz_dtab *, unsigned, uint32_t *);
size_t ggz_encode_scalar(const uint8_t *, size_t, size_t, const ggz_etab *, unsigned, const uint8_t *, uint8_t *, size_t); /* rans_encode.c */
/* the decoders of trellis-coded Q8_0 symbol streams (tables 0 and 1 by class) */
int    ggz_decode_tcq_scalar(const uint8_t *, size_t, uint8_t *, size_t, size_t, const ggz_dtab *, unsigned, uint32_t *);
/* whole steps of trellis-coded symbols with bounds checks (rans_scalar.c): lanes' states x,
 * trellis states st; @return 1 when the stream runs out, else 0 */
int    ggz_decode_tcq_lanes(uint32_t * x, uint8_t * st, const uint8_t ** pp, const uint8_t * end,
                            uint8_t * dst, size_t steps, size_t dst_stride, const ggz_dtab * tabs);
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
int    ggz_decode_avx2(const uint8_t *, size_t, uint8_t *, size_t, size_t, const ggz_dtab *, unsigned, uint32_t *);
int    ggz_decode_tcq_avx2(const uint8_t *, size_t, uint8_t *, size_t, size_t, const ggz_dtab *, unsigned, uint32_t *);
void   ggz_decode2_avx2(const ggz_stream *, uint32_t *, int *, int);
int    ggz_decode_avx512(const uint8_t *, size_t, uint8_t *, size_t, size_t, const ggz_dtab *, unsigned, uint32_t *);
int    ggz_decode_tcq_avx512(const uint8_t *, size_t, uint8_t *, size_t, size_t, const ggz_dtab *, unsigned, uint32_t *);
void   ggz_decode2_avx512(const ggz_stream *, uint32_t *, int *, int);
int    ggz_decode_avx512vbmi(const uint8_t *, size_t, uint8_t *, size_t, size_t, const ggz_dtab *, unsigned, uint32_t *);
int    ggz_decode_tcq_avx512vbmi(const uint8_t *, size_t, uint8_t *, size_t, size_t, const ggz_dtab *, unsigned, uint32_t *);
void   ggz_decode2_avx512vbmi(const ggz_stream *, uint32_t *, int *, int);
#define GGZ_HAVE_X86 1
#endif
#if defined(__aarch64__) || defined(_M_ARM64)
int    ggz_decode_neon(const uint8_t *, size_t, uint8_t *, size_t, size_t, const ggz_dtab *, unsigned, uint32_t *);
int    ggz_decode_tcq_neon(const uint8_t *, size_t, uint8_t *, size_t, size_t, const ggz_dtab *, unsigned, uint32_t *);
#define GGZ_HAVE_NEON 1
#endif

/* the decode kernel in use (dispatch.c); chosen once, thread-safe */
const ggz_kernel * ggz_decoder(void);

/* *x = v, renormalised from *pp with a bounds check; @return 1 when the
 * stream runs out, else 0 */
GGZ_INLINE int ggz_renorm_checked(uint32_t * x, uint32_t v, const uint8_t ** pp, const uint8_t * end)
{
    if (v < GGZ_RANS_L) {
        if (GGZ_UNLIKELY(end - *pp < 2)) return 1;
        v = (v << 16) | ggz_rd16(*pp);
        *pp += 2;
    }
    *x = v;
    return 0;
}

/* Shared scalar decode of one step of lanes [l0, l1) with bounds checks; used
 * by every kernel for the tail and for the last words of a stream.  Returns 0,
 * or 1 when the stream runs out. */
GGZ_INLINE int ggz_decode_lanes_checked(uint32_t * x, const uint8_t ** pp, const uint8_t * end,
                                        uint8_t * out, unsigned l0, unsigned l1,
                                        const ggz_dtab * tabs, unsigned period)
{
    for (unsigned l = l0; l < l1; l++) {
        const uint32_t e = tabs->slot[l & (period - 1)][x[l] & GGZ_PROB_MASK];
        out[l] = (uint8_t)e;
        if (ggz_renorm_checked(&x[l], (e >> 20) * (x[l] >> GGZ_PROB_BITS) + ((e >> 8) & GGZ_PROB_MASK), pp, end))
            return 1;
    }
    return 0;
}

#if defined(__SSE4_2__)
#include <nmmintrin.h>
/* The x86 decode loops take the stream's checksum as they go, 32 bytes a
 * step at q, while they last: crc32 runs on integer ports the vector loop
 * leaves idle, on bytes the loop is about to read (a checksum pass of its
 * own, over memory not yet in cache, cost 10-12% of decode time).  c is the
 * raw (inverted) CRC state. */
GGZ_INLINE void ggz_crc_step32(uint64_t * c, const uint8_t ** q, const uint8_t * end)
{
    if (GGZ_LIKELY(end - *q >= 32)) {
        uint64_t v = *c;
        v = _mm_crc32_u64(v, ggz_rd64(*q));
        v = _mm_crc32_u64(v, ggz_rd64(*q + 8));
        v = _mm_crc32_u64(v, ggz_rd64(*q + 16));
        v = _mm_crc32_u64(v, ggz_rd64(*q + 24));
        *c = v;
        *q += 32;
    }
}
#endif

/* Reads the 32 states; @return 0 or a ggz_error */
GGZ_INLINE int ggz_read_states(uint32_t * x, const uint8_t * src, size_t src_size)
{
    if (src_size < GGZ_STATE_BYTES || (src_size & 1)) return GGZ_ERR_CORRUPT;
    for (unsigned l = 0; l < GGZ_LANES; l++) {
        x[l] = ggz_rd32(src + 4 * l);
        if (x[l] < GGZ_RANS_L) return GGZ_ERR_CORRUPT;
    }
    return GGZ_OK;
}

/* The start every SIMD decoder shares: an empty stream (its CRC taken, an
 * error unless it has no bytes either), a trellis stream of part of a step
 * (never written: an error), or the 32 states read into x.  @return -1 to
 * go on decoding, else the result to return. */
GGZ_INLINE int ggz_stream_begin(const uint8_t * src, size_t src_size, size_t n, int whole_steps,
                                uint32_t * x, uint32_t * crc)
{
    if (!n || (whole_steps && n % GGZ_LANES)) {
        *crc = ggz_crc32c(*crc, src, src_size);
        return (src_size || n) ? GGZ_ERR_CORRUPT : GGZ_OK;
    }
    const int err = ggz_read_states(x, src, src_size);
    return err ? err : -1;
}

/* Finishes a stream: the tail step, then the check that every state is back
 * at its initial value and every word was read. */
GGZ_INLINE int ggz_decode_finish(uint32_t * x, const uint8_t * p, const uint8_t * end,
                                 uint8_t * out, unsigned tail,
                                 const ggz_dtab * tabs, unsigned period)
{
    if (tail && ggz_decode_lanes_checked(x, &p, end, out, 0, tail, tabs, period)) return GGZ_ERR_CORRUPT;
    if (p != end) return GGZ_ERR_CORRUPT;
    uint32_t bad = 0;
    for (unsigned l = 0; l < GGZ_LANES; l++) bad |= x[l] ^ GGZ_RANS_L;
    return bad ? GGZ_ERR_CORRUPT : GGZ_OK;
}

/* ---- activation sparsity (sparse.c, sparse_avx2.c, sparse_avx512.c) --------------------- */
#ifndef Q8_0_BLOCK
#define Q8_0_BLOCK 34
#define Q8_0_QK    32
#endif

float ggz_f16_to_f32(uint16_t h);

/* an input passes where it is nonzero and not below its threshold */
GGZ_INLINE int ggz_sparse_pass(float v, float t) { return v != 0.0f && (v >= t || -v >= t); }

/* rows picked by a mask defeat the hardware prefetchers: the kernels ask for
 * the rows ahead, far ones into L2 and near ones into L1 (measured on Zen 4,
 * 1536 x 612-byte rows streamed from DRAM, 70% of them picked: L1 only 16
 * ahead 89 us, L2 64 + L1 16 ahead 54 us, no prefetch 99 us).  A run of
 * consecutive rows is left to the hardware, which streams it faster. */
GGZ_INLINE void ggz_prefetch(const uint8_t * p, size_t n, int near)
{
#if defined(__GNUC__)
    if (near) for (size_t o = 0; o < n; o += 64) __builtin_prefetch(p + o, 0, 3);
    else      for (size_t o = 0; o < n; o += 64) __builtin_prefetch(p + o, 0, 2);
#else
    (void)p; (void)n; (void)near;
#endif
}
#define GGZ_SPARSE_AHEAD 16     /* rows ahead into L1 (4 and 8 measured slower, 32 no better) */
#define GGZ_SPARSE_FAR   64     /* rows ahead into L2 (32 and 128 measured slower) */
/* before row rows[r] of n: bytes [0, len) of the rows ahead, base + row * row_bytes */
GGZ_INLINE void ggz_sparse_ahead(const uint8_t * base, size_t row_bytes, size_t len,
                                 const int32_t * rows, int64_t r, int64_t n)
{
    if (r + GGZ_SPARSE_FAR < n && rows[r + GGZ_SPARSE_FAR] != rows[r] + GGZ_SPARSE_FAR)
        ggz_prefetch(base + (size_t)rows[r + GGZ_SPARSE_FAR] * row_bytes, len, 0);
    if (r + GGZ_SPARSE_AHEAD < n && rows[r + GGZ_SPARSE_AHEAD] != rows[r] + GGZ_SPARSE_AHEAD)
        ggz_prefetch(base + (size_t)rows[r + GGZ_SPARSE_AHEAD] * row_bytes, len, 1);
}

/* The axpy loop the SIMD kernels share, as the body of a function with
 * ggz_sparse_axpy's parameters: one row at a time, front to back, y (the
 * thread's outputs) in L1, the rows ahead prefetched.  BLOCK(blk, xk, yb)
 * adds xk times the Q8_0 block at blk to the 32 floats at yb. */
#define GGZ_SPARSE_AXPY_LOOP(BLOCK) do { \
        const uint8_t * base_ = (const uint8_t *)wt + b0 * Q8_0_BLOCK; \
        const int64_t nb_ = b1 - b0; \
        memset(y, 0, (size_t)nb_ * Q8_0_QK * sizeof *y); \
        for (int64_t n_ = 0; n_ < nnz; n_++) { \
            ggz_sparse_ahead(base_, row_bytes, (size_t)nb_ * Q8_0_BLOCK, idx, n_, nnz); \
            const uint8_t * p_ = base_ + (size_t)idx[n_] * row_bytes; \
            const float xk_ = x[idx[n_]]; \
            for (int64_t b_ = 0; b_ < nb_; b_++) \
                BLOCK(p_ + (size_t)b_ * Q8_0_BLOCK, xk_, y + b_ * Q8_0_QK); \
        } \
    } while (0)

/* up on a list of rows: h[rows[j]] = a[rows[j]] * (row . x) */
typedef void (*ggz_sparse_up_fn)(const void *, size_t, int64_t, const void *, const int32_t *,
                                 int64_t, const float *, float *);
typedef void (*ggz_sparse_axpy_fn)(const void *, size_t, const int32_t *, int64_t, const float *,
                                   int64_t, int64_t, float *);
typedef void (*ggz_sparse_tmm_fn)(const void *, size_t, int64_t, const float *, size_t, int64_t,
                                  int64_t, int64_t, float *, size_t);
typedef struct {
    const char * name;
    int (*available)(void);
    ggz_sparse_up_fn   up;
    ggz_sparse_axpy_fn axpy;
    ggz_sparse_tmm_fn  tmm;
} ggz_sparse_kernels;

#if defined(GGZ_HAVE_X86)
int  ggz_cpu_has_avx2_fma(void);      /* dispatch.c: AVX2, FMA and F16C, saved by the OS */
void ggz_sparse_up_avx2(const void *, size_t, int64_t, const void *, const int32_t *, int64_t,
                        const float *, float *);
void ggz_sparse_axpy_avx2(const void *, size_t, const int32_t *, int64_t, const float *, int64_t,
                          int64_t, float *);
void ggz_sparse_tmm_avx2(const void *, size_t, int64_t, const float *, size_t, int64_t, int64_t,
                         int64_t, float *, size_t);
int  ggz_cpu_has_avx512_sparse(void); /* dispatch.c: AVX-512 F and BW, with FMA and F16C */
void ggz_sparse_up_avx512(const void *, size_t, int64_t, const void *, const int32_t *, int64_t,
                          const float *, float *);
void ggz_sparse_axpy_avx512(const void *, size_t, const int32_t *, int64_t, const float *, int64_t,
                            int64_t, float *);
void ggz_sparse_tmm_avx512(const void *, size_t, int64_t, const float *, size_t, int64_t, int64_t,
                           int64_t, float *, size_t);
#endif

#endif /* GGZIP_INTERNAL_H */
