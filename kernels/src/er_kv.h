/* Internal: the per-ISA inner loops of the KIVI cache attention (kv_attention.c). The scalar and AVX2 tables live
 * in kv_attention.c, the NEON table in kv_attention_neon.c; each entry mirrors the scalar one up to float
 * summation order and the exp approximation (the Cephes polynomial of ops.c's exp256). */
#ifndef ER_KV_H
#define ER_KV_H
#include <stdint.h>

typedef struct er_kv_ops {
    /* sc[j] = q . rows[j] for j < n; rows (n, d) f32 */
    void (*qk)(const float *q, const float *rows, int64_t n, int64_t d, float *sc);
    /* o (d) += sum_j p[j] * rows[j] */
    void (*pv)(float *o, const float *p, const float *rows, int64_t n, int64_t d);
    /* s[j] = exp(s[j] - mx) (s[j] = -inf gives 0); returns the sum */
    float (*exp_sum)(float *s, int64_t n, float mx);
    /* o[i] *= r */
    void (*scale)(float *o, int64_t n, float r);
    /* dst[i] = f16 src[i] as f32 */
    void (*f16_row)(const uint16_t *src, float *dst, int64_t n);
    /* n key rows of d codes (`bits`, packed low-bits-first, pb bytes a row), unpacked in registers:
     * dst[j][i] = code_ji * s[i] + m[i] (scale and min per channel) */
    void (*deq_keys)(const uint8_t *packed, int bits, int64_t pb, const float *s, const float *m, int64_t n, int64_t d,
                     float *dst);
    /* n value rows: dst[j][i] = code_ji * vs[j][i / vg] + vm[j][i / vg] (f16 scale and min per row and channel
     * group of vg) */
    void (*deq_values)(const uint8_t *packed, int bits, int64_t pb, const uint16_t *vs, const uint16_t *vm, int64_t vg,
                       int64_t n, int64_t d, float *dst);
} er_kv_ops;

#if defined(__aarch64__)
extern const er_kv_ops er_kv_ops_neon; /* kv_attention_neon.c */
#endif

#endif
