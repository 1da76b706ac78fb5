/* Matmul kernels: y (m, N) = x (m, K) @ W^T for f32, f16 and block-quantized (MatMulNBits) W.
 *
 * Quantized path (the q8-activation scheme of llama.cpp's ggml_vec_dot_q4_0_q8_0):
 *   1. x is quantized per 32 values ("sub-block" t): sx[t] = amax/127, xq = round(x/sx[t]),
 *      stored in the ORDER the weight codes come out of a register unpack, so no shuffles:
 *        8 bits: natural;  4 bits: [even positions | odd positions]  (low | high nibbles)
 *        2 bits: [positions 4j | 4j+1 | 4j+2 | 4j+3] for j = 0..7     (shifts 0, 2, 4, 6)
 *      and xsb[b] = sum_{t in weight block b} sx[t] * sum(xq[t]) is kept for the zero points.
 *   2. per weight block b (scale sw, zero point z):
 *        y += sw * (sum_t sx[t] * dot_int(codes_t, xq_t)  -  z * xsb[b])
 *      8-bit codes are used as signed (code - 128) with z' = z - 128 so maddubs cannot overflow.
 *
 * GEMV (m == 1) streams each weight row once; GEMM (m > 1) runs a 4-row tile over every token
 * while the tile sits in L1. Rows are split across the thread pool.
 */
#include <math.h>
#include <stdlib.h>

#include "edgerun_kernels.h"
#include "er_internal.h"

#define SUB 32

/* ---- activation quantization ------------------------------------------------------------- */

static inline int perm_index(int bits, int i) {
    if (bits == 4) return (i & 1) * 16 + (i >> 1);
    if (bits == 2) return (i & 3) * 8 + (i >> 2);
    return i;
}

typedef struct {
    int8_t *q;   /* (m, kp) */
    float *sx;   /* (m, kp/32) */
    float *xsb;  /* (m, nb) */
    int64_t kp, nb;
} actq;

static void quantize_act_row(const float *x, int64_t k, int bits, int bs, int64_t nb, int8_t *q, float *sx,
                             float *xsb) {
    int64_t nsub = nb * bs / SUB;
    int per = bs / SUB;
    for (int64_t b = 0; b < nb; b++) xsb[b] = 0.0f;
    for (int64_t t = 0; t < nsub; t++) {
        float v[SUB];
        float amax = 0.0f;
        for (int i = 0; i < SUB; i++) {
            int64_t idx = t * SUB + i;
            v[i] = idx < k ? x[idx] : 0.0f;
            float a = fabsf(v[i]);
            amax = a > amax ? a : amax;
        }
        float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        int isum = 0;
        int8_t *qt = q + t * SUB;
        for (int i = 0; i < SUB; i++) {
            int r = (int)lrintf(v[i] * id);
            r = r > 127 ? 127 : (r < -127 ? -127 : r);
            qt[perm_index(bits, i)] = (int8_t)r;
            isum += r;
        }
        sx[t] = d;
        xsb[t / per] += d * (float)isum;
    }
}

static inline int zero_point(const uint8_t *zprow, int bits, int64_t b) {
    if (!zprow) return 1 << (bits - 1);
    int64_t bit = b * bits;
    return (zprow[bit >> 3] >> (bit & 7)) & ((1 << bits) - 1);
}

/* ---- scalar quantized row dot ------------------------------------------------------------ */

static float qdot_row_scalar(const er_weight *w, int64_t n, const int8_t *q, const float *sx, const float *xsb) {
    const int bits = w->bits, bs = w->block_size, per = bs / SUB, sub_bytes = SUB * bits / 8;
    const int64_t nb = (w->k + bs - 1) / bs;
    const uint8_t *row = (const uint8_t *)w->data + n * nb * (bs * bits / 8);
    const uint16_t *srow = w->scales + n * nb;
    const uint8_t *zprow = w->zero_points ? w->zero_points + n * ((nb * bits + 7) / 8) : NULL;
    float acc = 0.0f, corr = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        float sw = er_f16_to_f32(srow[b]);
        int z = zero_point(zprow, bits, b) - (bits == 8 ? 128 : 0);
        float blk = 0.0f;
        for (int t = 0; t < per; t++) {
            int64_t st = b * per + t;
            const uint8_t *p = row + st * sub_bytes;
            const int8_t *qt = q + st * SUB;
            int32_t dot = 0;
            if (bits == 8) {
                for (int i = 0; i < SUB; i++) dot += ((int)p[i] - 128) * qt[i];
            } else if (bits == 4) {
                for (int j = 0; j < 16; j++) dot += (p[j] & 15) * qt[j] + (p[j] >> 4) * qt[16 + j];
            } else {
                for (int s = 0; s < 4; s++)
                    for (int j = 0; j < 8; j++) dot += ((p[j] >> (2 * s)) & 3) * qt[s * 8 + j];
            }
            blk += sx[st] * (float)dot;
        }
        acc += sw * blk;
        corr += sw * (float)z * xsb[b];
    }
    return acc - corr;
}

/* ---- AVX2 quantized dot over R rows ------------------------------------------------------ */
#if ER_X86

ER_AVX2 static inline __m256i unpack32(const uint8_t *p, int bits) {
    if (bits == 8) return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), _mm256_set1_epi8((char)0x80));
    if (bits == 4) {
        __m128i b = _mm_loadu_si128((const __m128i *)p);
        __m128i m = _mm_set1_epi8(0x0f);
        __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
        return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
    }
    uint64_t v;
    memcpy(&v, p, 8);
    __m256i b = _mm256_srlv_epi64(_mm256_set1_epi64x((long long)v), _mm256_setr_epi64x(0, 2, 4, 6));
    return _mm256_and_si256(b, _mm256_set1_epi8(3));
}

ER_AVX2 static inline __m256i idot32(__m256i c, __m256i qa, int bits) {
    __m256i prod;
    if (bits == 8) prod = _mm256_maddubs_epi16(_mm256_sign_epi8(c, c), _mm256_sign_epi8(qa, c));
    else prod = _mm256_maddubs_epi16(c, qa);
    return _mm256_madd_epi16(prod, _mm256_set1_epi16(1));
}

ER_AVX2 static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* y[r] for rows n0..n0+R-1 against one quantized activation row */
#define QDOT_AVX2(R, BITS)                                                                                   \
    ER_AVX2 static void qdot_avx2_r##R##_b##BITS(const er_weight *w, int64_t n0, const int8_t *q,          \
                                                 const float *sx, const float *xsb, float *y) {            \
        const int bits = BITS, bs = w->block_size, per = bs / SUB, sub_bytes = SUB * BITS / 8;             \
        const int64_t nb = (w->k + bs - 1) / bs, row_bytes = nb * (bs * BITS / 8);                         \
        const int64_t zp_bytes = (nb * BITS + 7) / 8;                                                      \
        const uint8_t *rows[R];                                                                            \
        const uint16_t *srow[R];                                                                           \
        const uint8_t *zrow[R];                                                                            \
        __m256 acc[R];                                                                                     \
        float corr[R];                                                                                     \
        for (int r = 0; r < R; r++) {                                                                      \
            rows[r] = (const uint8_t *)w->data + (n0 + r) * row_bytes;                                     \
            srow[r] = w->scales + (n0 + r) * nb;                                                           \
            zrow[r] = w->zero_points ? w->zero_points + (n0 + r) * zp_bytes : NULL;                         \
            acc[r] = _mm256_setzero_ps();                                                                  \
            corr[r] = 0.0f;                                                                                \
        }                                                                                                  \
        for (int64_t b = 0; b < nb; b++) {                                                                 \
            float sw[R];                                                                                   \
            for (int r = 0; r < R; r++) {                                                                  \
                sw[r] = _cvtsh_ss(srow[r][b]);                                                             \
                int z = zero_point(zrow[r], bits, b) - (bits == 8 ? 128 : 0);                              \
                corr[r] += sw[r] * (float)z * xsb[b];                                                      \
            }                                                                                              \
            for (int t = 0; t < per; t++) {                                                                \
                const int64_t st = b * per + t;                                                            \
                const __m256i qa = _mm256_loadu_si256((const __m256i *)(q + st * SUB));                   \
                const float d = sx[st];                                                                    \
                for (int r = 0; r < R; r++) {                                                              \
                    __m256i c = unpack32(rows[r] + st * sub_bytes, bits);                                  \
                    __m256 f = _mm256_cvtepi32_ps(idot32(c, qa, bits));                                    \
                    acc[r] = _mm256_fmadd_ps(f, _mm256_set1_ps(d * sw[r]), acc[r]);                         \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
        for (int r = 0; r < R; r++) y[r] = hsum256(acc[r]) - corr[r];                                      \
    }
QDOT_AVX2(1, 2)
QDOT_AVX2(1, 4)
QDOT_AVX2(1, 8)
QDOT_AVX2(4, 2)
QDOT_AVX2(4, 4)
QDOT_AVX2(4, 8)

typedef void (*qdot_fn)(const er_weight *, int64_t, const int8_t *, const float *, const float *, float *);
static qdot_fn qdot_avx2(int rows, int bits) {
    if (rows == 4) return bits == 2 ? qdot_avx2_r4_b2 : bits == 4 ? qdot_avx2_r4_b4 : qdot_avx2_r4_b8;
    return bits == 2 ? qdot_avx2_r1_b2 : bits == 4 ? qdot_avx2_r1_b4 : qdot_avx2_r1_b8;
}

/* ---- AVX2 float rows ---------------------------------------------------------------------- */

ER_AVX2 static inline __m256 load8(const void *base, int f16, int64_t i) {
    if (f16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + i)));
    return _mm256_loadu_ps((const float *)base + i);
}

ER_AVX2 static void fdot_avx2(const er_weight *w, int64_t n0, int R, const float *x, float *y) {
    const int f16 = w->type == ER_W_F16;
    const int64_t k = w->k, es = f16 ? 2 : 4;
    const char *base = (const char *)w->data;
    if (R == 4) {
        const void *r0 = base + (n0 + 0) * k * es, *r1 = base + (n0 + 1) * k * es;
        const void *r2 = base + (n0 + 2) * k * es, *r3 = base + (n0 + 3) * k * es;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int64_t i = 0;
        for (; i + 8 <= k; i += 8) {
            __m256 xv = _mm256_loadu_ps(x + i);
            a0 = _mm256_fmadd_ps(load8(r0, f16, i), xv, a0);
            a1 = _mm256_fmadd_ps(load8(r1, f16, i), xv, a1);
            a2 = _mm256_fmadd_ps(load8(r2, f16, i), xv, a2);
            a3 = _mm256_fmadd_ps(load8(r3, f16, i), xv, a3);
        }
        float s[4] = {hsum256(a0), hsum256(a1), hsum256(a2), hsum256(a3)};
        const void *rr[4] = {r0, r1, r2, r3};
        for (; i < k; i++)
            for (int r = 0; r < 4; r++)
                s[r] += (f16 ? er_f16_to_f32(((const uint16_t *)rr[r])[i]) : ((const float *)rr[r])[i]) * x[i];
        for (int r = 0; r < 4; r++) y[r] = s[r];
        return;
    }
    const void *r0 = base + n0 * k * es;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        a0 = _mm256_fmadd_ps(load8(r0, f16, i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(load8(r0, f16, i + 8), _mm256_loadu_ps(x + i + 8), a1);
    }
    for (; i + 8 <= k; i += 8) a0 = _mm256_fmadd_ps(load8(r0, f16, i), _mm256_loadu_ps(x + i), a0);
    float s = hsum256(_mm256_add_ps(a0, a1));
    for (; i < k; i++) s += (f16 ? er_f16_to_f32(((const uint16_t *)r0)[i]) : ((const float *)r0)[i]) * x[i];
    y[0] = s;
}
#endif /* ER_X86 */

/* ---- scalar float rows -------------------------------------------------------------------- */

static void fdot_scalar(const er_weight *w, int64_t n0, int R, const float *x, float *y) {
    const int64_t k = w->k;
    for (int r = 0; r < R; r++) {
        float s = 0.0f;
        if (w->type == ER_W_F16) {
            const uint16_t *row = (const uint16_t *)w->data + (n0 + r) * k;
            for (int64_t i = 0; i < k; i++) s += er_f16_to_f32(row[i]) * x[i];
        } else {
            const float *row = (const float *)w->data + (n0 + r) * k;
            for (int64_t i = 0; i < k; i++) s += row[i] * x[i];
        }
        y[r] = s;
    }
}

/* ---- the parallel task -------------------------------------------------------------------- */

typedef struct {
    const er_weight *w;
    const float *x;
    float *y;
    int64_t m;
    actq a;
    int isa;
} mm_ctx;

static void mm_task(void *vctx, int64_t start, int64_t end, int tid) {
    (void)tid;
    mm_ctx *c = (mm_ctx *)vctx;
    const er_weight *w = c->w;
    const int64_t N = w->n;
    float tmp[4];
    for (int64_t n = start; n < end;) {
        int R = (end - n >= 4) ? 4 : 1;
        for (int64_t t = 0; t < c->m; t++) {
            float *yt = c->y + t * N + n;
            if (w->type == ER_W_Q) {
                const int8_t *q = c->a.q + t * c->a.kp;
                const float *sx = c->a.sx + t * (c->a.kp / SUB);
                const float *xsb = c->a.xsb + t * c->a.nb;
#if ER_X86
                if (c->isa == ER_ISA_AVX2) {
                    qdot_avx2(R, w->bits)(w, n, q, sx, xsb, tmp);
                    for (int r = 0; r < R; r++) yt[r] = tmp[r];
                    continue;
                }
#endif
                for (int r = 0; r < R; r++) yt[r] = qdot_row_scalar(w, n + r, q, sx, xsb);
            } else {
                const float *xt = c->x + t * w->k;
#if ER_X86
                if (c->isa == ER_ISA_AVX2) {
                    fdot_avx2(w, n, R, xt, yt);
                    continue;
                }
#endif
                fdot_scalar(w, n, R, xt, yt);
            }
        }
        n += R;
    }
}

int er_matmul(const er_weight *w, const float *x, float *y, int64_t m) {
    if (!w || !x || !y || m < 1 || w->n < 1 || w->k < 1 || !w->data) return -1;
    mm_ctx c = {.w = w, .x = x, .y = y, .m = m, .isa = er_get_isa()};
    void *buf = NULL;
    if (w->type == ER_W_Q) {
        const int bits = w->bits, bs = w->block_size;
        if (!(bits == 2 || bits == 4 || bits == 8) || bs < SUB || (bs & (bs - 1)) || !w->scales) return -2;
        int64_t nb = (w->k + bs - 1) / bs, kp = nb * bs;
        size_t qbytes = (size_t)(m * kp + 63) & ~(size_t)63;
        buf = aligned_alloc(64, qbytes + sizeof(float) * (size_t)(m * (kp / SUB) + m * nb) + 64);
        if (!buf) return -3;
        c.a.q = (int8_t *)buf;
        c.a.sx = (float *)((char *)buf + qbytes);
        c.a.xsb = c.a.sx + m * (kp / SUB);
        c.a.kp = kp;
        c.a.nb = nb;
        for (int64_t t = 0; t < m; t++)
            quantize_act_row(x + t * w->k, w->k, bits, bs, nb, c.a.q + t * kp, c.a.sx + t * (kp / SUB),
                             c.a.xsb + t * nb);
    } else if (w->type != ER_W_F32 && w->type != ER_W_F16) {
        return -2;
    }
    /* grain 16 rows: whole cache lines of y per thread */
    er_parallel_for(w->n, 16, mm_task, &c);
    free(buf);
    return 0;
}
