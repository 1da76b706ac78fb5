/* NEON (aarch64) kernel variants: the entry points the generic kernels dispatch to when er_get_isa() is
 * ER_ISA_NEON. Implemented in matmul_neon.c (+ matmul_neon_body.h) and ops_neon.c; each mirrors the
 * scalar function named beside it and agrees with it to float-summation order (the integer parts of the
 * quantized dots are identical). Nothing here exists on other architectures. */
#ifndef ER_NEON_H
#define ER_NEON_H
#if defined(__aarch64__)
#include <stdint.h>

#include "edgerun_kernels.h"

int er_neon_dotprod(void); /* 1 if the CPU has ARMv8.2 sdot (HWCAP_ASIMDDP) and EDGERUN_NEON_DOTPROD != 0 */

int er_matmul_neon(const er_weight *w, const float *x, float *y, int64_t m); /* er_matmul */

void er_rmsnorm_neon(const float *x, const float *w, float *out, int64_t rows, int64_t n, float eps);
void er_softmax_neon(float *x, int64_t rows, int64_t n);
void er_mul_neon(const float *a, const float *b, float *out, int64_t n);
void er_silu_mul_neon(const float *g, const float *u, float *out, int64_t n); /* u = NULL: er_silu */
void er_gelu_mul_neon(const float *g, const float *u, float *out, int64_t n); /* u = NULL: er_gelu_tanh */
int er_attention_neon(const float *q, const void *k, const void *v, float *out, int64_t n_heads,
                      int64_t n_kv_heads, int64_t head_dim, int64_t n_ctx, int64_t kv_stride, int kv_f16,
                      float scale, float softcap);
int er_attention_prefill_neon(const float *q, const void *k, const void *v, float *out, int64_t n_heads,
                              int64_t n_kv_heads, int64_t head_dim, int64_t T, int64_t p0, int64_t kv_stride,
                              int kv_f16, float scale, float softcap, int64_t window);
#endif
#endif
