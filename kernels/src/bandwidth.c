/* Bandwidth probes for the benchmark: threaded memcpy and a threaded streaming read. */
#include <string.h>

#include "edgerun_kernels.h"
#include "er_internal.h"

typedef struct {
    char *dst;
    const char *src;
    const float *f;
    double part[64];
} bw_ctx;

static void copy_task(void *v, int64_t s, int64_t e, int tid) {
    (void)tid;
    bw_ctx *c = (bw_ctx *)v;
    memcpy(c->dst + s * 4096, c->src + s * 4096, (size_t)(e - s) * 4096);
}

void er_memcpy(void *dst, const void *src, size_t n) {
    bw_ctx c = {.dst = (char *)dst, .src = (const char *)src};
    size_t pages = n / 4096;
    er_parallel_for((int64_t)pages, 1, copy_task, &c);
    memcpy((char *)dst + pages * 4096, (const char *)src + pages * 4096, n - pages * 4096);
}


#if ER_X86
/* 8 streams at once (eighths of the range): one stream alone leaves DRAM bandwidth unused on this
 * class of machine (its prefetchers keep too few lines in flight); 8 reads ~29 GB/s here, 1 ~23 GB/s */
ER_AVX2 static double sum8_avx2(const float *p, int64_t n) {
    const int64_t q = n / 8 / 8 * 8;
    __m256 a[8];
    for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < q; i += 8)
        for (int j = 0; j < 8; j++) a[j] = _mm256_add_ps(a[j], _mm256_loadu_ps(p + j * q + i));
    float t[8];
    for (int j = 1; j < 8; j++) a[0] = _mm256_add_ps(a[0], a[j]);
    _mm256_storeu_ps(t, a[0]);
    double s = 0;
    for (int j = 0; j < 8; j++) s += t[j];
    for (int64_t i = 8 * q; i < n; i++) s += p[i];
    return s;
}
#endif

static void read_task(void *v, int64_t s, int64_t e, int tid) {
    bw_ctx *c = (bw_ctx *)v;
    double acc = 0;
#if ER_X86
    if (er_get_isa() >= ER_ISA_AVX2) acc = sum8_avx2(c->f + s * 1024, (e - s) * 1024);
    else
#endif
        for (int64_t i = s * 1024; i < e * 1024; i++) acc += c->f[i];
    c->part[tid] += acc; /* a thread may run several chunks */
}

double er_read_sum(const float *src, size_t n) {
    bw_ctx c = {.f = src};
    memset(c.part, 0, sizeof c.part);
    size_t pages = n / 1024;
    er_parallel_for((int64_t)pages, 1, read_task, &c);
    double s = 0;
    for (int i = 0; i < 64; i++) s += c.part[i];
    for (size_t i = pages * 1024; i < n; i++) s += src[i];
    return s;
}
