/* Attention straight over the KIVI int8/int4/int2 KV cache (er_kivi, edgerun_kernels.h), the store into it, and
 * the fused decode layer over it. Numpy reference: kernels/reference.py kivi_attention / kivi_store.
 *
 * The keys a query sees are walked as segments: the sinks (f16, scored with the query at its in-cache position),
 * each quantized ring group (G tokens), the f16 residual, then the new block (f32) in tiles of KV_TILE rows.
 * A segment's keys are made f32 in one L1 tile (f16 converted; codes unpacked and dequantized, x = code * s + m,
 * per channel for keys, per token and channel group for values) that all query heads of the kv head then read:
 * scores, an online softmax (running max m, sum l, output o rescaled when m grows), values the same way.
 * Decode (T = 1) splits a kv head's segments into chunks run by different threads; the partial (m, l, o) are
 * merged at the end: o = sum_c o_c e^(m_c - M) / sum_c l_c e^(m_c - M).
 *
 * The store quantizes a full residual with exactly quant/kv.py's float32 arithmetic (scale = f16((hi - lo) / qmax),
 * min = f16(lo), code = clip(rint((x - min) / scale)); int8 values symmetric: scale = f16(max|x| / 127), code =
 * rint(x / scale) + 128, no min stored, the kernels use min = -128 * scale), so C and numpy writes give identical
 * bytes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "edgerun_kernels.h"
#include "er_internal.h"
#include "er_kv.h"

#define KV_TILE 64 /* rows per segment tile; a quantized group (G) and the sinks must fit */
#define KV_MAXG 64 /* query heads per kv head */
#define KV_SEGS_PER_CHUNK 8
#define KV_QROWS 48 /* (query, head) rows of a prefill item: they share every dequantized tile */
#define KV_SYM_QMAX 127    /* int8 values are symmetric: code = rint(x / s) + 128, s = max|x| / 127, no min stored */
#define KV_SYM_ZERO 128
#define KV_MAX_VGROUPS 16  /* value channel groups per row (hd / vgroup) when the mins are implicit */

/* ---- scalar ops ------------------------------------------------------------------------------------ */

static void qk_scalar(const float *q, const float *rows, int64_t n, int64_t d, float *sc) {
    for (int64_t j = 0; j < n; j++) {
        float s = 0.0f;
        for (int64_t i = 0; i < d; i++) s += q[i] * rows[j * d + i];
        sc[j] = s;
    }
}

static void pv_scalar(float *o, const float *p, const float *rows, int64_t n, int64_t d) {
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < d; i++) o[i] += p[j] * rows[j * d + i];
}

static float exp_sum_scalar(float *s, int64_t n, float mx) {
    float sum = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        s[j] = expf(s[j] - mx);
        sum += s[j];
    }
    return sum;
}

static void scale_scalar(float *o, int64_t n, float r) {
    for (int64_t i = 0; i < n; i++) o[i] *= r;
}

static void f16_row_scalar(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = er_f16_to_f32(src[i]);
}

static inline int code_at(const uint8_t *packed, int bits, int64_t i) {
    if (bits == 8) return packed[i];
    const int per = 8 / bits;
    return (packed[i / per] >> ((i % per) * bits)) & ((1 << bits) - 1);
}

static void deq_keys_scalar(const uint8_t *packed, int bits, int64_t pb, const float *s, const float *m, int64_t n,
                            int64_t d, float *dst) {
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < d; i++) dst[j * d + i] = (float)code_at(packed + j * pb, bits, i) * s[i] + m[i];
}

static void deq_values_scalar(const uint8_t *packed, int bits, int64_t pb, const uint16_t *vs, const uint16_t *vm,
                              int64_t vg, int64_t n, int64_t d, float *dst) {
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < d; i++)
            dst[j * d + i] = (float)code_at(packed + j * pb, bits, i) * er_f16_to_f32(vs[(i / vg) * n + j]) +
                             er_f16_to_f32(vm[(i / vg) * n + j]);
}

/* every ISA's q_prep rounds the same products the same way: the same qi */
static void q_prep_scalar(const float *q, int64_t gq, int64_t d, const float *s, const float *m, int bits, int16_t *qi,
                          er_kv_qg *qg) {
    const float zc = (float)(1 << (bits - 1));
    for (int64_t g = 0; g < gq; g++) {
        const float *qh = q + g * d;
        float mx = 0.0f, sq = 0.0f, sm = 0.0f;
        for (int64_t i = 0; i < d; i++) {
            const float v = qh[i] * s[i];
            mx = fabsf(v) > mx ? fabsf(v) : mx;
            sq += v;
            sm += qh[i] * m[i];
        }
        const float inv = mx > 0.0f ? (float)KV_QMAX / mx : 0.0f;
        int32_t zs = 0;
        for (int64_t i = 0; i < d; i++) {
            const int v = (int)rintf(qh[i] * s[i] * inv);
            qi[g * d + i] = (int16_t)v;
            zs += v;
        }
        qg[g].d = mx / (float)KV_QMAX;
        qg[g].off = sm + zc * sq;
        qg[g].zsum = (1 << (bits - 1)) * zs;
    }
}

static void qk_codes_scalar(const int16_t *qi, const er_kv_qg *qg, int64_t gq, const uint8_t *packed, int bits,
                            int64_t pb, int64_t n, int64_t d, float *sc, int64_t ss) {
    const int zc = 1 << (bits - 1);
    for (int64_t g = 0; g < gq; g++)
        for (int64_t j = 0; j < n; j++) {
            int32_t acc = 0;
            for (int64_t i = 0; i < d; i++) acc += (int32_t)qi[g * d + i] * (code_at(packed + j * pb, bits, i) - zc);
            sc[g * ss + j] = qg[g].d * (float)acc + qg[g].off;
        }
}

static void pv_codes_scalar(float *o, int64_t gq, const float *p, int64_t ps, const uint8_t *packed, int bits,
                            int64_t pb, const float *vs, const float *vm, int64_t vg, int64_t n, int64_t d) {
    for (int64_t g = 0; g < gq; g++)
        for (int64_t j = 0; j < n; j++) {
            const float pj = p[g * ps + j];
            if (pj == 0.0f) continue; /* masked */
            for (int64_t i = 0; i < d; i++)
                o[g * d + i] += pj * ((float)code_at(packed + j * pb, bits, i) * vs[(i / vg) * n + j] + vm[(i / vg) * n + j]);
        }
}

static float vmax_scalar(const float *s, int64_t n, float m) {
    for (int64_t j = 0; j < n; j++) m = s[j] > m ? s[j] : m;
    return m;
}

static const er_kv_ops kv_ops_scalar = {qk_scalar,       pv_scalar,         exp_sum_scalar, scale_scalar,
                                        f16_row_scalar,  deq_keys_scalar,   deq_values_scalar,
                                        q_prep_scalar,   qk_codes_scalar,   pv_codes_scalar,
                                        vmax_scalar,     NULL,              NULL};

/* ---- AVX2 ops -------------------------------------------------------------------------------------- */
#if ER_X86
ER_AVX2 static void qk_avx2(const float *q, const float *rows, int64_t n, int64_t d, float *sc) {
    int64_t j = 0;
    if (d % 8 == 0)
        for (; j + 8 <= n; j += 8) { /* 8 keys at once, their 8 accumulators reduced together */
            __m256 a[8];
            for (int r = 0; r < 8; r++) a[r] = _mm256_setzero_ps();
            for (int64_t i = 0; i < d; i += 8) {
                __m256 qv = _mm256_loadu_ps(q + i);
                for (int r = 0; r < 8; r++) a[r] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(rows + (j + r) * d + i), a[r]);
            }
            __m256 u01 = _mm256_add_ps(_mm256_unpacklo_ps(a[0], a[1]), _mm256_unpackhi_ps(a[0], a[1]));
            __m256 u23 = _mm256_add_ps(_mm256_unpacklo_ps(a[2], a[3]), _mm256_unpackhi_ps(a[2], a[3]));
            __m256 u45 = _mm256_add_ps(_mm256_unpacklo_ps(a[4], a[5]), _mm256_unpackhi_ps(a[4], a[5]));
            __m256 u67 = _mm256_add_ps(_mm256_unpacklo_ps(a[6], a[7]), _mm256_unpackhi_ps(a[6], a[7]));
            __m256 w0 = _mm256_add_ps(_mm256_shuffle_ps(u01, u23, 0x44), _mm256_shuffle_ps(u01, u23, 0xee));
            __m256 w1 = _mm256_add_ps(_mm256_shuffle_ps(u45, u67, 0x44), _mm256_shuffle_ps(u45, u67, 0xee));
            _mm256_storeu_ps(sc + j, _mm256_add_ps(_mm256_permute2f128_ps(w0, w1, 0x20),
                                                   _mm256_permute2f128_ps(w0, w1, 0x31)));
        }
    for (; j < n; j++) {
        __m256 a = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 8 <= d; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(rows + j * d + i), a);
        float s = er_hsum8(a);
        for (; i < d; i++) s += q[i] * rows[j * d + i];
        sc[j] = s;
    }
}

ER_AVX2 static void pv_avx2(float *o, const float *p, const float *rows, int64_t n, int64_t d) {
    int64_t i0 = 0;
    for (; i0 + 32 <= d; i0 += 32) { /* 32 outputs held in registers over all rows */
        __m256 a0 = _mm256_loadu_ps(o + i0), a1 = _mm256_loadu_ps(o + i0 + 8);
        __m256 a2 = _mm256_loadu_ps(o + i0 + 16), a3 = _mm256_loadu_ps(o + i0 + 24);
        for (int64_t j = 0; j < n; j++) {
            const float *r = rows + j * d + i0;
            __m256 pj = _mm256_set1_ps(p[j]);
            a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(r), a0);
            a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(r + 8), a1);
            a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(r + 16), a2);
            a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(r + 24), a3);
        }
        _mm256_storeu_ps(o + i0, a0);
        _mm256_storeu_ps(o + i0 + 8, a1);
        _mm256_storeu_ps(o + i0 + 16, a2);
        _mm256_storeu_ps(o + i0 + 24, a3);
    }
    for (; i0 + 8 <= d; i0 += 8) {
        __m256 a = _mm256_loadu_ps(o + i0);
        for (int64_t j = 0; j < n; j++) a = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(rows + j * d + i0), a);
        _mm256_storeu_ps(o + i0, a);
    }
    for (; i0 < d; i0++)
        for (int64_t j = 0; j < n; j++) o[i0] += p[j] * rows[j * d + i0];
}

ER_AVX2 static void scale_avx2(float *o, int64_t n, float r) {
    const __m256 rv = _mm256_set1_ps(r);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_loadu_ps(o + i), rv));
    for (; i < n; i++) o[i] *= r;
}

ER_AVX2 static void f16_row_avx2(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = er_f16_to_f32(src[i]);
}

/* codes i..i+15 (i a multiple of 16) of a packed row as 16 bytes, unpacked in registers */
ER_AVX2 static inline __m128i codes16_avx2(const uint8_t *packed, int bits, int64_t i) {
    if (bits == 8) return _mm_loadu_si128((const __m128i *)(packed + i));
    if (bits == 4) { /* 8 bytes: low nibble first */
        const __m128i m4 = _mm_set1_epi8(0x0f), b = _mm_loadl_epi64((const __m128i *)(packed + i / 2));
        return _mm_unpacklo_epi8(_mm_and_si128(b, m4), _mm_and_si128(_mm_srli_epi16(b, 4), m4));
    }
    int32_t w; /* 4 bytes: bits 0-1, 2-3, 4-5, 6-7 */
    memcpy(&w, packed + i / 4, 4);
    const __m128i m2 = _mm_set1_epi8(0x03), b = _mm_cvtsi32_si128(w);
    __m128i c0 = _mm_and_si128(b, m2), c1 = _mm_and_si128(_mm_srli_epi16(b, 2), m2);
    __m128i c2 = _mm_and_si128(_mm_srli_epi16(b, 4), m2), c3 = _mm_and_si128(_mm_srli_epi16(b, 6), m2);
    return _mm_unpacklo_epi16(_mm_unpacklo_epi8(c0, c1), _mm_unpacklo_epi8(c2, c3));
}

ER_AVX2 static void deq_keys_avx2(const uint8_t *packed, int bits, int64_t pb, const float *s, const float *m,
                                  int64_t n, int64_t d, float *dst) {
    for (int64_t j = 0; j < n; j++) {
        const uint8_t *row = packed + j * pb;
        float *o = dst + j * d;
        int64_t i = 0;
        for (; i + 16 <= d; i += 16) {
            const __m128i c = codes16_avx2(row, bits, i);
            __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c));
            __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(c, 8)));
            _mm256_storeu_ps(o + i, _mm256_fmadd_ps(lo, _mm256_loadu_ps(s + i), _mm256_loadu_ps(m + i)));
            _mm256_storeu_ps(o + i + 8, _mm256_fmadd_ps(hi, _mm256_loadu_ps(s + i + 8), _mm256_loadu_ps(m + i + 8)));
        }
        for (; i < d; i++) o[i] = (float)code_at(row, bits, i) * s[i] + m[i];
    }
}

ER_AVX2 static void deq_values_avx2(const uint8_t *packed, int bits, int64_t pb, const uint16_t *vs,
                                    const uint16_t *vm, int64_t vg, int64_t n, int64_t d, float *dst) {
    const int64_t nvg = d / vg, gb = vg * bits / 8;
    for (int64_t j = 0; j < n; j++)
        for (int64_t g = 0; g < nvg; g++) {
            const uint8_t *row = packed + j * pb + g * gb;
            float *o = dst + j * d + g * vg;
            const float sf = er_f16_to_f32(vs[g * n + j]), mf = er_f16_to_f32(vm[g * n + j]);
            const __m256 sv = _mm256_set1_ps(sf), mv = _mm256_set1_ps(mf);
            int64_t i = 0;
            for (; i + 16 <= vg; i += 16) {
                const __m128i c = codes16_avx2(row, bits, i);
                __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c));
                __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(c, 8)));
                _mm256_storeu_ps(o + i, _mm256_fmadd_ps(lo, sv, mv));
                _mm256_storeu_ps(o + i + 8, _mm256_fmadd_ps(hi, sv, mv));
            }
            for (; i < vg; i++) o[i] = (float)code_at(row, bits, i) * sf + mf;
        }
}

ER_AVX2 static void q_prep_avx2(const float *q, int64_t gq, int64_t d, const float *s, const float *m, int bits,
                                int16_t *qi, er_kv_qg *qg) {
    if (d % 8) {
        q_prep_scalar(q, gq, d, s, m, bits, qi, qg);
        return;
    }
    const float zc = (float)(1 << (bits - 1));
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t g = 0; g < gq; g++) {
        const float *qh = q + g * d;
        __m256 mx = _mm256_setzero_ps(), sq = mx, sm = mx;
        for (int64_t i = 0; i < d; i += 8) {
            const __m256 qv = _mm256_loadu_ps(qh + i), v = _mm256_mul_ps(qv, _mm256_loadu_ps(s + i));
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v));
            sq = _mm256_add_ps(sq, v);
            sm = _mm256_fmadd_ps(qv, _mm256_loadu_ps(m + i), sm);
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        const float mxs = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
        const float inv = mxs > 0.0f ? (float)KV_QMAX / mxs : 0.0f;
        const __m256 iv = _mm256_set1_ps(inv);
        __m256i zs = _mm256_setzero_si256();
        for (int64_t i = 0; i < d; i += 8) {
            const __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(qh + i), _mm256_loadu_ps(s + i)), iv);
            const __m256i r = _mm256_cvtps_epi32(v); /* round to nearest even, as rintf */
            zs = _mm256_add_epi32(zs, r);
            _mm_storeu_si128((__m128i *)(qi + g * d + i),
                             _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
        }
        __m128i z = _mm_add_epi32(_mm256_castsi256_si128(zs), _mm256_extracti128_si256(zs, 1));
        z = _mm_add_epi32(z, _mm_shuffle_epi32(z, 0x4e));
        z = _mm_add_epi32(z, _mm_shuffle_epi32(z, 0xb1));
        qg[g].d = mxs / (float)KV_QMAX;
        qg[g].off = er_hsum8(sm) + zc * er_hsum8(sq);
        qg[g].zsum = (1 << (bits - 1)) * _mm_cvtsi128_si32(z);
    }
}

/* sum_i qi[i] * code_i of one row as 8 int32 partial sums: codes widened to 16 bits, madd with the int16 query */
ER_AVX2 static inline __attribute__((always_inline)) __m256i dot_row_avx2(const int16_t *qi, const uint8_t *row,
                                                                         int bits, int64_t d) {
    __m256i acc = _mm256_setzero_si256();
    for (int64_t i = 0; i < d; i += 16) {
        const __m256i c = _mm256_cvtepu8_epi16(bits == 8 ? _mm_loadu_si128((const __m128i *)(row + i))
                                                         : codes16_avx2(row, bits, i));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(c, _mm256_loadu_si256((const __m256i *)(qi + i))));
    }
    return acc;
}

/* the 8 rows' partial sums a[0..7] reduced to their 8 totals, minus the query's zero-point sum, as scores
 * d * total + off into dst[0..7] */
ER_AVX2 static inline __attribute__((always_inline)) void store8_scores_avx2(const __m256i *a, __m256i zs, __m256 dv,
                                                                            __m256 ov, float *dst) {
    const __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]));
    const __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[4], a[5]), _mm256_hadd_epi32(a[6], a[7]));
    const __m256i t =
        _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20), _mm256_permute2x128_si256(h0, h1, 0x31));
    _mm256_storeu_ps(dst, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(t, zs)), dv, ov));
}

ER_AVX2 static inline __attribute__((always_inline)) void qk_codes_avx2_b(const int16_t *qi, const er_kv_qg *qg,
        int64_t gq, const uint8_t *packed, const int bits, int64_t pb, int64_t n, const int64_t d, float *sc,
        int64_t ss) {  /* bits and d constant where inlined */
    for (int64_t g = 0; g < gq; g++) {
        const int16_t *q = qi + g * d;
        const __m256 dv = _mm256_set1_ps(qg[g].d), ov = _mm256_set1_ps(qg[g].off);
        const __m256i zs = _mm256_set1_epi32(qg[g].zsum);
        int64_t j = 0;
        for (; j + 8 <= n; j += 8) { /* 8 rows, their sums reduced together */
            __m256i a[8];
            for (int r = 0; r < 8; r++) a[r] = dot_row_avx2(q, packed + (j + r) * pb, bits, d);
            store8_scores_avx2(a, zs, dv, ov, sc + g * ss + j);
        }
        for (; j < n; j++) {
            const int32_t t = er_hsum8_i32(dot_row_avx2(q, packed + j * pb, bits, d)) - qg[g].zsum;
            sc[g * ss + j] = qg[g].d * (float)t + qg[g].off;
        }
    }
}

/* sum_i qi[i] * c[i] of one row of codes already widened to int16 */
ER_AVX2 static inline __attribute__((always_inline)) __m256i dot16_avx2(const int16_t *qi, const int16_t *c, int64_t d) {
    __m256i acc = _mm256_setzero_si256();
    for (int64_t i = 0; i < d; i += 16)
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(c + i)),
                                                      _mm256_loadu_si256((const __m256i *)(qi + i))));
    return acc;
}

/* the same over codes unpacked and widened once into an int16 tile that every head reads */
ER_AVX2 static inline __attribute__((always_inline)) void qk_tile_avx2(const int16_t *qi, const er_kv_qg *qg,
        int64_t gq, const int16_t *t, int64_t n, const int64_t d, float *sc, int64_t ss) {
    for (int64_t g = 0; g < gq; g++) {
        const int16_t *q = qi + g * d;
        const __m256 dv = _mm256_set1_ps(qg[g].d), ov = _mm256_set1_ps(qg[g].off);
        const __m256i zs = _mm256_set1_epi32(qg[g].zsum);
        int64_t j = 0;
        for (; j + 8 <= n; j += 8) {
            __m256i a[8];
            for (int r = 0; r < 8; r++) a[r] = dot16_avx2(q, t + (j + r) * d, d);
            store8_scores_avx2(a, zs, dv, ov, sc + g * ss + j);
        }
        for (; j < n; j++)
            sc[g * ss + j] = qg[g].d * (float)(er_hsum8_i32(dot16_avx2(q, t + j * d, d)) - qg[g].zsum) + qg[g].off;
    }
}

#define KV_QTILE 8192 /* int16 codes of the tile qk_codes_avx2 widens a group into (16 KiB) */

ER_AVX2 static void qk_codes_avx2(const int16_t *qi, const er_kv_qg *qg, int64_t gq, const uint8_t *packed, int bits,
                                  int64_t pb, int64_t n, int64_t d, float *sc, int64_t ss) {
    if (d % 16) {
        qk_codes_scalar(qi, qg, gq, packed, bits, pb, n, d, sc, ss);
        return;
    }
    if (gq > 1 && n * d <= KV_QTILE) { /* several heads: unpack and widen the codes once */
        int16_t t[KV_QTILE] __attribute__((aligned(32)));
        for (int64_t j = 0; j < n; j++)
            for (int64_t i = 0; i < d; i += 16)
                _mm256_store_si256((__m256i *)(t + j * d + i), _mm256_cvtepu8_epi16(codes16_avx2(packed + j * pb, bits, i)));
        if (d == 64) qk_tile_avx2(qi, qg, gq, t, n, 64, sc, ss);
        else if (d == 128) qk_tile_avx2(qi, qg, gq, t, n, 128, sc, ss);
        else qk_tile_avx2(qi, qg, gq, t, n, d, sc, ss);
        return;
    }
#define KV_QK(B)                                                                        \
    if (d == 64) qk_codes_avx2_b(qi, qg, gq, packed, B, pb, n, 64, sc, ss);            \
    else if (d == 128) qk_codes_avx2_b(qi, qg, gq, packed, B, pb, n, 128, sc, ss);     \
    else qk_codes_avx2_b(qi, qg, gq, packed, B, pb, n, d, sc, ss);
    if (bits == 8) { KV_QK(8) }
    else if (bits == 4) { KV_QK(4) }
    else { KV_QK(2) }
#undef KV_QK
}

#define KV_PVH 4 /* query heads accumulated together by pv_codes_avx2 */

/* NH heads' 16 outputs at channel i0: o += sum_j w[h][j] * code_j (codes made f32 once for the NH heads) */
ER_AVX2 static inline void pv16_avx2(float *o, int64_t d, const float *w, int64_t wstride, int NH,
                                     const uint8_t *packed, int bits, int64_t pb, int64_t n, int64_t i0) {
    __m256 a[KV_PVH][2];
    for (int h = 0; h < NH; h++) a[h][0] = _mm256_loadu_ps(o + h * d + i0), a[h][1] = _mm256_loadu_ps(o + h * d + i0 + 8);
    for (int64_t j = 0; j < n; j++) {
        const __m128i c = codes16_avx2(packed + j * pb, bits, i0);
        const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c));
        const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(c, 8)));
        for (int h = 0; h < NH; h++) {
            const __m256 wv = _mm256_broadcast_ss(w + h * wstride + j);
            a[h][0] = _mm256_fmadd_ps(wv, lo, a[h][0]);
            a[h][1] = _mm256_fmadd_ps(wv, hi, a[h][1]);
        }
    }
    for (int h = 0; h < NH; h++) _mm256_storeu_ps(o + h * d + i0, a[h][0]), _mm256_storeu_ps(o + h * d + i0 + 8, a[h][1]);
}

ER_AVX2 static void pv_codes_avx2(float *o, int64_t gq, const float *p, int64_t ps, const uint8_t *packed, int bits,
                                  int64_t pb, const float *vs, const float *vm, int64_t vg, int64_t n, int64_t d) {
    const int64_t nvg = d / vg;
    if (d % 16 || vg % 16 || n > KV_TILE) {
        pv_codes_scalar(o, gq, p, ps, packed, bits, pb, vs, vm, vg, n, d);
        return;
    }
    float w[KV_PVH * KV_TILE]; /* p_j * vs_j of the heads of a block, one channel group */
    for (int64_t h0 = 0; h0 < gq; h0 += KV_PVH) {
        const int NH = gq - h0 < KV_PVH ? (int)(gq - h0) : KV_PVH;
        for (int64_t cg = 0; cg < nvg; cg++) {
            const float *vsg = vs + cg * n, *vmg = vm + cg * n;
            for (int h = 0; h < NH; h++) { /* the mins: sum_j p_j vm_j added to the group's channels */
                const float *ph = p + (h0 + h) * ps;
                __m256 bacc = _mm256_setzero_ps();
                int64_t j = 0;
                for (; j + 8 <= n; j += 8) {
                    const __m256 pv = _mm256_loadu_ps(ph + j);
                    _mm256_storeu_ps(w + h * KV_TILE + j, _mm256_mul_ps(pv, _mm256_loadu_ps(vsg + j)));
                    bacc = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vmg + j), bacc);
                }
                float b = er_hsum8(bacc);
                for (; j < n; j++) {
                    w[h * KV_TILE + j] = ph[j] * vsg[j];
                    b += ph[j] * vmg[j];
                }
                float *oh = o + (h0 + h) * d + cg * vg;
                const __m256 bv = _mm256_set1_ps(b);
                for (int64_t i = 0; i < vg; i += 8) _mm256_storeu_ps(oh + i, _mm256_add_ps(_mm256_loadu_ps(oh + i), bv));
            }
            for (int64_t i0 = cg * vg; i0 < (cg + 1) * vg; i0 += 16) switch (NH) { /* constant head counts: registers */
                case 1: pv16_avx2(o + h0 * d, d, w, KV_TILE, 1, packed, bits, pb, n, i0); break;
                case 2: pv16_avx2(o + h0 * d, d, w, KV_TILE, 2, packed, bits, pb, n, i0); break;
                case 3: pv16_avx2(o + h0 * d, d, w, KV_TILE, 3, packed, bits, pb, n, i0); break;
                default: pv16_avx2(o + h0 * d, d, w, KV_TILE, 4, packed, bits, pb, n, i0); break;
            }
        }
    }
}

ER_AVX2 static float vmax_avx2(const float *s, int64_t n, float m) {
    __m256 a = _mm256_set1_ps(m);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) a = _mm256_max_ps(a, _mm256_loadu_ps(s + j));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    m = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
    for (; j < n; j++) m = s[j] > m ? s[j] : m;
    return m;
}

/* 3 query rows x 4 keys per step: each key vector loaded once serves the 3 rows (12 accumulators) */
ER_AVX2 static void qk_rows_avx2(const float *q, int64_t nq, const float *rows, int64_t n, int64_t d, float *sc,
                                 int64_t ss) {
    int64_t r = 0;
    if (d % 8 == 0)
        for (; r + 3 <= nq; r += 3) {
            const float *q0 = q + r * d, *q1 = q0 + d, *q2 = q1 + d;
            int64_t j = 0;
            for (; j + 4 <= n; j += 4) {
                __m256 a[3][4];
                for (int u = 0; u < 3; u++)
                    for (int k = 0; k < 4; k++) a[u][k] = _mm256_setzero_ps();
                const float *k0 = rows + j * d;
                for (int64_t i = 0; i < d; i += 8) {
                    const __m256 x0 = _mm256_loadu_ps(q0 + i), x1 = _mm256_loadu_ps(q1 + i), x2 = _mm256_loadu_ps(q2 + i);
                    for (int k = 0; k < 4; k++) {
                        const __m256 kv = _mm256_loadu_ps(k0 + k * d + i);
                        a[0][k] = _mm256_fmadd_ps(x0, kv, a[0][k]);
                        a[1][k] = _mm256_fmadd_ps(x1, kv, a[1][k]);
                        a[2][k] = _mm256_fmadd_ps(x2, kv, a[2][k]);
                    }
                }
                for (int u = 0; u < 3; u++) { /* 4 horizontal sums at once */
                    const __m256 s01 = _mm256_hadd_ps(a[u][0], a[u][1]), s23 = _mm256_hadd_ps(a[u][2], a[u][3]);
                    const __m256 s = _mm256_hadd_ps(s01, s23);
                    _mm_storeu_ps(sc + (r + u) * ss + j,
                                  _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
                }
            }
            if (j < n)
                for (int u = 0; u < 3; u++) qk_avx2(q + (r + u) * d, rows + j * d, n - j, d, sc + (r + u) * ss + j);
        }
    for (; r < nq; r++) qk_avx2(q + r * d, rows, n, d, sc + r * ss);
}

/* 3 rows x 32 outputs held in registers over all value rows: each value vector loaded once serves the 3 rows */
ER_AVX2 static void pv_rows_avx2(float *o, int64_t nr, const float *p, int64_t ps, const float *rows, int64_t n,
                                 int64_t d) {
    int64_t r = 0;
    if (d % 32 == 0)
        for (; r + 3 <= nr; r += 3)
            for (int64_t i0 = 0; i0 < d; i0 += 32) {
                __m256 a[3][4];
                for (int u = 0; u < 3; u++)
                    for (int k = 0; k < 4; k++) a[u][k] = _mm256_loadu_ps(o + (r + u) * d + i0 + 8 * k);
                const float *p0 = p + r * ps, *p1 = p0 + ps, *p2 = p1 + ps;
                for (int64_t j = 0; j < n; j++) {
                    const float *v = rows + j * d + i0;
                    const __m256 w0 = _mm256_broadcast_ss(p0 + j), w1 = _mm256_broadcast_ss(p1 + j),
                                 w2 = _mm256_broadcast_ss(p2 + j);
                    for (int k = 0; k < 4; k++) {
                        const __m256 vv = _mm256_loadu_ps(v + 8 * k);
                        a[0][k] = _mm256_fmadd_ps(w0, vv, a[0][k]);
                        a[1][k] = _mm256_fmadd_ps(w1, vv, a[1][k]);
                        a[2][k] = _mm256_fmadd_ps(w2, vv, a[2][k]);
                    }
                }
                for (int u = 0; u < 3; u++)
                    for (int k = 0; k < 4; k++) _mm256_storeu_ps(o + (r + u) * d + i0 + 8 * k, a[u][k]);
            }
    for (; r < nr; r++) pv_avx2(o + r * d, p + r * ps, rows, n, d);
}

static const er_kv_ops kv_ops_avx2 = {qk_avx2,         pv_avx2,         er_exp_sum_avx2, scale_avx2,
                                      f16_row_avx2,    deq_keys_avx2,   deq_values_avx2,
                                      q_prep_avx2,     qk_codes_avx2,   pv_codes_avx2,
                                      vmax_avx2,       qk_rows_avx2,    pv_rows_avx2};
#endif

static const er_kv_ops *kv_ops_for(int isa) {
#if defined(__aarch64__)
    if (isa == ER_ISA_NEON) return &er_kv_ops_neon;
#endif
#if ER_X86
    if (isa == ER_ISA_AVX2) return &kv_ops_avx2;
#endif
    (void)isa;
    return &kv_ops_scalar;
}

/* ---- attention ------------------------------------------------------------------------------------- */

typedef struct {
    const er_kivi *c;
    const er_kv_ops *ops;
    const float *q, *qs, *kn, *vn;
    float *out, *part, *scratch;
    int64_t nh, gq, hd, T, p0, qb, nsegs, n_chunks, per_chunk, scratch_per_thread;
    float scale, softcap;
} kv_ctx;

static int64_t seg_block(const kv_ctx *x, int64_t si, int64_t *pos) {
    const int64_t j0 = (si - x->c->n_blocks - 2) * KV_TILE, n = x->T - j0 < KV_TILE ? x->T - j0 : KV_TILE;
    for (int64_t j = 0; j < n; j++) pos[j] = x->p0 + j0 + j;
    return n;
}

/* segment si: 0 sinks, 1..nb ring groups (f16 ring: tiles of slots), nb + 1 residual, then the new block in KV_TILE
 * rows.
 * Fills the key positions (-1: empty slot); returns how many keys (0: nothing there). */
static int64_t seg_info(const kv_ctx *x, int64_t si, int64_t *pos, int *sink) {
    const er_kivi *c = x->c;
    const int64_t nb = c->n_blocks, G = c->group;
    *sink = 0;
    if (si == 0) {
        *sink = 1;
        for (int64_t j = 0; j < c->sinks; j++) pos[j] = c->sink_pos[j];
        return c->sinks;
    }
    if (c->bits == 16) { /* float ring: tiles of KV_TILE slots, positions per slot; no residual */
        if (si > nb) return si == nb + 1 ? 0 : seg_block(x, si, pos);
        const int64_t s0 = (si - 1) * KV_TILE, n = c->window - s0 < KV_TILE ? c->window - s0 : KV_TILE;
        for (int64_t j = 0; j < n; j++) pos[j] = c->ring_pos[s0 + j];
        return n;
    }
    if (si <= nb) {
        const int64_t st = c->q_start[si - 1];
        if (st < 0) return 0;
        for (int64_t j = 0; j < G; j++) pos[j] = st + j;
        return G;
    }
    if (si == nb + 1) {
        for (int64_t j = 0; j < G; j++) pos[j] = c->res_pos[j];
        return G;
    }
    return seg_block(x, si, pos);
}

/* the n key (v = 0) or value (v = 1) rows of segment si for kv head h as f32 (in `tile` unless already f32) */
static const float *seg_rows(const kv_ctx *x, int64_t si, int64_t h, int v, int64_t n, float *tile, float *sm) {
    const er_kivi *c = x->c;
    const er_kv_ops *ops = x->ops;
    const int64_t nb = c->n_blocks, G = c->group, hd = x->hd;
    if (si == 0) { /* f16 ring: the sink values are the first rows of the [sinks | ring] block */
        const uint16_t *src = v && c->bits == 16 ? c->ring_v + h * c->ring_stride * hd : (v ? c->sink_v : c->sink_k) + h * c->sinks * hd;
        ops->f16_row(src, tile, n * hd);
        return tile;
    }
    if (c->bits == 16 && si <= nb) {
        const int64_t off = (h * c->ring_stride + c->sinks + (si - 1) * KV_TILE) * hd;
        ops->f16_row((v ? c->ring_v : c->ring_k) + off, tile, n * hd);
        return tile;
    }
    if (si == nb + 1) {
        ops->f16_row((v ? c->res_v : c->res_k) + h * G * hd, tile, n * hd);
        return tile;
    }
    if (si > nb + 1) return (v ? x->vn : x->kn) + (h * x->T + (si - nb - 2) * KV_TILE) * hd;
    const int64_t b = si - 1, pb = hd * c->bits / 8, gh = h * nb + b; /* (n_kv, nb, ...): one head's groups in a row */
    const uint8_t *base = (v ? c->qv : c->qk) + gh * G * pb;
    if (!v) { /* keys: (scale, min) per channel of the group */
        ops->f16_row(c->qk_scale + gh * hd, sm, hd);
        ops->f16_row(c->qk_min + gh * hd, sm + hd, hd);
    }
    if (!v) {
        ops->deq_keys(base, c->bits, pb, sm, sm + hd, n, hd, tile);
        return tile;
    }
    const int64_t nvs = G * (hd / c->vgroup);
    const uint16_t *vs = c->qv_scale + gh * nvs, *vm = c->qv_min ? c->qv_min + gh * nvs : 0;
    uint16_t sym_min[KV_TILE * KV_MAX_VGROUPS]; /* int8 values: min = -128 * scale (exact in f16) */
    if (!vm) {
        for (int64_t i = 0; i < nvs; i++) sym_min[i] = er_f32_to_f16(-(float)KV_SYM_ZERO * er_f16_to_f32(vs[i]));
        vm = sym_min;
    }
    ops->deq_values(base, c->bits, pb, vs, vm, c->vgroup, n, hd, tile);
    return tile;
}

static void kv_task(void *vc, int64_t start, int64_t end, int tid) {
    const kv_ctx *x = (const kv_ctx *)vc;
    const er_kivi *c = x->c;
    const er_kv_ops *ops = x->ops;
    const int64_t hd = x->hd, gq = x->gq, nkv = c->n_kv_heads, S = c->sinks, W = c->window, qb = x->qb;
    float *tile = x->scratch + (int64_t)tid * x->scratch_per_thread; /* (KV_TILE, hd) rows */
    float *sm = tile + KV_TILE * hd, *sc = sm + 2 * hd;             /* (2, hd) key scale/min, (qb*gq, KV_TILE) */
    int64_t pos[KV_TILE];
    unsigned char vis[KV_TILE];
    for (int64_t it = start; it < end; it++) { /* item: (query block, kv head, chunk of segments) */
        const int64_t chunk = it % x->n_chunks, rest = it / x->n_chunks, h = rest % nkv, tb = rest / nkv;
        const int64_t t0 = tb * qb, nt = x->T - t0 < qb ? x->T - t0 : qb, R = nt * gq; /* rows: (query, head) */
        float *m = x->part + it * qb * gq * (hd + 2), *l = m + qb * gq, *o = l + qb * gq;
        for (int64_t r = 0; r < R; r++) m[r] = -INFINITY, l[r] = 0.0f;
        memset(o, 0, sizeof(float) * (size_t)(R * hd));
        const int64_t s0 = chunk * x->per_chunk, s1 = s0 + x->per_chunk < x->nsegs ? s0 + x->per_chunk : x->nsegs;
        for (int64_t si = s0; si < s1; si++) {
            int sink;
            const int64_t n = seg_info(x, si, pos, &sink);
            if (!n) continue;
            /* the last query of the block sees the most (causal); skip segments none of the block sees */
            int64_t any = 0;
            for (int64_t j = 0; j < n && !any; j++)
                for (int64_t t = t0; t < t0 + nt && !any; t++) {
                    const int64_t a = pos[j], p = x->p0 + t;
                    any = a >= 0 && a <= p && (a < S || a > p - W);
                }
            if (!any) continue;
            const float *kr = seg_rows(x, si, h, 0, n, tile, sm);
            const float *qb0 = (sink && x->qs) ? x->qs : x->q;
            int64_t pmin = INT64_MAX, pmax = -1, allv = 1; /* a query sees all of it iff pmax <= p and the oldest is
                                                            * in its window (or all are sinks) */
            for (int64_t j = 0; j < n; j++) {
                const int64_t a = pos[j];
                allv &= a >= 0;
                pmin = a >= 0 && a < pmin ? a : pmin;
                pmax = a > pmax ? a : pmax;
            }
            for (int64_t t = t0; t < t0 + nt; t++) {
                const int64_t p = x->p0 + t;
                const int full = allv && pmax <= p && (pmin > p - W || pmax < S);
                int64_t nvis = n;
                if (!full) {
                    nvis = 0;
                    for (int64_t j = 0; j < n; j++) {
                        const int64_t a = pos[j];
                        vis[j] = a >= 0 && a <= p && (a < S || a > p - W);
                        nvis += vis[j];
                    }
                }
                if (nvis) { /* the gq heads of query t (q scaled already), each key row loaded once for all */
                    const float *qt = qb0 + (t * x->nh + h * gq) * hd;
                    float *st = sc + (t - t0) * gq * KV_TILE;
                    if (ops->qk_rows)
                        ops->qk_rows(qt, gq, kr, n, hd, st, KV_TILE);
                    else
                        for (int64_t g = 0; g < gq; g++) ops->qk(qt + g * hd, kr, n, hd, st + g * KV_TILE);
                }
                for (int64_t g = 0; g < gq; g++) {
                    const int64_t r = (t - t0) * gq + g;
                    float *s = sc + r * KV_TILE;
                    if (!nvis) { /* nothing for this query here: zero weights */
                        memset(s, 0, sizeof(float) * (size_t)n);
                        continue;
                    }
                    float mx = -INFINITY;
                    if (full && !(x->softcap > 0.0f))
                        mx = ops->vmax(s, n, mx);
                    else
                        for (int64_t j = 0; j < n; j++) {
                            if (!full && !vis[j]) {
                                s[j] = -INFINITY;
                                continue;
                            }
                            float v = s[j];
                            if (x->softcap > 0.0f) v = x->softcap * tanhf(v / x->softcap);
                            s[j] = v;
                            mx = v > mx ? v : mx;
                        }
                    const float mnew = mx > m[r] ? mx : m[r];
                    if (m[r] > -INFINITY && mnew > m[r]) { /* rescale what was summed under the old max */
                        const float corr = expf(m[r] - mnew);
                        l[r] *= corr;
                        ops->scale(o + r * hd, hd, corr);
                    }
                    m[r] = mnew;
                    l[r] += ops->exp_sum(s, n, mnew);
                }
            }
            const float *vr = seg_rows(x, si, h, 1, n, tile, sm);
            if (ops->pv_rows)
                ops->pv_rows(o, R, sc, KV_TILE, vr, n, hd);
            else
                for (int64_t r = 0; r < R; r++) ops->pv(o + r * hd, sc + r * KV_TILE, vr, n, hd);
        }
        if (x->n_chunks == 1)
            for (int64_t r = 0; r < R; r++) {
                const int64_t t = t0 + r / gq, g = r % gq;
                float *dst = x->out + (t * x->nh + h * gq + g) * hd;
                const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
                for (int64_t i = 0; i < hd; i++) dst[i] = o[r * hd + i] * inv;
            }
    }
}

/* Decode (T = 1): one item = (kv head, chunk of segments). Two passes over the chunk: every score first (quantized
 * key groups straight from the codes: the query heads, scaled, times the group's channel scales, quantized to int8,
 * integer dot products with the codes), one softmax over the chunk, then the values (quantized groups accumulated
 * from the codes, the per-token scale folded into the weight). No dequantized copy of a quantized group is made. */
static void kv_task_decode(void *vc, int64_t start, int64_t end, int tid) {
    const kv_ctx *x = (const kv_ctx *)vc;
    const er_kivi *c = x->c;
    const er_kv_ops *ops = x->ops;
    const int64_t hd = x->hd, gq = x->gq, nkv = c->n_kv_heads, S = c->sinks, W = c->window, nb = c->n_blocks;
    const int64_t G = c->group, L = x->per_chunk * KV_TILE, p = x->p0, pb = hd * c->bits / 8;
    const int64_t nvg = c->bits < 16 ? hd / c->vgroup : 1;
    float *tile = x->scratch + (int64_t)tid * x->scratch_per_thread; /* (KV_TILE, hd) f32 rows */
    float *sm = tile + KV_TILE * hd;                                 /* (2, hd) key scale / min */
    float *vsm = sm + 2 * hd;                                        /* (2, KV_TILE, nvg) value scale / min */
    float *qsc = vsm + 2 * KV_TILE * nvg, *qss = qsc + gq * hd;      /* the scaled queries (gq, hd) */
    float *sc = qss + gq * hd;                                       /* (gq, L) scores, then weights */
    int64_t *seg = (int64_t *)(sc + gq * L);                         /* (per_chunk, 2) offset and length */
    er_kv_qg *qg = (er_kv_qg *)(seg + 2 * x->per_chunk);
    int16_t *qi = (int16_t *)(qg + gq);
    int64_t pos[KV_TILE];
    unsigned char vis[KV_TILE];
    float mx[KV_MAXG];
    for (int64_t it = start; it < end; it++) {
        const int64_t chunk = it % x->n_chunks, h = (it / x->n_chunks) % nkv;
        float *m = x->part + it * gq * (hd + 2), *l = m + gq, *o = l + gq;
        for (int64_t i = 0; i < gq * hd; i++) {
            qsc[i] = x->q[h * gq * hd + i] * x->scale;
            if (x->qs) qss[i] = x->qs[h * gq * hd + i] * x->scale;
        }
        for (int64_t g = 0; g < gq; g++) mx[g] = -INFINITY;
        const int64_t s0 = chunk * x->per_chunk, s1 = s0 + x->per_chunk < x->nsegs ? s0 + x->per_chunk : x->nsegs;
        int64_t off = 0;
        for (int64_t si = s0; si < s1; si++) { /* pass 1: scores */
            int sink;
            int64_t *sg = seg + 2 * (si - s0);
            sg[1] = 0;
            const int64_t n = seg_info(x, si, pos, &sink);
            int64_t nvis = 0;
            for (int64_t j = 0; j < n; j++) {
                const int64_t a = pos[j];
                vis[j] = a >= 0 && a <= p && (a < S || a > p - W);
                nvis += vis[j];
            }
            if (!nvis) continue;
            if (c->bits < 16 && si >= 1 && si <= nb) {
                const int64_t gh = h * nb + si - 1;
                ops->f16_row(c->qk_scale + gh * hd, sm, hd);
                ops->f16_row(c->qk_min + gh * hd, sm + hd, hd);
                ops->q_prep(qsc, gq, hd, sm, sm + hd, c->bits, qi, qg);
                ops->qk_codes(qi, qg, gq, c->qk + gh * G * pb, c->bits, pb, n, hd, sc + off, L);
            } else {
                const float *kr = seg_rows(x, si, h, 0, n, tile, sm), *qq = sink && x->qs ? qss : qsc;
                for (int64_t g = 0; g < gq; g++) ops->qk(qq + g * hd, kr, n, hd, sc + g * L + off);
            }
            if (nvis == n && !(x->softcap > 0.0f)) /* the common case: nothing masked */
                for (int64_t g = 0; g < gq; g++) mx[g] = ops->vmax(sc + g * L + off, n, mx[g]);
            else
            for (int64_t g = 0; g < gq; g++) {
                float *s = sc + g * L + off, mg = mx[g];
                for (int64_t j = 0; j < n; j++) {
                    float v = s[j];
                    if (x->softcap > 0.0f) v = x->softcap * tanhf(v / x->softcap);
                    v = vis[j] ? v : -INFINITY;
                    s[j] = v;
                    mg = v > mg ? v : mg;
                }
                mx[g] = mg;
            }
            sg[0] = off, sg[1] = n;
            off += n;
        }
        memset(o, 0, sizeof(float) * (size_t)(gq * hd));
        for (int64_t g = 0; g < gq; g++) m[g] = mx[g], l[g] = 0.0f;
        if (off) {
            for (int64_t g = 0; g < gq; g++) l[g] = ops->exp_sum(sc + g * L, off, mx[g]);
            for (int64_t si = s0; si < s1; si++) { /* pass 2: values */
                const int64_t *sg = seg + 2 * (si - s0), n = sg[1];
                if (!n) continue;
                if (c->bits < 16 && si >= 1 && si <= nb) {
                    const int64_t gh = h * nb + si - 1;
                    ops->f16_row(c->qv_scale + gh * G * nvg, vsm, n * nvg); /* (nvg, G) */
                    if (c->qv_min)
                        ops->f16_row(c->qv_min + gh * G * nvg, vsm + n * nvg, n * nvg);
                    else /* int8 values: min = -128 * scale */
                        for (int64_t i = 0; i < n * nvg; i++) vsm[n * nvg + i] = -(float)KV_SYM_ZERO * vsm[i];
                    ops->pv_codes(o, gq, sc + sg[0], L, c->qv + gh * G * pb, c->bits, pb, vsm, vsm + n * nvg, c->vgroup,
                                  n, hd);
                } else {
                    const float *vr = seg_rows(x, si, h, 1, n, tile, sm);
                    for (int64_t g = 0; g < gq; g++) ops->pv(o + g * hd, sc + g * L + sg[0], vr, n, hd);
                }
            }
        }
        if (x->n_chunks == 1)
            for (int64_t g = 0; g < gq; g++) {
                float *dst = x->out + (h * gq + g) * hd;
                const float inv = l[g] > 0.0f ? 1.0f / l[g] : 0.0f;
                for (int64_t i = 0; i < hd; i++) dst[i] = o[g * hd + i] * inv;
            }
    }
}

static int kivi_check(const er_kivi *c) {
    if (c && c->bits == 16) /* the f16 [sinks | ring] layout (attention only) */
        return c->n_kv_heads < 1 || c->head_dim < 1 || c->sinks < 0 || c->sinks > KV_TILE || c->window < 1 ||
                       c->n_blocks != (c->window + KV_TILE - 1) / KV_TILE || !c->ring_k || !c->ring_v || !c->ring_pos ||
                       c->ring_stride < c->sinks + c->window || (c->sinks && (!c->sink_k || !c->sink_pos))
                   ? -1
                   : 0;
    if (!c || !(c->bits == 8 || c->bits == 4 || c->bits == 2) || c->group < 1 || c->group > KV_TILE ||
        c->n_blocks < 1 || c->n_kv_heads < 1 || c->head_dim < 1 || c->sinks < 0 || c->sinks > KV_TILE ||
        c->window < 1 || c->vgroup < 1 || c->head_dim % c->vgroup || (c->head_dim * c->bits) % 8)
        return -1;
    if (!c->res_k || !c->res_v || !c->res_pos || !c->qk || !c->qv || !c->qk_scale || !c->qk_min || !c->qv_scale ||
        (!c->qv_min && (c->bits != 8 || c->head_dim / c->vgroup > KV_MAX_VGROUPS)) || !c->q_start ||
        (c->sinks && (!c->sink_k || !c->sink_v || !c->sink_pos)))
        return -1;
    return 0;
}

int er_kivi_attention(const er_kivi *c, const float *q, const float *q_sink, const float *k_new, const float *v_new,
                      float *out, int64_t n_heads, int64_t T, int64_t p0, float scale, float softcap) {
    if (kivi_check(c) || !q || !out || T < 0 || p0 < 0 || n_heads < 1 || n_heads % c->n_kv_heads ||
        n_heads / c->n_kv_heads > KV_MAXG || (T > 0 && (!k_new || !v_new)))
        return -1;
    if (T == 0) return 0;
    const int64_t hd = c->head_dim, nkv = c->n_kv_heads, gq = n_heads / nkv;
    kv_ctx x = {.c = c, .ops = kv_ops_for(er_get_isa()), .q = q, .qs = q_sink, .kn = k_new, .vn = v_new, .out = out,
                .nh = n_heads, .gq = gq, .hd = hd, .T = T, .p0 = p0, .scale = scale, .softcap = softcap};
    x.nsegs = 2 + c->n_blocks + (T + KV_TILE - 1) / KV_TILE;
    /* queries in blocks that share each dequantized tile (prefill), at most KV_QROWS (query, head) rows */
    x.qb = KV_QROWS / gq < 1 ? 1 : KV_QROWS / gq;
    if (x.qb > T) x.qb = T;
    const int64_t nqb = (T + x.qb - 1) / x.qb, nt = er_get_num_threads();
    x.n_chunks = 1;
    if (T == 1 || nqb * nkv < 2 * nt) /* decode, or few items: the keys in chunks (over the threads; an L1-sized score
                                      * block each), their partial softmaxes merged */
        x.n_chunks = (x.nsegs + KV_SEGS_PER_CHUNK - 1) / KV_SEGS_PER_CHUNK;
    x.per_chunk = (x.nsegs + x.n_chunks - 1) / x.n_chunks;
    const int64_t items = nqb * nkv * x.n_chunks, rows = x.qb * gq;
    x.scratch_per_thread = KV_TILE * hd + 2 * hd + rows * KV_TILE + 16;
    if (T == 1) /* kv_task_decode's layout */
        x.scratch_per_thread = KV_TILE * hd + 2 * hd + 2 * KV_TILE * hd + 2 * gq * hd + gq * x.per_chunk * KV_TILE +
                               4 * x.per_chunk + 3 * gq + (gq * hd + 1) / 2 + 16;
    const int64_t nq = T > 1 ? T * n_heads * hd : 0; /* prefill: the queries scaled once (decode scales per item) */
    x.part = (float *)malloc(sizeof(float) * (size_t)(items * rows * (hd + 2) + nt * x.scratch_per_thread +
                                                      (q_sink ? 2 : 1) * nq));
    if (!x.part) return -3;
    x.scratch = x.part + items * rows * (hd + 2);
    if (nq) {
        float *qsc = x.scratch + nt * x.scratch_per_thread;
        for (int64_t i = 0; i < nq; i++) qsc[i] = q[i] * scale;
        if (q_sink)
            for (int64_t i = 0; i < nq; i++) qsc[nq + i] = q_sink[i] * scale;
        x.q = qsc, x.qs = q_sink ? qsc + nq : NULL;
    }
    const int64_t work = ((int64_t)c->n_blocks * c->group + T) * hd * gq * T;
    er_parallel_for(items, work >= 16384 ? 1 : items, T == 1 ? kv_task_decode : kv_task, &x);
    if (x.n_chunks > 1) /* merge the chunks' partial softmaxes: o = sum o_c e^(m_c - M) / sum l_c e^(m_c - M) */
        for (int64_t ib = 0; ib < nqb * nkv; ib++) {
            const int64_t tb = ib / nkv, h = ib % nkv, t0 = tb * x.qb, ntq = T - t0 < x.qb ? T - t0 : x.qb;
            for (int64_t r = 0; r < ntq * gq; r++) {
                float M = -INFINITY, L = 0.0f;
                for (int64_t ch = 0; ch < x.n_chunks; ch++) {
                    const float mc = x.part[(ib * x.n_chunks + ch) * rows * (hd + 2) + r];
                    M = mc > M ? mc : M;
                }
                const int64_t t = t0 + r / gq, g = r % gq;
                float *dst = out + (t * n_heads + h * gq + g) * hd;
                memset(dst, 0, sizeof(float) * (size_t)hd);
                if (M == -INFINITY) continue;
                for (int64_t ch = 0; ch < x.n_chunks; ch++) {
                    const float *pm = x.part + (ib * x.n_chunks + ch) * rows * (hd + 2);
                    if (pm[r] == -INFINITY) continue;
                    const float w = expf(pm[r] - M);
                    L += pm[rows + r] * w;
                    const float *o = pm + 2 * rows + r * hd;
                    for (int64_t i = 0; i < hd; i++) dst[i] += o[i] * w;
                }
                const float inv = L > 0.0f ? 1.0f / L : 0.0f;
                for (int64_t i = 0; i < hd; i++) dst[i] *= inv;
            }
        }
    free(x.part);
    return 0;
}

/* ---- causal prefill over a plain f32 / f16 cache (er_attention_prefill's x86 path) ---------------------------
 * The same scheme as kv_task on one contiguous segment list: items are (block of qb queries, kv head); the keys
 * p_first .. the block's last position go in tiles of KV_TILE rows (f16 made f32 once per tile), each tile scored by
 * the block's qb x G (query, head) rows (qk_rows: every key row loaded serves three rows), an online softmax, the
 * values the same way (pv_rows). Each key and value row is read once per block instead of once per query. */

typedef struct {
    const er_kv_ops *ops;
    const float *q; /* (T, H, D), scaled */
    const char *k, *v;
    float *out, *scratch;
    int64_t nh, gq, hd, T, p0, stride, window, qb, nqb, scratch_per_thread;
    int f16;
    float softcap;
} pf_ctx;

static void pf_task(void *vc, int64_t start, int64_t end, int tid) {
    const pf_ctx *x = (const pf_ctx *)vc;
    const er_kv_ops *ops = x->ops;
    const int64_t hd = x->hd, gq = x->gq, qb = x->qb, nkv = x->nh / gq, W = x->window, es = x->f16 ? 2 : 4;
    float *tile = x->scratch + (int64_t)tid * x->scratch_per_thread; /* (KV_TILE, hd) f32 rows of an f16 cache */
    float *sc = tile + KV_TILE * hd;                                 /* (qb * gq, KV_TILE) scores, then weights */
    float *m = sc + qb * gq * KV_TILE, *l = m + qb * gq, *o = l + qb * gq; /* (qb * gq), (qb * gq), (qb * gq, hd) */
    for (int64_t it = start; it < end; it++) {
        /* blocks interleaved short / long (0, last, 1, last - 1, ...): contiguous items cost about the same */
        const int64_t j = it / nkv, h = it % nkv;
        const int64_t tb = (j & 1) ? x->nqb - 1 - (j >> 1) : (j >> 1);
        const int64_t t0 = tb * qb, nt = x->T - t0 < qb ? x->T - t0 : qb, R = nt * gq;
        const int64_t plo = x->p0 + t0, phi = plo + nt - 1; /* the block's first and last query positions */
        for (int64_t r = 0; r < R; r++) m[r] = -INFINITY, l[r] = 0.0f;
        memset(o, 0, sizeof(float) * (size_t)(R * hd));
        const int64_t kfirst = W > 0 && plo + 1 > W ? plo + 1 - W : 0;
        const char *kb = x->k + h * x->stride * hd * es, *vb = x->v + h * x->stride * hd * es;
        for (int64_t j0 = kfirst; j0 <= phi; j0 += KV_TILE) {
            const int64_t n = phi + 1 - j0 < KV_TILE ? phi + 1 - j0 : KV_TILE;
            const float *kr = (const float *)(kb + j0 * hd * es);
            if (x->f16) {
                ops->f16_row((const uint16_t *)(kb + j0 * hd * es), tile, n * hd);
                kr = tile;
            }
            for (int64_t t = t0; t < t0 + nt; t++) {
                const int64_t p = x->p0 + t;
                const int64_t lo = W > 0 && p + 1 > W ? p + 1 - W : 0; /* query p sees keys lo .. p */
                const int64_t a0 = lo > j0 ? lo - j0 : 0, a1 = p - j0 + 1 < n ? p - j0 + 1 : n; /* [a0, a1) of tile */
                float *st = sc + (t - t0) * gq * KV_TILE;
                if (a1 <= a0) { /* nothing for this query here: zero weights */
                    for (int64_t g = 0; g < gq; g++) memset(st + g * KV_TILE, 0, sizeof(float) * (size_t)n);
                    continue;
                }
                const float *qt = x->q + (t * x->nh + h * gq) * hd;
                if (ops->qk_rows)
                    ops->qk_rows(qt, gq, kr, n, hd, st, KV_TILE);
                else
                    for (int64_t g = 0; g < gq; g++) ops->qk(qt + g * hd, kr, n, hd, st + g * KV_TILE);
                const int full = a0 == 0 && a1 == n;
                for (int64_t g = 0; g < gq; g++) {
                    const int64_t r = (t - t0) * gq + g;
                    float *sg = st + g * KV_TILE;
                    float mx = -INFINITY;
                    if (full && !(x->softcap > 0.0f))
                        mx = ops->vmax(sg, n, mx);
                    else
                        for (int64_t i = 0; i < n; i++) {
                            if (i < a0 || i >= a1) {
                                sg[i] = -INFINITY;
                                continue;
                            }
                            float v = sg[i];
                            if (x->softcap > 0.0f) v = x->softcap * tanhf(v / x->softcap);
                            sg[i] = v;
                            mx = v > mx ? v : mx;
                        }
                    const float mnew = mx > m[r] ? mx : m[r];
                    if (m[r] > -INFINITY && mnew > m[r]) { /* rescale what was summed under the old max */
                        const float corr = expf(m[r] - mnew);
                        l[r] *= corr;
                        ops->scale(o + r * hd, hd, corr);
                    }
                    m[r] = mnew;
                    l[r] += ops->exp_sum(sg, n, mnew);
                }
            }
            const float *vr = (const float *)(vb + j0 * hd * es);
            if (x->f16) {
                ops->f16_row((const uint16_t *)(vb + j0 * hd * es), tile, n * hd);
                vr = tile;
            }
            if (ops->pv_rows)
                ops->pv_rows(o, R, sc, KV_TILE, vr, n, hd);
            else
                for (int64_t r = 0; r < R; r++) ops->pv(o + r * hd, sc + r * KV_TILE, vr, n, hd);
        }
        for (int64_t r = 0; r < R; r++) {
            const int64_t t = t0 + r / gq, g = r % gq;
            float *dst = x->out + (t * x->nh + h * gq + g) * hd;
            const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
            for (int64_t i = 0; i < hd; i++) dst[i] = o[r * hd + i] * inv;
        }
    }
}

int er_kv_prefill_plain(int isa, const float *q, const void *k, const void *v, float *out, int64_t n_heads,
                        int64_t n_kv_heads, int64_t head_dim, int64_t T, int64_t p0, int64_t kv_stride, int kv_f16,
                        float scale, float softcap, int64_t window) {
    const int64_t gq = n_heads / n_kv_heads;
    if (gq > KV_MAXG) return 1; /* not taken: the caller's per-query kernel */
    pf_ctx x = {.ops = kv_ops_for(isa), .k = (const char *)k, .v = (const char *)v, .out = out, .nh = n_heads,
                .gq = gq, .hd = head_dim, .T = T, .p0 = p0, .stride = kv_stride, .window = window, .f16 = kv_f16 ? 1 : 0,
                .softcap = softcap};
    x.qb = KV_QROWS / gq < 1 ? 1 : KV_QROWS / gq;
    if (x.qb > T) x.qb = T;
    x.nqb = (T + x.qb - 1) / x.qb;
    const int64_t nt = er_get_num_threads(), nq = T * n_heads * head_dim, rows = x.qb * gq;
    x.scratch_per_thread = KV_TILE * head_dim + rows * KV_TILE + rows * (head_dim + 2) + 16;
    float *buf = (float *)malloc(sizeof(float) * (size_t)(nq + nt * x.scratch_per_thread));
    if (!buf) return -3;
    for (int64_t i = 0; i < nq; i++) buf[i] = q[i] * scale; /* the queries scaled once */
    x.q = buf, x.scratch = buf + nq;
    er_parallel_for(x.nqb * n_kv_heads, 1, pf_task, &x);
    free(buf);
    return 0;
}

/* ---- store ----------------------------------------------------------------------------------------- */

/* quant/kv.py _quant over n values x[i * stride] (f16): writes codes (one byte each) and scale/min f16; with
 * `sym` (int8 values: _quant_sym) the codes are rint(x / s) + 128, s = f16(max|x| / 127), and no min is written */
static void quant_f16(const uint16_t *x, int64_t n, int64_t stride, int bits, int sym, uint8_t *codes,
                      uint16_t *scale, uint16_t *mn) {
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        const float v = er_f16_to_f32(x[i * stride]);
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    const int qmax = (1 << bits) - 1;
    float m, zero = 0.0f;
    if (sym) {
        *scale = er_f32_to_f16(fmaxf(fabsf(lo), fabsf(hi)) / (float)KV_SYM_QMAX);
        m = 0.0f, zero = (float)KV_SYM_ZERO;
    } else {
        *scale = er_f32_to_f16((hi - lo) / (float)qmax);
        *mn = er_f32_to_f16(lo);
        m = er_f16_to_f32(*mn);
    }
    const float s = er_f16_to_f32(*scale), safe = s > 0.0f ? s : 1.0f;
    for (int64_t i = 0; i < n; i++) {
        float r = rintf((er_f16_to_f32(x[i * stride]) - m) / safe) + zero;
        r = r < 0.0f ? 0.0f : (r > (float)qmax ? (float)qmax : r);
        codes[i] = (uint8_t)r;
    }
}

static void pack_codes(const uint8_t *codes, int64_t n, int bits, uint8_t *dst) {
    const int per = 8 / bits;
    for (int64_t i = 0; i < n / per; i++) {
        uint8_t b = 0;
        for (int k = 0; k < per; k++) b |= (uint8_t)(codes[i * per + k] << (k * bits));
        dst[i] = b;
    }
}

/* the full residual -> ring group b (keys per channel over the G tokens, values per token and channel group) */
static int flush_group(const er_kivi *c, int64_t b) {
    const int64_t G = c->group, hd = c->head_dim, nkv = c->n_kv_heads, pb = hd * c->bits / 8, vg = c->vgroup;
    const int64_t nb = c->n_blocks;
    const int bits = c->bits;
    uint8_t *codes = (uint8_t *)malloc((size_t)(G * hd));
    if (!codes) return -3;
    for (int64_t h = 0; h < nkv; h++) {
        const int64_t gh = h * nb + b; /* (n_kv, nb, ...): one head's groups in a row */
        const uint16_t *rk = c->res_k + h * G * hd, *rv = c->res_v + h * G * hd;
        uint8_t col[KV_TILE];
        for (int64_t ch = 0; ch < hd; ch++) {
            quant_f16(rk + ch, G, hd, bits, 0, col, c->qk_scale + gh * hd + ch, c->qk_min + gh * hd + ch);
            for (int64_t j = 0; j < G; j++) codes[j * hd + ch] = col[j];
        }
        for (int64_t j = 0; j < G; j++) pack_codes(codes + j * hd, hd, bits, c->qk + (gh * G + j) * pb);
        for (int64_t j = 0; j < G; j++) { /* value scale/min (hd / vg, G) per group; int8: scales only */
            uint16_t *vs = c->qv_scale + gh * G * (hd / vg) + j, *vm = c->qv_min ? c->qv_min + gh * G * (hd / vg) + j : 0;
            for (int64_t g = 0; g < hd / vg; g++)
                quant_f16(rv + j * hd + g * vg, vg, 1, bits, !vm, codes + g * vg, vs + g * G, vm ? vm + g * G : 0);
            pack_codes(codes, hd, bits, c->qv + (gh * G + j) * pb);
        }
    }
    free(codes);
    c->q_start[b] = c->res_pos[0];
    for (int64_t j = 0; j < G; j++) c->res_pos[j] = -1;
    return 0;
}

int er_kivi_store(const er_kivi *c, const float *k, const float *v, int64_t T, int64_t p0) {
    if (kivi_check(c) || c->bits == 16 || !k || !v || T < 0 || p0 < 0) return -1;
    const int64_t G = c->group, hd = c->head_dim, nkv = c->n_kv_heads, S = c->sinks;
    for (int64_t t = 0; t < T; t++) {
        const int64_t p = p0 + t;
        uint16_t *dk, *dv;
        int64_t hstride;
        if (p < S) {
            dk = c->sink_k + p * hd, dv = c->sink_v + p * hd, hstride = S * hd;
            c->sink_pos[p] = p;
        } else {
            const int64_t r = (p - S) % G;
            dk = c->res_k + r * hd, dv = c->res_v + r * hd, hstride = G * hd;
            c->res_pos[r] = p;
        }
        for (int64_t h = 0; h < nkv; h++)
            for (int64_t i = 0; i < hd; i++) {
                dk[h * hstride + i] = er_f32_to_f16(k[(h * T + t) * hd + i]);
                dv[h * hstride + i] = er_f32_to_f16(v[(h * T + t) * hd + i]);
            }
        if (p >= S && (p - S) % G == G - 1) {
            int r = flush_group(c, ((p - S) / G) % c->n_blocks);
            if (r) return r;
        }
    }
    return 0;
}

/* ---- fused decode layer ---------------------------------------------------------------------------- */

int er_decode_layer_kivi(const er_decode_cfg *cfg, const er_layer *L, const er_kivi *c, int64_t pos) {
    if (kivi_check(c) || c->bits == 16 || !cfg || pos < 0 || !c->q_sink || cfg->n_kv_heads != c->n_kv_heads ||
        cfg->head_dim != c->head_dim)
        return -1;
    int r = er_decode_attn_in(cfg, L, -1);
    if (r) return r;
    const int64_t nh = cfg->n_heads, hd = cfg->head_dim, S = c->sinks, pc = S + c->window - 1;
    const float *qs = NULL;
    if (S > 0 && pos > pc) { /* sink keys: the query at its StreamingLLM in-cache position */
        memcpy(c->q_sink, cfg->q, sizeof(float) * (size_t)(nh * hd));
        er_rope_neox(c->q_sink, nh, hd, pc, L->rope_theta, L->rope_freq_scale);
        qs = c->q_sink;
    }
    er_rope_neox(cfg->q, nh, hd, pos, L->rope_theta, L->rope_freq_scale);
    er_rope_neox(cfg->k, cfg->n_kv_heads, hd, pos, L->rope_theta, L->rope_freq_scale);
    if ((r = er_kivi_attention(c, cfg->q, qs, cfg->k, cfg->v, cfg->att, nh, 1, pos, cfg->attn_scale, cfg->softcap)))
        return r;
    if ((r = er_kivi_store(c, cfg->k, cfg->v, 1, pos))) return r;
    return er_decode_attn_out(cfg, L);
}
