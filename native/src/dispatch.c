/* Kernel selection (once, after CPUID and the OS's XCR0 on x86), the
 * GGZIP_KERNEL override, errors and version. */
#include "internal.h"

#include <pthread.h>
#include <stdlib.h>

#if defined(GGZ_HAVE_X86)
#include <cpuid.h>

static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* The OS must save the wider registers (XCR0) or the instructions fault. */
static int os_saves(uint64_t mask)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return 0; /* OSXSAVE */
    return (xgetbv0() & mask) == mask;
}

/* SSE4.2: the crc32 instruction, with which the x86 kernels check each chunk */
static int has_crc32(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && ((c >> 20) & 1);
}

static int has_avx2(void)
{
    unsigned a, b, c, d;
    if (!os_saves(0x6)) return 0;                 /* XMM | YMM */
    if (!has_crc32()) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return ((b >> 5) & 1) && ((b >> 8) & 1);      /* AVX2, BMI2 */
}

static int has_avx512(void)
{
    unsigned a, b, c, d;
    if (!os_saves(0xE6)) return 0;                /* XMM | YMM | opmask | ZMM */
    if (!has_crc32()) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return ((b >> 16) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1) && ((b >> 8) & 1); /* F, BW, VL, BMI2 */
}

static int has_avx512vbmi(void)
{
    unsigned a, b, c, d;
    return has_avx512() && __get_cpuid_count(7, 0, &a, &b, &c, &d) && ((c >> 1) & 1);
}

/* the sparse kernels (sparse_avx2.c) also need FMA and F16C */
int ggz_cpu_has_avx2_fma(void)
{
    unsigned a, b, c, d;
    return has_avx2() && __get_cpuid(1, &a, &b, &c, &d) && ((c >> 12) & 1) && ((c >> 29) & 1);
}

int ggz_cpu_has_avx512_sparse(void) { return has_avx512() && ggz_cpu_has_avx2_fma(); }

#endif

static int always(void) { return 1; }

static const ggz_kernel kernels[] = {
    { "scalar", always, ggz_decode_scalar, ggz_decode_tcq_scalar, NULL },
#if defined(GGZ_HAVE_X86)
    { "avx2",   has_avx2,   ggz_decode_avx2, ggz_decode_tcq_avx2, ggz_decode2_avx2 },
    { "avx512", has_avx512, ggz_decode_avx512, ggz_decode_tcq_avx512, ggz_decode2_avx512 },
    { "avx512vbmi", has_avx512vbmi, ggz_decode_avx512vbmi, ggz_decode_tcq_avx512vbmi, ggz_decode2_avx512vbmi },
#endif
#if defined(GGZ_HAVE_NEON)
    { "neon",   always,     ggz_decode_neon, ggz_decode_tcq_neon, NULL },
#endif
};
#define N_KERNELS ((int)(sizeof(kernels) / sizeof(kernels[0])))

static pthread_once_t once = PTHREAD_ONCE_INIT;
static const ggz_kernel * dec_kernel;
static const char * forced_error;

static const ggz_kernel * find(const char * name)
{
    for (int i = 0; i < N_KERNELS; i++)
        if (!strcmp(kernels[i].name, name)) return &kernels[i];
    return NULL;
}

static void choose(const ggz_kernel * k) { dec_kernel = k; }

static void init(void)
{
    /* kernels are listed slowest first: the last available one wins */
    const ggz_kernel * best = &kernels[0];
    for (int i = 1; i < N_KERNELS; i++)
        if (kernels[i].available()) best = &kernels[i];
    choose(best);
    const char * env = getenv("GGZIP_KERNEL");
    if (env && *env) {
        const ggz_kernel * k = find(env);
        if (!k)                 forced_error = "GGZIP_KERNEL names a kernel this library was not built with";
        else if (!k->available()) forced_error = "GGZIP_KERNEL names a kernel this CPU or OS cannot run";
        else                    choose(k);
    }
}

const ggz_kernel * ggz_decoder(void) { pthread_once(&once, init); return dec_kernel; }

const char * ggz_kernel_name(void)         { return ggz_decoder()->name; }
/* the one encoder (rans_encode.c), named here so that a decode-only build
 * does not link it */
const char * ggz_encoder_kernel_name(void) { return kernels[0].name; }
const char * ggz_kernel_forced_error(void) { pthread_once(&once, init); return forced_error; }
int          ggz_kernel_count(void)        { return N_KERNELS; }

const char * ggz_kernel_info(int i, int * available, int * has_encoder)
{
    if (i < 0 || i >= N_KERNELS) return NULL;
    if (available)   *available = kernels[i].available();
    if (has_encoder) *has_encoder = i == 0;   /* scalar, first */
    return kernels[i].name;
}

size_t ggz_set_kernel(const char * name)
{
    pthread_once(&once, init);
    const ggz_kernel * k = name ? find(name) : NULL;
    if (!k || !k->available()) return GGZ_ERROR(KERNEL);
    choose(k);
    return 0;
}

/* ---- errors and version ---------------------------------------------------- */

int ggz_is_error(size_t code) { return code > GGZ_ERROR(MAX); }

ggz_error ggz_error_code(size_t code)
{
    return ggz_is_error(code) ? (ggz_error)(0 - code) : GGZ_OK;
}

const char * ggz_error_name(size_t code)
{
    static const char * const names[GGZ_ERR_MAX] = {
        [GGZ_OK]                = "no error",
        [GGZ_ERR_GENERIC]       = "error",
        [GGZ_ERR_DST_TOO_SMALL] = "destination buffer too small",
        [GGZ_ERR_SRC_TRUNCATED] = "frame truncated",
        [GGZ_ERR_BAD_MAGIC]     = "not a ggzip frame (bad magic)",
        [GGZ_ERR_VERSION]       = "frame of an unsupported format version",
        [GGZ_ERR_HEADER]        = "frame header, tables or chunk index inconsistent",
        [GGZ_ERR_CHECKSUM]      = "checksum mismatch",
        [GGZ_ERR_CORRUPT]       = "corrupted rANS stream",
        [GGZ_ERR_PARAM]         = "invalid parameter",
        [GGZ_ERR_ALLOC]         = "out of memory",
        [GGZ_ERR_KERNEL]        = "unknown or unavailable kernel",
        [GGZ_ERR_THREAD]        = "could not start a thread",
    };
    const ggz_error e = ggz_error_code(code);
    return (e < GGZ_ERR_MAX && names[e]) ? names[e] : "unknown error";
}

unsigned ggz_version_number(void) { return GGZ_VERSION_NUMBER; }
