/* Does this x86 CPU (or emulator) gather with ymm4 as the index register?
 * In a SIB byte, index 100b means "no index"; in a VSIB byte it is ymm4.
 * qemu 7.2's TCG (Debian 12) reads it as "no index" and gathers element 0
 * eight times, which breaks the AVX2 kernel wherever the compiler picked
 * ymm4 (fixed upstream by "target/i386: Fix VSIB decode": qemu 9.1, stable
 * 8.2.7 and 9.0.3).  The test script runs this under qemu before trusting
 * its AVX2 results.
 * Exit code 0: correct, 1: wrong. */
#include <stdint.h>
#include <stdio.h>

__attribute__((target("avx2")))
static int gather_ymm4_ok(void)
{
    static const uint32_t tab[8] = { 10, 11, 12, 13, 14, 15, 16, 17 };
    static const uint32_t idx[8] = { 7, 6, 5, 4, 3, 2, 1, 0 };
    uint32_t out[8];
    __asm__ volatile("vmovdqu %1, %%ymm4\n\t"
                     "vpcmpeqd %%ymm6, %%ymm6, %%ymm6\n\t"
                     "vpxor %%ymm0, %%ymm0, %%ymm0\n\t"
                     "vpgatherdd %%ymm6, (%2, %%ymm4, 4), %%ymm0\n\t"
                     "vmovdqu %%ymm0, %0\n\t"
                     "vzeroupper"
                     : "=m"(out) : "m"(idx), "r"(tab) : "xmm0", "xmm4", "xmm6", "memory");
    for (int i = 0; i < 8; i++)
        if (out[i] != tab[idx[i]]) return 0;
    return 1;
}

int main(void)
{
    const int ok = gather_ymm4_ok();
    printf("vpgatherdd with index ymm4: %s\n", ok ? "correct" : "WRONG (emulator bug)");
    return ok ? 0 : 1;
}
