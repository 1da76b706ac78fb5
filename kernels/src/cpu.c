/* Run-time CPU dispatch: which kernel variant runs (scalar, AVX2/FMA/F16C, NEON(+dotprod), ...). */
#if defined(__aarch64__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1 /* getauxval under -std=c11 */
#endif
#include <stdlib.h>

#include "edgerun_kernels.h"
#include "er_internal.h"
#include "er_neon.h"

#if defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

int er_isa = -1;

#if defined(__aarch64__)
/* NEON (ASIMD) is baseline on aarch64; the ARMv8.2 dot product (sdot) is optional (Cortex-A55/A76 and
 * later, Jetson Orin's A78AE have it; A53/A57/A72 do not). EDGERUN_NEON_DOTPROD=0 forces the plain-NEON
 * path (tests and benchmarks of the fallback on a dotprod CPU). */
static int neon_dp = -1;
int er_neon_dotprod(void) {
    if (neon_dp < 0) {
        const char *env = getenv("EDGERUN_NEON_DOTPROD");
        int hw = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
        neon_dp = (env && env[0] == '0') ? 0 : hw;
    }
    return neon_dp;
}
#endif

int er_isa_supported(int isa) {
    switch (isa) {
    case ER_ISA_SCALAR:
        return 1;
#if ER_X86
    case ER_ISA_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
#if defined(__aarch64__)
    case ER_ISA_NEON:
        return 1;
#endif
    default:
        return 0; /* AVX-512 variants are not built yet */
    }
}

int er_best_isa(void) {
    if (er_isa_supported(ER_ISA_AVX2)) return ER_ISA_AVX2;
    if (er_isa_supported(ER_ISA_NEON)) return ER_ISA_NEON;
    return ER_ISA_SCALAR;
}

int er_get_isa(void) {
    if (er_isa < 0) er_isa = er_best_isa();
    return er_isa;
}

int er_set_isa(int isa) {
    if (isa < 0) {
        er_isa = er_best_isa();
        return er_isa;
    }
    if (!er_isa_supported(isa)) return -1;
    er_isa = isa;
    return isa;
}
