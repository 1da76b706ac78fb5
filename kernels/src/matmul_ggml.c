/* Matmul kernels for weights in GGUF block formats read verbatim: q4_1, q5_0, q5_1 (blocks of 32) and the
 * K-quants q2_K, q3_K, q4_K, q5_K, q6_K (super-blocks of 256). Layouts and the math: ggml_blocks.h.
 *
 * Activations are quantized on the fly the way llama.cpp's CPU backend does for these types (all variants
 * bit-identical: IEEE float ops, round-half-even):
 *   32-element formats: Q8_0 per 32 values: dy = fp16(amax / 127), a = round(x * 127 / amax) (as matmul.c),
 *     and sy = dy * sum(a) per block (block_q8_1's s, kept in f32: dy * sum is exact there);
 *   K-quants: Q8_K per 256 (quantize_row_q8_K_ref): the value of largest magnitude mx (the first on ties),
 *     iscale = -127 / mx, a = min(127, round(iscale * x)), dy = 1 / iscale (f32), bsum = sums of 16.
 * Then per block (super-block) integer dots of the unsigned codes with a, the block's integer scales applied in
 * int32 (K-quants), and one float step per block:
 *   K-quants:   y += dy * (dA * sum_j sc_j dot_j - dB * sum_j mn_j bsum_j)   (dA = dB: one int32 difference)
 *   32-blocks:  y += fw * dy * dot + fm * sy
 *
 * Variants: scalar (portable: the canonical forms of ggml_blocks.h, natural activation order), AVX2 (below) and
 * NEON with / without sdot (matmul_ggml_neon.c). Rows are split across the thread pool; er_matmul_multi
 * quantizes x once for weights that share the activation kind; 16 tokens or more are quantized across the pool.
 * AVX2, K-quants: a super-block is 8 chunks of 32 codes (unsigned, natural order, one or two 32-byte loads
 *   unpacked with shifts and masks); per chunk maddubs with the activations (int16 pair sums) and madd with the
 *   16-bit scales of its two sub-blocks (one in-lane shuffle of the widened scales), int32 sums; the offsets
 *   from one madd of the 16 mins with the 16 activation sums; one FMA per super-block and token. GEMV dots each
 *   chunk as it is unpacked; GEMM unpacks a super-block once per tile of 32 tokens and meets 4 tokens per pass.
 * AVX2, 32-element blocks: a PAIR of blocks is one 256-bit load of both blocks' 16 code bytes, whose low
 *   nibbles are elements 0-15 and high nibbles 16-31 of each: the activations are stored in that pair order
 *   (g32_pdot), so a pair costs 2 maddubs and no shuffles; the fifth bits (q5_0, q5_1) come from one 64-bit
 *   broadcast of both qh words. 8 blocks reduce to one vector (lanes [0 2 4 6 | 1 3 5 7]) met by one FMA with
 *   the gathered fw * dy (and one with fm * sy). GEMM unpacks a group of 8 blocks once per tile of 32 tokens.
 */
#include <math.h>
#include <stdlib.h>

#include "edgerun_kernels.h"
#include "er_internal.h"
#include "ggml_blocks.h"

#define GG_INLINE inline __attribute__((always_inline))
#define GG_TT 32 /* tokens per GEMM tile */
#ifndef GG_PF_BYTES
/* GEMV software prefetch distance: the weight stream GG_PF_BYTES ahead is requested while a group is dotted
 * (the hardware prefetchers alone keep too few lines in flight for one core; +11% SmolLM2 Q4_1 decode) */
#define GG_PF_BYTES 4096
#endif

int er_ggml_type_supported(int type) { return gg_is_type(type); }
int er_ggml_type_size(int type) { return gg_type_size(type); }

/* ---- activation quantization -------------------------------------------------------------------- */

/* one token: x (k) -> q (ngrp * 256, zero past k), d / s / bs as gg_act describes (one token's part) */
static void gg_quant_row_scalar(const float *x, int64_t k, int kq, int64_t ngrp, int8_t *q, float *d, float *s,
                                int16_t *bs) {
    float v[256];
    for (int64_t g = 0; g < ngrp; g++) {
        for (int i = 0; i < 256; i++) v[i] = g * 256 + i < k ? x[g * 256 + i] : 0.0f;
        int8_t *qg = q + g * 256;
        if (kq) {
            float amax = 0.0f, mx = 0.0f;
            for (int i = 0; i < 256; i++)
                if (fabsf(v[i]) > amax) amax = fabsf(v[i]), mx = v[i];
            const float iscale = amax != 0.0f ? -127.0f / mx : 0.0f;
            d[g] = amax != 0.0f ? 1.0f / iscale : 0.0f;
            for (int j = 0; j < 16; j++) {
                int sum = 0;
                for (int i = 16 * j; i < 16 * j + 16; i++) {
                    int r = (int)lrintf(v[i] * iscale);
                    r = r > 127 ? 127 : r < -127 ? -127 : r;
                    qg[i] = (int8_t)r;
                    sum += r;
                }
                bs[g * 16 + j] = (int16_t)sum;
            }
        } else {
            for (int b = 0; b < 8; b++) {
                const float *vb = v + 32 * b;
                float amax = 0.0f;
                for (int i = 0; i < 32; i++) amax = fabsf(vb[i]) > amax ? fabsf(vb[i]) : amax;
                const float db = er_f16_to_f32(er_f32_to_f16(amax / 127.0f));
                const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
                int sum = 0;
                for (int i = 0; i < 32; i++) {
                    int r = (int)lrintf(vb[i] * id);
                    r = r > 127 ? 127 : r < -127 ? -127 : r;
                    qg[32 * b + i] = (int8_t)r;
                    sum += r;
                }
                d[g * 8 + b] = db;
                s[g * 8 + b] = db * (float)sum;
            }
        }
    }
}

#if ER_X86
#define GG_AVX2 __attribute__((target("avx2,fma,f16c")))

/* prefetch the lines of [p + GG_PF_BYTES, + n bytes) that lie before `end` (the job's last weight byte) */
GG_AVX2 static GG_INLINE void gg_prefetch_ahead(const uint8_t *p, const int n, const uint8_t *end) {
    const uint8_t *f = p + GG_PF_BYTES;
    if (f + n > end) return;
    for (int o = 0; o < n; o += 64) _mm_prefetch((const char *)f + o, _MM_HINT_T0);
}

/* 8 values -> 8 int32 = clamp(round-half-even(v * id), -127, 127) (cvtps rounds as lrintf in the default mode) */
GG_AVX2 static GG_INLINE __m256i gg_q8(const float *v, __m256 id) {
    __m256i r = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v), id));
    return _mm256_max_epi32(_mm256_min_epi32(r, _mm256_set1_epi32(127)), _mm256_set1_epi32(-127));
}

/* 32 values -> 32 int8 in natural order stored at q; returns their int32 partial sums (8 lanes) */
GG_AVX2 static GG_INLINE __m256i gg_q32(const float *v, __m256 id, int8_t *q) {
    __m256i a = gg_q8(v, id), b = gg_q8(v + 8, id), c = gg_q8(v + 16, id), d = gg_q8(v + 24, id);
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
    _mm256_storeu_si256((__m256i *)q, _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    return _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d));
}

GG_AVX2 static GG_INLINE float gg_hmax(__m256 m) {
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

GG_AVX2 static void gg_quant_row_avx2(const float *x, int64_t k, int kq, int64_t ngrp, int8_t *q, float *d,
                                      float *s, int16_t *bs) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    float pad[256];
    for (int64_t g = 0; g < ngrp; g++) {
        const float *v = x + g * 256;
        if ((g + 1) * 256 > k) {
            for (int i = 0; i < 256; i++) pad[i] = g * 256 + i < k ? x[g * 256 + i] : 0.0f;
            v = pad;
        }
        int8_t *qg = q + g * 256;
        if (kq) {
            __m256 m = _mm256_setzero_ps();
            for (int i = 0; i < 256; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(v + i)));
            const float amax = gg_hmax(m);
            float iscale = 0.0f;
            d[g] = 0.0f;
            if (amax != 0.0f) {
                int i = 0;
                while (i < 255 && fabsf(v[i]) != amax) i++; /* the first value of largest magnitude */
                iscale = -127.0f / v[i];
                d[g] = 1.0f / iscale;
            }
            const __m256 id = _mm256_set1_ps(iscale);
            for (int j = 0; j < 8; j++) { /* 32 values: two sums of 16 */
                const float *vj = v + 32 * j;
                __m256i a = gg_q8(vj, id), b = gg_q8(vj + 8, id), c = gg_q8(vj + 16, id), e = gg_q8(vj + 24, id);
                __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, e));
                _mm256_storeu_si256((__m256i *)(qg + 32 * j),
                                    _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
                bs[g * 16 + 2 * j] = (int16_t)er_hsum8_i32(_mm256_add_epi32(a, b));
                bs[g * 16 + 2 * j + 1] = (int16_t)er_hsum8_i32(_mm256_add_epi32(c, e));
            }
        } else {
            for (int b = 0; b < 8; b++) {
                const float *vb = v + 32 * b;
                __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(vb)),
                                                       _mm256_andnot_ps(sign, _mm256_loadu_ps(vb + 8))),
                                         _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(vb + 16)),
                                                       _mm256_andnot_ps(sign, _mm256_loadu_ps(vb + 24))));
                const float amax = gg_hmax(m);
                const float db = _cvtsh_ss(_cvtss_sh(amax / 127.0f, 0));
                const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
                int8_t tmp[32];
                const int sum = er_hsum8_i32(gg_q32(vb, _mm256_set1_ps(id), tmp));
                int8_t *o = qg + 64 * (b >> 1) + 16 * (b & 1); /* pair layout (see g32_pdot) */
                memcpy(o, tmp, 16);
                memcpy(o + 32, tmp + 16, 16);
                const int l = (b >> 1) + 4 * (b & 1); /* factors in the lane order of g32_reduce */
                d[g * 8 + l] = db;
                s[g * 8 + l] = db * (float)sum;
            }
        }
    }
}
#endif

/* ---- scalar kernels ------------------------------------------------------------------------------ */

/* y[t * ldy] for tokens 0..m-1 of row n */
static void gg_row_scalar(const gg_job *j, int64_t n) {
    const er_weight *w = j->w;
    const gg_act *a = j->a;
    const int type = w->type, ts = gg_type_size(type);
    const int64_t nblk = w->k / gg_qk(type);
    const uint8_t *row = (const uint8_t *)w->data + n * nblk * ts;
    if (a->kq) {
        gg_kform f;
        float acc[GG_TT];
        for (int64_t t0 = 0; t0 < a->m; t0 += GG_TT) {
            const int T = (int)(a->m - t0 < GG_TT ? a->m - t0 : GG_TT);
            for (int t = 0; t < T; t++) acc[t] = 0.0f;
            for (int64_t g = 0; g < nblk; g++) {
                gg_unpack_k(type, row + g * ts, &f);
                for (int t = 0; t < T; t++) {
                    const int8_t *q = a->q + (t0 + t) * a->qstride + g * 256;
                    const int16_t *bs = a->bs + ((t0 + t) * a->ngrp + g) * 16;
                    int32_t si = 0, so = 0;
                    for (int jj = 0; jj < 16; jj++) {
                        int32_t dot = 0;
                        for (int e = 16 * jj; e < 16 * jj + 16; e++) dot += f.q[e] * q[e];
                        si += f.sc[jj] * dot;
                        so += f.mn[jj] * bs[jj];
                    }
                    const float dy = a->d[(t0 + t) * a->ngrp + g];
                    if (f.dA == f.dB) acc[t] += dy * f.dA * (float)(si - so);
                    else acc[t] += dy * (f.dA * (float)si - f.dB * (float)so);
                }
            }
            for (int t = 0; t < T; t++) j->y[(t0 + t) * w->n + n] = acc[t];
        }
        return;
    }
    uint8_t qb[32];
    for (int64_t t = 0; t < a->m; t++) {
        const int8_t *q = a->q + t * a->qstride;
        const float *dy = a->d + t * a->ngrp * 8, *sy = a->s + t * a->ngrp * 8;
        float acc = 0.0f, accm = 0.0f;
        for (int64_t b = 0; b < nblk; b++) {
            float fw, fm;
            gg_unpack_32(type, row + b * ts, qb, &fw, &fm);
            int32_t dot = 0;
            for (int e = 0; e < 32; e++) dot += qb[e] * q[32 * b + e];
            acc += fw * (dy[b] * (float)dot);
            accm += fm * sy[b];
        }
        j->y[t * w->n + n] = acc + accm;
    }
}

/* ---- AVX2 kernels -------------------------------------------------------------------------------- */
#if ER_X86

GG_AVX2 static GG_INLINE float gg_h2f(const uint8_t *p) { return _cvtsh_ss(gg_u16(p)); }

/* K-quant super-block in registers: codes of elements 32c..32c+31 in q[c] (unsigned, natural order), the
 * sub-block scales as int16 with both 128-bit lanes alike (se: scales 0-7 of 16, so: 8-15; per-32 scales
 * (q4_K, q5_K): se = the 8 scales), the 16 offsets as int16 (mn) */
typedef struct {
    __m256i q[8];
    __m256i se, so;
    __m256i mn;
    float dA, dB;
} gk_avx;

static GG_INLINE int gk_per32(int type) { return type == ER_W_Q4_K || type == ER_W_Q5_K; }

/* 16 int8 scales (per 16 elements) -> se, so */
GG_AVX2 static GG_INLINE void gk_scales16(__m128i sc, gk_avx *u) {
    u->se = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(sc));
    u->so = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(_mm_unpackhi_epi64(sc, sc)));
}

/* bit `from` of each byte moved to bit `to` (other bits cleared) */
GG_AVX2 static GG_INLINE __m256i gg_bit(__m256i v, int from, int to) {
    __m256i b = _mm256_and_si256(v, _mm256_set1_epi8((char)(1 << from)));
    if (to > from) return _mm256_slli_epi16(b, to - from);
    if (to < from) return _mm256_srli_epi16(b, from - to);
    return b;
}

/* int16 [sc[2c] x 8 | sc[2c+1] x 8] (per 16 elements): the scales of chunk c's two sub-blocks, lined up with
 * maddubs' output; one in-lane shuffle */
GG_AVX2 static GG_INLINE __m256i gk_scale(const int type, const gk_avx *u, int c) {
    if (gk_per32(type)) { /* int16 #c everywhere */
        const __m256i sh = _mm256_set1_epi16((short)(2 * c | (2 * c + 1) << 8));
        return _mm256_shuffle_epi8(u->se, sh);
    }
    const int i = c & 3; /* low lane: int16 #2i, high lane: #2i + 1 of se (c < 4) or so */
    const __m256i sh = _mm256_setr_m128i(_mm_set1_epi16((short)(4 * i | (4 * i + 1) << 8)),
                                         _mm_set1_epi16((short)((4 * i + 2) | (4 * i + 3) << 8)));
    return _mm256_shuffle_epi8(c < 4 ? u->se : u->so, sh);
}

/* chunk c's codes x: kept (!fused) or dotted with a at once */
GG_AVX2 static GG_INLINE void gk_emit(const int type, gk_avx *u, const int c, __m256i x, const int8_t *a,
                                      __m256i *acc, const int fused) {
    if (!fused) {
        u->q[c] = x;
        return;
    }
    *acc = _mm256_add_epi32(
        *acc, _mm256_madd_epi16(_mm256_maddubs_epi16(x, _mm256_loadu_si256((const __m256i *)(a + 32 * c))), gk_scale(type, u, c)));
}

/* Unpack a super-block: the scales first, then each chunk's codes go to GK_EMIT: stored in u->q (!fused: GEMM
 * keeps them for many tokens) or dotted at once with the activations a into *acc (GEMV: few live registers) */
#define GK_EMIT(C, X) gk_emit(type, u, C, X, a, acc, fused)
GG_AVX2 static GG_INLINE void gk_unpack_avx2(const int type, const uint8_t *b, gk_avx *u, const int fused,
                                            const int8_t *a, __m256i *acc) {
    const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3);
    if (type == ER_W_Q4_K || type == ER_W_Q5_K) {
        uint32_t sl, sh, ml, mh;
        gg_k4_scales(b + 4, &sl, &sh, &ml, &mh);
        const __m128i sv = _mm_setr_epi32((int)sl, (int)sh, 0, 0), mm = _mm_setr_epi32((int)ml, (int)mh, 0, 0);
        u->se = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sv));
        u->mn = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mm, mm)); /* per 16: each per-32 min twice */
        u->dA = gg_h2f(b);
        u->dB = gg_h2f(b + 2);
        const uint8_t *qs = b + (type == ER_W_Q5_K ? 48 : 16);
        const __m256i qh = type == ER_W_Q5_K ? _mm256_loadu_si256((const __m256i *)(b + 16)) : _mm256_setzero_si256();
        #pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * i));
            __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            if (type == ER_W_Q5_K) {
                lo = _mm256_or_si256(lo, gg_bit(qh, 2 * i, 4));
                hi = _mm256_or_si256(hi, gg_bit(qh, 2 * i + 1, 4));
            }
            GK_EMIT(2 * i, lo);
            GK_EMIT(2 * i + 1, hi);
        }
    } else if (type == ER_W_Q6_K) {
        const __m128i sc = _mm_loadu_si128((const __m128i *)(b + 192));
        gk_scales16(sc, u);
        u->mn = _mm256_slli_epi16(_mm256_cvtepi8_epi16(sc), 5);
        u->dA = u->dB = gg_h2f(b + 208);
        const __m256i m30 = _mm256_set1_epi8(0x30);
        #pragma GCC unroll 4
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(b + 64 * h));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32));
            const __m256i hb = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
            GK_EMIT(4 * h, _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30)));
            GK_EMIT(4 * h + 1, _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30)));
            GK_EMIT(4 * h + 2, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(hb, m30)));
            GK_EMIT(4 * h + 3, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                              _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30)));
        }
    } else if (type == ER_W_Q3_K) {
        uint32_t sw[4];
        gg_k3_scales(b + 96, sw);
        const __m128i sc = _mm_loadu_si128((const __m128i *)sw);
        gk_scales16(sc, u);
        u->mn = _mm256_slli_epi16(_mm256_cvtepi8_epi16(sc), 2);
        u->dA = u->dB = gg_h2f(b + 108);
        const __m256i hm = _mm256_loadu_si256((const __m256i *)b);
        #pragma GCC unroll 4
        for (int h = 0; h < 2; h++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(b + 32 + 32 * h));
            GK_EMIT(4 * h, _mm256_or_si256(_mm256_and_si256(v, m2), gg_bit(hm, 4 * h, 2)));
            GK_EMIT(4 * h + 1, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 2), m2), gg_bit(hm, 4 * h + 1, 2)));
            GK_EMIT(4 * h + 2, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m2), gg_bit(hm, 4 * h + 2, 2)));
            GK_EMIT(4 * h + 3, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 6), m2), gg_bit(hm, 4 * h + 3, 2)));
        }
    } else { /* ER_W_Q2_K */
        const __m128i sv = _mm_loadu_si128((const __m128i *)b);
        gk_scales16(_mm_and_si128(sv, _mm_set1_epi8(15)), u);
        u->mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sv, 4), _mm_set1_epi8(15)));
        u->dA = gg_h2f(b + 80);
        u->dB = gg_h2f(b + 82);
        #pragma GCC unroll 4
        for (int h = 0; h < 2; h++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(b + 16 + 32 * h));
            GK_EMIT(4 * h, _mm256_and_si256(v, m2));
            GK_EMIT(4 * h + 1, _mm256_and_si256(_mm256_srli_epi16(v, 2), m2));
            GK_EMIT(4 * h + 2, _mm256_and_si256(_mm256_srli_epi16(v, 4), m2));
            GK_EMIT(4 * h + 3, _mm256_and_si256(_mm256_srli_epi16(v, 6), m2));
        }
    }
}
#undef GK_EMIT

static GG_INLINE int gk_same_d(int type) { return type == ER_W_Q3_K || type == ER_W_Q6_K; }

/* the float step of one super-block and token: s = sum_j sc_j dot_j (int32 lanes), off from mn and bsums */
GG_AVX2 static GG_INLINE __m256 gk_fma(const int type, const gk_avx *u, __m256i s, const int16_t *bs, float dy,
                                      __m256 acc) {
    const __m256i off = _mm256_madd_epi16(u->mn, _mm256_loadu_si256((const __m256i *)bs));
    if (gk_same_d(type)) return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(s, off)), _mm256_set1_ps(dy * u->dA), acc);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(dy * u->dA), acc);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(off), _mm256_set1_ps(-dy * u->dB), acc);
}

/* acc + an unpacked super-block's contribution for one token (a: its 256 activations, bs: their 16 sums) */
GG_AVX2 static GG_INLINE __m256 gk_dot(const int type, const gk_avx *u, const int8_t *a, const int16_t *bs, float dy,
                                      __m256 acc) {
    __m256i s = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++)
        s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(u->q[c], _mm256_loadu_si256((const __m256i *)(a + 32 * c))),
                                                  gk_scale(type, u, c)));
    return gk_fma(type, u, s, bs, dy, acc);
}

/* GEMV over rows [n0, n1): each chunk dotted as it is unpacked */
GG_AVX2 static GG_INLINE void gk_gemv_avx2(const int type, const gg_job *j, int64_t n0, int64_t n1) {
    const er_weight *w = j->w;
    const gg_act *a = j->a;
    const int ts = gg_type_size(type);
    const int64_t nsb = w->k / 256;
    const uint8_t *end = (const uint8_t *)w->data + n1 * nsb * ts;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = (const uint8_t *)w->data + n * nsb * ts;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t g = 0; g < nsb; g++) {
            gg_prefetch_ahead(row + g * ts, ts, end);
            gk_avx u;
            __m256i s = _mm256_setzero_si256();
            gk_unpack_avx2(type, row + g * ts, &u, 1, a->q + g * 256, &s);
            acc = gk_fma(type, &u, s, a->bs + g * 16, a->d[g], acc);
        }
        j->y[n] = er_hsum8(acc);
    }
}

/* GEMM over rows [n0, n1): per tile of up to 32 tokens, each super-block is unpacked once (scales widened once)
 * and dotted with 4 tokens at a time (codes and scales loaded once per 4 tokens) */
GG_AVX2 static GG_INLINE void gk_gemm_avx2(const int type, const gg_job *j, int64_t n0, int64_t n1) {
    const er_weight *w = j->w;
    const gg_act *a = j->a;
    const int ts = gg_type_size(type);
    const int64_t nsb = w->k / 256, N = w->n;
    __m256 acc[GG_TT];
    __m256i qv[8], sv[8];
    for (int64_t t0 = 0; t0 < a->m; t0 += GG_TT) {
        const int T = (int)(a->m - t0 < GG_TT ? a->m - t0 : GG_TT);
        for (int64_t n = n0; n < n1; n++) {
            const uint8_t *row = (const uint8_t *)w->data + n * nsb * ts;
            for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
            for (int64_t g = 0; g < nsb; g++) {
                gk_avx u;
                gk_unpack_avx2(type, row + g * ts, &u, 0, NULL, NULL);
#pragma GCC unroll 8
                for (int c = 0; c < 8; c++) qv[c] = u.q[c], sv[c] = gk_scale(type, &u, c);
                int t = 0;
                for (; t + 4 <= T; t += 4) {
                    const int8_t *q0 = a->q + (t0 + t) * a->qstride + g * 256;
                    const int64_t qs = a->qstride;
                    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
#pragma GCC unroll 8
                    for (int c = 0; c < 8; c++) {
                        const __m256i qq = qv[c], ss = sv[c];
#define GK_T(S, I) \
    S = _mm256_add_epi32(S, _mm256_madd_epi16(_mm256_maddubs_epi16(qq, _mm256_loadu_si256((const __m256i *)(q0 + (I) * qs + 32 * c))), ss))
                        GK_T(s0, 0);
                        GK_T(s1, 1);
                        GK_T(s2, 2);
                        GK_T(s3, 3);
#undef GK_T
                    }
                    __m256i si[4] = {s0, s1, s2, s3};
                    for (int i = 0; i < 4; i++) {
                        const int64_t tt = t0 + t + i;
                        const float dy = a->d[tt * a->ngrp + g];
                        const __m256i off =
                            _mm256_madd_epi16(u.mn, _mm256_loadu_si256((const __m256i *)(a->bs + (tt * a->ngrp + g) * 16)));
                        if (gk_same_d(type)) {
                            acc[t + i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(si[i], off)),
                                                         _mm256_set1_ps(dy * u.dA), acc[t + i]);
                        } else {
                            acc[t + i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(si[i]), _mm256_set1_ps(dy * u.dA), acc[t + i]);
                            acc[t + i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(off), _mm256_set1_ps(-dy * u.dB), acc[t + i]);
                        }
                    }
                }
                for (; t < T; t++) {
                    const int64_t tt = t0 + t;
                    acc[t] = gk_dot(type, &u, a->q + tt * a->qstride + g * 256, a->bs + (tt * a->ngrp + g) * 16,
                                    a->d[tt * a->ngrp + g], acc[t]);
                }
            }
            for (int t = 0; t < T; t++) j->y[(t0 + t) * N + n] = er_hsum8(acc[t]);
        }
    }
}

/* 32-element blocks. The AVX2 activations of these formats are stored per PAIR of blocks (2p, 2p + 1) as
 *   [2p: e 0-15 | 2p+1: e 0-15 | 2p: e 16-31 | 2p+1: e 16-31]
 * (gg_quant_row_avx2), the order one 256-bit load of both blocks' 16 code bytes unpacks to (low nibbles:
 * elements 0-15, high: 16-31), so a pair costs 2 maddubs and no shuffles. A group of 8 blocks reduces to one
 * vector, lanes [0 2 4 6 | 1 3 5 7], met by one FMA with the 8 products fw * dy: the weight factors gathered
 * in that order, the activation factors d, s stored in it. */

typedef struct {
    __m256i lo[4], hi[4]; /* pair p: [2p | 2p+1] codes of elements 0-15 (lo), 16-31 (hi) */
    __m256 fw, fm;        /* lane order */
} g32_avx;

/* the fifth bits of a pair of blocks as 0x10 / 0 bytes, in the pair layout: qq = qh0 | qh1 << 32 broadcast;
 * hi = 0: [bits 0-15 of qh0 | bits 0-15 of qh1], hi = 1: bits 16-31 */
GG_AVX2 static GG_INLINE __m256i g32_hbits(__m256i qq, const int hi) {
    const __m256i sh = hi ? _mm256_setr_epi64x(0x0202020202020202ll, 0x0303030303030303ll, 0x0606060606060606ll,
                                               0x0707070707070707ll)
                          : _mm256_setr_epi64x(0, 0x0101010101010101ll, 0x0404040404040404ll, 0x0505050505050505ll);
    const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    const __m256i by = _mm256_and_si256(_mm256_shuffle_epi8(qq, sh), sel);
    return _mm256_and_si256(_mm256_cmpeq_epi8(by, sel), _mm256_set1_epi8(0x10));
}

/* the codes of blocks b0 and (when two) b0 + ts, in the pair layout: lo = elements 0-15, hi = 16-31 */
GG_AVX2 static GG_INLINE void g32_pair(const int type, const uint8_t *b0, const int ts, const int two, __m256i *lo,
                                       __m256i *hi) {
    const int oq = type == ER_W_Q4_1 ? 4 : type == ER_W_Q5_0 ? 6 : 8, oh = type == ER_W_Q5_0 ? 2 : 4;
    const __m256i m4 = _mm256_set1_epi8(15);
    const __m128i v0 = _mm_loadu_si128((const __m128i *)(b0 + oq));
    const __m256i v = two ? _mm256_setr_m128i(v0, _mm_loadu_si128((const __m128i *)(b0 + ts + oq)))
                          : _mm256_setr_m128i(v0, _mm_setzero_si128());
    *lo = _mm256_and_si256(v, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    if (type != ER_W_Q4_1) {
        const uint64_t h = gg_u32(b0 + oh) | (uint64_t)(two ? gg_u32(b0 + ts + oh) : 0) << 32;
        const __m256i qq = _mm256_set1_epi64x((long long)h);
        *lo = _mm256_or_si256(*lo, g32_hbits(qq, 0));
        *hi = _mm256_or_si256(*hi, g32_hbits(qq, 1));
    }
}

/* fw, fm of blocks 0..nb-1 at p (stride ts) in lane order [0 2 4 6 | 1 3 5 7]; 0 for missing blocks */
GG_AVX2 static GG_INLINE void g32_factors(const int type, const uint8_t *p, const int ts, const int nb, __m256 *fw,
                                          __m256 *fm) {
    if (nb == 8 && type == ER_W_Q5_0) { /* the f16 d of blocks 0 2 4 6 1 3 5 7 inserted from memory */
        __m128i d = _mm_cvtsi32_si128(gg_u16(p));
#define G32_INS(L, B) d = _mm_insert_epi16(d, gg_u16(p + (B) * ts), L)
        G32_INS(1, 2);
        G32_INS(2, 4);
        G32_INS(3, 6);
        G32_INS(4, 1);
        G32_INS(5, 3);
        G32_INS(6, 5);
        G32_INS(7, 7);
#undef G32_INS
        *fw = _mm256_cvtph_ps(d);
        *fm = _mm256_mul_ps(*fw, _mm256_set1_ps(-16.0f));
        return;
    }
    if (nb == 8) { /* q4_1, q5_1: d | m << 16 of blocks 0 2 4 6 | 1 3 5 7 as one word each, then d and m apart */
        /* inserted lane by lane: a _mm256_setr_epi32 of loaded words compiles to stores on the stack read back
         * as one 32-byte load, which stalls on store forwarding (~40% of the GEMV's time) */
        __m128i e = _mm_cvtsi32_si128((int)gg_u32(p)), o = _mm_cvtsi32_si128((int)gg_u32(p + ts));
        e = _mm_insert_epi32(e, (int)gg_u32(p + 2 * ts), 1);
        o = _mm_insert_epi32(o, (int)gg_u32(p + 3 * ts), 1);
        e = _mm_insert_epi32(e, (int)gg_u32(p + 4 * ts), 2);
        o = _mm_insert_epi32(o, (int)gg_u32(p + 5 * ts), 2);
        e = _mm_insert_epi32(e, (int)gg_u32(p + 6 * ts), 3);
        o = _mm_insert_epi32(o, (int)gg_u32(p + 7 * ts), 3);
        const __m256i dm = _mm256_setr_m128i(e, o);
        /* per 128-bit lane: [d d d d | m m m m]; then the lanes' d halves together and the m halves together */
        const __m256i sp = _mm256_shuffle_epi8(
            dm, _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3,
                                 6, 7, 10, 11, 14, 15));
        const __m256i g = _mm256_permute4x64_epi64(sp, 0xd8); /* qwords 0 2 1 3 */
        *fw = _mm256_cvtph_ps(_mm256_castsi256_si128(g));
        *fm = _mm256_cvtph_ps(_mm256_extracti128_si256(g, 1));
        return;
    }
    uint64_t de = 0, doo = 0, me = 0, mo = 0; /* f16 d, m of blocks 0 2 4 6 / 1 3 5 7 */
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        const uint8_t *b0 = p + 2 * i * ts, *b1 = b0 + ts;
        if (2 * i < nb) {
            de |= (uint64_t)gg_u16(b0) << 16 * i;
            if (type != ER_W_Q5_0) me |= (uint64_t)gg_u16(b0 + 2) << 16 * i;
        }
        if (2 * i + 1 < nb) {
            doo |= (uint64_t)gg_u16(b1) << 16 * i;
            if (type != ER_W_Q5_0) mo |= (uint64_t)gg_u16(b1 + 2) << 16 * i;
        }
    }
    *fw = _mm256_cvtph_ps(_mm_set_epi64x((long long)doo, (long long)de));
    *fm = type == ER_W_Q5_0 ? _mm256_mul_ps(*fw, _mm256_set1_ps(-16.0f))
                            : _mm256_cvtph_ps(_mm_set_epi64x((long long)mo, (long long)me));
}

/* blocks 0..nb-1 (nb <= 8) at p (stride ts) of one row; missing blocks give zero codes and factors */
GG_AVX2 static GG_INLINE void g32_unpack(const int type, const uint8_t *p, const int ts, const int nb, g32_avx *u) {
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        if (2 * i >= nb) u->lo[i] = u->hi[i] = _mm256_setzero_si256();
        else g32_pair(type, p + 2 * i * ts, ts, 2 * i + 1 < nb, &u->lo[i], &u->hi[i]);
    }
    g32_factors(type, p, ts, nb, &u->fw, &u->fm);
}

/* the 4 pair dots [2i (4 lanes) | 2i+1 (4 lanes)] -> lanes [0 2 4 6 | 1 3 5 7] */
GG_AVX2 static GG_INLINE __m256i g32_reduce(const __m256i v[4]) {
    __m256i t0 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[0], v[1]), _mm256_unpackhi_epi32(v[0], v[1]));
    __m256i t1 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2], v[3]), _mm256_unpackhi_epi32(v[2], v[3]));
    return _mm256_add_epi32(_mm256_unpacklo_epi64(t0, t1), _mm256_unpackhi_epi64(t0, t1));
}

/* one pair's dot: int16 sums of 4 products (|.| <= 4 * 31 * 127) widened once */
GG_AVX2 static GG_INLINE __m256i g32_pdot(__m256i lo, __m256i hi, const int8_t *a) {
    return _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)a)),
                                              _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(a + 32)))),
                             _mm256_set1_epi16(1));
}

/* integer dots of the group's 8 blocks with pair-layout activations a (256 bytes): lanes [0 2 4 6 | 1 3 5 7] */
GG_AVX2 static GG_INLINE __m256i g32_dots(const g32_avx *u, const int8_t *a) {
    __m256i v[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) v[i] = g32_pdot(u->lo[i], u->hi[i], a + 64 * i);
    return g32_reduce(v);
}

/* acc += dots * fw * dy; accm += fm * sy for one token's group (d, s: its 8 factors, stored in lane order) */
GG_AVX2 static GG_INLINE void g32_fma(__m256i dots, __m256 fw, __m256 fm, const float *d, const float *s, __m256 *acc,
                                      __m256 *accm) {
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_mul_ps(fw, _mm256_loadu_ps(d)), *acc);
    *accm = _mm256_fmadd_ps(fm, _mm256_loadu_ps(s), *accm);
}

/* GEMV: each pair is unpacked and dotted at once (few live registers) */
GG_AVX2 static GG_INLINE void g32_group_gemv(const int type, const uint8_t *p, const int ts, const int nb,
                                             const int8_t *a, const float *d, const float *s, __m256 *acc,
                                             __m256 *accm) {
    __m256i v[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        if (2 * i >= nb) {
            v[i] = _mm256_setzero_si256();
            continue;
        }
        __m256i lo, hi;
        g32_pair(type, p + 2 * i * ts, ts, 2 * i + 1 < nb, &lo, &hi);
        v[i] = g32_pdot(lo, hi, a + 64 * i);
    }
    __m256 fw, fm;
    g32_factors(type, p, ts, nb, &fw, &fm);
    g32_fma(g32_reduce(v), fw, fm, d, s, acc, accm);
}

GG_AVX2 static GG_INLINE void g32_gemv_avx2(const int type, const gg_job *j, int64_t n0, int64_t n1) {
    const er_weight *w = j->w;
    const gg_act *a = j->a;
    const int ts = gg_type_size(type);
    const int64_t nblk = w->k / 32, nfull = nblk / 8;
    const int tail = (int)(nblk % 8);
    const uint8_t *end = (const uint8_t *)w->data + n1 * nblk * ts;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = (const uint8_t *)w->data + n * nblk * ts;
        __m256 acc = _mm256_setzero_ps(), accm = acc;
        for (int64_t g = 0; g < nfull; g++) {
            gg_prefetch_ahead(row + 8 * g * ts, 8 * ts, end);
            g32_group_gemv(type, row + 8 * g * ts, ts, 8, a->q + 256 * g, a->d + 8 * g, a->s + 8 * g, &acc, &accm);
        }
        if (tail)
            g32_group_gemv(type, row + 8 * nfull * ts, ts, tail, a->q + 256 * nfull, a->d + 8 * nfull, a->s + 8 * nfull,
                           &acc, &accm);
        j->y[n] = er_hsum8(acc) + er_hsum8(accm);
    }
}

/* GEMM: per tile of up to 32 tokens, each group of 8 blocks is unpacked once and met by every token */
GG_AVX2 static GG_INLINE void g32_gemm_avx2(const int type, const gg_job *j, int64_t n0, int64_t n1) {
    const er_weight *w = j->w;
    const gg_act *a = j->a;
    const int ts = gg_type_size(type);
    const int64_t nblk = w->k / 32, N = w->n, na = a->ngrp * 8, ngrp = (nblk + 7) / 8;
    __m256 acc[GG_TT]; /* one accumulator per token: both FMAs of a group land in it (half the spilled traffic) */
    for (int64_t t0 = 0; t0 < a->m; t0 += GG_TT) {
        const int T = (int)(a->m - t0 < GG_TT ? a->m - t0 : GG_TT);
        for (int64_t n = n0; n < n1; n++) {
            const uint8_t *row = (const uint8_t *)w->data + n * nblk * ts;
            for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
            for (int64_t g = 0; g < ngrp; g++) {
                g32_avx u;
                if (8 * g + 8 <= nblk) g32_unpack(type, row + 8 * g * ts, ts, 8, &u);
                else g32_unpack(type, row + 8 * g * ts, ts, (int)(nblk - 8 * g), &u);
                const int8_t *q = a->q + t0 * a->qstride + 256 * g;
                const float *d = a->d + t0 * na + 8 * g, *s = a->s + t0 * na + 8 * g;
                for (int t = 0; t < T; t++)
                    g32_fma(g32_dots(&u, q + t * a->qstride), u.fw, u.fm, d + t * na, s + t * na, &acc[t], &acc[t]);
            }
            for (int t = 0; t < T; t++) j->y[(t0 + t) * N + n] = er_hsum8(acc[t]);
        }
    }
}

/* one function per type and shape (the type a constant inside) */
#define GG_DEF(NAME, T)                                                                                             \
    GG_AVX2 static void gg_gemv_##NAME(const gg_job *j, int64_t n0, int64_t n1) {                                  \
        if (gg_is_k(T)) gk_gemv_avx2(T, j, n0, n1);                                                                 \
        else g32_gemv_avx2(T, j, n0, n1);                                                                           \
    }                                                                                                               \
    GG_AVX2 static void gg_gemm_##NAME(const gg_job *j, int64_t n0, int64_t n1) {                                  \
        if (gg_is_k(T)) gk_gemm_avx2(T, j, n0, n1);                                                                 \
        else g32_gemm_avx2(T, j, n0, n1);                                                                           \
    }
GG_DEF(q4_1, ER_W_Q4_1)
GG_DEF(q5_0, ER_W_Q5_0)
GG_DEF(q5_1, ER_W_Q5_1)
GG_DEF(q2_k, ER_W_Q2_K)
GG_DEF(q3_k, ER_W_Q3_K)
GG_DEF(q4_k, ER_W_Q4_K)
GG_DEF(q5_k, ER_W_Q5_K)
GG_DEF(q6_k, ER_W_Q6_K)
#undef GG_DEF

typedef void (*gg_rows_fn)(const gg_job *j, int64_t n0, int64_t n1);
static const gg_rows_fn gg_gemv_tab[] = {gg_gemv_q4_1, gg_gemv_q5_0, gg_gemv_q5_1, gg_gemv_q2_k,
                                         gg_gemv_q3_k, gg_gemv_q4_k, gg_gemv_q5_k, gg_gemv_q6_k};
static const gg_rows_fn gg_gemm_tab[] = {gg_gemm_q4_1, gg_gemm_q5_0, gg_gemm_q5_1, gg_gemm_q2_k,
                                         gg_gemm_q3_k, gg_gemm_q4_k, gg_gemm_q5_k, gg_gemm_q6_k};
#endif /* ER_X86 */

/* ---- the parallel job ---------------------------------------------------------------------------- */

typedef struct {
    gg_job j[8];
    int64_t off[9]; /* first row of each weight in the joint row space (multiples of 16) */
    int nw, isa;
} gg_multi;

static void gg_rows(const gg_job *j, int isa, int64_t n0, int64_t n1) {
#if ER_X86
    if (isa == ER_ISA_AVX2) {
        (j->a->m == 1 ? gg_gemv_tab : gg_gemm_tab)[j->w->type - ER_W_Q4_1](j, n0, n1);
        return;
    }
#endif
#if defined(__aarch64__)
    if (isa == ER_ISA_NEON) {
        er_gg_rows_neon(j, n0, n1);
        return;
    }
#endif
    (void)isa;
    for (int64_t n = n0; n < n1; n++) gg_row_scalar(j, n);
}

static void gg_task(void *vctx, int64_t start, int64_t end, int tid) {
    (void)tid;
    const gg_multi *mc = (const gg_multi *)vctx;
    for (int i = 0; i < mc->nw; i++) {
        const int64_t wend = mc->off[i] + mc->j[i].w->n;
        int64_t lo = start > mc->off[i] ? start : mc->off[i], hi = end < wend ? end : wend;
        if (lo < hi) gg_rows(&mc->j[i], mc->isa, lo - mc->off[i], hi - mc->off[i]);
    }
}

/* per-thread scratch for the quantized activations, kept between calls */
static _Thread_local void *gg_scratch = NULL;
static _Thread_local size_t gg_scratch_size = 0;

static void *gg_get_scratch(size_t n) {
    if (n > gg_scratch_size) {
        free(gg_scratch);
        n = (n + 4095) & ~(size_t)4095;
        gg_scratch = aligned_alloc(64, n);
        gg_scratch_size = gg_scratch ? n : 0;
    }
    return gg_scratch;
}

static int gg_check(const er_weight *w) {
    if (!w || w->n < 1 || w->k < 1 || !w->data || !gg_is_type(w->type)) return -1;
    if (w->block_size != gg_qk(w->type) || w->k % gg_qk(w->type)) return -2;
    return 0;
}

typedef struct {
    const gg_act *a;
    const float *x;
    int isa;
} gg_quant_ctx;

/* tokens [t0, t1) of x quantized into a (gg_prep) */
static void gg_quant_task(void *vctx, int64_t t0, int64_t t1, int tid) {
    (void)tid;
    const gg_quant_ctx *c = (const gg_quant_ctx *)vctx;
    const gg_act *a = c->a;
    const int64_t k = a->k, per = a->kq ? 1 : 8;
    const int kq = a->kq, isa = c->isa;
    for (int64_t t = t0; t < t1; t++) {
        int8_t *q = a->q + t * a->qstride;
        float *d = a->d + t * a->ngrp * per, *s = kq ? NULL : a->s + t * a->ngrp * 8;
        int16_t *bs = kq ? a->bs + t * a->ngrp * 16 : NULL;
        const float *xt = c->x + t * k;
#if ER_X86
        if (isa == ER_ISA_AVX2) {
            gg_quant_row_avx2(xt, k, kq, a->ngrp, q, d, s, bs);
            continue;
        }
#endif
#if defined(__aarch64__)
        if (isa == ER_ISA_NEON) {
            er_gg_quant_row_neon(xt, k, kq, a->ngrp, q, d, s, bs);
            continue;
        }
#endif
        (void)isa;
        gg_quant_row_scalar(xt, k, kq, a->ngrp, q, d, s, bs);
    }
}

/* x (m, k) quantized for weights of kind kq into the thread's scratch */
static int gg_prep(gg_act *a, const float *x, int64_t k, int kq, int64_t m, int isa) {
    a->m = m;
    a->k = k;
    a->kq = kq;
    a->ngrp = (k + 255) / 256;
    a->qstride = a->ngrp * 256 + 64;
    const size_t qbytes = ((size_t)(m * a->qstride) + 63) & ~(size_t)63;
    const size_t nd = (size_t)(m * a->ngrp * (kq ? 1 : 8)), ns = kq ? 0 : nd, nbs = kq ? (size_t)(m * a->ngrp * 16) : 0;
    char *buf = gg_get_scratch(qbytes + sizeof(float) * (nd + ns) + sizeof(int16_t) * nbs + 64);
    if (!buf) return -3;
    a->q = (int8_t *)buf;
    a->d = (float *)(buf + qbytes);
    a->s = a->d + nd;
    a->bs = (int16_t *)(a->s + ns);
    gg_quant_ctx qc = {.a = a, .x = x, .isa = isa};
    /* a prefill's tokens are quantized across the pool (rows of 640-2048 values: 8 tokens per chunk at least) */
    if (m >= 16) er_parallel_for(m, 8, gg_quant_task, &qc);
    else gg_quant_task(&qc, 0, m, 0);
    return 0;
}

int er_matmul_ggml(const er_weight *w, const float *x, float *y, int64_t m) {
    int r = gg_check(w);
    if (r) return r;
    if (!x || !y || m < 1) return -1;
    gg_act a;
    const int isa = er_get_isa();
    if ((r = gg_prep(&a, x, w->k, gg_is_k(w->type), m, isa))) return r;
    gg_multi mc = {.nw = 1, .isa = isa};
    mc.j[0] = (gg_job){.w = w, .a = &a, .y = y};
    mc.off[0] = 0;
    mc.off[1] = w->n;
    er_parallel_for(w->n, 16, gg_task, &mc);
    return 0;
}

/* weights that all are GGUF block types of one activation kind (and one K): x quantized once, one parallel job.
 * Returns 1 when it does not apply (the caller runs each weight on its own). */
int er_matmul_multi_ggml(const er_weight *const *ws, int nw, const float *x, float *const *ys, int64_t m) {
    if (nw < 1 || nw > 8) return 1;
    for (int i = 0; i < nw; i++) {
        if (gg_check(ws[i]) || gg_is_k(ws[i]->type) != gg_is_k(ws[0]->type) || ws[i]->k != ws[0]->k || !ys[i])
            return 1;
    }
    gg_act a;
    const int isa = er_get_isa();
    int r = gg_prep(&a, x, ws[0]->k, gg_is_k(ws[0]->type), m, isa);
    if (r) return r;
    gg_multi mc = {.nw = nw, .isa = isa};
    mc.off[0] = 0;
    for (int i = 0; i < nw; i++) {
        mc.j[i] = (gg_job){.w = ws[i], .a = &a, .y = ys[i]};
        mc.off[i + 1] = mc.off[i] + (ws[i]->n + 15) / 16 * 16;
    }
    er_parallel_for(mc.off[nw], 16, gg_task, &mc);
    return 0;
}
