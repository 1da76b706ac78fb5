/* Matmul kernels: y (m, N) = x (m, K) @ W^T for f32, f16 and block-quantized (MatMulNBits) W.
 *
 * Quantized path (the q8-activation scheme of llama.cpp's ggml_vec_dot_q4_0_q8_0):
 *   1. x is quantized per 32 values ("sub-block" t) as llama.cpp's quantize_row_q8_0 does:
 *      sx[t] = fp16(amax/127), xq = round_half_even(x * 127/amax); for 2-bit weights in blocks of
 *      256 as its quantize_row_q8_K (one f32 scale per 256, the activations of its TQ2_0 dot);
 *      isum[t] = sum(xq), stored in the ORDER the weight codes come out of a register unpack
 *      (see q_index: low/high nibbles of 32 bytes, 2-bit fields of 32 bytes), so no shuffles.
 *   2. y = sum_t sw[b(t)] * sx[t] * (dot_int(codes_t, xq_t) - z[b(t)] * isum[t])
 *      8 sub-blocks at a time: 8 integer dots reduced into one vector (lane = sub-block), the
 *      zero-point term in integers, one FMA with the vector sx * sw per 256 weights.
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
#define ER_INLINE inline __attribute__((always_inline))

/* ---- activation quantization ------------------------------------------------------------- */

/* Index in the quantized activation row of natural element i (0..31) of sub-block t.
 * Sub-blocks t < nmain (whole groups of 8 = 256 values) use the wide layouts the AVX2 group
 * kernel unpacks into; the tail uses 32-wide layouts. Scalar code uses the same layout. */
static inline int64_t q_index(int bits, int64_t nmain, int64_t t, int i) {
    if (bits == 8) return t * SUB + i;
    if (t < nmain) {
        if (bits == 4) { /* pairs of sub-blocks: [sub0 even | sub1 even | sub0 odd | sub1 odd] */
            int64_t base = (t >> 1) * 64;
            int sub = (int)(t & 1);
            return base + (i & 1) * 32 + sub * 16 + (i >> 1);
        }
        /* bits == 2: quads of sub-blocks: element e (0..127) at (e % 4) * 32 + e / 4 */
        int64_t base = (t >> 2) * 128;
        int e = (int)(t & 3) * 32 + i;
        return base + (e & 3) * 32 + (e >> 2);
    }
    if (bits == 4) return t * SUB + (i & 1) * 16 + (i >> 1);
    return t * SUB + (i & 3) * 8 + (i >> 2);
}

typedef struct {
    int8_t *q;     /* (m, kp) */
    float *sx;     /* (m, nsub) */
    int32_t *isum; /* (m, nsub) */
    int64_t kp, nsub, nmain;
    int32_t zshift[8] __attribute__((aligned(32))); /* (t / per) * bits: zero-point field shifts */
} actq;

/* llama.cpp's quantize_row_q8_0 per sub-block of 32: d = amax/127 stored as fp16 (the dot uses the
 * fp16-rounded d), id = 127/amax, q = round-half-even(x * id). */
static void quantize_sub_q8_0(const float *v, float *d_out, float *id_out) {
    float amax = 0.0f;
    for (int i = 0; i < SUB; i++) {
        float a = fabsf(v[i]);
        amax = a > amax ? a : amax;
    }
    *d_out = er_f16_to_f32(er_f32_to_f16(amax / 127.0f));
    *id_out = amax != 0.0f ? 127.0f / amax : 0.0f;
}

/* llama.cpp's quantize_row_q8_K_ref on 256 values (the activation type of its TQ2_0 dot): max = the
 * value of largest magnitude (first one on ties), iscale = -127/max, q = min(127, nearest(iscale*x)),
 * d = 1/iscale in f32. */
static void quantize_blk_q8_k(const float *v, float *d_out, float *id_out) {
    float amax = 0.0f, max = 0.0f;
    for (int i = 0; i < 256; i++) {
        float a = fabsf(v[i]);
        if (a > amax) {
            amax = a;
            max = v[i];
        }
    }
    if (amax == 0.0f) {
        *d_out = 0.0f;
        *id_out = 0.0f;
        return;
    }
    const float iscale = -127.0f / max;
    *d_out = 1.0f / iscale;
    *id_out = iscale;
}

/* One activation row: per-32 Q8_0 scales, or (q8k) one Q8_K scale per 256 values repeated over its
 * 8 sub-blocks (k padded to kp = nsub * 32, a multiple of 256 in that mode). */
static void quantize_act_row(const float *x, int64_t k, int bits, int64_t nsub, int64_t nmain, int q8k,
                             int8_t *q, float *sx, int32_t *isum) {
    const int span = q8k ? 256 : SUB;
    float v[256];
    for (int64_t t0 = 0; t0 < nsub; t0 += span / SUB) {
        for (int i = 0; i < span; i++) {
            int64_t idx = t0 * SUB + i;
            v[i] = idx < k ? x[idx] : 0.0f;
        }
        float d, id;
        if (q8k) quantize_blk_q8_k(v, &d, &id);
        else quantize_sub_q8_0(v, &d, &id);
        for (int64_t t = t0; t < t0 + span / SUB; t++) {
            int s = 0;
            for (int i = 0; i < SUB; i++) {
                int r = (int)lrintf(v[(t - t0) * SUB + i] * id); /* default mode: nearest even */
                r = r > 127 ? 127 : (r < -127 ? -127 : r);
                q[q_index(bits, nmain, t, i)] = (int8_t)r;
                s += r;
            }
            sx[t] = d;
            isum[t] = s;
        }
    }
}

static inline int zero_point(const uint8_t *zprow, int bits, int64_t b) {
    if (!zprow) return 1 << (bits - 1);
    int64_t bit = b * bits;
    return (zprow[bit >> 3] >> (bit & 7)) & ((1 << bits) - 1);
}

/* code of natural element i of sub-block t, as used in the dot (8 bits: signed code - 128) */
static inline int wcode(const uint8_t *row, int bits, int64_t t, int i) {
    int64_t e = t * SUB + i;
    if (bits == 8) return (int)row[e] - 128;
    if (bits == 4) return (row[e >> 1] >> ((e & 1) * 4)) & 15;
    return (row[e >> 2] >> ((e & 3) * 2)) & 3;
}

/* ---- scalar quantized row dot ------------------------------------------------------------ */
/* y = sum_t sw[b(t)] * sx[t] * (sum_i code_i q_i - z[b(t)] * isum[t]) */
static float qdot_row_scalar(const er_weight *w, int64_t n, const actq *a, int64_t tok) {
    const int bits = w->bits, bs = w->block_size, per = bs / SUB;
    const int64_t nb = (w->k + bs - 1) / bs, nsub = a->nsub;
    const uint8_t *row = (const uint8_t *)w->data + n * nb * (bs * bits / 8);
    const uint16_t *srow = w->scales + n * nb;
    const uint8_t *zprow = w->zero_points ? w->zero_points + n * ((nb * bits + 7) / 8) : NULL;
    const int8_t *q = a->q + tok * a->kp;
    const float *sx = a->sx + tok * nsub;
    const int32_t *isum = a->isum + tok * nsub;
    float acc = 0.0f;
    for (int64_t t = 0; t < nsub; t++) {
        int64_t b = t / per;
        int z = zero_point(zprow, bits, b) - (bits == 8 ? 128 : 0);
        int32_t dot = 0;
        for (int i = 0; i < SUB; i++) dot += wcode(row, bits, t, i) * q[q_index(bits, a->nmain, t, i)];
        acc += er_f16_to_f32(srow[b]) * sx[t] * (float)(dot - z * isum[t]);
    }
    return acc;
}

/* ---- AVX2 quantized row dot --------------------------------------------------------------- */
#if ER_X86

ER_AVX2 static ER_INLINE __m256i unpack32(const uint8_t *p, int bits) { /* tail sub-blocks */
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

ER_AVX2 static ER_INLINE __m256i dot_u8s8(__m256i c, __m256i qa) { /* c unsigned codes */
    return _mm256_madd_epi16(_mm256_maddubs_epi16(c, qa), _mm256_set1_epi16(1));
}

ER_AVX2 static ER_INLINE __m256i dot_s8s8(__m256i c, __m256i qa) { /* c signed, |c|*|q|*2 < 2^15 */
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(c, c), _mm256_sign_epi8(qa, c)),
                             _mm256_set1_epi16(1));
}

ER_AVX2 static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* integer dots of 8 consecutive sub-blocks (256 weights) -> lane t = dot of sub-block t */
ER_AVX2 static ER_INLINE __m256i group_dots(const uint8_t *p, const int8_t *q, int bits) {
    if (bits == 4) { /* 128 bytes: 4 pairs; each pair -> lanes 0-3 sub0, 4-7 sub1 */
        const __m256i m = _mm256_set1_epi8(0x0f);
        __m256i v[4];
        for (int j = 0; j < 4; j++) {
            __m256i b = _mm256_loadu_si256((const __m256i *)(p + 32 * j));
            __m256i lo = _mm256_and_si256(b, m), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m);
            v[j] = _mm256_add_epi32(dot_u8s8(lo, _mm256_loadu_si256((const __m256i *)(q + 64 * j))),
                                    dot_u8s8(hi, _mm256_loadu_si256((const __m256i *)(q + 64 * j + 32))));
        }
        __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        /* h = [s0 s2 s4 s6 | s1 s3 s5 s7] */
        return _mm256_permutevar8x32_epi32(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    }
    if (bits == 2) { /* 64 bytes: 2 quads; a quad -> lanes (0,1) sub0 ... (6,7) sub3 */
        const __m256i m = _mm256_set1_epi8(3);
        __m256i v[2];
        for (int j = 0; j < 2; j++) {
            __m256i b = _mm256_loadu_si256((const __m256i *)(p + 32 * j));
            const int8_t *qq = q + 128 * j;
            __m256i s0 = dot_u8s8(_mm256_and_si256(b, m), _mm256_loadu_si256((const __m256i *)qq));
            __m256i s1 = dot_u8s8(_mm256_and_si256(_mm256_srli_epi16(b, 2), m),
                                  _mm256_loadu_si256((const __m256i *)(qq + 32)));
            __m256i s2 = dot_u8s8(_mm256_and_si256(_mm256_srli_epi16(b, 4), m),
                                  _mm256_loadu_si256((const __m256i *)(qq + 64)));
            __m256i s3 = dot_u8s8(_mm256_and_si256(_mm256_srli_epi16(b, 6), m),
                                  _mm256_loadu_si256((const __m256i *)(qq + 96)));
            v[j] = _mm256_add_epi32(_mm256_add_epi32(s0, s1), _mm256_add_epi32(s2, s3));
        }
        __m256i h = _mm256_hadd_epi32(v[0], v[1]); /* [a0 a1 b0 b1 | a2 a3 b2 b3] */
        return _mm256_permutevar8x32_epi32(h, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7));
    }
    const __m256i x80 = _mm256_set1_epi8((char)0x80);
    __m256i v[8];
    for (int j = 0; j < 8; j++) {
        __m256i c = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 32 * j)), x80);
        v[j] = dot_s8s8(c, _mm256_loadu_si256((const __m256i *)(q + 32 * j)));
    }
    __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20), _mm256_permute2x128_si256(h0, h1, 0x31));
}

/* per-sub-block weight scales of a group starting at block b0 (per = sub-blocks per block) */
ER_AVX2 static ER_INLINE __m256 group_scales(const uint16_t *s, int per) {
    if (per == 1) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)s));
    if (per == 2) {
        __m128 v = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)s));
        return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(v), _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
    }
    if (per == 4) {
        return _mm256_setr_m128(_mm_set1_ps(_cvtsh_ss(s[0])), _mm_set1_ps(_cvtsh_ss(s[1])));
    }
    return _mm256_set1_ps(_cvtsh_ss(s[0]));
}

ER_AVX2 static ER_INLINE float qdot_row_avx2(const er_weight *w, int64_t n, const actq *a, int64_t tok,
                                           const int bits) {
    const int bs = w->block_size, per = bs / SUB, sub_bytes = SUB * bits / 8;
    const int64_t nb = (w->k + bs - 1) / bs, nsub = a->nsub, nmain = a->nmain;
    const int64_t zp_bytes = (nb * bits + 7) / 8;
    const uint8_t *row = (const uint8_t *)w->data + n * nb * (bs * bits / 8);
    const uint16_t *srow = w->scales + n * nb;
    const uint8_t *zprow = w->zero_points ? w->zero_points + n * zp_bytes : NULL;
    const int8_t *q = a->q + tok * a->kp;
    const float *sx = a->sx + tok * nsub;
    const int32_t *isum = a->isum + tok * nsub;
    const int zadj = bits == 8 ? 128 : 0;
    __m256 acc = _mm256_setzero_ps();
    __m256i zdef = _mm256_set1_epi32((1 << (bits - 1)) - zadj);
    /* shift of sub-block t's zero point inside a 32-bit load at the group's first block */
    const __m256i zshift = _mm256_load_si256((const __m256i *)a->zshift), zmask = _mm256_set1_epi32((1 << bits) - 1);
    for (int64_t t0 = 0; t0 < nmain; t0 += 8) {
        const int64_t b0 = t0 / per;
        __m256i dots = group_dots(row + t0 * sub_bytes, q + t0 * SUB, bits);
        __m256i z = zdef;
        if (zprow) {
            if (per >= 8) {
                z = _mm256_set1_epi32(zero_point(zprow, bits, b0) - zadj);
            } else if (bits == 8) {
                int32_t zz[8];
                for (int t = 0; t < 8; t++) zz[t] = zero_point(zprow, bits, (t0 + t) / per) - zadj;
                z = _mm256_loadu_si256((const __m256i *)zz);
            } else {
                int64_t bit = b0 * bits, byte = bit >> 3;
                uint32_t word = 0;
                if (byte + 4 <= zp_bytes) memcpy(&word, zprow + byte, 4); /* one load */
                else for (int64_t i = byte; i < zp_bytes; i++) word |= (uint32_t)zprow[i] << (8 * (i - byte));
                __m256i sh = _mm256_add_epi32(zshift, _mm256_set1_epi32((int)(bit & 7)));
                z = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)word), sh), zmask);
            }
        }
        __m256i isv = _mm256_loadu_si256((const __m256i *)(isum + t0));
        __m256i idot = _mm256_sub_epi32(dots, _mm256_mullo_epi32(z, isv));
        __m256 scale = _mm256_mul_ps(_mm256_loadu_ps(sx + t0), group_scales(srow + b0, per));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(idot), scale, acc);
    }
    float y = hsum256(acc);
    for (int64_t t = nmain; t < nsub; t++) { /* tail: fewer than 8 sub-blocks */
        const int64_t b = t / per;
        __m256i c = unpack32(row + t * sub_bytes, bits);
        __m256i qa = _mm256_loadu_si256((const __m256i *)(q + t * SUB));
        __m256i d = bits == 8 ? dot_s8s8(c, qa) : dot_u8s8(c, qa);
        __m128i d4 = _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1));
        d4 = _mm_hadd_epi32(d4, d4);
        d4 = _mm_hadd_epi32(d4, d4);
        int z = zero_point(zprow, bits, b) - zadj;
        y += _cvtsh_ss(srow[b]) * sx[t] * (float)(_mm_cvtsi128_si32(d4) - z * isum[t]);
    }
    return y;
}

ER_AVX2 static float qdot_row_avx2_b2(const er_weight *w, int64_t n, const actq *a, int64_t t) {
    return qdot_row_avx2(w, n, a, t, 2);
}
ER_AVX2 static float qdot_row_avx2_b4(const er_weight *w, int64_t n, const actq *a, int64_t t) {
    return qdot_row_avx2(w, n, a, t, 4);
}
ER_AVX2 static float qdot_row_avx2_b8(const er_weight *w, int64_t n, const actq *a, int64_t t) {
    return qdot_row_avx2(w, n, a, t, 8);
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
    for (int64_t n = start; n < end;) {
        int R = (end - n >= 4) ? 4 : 1;
        for (int64_t t = 0; t < c->m; t++) {
            float *yt = c->y + t * N + n;
            if (w->type == ER_W_Q) {
#if ER_X86
                if (c->isa == ER_ISA_AVX2) {
                    float (*f)(const er_weight *, int64_t, const actq *, int64_t) =
                        w->bits == 2 ? qdot_row_avx2_b2 : w->bits == 4 ? qdot_row_avx2_b4 : qdot_row_avx2_b8;
                    for (int r = 0; r < R; r++) yt[r] = f(w, n + r, &c->a, t);
                    continue;
                }
#endif
                for (int r = 0; r < R; r++) yt[r] = qdot_row_scalar(w, n + r, &c->a, t);
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
        int64_t nb = (w->k + bs - 1) / bs, kp = nb * bs, nsub = kp / SUB;
        size_t qbytes = (size_t)(m * kp + 63) & ~(size_t)63;
        buf = aligned_alloc(64, qbytes + 2 * sizeof(float) * (size_t)(m * nsub) + 64);
        if (!buf) return -3;
        c.a.q = (int8_t *)buf;
        c.a.sx = (float *)((char *)buf + qbytes);
        c.a.isum = (int32_t *)(c.a.sx + m * nsub);
        c.a.kp = kp;
        c.a.nsub = nsub;
        c.a.nmain = nsub - nsub % 8;
        for (int t = 0; t < 8; t++) c.a.zshift[t] = (t / (bs / SUB)) * bits;
        /* 2-bit (ternary) weights in blocks of 256: llama.cpp's TQ2_0 x Q8_K activations */
        const int q8k = bits == 2 && bs % 256 == 0;
        for (int64_t t = 0; t < m; t++)
            quantize_act_row(x + t * w->k, w->k, bits, nsub, c.a.nmain, q8k, c.a.q + t * kp, c.a.sx + t * nsub,
                             c.a.isum + t * nsub);
    } else if (w->type != ER_W_F32 && w->type != ER_W_F16) {
        return -2;
    }
    /* grain 16 rows: whole cache lines of y per thread */
    er_parallel_for(w->n, 16, mm_task, &c);
    free(buf);
    return 0;
}
