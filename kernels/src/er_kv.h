/* Internal: the per-ISA inner loops of the KIVI cache attention (kv_attention.c). The scalar and AVX2 tables live
 * in kv_attention.c, the NEON table in kv_attention_neon.c; each entry mirrors the scalar one up to float
 * summation order and the exp approximation (the Cephes polynomial of er_exp256 in er_internal.h). */
#ifndef ER_KV_H
#define ER_KV_H
#include <stdint.h>

/* one query head prepared for one quantized key group (er_kv_ops.q_prep): its scores are integer dot products
 * with the codes, score_j = d * sum_i qi[i] * (code_ji - zc) + off, zc = 2^(bits-1) the codes' centre; qi are
 * 15-bit (|qi| <= KV_QMAX), so the query's rounding costs ~1e-5 of a score, well below the codes' own error */
#define KV_QMAX 16383 /* sum over hd <= 512 channels of |qi| * 255 stays below 2^31 */
typedef struct er_kv_qg {
    float d, off;  /* max|q * s| / KV_QMAX; sum_i q_i m_i + zc sum_i q_i s_i (exact in float) */
    int32_t zsum;  /* zc * sum_i qi[i]: what kernels multiplying the raw (uncentred) codes subtract */
} er_kv_qg;

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
    /* n value rows: dst[j][i] = code_ji * vs[i / vg][j] + vm[i / vg][j] (f16 scale and min per channel group of vg
     * and row, (d / vg, n)) */
    void (*deq_values)(const uint8_t *packed, int bits, int64_t pb, const uint16_t *vs, const uint16_t *vm, int64_t vg,
                       int64_t n, int64_t d, float *dst);
    /* gq query heads q (gq, d) for a key group of per-channel scale s and min m (f32): q' = q * s,
     * qi = rint(q' * KV_QMAX / max|q'|) int16 (gq, d), qg as er_kv_qg documents */
    void (*q_prep)(const float *q, int64_t gq, int64_t d, const float *s, const float *m, int bits, int16_t *qi,
                   er_kv_qg *qg);
    /* scores of gq prepared heads over n key rows straight from the codes (no dequantized copy):
     * sc[g * ss + j] = qg[g].d * sum_i qi[g * d + i] * (code_ji - zc) + qg[g].off (the integer sum exact) */
    void (*qk_codes)(const int16_t *qi, const er_kv_qg *qg, int64_t gq, const uint8_t *packed, int bits, int64_t pb,
                     int64_t n, int64_t d, float *sc, int64_t ss);
    /* o[g * d + i] += sum_j p[g * ps + j] * (code_ji * vs[i / vg][j] + vm[i / vg][j]) for gq heads, n value rows;
     * vs, vm (d / vg, n) f32: vs[i / vg][j] is row j's scale of channel i */
    void (*pv_codes)(float *o, int64_t gq, const float *p, int64_t ps, const uint8_t *packed, int bits, int64_t pb,
                     const float *vs, const float *vm, int64_t vg, int64_t n, int64_t d);
    /* max(m, s[0..n)) */
    float (*vmax)(const float *s, int64_t n, float m);
    /* optional (NULL: qk / pv once per row): the prefill's query rows that share a key tile at once, so each key
     * or value row loaded serves several of them. sc[r * ss + j] = q[r * d] . rows[j] for r < nq;
     * o[r * d + i] += sum_j p[r * ps + j] * rows[j][i] for r < nr */
    void (*qk_rows)(const float *q, int64_t nq, const float *rows, int64_t n, int64_t d, float *sc, int64_t ss);
    void (*pv_rows)(float *o, int64_t nr, const float *p, int64_t ps, const float *rows, int64_t n, int64_t d);
} er_kv_ops;

/* causal GQA prefill attention over a plain (n_kv, kv_stride, hd) f32 / f16 cache (er_attention_prefill's
 * arguments) with the ops of `isa`: queries in blocks that share every key / value tile (kv_attention.c). Returns 0,
 * -3 out of memory, 1 when not taken (more than KV_MAXG query heads per kv head). */
int er_kv_prefill_plain(int isa, const float *q, const void *k, const void *v, float *out, int64_t n_heads,
                        int64_t n_kv_heads, int64_t head_dim, int64_t T, int64_t p0, int64_t kv_stride, int kv_f16,
                        float scale, float softcap, int64_t window);

#if defined(__aarch64__)
extern const er_kv_ops er_kv_ops_neon; /* kv_attention_neon.c */
#endif

#endif
