/* Run-time CPU dispatch: which kernel variant runs (scalar, AVX2/FMA/F16C, ...). */
#include "edgerun_kernels.h"
#include "er_internal.h"

int er_isa = -1;

int er_isa_supported(int isa) {
    switch (isa) {
    case ER_ISA_SCALAR:
        return 1;
#if ER_X86
    case ER_ISA_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
    default:
        return 0; /* AVX-512 and NEON variants are not built yet */
    }
}

int er_best_isa(void) {
    if (er_isa_supported(ER_ISA_AVX2)) return ER_ISA_AVX2;
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
