/* AVX-512 (F, BW, with FMA and F16C) versions of the activation-sparsity
 * kernels of sparse.c; the only file built with those flags, called after
 * ggz_cpu_has_avx512_sparse().  Same loop shapes as sparse_avx2.c (measured
 * there); a zmm holds a whole Q8_0 block of products in two halves, so each
 * block costs half the instructions. */
#include "internal.h"

#if defined(GGZ_HAVE_X86)
#include <immintrin.h>

static inline float f16(const uint8_t * p) { return _cvtsh_ss(ggz_rd16(p)); }

/* int8 . int8 of two blocks' 64 values (w: the quants of blocks k0 and k1,
 * x: 64 contiguous quants) as 16 int32 sums, the low 8 from k0: |w| times x
 * with w's sign, pairs to int16 (at most 2 * 128 * 127: no saturation) */
static inline __m512 dot64(const uint8_t * k0, const uint8_t * k1, const int8_t * x)
{
    const __m512i wv = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)k0)),
                                          _mm256_loadu_si256((const __m256i *)k1), 1);
    const __m512i xv = _mm512_loadu_si512((const void *)x);
    const __mmask64 neg = _mm512_movepi8_mask(wv);
    const __m512i xs = _mm512_mask_sub_epi8(xv, neg, _mm512_setzero_si512(), xv);
    const __m512i p16 = _mm512_maddubs_epi16(_mm512_abs_epi8(wv), xs);
    return _mm512_cvtepi32_ps(_mm512_madd_epi16(p16, _mm512_set1_epi16(1)));
}

/* the scales of blocks k and k + 1 (their f16 times the activation's), 8 lanes each */
static inline __m512 scales2(const uint8_t * k, const float * xd)
{
    return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(f16(k) * xd[0]), _mm512_set1_ps(f16(k + Q8_0_BLOCK) * xd[1]));
}

void ggz_sparse_up_avx512(const void * w, size_t row_bytes, int64_t n_in, const void * qx,
                          const int32_t * rows, int64_t n, const float * a, float * h)
{
    const int8_t * q = (const int8_t *)qx;
    const float * xd = (const float *)(q + n_in);
    const int64_t nb = n_in / Q8_0_QK;
    for (int64_t r = 0; r < n; r++) {
        ggz_sparse_ahead((const uint8_t *)w, row_bytes, row_bytes, rows, r, n);
        const uint8_t * row = (const uint8_t *)w + (size_t)rows[r] * row_bytes;
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        int64_t b = 0;
        for (; b + 3 < nb; b += 4) {      /* two chains: the FMA latency hides on long rows */
            const uint8_t * k0 = row + b * Q8_0_BLOCK;
            acc0 = _mm512_fmadd_ps(scales2(k0, xd + b), dot64(k0 + 2, k0 + Q8_0_BLOCK + 2, q + b * Q8_0_QK), acc0);
            const uint8_t * k2 = k0 + 2 * Q8_0_BLOCK;
            acc1 = _mm512_fmadd_ps(scales2(k2, xd + b + 2), dot64(k2 + 2, k2 + Q8_0_BLOCK + 2, q + (b + 2) * Q8_0_QK), acc1);
        }
        for (; b + 1 < nb; b += 2) {
            const uint8_t * k0 = row + b * Q8_0_BLOCK;
            acc0 = _mm512_fmadd_ps(scales2(k0, xd + b), dot64(k0 + 2, k0 + Q8_0_BLOCK + 2, q + b * Q8_0_QK), acc0);
        }
        float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        if (b < nb) {                     /* an odd block count: the last one alone */
            const uint8_t * k0 = row + b * Q8_0_BLOCK;
            int32_t s = 0;
            for (int i = 0; i < Q8_0_QK; i++) s += (int8_t)k0[2 + i] * q[b * Q8_0_QK + i];
            sum += f16(k0) * xd[b] * (float)s;
        }
        h[rows[r]] = a[rows[r]] * sum;
    }
}

/* 16 int8 weights at p as floats */
static inline __m512 w16(const uint8_t * p)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

static inline void axpy_block(const uint8_t * blk, float xk, float * yb)
{
    const __m512 c = _mm512_set1_ps(xk * f16(blk));
    _mm512_storeu_ps(yb,      _mm512_fmadd_ps(c, w16(blk + 2),  _mm512_loadu_ps(yb)));
    _mm512_storeu_ps(yb + 16, _mm512_fmadd_ps(c, w16(blk + 18), _mm512_loadu_ps(yb + 16)));
}

void ggz_sparse_axpy_avx512(const void * wt, size_t row_bytes, const int32_t * idx, int64_t nnz,
                            const float * x, int64_t b0, int64_t b1, float * y)
{
    GGZ_SPARSE_AXPY_LOOP(axpy_block);
}

void ggz_sparse_tmm_avx512(const void * wt, size_t row_bytes, int64_t n_in, const float * X, size_t ldx,
                           int64_t n_tok, int64_t b0, int64_t b1, float * Y, size_t ldy)
{
    /* tiles of one block's 32 outputs x 4 tokens (8 accumulators): each weight
     * converted once and used by 4 tokens */
    const uint8_t * base = (const uint8_t *)wt;
    for (int64_t b = b0; b < b1; b++) {
        for (int64_t t0 = 0; t0 < n_tok; t0 += 4) {
            const int nt = n_tok - t0 < 4 ? (int)(n_tok - t0) : 4;
            __m512 acc[4][2];
            for (int t = 0; t < 4; t++) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
            const float * xr = X + t0 * ldx;
            for (int64_t k = 0; k < n_in; k++) {
                const uint8_t * blk = base + (size_t)k * row_bytes + b * Q8_0_BLOCK;
                const __m512 d = _mm512_set1_ps(f16(blk));
                const __m512 wa = _mm512_mul_ps(d, w16(blk + 2)), wb = _mm512_mul_ps(d, w16(blk + 18));
                for (int t = 0; t < nt; t++) {    /* nt is 4 but for the last tile */
                    const __m512 c = _mm512_set1_ps(xr[t * ldx + k]);
                    acc[t][0] = _mm512_fmadd_ps(c, wa, acc[t][0]);
                    acc[t][1] = _mm512_fmadd_ps(c, wb, acc[t][1]);
                }
            }
            for (int t = 0; t < nt; t++) {
                float * yr = Y + (t0 + t) * ldy + (b - b0) * Q8_0_QK;
                _mm512_storeu_ps(yr, acc[t][0]);
                _mm512_storeu_ps(yr + 16, acc[t][1]);
            }
        }
    }
}
#endif
