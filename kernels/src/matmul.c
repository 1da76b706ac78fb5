/* Matmul kernels: y (m, N) = x (m, K) @ W^T for f32, f16 and block-quantized (MatMulNBits) W.
 *
 * Quantized path (the q8-activation scheme of llama.cpp's ggml_vec_dot_q4_0_q8_0):
 *   1. x is quantized per 32 values ("sub-block" t) as llama.cpp's quantize_row_q8_0 does:
 *      sx[t] = fp16(amax/127), xq = round_half_even(x * 127/amax); for 2-bit weights in blocks of
 *      256 as its quantize_row_q8_K (one f32 scale per 256, the activations of its TQ2_0 dot);
 *      isum[t] = sum(xq). xq is stored in the ORDER the weight codes come out of a register unpack
 *      of one 32-byte load (see q_index: low/high nibbles, 2-bit fields), so no shuffles. Scalar and
 *      AVX2 quantizers are bit-identical (tested).
 *   2. y = sum_t sw[b(t)] * sx[t] * (dot_int(codes_t, xq_t) - z[b(t)] * isum[t])
 *      4-/2-bit: chunks of 8 sub-blocks (4 pairs / 2 quads of 32-byte loads). Codes are unpacked once
 *      (shift + mask) per row and chunk; int16 maddubs sums of one sub-block are added before the one
 *      madd that widens them; the chunk reduces (shuffle tree, not hadd) to lanes = sub-blocks (LANE4 /
 *      LANE2 order, activation scales stored to match), then one FMA with sw * sx per 256 weights.
 *      2-bit codes with Q8_K activations (one scale per chunk) add the whole chunk in int16.
 *      8-bit codes are used as signed (code - 128) (sign trick) so maddubs cannot overflow.
 *
 * GEMV (m == 1): tiles of 4 rows. int4 (no stored zero points) walks the 4 rows one after another with
 * register accumulators (a sequential stream for the prefetchers) and sums the 4 rows in one shuffle
 * tree; a lone trailing
 * pair of sub-blocks (K = 576) is reduced for the 4 rows together. Ternary (blocks of 256, uniform zero
 * point: er_weight.zp_hint) reduces the 4 rows' chunk dots together and shares one epilogue. The next
 * tile is prefetched. GEMM (m > 1): a tile of 4 rows x 32 tokens stays in L1; codes are unpacked once per
 * row and chunk and dotted against every token. 8-bit GEMM without stored zero points: register tiles of one
 * row x 8 tokens (q8_gemm_avx2). Rows are split across the thread pool.
 */
#include <math.h>
#include <stdlib.h>

#include "edgerun_kernels.h"
#include "er_internal.h"
#include "er_neon.h"
#include "ggml_blocks.h"

#define SUB 32
#define ER_INLINE inline __attribute__((always_inline))

/* ---- activation quantization ------------------------------------------------------------- */

/* Sub-blocks one 32-byte load of weight codes covers ("unit"): 1 (8-bit), 2 (4-bit), 4 (2-bit). */
static inline int unit_subs(int bits) { return bits == 8 ? 1 : bits == 4 ? 2 : 4; }

/* Index in the quantized activation row of natural element i (0..31) of sub-block t.
 * Sub-blocks t < nmain (whole units) use the layouts a register unpack of one 32-byte load of codes
 * produces; the (at most 3) tail sub-blocks use 32-wide layouts. Scalar code uses the same layout. */
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

/* The AVX2 4-/2-bit kernels reduce a chunk of 8 sub-blocks (CH) into one int32 vector whose lane l
 * holds sub-block LANE[l] of the chunk; the activation scales and sums they need are stored in that
 * order (sxl, isl; zisl = default zero point * isl). */
#define CH 8
static const int LANE4[8] = {0, 2, 4, 6, 1, 3, 5, 7};
static const int LANE2[8] = {0, 1, 4, 5, 2, 3, 6, 7};
static inline int lane_slot(int bits, int64_t t) { /* lane of sub-block t inside its chunk */
    int j = (int)(t & 7);
    if (bits == 4) return (j & 1) ? 4 + (j >> 1) : (j >> 1);
    return (j == 2 || j == 3) ? j + 2 : (j == 4 || j == 5) ? j - 2 : j;
}

typedef struct {
    int8_t *q;     /* (m, kp) */
    float *sx;     /* (m, nsub) natural order */
    int32_t *isum; /* (m, nsub) natural order */
    float *sxl;    /* (m, nch * 8) lane order, main sub-blocks only (0 elsewhere) */
    int32_t *isl;  /* (m, nch * 8) */
    int32_t *zisl; /* (m, nch * 8): zdef * isl */
    int32_t *zich; /* (m, nch): zdef * the chunk's isum */
    int64_t kp, nsub, nmain, n8, nch; /* kp: the padded K; q rows are kp + 64 apart (no 2^n stride) */
    int32_t zshift[8] __attribute__((aligned(32))); /* natural: (t / per) * bits (8-bit kernel) */
    int32_t zshl[8] __attribute__((aligned(32)));   /* lane order: (LANE[l] / per) * bits */
    int32_t sidx[8] __attribute__((aligned(32)));   /* lane order: LANE[l] / per (scale permute) */
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
 * 8 sub-blocks (k padded to kp = nsub * 32, a multiple of 256 in that mode). Scalar version. */
static void quantize_act_row_scalar(const float *x, int64_t k, int bits, int64_t nsub, int64_t nmain, int q8k,
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

#if ER_X86
/* The same quantization with AVX2 (bit-identical: IEEE mul/div, cvtps rounds half to even as lrintf
 * does in the default mode, F16C rounds to nearest even as er_f32_to_f16). */
ER_AVX2 static inline __m256i quant8(const float *v, __m256 id) { /* 8 values -> 8 int32 in [-127, 127] */
    __m256i r = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v), id));
    return _mm256_max_epi32(_mm256_min_epi32(r, _mm256_set1_epi32(127)), _mm256_set1_epi32(-127));
}

/* 32 values -> 32 int8 in natural order; *s = their sum */
ER_AVX2 static inline __m256i quant32(const float *v, __m256 id, int32_t *s) {
    __m256i a = quant8(v, id), b = quant8(v + 8, id), c = quant8(v + 16, id), d = quant8(v + 24, id);
    __m256i t = _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d));
    __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    t4 = _mm_hadd_epi32(t4, t4);
    t4 = _mm_hadd_epi32(t4, t4);
    *s = _mm_cvtsi128_si32(t4);
    __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d); /* lanes interleaved */
    __m256i p = _mm256_packs_epi16(ab, cd);
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

ER_AVX2 static inline float amax32(const float *v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(v)),
                                           _mm256_andnot_ps(sign, _mm256_loadu_ps(v + 8))),
                             _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(v + 16)),
                                           _mm256_andnot_ps(sign, _mm256_loadu_ps(v + 24))));
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* natural 32 int8 -> the 32-wide 4-bit layout [even 16 | odd 16] */
ER_AVX2 static inline __m256i lay4(__m256i v) {
    const __m256i sh = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12,
                                        14, 1, 3, 5, 7, 9, 11, 13, 15);
    return _mm256_permute4x64_epi64(_mm256_shuffle_epi8(v, sh), 0xd8); /* (0, 2, 1, 3) */
}

/* natural 32 int8 -> the 32-wide 2-bit layout: field f (element i % 4 == f) at bytes 8f..8f+7 */
ER_AVX2 static inline __m256i lay2(__m256i v) {
    const __m256i sh = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9,
                                        13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, sh), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* quantize_blk_q8_k with AVX2: the same max (the first value of largest magnitude) and the same float math */
ER_AVX2 static void quantize_blk_q8_k_avx2(const float *v, float *d_out, float *id_out) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < 256; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(v + i)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float amax = _mm_cvtss_f32(h);
    if (amax == 0.0f) {
        *d_out = 0.0f;
        *id_out = 0.0f;
        return;
    }
    const __m256 av = _mm256_set1_ps(amax);
    for (int i = 0; i < 256; i += 8) {
        int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(v + i)), av, _CMP_EQ_OQ));
        if (mask) {
            const float iscale = -127.0f / v[i + __builtin_ctz((unsigned)mask)];
            *d_out = 1.0f / iscale;
            *id_out = iscale;
            return;
        }
    }
    quantize_blk_q8_k(v, d_out, id_out); /* NaN in the block: the reference loop decides */
}

ER_AVX2 static void quantize_act_row_avx2(const float *x, int64_t k, int bits, int64_t nsub, int64_t nmain,
                                          int q8k, int8_t *q, float *sx, int32_t *isum) {
    const int per_span = q8k ? 8 : 1; /* sub-blocks per activation scale */
    float pad[256];
    __m256i r[4];
    float d = 0.0f, idf = 0.0f;
    for (int64_t t = 0; t < nsub; t++) {
        const float *v = x + t * SUB;
        if ((t + 1) * SUB > k || (q8k && (t & 7) == 0 && (t + 8) * SUB > k)) { /* zero-padded copy */
            int64_t base = q8k ? (t & ~(int64_t)7) * SUB : t * SUB, n = q8k ? 256 : SUB;
            for (int64_t i = 0; i < n; i++) pad[i] = base + i < k ? x[base + i] : 0.0f;
            v = pad + (q8k ? (t & 7) * SUB : 0);
            if (q8k && (t & 7) == 0) quantize_blk_q8_k_avx2(pad, &d, &idf);
        } else if (q8k && (t & 7) == 0) {
            quantize_blk_q8_k_avx2(v, &d, &idf);
        }
        if (!q8k) {
            float amax = amax32(v);
            d = _cvtsh_ss(_cvtss_sh(amax / 127.0f, 0));
            idf = amax != 0.0f ? 127.0f / amax : 0.0f;
        }
        (void)per_span;
        int32_t s;
        __m256i qv = quant32(v, _mm256_set1_ps(idf), &s);
        sx[t] = d;
        isum[t] = s;
        if (bits == 8) {
            _mm256_storeu_si256((__m256i *)(q + t * SUB), qv);
        } else if (t >= nmain) {
            _mm256_storeu_si256((__m256i *)(q + t * SUB), bits == 4 ? lay4(qv) : lay2(qv));
        } else if (bits == 4) { /* pair: [sub0 even | sub1 even | sub0 odd | sub1 odd] */
            r[t & 1] = lay4(qv);
            if (t & 1) {
                _mm256_storeu_si256((__m256i *)(q + (t - 1) * SUB), _mm256_permute2x128_si256(r[0], r[1], 0x20));
                _mm256_storeu_si256((__m256i *)(q + (t - 1) * SUB + 32), _mm256_permute2x128_si256(r[0], r[1], 0x31));
            }
        } else { /* quad: field f = [sub0 f (8) | sub1 f | sub2 f | sub3 f] */
            r[t & 3] = lay2(qv);
            if ((t & 3) == 3) {
                __m256i a01 = _mm256_unpacklo_epi64(r[0], r[1]), b01 = _mm256_unpackhi_epi64(r[0], r[1]);
                __m256i a23 = _mm256_unpacklo_epi64(r[2], r[3]), b23 = _mm256_unpackhi_epi64(r[2], r[3]);
                /* a01 = [r0.f0 r1.f0 | r0.f2 r1.f2], b01 = [r0.f1 r1.f1 | r0.f3 r1.f3] */
                int8_t *o = q + (t - 3) * SUB;
                _mm256_storeu_si256((__m256i *)o, _mm256_permute2x128_si256(a01, a23, 0x20));
                _mm256_storeu_si256((__m256i *)(o + 32), _mm256_permute2x128_si256(b01, b23, 0x20));
                _mm256_storeu_si256((__m256i *)(o + 64), _mm256_permute2x128_si256(a01, a23, 0x31));
                _mm256_storeu_si256((__m256i *)(o + 96), _mm256_permute2x128_si256(b01, b23, 0x31));
            }
        }
    }
}
#endif

static void quantize_act_row(const float *x, int64_t k, int bits, int64_t nsub, int64_t nmain, int q8k, int isa,
                             int8_t *q, float *sx, int32_t *isum) {
#if ER_X86
    if (isa == ER_ISA_AVX2) {
        quantize_act_row_avx2(x, k, bits, nsub, nmain, q8k, q, sx, isum);
        return;
    }
#endif
    (void)isa;
    quantize_act_row_scalar(x, k, bits, nsub, nmain, q8k, q, sx, isum);
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

/* ---- AVX2 quantized dots ------------------------------------------------------------------ */
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

/* 8-bit: integer dots of 8 consecutive sub-blocks (256 weights) -> lane t = dot of sub-block t */
ER_AVX2 static ER_INLINE __m256i group_dots8(const uint8_t *p, const int8_t *q) {
    const __m256i x80 = _mm256_set1_epi8((char)0x80);
    __m256i v[8];
    for (int j = 0; j < 8; j++) {
        __m256i c = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 32 * j)), x80);
        v[j] = dot_s8s8(c, _mm256_loadu_si256((const __m256i *)(q + 32 * j)));
    }
    /* 8 vectors -> lane t = sum of v[t]: shuffle/add tree (hadd is slow here: one per 2 cycles) */
    __m256i u01 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[0], v[1]), _mm256_unpackhi_epi32(v[0], v[1]));
    __m256i u23 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2], v[3]), _mm256_unpackhi_epi32(v[2], v[3]));
    __m256i u45 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[4], v[5]), _mm256_unpackhi_epi32(v[4], v[5]));
    __m256i u67 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[6], v[7]), _mm256_unpackhi_epi32(v[6], v[7]));
    __m256i w0 = _mm256_add_epi32(_mm256_unpacklo_epi64(u01, u23), _mm256_unpackhi_epi64(u01, u23));
    __m256i w1 = _mm256_add_epi32(_mm256_unpacklo_epi64(u45, u67), _mm256_unpackhi_epi64(u45, u67));
    /* w0 = [v0..v3 (low halves) | v0..v3 (high halves)], w1 likewise for v4..v7 */
    return _mm256_add_epi32(_mm256_permute2x128_si256(w0, w1, 0x20), _mm256_permute2x128_si256(w0, w1, 0x31));
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

/* 8-bit row dot (natural sub-block order, groups of 8 sub-blocks + tail) of one row (codes, scales, packed zero
 * points or NULL) with one token's activations q, sx, isum; per = sub-blocks per block (a power of two, 2^lper).
 * Inlined into the GEMV so that the row geometry is computed once per call, not per row. */
ER_AVX2 static ER_INLINE float qdot_b8(const uint8_t *row, const uint16_t *srow, const uint8_t *zprow, const int8_t *q,
                                      const float *sx, const int32_t *isum, int64_t nsub, int64_t n8, int per, int lper) {
    const int bits = 8, sub_bytes = SUB;
    __m256 acc = _mm256_setzero_ps();
    const __m256i zdef = _mm256_set1_epi32(0);
    for (int64_t t0 = 0; t0 < n8; t0 += 8) {
        const int64_t b0 = t0 >> lper;
        __m256i dots = group_dots8(row + t0 * sub_bytes, q + t0 * SUB);
        __m256i z = zdef;
        if (zprow) {
            int32_t zz[8];
            for (int t = 0; t < 8; t++) zz[t] = zero_point(zprow, bits, (t0 + t) >> lper) - 128;
            z = _mm256_loadu_si256((const __m256i *)zz);
        }
        __m256i idot = dots; /* no stored zero points: codes - 128 are the signed values, nothing to subtract */
        if (zprow)
            idot = _mm256_sub_epi32(dots, _mm256_mullo_epi32(z, _mm256_loadu_si256((const __m256i *)(isum + t0))));
        __m256 scale = _mm256_mul_ps(_mm256_loadu_ps(sx + t0), group_scales(srow + b0, per));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(idot), scale, acc);
    }
    float y = hsum256(acc);
    int64_t t = n8;
    if (nsub - t >= 4 && per == 1 && !zprow) {
        /* 4 tail sub-blocks (a 640-wide row): their integer dots reduced together and the factors multiplied as
         * vectors; the products are added to y one by one in sub-block order, the float operations of the loop
         * below */
        __m256i v0 = dot_s8s8(unpack32(row + t * sub_bytes, bits), _mm256_loadu_si256((const __m256i *)(q + t * SUB)));
        __m256i v1 = dot_s8s8(unpack32(row + (t + 1) * sub_bytes, bits),
                              _mm256_loadu_si256((const __m256i *)(q + (t + 1) * SUB)));
        __m256i v2 = dot_s8s8(unpack32(row + (t + 2) * sub_bytes, bits),
                              _mm256_loadu_si256((const __m256i *)(q + (t + 2) * SUB)));
        __m256i v3 = dot_s8s8(unpack32(row + (t + 3) * sub_bytes, bits),
                              _mm256_loadu_si256((const __m256i *)(q + (t + 3) * SUB)));
        __m256i u01 = _mm256_add_epi32(_mm256_unpacklo_epi32(v0, v1), _mm256_unpackhi_epi32(v0, v1));
        __m256i u23 = _mm256_add_epi32(_mm256_unpacklo_epi32(v2, v3), _mm256_unpackhi_epi32(v2, v3));
        __m256i w4 = _mm256_add_epi32(_mm256_unpacklo_epi64(u01, u23), _mm256_unpackhi_epi64(u01, u23));
        __m128i d4 = _mm_add_epi32(_mm256_castsi256_si128(w4), _mm256_extracti128_si256(w4, 1)); /* lane i: dot i */
        __m128 sw = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(srow + t)));
        __m128 pr = _mm_mul_ps(_mm_mul_ps(sw, _mm_loadu_ps(sx + t)), _mm_cvtepi32_ps(d4));
        y += _mm_cvtss_f32(pr);
        y += _mm_cvtss_f32(_mm_movehdup_ps(pr));
        __m128 hi = _mm_movehl_ps(pr, pr);
        y += _mm_cvtss_f32(hi);
        y += _mm_cvtss_f32(_mm_movehdup_ps(hi));
        t += 4;
    }
    for (; t < nsub; t++) { /* tail: fewer than 8 sub-blocks */
        const int64_t b = t / per;
        __m256i c = unpack32(row + t * sub_bytes, bits);
        __m256i d = dot_s8s8(c, _mm256_loadu_si256((const __m256i *)(q + t * SUB)));
        __m128i d4 = _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1));
        d4 = _mm_hadd_epi32(d4, d4);
        d4 = _mm_hadd_epi32(d4, d4);
        int z = zero_point(zprow, bits, b) - 128;
        y += _cvtsh_ss(srow[b]) * sx[t] * (float)(_mm_cvtsi128_si32(d4) - z * isum[t]);
    }
    return y;
}

ER_AVX2 static float qdot_row_avx2_b8(const er_weight *w, int64_t n, const actq *a, int64_t tok) {
    const int per = w->block_size / SUB;
    const int64_t nb = (w->k + w->block_size - 1) / w->block_size, nsub = a->nsub;
    return qdot_b8((const uint8_t *)w->data + n * nb * w->block_size, w->scales + n * nb,
                   w->zero_points ? w->zero_points + n * nb : NULL, a->q + tok * a->kp, a->sx + tok * nsub,
                   a->isum + tok * nsub, nsub, a->n8, per, __builtin_ctz((unsigned)per));
}

/* ---- 4-bit and 2-bit: chunks of 8 sub-blocks, R rows x T tokens per call ------------------
 * A chunk is 4 pairs (4-bit) or 2 quads (2-bit) of sub-blocks, one 32-byte load of codes each.
 * Codes are unpacked once per row and chunk (shifts and masks) and dotted against every token
 * (maddubs, unsigned codes x int8 activations; int16 partial sums of one sub-block are added
 * before the one madd that widens them); the chunk reduces to lane l = sub-block LANE[l], then
 *   acc += float(dot - z * isum) * (sw * sx)        (one FMA per 256 weights per row and token)
 * With 2-bit codes and Q8_K activations (blocks of 256: one scale for the whole chunk) the chunk
 * is added up in int16 and widened once. */

typedef struct {
    const uint8_t *row;
    const uint16_t *srow;
    const uint8_t *zprow;
} qrow;

ER_AVX2 static ER_INLINE void unpack_chunk(const uint8_t *p, int bits, int nu, __m256i u[8]) {
    if (bits == 4) {
        const __m256i m = _mm256_set1_epi8(0x0f);
        for (int j = 0; j < 4; j++) {
            if (j >= nu) break;
            __m256i b = _mm256_loadu_si256((const __m256i *)(p + 32 * j));
            u[2 * j] = _mm256_and_si256(b, m);
            u[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(b, 4), m);
        }
    } else {
        const __m256i m = _mm256_set1_epi8(3);
        for (int j = 0; j < 2; j++) {
            if (j >= nu) break;
            __m256i b = _mm256_loadu_si256((const __m256i *)(p + 32 * j));
            u[4 * j] = _mm256_and_si256(b, m);
            u[4 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(b, 2), m);
            u[4 * j + 2] = _mm256_and_si256(_mm256_srli_epi16(b, 4), m);
            u[4 * j + 3] = _mm256_and_si256(_mm256_srli_epi16(b, 6), m);
        }
    }
}

#define LDQ(o) _mm256_loadu_si256((const __m256i *)(q + (o)))
ER_AVX2 static ER_INLINE __m256i chunk_dots(const __m256i u[8], const int8_t *q, int bits, int nu, int q8k) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (bits == 4) {
        __m256i v[4];
        for (int j = 0; j < 4; j++) {
            if (j < nu) {
                __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(u[2 * j], LDQ(64 * j)),
                                             _mm256_maddubs_epi16(u[2 * j + 1], LDQ(64 * j + 32)));
                v[j] = _mm256_madd_epi16(s, ones); /* lanes 0-3: sub 2j, 4-7: sub 2j+1 */
            } else {
                v[j] = _mm256_setzero_si256();
            }
        }
        __m256i t0 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[0], v[1]), _mm256_unpackhi_epi32(v[0], v[1]));
        __m256i t1 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2], v[3]), _mm256_unpackhi_epi32(v[2], v[3]));
        return _mm256_add_epi32(_mm256_unpacklo_epi64(t0, t1), _mm256_unpackhi_epi64(t0, t1));
    }
    __m256i s[2];
    for (int j = 0; j < 2; j++) {
        if (j < nu) {
            s[j] = _mm256_add_epi16(
                _mm256_add_epi16(_mm256_maddubs_epi16(u[4 * j], LDQ(128 * j)),
                                 _mm256_maddubs_epi16(u[4 * j + 1], LDQ(128 * j + 32))),
                _mm256_add_epi16(_mm256_maddubs_epi16(u[4 * j + 2], LDQ(128 * j + 64)),
                                 _mm256_maddubs_epi16(u[4 * j + 3], LDQ(128 * j + 96))));
        } else {
            s[j] = _mm256_setzero_si256();
        }
    }
    if (q8k) return _mm256_madd_epi16(_mm256_add_epi16(s[0], s[1]), ones); /* one scale per chunk */
    /* quad j: lanes (0,1) sub 4j ... (6,7) sub 4j+3 -> [0 1 4 5 | 2 3 6 7] */
    return _mm256_hadd_epi32(_mm256_madd_epi16(s[0], ones), _mm256_madd_epi16(s[1], ones));
}
#undef LDQ

/* weight scales (lane order) of chunk c of one row; nbl = blocks left in the row from the chunk's first */
ER_AVX2 static ER_INLINE __m256 chunk_wscales(const uint16_t *s, int per, int64_t nbl, __m256i sidx) {
    if (per >= 8) return _mm256_set1_ps(_cvtsh_ss(s[0]));
    const int ns = 8 / per;
    __m128i h;
    if (nbl >= ns) {
        if (ns == 8) h = _mm_loadu_si128((const __m128i *)s);
        else if (ns == 4) h = _mm_loadl_epi64((const __m128i *)s);
        else {
            int32_t v;
            memcpy(&v, s, 4);
            h = _mm_cvtsi32_si128(v);
        }
    } else {
        uint16_t tmp[8] = {0};
        memcpy(tmp, s, (size_t)nbl * 2);
        h = _mm_loadu_si128((const __m128i *)tmp);
    }
    return _mm256_permutevar8x32_ps(_mm256_cvtph_ps(h), sidx);
}

/* zero points (lane order) of a chunk whose first block is b0 */
ER_AVX2 static ER_INLINE __m256i chunk_zp(const uint8_t *zprow, int64_t zp_bytes, int bits, int64_t b0,
                                          __m256i zshl) {
    int64_t bit = b0 * bits, byte = bit >> 3;
    uint32_t word = 0;
    if (byte + 4 <= zp_bytes) memcpy(&word, zprow + byte, 4);
    else for (int64_t i = byte; i < zp_bytes; i++) word |= (uint32_t)zprow[i] << (8 * (i - byte));
    __m256i sh = _mm256_add_epi32(zshl, _mm256_set1_epi32((int)(bit & 7)));
    return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)word), sh), _mm256_set1_epi32((1 << bits) - 1));
}

/* tail sub-blocks (t >= nmain, at most 3) of one row and token */
ER_AVX2 static float qtail_avx2(const er_weight *w, const qrow *r, const actq *a, int64_t tok) {
    const int bits = w->bits, per = w->block_size / SUB, sub_bytes = SUB * bits / 8;
    const int8_t *q = a->q + tok * a->kp;
    const float *sx = a->sx + tok * a->nsub;
    const int32_t *isum = a->isum + tok * a->nsub;
    float y = 0.0f;
    for (int64_t t = a->nmain; t < a->nsub; t++) {
        const int64_t b = t / per;
        __m256i d = dot_u8s8(unpack32(r->row + t * sub_bytes, bits),
                             _mm256_loadu_si256((const __m256i *)(q + t * SUB)));
        __m128i d4 = _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1));
        d4 = _mm_hadd_epi32(d4, d4);
        d4 = _mm_hadd_epi32(d4, d4);
        int z = zero_point(r->zprow, bits, b);
        y += _cvtsh_ss(r->srow[b]) * sx[t] * (float)(_mm_cvtsi128_si32(d4) - z * isum[t]);
    }
    return y;
}

#ifndef ER_PF
#define ER_PF 1
#endif
#ifndef ER_SEQ
#define ER_SEQ 1
#endif
#ifndef ER_PF_BYTES
#define ER_PF_BYTES 4096
#endif
#define QT_MAXT 32 /* tokens per tile */
#define QT_MAXR 4  /* rows per tile */
#define QT_TOKB 128 /* tokens per block of the GEMM (a multiple of QT_MAXT) */

/* weight-side vectors of chunk c of one row: scales (lane order) and zero points (lane order) */
ER_AVX2 static ER_INLINE __m256 chunk_wscales_full(const uint16_t *s, int per, __m256i sidx) {
    switch (per) {
    case 1: return _mm256_permutevar8x32_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)s)), sidx);
    case 2: return _mm256_permutevar8x32_ps(_mm256_cvtph_ps(_mm_loadl_epi64((const __m128i *)s)), sidx);
    case 4: {
        int32_t v;
        memcpy(&v, s, 4);
        return _mm256_permutevar8x32_ps(_mm256_cvtph_ps(_mm_cvtsi32_si128(v)), sidx);
    }
    default: return _mm256_set1_ps(_cvtsh_ss(s[0]));
    }
}

/* one chunk (nu units) of R rows against T tokens */
ER_AVX2 static ER_INLINE void qchunk(const qrow *rw, const actq *a, int64_t c, int nu, int full, const int R,
                                     int64_t t0, const int T, const int bits, int per, int lp, int asym, int q8k,
                                     int64_t nb, int64_t zp_bytes, __m256i sidx, __m256i zshl,
                                     const uint16_t *send, __m256 pmask, int64_t pf_next, __m256 *acc,
                                     const int TS) {
    const int64_t s0 = c * CH, b0 = s0 >> lp, nch = a->nch;
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        __m256i u[8];
        const uint8_t *wp = rw[r].row + s0 * (SUB * bits / 8);
        if (pf_next) { /* the same chunk of the next tile of rows: keeps the DRAM stream ahead */
            _mm_prefetch((const char *)wp + pf_next, _MM_HINT_T0);
            if (bits == 4) _mm_prefetch((const char *)wp + pf_next + 64, _MM_HINT_T0);
        }
        unpack_chunk(wp, bits, nu, u);
        __m256 swv;
        if (full) swv = chunk_wscales_full(rw[r].srow + b0, per, sidx);
        else if (rw[r].srow + b0 + 8 <= send) /* over-read the next row's scales, lanes masked off */
            swv = _mm256_and_ps(chunk_wscales_full(rw[r].srow + b0, per, sidx), pmask);
        else swv = chunk_wscales(rw[r].srow + b0, per, nb - b0, sidx);
        __m256i zv = asym ? chunk_zp(rw[r].zprow, zp_bytes, bits, b0, zshl) : _mm256_setzero_si256();
        for (int t = 0; t < T; t++) {
            const int64_t tok = t0 + t, lo = tok * nch * CH + s0;
            const int8_t *q = a->q + tok * a->kp + s0 * SUB;
            __m256i d = chunk_dots(u, q, bits, nu, q8k);
            __m256i zi = asym ? _mm256_mullo_epi32(zv, _mm256_loadu_si256((const __m256i *)(a->isl + lo)))
                              : _mm256_loadu_si256((const __m256i *)(a->zisl + lo));
            __m256 sc = _mm256_mul_ps(swv, _mm256_loadu_ps(a->sxl + lo));
            acc[r * TS + t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(d, zi)), sc, acc[r * TS + t]);
        }
    }
}

/* GEMV of 4 rows over one lone 4-bit pair of sub-blocks (s0, s0 + 1) after the last whole chunk (K = 576:
 * 2 chunks + 1 pair): the 4 rows' pair dots are reduced together, one epilogue for all, so the pair costs
 * about a quarter of a chunk instead of most of one. Returns lanes [rows 0-3 of s0 | rows 0-3 of s0 + 1]. */
ER_AVX2 static ER_INLINE __m256 pair4_gemv(const qrow *rw, const actq *a, int64_t tok, int64_t s0, int per, int asym,
                                           int zp_hint, const int bits) {
    const __m256i m = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    const int8_t *q = a->q + tok * a->kp + s0 * SUB;
    const __m256i qlo = _mm256_loadu_si256((const __m256i *)q), qhi = _mm256_loadu_si256((const __m256i *)(q + 32));
    __m256i v[4];
    uint32_t sc[4];
    const int64_t bA = s0 / per, bB = (s0 + 1) / per;
    for (int r = 0; r < 4; r++) {
        __m256i b = _mm256_loadu_si256((const __m256i *)(rw[r].row + s0 * (SUB * bits / 8)));
        __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(b, m), qlo),
                                     _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(b, 4), m), qhi));
        v[r] = _mm256_madd_epi16(s, ones);
        sc[r] = (uint32_t)rw[r].srow[bA] | (uint32_t)rw[r].srow[bB] << 16;
    }
    __m256i t0 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[0], v[1]), _mm256_unpackhi_epi32(v[0], v[1]));
    __m256i t1 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2], v[3]), _mm256_unpackhi_epi32(v[2], v[3]));
    __m256i d = _mm256_add_epi32(_mm256_unpacklo_epi64(t0, t1), _mm256_unpackhi_epi64(t0, t1));
    const float *sx = a->sx + tok * a->nsub;
    const int32_t *is = a->isum + tok * a->nsub;
    __m256 sw = _mm256_permutevar8x32_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)sc)),
                                         _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
    __m256 sxv = _mm256_setr_m128(_mm_set1_ps(sx[s0]), _mm_set1_ps(sx[s0 + 1]));
    __m256i isv = _mm256_setr_m128i(_mm_set1_epi32(is[s0]), _mm_set1_epi32(is[s0 + 1]));
    __m256i z;
    if (asym) {
        int32_t zz[8];
        for (int r = 0; r < 4; r++) {
            zz[r] = zero_point(rw[r].zprow, bits, bA);
            zz[r + 4] = zero_point(rw[r].zprow, bits, bB);
        }
        z = _mm256_loadu_si256((const __m256i *)zz);
    } else {
        z = _mm256_set1_epi32(rw[0].zprow && zp_hint > 0 ? zp_hint - 1 : 1 << (bits - 1));
    }
    d = _mm256_sub_epi32(d, _mm256_mullo_epi32(z, isv));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(sw, sxv));
}

/* int16 lanes whose sum is the dot of one row's 256 2-bit codes (64 bytes at wp) with the chunk's activations q
 * (quad layout). Fields 1 and 2 are masked in place (codes x4, x16) and their maddubs sums shifted back once
 * (exact: every product is a multiple of 4 or 16); |lane| <= 4 * 2032 for codes <= 2. */
ER_AVX2 static ER_INLINE __m256i tern_chunk16(const uint8_t *wp, const int8_t *q) {
    const __m256i m0 = _mm256_set1_epi8(0x03), m1 = _mm256_set1_epi8(0x0c), m2 = _mm256_set1_epi8(0x30);
    const __m256i b0 = _mm256_loadu_si256((const __m256i *)wp), b1 = _mm256_loadu_si256((const __m256i *)(wp + 32));
#define TQ(o) _mm256_loadu_si256((const __m256i *)(q + (o)))
    __m256i a = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(b0, m0), TQ(0)),
                                 _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(b0, 6), m0), TQ(96)));
    __m256i a2 = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(b1, m0), TQ(128)),
                                  _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(b1, 6), m0), TQ(224)));
    __m256i b = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(b0, m1), TQ(32)),
                                 _mm256_maddubs_epi16(_mm256_and_si256(b1, m1), TQ(160)));
    __m256i c = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(b0, m2), TQ(64)),
                                 _mm256_maddubs_epi16(_mm256_and_si256(b1, m2), TQ(192)));
#undef TQ
    return _mm256_add_epi16(_mm256_add_epi16(a, a2), _mm256_add_epi16(_mm256_srai_epi16(b, 2), _mm256_srai_epi16(c, 4)));
}

/* Ternary GEMV over rows [n0, n1) (a multiple of 4 rows): 2-bit codes in blocks of 256 (one weight scale per
 * chunk), Q8_K activations, uniform zero point (subtracted per chunk through zich). Per chunk, each of the 4 rows'
 * int16 dot lanes are widened once, the 4 rows reduced together, and one epilogue
 *   acc[r] += float(dot[r] - z * isum) * (sw[r] * sx)
 * serves them (the same float operations, in the same order, as the generic tile). Per-tile setup is hoisted out of
 * the row loop; the same chunk 4 KB ahead is prefetched for each row. */
ER_AVX2 static void tern_gemv_range(const er_weight *w, const actq *a, int64_t n0, int64_t n1, float *y) {
    const int per = w->block_size / SUB, lp = __builtin_ctz((unsigned)per);
    const int64_t nb = (w->k + w->block_size - 1) / w->block_size, row_bytes = nb * (w->block_size / 4);
    const int64_t nch = a->nmain / CH;
    const int8_t *q0 = a->q;
    const float *sx = a->sx;
    const int32_t *zch = a->zich;
    const uint8_t *data = (const uint8_t *)w->data;
    const __m256i ones = _mm256_set1_epi16(1);
    int64_t pf_tiles = (ER_PF_BYTES + 4 * row_bytes - 1) / (4 * row_bytes);
    pf_tiles = pf_tiles < 1 ? 1 : pf_tiles > 16 ? 16 : pf_tiles;
    for (int64_t n = n0; n + 4 <= n1; n += 4) {
        const uint8_t *w0 = data + n * row_bytes, *w1 = w0 + row_bytes, *w2 = w1 + row_bytes, *w3 = w2 + row_bytes;
        const uint16_t *s0 = w->scales + n * nb, *s1 = s0 + nb, *s2 = s1 + nb, *s3 = s2 + nb;
        /* prefetch distance: whole tiles ahead, none past the matrix */
        const int64_t pf = n + (pf_tiles + 1) * 4 <= w->n ? pf_tiles * 4 * row_bytes : 0;
        __m128 acc = _mm_setzero_ps();
        for (int64_t c = 0; c < nch; c++) {
            const int64_t b = (c * CH) >> lp, o = c * 64;
            const int8_t *q = q0 + c * 256;
            _mm_prefetch((const char *)w0 + o + pf, _MM_HINT_T0);
            _mm_prefetch((const char *)w1 + o + pf, _MM_HINT_T0);
            _mm_prefetch((const char *)w2 + o + pf, _MM_HINT_T0);
            _mm_prefetch((const char *)w3 + o + pf, _MM_HINT_T0);
            __m256i v0 = _mm256_madd_epi16(tern_chunk16(w0 + o, q), ones);
            __m256i v1 = _mm256_madd_epi16(tern_chunk16(w1 + o, q), ones);
            __m256i v2 = _mm256_madd_epi16(tern_chunk16(w2 + o, q), ones);
            __m256i v3 = _mm256_madd_epi16(tern_chunk16(w3 + o, q), ones);
            __m256i t0 = _mm256_add_epi32(_mm256_unpacklo_epi32(v0, v1), _mm256_unpackhi_epi32(v0, v1));
            __m256i t1 = _mm256_add_epi32(_mm256_unpacklo_epi32(v2, v3), _mm256_unpackhi_epi32(v2, v3));
            __m256i d = _mm256_add_epi32(_mm256_unpacklo_epi64(t0, t1), _mm256_unpackhi_epi64(t0, t1));
            __m128i d4 = _mm_sub_epi32(_mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1)),
                                       _mm_set1_epi32(zch[c]));
            uint64_t h = (uint64_t)s0[b] | (uint64_t)s1[b] << 16 | (uint64_t)s2[b] << 32 | (uint64_t)s3[b] << 48;
            __m128 sw4 = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)h)), _mm_set1_ps(sx[c * CH]));
            acc = _mm_fmadd_ps(_mm_cvtepi32_ps(d4), sw4, acc);
        }
        _mm_storeu_ps(y + n, acc);
    }
}

/* One row's whole chunk for the 4-bit GEMV fast path: returns acc + float(dot - z isum) * sw * sx, lanes in
 * LANE4 order (zis: z * isum per lane; sp: the row's scales from the chunk's first block) */
ER_AVX2 static ER_INLINE __m256 q4_row_chunk(const uint8_t *wp, const uint16_t *sp, int per, __m256i sidx,
                                             const int8_t *q, __m256i zis, __m256 sxv, __m256 acc) {
    const __m256i m = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    __m256i v[4];
    for (int j = 0; j < 4; j++) {
        __m256i b = _mm256_loadu_si256((const __m256i *)(wp + 32 * j));
        __m256i s = _mm256_add_epi16(
            _mm256_maddubs_epi16(_mm256_and_si256(b, m), _mm256_loadu_si256((const __m256i *)(q + 64 * j))),
            _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(b, 4), m),
                                 _mm256_loadu_si256((const __m256i *)(q + 64 * j + 32))));
        v[j] = _mm256_madd_epi16(s, ones);
    }
    __m256i t0 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[0], v[1]), _mm256_unpackhi_epi32(v[0], v[1]));
    __m256i t1 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2], v[3]), _mm256_unpackhi_epi32(v[2], v[3]));
    __m256i d = _mm256_add_epi32(_mm256_unpacklo_epi64(t0, t1), _mm256_unpackhi_epi64(t0, t1));
    __m256 sw = chunk_wscales_full(sp, per, sidx);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(d, zis)), _mm256_mul_ps(sw, sxv), acc);
}

/* 4-bit GEMV fast path, 4 rows: whole chunks only, accumulators in registers; returns them for the
 * caller's pair/tail handling. asym: per-block zero points read per row and chunk. */
ER_AVX2 static ER_INLINE void q4_gemv4_chunks(const qrow *rw, const actq *a, int64_t tok, int64_t nfull, int per,
                                              int lp, int asym, int64_t zp_bytes, int64_t pf_next, __m256 acc[4]) {
    const int8_t *q0 = a->q + tok * a->kp;
    const float *sxl = a->sxl + tok * a->nch * CH;
    const int32_t *zisl = a->zisl + tok * a->nch * CH, *isl = a->isl + tok * a->nch * CH;
    const __m256i sidx = _mm256_load_si256((const __m256i *)a->sidx);
    const __m256i zshl = _mm256_load_si256((const __m256i *)a->zshl);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const uint8_t *w0 = rw[0].row, *w1 = rw[1].row, *w2 = rw[2].row, *w3 = rw[3].row;
    const uint16_t *s0 = rw[0].srow, *s1 = rw[1].srow, *s2 = rw[2].srow, *s3 = rw[3].srow;
    if (ER_SEQ && !asym) { /* rows one after another: a plain sequential stream for the prefetchers */
#define Q4_ROW(AR, W, S)                                                                                     \
    for (int64_t c = 0; c < nfull; c++) {                                                                    \
        const int64_t o = c * 128, b0 = (c * CH) >> lp;                                                      \
        _mm_prefetch((const char *)W + o + 512, _MM_HINT_T0);                                                \
        _mm_prefetch((const char *)W + o + 576, _MM_HINT_T0);                                                \
        AR = q4_row_chunk(W + o, S + b0, per, sidx, q0 + c * 256,                                            \
                          _mm256_loadu_si256((const __m256i *)(zisl + c * CH)), _mm256_loadu_ps(sxl + c * CH), AR); \
    }
        Q4_ROW(a0, w0, s0)
        Q4_ROW(a1, w1, s1)
        Q4_ROW(a2, w2, s2)
        Q4_ROW(a3, w3, s3)
#undef Q4_ROW
        nfull = 0;
    }
    for (int64_t c = 0; c < nfull; c++) {
        const int64_t o = c * 128, b0 = (c * CH) >> lp;
        const int8_t *q = q0 + c * 256;
        __m256 sxv = _mm256_loadu_ps(sxl + c * CH);
        __m256i z0, z1, z2, z3;
        if (asym) {
            __m256i is = _mm256_loadu_si256((const __m256i *)(isl + c * CH));
            z0 = _mm256_mullo_epi32(chunk_zp(rw[0].zprow, zp_bytes, 4, b0, zshl), is);
            z1 = _mm256_mullo_epi32(chunk_zp(rw[1].zprow, zp_bytes, 4, b0, zshl), is);
            z2 = _mm256_mullo_epi32(chunk_zp(rw[2].zprow, zp_bytes, 4, b0, zshl), is);
            z3 = _mm256_mullo_epi32(chunk_zp(rw[3].zprow, zp_bytes, 4, b0, zshl), is);
        } else {
            z0 = z1 = z2 = z3 = _mm256_loadu_si256((const __m256i *)(zisl + c * CH));
        }
        _mm_prefetch((const char *)w0 + o + pf_next, _MM_HINT_T0);
        _mm_prefetch((const char *)w0 + o + pf_next + 64, _MM_HINT_T0);
        a0 = q4_row_chunk(w0 + o, s0 + b0, per, sidx, q, z0, sxv, a0);
        _mm_prefetch((const char *)w1 + o + pf_next, _MM_HINT_T0);
        _mm_prefetch((const char *)w1 + o + pf_next + 64, _MM_HINT_T0);
        a1 = q4_row_chunk(w1 + o, s1 + b0, per, sidx, q, z1, sxv, a1);
        _mm_prefetch((const char *)w2 + o + pf_next, _MM_HINT_T0);
        _mm_prefetch((const char *)w2 + o + pf_next + 64, _MM_HINT_T0);
        a2 = q4_row_chunk(w2 + o, s2 + b0, per, sidx, q, z2, sxv, a2);
        _mm_prefetch((const char *)w3 + o + pf_next, _MM_HINT_T0);
        _mm_prefetch((const char *)w3 + o + pf_next + 64, _MM_HINT_T0);
        a3 = q4_row_chunk(w3 + o, s3 + b0, per, sidx, q, z3, sxv, a3);
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

/* y[t * ldy + r] for rows n0..n0+R-1 and tokens t0..t0+T-1 */
ER_AVX2 static ER_INLINE void qtile_avx2(const er_weight *w, const actq *a, int64_t n0, const int R, int64_t t0,
                                         const int T, float *y, int64_t ldy, const int bits) {
    const int bs = w->block_size, per = bs / SUB, units = CH / unit_subs(bits);
    const int lp = __builtin_ctz((unsigned)per);
    const int64_t nb = (w->k + bs - 1) / bs, nmain = a->nmain;
    const int64_t zp_bytes = (nb * bits + 7) / 8, row_bytes = nb * (bs * bits / 8);
    const int q8k = bits == 2 && per >= 8;
    const int asym = w->zero_points != NULL && w->zp_hint <= 0; /* uniform zero points: in zisl */
    const __m256i sidx = _mm256_load_si256((const __m256i *)a->sidx);
    const __m256i zshl = _mm256_load_si256((const __m256i *)a->zshl);
    qrow rw[QT_MAXR];
    for (int r = 0; r < R; r++) {
        rw[r].row = (const uint8_t *)w->data + (n0 + r) * row_bytes;
        rw[r].srow = w->scales + (n0 + r) * nb;
        rw[r].zprow = w->zero_points ? w->zero_points + (n0 + r) * zp_bytes : NULL;
    }
    /* accumulators: registers for GEMV (T == 1 is a constant there), an L1 array for GEMM tiles */
    const int TS = T == 1 ? 1 : QT_MAXT;
    __m256 acc1[QT_MAXR], accT[T == 1 ? 1 : QT_MAXR * QT_MAXT];
    __m256 *acc = T == 1 ? acc1 : accT;
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r * TS + t] = _mm256_setzero_ps();
    const int64_t nfull = nmain / CH; /* chunks with all units present */
    /* GEMV: prefetch the next tile (R rows further) while this one is computed, unless it is the last */
    /* ahead by whole tiles, at least ER_PF_BYTES: DRAM latency (~100 ns) exceeds a small tile's compute */
    int64_t pf_tiles = (ER_PF_BYTES + R * row_bytes - 1) / (R * row_bytes);
    pf_tiles = pf_tiles < 1 ? 1 : pf_tiles > 16 ? 16 : pf_tiles;
    const int64_t pf_next = (ER_PF && T == 1 && n0 + (pf_tiles + 1) * R <= w->n) ? pf_tiles * R * row_bytes : 0;
    if (bits == 4 && R == 4 && T == 1) {
        if (per == 1 && !asym) q4_gemv4_chunks(rw, a, t0, nfull, 1, 0, 0, zp_bytes, pf_next, acc); /* Q4_0 */
        else q4_gemv4_chunks(rw, a, t0, nfull, per, lp, asym, zp_bytes, pf_next, acc);
    }
    else
        for (int64_t c = 0; c < nfull; c++)
            qchunk(rw, a, c, units, 1, R, t0, T, bits, per, lp, asym, q8k, nb, zp_bytes, sidx, zshl, NULL,
                   _mm256_setzero_ps(), pf_next, acc, TS);
    /* a lone trailing 4-bit pair: lanes [rows 0-3 of sub A | rows 0-3 of sub B] per token (pair4_gemv) */
    __m256 accp[QT_MAXT];
    const int lone_pair = bits == 4 && R == 4 && nmain - nfull * CH == 2;
    if (lone_pair) {
        for (int t = 0; t < T; t++) accp[t] = pair4_gemv(rw, a, t0 + t, nfull * CH, per, asym, w->zp_hint, bits);
    } else if (nfull * CH < nmain) {
        int nu = (int)((nmain - nfull * CH) / unit_subs(bits));
        const int *lane = bits == 4 ? LANE4 : LANE2;
        int32_t mk[8];
        for (int l = 0; l < 8; l++) mk[l] = nfull * CH + lane[l] < nmain ? -1 : 0;
        __m256 pmask = _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i *)mk));
        const uint16_t *send = w->scales + w->n * nb;
#define QCHUNK_PART(NU) \
    qchunk(rw, a, nfull, NU, 0, R, t0, T, bits, per, lp, asym, q8k, nb, zp_bytes, sidx, zshl, send, pmask, pf_next, \
           acc, TS)
        if (nu == 1) QCHUNK_PART(1); /* constant unit counts: the unused lanes fold away */
        else if (nu == 2) QCHUNK_PART(2);
        else QCHUNK_PART(3);
#undef QCHUNK_PART
    }
    if (R == 4) { /* per token, the 4 rows' horizontal sums at once */
        for (int t = 0; t < T; t++) {
            const __m256 a0 = acc[t], a1 = acc[TS + t], a2 = acc[2 * TS + t], a3 = acc[3 * TS + t];
            __m256 u0 = _mm256_add_ps(_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
            __m256 u1 = _mm256_add_ps(_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
            __m256 h = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(u0), _mm256_castps_pd(u1))),
                                     _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(u0), _mm256_castps_pd(u1))));
            if (lone_pair) h = _mm256_add_ps(h, accp[t]); /* lanes [rows 0-3 | rows 0-3] */
            __m128 y4 = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            if (nmain < a->nsub) {
                float tl[4];
                for (int r = 0; r < 4; r++) tl[r] = qtail_avx2(w, &rw[r], a, t0 + t);
                y4 = _mm_add_ps(y4, _mm_loadu_ps(tl));
            }
            _mm_storeu_ps(y + (int64_t)t * ldy, y4);
        }
        return;
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            float v = hsum256(acc[r * TS + t]);
            if (lone_pair) {
                float p[8];
                _mm256_storeu_ps(p, accp[t]);
                v += p[r] + p[r + 4];
            }
            if (nmain < a->nsub) v += qtail_avx2(w, &rw[r], a, t0 + t);
            y[(int64_t)t * ldy + r] = v;
        }
}

ER_AVX2 static void qtile_b4_r4t1(const er_weight *w, const actq *a, int64_t n0, int64_t t0, float *y, int64_t ldy) {
    qtile_avx2(w, a, n0, 4, t0, 1, y, ldy, 4);
}
ER_AVX2 static void qtile_b2_r4t1(const er_weight *w, const actq *a, int64_t n0, int64_t t0, float *y, int64_t ldy) {
    qtile_avx2(w, a, n0, 4, t0, 1, y, ldy, 2);
}
ER_AVX2 static void qtile_b4_r1t1(const er_weight *w, const actq *a, int64_t n0, int64_t t0, float *y, int64_t ldy) {
    qtile_avx2(w, a, n0, 1, t0, 1, y, ldy, 4);
}
ER_AVX2 static void qtile_b2_r1t1(const er_weight *w, const actq *a, int64_t n0, int64_t t0, float *y, int64_t ldy) {
    qtile_avx2(w, a, n0, 1, t0, 1, y, ldy, 2);
}
ER_AVX2 static void qtile_b4_gemm(const er_weight *w, const actq *a, int64_t n0, int R, int64_t t0, int T, float *y,
                                  int64_t ldy) {
    if (R == 4) qtile_avx2(w, a, n0, 4, t0, T, y, ldy, 4);
    else qtile_avx2(w, a, n0, 1, t0, T, y, ldy, 4);
}
ER_AVX2 static void qtile_b2_gemm(const er_weight *w, const actq *a, int64_t n0, int R, int64_t t0, int T, float *y,
                                  int64_t ldy) {
    if (R == 4) qtile_avx2(w, a, n0, 4, t0, T, y, ldy, 2);
    else qtile_avx2(w, a, n0, 1, t0, T, y, ldy, 2);
}
#endif /* ER_X86 */

#if ER_X86
/* ---- AVX2 float rows ---------------------------------------------------------------------- */

ER_AVX2 static inline __m256 load8(const void *base, int f16, int64_t i) {
    if (f16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + i)));
    return _mm256_loadu_ps((const float *)base + i);
}

/* 4 rows at any addresses (one accumulator each, 8 lanes): y[r][0] = dot(row r, x) */
ER_AVX2 static void fdot4_avx2(const void *const rr[4], int f16, int64_t k, const float *x, float *const y[4]) {
    const void *r0 = rr[0], *r1 = rr[1], *r2 = rr[2], *r3 = rr[3];
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
    for (; i < k; i++)
        for (int r = 0; r < 4; r++)
            s[r] += (f16 ? er_f16_to_f32(((const uint16_t *)rr[r])[i]) : ((const float *)rr[r])[i]) * x[i];
    for (int r = 0; r < 4; r++) y[r][0] = s[r];
}

ER_AVX2 static void fdot_avx2(const er_weight *w, int64_t n0, int R, const float *x, float *y) {
    const int f16 = w->type == ER_W_F16;
    const int64_t k = w->k, es = f16 ? 2 : 4;
    const char *base = (const char *)w->data;
    if (R == 4) {
        const void *const rr[4] = {base + (n0 + 0) * k * es, base + (n0 + 1) * k * es, base + (n0 + 2) * k * es,
                                   base + (n0 + 3) * k * es};
        float *const yy[4] = {y, y + 1, y + 2, y + 3};
        fdot4_avx2(rr, f16, k, x, yy);
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

#if ER_X86
#ifndef GV_STREAMS
#define GV_STREAMS 4
#endif
/* 8-bit GEMV of rows [start, end): GV_STREAMS row ranges read in turn, one row of each per step: that many
 * sequential streams keep more DRAM reads in flight than one (a big head GEMV is bound by one core's read
 * bandwidth); the row geometry is computed once here */
ER_AVX2 static void gemv_b8_avx2(const er_weight *w, const actq *a, int64_t start, int64_t end, float *y) {
    const int64_t len = (end - start) / GV_STREAMS;
    const int per = w->block_size / SUB, lper = __builtin_ctz((unsigned)per);
    const int64_t nb = (w->k + w->block_size - 1) / w->block_size, rb = nb * w->block_size;
    const uint8_t *data = (const uint8_t *)w->data, *zp = w->zero_points;
#define GV_ROW(N) y[N] = qdot_b8(data + (N) * rb, w->scales + (N) * nb, zp ? zp + (N) * nb : NULL, a->q, a->sx, a->isum, \
                             a->nsub, a->n8, per, lper)
    for (int64_t i = 0; i < len; i++)
        for (int s = 0; s < GV_STREAMS; s++) GV_ROW(start + s * len + i);
    for (int64_t n = start + GV_STREAMS * len; n < end; n++) GV_ROW(n);
#undef GV_ROW
}
#endif

#if ER_X86
/* float GEMM tile: 4 f32 rows (at rr) x T <= 3 tokens (x rows ldx apart), 12 accumulators; each (row, token) sum
 * in fdot4_avx2's order (one 8-lane accumulator, hsum, then the scalar tail), so a prompt's rows equal the GEMV's
 * bit for bit */
ER_AVX2 static ER_INLINE void ftile4_avx2(const float *const rr[4], int64_t k, const float *x, int64_t ldx,
                                          const int T, float *y, int64_t ldy) {
    __m256 acc[4][3];
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < 3; t++) acc[r][t] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        const __m256 w0 = _mm256_loadu_ps(rr[0] + i), w1 = _mm256_loadu_ps(rr[1] + i),
                     w2 = _mm256_loadu_ps(rr[2] + i), w3 = _mm256_loadu_ps(rr[3] + i);
        for (int t = 0; t < T; t++) {
            const __m256 xv = _mm256_loadu_ps(x + t * ldx + i);
            acc[0][t] = _mm256_fmadd_ps(w0, xv, acc[0][t]);
            acc[1][t] = _mm256_fmadd_ps(w1, xv, acc[1][t]);
            acc[2][t] = _mm256_fmadd_ps(w2, xv, acc[2][t]);
            acc[3][t] = _mm256_fmadd_ps(w3, xv, acc[3][t]);
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < 4; r++) {
            float s = hsum256(acc[r][t]);
            for (int64_t j = i; j < k; j++) s += rr[r][j] * x[t * ldx + j];
            y[t * ldy + r] = s;
        }
}

/* float GEMM of rows [start, end) for m tokens (y: m x N): tiles of 4 rows x 3 tokens, the rows' tail (< 4) as
 * fdot_avx2 does it for each token. f16 rows are converted to f32 once per group of 4 (into `cvt`, 4 x k floats)
 * and the tiles read those: the same values, so the same sums (a tile converting f16 weights itself ran no faster
 * than one token at a time: the conversions bound it). Returns -1 (nothing done) when `cvt` cannot be had. */
ER_AVX2 static int fgemm_avx2(const er_weight *w, int64_t start, int64_t end, const float *x, int64_t m, float *y) {
    const int f16 = w->type == ER_W_F16;
    const int64_t k = w->k, N = w->n;
    float *cvt = f16 ? (float *)malloc((size_t)(4 * k) * sizeof(float)) : NULL;
    if (f16 && !cvt) return -1;
    int64_t n = start;
    for (; n + 4 <= end; n += 4) {
        const float *rr[4];
        for (int r = 0; r < 4; r++) {
            if (!f16) {
                rr[r] = (const float *)w->data + (n + r) * k;
                continue;
            }
            const uint16_t *src = (const uint16_t *)w->data + (n + r) * k;
            float *dst = cvt + r * k;
            int64_t i = 0;
            for (; i + 8 <= k; i += 8)
                _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
            for (; i < k; i++) dst[i] = er_f16_to_f32(src[i]);
            rr[r] = dst;
        }
        int64_t t = 0; /* the token count a constant in each inlined tile */
        for (; t + 3 <= m; t += 3) ftile4_avx2(rr, k, x + t * k, k, 3, y + t * N + n, N);
        if (m - t == 2) ftile4_avx2(rr, k, x + t * k, k, 2, y + t * N + n, N);
        else if (m - t == 1) ftile4_avx2(rr, k, x + t * k, k, 1, y + t * N + n, N);
    }
    free(cvt);
    for (; n < end; n++)
        for (int64_t t = 0; t < m; t++) fdot_avx2(w, n, 1, x + t * k, y + t * N + n);
    return 0;
}
#endif

#if ER_X86
/* float GEMV of rows [start, end): 4 row ranges read in turn, one row of each per step (as gemv_b8_avx2: more
 * DRAM streams in flight than 4 adjacent rows give); each row's sum is fdot_avx2's 4-row one */
ER_AVX2 static void fgemv_avx2(const er_weight *w, int64_t start, int64_t end, const float *x, float *y) {
    const int f16 = w->type == ER_W_F16;
    const int64_t k = w->k, es = f16 ? 2 : 4, len = (end - start) / 4;
    const char *base = (const char *)w->data;
    for (int64_t i = 0; i < len; i++) {
        const int64_t n0 = start + i, n1 = n0 + len, n2 = n1 + len, n3 = n2 + len;
        const void *const rr[4] = {base + n0 * k * es, base + n1 * k * es, base + n2 * k * es, base + n3 * k * es};
        float *const yy[4] = {y + n0, y + n1, y + n2, y + n3};
        fdot4_avx2(rr, f16, k, x, yy);
    }
    for (int64_t n = start + 4 * len; n < end; n++) fdot_avx2(w, n, 1, x, y + n);
}
#endif

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

/* ---- 8-bit GEMM (m > 1): register tiles ------------------------------------------------------
 * 8-bit codes without stored zero points (int8: code - 128) against Q8_0 activations, per sub-block s:
 *   y[t][n] = sum_s sw[n][s] * sx[t][s] * dot(code[n][s] - 128, xq[t][s])
 * A tile is one weight row x up to Q8T tokens, one accumulator register per token (lanes: partial sums): a
 * sub-block's 32 codes are loaded, made signed and their absolute values taken once, then dotted with each
 * token's 32 activations (sign trick, as dot_s8s8), converted and added by one FMA with sw * sx; those
 * products are made per chunk of 8 sub-blocks, one multiply per sub-block for all the tile's tokens (the
 * token block's activation scales are kept transposed, tokens contiguous). A thread's row range meets one
 * block of Q8T tokens at a time: the block's activations stay in L1 while the rows stream from L2. */
#if ER_X86
#define Q8T 8

ER_AVX2 static ER_INLINE void q8_tile(const uint8_t *row, const uint16_t *srow, int lper, const int8_t *q, int64_t qs,
                                      const float *sxT, int64_t nsub, const int NT, float *y, int64_t ldy) {
    const __m256i x80 = _mm256_set1_epi8((char)0x80), one16 = _mm256_set1_epi16(1);
    __m256 acc[Q8T];
    float P[8 * Q8T] __attribute__((aligned(32)));
    for (int t = 0; t < NT; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t s0 = 0; s0 < nsub; s0 += 8) {
        const int ns = nsub - s0 < 8 ? (int)(nsub - s0) : 8;
        for (int j = 0; j < ns; j++) {
            const __m256 sw = _mm256_set1_ps(_cvtsh_ss(srow[(s0 + j) >> lper]));
            _mm256_store_ps(P + 8 * j, _mm256_mul_ps(sw, _mm256_loadu_ps(sxT + (s0 + j) * Q8T)));
        }
        for (int j = 0; j < ns; j++) {
            const int64_t o = 32 * (s0 + j);
            const __m256i ws = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(row + o)), x80);
            const __m256i wa = _mm256_sign_epi8(ws, ws);
            for (int t = 0; t < NT; t++) {
                const __m256i xq = _mm256_loadu_si256((const __m256i *)(q + t * qs + o));
                const __m256i d = _mm256_madd_epi16(_mm256_maddubs_epi16(wa, _mm256_sign_epi8(xq, ws)), one16);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_broadcast_ss(P + 8 * j + t), acc[t]);
            }
        }
    }
    for (int t = 0; t < NT; t++) y[t * ldy] = hsum256(acc[t]);
}

static _Thread_local float *q8_sxT = NULL;
static _Thread_local int64_t q8_sxT_n = 0;

/* rows n0..n1-1 of y (m, N) for all m tokens; 0, or -3 without memory for the transposed scales */
ER_AVX2 static int q8_gemm_avx2(const er_weight *w, const actq *a, int64_t n0, int64_t n1, int64_t m, float *y) {
    const int bs = w->block_size, lper = __builtin_ctz((unsigned)(bs / SUB));
    const int64_t nb = (w->k + bs - 1) / bs, row_bytes = nb * bs, nsub = a->nsub, N = w->n;
    if (q8_sxT_n < nsub * Q8T) {
        free(q8_sxT);
        q8_sxT = aligned_alloc(32, (size_t)(nsub * Q8T * sizeof(float) + 31) & ~(size_t)31);
        q8_sxT_n = q8_sxT ? nsub * Q8T : 0;
        if (!q8_sxT) return -3;
    }
    float *sxT = q8_sxT;
    for (int64_t t0 = 0; t0 < m; t0 += Q8T) {
        const int nt = m - t0 < Q8T ? (int)(m - t0) : Q8T;
        for (int64_t s = 0; s < nsub; s++)
            for (int t = 0; t < Q8T; t++) sxT[s * Q8T + t] = t < nt ? a->sx[(t0 + t) * nsub + s] : 0.0f;
        const int8_t *q = a->q + t0 * a->kp;
        for (int64_t n = n0; n < n1; n++) {
            const uint8_t *row = (const uint8_t *)w->data + n * row_bytes;
            const uint16_t *srow = w->scales + n * nb;
            float *yt = y + t0 * N + n;
            switch (nt) { /* constant token counts: the accumulators stay in registers */
            case 8: q8_tile(row, srow, lper, q, a->kp, sxT, nsub, 8, yt, N); break;
            case 7: q8_tile(row, srow, lper, q, a->kp, sxT, nsub, 7, yt, N); break;
            case 6: q8_tile(row, srow, lper, q, a->kp, sxT, nsub, 6, yt, N); break;
            case 5: q8_tile(row, srow, lper, q, a->kp, sxT, nsub, 5, yt, N); break;
            case 4: q8_tile(row, srow, lper, q, a->kp, sxT, nsub, 4, yt, N); break;
            case 3: q8_tile(row, srow, lper, q, a->kp, sxT, nsub, 3, yt, N); break;
            case 2: q8_tile(row, srow, lper, q, a->kp, sxT, nsub, 2, yt, N); break;
            default: q8_tile(row, srow, lper, q, a->kp, sxT, nsub, 1, yt, N); break;
            }
        }
    }
    return 0;
}
#endif /* ER_X86 */

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
#if ER_X86
    if (w->type == ER_W_Q && w->bits != 8 && c->isa == ER_ISA_AVX2) {
        const int b4 = w->bits == 4;
        if (c->m == 1) {
            int64_t n = start;
            if (!b4 && w->block_size % 256 == 0 && !(w->zero_points && w->zp_hint <= 0)) { /* ternary */
                tern_gemv_range(w, &c->a, start, start + (end - start) / 4 * 4, c->y);
                n = start + (end - start) / 4 * 4;
            }
            for (; n + 4 <= end; n += 4) (b4 ? qtile_b4_r4t1 : qtile_b2_r4t1)(w, &c->a, n, 0, c->y + n, N);
            for (; n < end; n++) (b4 ? qtile_b4_r1t1 : qtile_b2_r1t1)(w, &c->a, n, 0, c->y + n, N);
            return;
        }
        /* GEMM: a tile of 4 rows stays in L1 while it meets the tokens, QT_MAXT at a time; the tokens in blocks of
         * QT_TOKB whose quantized activations stay in L2 while every row of the range meets them (a long prompt's
         * activations streamed once per block of rows, not once per 4 rows; the tiles, so the floats, unchanged) */
        for (int64_t tb = 0; tb < c->m; tb += QT_TOKB) {
            const int64_t te = c->m - tb < QT_TOKB ? c->m : tb + QT_TOKB;
            for (int64_t n = start; n < end;) {
                int R = (end - n >= 4) ? 4 : 1;
                for (int64_t t = tb; t < te; t += QT_MAXT) {
                    int T = (int)(te - t < QT_MAXT ? te - t : QT_MAXT);
                    (b4 ? qtile_b4_gemm : qtile_b2_gemm)(w, &c->a, n, R, t, T, c->y + t * N + n, N);
                }
                n += R;
            }
        }
        return;
    }
    if (w->type == ER_W_Q && w->bits == 8 && !w->zero_points && c->isa == ER_ISA_AVX2 && c->m > 1 &&
        q8_gemm_avx2(w, &c->a, start, end, c->m, c->y) == 0)
        return; /* 8-bit GEMM: register tiles */
    if (w->type == ER_W_Q && c->isa == ER_ISA_AVX2 && c->m == 1 && end - start >= 4 * GV_STREAMS) {
        gemv_b8_avx2(w, &c->a, start, end, c->y);
        return;
    }
    if (w->type != ER_W_Q && c->isa == ER_ISA_AVX2 && c->m == 1 && end - start >= 16) {
        fgemv_avx2(w, start, end, c->x, c->y);
        return;
    }
    if (w->type != ER_W_Q && c->isa == ER_ISA_AVX2 && c->m > 1 && fgemm_avx2(w, start, end, c->x, c->m, c->y) == 0)
        return; /* float GEMM: register tiles */
#endif
    for (int64_t n = start; n < end;) {
        int R = (end - n >= 4) ? 4 : 1;
        for (int64_t t = 0; t < c->m; t++) {
            float *yt = c->y + t * N + n;
            if (w->type == ER_W_Q) {
#if ER_X86
                if (c->isa == ER_ISA_AVX2) { /* 8-bit */
                    for (int r = 0; r < R; r++) yt[r] = qdot_row_avx2_b8(w, n + r, &c->a, t);
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

#if ER_X86
ER_AVX2 static void q8k_lane_sums_avx2(const int8_t *q, int64_t nch, int32_t *isl) {
    const __m256i u1 = _mm256_set1_epi8(1), w1 = _mm256_set1_epi16(1);
    for (int64_t ch = 0; ch < nch; ch++) {
        __m256i s = _mm256_setzero_si256();
        for (int p = 0; p < 8; p++)
            s = _mm256_add_epi16(
                s, _mm256_maddubs_epi16(u1, _mm256_loadu_si256((const __m256i *)(q + ch * 256 + 32 * p))));
        _mm256_storeu_si256((__m256i *)(isl + ch * CH), _mm256_madd_epi16(s, w1));
    }
}
#endif

static void q8k_lane_sums(const int8_t *q, int64_t nch, int isa, int32_t *isl) {
#if ER_X86
    if (isa == ER_ISA_AVX2) {
        q8k_lane_sums_avx2(q, nch, isl);
        return;
    }
#endif
    (void)isa;
    for (int64_t ch = 0; ch < nch; ch++)
        for (int l = 0; l < 8; l++) {
            int32_t v = 0;
            for (int p = 0; p < 8; p++)
                for (int b = 0; b < 4; b++) v += q[ch * 256 + p * 32 + 4 * l + b];
            isl[ch * CH + l] = v;
        }
}

/* Per-thread scratch for the quantized activations, kept between calls (decode makes hundreds of
 * calls per token; an allocation each was measurable). */
static _Thread_local void *scratch = NULL;
static _Thread_local size_t scratch_size = 0;

static void *get_scratch(size_t n) {
    if (n > scratch_size) {
        free(scratch);
        n = (n + 4095) & ~(size_t)4095;
        scratch = aligned_alloc(64, n);
        scratch_size = scratch ? n : 0;
    }
    return scratch;
}

/* the zero point every block uses unless stored ones differ (er_weight.zp_hint), as prep_act bakes it into zich */
static inline int zero_point_default(const er_weight *w) {
    if (w->type != ER_W_Q) return 0;
    return w->zero_points && w->zp_hint > 0 ? w->zp_hint - 1 : 1 << (w->bits - 1);
}

typedef struct {
    mm_ctx *c;
    const er_weight *w;
    const float *x;
    int lanes;
} prep_job;
static void prep_rows(const prep_job *j, int64_t t0, int64_t t1);
static void prep_task(void *vj, int64_t start, int64_t end, int tid);

/* Quantized activations of x (m, K) for weights of w's kind (bits, block size, K, default zero point) into the
 * thread's scratch: c->a. lanes = 0 skips the lane-ordered arrays (sxl, isl, zisl), which only the generic tiles
 * read (the ternary GEMV fast path needs q, sx and zich). Returns 0, or < 0 on bad arguments / no memory. */
static int prep_act(mm_ctx *c, const er_weight *w, const float *x, int64_t m, int lanes) {
    const int bits = w->bits, bs = w->block_size;
    if (!(bits == 2 || bits == 4 || bits == 8) || bs < SUB || (bs & (bs - 1)) || !w->scales) return -2;
    const int per = bs / SUB;
    int64_t nb = (w->k + bs - 1) / bs, kp = nb * bs, nsub = kp / SUB, nch = (nsub + CH - 1) / CH;
    size_t qbytes = (size_t)(m * (kp + 64) + 63) & ~(size_t)63;
    size_t nat = (size_t)(m * nsub), lane = (size_t)(m * nch * CH);
    char *buf = get_scratch(qbytes + 2 * sizeof(float) * nat + 3 * sizeof(float) * lane +
                            sizeof(int32_t) * (size_t)(m * nch) + 256);
    if (!buf) return -3;
    c->a.q = (int8_t *)buf;
    c->a.sx = (float *)(buf + qbytes);
    c->a.isum = (int32_t *)(c->a.sx + nat);
    c->a.sxl = (float *)(c->a.isum + nat);
    c->a.isl = (int32_t *)(c->a.sxl + lane);
    c->a.zisl = c->a.isl + lane;
    c->a.zich = c->a.zisl + lane;
    c->a.kp = kp + 64; /* row stride of q: a power-of-two stride would map all tokens to few cache sets */
    c->a.nsub = nsub;
    c->a.nmain = bits == 8 ? nsub : nsub - nsub % unit_subs(bits);
    c->a.n8 = nsub - nsub % 8;
    c->a.nch = nch;
    for (int l = 0; l < 8; l++) {
        int s = bits == 4 ? LANE4[l] : LANE2[l];
        c->a.zshift[l] = (l / per) * bits;
        c->a.zshl[l] = (s / per) * bits;
        c->a.sidx[l] = per >= 8 ? 0 : s / per;
    }
    prep_job j = {.c = c, .w = w, .x = x, .lanes = lanes};
    if (m >= 32) /* a prefill's tokens quantized across the pool (each row on its own: the same bytes) */
        er_parallel_for(m, 8, prep_task, &j);
    else
        prep_rows(&j, 0, m);
    return 0;
}

static void prep_rows(const prep_job *j, int64_t t0, int64_t t1) {
    mm_ctx *c = j->c;
    const er_weight *w = j->w;
    const float *x = j->x;
    const int lanes = j->lanes, bits = w->bits;
    const int64_t nsub = c->a.nsub, nch = c->a.nch;
    /* 2-bit (ternary) weights in blocks of 256: llama.cpp's TQ2_0 x Q8_K activations */
    const int q8k = bits == 2 && w->block_size % 256 == 0;
    const int zdef = zero_point_default(w);
    for (int64_t t = t0; t < t1; t++) {
        float *sx = c->a.sx + t * nsub;
        int32_t *is = c->a.isum + t * nsub;
        quantize_act_row(x + t * w->k, w->k, bits, nsub, c->a.nmain, q8k, c->isa, c->a.q + t * c->a.kp, sx, is);
        if (bits == 8) continue;
        int32_t *zich = c->a.zich + t * nch;
        if (!lanes) { /* q8k: the chunk's zero-point term from the natural-order sums (the same integer) */
            for (int64_t ch = 0; ch < nch; ch++) {
                int32_t v = 0;
                for (int l = 0; l < CH; l++) v += is[ch * CH + l];
                zich[ch] = zdef * v;
            }
            continue;
        }
        float *sxl = c->a.sxl + t * nch * CH;
        int32_t *isl = c->a.isl + t * nch * CH, *zisl = c->a.zisl + t * nch * CH;
        for (int64_t s = 0; s < nch * CH; s++) {
            int64_t sl = (s & ~(int64_t)7) | lane_slot(bits, s);
            int main_sub = s < c->a.nmain;
            sxl[sl] = main_sub ? sx[s] : 0.0f;
            isl[sl] = main_sub ? is[s] : 0;
        }
        if (q8k) /* one scale per chunk: lane l sums bytes 4l..4l+3 of each 32-byte piece, as the dot */
            q8k_lane_sums(c->a.q + t * c->a.kp, nch, c->isa, isl);
        for (int64_t s = 0; s < nch * CH; s++) zisl[s] = zdef * isl[s];
        for (int64_t ch = 0; ch < nch; ch++) {
            int32_t v = 0;
            for (int l = 0; l < CH; l++) v += zisl[ch * CH + l];
            zich[ch] = v;
        }
    }
}

static void prep_task(void *vj, int64_t start, int64_t end, int tid) {
    (void)tid;
    prep_rows((const prep_job *)vj, start, end);
}

/* whether every GEMV row tile of w runs the ternary fast path (then prep_act may skip the lane arrays) */
static int tern_fast(const er_weight *w, int64_t m, int isa) {
    return ER_X86 && isa == ER_ISA_AVX2 && m == 1 && w->type == ER_W_Q && w->bits == 2 && w->block_size % 256 == 0 &&
           !(w->zero_points && w->zp_hint <= 0) && w->n % 4 == 0;
}

int er_matmul(const er_weight *w, const float *x, float *y, int64_t m) {
    if (!w || !x || !y || m < 1 || w->n < 1 || w->k < 1 || !w->data) return -1;
    if (gg_is_type(w->type)) return er_matmul_ggml(w, x, y, m); /* GGUF block formats: matmul_ggml.c */
#if defined(__aarch64__)
    if (er_get_isa() == ER_ISA_NEON) return er_matmul_neon(w, x, y, m); /* matmul_neon.c */
#endif
    mm_ctx c = {.w = w, .x = x, .y = y, .m = m, .isa = er_get_isa()};
    if (w->type == ER_W_Q) {
        int r = prep_act(&c, w, x, m, !tern_fast(w, m, c.isa));
        if (r) return r;
    } else if (w->type != ER_W_F32 && w->type != ER_W_F16) {
        return -2;
    }
    /* grain 16 rows: whole cache lines of y per thread */
    er_parallel_for(w->n, 16, mm_task, &c);
    return 0;
}

#define ER_MULTI_MAX 8
typedef struct {
    mm_ctx c[ER_MULTI_MAX];
    /* first row of each weight in the joint row space: multiples of 16, so that every weight is cut into the
     * same row tiles as by its own er_matmul (and gives the same floats) */
    int64_t off[ER_MULTI_MAX + 1];
    int nw;
} multi_ctx;

static void multi_task(void *vctx, int64_t start, int64_t end, int tid) {
    multi_ctx *mc = (multi_ctx *)vctx;
    for (int i = 0; i < mc->nw; i++) {
        const int64_t wend = mc->off[i] + mc->c[i].w->n;
        int64_t lo = start > mc->off[i] ? start : mc->off[i], hi = end < wend ? end : wend;
        if (lo < hi) mm_task(&mc->c[i], lo - mc->off[i], hi - mc->off[i], tid);
    }
}

int er_matmul_multi(const er_weight *const *ws, int nw, const float *x, float *const *ys, int64_t m) {
    if (!ws || !ys || nw < 1 || nw > ER_MULTI_MAX || !x || m < 1) return -1;
    const er_weight *w0 = ws[0];
    int same = 1;
    for (int i = 0; i < nw; i++) {
        const er_weight *w = ws[i];
        if (!w || !ys[i] || w->n < 1 || w->k < 1 || !w->data) return -1;
        same &= w->type == w0->type && w->k == w0->k && w->bits == w0->bits && w->block_size == w0->block_size &&
                zero_point_default(w) == zero_point_default(w0) &&
                (w->zero_points && w->zp_hint <= 0) == (w0->zero_points && w0->zp_hint <= 0);
    }
    if (gg_is_type(w0->type)) { /* GGUF block formats sharing one activation kind: matmul_ggml.c */
        int r = er_matmul_multi_ggml(ws, nw, x, ys, m);
        if (r <= 0) return r;
    }
    const int isa = er_get_isa();
    if (!same || ER_ISA_NEON == isa || (w0->type != ER_W_Q && w0->type != ER_W_F32 && w0->type != ER_W_F16)) {
        /* kinds differ: GGUF block weights of one activation kind still go as one job (Gemma-3's q, k in q5_0
         * next to a q8_0 v), the others one call each */
        int taken[ER_MULTI_MAX] = {0};
        for (int i = 0; i < nw; i++) {
            if (taken[i] || !gg_is_type(ws[i]->type)) continue;
            const er_weight *sub[ER_MULTI_MAX];
            float *suby[ER_MULTI_MAX];
            int ns = 0;
            for (int j = i; j < nw; j++)
                if (!taken[j] && gg_is_type(ws[j]->type) && gg_is_k(ws[j]->type) == gg_is_k(ws[i]->type) &&
                    ws[j]->k == ws[i]->k) {
                    sub[ns] = ws[j];
                    suby[ns++] = ys[j];
                    taken[j] = 1;
                }
            int r = ns > 1 ? er_matmul_multi_ggml(sub, ns, x, suby, m) : er_matmul(sub[0], x, suby[0], m);
            if (r > 0) /* not applicable after all: one call each */
                for (int j = 0; j < ns && r >= 0; j++) r = er_matmul(sub[j], x, suby[j], m);
            if (r) return r;
        }
        for (int i = 0; i < nw; i++) {
            if (taken[i]) continue;
            int r = er_matmul(ws[i], x, ys[i], m);
            if (r) return r;
        }
        return 0;
    }
    multi_ctx mc;
    mc.nw = nw;
    mc.off[0] = 0;
    int lanes = 0;
    for (int i = 0; i < nw; i++) {
        mc.off[i + 1] = mc.off[i] + (ws[i]->n + 15) / 16 * 16;
        lanes |= !tern_fast(ws[i], m, isa);
    }
    mm_ctx *c0 = &mc.c[0];
    *c0 = (mm_ctx){.w = w0, .x = x, .y = ys[0], .m = m, .isa = isa};
    if (w0->type == ER_W_Q) {
        int r = prep_act(c0, w0, x, m, lanes); /* once for all: the weights share their activation layout */
        if (r) return r;
    }
    for (int i = 1; i < nw; i++) {
        mc.c[i] = *c0;
        mc.c[i].w = ws[i];
        mc.c[i].y = ys[i];
    }
    er_parallel_for(mc.off[nw], 16, multi_task, &mc);
    return 0;
}
