/* GGUF block formats (q4_1, q5_0, q5_1, q2_K, q3_K, q4_K, q5_K, q6_K) as the matmul kernels of matmul_ggml.c
 * and matmul_ggml_neon.c read them: the block layouts, the job descriptor both files share, and the portable
 * (scalar) unpack of one block into the "canonical form" every variant computes with.
 *
 * Weights: er_weight.type = ER_W_Q4_1 .. ER_W_Q6_K, data = the GGUF's blocks of each row byte for byte
 * (row n at data + n * (K / QK) * type_size), block_size = QK (32 or 256), scales = zero_points = NULL.
 *
 * Block layouts (ggml-common.h; f16 = IEEE half, little endian):
 *   q4_1 (32, 20 B):  f16 d, f16 m, u8 qs[16]            w = d * q + m,      q = nibble (lo: e < 16, hi: e + 16)
 *   q5_0 (32, 22 B):  f16 d, u8 qh[4], u8 qs[16]         w = d * (q - 16),   q = nibble | bit e of qh << 4
 *   q5_1 (32, 24 B):  f16 d, f16 m, u8 qh[4], u8 qs[16]  w = d * q + m
 *   q2_K (256, 84 B): u8 scales[16], u8 qs[64], f16 d, f16 dmin
 *                     e = 128h + 32f + l: q = (qs[32h + l] >> 2f) & 3, j = e / 16,
 *                     w = d * (scales[j] & 15) * q - dmin * (scales[j] >> 4)
 *   q3_K (256, 110 B): u8 hmask[32], u8 qs[64], u8 scales[12] (16 x 6 bits), f16 d
 *                     e = 128h + 32f + l: q = ((qs[32h + l] >> 2f) & 3) | (bit 4h + f of hmask[l]) << 2,
 *                     w = d * (s_j - 32) * (q - 4)
 *   q4_K (256, 144 B): f16 d, f16 dmin, u8 scales[12] (8 x (6-bit scale, 6-bit min)), u8 qs[128]
 *                     e = 64i + 32u + l: q = (qs[32i + l] >> 4u) & 15, j = e / 32, w = d * sc_j * q - dmin * m_j
 *   q5_K (256, 176 B): f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]
 *                     as q4_K with q |= (bit j of qh[l]) << 4
 *   q6_K (256, 210 B): u8 ql[128], u8 qh[64], i8 scales[16], f16 d
 *                     e = 128h + 32f + l: q = ((ql[64h + 32(f & 1) + l] >> 4(f >> 1)) & 15)
 *                                            | ((qh[32h + l] >> 2f) & 3) << 4,  w = d * scales[e / 16] * (q - 32)
 *
 * Canonical forms (the unsigned codes q in natural element order, and integer or float block factors):
 *   K-quants, per super-block of 256 with activations x = dy * a (Q8_K: int8 a, f32 dy, bsum_j = sum of a over
 *   the 16 elements of sub-block j):
 *       sum_e w_e x_e = dy * (dA * sum_j sc_j * dot_j(q, a) - dB * sum_j mn_j * bsum_j)
 *     q2_K: sc = scales & 15, mn = scales >> 4, dA = d, dB = dmin
 *     q3_K: sc = s - 32, mn = 4 (s - 32), dA = dB = d
 *     q4_K, q5_K: sc, mn = the 6-bit scale / min of the sub-block's 32, dA = d, dB = dmin
 *     q6_K: sc = scales, mn = 32 scales, dA = dB = d
 *   32-element formats, per block with activations x = dy * a (Q8_0: int8 a, dy = fp16(amax / 127), sy = dy * sum a):
 *       sum_e w_e x_e = fw * dy * dot(q, a) + fm * sy
 *     q4_1, q5_1: fw = d, fm = m;  q5_0: fw = d, fm = -16 d
 * The integer sums are exact in int32 in every variant; only float rounding and summation order differ.
 */
#ifndef ER_GGML_BLOCKS_H
#define ER_GGML_BLOCKS_H
#include <stdint.h>
#include <string.h>

#include "edgerun_kernels.h"
#include "er_internal.h"

#define GG_QK_K 256

static inline int gg_is_type(int type) { return type >= ER_W_Q4_1 && type <= ER_W_Q6_K; }
static inline int gg_is_k(int type) { return type >= ER_W_Q2_K && type <= ER_W_Q6_K; } /* Q8_K activations */
static inline int gg_qk(int type) { return gg_is_k(type) ? 256 : 32; }
static inline int gg_type_size(int type) {
    switch (type) {
    case ER_W_Q4_1: return 20;
    case ER_W_Q5_0: return 22;
    case ER_W_Q5_1: return 24;
    case ER_W_Q2_K: return 84;
    case ER_W_Q3_K: return 110;
    case ER_W_Q4_K: return 144;
    case ER_W_Q5_K: return 176;
    case ER_W_Q6_K: return 210;
    default: return 0;
    }
}

static inline uint16_t gg_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t gg_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* q4_K / q5_K: the 8 6-bit scales and mins of 12 bytes: j < 4: sc = s[j] & 63, m = s[j + 4] & 63;
 * j >= 4: sc = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4, m = (s[j + 4] >> 4) | (s[j] >> 6) << 4.
 * As 32-bit words (a = bytes 0-3, b = 4-7, c = 8-11), sc[0..3], sc[4..7], m[0..3], m[4..7]: */
static inline void gg_k4_scales(const uint8_t *s, uint32_t *sc_lo, uint32_t *sc_hi, uint32_t *m_lo, uint32_t *m_hi) {
    const uint32_t a = gg_u32(s), b = gg_u32(s + 4), c = gg_u32(s + 8);
    *sc_lo = a & 0x3f3f3f3fu;
    *m_lo = b & 0x3f3f3f3fu;
    *sc_hi = (c & 0x0f0f0f0fu) | ((a >> 6) & 0x03030303u) << 4;
    *m_hi = ((c >> 4) & 0x0f0f0f0fu) | ((b >> 6) & 0x03030303u) << 4;
}

/* q3_K: the 16 6-bit scales of 12 bytes (byte j < 8 holds the low 4 bits of scale j (low nibble) and j + 8
 * (high nibble); byte 8 + i holds the high 2 bits of scales i, i + 4, i + 8, i + 12), minus 32, as 4 words
 * of 4 int8 each */
static inline void gg_k3_scales(const uint8_t *s, uint32_t out[4]) {
    const uint32_t a = gg_u32(s), b = gg_u32(s + 4), c = gg_u32(s + 8);
    out[0] = (a & 0x0f0f0f0fu) | ((c >> 0) & 0x03030303u) << 4;
    out[1] = (b & 0x0f0f0f0fu) | ((c >> 2) & 0x03030303u) << 4;
    out[2] = ((a >> 4) & 0x0f0f0f0fu) | ((c >> 4) & 0x03030303u) << 4;
    out[3] = ((b >> 4) & 0x0f0f0f0fu) | ((c >> 6) & 0x03030303u) << 4;
    for (int i = 0; i < 4; i++) { /* each byte minus 32, as int8 */
        uint8_t v[4];
        memcpy(v, &out[i], 4);
        for (int j = 0; j < 4; j++) v[j] = (uint8_t)(v[j] - 32);
        memcpy(&out[i], v, 4);
    }
}

/* ---- canonical forms, portable ------------------------------------------------------------------- */

typedef struct {
    uint8_t q[256];
    int32_t sc[16], mn[16];
    float dA, dB;
} gg_kform;

static inline void gg_unpack_k(int type, const uint8_t *b, gg_kform *f) {
    switch (type) {
    case ER_W_Q2_K:
        for (int e = 0; e < 256; e++) f->q[e] = (b[16 + 32 * (e >> 7) + (e & 31)] >> (2 * ((e >> 5) & 3))) & 3;
        for (int j = 0; j < 16; j++) f->sc[j] = b[j] & 15, f->mn[j] = b[j] >> 4;
        f->dA = er_f16_to_f32(gg_u16(b + 80));
        f->dB = er_f16_to_f32(gg_u16(b + 82));
        return;
    case ER_W_Q3_K: {
        uint32_t s[4];
        gg_k3_scales(b + 96, s);
        int8_t sc[16];
        memcpy(sc, s, 16);
        for (int e = 0; e < 256; e++) {
            const int h = e >> 7, fi = (e >> 5) & 3, l = e & 31;
            f->q[e] = (uint8_t)(((b[32 + 32 * h + l] >> (2 * fi)) & 3) | ((b[l] >> (4 * h + fi)) & 1) << 2);
        }
        for (int j = 0; j < 16; j++) f->sc[j] = sc[j], f->mn[j] = 4 * sc[j];
        f->dA = f->dB = er_f16_to_f32(gg_u16(b + 108));
        return;
    }
    case ER_W_Q4_K:
    case ER_W_Q5_K: {
        uint32_t w[4];
        gg_k4_scales(b + 4, &w[0], &w[1], &w[2], &w[3]);
        uint8_t sm[16];
        memcpy(sm, w, 16); /* sc[0..7], m[0..7] */
        const int q5 = type == ER_W_Q5_K;
        const uint8_t *qs = b + (q5 ? 48 : 16), *qh = b + 16;
        for (int e = 0; e < 256; e++) {
            const int j = e >> 5, l = e & 31;
            int v = (qs[32 * (j >> 1) + l] >> (4 * (j & 1))) & 15;
            if (q5) v |= ((qh[l] >> j) & 1) << 4;
            f->q[e] = (uint8_t)v;
        }
        for (int j = 0; j < 16; j++) f->sc[j] = sm[j >> 1], f->mn[j] = sm[8 + (j >> 1)];
        f->dA = er_f16_to_f32(gg_u16(b));
        f->dB = er_f16_to_f32(gg_u16(b + 2));
        return;
    }
    default: /* ER_W_Q6_K */
        for (int e = 0; e < 256; e++) {
            const int h = e >> 7, fi = (e >> 5) & 3, l = e & 31;
            const int lo = (b[64 * h + 32 * (fi & 1) + l] >> (4 * (fi >> 1))) & 15;
            f->q[e] = (uint8_t)(lo | ((b[128 + 32 * h + l] >> (2 * fi)) & 3) << 4);
        }
        for (int j = 0; j < 16; j++) f->sc[j] = (int8_t)b[192 + j], f->mn[j] = 32 * (int8_t)b[192 + j];
        f->dA = f->dB = er_f16_to_f32(gg_u16(b + 208));
        return;
    }
}

/* one 32-element block: codes q[32], w = fw * q + fm (q5_0: fm = -16 fw) */
static inline void gg_unpack_32(int type, const uint8_t *b, uint8_t q[32], float *fw, float *fm) {
    const float d = er_f16_to_f32(gg_u16(b));
    const uint8_t *qs = b + (type == ER_W_Q4_1 ? 4 : type == ER_W_Q5_0 ? 6 : 8);
    const uint32_t qh = type == ER_W_Q4_1 ? 0 : gg_u32(b + (type == ER_W_Q5_0 ? 2 : 4));
    for (int l = 0; l < 16; l++) {
        q[l] = (uint8_t)((qs[l] & 15) | ((qh >> l) & 1) << 4);
        q[l + 16] = (uint8_t)((qs[l] >> 4) | ((qh >> (l + 16)) & 1) << 4);
    }
    *fw = d;
    *fm = type == ER_W_Q5_0 ? -16.0f * d : er_f16_to_f32(gg_u16(b + 2));
}

/* ---- the job both kernel files run --------------------------------------------------------------- */

typedef struct {
    int64_t m, k;       /* tokens, K */
    int kq;             /* 1: Q8_K activations (K-quants), 0: Q8_0 (32-element formats) */
    int64_t ngrp;       /* groups of 256 activations per row (K-quants: super-blocks) */
    int64_t qstride;    /* bytes between token rows of q (ngrp * 256 + 64) */
    int8_t *q;          /* (m, qstride) natural order, zero past K */
    float *d;           /* kq: (m, ngrp) Q8_K scales; else (m, ngrp * 8) Q8_0 scales (0 past K) */
    float *s;           /* !kq: (m, ngrp * 8) d * sum(a) */
    int16_t *bs;        /* kq: (m, ngrp * 16) sums of 16 */
} gg_act;

typedef struct {
    const er_weight *w;
    const gg_act *a;
    float *y;           /* (m, w->n) */
} gg_job;

/* matmul_ggml.c: er_matmul / er_matmul_multi for these types (matmul.c dispatches here). multi returns 1 when
 * the weights do not share one activation kind (then the caller runs one er_matmul each). */
int er_matmul_ggml(const er_weight *w, const float *x, float *y, int64_t m);
int er_matmul_multi_ggml(const er_weight *const *ws, int nw, const float *x, float *const *ys, int64_t m);

#if defined(__aarch64__)
/* matmul_ggml_neon.c */
void er_gg_quant_row_neon(const float *x, int64_t k, int kq, int64_t ngrp, int8_t *q, float *d, float *s,
                          int16_t *bs);
void er_gg_rows_neon(const gg_job *j, int64_t n0, int64_t n1);
#endif

#endif
