/* Trellis-coded quantization of Q8_0 symbols (the encoder's side; the decoder's
 * state machine is GGZ_TCQ_NEXT in ggzip.h and FORMAT.md section 2).
 *
 * Each lane of an rANS stream (lane l = column l of every Q8_0 block of a
 * chunk, block after block, row after row) runs a 4-state machine.  States 0
 * and 1 allow the even levels, states 2 and 3 the odd ones; bit 1 of the level
 * picks the branch to the next state.  So a weight may land on any level of
 * the step d, but the path decides which half of them is allowed where, and
 * the coder, which codes each symbol with the table of its state's class,
 * pays for a grid of step 2d.  The best path (Viterbi, cost (w/d - L)^2 +
 * mu * bits) buys the granular gain of a trellis code: measured on Gaussian
 * and Laplacian sources at 3.7-4.9 bits, 0.9 dB over rounding to a uniform
 * grid at the same entropy (8-state shift-register labellings gave less).
 *
 * Lanes are independent, so the 32 of a block are one vector of the loops
 * below; the path memory of a chunk is 5 bytes per weight. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>


/* Branch metrics of one position for the 32 lanes: for each subset m of the
 * levels (L = m mod 4; class m & 1, branch m >> 1) the nearest level to
 * t = w / d and its squared error.  Branchless float code the compiler
 * vectorises: rounding by the 1.5 * 2^23 trick (nearest, ties to even),
 * exact for |y| < 2^22; a level past +-127 steps back into range within its
 * subset (t is clamped to +-127, so at most one step of 4 out). */
GGZ_INLINE void branch_metrics(const float * x, float inv, float lv[4][32], float bc[4][32])
{
    const float magic = 12582912.0f;
    float t[32];
    /* clamped: feedback may push a weight past its block's absmax */
    for (int l = 0; l < 32; l++) t[l] = fminf(fmaxf(x[l] * inv, -127.0f), 127.0f);
    for (int m = 0; m < 4; m++) {
        for (int l = 0; l < 32; l++) {
            const float y = (t[l] - (float)m) * 0.25f;
            float L = 4.0f * ((y + magic) - magic) + (float)m;
            L = L > 127.0f ? L - 4.0f : L;
            L = L < -127.0f ? L + 4.0f : L;
            const float e = t[l] - L;
            lv[m][l] = L;
            bc[m][l] = e * e;
        }
    }
}

/* With a rate weight: each metric plus mu * bits, and the neighbour of the
 * level towards 0 (same subset) where that is cheaper. */
GGZ_INLINE void add_rate(const float * x, float inv, float mu, const float * const tb[2],
                     float lv[4][32], float bc[4][32])
{
    for (int m = 0; m < 4; m++) {
        const float * bits = tb[m & 1];
        for (int l = 0; l < 32; l++) {
            const float t = x[l] * inv, L = lv[m][l];
            float c = bc[m][l] + mu * bits[(uint8_t)(int8_t)(int)L];
            if (L != 0.0f) {
                const float L2 = L > 0 ? L - 4.0f : L + 4.0f;
                const float c2 = (t - L2) * (t - L2) + mu * bits[(uint8_t)(int8_t)(int)L2];
                if (c2 < c) { c = c2; lv[m][l] = L2; }
            }
            bc[m][l] = c;
        }
    }
}

size_t ggz_tcq_quantize(const float * w, size_t rows, size_t cols, const float * steps,
                        size_t rows_per_chunk, float mu, const float * bits,
                        int8_t * q, uint64_t * counts)
{
    if (!w || !steps || !q || cols == 0 || cols % 32 || rows_per_chunk == 0 || mu < 0 || !(mu == mu))
        return GGZ_ERROR(PARAM);
    if (mu > 0 && !bits) return GGZ_ERROR(PARAM);
    if (rows == 0) return 0;
    const float * tb[2] = { bits, bits ? bits + 256 : NULL };
    const size_t nb = cols / 32;
    const size_t max_pos = (rows < rows_per_chunk ? rows : rows_per_chunk) * nb;
    /* per position: the level of each subset m for each lane (lane-minor, so
     * the loops store whole vectors) and, per lane, which of its two incoming
     * paths each next state kept (bits 0-3) */
    int8_t  * lev = malloc(max_pos * 4 * 32);
    uint8_t * from = malloc(max_pos * 32);
    if (!lev || !from) { free(lev); free(from); return GGZ_ERROR(ALLOC); }
    if (counts) memset(counts, 0, 2 * 256 * sizeof(uint64_t));

    for (size_t r0 = 0; r0 < rows; r0 += rows_per_chunk) {
        const size_t nr = rows - r0 < rows_per_chunk ? rows - r0 : rows_per_chunk;
        const size_t npos = nr * nb;
        float c0[32], c1[32], c2[32], c3[32];     /* path cost per state and lane */
        for (int l = 0; l < 32; l++) { c0[l] = 0; c1[l] = c2[l] = c3[l] = INFINITY; }
        for (size_t p = 0; p < npos; p++) {
            const size_t r = r0 + p / nb, b = p % nb;
            const float inv = 1.0f / steps[r * nb + b];
            if (!(inv > 0 && inv < INFINITY)) { free(lev); free(from); return GGZ_ERROR(PARAM); }
            float lv[4][32], bc[4][32];
            branch_metrics(w + r * cols + b * 32, inv, lv, bc);
            if (mu > 0) add_rate(w + r * cols + b * 32, inv, mu, tb, lv, bc);
            int8_t * out = lev + p * 128;
            for (int m = 0; m < 4; m++)
                for (int l = 0; l < 32; l++) out[m * 32 + l] = (int8_t)(int)lv[m][l];
            uint8_t * fr = from + p * 32;
            /* subset m = class + 2 * branch.  Next state n is reached from:
             *   0 <- (0, b0) | (1, b1);  2 <- (0, b1) | (1, b0)
             *   1 <- (2, b0) | (3, b1);  3 <- (2, b1) | (3, b0) */
            for (int l = 0; l < 32; l++) {
                const float a0 = c0[l] + bc[0][l], a1 = c1[l] + bc[2][l];
                const float b0 = c0[l] + bc[2][l], b1 = c1[l] + bc[0][l];
                const float e0 = c2[l] + bc[1][l], e1 = c3[l] + bc[3][l];
                const float d0 = c2[l] + bc[3][l], d1 = c3[l] + bc[1][l];
                const int f0 = a1 < a0, f2 = b1 < b0, f1 = e1 < e0, f3 = d1 < d0;
                c0[l] = f0 ? a1 : a0;
                c2[l] = f2 ? b1 : b0;
                c1[l] = f1 ? e1 : e0;
                c3[l] = f3 ? d1 : d0;
                fr[l] = (uint8_t)(f0 | f1 << 1 | f2 << 2 | f3 << 3);
            }
        }
        /* back from the cheapest end state of each lane, all lanes a position at a time */
        uint8_t st[32];
        for (int l = 0; l < 32; l++) {
            const float end[4] = { c0[l], c1[l], c2[l], c3[l] };
            int s = 0;
            for (int k = 1; k < 4; k++) if (end[k] < end[s]) s = k;
            st[l] = (uint8_t)s;
        }
        for (size_t p = npos; p-- > 0;) {
            const uint8_t * fr = from + p * 32;
            const int8_t * lv = lev + p * 128;
            int8_t * out = q + (r0 + p / nb) * cols + (p % nb) * 32;
            uint8_t cl[32];
            for (int l = 0; l < 32; l++) {
                /* the incoming (state, branch) of state s, by the bit f it kept */
                const int s = st[l], f = fr[l] >> s & 1;
                const int prev = (s & 1) * 2 + f, br = (s >> 1) ^ f;
                cl[l] = (uint8_t)(prev >> 1);
                out[l] = lv[(cl[l] + 2 * br) * 32 + l];
                st[l] = (uint8_t)prev;
            }
            if (counts)
                for (int l = 0; l < 32; l++) counts[cl[l] * 256 + (uint8_t)out[l]]++;
        }
    }
    free(lev);
    free(from);
    return 0;
}

/* ---- with error feedback ------------------------------------------------ */

/* Feedback pushes each decided weight's error onto the weights not decided
 * yet, while the trellis decides a lane's levels by the weights after them:
 * along a lane (the columns l, l+32, ... of a row) the two would fight, since
 * the targets the path search plans with would move under it.  So the columns
 * are decided lane after lane (GPTQ's column order is free): the path of lane l
 * through the chunk sees final targets, and its errors, taken as one block of
 * columns (exactly, each net of the ones before it), move the later lanes.
 * The columns of a lane are decided jointly, without feedback among them; the
 * path weighs each column's squared error by 1/U_jj^2, its share of the output
 * error the feedback leaves. */

/* the Viterbi path of one chain of n targets x (in steps) with weights g,
 * from state 0: its levels to q (stride qs), class counts to counts */
static void tcq_chain(const float * x, const float * g, size_t n, int8_t * lev, uint8_t * from,
                      int8_t * q, size_t qs, uint64_t * counts)
{
    const float magic = 12582912.0f;
    float c[4] = { 0, INFINITY, INFINITY, INFINITY };
    for (size_t p = 0; p < n; p++) {
        const float t = fminf(fmaxf(x[p], -127.0f), 127.0f);
        float bc[4];
        for (int m = 0; m < 4; m++) {
            float L = 4.0f * (((t - (float)m) * 0.25f + magic) - magic) + (float)m;
            L = L > 127.0f ? L - 4.0f : L;
            L = L < -127.0f ? L + 4.0f : L;
            bc[m] = g[p] * (t - L) * (t - L);
            lev[p * 4 + m] = (int8_t)(int)L;
        }
        /* as in ggz_tcq_quantize: subset m = class + 2 * branch */
        const float a0 = c[0] + bc[0], a1 = c[1] + bc[2], b0 = c[0] + bc[2], b1 = c[1] + bc[0];
        const float e0 = c[2] + bc[1], e1 = c[3] + bc[3], d0 = c[2] + bc[3], d1 = c[3] + bc[1];
        const int f0 = a1 < a0, f2 = b1 < b0, f1 = e1 < e0, f3 = d1 < d0;
        c[0] = f0 ? a1 : a0; c[2] = f2 ? b1 : b0; c[1] = f1 ? e1 : e0; c[3] = f3 ? d1 : d0;
        from[p] = (uint8_t)(f0 | f1 << 1 | f2 << 2 | f3 << 3);
    }
    int s = 0;
    for (int k = 1; k < 4; k++) if (c[k] < c[s]) s = k;
    for (size_t p = n; p-- > 0;) {
        const int f = from[p] >> s & 1, prev = (s & 1) * 2 + f, br = (s >> 1) ^ f, cl = prev >> 1;
        q[p * qs] = lev[p * 4 + cl + 2 * br];
        if (counts) counts[cl * 256 + (uint8_t)q[p * qs]]++;
        s = prev;
    }
}

size_t ggz_tcq_feedback(const float * w, size_t rows, size_t cols, const float * steps,
                        size_t rows_per_chunk, const float * u, int8_t * q, uint64_t * counts)
{
    if (!w || !steps || !q || !u || cols == 0 || cols % 32 || rows_per_chunk == 0)
        return GGZ_ERROR(PARAM);
    for (size_t j = 0; j < cols; j++)
        if (!(u[j * cols + j] > 0 && u[j * cols + j] < INFINITY)) return GGZ_ERROR(PARAM);
    for (size_t i = 0; i < rows * (cols / 32); i++)
        if (!(steps[i] > 0 && steps[i] < INFINITY)) return GGZ_ERROR(PARAM);
    if (counts) memset(counts, 0, 2 * 256 * sizeof(uint64_t));
    if (rows == 0) return 0;
    const size_t nb = cols / 32, rpc = rows < rows_per_chunk ? rows : rows_per_chunk, n = rpc * nb;
    /* t: a chunk's rows in lane order (index l * nb + b = column 32 b + l),
     * feedback applied; e: one lane's errors; x, gw: one lane's chain */
    float * t = malloc(rpc * cols * sizeof(float)), * e = malloc(rpc * nb * sizeof(float));
    float * x = malloc(n * sizeof(float)), * gw = malloc(n * sizeof(float));
    int8_t * lev = malloc(n * 4);
    uint8_t * from = malloc(n);
    if (!t || !e || !x || !gw || !lev || !from) {
        free(t); free(e); free(x); free(gw); free(lev); free(from);
        return GGZ_ERROR(ALLOC);
    }
    for (size_t r0 = 0; r0 < rows; r0 += rows_per_chunk) {
        const size_t nr = rows - r0 < rows_per_chunk ? rows - r0 : rows_per_chunk;
        for (size_t r = 0; r < nr; r++)
            for (size_t b = 0; b < nb; b++)
                for (size_t l = 0; l < 32; l++) t[r * cols + l * nb + b] = w[(r0 + r) * cols + b * 32 + l];
        for (size_t l = 0; l < 32; l++) {
            const size_t j0 = l * nb;                  /* this lane's columns in lane order */
            for (size_t r = 0; r < nr; r++)
                for (size_t b = 0; b < nb; b++) {
                    const float d = steps[(r0 + r) * nb + b], ujj = u[(j0 + b) * cols + j0 + b];
                    x[r * nb + b] = t[r * cols + j0 + b] / d;
                    gw[r * nb + b] = d * d / (ujj * ujj);
                }
            tcq_chain(x, gw, nr * nb, lev, from, q + r0 * cols + l, 32, counts);
            for (size_t r = 0; r < nr; r++) {
                float * tr = t + r * cols, * er = e + r * nb;
                for (size_t b = 0; b < nb; b++) {
                    const size_t j = j0 + b;
                    float v = tr[j];
                    for (size_t i = 0; i < b; i++) v -= er[i] * u[(j0 + i) * cols + j];
                    er[b] = (v - (float)q[(r0 + r) * cols + b * 32 + l] * steps[(r0 + r) * nb + b]) / u[j * cols + j];
                }
                for (size_t b = 0; b < nb; b++) {
                    const float * ur = u + (j0 + b) * cols;
                    const float eb = er[b];
                    for (size_t k = j0 + nb; k < cols; k++) tr[k] -= eb * ur[k];
                }
            }
        }
    }
    free(t); free(e); free(x); free(gw); free(lev); free(from);
    return 0;
}
