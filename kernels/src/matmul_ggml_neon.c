/* NEON (aarch64) variants of the GGUF block-format matmuls of matmul_ggml.c (layouts and math: ggml_blocks.h).
 *
 * Activations: quantized as gg_quant_row_scalar does, bit for bit (vcvtnq rounds half to even as lrintf; the
 * f16 round trip of a Q8_0 d is FCVT's round-to-nearest-even, as er_f32_to_f16), natural element order.
 * Weights are unpacked in registers to the canonical forms (unsigned codes, natural order, 16 per vector) and
 * dotted with int8 activations 16 at a time: sdot (ARMv8.2 dotprod) or its baseline-NEON emulation (smull +
 * pairwise widening adds), both adding the same 16 products, so the integer sums equal the scalar ones.
 *   K-quants: per super-block, the 16 sub-block dots reduce with pairwise adds to 4 vectors [j j+1 j+2 j+3],
 *     are scaled by the int32 sub-block scales (mla) and summed; the offsets sum_j mn_j bsum_j with smull/smlal;
 *     then one float step per super-block, as the scalar path.
 *   32-element blocks: 4 blocks' dots reduce to one vector [b b+1 b+2 b+3], met by one FMA with the 4 products
 *     fw * dy (fm * sy likewise).
 * GEMV walks each row once; GEMM unpacks a super-block (or 4 blocks) of one row once and dots it with every
 * token of the tile. The dot kernels are compiled twice from matmul_ggml_neon_body.h (with / without sdot,
 * chosen per call by er_neon_dotprod(), as matmul_neon.c).
 */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "edgerun_kernels.h"
#include "er_internal.h"
#include "er_neon.h"
#include "ggml_blocks.h"

#define GN_INLINE inline __attribute__((always_inline))
#define GN_TT 32 /* tokens per GEMM tile */

/* ---- activation quantization (bit-identical to gg_quant_row_scalar) ------------------------------------ */

static GN_INLINE float gn_amax(const float *v, int n) { /* n a multiple of 16 */
    float32x4_t m0 = vdupq_n_f32(0.0f), m1 = m0, m2 = m0, m3 = m0;
    for (int i = 0; i < n; i += 16) {
        m0 = vmaxq_f32(m0, vabsq_f32(vld1q_f32(v + i)));
        m1 = vmaxq_f32(m1, vabsq_f32(vld1q_f32(v + i + 4)));
        m2 = vmaxq_f32(m2, vabsq_f32(vld1q_f32(v + i + 8)));
        m3 = vmaxq_f32(m3, vabsq_f32(vld1q_f32(v + i + 12)));
    }
    return vmaxvq_f32(vmaxq_f32(vmaxq_f32(m0, m1), vmaxq_f32(m2, m3)));
}

/* 16 values -> 16 int8 = clamp(round-half-even(v * id), -127, 127) stored at q; returns their sum */
static GN_INLINE int32_t gn_q16(const float *v, float id, int8_t *q) {
    const int32x4_t hi = vdupq_n_s32(127), lo = vdupq_n_s32(-127);
    int32x4_t r0 = vmaxq_s32(vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(v), id)), hi), lo);
    int32x4_t r1 = vmaxq_s32(vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(v + 4), id)), hi), lo);
    int32x4_t r2 = vmaxq_s32(vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(v + 8), id)), hi), lo);
    int32x4_t r3 = vmaxq_s32(vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(v + 12), id)), hi), lo);
    int16x8_t a = vcombine_s16(vmovn_s32(r0), vmovn_s32(r1)), b = vcombine_s16(vmovn_s32(r2), vmovn_s32(r3));
    vst1q_s8(q, vcombine_s8(vmovn_s16(a), vmovn_s16(b)));
    return vaddvq_s32(vaddq_s32(vaddq_s32(r0, r1), vaddq_s32(r2, r3)));
}

void er_gg_quant_row_neon(const float *x, int64_t k, int kq, int64_t ngrp, int8_t *q, float *d, float *s,
                          int16_t *bs) {
    float pad[256];
    for (int64_t g = 0; g < ngrp; g++) {
        const float *v = x + g * 256;
        if ((g + 1) * 256 > k) {
            for (int i = 0; i < 256; i++) pad[i] = g * 256 + i < k ? x[g * 256 + i] : 0.0f;
            v = pad;
        }
        int8_t *qg = q + g * 256;
        if (kq) {
            const float amax = gn_amax(v, 256);
            float iscale = 0.0f;
            d[g] = 0.0f;
            if (amax != 0.0f) {
                int i = 0;
                while (i < 255 && fabsf(v[i]) != amax) i++; /* the first value of largest magnitude */
                iscale = -127.0f / v[i];
                d[g] = 1.0f / iscale;
            }
            for (int j = 0; j < 16; j++) bs[g * 16 + j] = (int16_t)gn_q16(v + 16 * j, iscale, qg + 16 * j);
        } else {
            for (int b = 0; b < 8; b++) {
                const float *vb = v + 32 * b;
                const float amax = gn_amax(vb, 32);
                const float db = vgetq_lane_f32(vcvt_f32_f16(vcvt_f16_f32(vdupq_n_f32(amax / 127.0f))), 0);
                const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
                const int32_t sum = gn_q16(vb, id, qg + 32 * b) + gn_q16(vb + 16, id, qg + 32 * b + 16);
                d[g * 8 + b] = db;
                s[g * 8 + b] = db * (float)sum;
            }
        }
    }
}

/* ---- weight unpacking ----------------------------------------------------------------------------------- */

static GN_INLINE float gn_h2f(uint16_t h) {
    __fp16 v;
    memcpy(&v, &h, 2);
    return (float)v;
}

/* K-quant super-block: codes of elements 16j..16j+15 in q[j]; int32 sub-block scales sc[i] = [4i .. 4i+3];
 * offsets mn[0] (sub-blocks 0-7), mn[1] (8-15) as int16 */
typedef struct {
    int8x16_t q[16];
    int32x4_t sc[4];
    int16x8_t mn[2];
    float dA, dB;
} gn_kform;

/* (v >> from) & 1 moved to bit `to`, per byte (other bits cleared) */
static GN_INLINE uint8x16_t gn_bit(uint8x16_t v, int from, int to) {
    return vandq_u8(vshlq_u8(v, vdupq_n_s8((int8_t)(to - from))), vdupq_n_u8((uint8_t)(1 << to)));
}

/* 16 int8 per-16 scales -> 4 int32x4 */
static GN_INLINE void gn_scales16(int8x16_t s, gn_kform *u) {
    const int16x8_t l = vmovl_s8(vget_low_s8(s)), h = vmovl_high_s8(s);
    u->sc[0] = vmovl_s16(vget_low_s16(l));
    u->sc[1] = vmovl_high_s16(l);
    u->sc[2] = vmovl_s16(vget_low_s16(h));
    u->sc[3] = vmovl_high_s16(h);
}

static GN_INLINE void gn_unpack_k(const int type, const uint8_t *b, gn_kform *u) {
    const uint8x16_t m4 = vdupq_n_u8(15), m2 = vdupq_n_u8(3);
    if (type == ER_W_Q4_K || type == ER_W_Q5_K) {
        uint32_t w[4];
        gg_k4_scales(b + 4, &w[0], &w[1], &w[2], &w[3]);
        const uint8x16_t sm = vreinterpretq_u8_u32(vld1q_u32(w)); /* sc 0-7, m 0-7 */
        gn_scales16(vreinterpretq_s8_u8(vzip1q_u8(sm, sm)), u);  /* each per-32 scale twice */
        const uint8x16_t mm = vzip2q_u8(sm, sm);
        u->mn[0] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(mm)));
        u->mn[1] = vreinterpretq_s16_u16(vmovl_high_u8(mm));
        u->dA = gn_h2f(gg_u16(b));
        u->dB = gn_h2f(gg_u16(b + 2));
        const int q5 = type == ER_W_Q5_K;
        const uint8_t *qs = b + (q5 ? 48 : 16);
        const uint8x16_t h0 = q5 ? vld1q_u8(b + 16) : vdupq_n_u8(0), h1 = q5 ? vld1q_u8(b + 32) : vdupq_n_u8(0);
        for (int i = 0; i < 4; i++) { /* bytes 32i..32i+31: low nibbles = chunk 2i, high = chunk 2i + 1 */
            const uint8x16_t v0 = vld1q_u8(qs + 32 * i), v1 = vld1q_u8(qs + 32 * i + 16);
            uint8x16_t c0 = vandq_u8(v0, m4), c1 = vandq_u8(v1, m4), c2 = vshrq_n_u8(v0, 4), c3 = vshrq_n_u8(v1, 4);
            if (q5) {
                c0 = vorrq_u8(c0, gn_bit(h0, 2 * i, 4));
                c1 = vorrq_u8(c1, gn_bit(h1, 2 * i, 4));
                c2 = vorrq_u8(c2, gn_bit(h0, 2 * i + 1, 4));
                c3 = vorrq_u8(c3, gn_bit(h1, 2 * i + 1, 4));
            }
            u->q[4 * i] = vreinterpretq_s8_u8(c0);
            u->q[4 * i + 1] = vreinterpretq_s8_u8(c1);
            u->q[4 * i + 2] = vreinterpretq_s8_u8(c2);
            u->q[4 * i + 3] = vreinterpretq_s8_u8(c3);
        }
    } else if (type == ER_W_Q6_K) {
        const int8x16_t sc = vld1q_s8((const int8_t *)b + 192);
        gn_scales16(sc, u);
        u->mn[0] = vshlq_n_s16(vmovl_s8(vget_low_s8(sc)), 5);
        u->mn[1] = vshlq_n_s16(vmovl_high_s8(sc), 5);
        u->dA = u->dB = gn_h2f(gg_u16(b + 208));
        const uint8x16_t m30 = vdupq_n_u8(0x30);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
            for (int i = 0; i < 2; i++) { /* elements 128h + 32f + 16i + (0..15) */
                const uint8x16_t a = vld1q_u8(ql + 16 * i), c = vld1q_u8(ql + 32 + 16 * i), hb = vld1q_u8(qh + 16 * i);
                u->q[8 * h + i] = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(a, m4), vandq_u8(vshlq_n_u8(hb, 4), m30)));
                u->q[8 * h + 2 + i] = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(c, m4), vandq_u8(vshlq_n_u8(hb, 2), m30)));
                u->q[8 * h + 4 + i] = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(a, 4), vandq_u8(hb, m30)));
                u->q[8 * h + 6 + i] = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(c, 4), vandq_u8(vshrq_n_u8(hb, 2), m30)));
            }
        }
    } else if (type == ER_W_Q3_K) {
        uint32_t s[4];
        gg_k3_scales(b + 96, s);
        const int8x16_t sc = vreinterpretq_s8_u32(vld1q_u32(s));
        gn_scales16(sc, u);
        u->mn[0] = vshlq_n_s16(vmovl_s8(vget_low_s8(sc)), 2);
        u->mn[1] = vshlq_n_s16(vmovl_high_s8(sc), 2);
        u->dA = u->dB = gn_h2f(gg_u16(b + 108));
        const uint8x16_t hm[2] = {vld1q_u8(b), vld1q_u8(b + 16)};
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < 2; i++) {
                const uint8x16_t v = vld1q_u8(b + 32 + 32 * h + 16 * i);
                u->q[8 * h + i] = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(v, m2), gn_bit(hm[i], 4 * h, 2)));
                u->q[8 * h + 2 + i] =
                    vreinterpretq_s8_u8(vorrq_u8(vandq_u8(vshrq_n_u8(v, 2), m2), gn_bit(hm[i], 4 * h + 1, 2)));
                u->q[8 * h + 4 + i] =
                    vreinterpretq_s8_u8(vorrq_u8(vandq_u8(vshrq_n_u8(v, 4), m2), gn_bit(hm[i], 4 * h + 2, 2)));
                u->q[8 * h + 6 + i] = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(v, 6), gn_bit(hm[i], 4 * h + 3, 2)));
            }
    } else { /* ER_W_Q2_K */
        const uint8x16_t s = vld1q_u8(b);
        gn_scales16(vreinterpretq_s8_u8(vandq_u8(s, m4)), u);
        const uint8x16_t mm = vshrq_n_u8(s, 4);
        u->mn[0] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(mm)));
        u->mn[1] = vreinterpretq_s16_u16(vmovl_high_u8(mm));
        u->dA = gn_h2f(gg_u16(b + 80));
        u->dB = gn_h2f(gg_u16(b + 82));
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < 2; i++) {
                const uint8x16_t v = vld1q_u8(b + 16 + 32 * h + 16 * i);
                u->q[8 * h + i] = vreinterpretq_s8_u8(vandq_u8(v, m2));
                u->q[8 * h + 2 + i] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 2), m2));
                u->q[8 * h + 4 + i] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 4), m2));
                u->q[8 * h + 6 + i] = vreinterpretq_s8_u8(vshrq_n_u8(v, 6));
            }
    }
}

static GN_INLINE int gn_same_d(int type) { return type == ER_W_Q3_K || type == ER_W_Q6_K; }

/* 32-element blocks: 4 blocks (nb <= 4 valid) -> codes q[2i] (elements 0-15 of block i), q[2i+1] (16-31),
 * factors fw, fm as vectors [b b+1 b+2 b+3] (0 for missing blocks) */
typedef struct {
    int8x16_t q[8];
    float32x4_t fw, fm;
} gn_b4;

static GN_INLINE uint8x16_t gn_hbits16(uint32_t h16) { /* bit e (e < 16) of h16 -> byte e = 0x10 */
    static const uint8_t bm[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t v = vcombine_u8(vdup_n_u8((uint8_t)h16), vdup_n_u8((uint8_t)(h16 >> 8)));
    return vandq_u8(vtstq_u8(v, vld1q_u8(bm)), vdupq_n_u8(0x10));
}

static GN_INLINE void gn_unpack_b4(const int type, const uint8_t *p, const int ts, const int nb, gn_b4 *u) {
    const int oq = type == ER_W_Q4_1 ? 4 : type == ER_W_Q5_0 ? 6 : 8, oh = type == ER_W_Q5_0 ? 2 : 4;
    const uint8x16_t m4 = vdupq_n_u8(15);
    uint64_t dw = 0, dm = 0;
    for (int i = 0; i < 4; i++) {
        if (i >= nb) {
            u->q[2 * i] = u->q[2 * i + 1] = vdupq_n_s8(0);
            continue;
        }
        const uint8_t *b = p + i * ts;
        const uint8x16_t v = vld1q_u8(b + oq);
        uint8x16_t lo = vandq_u8(v, m4), hi = vshrq_n_u8(v, 4);
        if (type != ER_W_Q4_1) {
            const uint32_t qh = gg_u32(b + oh);
            lo = vorrq_u8(lo, gn_hbits16(qh & 0xffffu));
            hi = vorrq_u8(hi, gn_hbits16(qh >> 16));
        }
        u->q[2 * i] = vreinterpretq_s8_u8(lo);
        u->q[2 * i + 1] = vreinterpretq_s8_u8(hi);
        dw |= (uint64_t)gg_u16(b) << 16 * i;
        if (type != ER_W_Q5_0) dm |= (uint64_t)gg_u16(b + 2) << 16 * i;
    }
    u->fw = vcvt_f32_f16(vreinterpret_f16_u64(vcreate_u64(dw)));
    u->fm = type == ER_W_Q5_0 ? vmulq_n_f32(u->fw, -16.0f) : vcvt_f32_f16(vreinterpret_f16_u64(vcreate_u64(dm)));
}

/* ---- the dot kernels, with and without sdot -------------------------------------------------------------- */

/* the sum of a's and b's 16 byte products spread over the 4 lanes of acc (no lane split promised) */
static GN_INLINE int32x4_t gn_dots_emul(int32x4_t acc, int8x16_t a, int8x16_t b) {
    int16x8_t p = vmull_s8(vget_low_s8(a), vget_low_s8(b)); /* |products| <= 63 * 127: two fit int16 */
    return vpadalq_s16(acc, vmlal_high_s8(p, a, b));
}

#define NS(name) name##_nodp
#define DOTS(acc, a, b) gn_dots_emul(acc, a, b)
#include "matmul_ggml_neon_body.h"
#undef NS
#undef DOTS

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod") /* as arm_neon.h declares vdotq_s32 */
#define NS(name) name##_dp
#define DOTS(acc, a, b) vdotq_s32(acc, a, b)
#include "matmul_ggml_neon_body.h"
#undef NS
#undef DOTS
#pragma GCC pop_options

void er_gg_rows_neon(const gg_job *j, int64_t n0, int64_t n1) {
    if (er_neon_dotprod()) gn_rows_dp(j, n0, n1);
    else gn_rows_nodp(j, n0, n1);
}
#endif /* __aarch64__ */
