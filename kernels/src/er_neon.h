/* NEON (aarch64) kernel variants: the entry points the generic kernels dispatch to when er_get_isa() is
 * ER_ISA_NEON. Implemented in matmul_neon.c (+ matmul_neon_body.h) and ops_neon.c; each mirrors the
 * scalar function named beside it and agrees with it to float-summation order (the integer parts of the
 * quantized dots are identical). Nothing here exists on other architectures. */
#ifndef ER_NEON_H
#define ER_NEON_H
#if defined(__aarch64__)
#include <arm_neon.h>
#include <stdint.h>

#include "edgerun_kernels.h"

/* exp(x) for x <= 0: 2^n * p(r), r in [-ln2/2, ln2/2], degree-6 polynomial (Cephes, as the AVX2 er_exp256);
 * 0 below -87 */
static inline __attribute__((always_inline)) float32x4_t er_exp4(float32x4_t x) {
    x = vmaxq_f32(x, vdupq_n_f32(-87.0f));
    float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
    int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

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
