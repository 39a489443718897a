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

/* The level of the subset {L : L = m mod 4} nearest t, inside [-127, 127]. */
static inline int nearest_in(float t, int m)
{
    int L = 4 * (int)floorf((t - (float)m) * 0.25f + 0.5f) + m;
    while (L > 127) L -= 4;
    while (L < -127) L += 4;
    return L;
}

/* the better of the nearest level of subset m and its neighbour towards 0 */
static inline int branch(float t, int m, float mu, const float * bits, float * cost)
{
    const int L = nearest_in(t, m);
    float c = (t - (float)L) * (t - (float)L) + mu * bits[(uint8_t)L];
    int best = L;
    if (mu > 0 && L != 0) {
        const int L2 = L > 0 ? L - 4 : L + 4;      /* same subset, never out of range */
        const float c2 = (t - (float)L2) * (t - (float)L2) + mu * bits[(uint8_t)L2];
        if (c2 < c) { c = c2; best = L2; }
    }
    *cost = c;
    return best;
}

size_t ggz_tcq_quantize(const float * w, size_t rows, size_t cols, const float * steps,
                        size_t rows_per_chunk, float mu, const float * bits,
                        int8_t * q, uint64_t * counts)
{
    if (!w || !steps || !q || cols == 0 || cols % 32 || rows_per_chunk == 0 || mu < 0 || !(mu == mu))
        return GGZ_ERROR(PARAM);
    if (mu > 0 && !bits) return GGZ_ERROR(PARAM);
    if (rows == 0) return 0;
    static const float zero_bits[2][256];
    const float * tb[2] = { bits ? bits : zero_bits[0], bits ? bits + 256 : zero_bits[1] };
    const size_t nb = cols / 32;
    const size_t max_pos = (rows < rows_per_chunk ? rows : rows_per_chunk) * nb;
    /* per position and lane: the levels of the 4 (class, branch) pairs and,
     * per next state, which of its two incoming paths won (bits 0-3) */
    int8_t  * lev = malloc(max_pos * 32 * 4);
    uint8_t * from = malloc(max_pos * 32);
    if (!lev || !from) { free(lev); free(from); return GGZ_ERROR(ALLOC); }
    if (counts) memset(counts, 0, 2 * 256 * sizeof(uint64_t));

    for (size_t r0 = 0; r0 < rows; r0 += rows_per_chunk) {
        const size_t nr = rows - r0 < rows_per_chunk ? rows - r0 : rows_per_chunk;
        const size_t npos = nr * nb;
        float cost[4][32];
        for (int l = 0; l < 32; l++) { cost[0][l] = 0; cost[1][l] = cost[2][l] = cost[3][l] = INFINITY; }
        for (size_t p = 0; p < npos; p++) {
            const size_t r = r0 + p / nb, b = p % nb;
            const float * x = w + r * cols + b * 32;
            const float inv = 1.0f / steps[r * nb + b];
            if (!(inv > 0 && inv < INFINITY)) { free(lev); free(from); return GGZ_ERROR(PARAM); }
            int8_t * lv = lev + p * 128;
            uint8_t * fr = from + p * 32;
            for (int l = 0; l < 32; l++) {
                const float t = x[l] * inv;
                float bc[4];   /* (class 0: m = 0, 2; class 1: m = 1, 3) */
                for (int m = 0; m < 4; m++) {
                    const int cls = m & 1, br = m >> 1;
                    lv[l * 4 + cls * 2 + br] = (int8_t)branch(t, m, mu, tb[cls], &bc[cls * 2 + br]);
                }
                /* next state n gets: 0 <- (0,b0) | (1,b1); 2 <- (0,b1) | (1,b0);
                 *                    1 <- (2,b0) | (3,b1); 3 <- (2,b1) | (3,b0) */
                const float a0 = cost[0][l] + bc[0], a1 = cost[1][l] + bc[1];
                const float b0 = cost[0][l] + bc[1], b1 = cost[1][l] + bc[0];
                const float c0 = cost[2][l] + bc[2], c1 = cost[3][l] + bc[3];
                const float d0 = cost[2][l] + bc[3], d1 = cost[3][l] + bc[2];
                const int f0 = a1 < a0, f2 = b1 < b0, f1 = c1 < c0, f3 = d1 < d0;
                cost[0][l] = f0 ? a1 : a0;
                cost[2][l] = f2 ? b1 : b0;
                cost[1][l] = f1 ? c1 : c0;
                cost[3][l] = f3 ? d1 : d0;
                fr[l] = (uint8_t)(f0 | f1 << 1 | f2 << 2 | f3 << 3);
            }
        }
        /* back from the cheapest end state of each lane */
        for (int l = 0; l < 32; l++) {
            int s = 0;
            for (int k = 1; k < 4; k++) if (cost[k][l] < cost[s][l]) s = k;
            for (size_t p = npos; p-- > 0;) {
                const int f = from[p * 32 + l] >> s & 1;
                /* the incoming (state, branch) of state s, by f */
                int prev, br;
                switch (s) {
                case 0:  prev = f;     br = f;     break;
                case 2:  prev = f;     br = !f;    break;
                case 1:  prev = 2 + f; br = f;     break;
                default: prev = 2 + f; br = !f;    break;
                }
                const int cls = prev >> 1;
                const int8_t L = lev[p * 128 + l * 4 + cls * 2 + br];
                const size_t r = r0 + p / nb, b = p % nb;
                q[r * cols + b * 32 + l] = L;
                if (counts) counts[cls * 256 + (uint8_t)L]++;
                s = prev;
            }
        }
    }
    free(lev);
    free(from);
    return 0;
}
