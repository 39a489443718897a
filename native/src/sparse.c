/* Activation-sparsity kernels (CHESS) on Q8_0 matrices: the scalar and NEON
 * versions, the activation quantizer and the kernel choice.  The AVX2 and
 * AVX-512 versions are sparse_avx2.c and sparse_avx512.c (each compiled
 * with its ISA flags alone).
 *
 * Two shapes of product.  The up projection keeps the usual layout (row i =
 * output i) and skips whole rows whose gate was zeroed: a dot product per
 * surviving row, on the activation quantized as Q8_0 does, as the dense
 * product would.  down, q and o are stored transposed (row k = input k), so
 * that a zero input skips one contiguous row: y += x_k * row_k, in float, on
 * register tiles of outputs so that y is written once per tile. */
#include "internal.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>

#if defined(GGZ_HAVE_NEON)
#include <arm_neon.h>
#endif

float ggz_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);          /* inf, nan */
    } else if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {                                          /* subnormal: normalise */
            exp = 113;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

size_t ggz_sparse_qx_size(int64_t n) { return (size_t)n + 4 * (size_t)(n / Q8_0_QK); }

void ggz_sparse_quantize(const float * x, int64_t n, void * qx)
{
    int8_t * q = (int8_t *)qx;
    float * d = (float *)(q + n);
    for (int64_t b = 0; b < n / Q8_0_QK; b++) {
        const float * v = x + b * Q8_0_QK;
        float amax = 0.0f;
        for (int j = 0; j < Q8_0_QK; j++) amax = fmaxf(amax, fabsf(v[j]));
        const float db = amax / 127.0f, id = db ? 1.0f / db : 0.0f;
        d[b] = db;
        for (int j = 0; j < Q8_0_QK; j++) q[b * Q8_0_QK + j] = (int8_t)roundf(v[j] * id);
    }
}

int64_t ggz_sparse_select(const float * x, const float * thr, int64_t n, int32_t * idx)
{
    int64_t m = 0;
    if (thr) {
        for (int64_t k = 0; k < n; k++) {
            idx[m] = (int32_t)k;                        /* branch-free compaction */
            m += x[k] != 0.0f && fabsf(x[k]) >= thr[k];
        }
    } else {
        for (int64_t k = 0; k < n; k++) { idx[m] = (int32_t)k; m += x[k] != 0.0f; }
    }
    return m;
}

/* ---- scalar ----------------------------------------------------------------- */

static void up_scalar(const void * w, size_t row_bytes, int64_t n_in, const void * qx,
                      const int32_t * rows, int64_t n, const float * a, float * h)
{
    const int8_t * q = (const int8_t *)qx;
    const float * xd = (const float *)(q + n_in);
    for (int64_t r = 0; r < n; r++) {
        const uint8_t * row = (const uint8_t *)w + (size_t)rows[r] * row_bytes;
        float sum = 0.0f;
        for (int64_t b = 0; b < n_in / Q8_0_QK; b++) {
            const uint8_t * blk = row + b * Q8_0_BLOCK;
            int32_t s = 0;
            for (int j = 0; j < Q8_0_QK; j++) s += (int8_t)blk[2 + j] * q[b * Q8_0_QK + j];
            sum += ggz_f16_to_f32(ggz_rd16(blk)) * xd[b] * (float)s;
        }
        h[rows[r]] = a[rows[r]] * sum;
    }
}

static void axpy_scalar(const void * wt, size_t row_bytes, const int32_t * idx, int64_t nnz,
                        const float * x, int64_t b0, int64_t b1, float * y)
{
    memset(y, 0, (size_t)(b1 - b0) * Q8_0_QK * sizeof *y);
    for (int64_t n = 0; n < nnz; n++) {
        const uint8_t * row = (const uint8_t *)wt + (size_t)idx[n] * row_bytes;
        for (int64_t b = b0; b < b1; b++) {
            const uint8_t * blk = row + b * Q8_0_BLOCK;
            const float c = x[idx[n]] * ggz_f16_to_f32(ggz_rd16(blk));
            float * yb = y + (b - b0) * Q8_0_QK;
            for (int j = 0; j < Q8_0_QK; j++) yb[j] += c * (float)(int8_t)blk[2 + j];
        }
    }
}

static void tmm_scalar(const void * wt, size_t row_bytes, int64_t n_in, const float * X, size_t ldx,
                       int64_t n_tok, int64_t b0, int64_t b1, float * Y, size_t ldy)
{
    for (int64_t t = 0; t < n_tok; t++) memset(Y + t * ldy, 0, (size_t)(b1 - b0) * Q8_0_QK * sizeof *Y);
    for (int64_t k = 0; k < n_in; k++) {
        const uint8_t * row = (const uint8_t *)wt + (size_t)k * row_bytes;
        for (int64_t b = b0; b < b1; b++) {
            const uint8_t * blk = row + b * Q8_0_BLOCK;
            const float d = ggz_f16_to_f32(ggz_rd16(blk));
            for (int64_t t = 0; t < n_tok; t++) {
                const float c = X[t * ldx + k] * d;
                float * yb = Y + t * ldy + (b - b0) * Q8_0_QK;
                for (int j = 0; j < Q8_0_QK; j++) yb[j] += c * (float)(int8_t)blk[2 + j];
            }
        }
    }
}

/* ---- NEON (baseline AArch64: no dotprod needed) -------------------------------- */

#if defined(GGZ_HAVE_NEON)
static float f16_neon(const uint8_t * p)
{
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(ggz_rd16(p)))), 0);
}

static void up_neon(const void * w, size_t row_bytes, int64_t n_in, const void * qx,
                    const int32_t * rows, int64_t n, const float * a, float * h)
{
    const int8_t * q = (const int8_t *)qx;
    const float * xd = (const float *)(q + n_in);
    const int64_t nb = n_in / Q8_0_QK;
    for (int64_t r = 0; r < n; r++) {
        ggz_sparse_ahead((const uint8_t *)w, row_bytes, row_bytes, rows, r, n);
        const uint8_t * row = (const uint8_t *)w + (size_t)rows[r] * row_bytes;
        float32x4_t acc = vdupq_n_f32(0.0f);
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t * blk = row + b * Q8_0_BLOCK;
            const int8x16_t w0 = vld1q_s8((const int8_t *)blk + 2), w1 = vld1q_s8((const int8_t *)blk + 18);
            const int8x16_t x0 = vld1q_s8(q + b * Q8_0_QK), x1 = vld1q_s8(q + b * Q8_0_QK + 16);
            int32x4_t s = vpaddlq_s16(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)));
            s = vpadalq_s16(s, vmull_high_s8(w0, x0));
            s = vpadalq_s16(s, vmull_s8(vget_low_s8(w1), vget_low_s8(x1)));
            s = vpadalq_s16(s, vmull_high_s8(w1, x1));
            acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), f16_neon(blk) * xd[b]);
        }
        h[rows[r]] = a[rows[r]] * vaddvq_f32(acc);
    }
}

/* 8 int8 weights at p as two float32x4 */
#define NEON_W8(p, lo, hi) do { \
        const int16x8_t w16_ = vmovl_s8(vld1_s8((const int8_t *)(p))); \
        lo = vcvtq_f32_s32(vmovl_s16(vget_low_s16(w16_))); \
        hi = vcvtq_f32_s32(vmovl_high_s16(w16_)); } while (0)

static inline void axpy_block_neon(const uint8_t * blk, float xk, float * yb)
{
    const float c = xk * f16_neon(blk);
    for (int r = 0; r < 4; r++) {
        float32x4_t wl, wh;
        NEON_W8(blk + 2 + 8 * r, wl, wh);
        vst1q_f32(yb + 8 * r, vfmaq_n_f32(vld1q_f32(yb + 8 * r), wl, c));
        vst1q_f32(yb + 8 * r + 4, vfmaq_n_f32(vld1q_f32(yb + 8 * r + 4), wh, c));
    }
}

static void axpy_neon(const void * wt, size_t row_bytes, const int32_t * idx, int64_t nnz,
                      const float * x, int64_t b0, int64_t b1, float * y)
{
    GGZ_SPARSE_AXPY_LOOP(axpy_block_neon);
}

static void tmm_neon(const void * wt, size_t row_bytes, int64_t n_in, const float * X, size_t ldx,
                     int64_t n_tok, int64_t b0, int64_t b1, float * Y, size_t ldy)
{
    /* tiles of 16 outputs x 4 tokens: 16 accumulators, the weights converted
     * once per tile row and used for 4 tokens */
    for (int64_t j0 = b0 * Q8_0_QK; j0 < b1 * Q8_0_QK; j0 += 16) {
        const int64_t b = j0 / Q8_0_QK, off = 2 + j0 % Q8_0_QK;
        for (int64_t t0 = 0; t0 < n_tok; t0 += 4) {
            const int nt = n_tok - t0 < 4 ? (int)(n_tok - t0) : 4;
            float32x4_t acc[4][4];
            for (int t = 0; t < 4; t++) for (int r = 0; r < 4; r++) acc[t][r] = vdupq_n_f32(0.0f);
            for (int64_t k = 0; k < n_in; k++) {
                const uint8_t * blk = (const uint8_t *)wt + (size_t)k * row_bytes + b * Q8_0_BLOCK;
                const float d = f16_neon(blk);
                float32x4_t wv[4];
                NEON_W8(blk + off, wv[0], wv[1]);
                NEON_W8(blk + off + 8, wv[2], wv[3]);
                for (int t = 0; t < nt; t++) {
                    const float c = X[(t0 + t) * ldx + k] * d;
                    for (int r = 0; r < 4; r++) acc[t][r] = vfmaq_n_f32(acc[t][r], wv[r], c);
                }
            }
            for (int t = 0; t < nt; t++)
                for (int r = 0; r < 4; r++) vst1q_f32(Y + (t0 + t) * ldy + (j0 - b0 * Q8_0_QK) + 4 * r, acc[t][r]);
        }
    }
}
#endif

/* ---- choice ----------------------------------------------------------------- */

static int always(void) { return 1; }

static const ggz_sparse_kernels sparse_kernels[] = {
    { "scalar", always, up_scalar, axpy_scalar, tmm_scalar },
#if defined(GGZ_HAVE_X86)
    { "avx2", ggz_cpu_has_avx2_fma, ggz_sparse_up_avx2, ggz_sparse_axpy_avx2, ggz_sparse_tmm_avx2 },
    { "avx512", ggz_cpu_has_avx512_sparse, ggz_sparse_up_avx512, ggz_sparse_axpy_avx512, ggz_sparse_tmm_avx512 },
#endif
#if defined(GGZ_HAVE_NEON)
    { "neon", always, up_neon, axpy_neon, tmm_neon },
#endif
};
#define N_SPARSE ((int)(sizeof sparse_kernels / sizeof sparse_kernels[0]))

static pthread_once_t sparse_once = PTHREAD_ONCE_INIT;
static const ggz_sparse_kernels * sparse_k;

static void sparse_init(void)
{
    sparse_k = &sparse_kernels[0];           /* listed slowest first */
    for (int i = 1; i < N_SPARSE; i++)
        if (sparse_kernels[i].available()) sparse_k = &sparse_kernels[i];
    /* GGZIP_SPARSE_KERNEL=name: another kernel for comparisons (the loader
     * logs the one in use); a name this host cannot run is said, not obeyed */
    const char * env = getenv("GGZIP_SPARSE_KERNEL");
    if (env && *env) {
        int found = 0;
        for (int i = 0; i < N_SPARSE; i++)
            if (!strcmp(sparse_kernels[i].name, env) && sparse_kernels[i].available()) {
                sparse_k = &sparse_kernels[i];
                found = 1;
            }
        if (!found)
            fprintf(stderr, "ggzip: GGZIP_SPARSE_KERNEL=%s is not a sparse kernel this build and CPU run; using %s\n",
                    env, sparse_k->name);
    }
}

static const ggz_sparse_kernels * sk(void) { pthread_once(&sparse_once, sparse_init); return sparse_k; }

const char * ggz_sparse_kernel_name(void) { return sk()->name; }

size_t ggz_sparse_set_kernel(const char * name)
{
    pthread_once(&sparse_once, sparse_init);
    for (int i = 0; name && i < N_SPARSE; i++) {
        if (!strcmp(sparse_kernels[i].name, name) && sparse_kernels[i].available()) {
            sparse_k = &sparse_kernels[i];
            return 0;
        }
    }
    return GGZ_ERROR(KERNEL);
}

void ggz_sparse_up(const void * w, size_t row_bytes, int64_t n_in, const void * qx,
                   const float * a, const float * thr, int64_t i0, int64_t i1, float * h)
{
    /* the passing rows, a window at a time: long enough for the prefetch
     * distance (GGZ_SPARSE_FAR) to matter little at its edges */
    enum { WIN = 1024 };
    const ggz_sparse_up_fn up = sk()->up;
    int32_t rows[WIN];
    for (int64_t s = i0; s < i1; s += WIN) {
        const int64_t e = i1 - s < WIN ? i1 : s + WIN;
        int64_t n = 0;
        for (int64_t i = s; i < e; i++) {
            rows[n] = (int32_t)i;
            const int pass = ggz_sparse_pass(a[i], thr ? thr[i] : 0.0f);
            h[i] = 0.0f;
            n += pass;
        }
        up(w, row_bytes, n_in, qx, rows, n, a, h);
    }
}

void ggz_sparse_axpy(const void * wt, size_t row_bytes, const int32_t * idx, int64_t nnz,
                     const float * x, int64_t b0, int64_t b1, float * y)
{
    sk()->axpy(wt, row_bytes, idx, nnz, x, b0, b1, y);
}

void ggz_sparse_tmm(const void * wt, size_t row_bytes, int64_t n_in, const float * X, size_t ldx,
                    int64_t n_tok, int64_t b0, int64_t b1, float * Y, size_t ldy)
{
    sk()->tmm(wt, row_bytes, n_in, X, ldx, n_tok, b0, b1, Y, ldy);
}
