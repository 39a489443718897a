/* AVX2 (with FMA, F16C) versions of the activation-sparsity kernels of
 * sparse.c; the only file built with those flags, called after
 * ggz_cpu_has_avx2_fma(). */
#include "internal.h"

#if defined(GGZ_HAVE_X86)
#include <immintrin.h>

static inline float f16(const uint8_t * p) { return _cvtsh_ss(ggz_rd16(p)); }

static inline float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* int8 . int8 of 32 values as 8 int32 sums: |w| times x with w's sign, pairs
 * summed to int16 (at most 2 * 128 * 127, no saturation), then to int32 */
static inline __m256 dot32(const uint8_t * w, const int8_t * x)
{
    const __m256i wv = _mm256_loadu_si256((const __m256i *)w);
    const __m256i xv = _mm256_loadu_si256((const __m256i *)x);
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

void ggz_sparse_up_avx2(const void * w, size_t row_bytes, int64_t n_in, const void * qx,
                        const int32_t * rows, int64_t n, const float * a, float * h)
{
    const int8_t * q = (const int8_t *)qx;
    const float * xd = (const float *)(q + n_in);
    const int64_t nb = n_in / Q8_0_QK;
    for (int64_t r = 0; r < n; r++) {
        ggz_sparse_ahead((const uint8_t *)w, row_bytes, row_bytes, rows, r, n);
        const uint8_t * row = (const uint8_t *)w + (size_t)rows[r] * row_bytes;
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int64_t b = 0;
        for (; b + 1 < nb; b += 2) {      /* two chains: the FMA latency hides */
            const uint8_t * k0 = row + b * Q8_0_BLOCK, * k1 = k0 + Q8_0_BLOCK;
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(k0) * xd[b]), dot32(k0 + 2, q + b * Q8_0_QK), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_set1_ps(f16(k1) * xd[b + 1]), dot32(k1 + 2, q + (b + 1) * Q8_0_QK), acc1);
        }
        if (b < nb) {
            const uint8_t * k0 = row + b * Q8_0_BLOCK;
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(k0) * xd[b]), dot32(k0 + 2, q + b * Q8_0_QK), acc0);
        }
        h[rows[r]] = a[rows[r]] * hsum(_mm256_add_ps(acc0, acc1));
    }
}

/* 8 int8 weights at p as floats */
static inline __m256 w8(const uint8_t * p)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

static inline void axpy_block(const uint8_t * blk, float xk, float * yb)
{
    const __m256 c = _mm256_set1_ps(xk * f16(blk));
    for (int r = 0; r < 4; r++)
        _mm256_storeu_ps(yb + 8 * r, _mm256_fmadd_ps(c, w8(blk + 2 + 8 * r), _mm256_loadu_ps(yb + 8 * r)));
}

/* GGZ_SPARSE_AXPY_LOOP (internal.h): rows taken four at a time in parallel
 * measured slower, whether the matrix streams from DRAM or sits in L2; so
 * did a register tile over all rows, which re-walks every row once per tile */
void ggz_sparse_axpy_avx2(const void * wt, size_t row_bytes, const int32_t * idx, int64_t nnz,
                          const float * x, int64_t b0, int64_t b1, float * y)
{
    GGZ_SPARSE_AXPY_LOOP(axpy_block);
}

void ggz_sparse_tmm_avx2(const void * wt, size_t row_bytes, int64_t n_in, const float * X, size_t ldx,
                         int64_t n_tok, int64_t b0, int64_t b1, float * Y, size_t ldy)
{
    /* tiles of 16 outputs x 4 tokens (8 accumulators): each weight is
     * converted once and used by 4 tokens; the 16-output column of the matrix
     * stays in cache while the token tiles pass over it */
    const uint8_t * base = (const uint8_t *)wt;
    for (int64_t j0 = b0 * Q8_0_QK; j0 < b1 * Q8_0_QK; j0 += 16) {
        const int64_t b = j0 / Q8_0_QK, off = 2 + j0 % Q8_0_QK;
        for (int64_t t0 = 0; t0 < n_tok; t0 += 4) {
            const int nt = n_tok - t0 < 4 ? (int)(n_tok - t0) : 4;
            __m256 acc[4][2];
            for (int t = 0; t < 4; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
            const float * xr = X + t0 * ldx;
            for (int64_t k = 0; k < n_in; k++) {
                const uint8_t * blk = base + (size_t)k * row_bytes + b * Q8_0_BLOCK;
                const __m256 d = _mm256_set1_ps(f16(blk));
                const __m256 wa = _mm256_mul_ps(d, w8(blk + off)), wb = _mm256_mul_ps(d, w8(blk + off + 8));
                for (int t = 0; t < nt; t++) {    /* nt is 4 but for the last tile */
                    const __m256 c = _mm256_broadcast_ss(xr + t * ldx + k);
                    acc[t][0] = _mm256_fmadd_ps(c, wa, acc[t][0]);
                    acc[t][1] = _mm256_fmadd_ps(c, wb, acc[t][1]);
                }
            }
            for (int t = 0; t < nt; t++) {
                float * yr = Y + (t0 + t) * ldy + (j0 - b0 * Q8_0_QK);
                _mm256_storeu_ps(yr, acc[t][0]);
                _mm256_storeu_ps(yr + 8, acc[t][1]);
            }
        }
    }
}
#endif
