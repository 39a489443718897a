/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the chunk checksum.
 * Hardware instructions where the CPU has them (SSE4.2 crc32, ARMv8 CRC),
 * slicing-by-8 tables otherwise.  Both give the same value. */
#include "internal.h"

#include <pthread.h>

#define CRC32C_POLY 0x82F63B78u

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static int crc_hw = 0;

/* Joining CRC registers: over GF(2), crc(c, A || B) = c * x^(8|B|) + crc(0, B)
 * mod P.  Values are reflected: bit 31 holds x^0. */
#define CRC_3WAY_MIN 1024

static inline uint32_t gf2_mulmod(uint32_t a, uint32_t b)
{
    uint32_t prod = 0;
    for (uint32_t m = 1u << 31; m; m >>= 1) {   /* m walks x^0, x^1, ... of a */
        if (a & m) prod ^= b;
        b = (b >> 1) ^ (CRC32C_POLY & (0u - (b & 1)));   /* b *= x */
    }
    return prod;
}

/* x^(8 n) mod P by squaring: x^8, x^16, x^32, ... */
static inline uint32_t gf2_x8n(size_t n)
{
    uint32_t r = 1u << 31, sq = 1u << (31 - 8);
    for (; n; n >>= 1) {
        if (n & 1) r = gf2_mulmod(r, sq);
        sq = gf2_mulmod(sq, sq);
    }
    return r;
}

/* three consecutive blocks of m bytes: c0 from the caller's register, c1 and c2
 * from zero */
static inline uint32_t crc_join3(uint32_t c0, uint32_t c1, uint32_t c2, size_t m)
{
    const uint32_t xm = gf2_x8n(m);
    return gf2_mulmod(gf2_mulmod(c0, xm) ^ c1, xm) ^ c2;
}

/* The hardware instructions, per ISA: one byte, eight bytes, and the target
 * attribute that enables them. */
#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#include <nmmintrin.h>
#define CRC_HW_TARGET __attribute__((target("sse4.2")))
#define CRC_U8(c, b)  _mm_crc32_u8((c), (b))
#define CRC_U64(c, v) ((uint32_t)_mm_crc32_u64((c), (v)))

static int crc_hw_available(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    return (c >> 20) & 1; /* SSE4.2 */
}
#elif defined(__aarch64__) && defined(__linux__)
#include <arm_acle.h>
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#define CRC_HW_TARGET __attribute__((target("+crc")))
#define CRC_U8(c, b)  __crc32cb((c), (b))
#define CRC_U64(c, v) __crc32cd((c), (v))

static int crc_hw_available(void) { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
#endif

#ifdef CRC_HW_TARGET
CRC_HW_TARGET
static uint32_t crc32c_hw(uint32_t crc, const uint8_t * p, size_t n)
{
    for (; n && ((uintptr_t)p & 7); n--) crc = CRC_U8(crc, *p++);
    /* the crc instruction has a latency of 3 and a throughput of 1: three
     * independent lanes over three thirds of the buffer, joined at the end */
    if (n >= CRC_3WAY_MIN) {
        const size_t m = n / 24 * 8;
        const uint8_t * q = p + m, * r = p + 2 * m;
        uint32_t c1 = 0, c2 = 0;
        for (size_t i = 0; i < m; i += 8) {
            crc = CRC_U64(crc, ggz_rd64(p + i));
            c1  = CRC_U64(c1,  ggz_rd64(q + i));
            c2  = CRC_U64(c2,  ggz_rd64(r + i));
        }
        crc = crc_join3(crc, c1, c2, m);
        p += 3 * m;
        n -= 3 * m;
    }
    for (; n >= 8; n -= 8, p += 8) crc = CRC_U64(crc, ggz_rd64(p));
    for (; n; n--) crc = CRC_U8(crc, *p++);
    return crc;
}
#else
static uint32_t crc32c_hw(uint32_t crc, const uint8_t * p, size_t n) { (void)p; (void)n; return crc; }
static int crc_hw_available(void) { return 0; }
#endif

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1)));
        crc_table[0][i] = c;
    }
    for (int t = 1; t < 8; t++)
        for (uint32_t i = 0; i < 256; i++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
    crc_hw = crc_hw_available();
}

static uint32_t crc32c_sw(uint32_t crc, const uint8_t * p, size_t n)
{
    for (; n >= 8; n -= 8, p += 8) {
        const uint32_t lo = ggz_rd32(p) ^ crc, hi = ggz_rd32(p + 4);
        crc = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^
              crc_table[5][(lo >> 16) & 0xFF] ^ crc_table[4][lo >> 24] ^
              crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
              crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
    }
    for (; n; n--) crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xFF];
    return crc;
}

uint32_t ggz_crc32c(uint32_t crc, const void * buf, size_t size)
{
    pthread_once(&crc_once, crc_init);
    crc = ~crc;
    crc = crc_hw ? crc32c_hw(crc, (const uint8_t *)buf, size) : crc32c_sw(crc, (const uint8_t *)buf, size);
    return ~crc;
}

/* for the tests: the table path regardless of the CPU */
uint32_t ggz_crc32c_portable(uint32_t crc, const void * buf, size_t size)
{
    pthread_once(&crc_once, crc_init);
    return ~crc32c_sw(~crc, (const uint8_t *)buf, size);
}
