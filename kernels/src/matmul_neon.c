/* NEON variants of er_matmul (aarch64), with an ARMv8.2 dot-product (sdot) path chosen at run time.
 *
 * Mirrors matmul.c's scalar path exactly in its integer arithmetic:
 *   - activations are quantized as quantize_act_row_scalar does (Q8_0 per 32 values: d = fp16(amax/127),
 *     q = round-half-even(x * 127/amax); Q8_K per 256 for 2-bit weights in blocks of a multiple of 256),
 *     bit for bit (vcvtnq rounds half to even as lrintf does; the f16 round trip of d is FCVT's RNE);
 *   - y = sum_t sw[b(t)] * sx[t] * dot_t with dot_t = sum_i (code_i - z_b) * q_i, which is the scalar
 *     qdot_row_scalar's (dot - z * isum) with the zero point subtracted from the codes instead (4-/2-bit
 *     codes minus z fit int8). 8-bit codes are used as (code - 128) and (z - 128) * isum is subtracted,
 *     as the scalar path does. Only the float summation order differs from the scalar path.
 *
 * Activation layouts (ours, not matmul.c's): for GEMV the quantized x of one sub-block of 32 is stored in
 * the order the codes come out of a register unpack, so the dot needs no shuffles:
 *   8-bit: natural;  4-bit: [16 even | 16 odd] (low / high nibbles of 16 code bytes);
 *   2-bit: per PAIR of sub-blocks (16 code bytes), field f (bits 2f..2f+1 of each byte) is 16 bytes
 *          [sub A: q[4j+f], j < 8 | sub B: q[4j+f]], so one sdot lane sums one sub-block's products.
 * GEMM (m > 1) unpacks a tile of 4 weight rows once to int8 (code - z, natural order) and dots it with
 * 4 tokens at a time (natural layout, scales interleaved by 4 tokens): 16 int32x4 accumulators, reduced
 * with pairwise adds to one [t0 t1 t2 t3] vector per row before the float epilogue.
 *
 * Each int kernel is compiled twice from matmul_neon_body.h: with `sdot` (#pragma GCC target
 * "arch=armv8.2-a+dotprod", as arm_neon.h declares it: no -march flag at build time) and with a
 * baseline-NEON emulation of sdot (smull + pairwise widening adds, same lane sums).
 * er_neon_dotprod() (cpu.c, HWCAP_ASIMDDP) picks one per call.
 * f32/f16 weights: 4 rows x 1 or 4 tokens of FMA (fdot_scalar's sums in another order).
 */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "edgerun_kernels.h"
#include "er_internal.h"
#include "er_neon.h"

#define NSUB 32
#define NINLINE inline __attribute__((always_inline))

typedef struct {
    const er_weight *w;
    const float *x;
    float *y;
    int64_t m, mp;       /* tokens; padded to a multiple of 4 for GEMM */
    int bits, lp, q8k;   /* lp = log2(block_size / 32) */
    int asym, zdef;      /* asym: per-block zero points read from w->zero_points; else all equal zdef */
    int64_t nb, nsub, kp, qs, row_bytes, zp_bytes;
    int8_t *q;           /* GEMV: layout by bits (above); GEMM: (mp, qs) natural */
    float *sx;           /* GEMV: (nsub); GEMM: (mp / 4, nsub, 4) */
    int32_t *isum;       /* same layout as sx (zero-point terms z * isum) */
    int32_t *gsum;       /* GEMV with Q8_K: isum of each group of 8 sub-blocks */
} nq_ctx;

/* data, scale and zero-point rows of rows n0 and n0 + 1 (n0 twice when only R = 1 row is valid) */
static inline void row_ptrs(const nq_ctx *c, int64_t n0, int R, const uint8_t *row[2], const uint16_t *sr[2],
                            const uint8_t *zr[2]) {
    const er_weight *w = c->w;
    for (int r = 0; r < 2; r++) {
        const int64_t n = n0 + (r < R ? r : 0);
        row[r] = (const uint8_t *)w->data + n * c->row_bytes;
        sr[r] = w->scales + n * c->nb;
        zr[r] = w->zero_points ? w->zero_points + n * c->zp_bytes : NULL;
    }
}

static NINLINE float h2f(uint16_t h) {
    __fp16 v;
    memcpy(&v, &h, 2);
    return (float)v;
}

static NINLINE int zpoint(const nq_ctx *c, const uint8_t *zr, int64_t b) { /* matmul.c zero_point() */
    if (!c->asym) return c->zdef;
    int64_t bit = b * c->bits;
    return (zr[bit >> 3] >> (bit & 7)) & ((1 << c->bits) - 1);
}

/* ---- activation quantization (mirrors quantize_act_row_scalar, bit-identical) ------------------ */

static inline float amax_n(const float *v, int n) { /* n a multiple of 16 */
    float32x4_t m0 = vdupq_n_f32(0.0f), m1 = m0, m2 = m0, m3 = m0;
    for (int i = 0; i < n; i += 16) {
        m0 = vmaxq_f32(m0, vabsq_f32(vld1q_f32(v + i)));
        m1 = vmaxq_f32(m1, vabsq_f32(vld1q_f32(v + i + 4)));
        m2 = vmaxq_f32(m2, vabsq_f32(vld1q_f32(v + i + 8)));
        m3 = vmaxq_f32(m3, vabsq_f32(vld1q_f32(v + i + 12)));
    }
    return vmaxvq_f32(vmaxq_f32(vmaxq_f32(m0, m1), vmaxq_f32(m2, m3)));
}

/* 16 values -> 16 int8 = clamp(round-half-even(v * id), -127, 127); *s += their sum */
static NINLINE int8x16_t quant16(const float *v, float id, int32x4_t *s) {
    const int32x4_t hi = vdupq_n_s32(127), lo = vdupq_n_s32(-127);
    int32x4_t r0 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(v), id));
    int32x4_t r1 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(v + 4), id));
    int32x4_t r2 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(v + 8), id));
    int32x4_t r3 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(v + 12), id));
    r0 = vmaxq_s32(vminq_s32(r0, hi), lo);
    r1 = vmaxq_s32(vminq_s32(r1, hi), lo);
    r2 = vmaxq_s32(vminq_s32(r2, hi), lo);
    r3 = vmaxq_s32(vminq_s32(r3, hi), lo);
    *s = vaddq_s32(*s, vaddq_s32(vaddq_s32(r0, r1), vaddq_s32(r2, r3)));
    int16x8_t a = vcombine_s16(vmovn_s32(r0), vmovn_s32(r1)), b = vcombine_s16(vmovn_s32(r2), vmovn_s32(r3));
    return vcombine_s8(vmovn_s16(a), vmovn_s16(b));
}

/* One activation row. layout: 0 natural (8-bit GEMV and all GEMM), 4 / 2: the GEMV layouts above.
 * sx / isum of sub-block t go to sx[t * ss]. q must be zeroed beforehand for layout 2 with odd nsub. */
static void quant_row(const float *x, int64_t k, int64_t nsub, int q8k, int layout, int8_t *q, float *sx,
                      int32_t *isum, int64_t ss) {
    const int span = q8k ? 8 : 1; /* sub-blocks per activation scale */
    float pad[256];
    for (int64_t t0 = 0; t0 < nsub; t0 += span) {
        const float *v = x + t0 * NSUB;
        if ((t0 + span) * NSUB > k) { /* zero-padded copy */
            for (int64_t i = 0; i < span * NSUB; i++) pad[i] = t0 * NSUB + i < k ? x[t0 * NSUB + i] : 0.0f;
            v = pad;
        }
        float d, id;
        const float amax = amax_n(v, span * NSUB);
        if (q8k) { /* quantize_blk_q8_k: the signed value of largest magnitude, first one on ties */
            if (amax == 0.0f) {
                d = id = 0.0f;
            } else {
                float mx = 0.0f;
                for (int i = 0; i < 256; i++)
                    if (fabsf(v[i]) == amax) {
                        mx = v[i];
                        break;
                    }
                const float iscale = -127.0f / mx;
                d = 1.0f / iscale;
                id = iscale;
            }
        } else { /* quantize_sub_q8_0 */
            d = vgetq_lane_f32(vcvt_f32_f16(vcvt_f16_f32(vdupq_n_f32(amax / 127.0f))), 0);
            id = amax != 0.0f ? 127.0f / amax : 0.0f;
        }
        for (int64_t t = t0; t < t0 + span; t++) {
            const float *vt = v + (t - t0) * NSUB;
            int32x4_t s = vdupq_n_s32(0);
            int8x16_t a = quant16(vt, id, &s), b = quant16(vt + 16, id, &s);
            sx[t * ss] = d;
            isum[t * ss] = vaddvq_s32(s);
            if (layout == 4) {
                vst1q_s8(q + t * NSUB, vuzp1q_s8(a, b));
                vst1q_s8(q + t * NSUB + 16, vuzp2q_s8(a, b));
            } else if (layout == 2) {
                int8x16_t ev = vuzp1q_s8(a, b), od = vuzp2q_s8(a, b); /* elements 0,2,..30 / 1,3,..31 */
                int8_t *o = q + (t >> 1) * 64 + (t & 1) * 8;
                vst1_s8(o, vget_low_s8(vuzp1q_s8(ev, ev)));       /* field 0: 4j   */
                vst1_s8(o + 16, vget_low_s8(vuzp1q_s8(od, od)));  /* field 1: 4j+1 */
                vst1_s8(o + 32, vget_low_s8(vuzp2q_s8(ev, ev)));  /* field 2: 4j+2 */
                vst1_s8(o + 48, vget_low_s8(vuzp2q_s8(od, od)));  /* field 3: 4j+3 */
            } else {
                vst1q_s8(q + t * NSUB, a);
                vst1q_s8(q + t * NSUB + 16, b);
            }
        }
    }
}

/* ---- GEMM: unpack 4 weight rows to int8 (code - z; 8-bit: code - 128), natural order ------------- */

/* dst (kp): row n's codes; swf (nb): its scales in f32; zc (nb): (z - 128) for 8-bit (else not written) */
static void unpack_row(const nq_ctx *c, int64_t n, int8_t *dst, float *swf, int32_t *zc) {
    const er_weight *w = c->w;
    const uint8_t *row = (const uint8_t *)w->data + n * c->row_bytes;
    const uint16_t *sr = w->scales + n * c->nb;
    const uint8_t *zr = w->zero_points ? w->zero_points + n * c->zp_bytes : NULL;
    const int64_t nsub = c->nsub;
    int64_t b = 0;
    for (; b + 4 <= c->nb; b += 4) vst1q_f32(swf + b, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(sr + b))));
    for (; b < c->nb; b++) swf[b] = h2f(sr[b]);
    if (c->bits == 8)
        for (b = 0; b < c->nb; b++) zc[b] = zpoint(c, zr, b) - 128;
    if (c->bits == 4 && !c->asym) { /* one zero point */
        const uint8x16_t m4 = vdupq_n_u8(15);
        const int8x16_t z = vdupq_n_s8((int8_t)c->zdef);
        for (int64_t t = 0; t < nsub; t++) {
            uint8x16_t v = vld1q_u8(row + t * 16);
            int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, m4)), z);
            int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), z);
            vst1q_s8(dst + t * NSUB, vzip1q_s8(lo, hi));
            vst1q_s8(dst + t * NSUB + 16, vzip2q_s8(lo, hi));
        }
    } else if (c->bits == 8) {
        const uint8x16_t f = vdupq_n_u8(0x80);
        for (int64_t i = 0; i < nsub * NSUB; i += 16)
            vst1q_s8(dst + i, vreinterpretq_s8_u8(veorq_u8(vld1q_u8(row + i), f)));
    } else if (c->bits == 4) {
        const uint8x16_t m4 = vdupq_n_u8(15);
        for (int64_t t = 0; t < nsub; t++) {
            uint8x16_t v = vld1q_u8(row + t * 16);
            int8x16_t z = vdupq_n_s8((int8_t)zpoint(c, zr, t >> c->lp));
            int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, m4)), z);
            int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), z);
            vst1q_s8(dst + t * NSUB, vzip1q_s8(lo, hi));
            vst1q_s8(dst + t * NSUB + 16, vzip2q_s8(lo, hi));
        }
    } else {
        const uint8x16_t m2 = vdupq_n_u8(3);
        int64_t t = 0;
        for (; t + 2 <= nsub; t += 2) { /* 16 bytes = 64 elements (2 sub-blocks) */
            uint8x16_t v = vld1q_u8(row + t * 8);
            int8x16_t z = vcombine_s8(vdup_n_s8((int8_t)zpoint(c, zr, t >> c->lp)),
                                      vdup_n_s8((int8_t)zpoint(c, zr, (t + 1) >> c->lp)));
            int8x16_t f0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, m2)), z);
            int8x16_t f1 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 2), m2)), z);
            int8x16_t f2 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 4), m2)), z);
            int8x16_t f3 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 6)), z);
            int8x16_t e02l = vzip1q_s8(f0, f2), e02h = vzip2q_s8(f0, f2); /* [4j, 4j+2] pairs */
            int8x16_t e13l = vzip1q_s8(f1, f3), e13h = vzip2q_s8(f1, f3);
            vst1q_s8(dst + t * NSUB, vzip1q_s8(e02l, e13l));
            vst1q_s8(dst + t * NSUB + 16, vzip2q_s8(e02l, e13l));
            vst1q_s8(dst + t * NSUB + 32, vzip1q_s8(e02h, e13h));
            vst1q_s8(dst + t * NSUB + 48, vzip2q_s8(e02h, e13h));
        }
        for (; t < nsub; t++) { /* a lone last sub-block */
            int z = zpoint(c, zr, t >> c->lp);
            for (int i = 0; i < NSUB; i++) {
                int64_t e = t * NSUB + i;
                dst[e] = (int8_t)(((row[e >> 2] >> ((e & 3) * 2)) & 3) - z);
            }
        }
    }
}

/* ---- the int kernels, with and without sdot ------------------------------------------------------ */

/* sdot emulated with baseline NEON: the same 4 lane sums (bytes 4l..4l+3), exact in int32 */
static NINLINE int32x4_t dot_emul(int32x4_t acc, int8x16_t a, int8x16_t b) {
    int16x8_t l = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    int16x8_t h = vmull_high_s8(a, b);
    return vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(l), vpaddlq_s16(h)));
}

/* the same total over the 4 lanes (not per lane): bytes i and i + 8 share an int16 lane first, exact since
 * |a b| <= 128 * 127 (two such products < 2^15). For dots whose lanes are summed anyway. */
static NINLINE int32x4_t dot_emul_sum(int32x4_t acc, int8x16_t a, int8x16_t b) {
    int16x8_t p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    return vpadalq_s16(acc, vmlal_high_s8(p, a, b));
}

#define NS(name) name##_nodp
#define DOT(acc, a, b) dot_emul(acc, a, b)
#define DOTS(acc, a, b) dot_emul_sum(acc, a, b)
#include "matmul_neon_body.h"
#undef NS
#undef DOT
#undef DOTS

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod") /* as arm_neon.h declares vdotq_s32 */
#define NS(name) name##_dp
#define DOT(acc, a, b) vdotq_s32(acc, a, b)
#define DOTS(acc, a, b) vdotq_s32(acc, a, b)
#include "matmul_neon_body.h"
#undef NS
#undef DOT
#undef DOTS
#pragma GCC pop_options

/* ---- f32 / f16 weights (mirror fdot_scalar) ------------------------------------------------------ */

static NINLINE float32x4_t ldw4(const void *base, int f16, int64_t i) {
    if (f16) return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)base + i)));
    return vld1q_f32((const float *)base + i);
}

static NINLINE float wel(const void *base, int f16, int64_t i) {
    return f16 ? h2f(((const uint16_t *)base)[i]) : ((const float *)base)[i];
}

static NINLINE void ldw8(const void *base, int f16, int64_t i, float32x4_t *w0, float32x4_t *w1) {
    if (f16) { /* 8 halves in one load */
        float16x8_t h = vreinterpretq_f16_u16(vld1q_u16((const uint16_t *)base + i));
        *w0 = vcvt_f32_f16(vget_low_f16(h));
        *w1 = vcvt_high_f32_f16(h);
    } else {
        *w0 = vld1q_f32((const float *)base + i);
        *w1 = vld1q_f32((const float *)base + i + 4);
    }
}

/* rows n0..n0+3 (rows past R repeat the last; not stored) */
static NINLINE void frows(const er_weight *w, int64_t n0, int R, const char *rp[4]) {
    const int64_t es = w->type == ER_W_F16 ? 2 : 4;
    for (int r = 0; r < 4; r++) rp[r] = (const char *)w->data + (n0 + (r < R ? r : R - 1)) * w->k * es;
}

/* GEMV: y[r] = row (n0 + r) . x for 4 rows, 8 accumulators (f16: weights are f16, a constant) */
static NINLINE void fgemv4(const er_weight *w, int64_t n0, int R, const float *x, float *y, const int f16) {
    const int64_t k = w->k;
    const char *rp[4];
    frows(w, n0, R, rp);
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        float32x4_t x0 = vld1q_f32(x + i), x1 = vld1q_f32(x + i + 4), u, v;
        ldw8(rp[0], f16, i, &u, &v);
        a0 = vfmaq_f32(a0, u, x0), b0 = vfmaq_f32(b0, v, x1);
        ldw8(rp[1], f16, i, &u, &v);
        a1 = vfmaq_f32(a1, u, x0), b1 = vfmaq_f32(b1, v, x1);
        ldw8(rp[2], f16, i, &u, &v);
        a2 = vfmaq_f32(a2, u, x0), b2 = vfmaq_f32(b2, v, x1);
        ldw8(rp[3], f16, i, &u, &v);
        a3 = vfmaq_f32(a3, u, x0), b3 = vfmaq_f32(b3, v, x1);
    }
    for (; i + 4 <= k; i += 4) {
        float32x4_t x0 = vld1q_f32(x + i);
        a0 = vfmaq_f32(a0, ldw4(rp[0], f16, i), x0);
        a1 = vfmaq_f32(a1, ldw4(rp[1], f16, i), x0);
        a2 = vfmaq_f32(a2, ldw4(rp[2], f16, i), x0);
        a3 = vfmaq_f32(a3, ldw4(rp[3], f16, i), x0);
    }
    float s[4] = {vaddvq_f32(vaddq_f32(a0, b0)), vaddvq_f32(vaddq_f32(a1, b1)), vaddvq_f32(vaddq_f32(a2, b2)),
                  vaddvq_f32(vaddq_f32(a3, b3))};
    for (int r = 0; r < R; r++) {
        for (int64_t e = i; e < k; e++) s[r] += wel(rp[r], f16, e) * x[e];
        y[r] = s[r];
    }
}

/* GEMM: y[j * N + r] = row (n0 + r) . x[j] for 4 rows x 4 tokens (tokens past T repeat the last) */
static NINLINE void fgemm44(const er_weight *w, int64_t n0, int R, const float *x, int T, float *y, const int f16) {
    const int64_t k = w->k;
    const char *rp[4];
    frows(w, n0, R, rp);
    const float *xp[4];
    for (int j = 0; j < 4; j++) xp[j] = x + (j < T ? j : T - 1) * k;
    float32x4_t acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int j = 0; j < 4; j++) acc[r][j] = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 4 <= k; i += 4) {
        float32x4_t wv[4], xv[4];
        for (int r = 0; r < 4; r++) wv[r] = ldw4(rp[r], f16, i);
        for (int j = 0; j < 4; j++) xv[j] = vld1q_f32(xp[j] + i);
        for (int r = 0; r < 4; r++)
            for (int j = 0; j < 4; j++) acc[r][j] = vfmaq_f32(acc[r][j], wv[r], xv[j]);
    }
    float s[4][4];
    for (int r = 0; r < 4; r++) /* token sums of row r: one vector [j0 j1 j2 j3] */
        vst1q_f32(s[r], vpaddq_f32(vpaddq_f32(acc[r][0], acc[r][1]), vpaddq_f32(acc[r][2], acc[r][3])));
    for (int r = 0; r < R; r++)
        for (int j = 0; j < T; j++) {
            for (int64_t e = i; e < k; e++) s[r][j] += wel(rp[r], f16, e) * xp[j][e];
            y[(int64_t)j * w->n + r] = s[r][j];
        }
}

typedef struct {
    const er_weight *w;
    const float *x;
    float *y;
    int64_t m;
} nf_ctx;

static NINLINE void frange(const nf_ctx *c, int64_t start, int64_t end, const int f16) {
    for (int64_t n = start; n < end; n += 4) {
        int R = end - n < 4 ? (int)(end - n) : 4;
        if (c->m == 1) {
            fgemv4(c->w, n, R, c->x, c->y + n, f16);
            continue;
        }
        for (int64_t t = 0; t < c->m; t += 4) {
            int T = c->m - t < 4 ? (int)(c->m - t) : 4;
            fgemm44(c->w, n, R, c->x + t * c->w->k, T, c->y + t * c->w->n + n, f16);
        }
    }
}

static void ftask(void *vc, int64_t start, int64_t end, int tid) {
    (void)tid;
    const nf_ctx *c = (const nf_ctx *)vc;
    if (c->w->type == ER_W_F16) frange(c, start, end, 1);
    else frange(c, start, end, 0);
}

/* ---- the parallel tasks and the entry point --------------------------------------------------------- */

static _Thread_local void *nscratch[2] = {NULL, NULL};
static _Thread_local size_t nscratch_size[2] = {0, 0};

static void *get_nscratch(int which, size_t n) {
    if (n > nscratch_size[which]) {
        free(nscratch[which]);
        n = (n + 4095) & ~(size_t)4095;
        nscratch[which] = aligned_alloc(64, n);
        nscratch_size[which] = nscratch[which] ? n : 0;
    }
    return nscratch[which];
}

static void qgemv_task(void *vc, int64_t start, int64_t end, int tid) {
    (void)tid;
    const nq_ctx *c = (const nq_ctx *)vc;
    if (er_neon_dotprod()) gemv_rows_dp(c, start, end);
    else gemv_rows_nodp(c, start, end);
}

static void qgemm_task(void *vc, int64_t start, int64_t end, int tid) {
    (void)tid;
    const nq_ctx *c = (const nq_ctx *)vc;
    const int64_t kp = c->kp, nb = c->nb, N = c->w->n;
    /* 4 unpacked rows (kp int8 each), their f32 scales and 8-bit zero-point corrections */
    char *buf = get_nscratch(1, (size_t)(4 * kp) + 8 * sizeof(float) * (size_t)nb + 64);
    if (!buf) return; /* cannot happen for sane shapes; er_matmul_neon checked the first allocation */
    int8_t *wt = (int8_t *)buf;
    float *swf = (float *)(buf + 4 * kp);
    int32_t *zc = (int32_t *)(swf + 4 * nb);
    const int dp = er_neon_dotprod();
    for (int64_t n = start; n < end; n += 4) {
        int R = end - n < 4 ? (int)(end - n) : 4;
        for (int r = 0; r < 4; r++) unpack_row(c, n + (r < R ? r : R - 1), wt + r * kp, swf + r * nb, zc + r * nb);
        for (int64_t g = 0; g < c->mp / 4; g++) {
            float out[4][4];
            if (dp) gemm_tile_dp(c, wt, swf, zc, g, out);
            else gemm_tile_nodp(c, wt, swf, zc, g, out);
            for (int j = 0; j < 4 && g * 4 + j < c->m; j++)
                for (int r = 0; r < R; r++) c->y[(g * 4 + j) * N + n + r] = out[r][j];
        }
    }
}

int er_matmul_neon(const er_weight *w, const float *x, float *y, int64_t m) {
    if (!w || !x || !y || m < 1 || w->n < 1 || w->k < 1 || !w->data) return -1;
    if (w->type == ER_W_F32 || w->type == ER_W_F16) {
        nf_ctx fc = {.w = w, .x = x, .y = y, .m = m};
        er_parallel_for(w->n, 16, ftask, &fc);
        return 0;
    }
    if (w->type != ER_W_Q) return -2;
    const int bits = w->bits, bs = w->block_size;
    if (!(bits == 2 || bits == 4 || bits == 8) || bs < NSUB || (bs & (bs - 1)) || !w->scales) return -2;
    nq_ctx c = {.w = w, .x = x, .y = y, .m = m, .bits = bits};
    c.lp = __builtin_ctz((unsigned)(bs / NSUB));
    c.q8k = bits == 2 && bs % 256 == 0; /* ternary TQ2_0 x Q8_K, as matmul.c */
    c.asym = w->zero_points != NULL && w->zp_hint <= 0;
    c.zdef = w->zero_points && w->zp_hint > 0 ? w->zp_hint - 1 : 1 << (bits - 1);
    c.nb = (w->k + bs - 1) / bs;
    c.kp = c.nb * bs;
    c.nsub = c.kp / NSUB;
    c.row_bytes = c.nb * (bs * bits / 8);
    c.zp_bytes = (c.nb * bits + 7) / 8;
    const int gemm = m > 1;
    c.mp = gemm ? (m + 3) & ~(int64_t)3 : 1;
    c.qs = gemm ? c.kp + 64 : ((c.nsub + 1) & ~(int64_t)1) * NSUB; /* GEMV 2-bit: whole pairs */
    size_t qbytes = ((size_t)(c.mp * c.qs) + 63) & ~(size_t)63, nat = (size_t)(c.mp * c.nsub);
    char *buf = get_nscratch(0, qbytes + 3 * sizeof(float) * nat + 64);
    if (!buf) return -3;
    c.q = (int8_t *)buf;
    c.sx = (float *)(buf + qbytes);
    c.isum = (int32_t *)(c.sx + nat);
    c.gsum = c.isum + nat;
    if (!gemm) {
        if (bits == 2 && (c.nsub & 1)) memset(c.q + (c.nsub - 1) * NSUB, 0, 2 * NSUB);
        quant_row(x, w->k, c.nsub, c.q8k, bits == 8 ? 0 : bits, c.q, c.sx, c.isum, 1);
        if (c.q8k)
            for (int64_t g = 0; g < c.nsub / 8; g++) {
                int32_t v = 0;
                for (int i = 0; i < 8; i++) v += c.isum[8 * g + i];
                c.gsum[g] = v;
            }
        er_parallel_for(w->n, 16, qgemv_task, &c);
        return 0;
    }
    for (int64_t t = 0; t < c.mp; t++) {
        float *sx = c.sx + (t >> 2) * c.nsub * 4 + (t & 3);
        int32_t *is = c.isum + (t >> 2) * c.nsub * 4 + (t & 3);
        if (t < m) {
            quant_row(x + t * w->k, w->k, c.nsub, c.q8k, 0, c.q + t * c.qs, sx, is, 4);
        } else { /* padding tokens: zero activations, zero scales */
            memset(c.q + t * c.qs, 0, (size_t)c.kp);
            for (int64_t s = 0; s < c.nsub; s++) sx[s * 4] = 0.0f, is[s * 4] = 0;
        }
    }
    er_parallel_for(w->n, 16, qgemm_task, &c);
    return 0;
}
#endif /* __aarch64__ */
