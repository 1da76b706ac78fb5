/* NEON inner loops of the KIVI cache attention (kv_attention.c's er_kv_ops, aarch64): each mirrors the scalar
 * function of the same name in kv_attention.c; only float summation order and the exp approximation (Cephes
 * polynomial, er_exp4 in er_neon.h) differ. Codes are unpacked in registers (vzip of the nibbles / bit pairs), exactly. */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "er_internal.h"
#include "er_kv.h"
#include "er_neon.h"

#define NINLINE inline __attribute__((always_inline))

static void qk_neon(const float *q, const float *rows, int64_t n, int64_t d, float *sc) {
    int64_t j = 0;
    if (d % 4 == 0)
        for (; j + 4 <= n; j += 4) { /* 4 keys at once */
            float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
            const float *r0 = rows + j * d, *r1 = r0 + d, *r2 = r1 + d, *r3 = r2 + d;
            for (int64_t i = 0; i < d; i += 4) {
                float32x4_t qv = vld1q_f32(q + i);
                a0 = vfmaq_f32(a0, qv, vld1q_f32(r0 + i));
                a1 = vfmaq_f32(a1, qv, vld1q_f32(r1 + i));
                a2 = vfmaq_f32(a2, qv, vld1q_f32(r2 + i));
                a3 = vfmaq_f32(a3, qv, vld1q_f32(r3 + i));
            }
            float32x4_t s01 = vpaddq_f32(a0, a1), s23 = vpaddq_f32(a2, a3);
            vst1q_f32(sc + j, vpaddq_f32(s01, s23));
        }
    for (; j < n; j++) {
        float32x4_t a = vdupq_n_f32(0.0f);
        int64_t i = 0;
        for (; i + 4 <= d; i += 4) a = vfmaq_f32(a, vld1q_f32(q + i), vld1q_f32(rows + j * d + i));
        float s = vaddvq_f32(a);
        for (; i < d; i++) s += q[i] * rows[j * d + i];
        sc[j] = s;
    }
}

static void pv_neon(float *o, const float *p, const float *rows, int64_t n, int64_t d) {
    int64_t i0 = 0;
    for (; i0 + 16 <= d; i0 += 16) {
        float32x4_t a0 = vld1q_f32(o + i0), a1 = vld1q_f32(o + i0 + 4), a2 = vld1q_f32(o + i0 + 8),
                    a3 = vld1q_f32(o + i0 + 12);
        for (int64_t j = 0; j < n; j++) {
            const float *r = rows + j * d + i0;
            const float pj = p[j];
            a0 = vfmaq_n_f32(a0, vld1q_f32(r), pj);
            a1 = vfmaq_n_f32(a1, vld1q_f32(r + 4), pj);
            a2 = vfmaq_n_f32(a2, vld1q_f32(r + 8), pj);
            a3 = vfmaq_n_f32(a3, vld1q_f32(r + 12), pj);
        }
        vst1q_f32(o + i0, a0);
        vst1q_f32(o + i0 + 4, a1);
        vst1q_f32(o + i0 + 8, a2);
        vst1q_f32(o + i0 + 12, a3);
    }
    for (; i0 + 4 <= d; i0 += 4) {
        float32x4_t a = vld1q_f32(o + i0);
        for (int64_t j = 0; j < n; j++) a = vfmaq_n_f32(a, vld1q_f32(rows + j * d + i0), p[j]);
        vst1q_f32(o + i0, a);
    }
    for (; i0 < d; i0++)
        for (int64_t j = 0; j < n; j++) o[i0] += p[j] * rows[j * d + i0];
}

/* exp(x) for x <= 0 (er_exp4); exactly 0 for x = -inf (a masked score) */
static NINLINE float32x4_t kv_exp4(float32x4_t x) {
    uint32x4_t ninf = vceqq_f32(x, vdupq_n_f32(-INFINITY));
    return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(er_exp4(x)), ninf));
}

static float exp_sum_neon(float *s, int64_t n, float mx) {
    float32x4_t acc = vdupq_n_f32(0.0f), m = vdupq_n_f32(mx);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        float32x4_t e = kv_exp4(vsubq_f32(vld1q_f32(s + j), m));
        vst1q_f32(s + j, e);
        acc = vaddq_f32(acc, e);
    }
    float sum = vaddvq_f32(acc);
    for (; j < n; j++) {
        s[j] = expf(s[j] - mx);
        sum += s[j];
    }
    return sum;
}

static void scale_neon(float *o, int64_t n, float r) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(o + i, vmulq_n_f32(vld1q_f32(o + i), r));
    for (; i < n; i++) o[i] *= r;
}

static void f16_row_neon(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(src + i))));
    for (; i < n; i++) dst[i] = er_f16_to_f32(src[i]);
}

static NINLINE int code_at(const uint8_t *packed, int bits, int64_t i) {
    if (bits == 8) return packed[i];
    const int per = 8 / bits;
    return (packed[i / per] >> ((i % per) * bits)) & ((1 << bits) - 1);
}

/* codes i..i+15 (i a multiple of 16) of a packed row as 16 bytes, unpacked in registers */
static NINLINE uint8x16_t codes16_neon(const uint8_t *packed, int bits, int64_t i) {
    if (bits == 8) return vld1q_u8(packed + i);
    if (bits == 4) { /* 8 bytes: low nibble first */
        uint8x8_t b = vld1_u8(packed + i / 2);
        uint8x8x2_t z = vzip_u8(vand_u8(b, vdup_n_u8(0x0f)), vshr_n_u8(b, 4));
        return vcombine_u8(z.val[0], z.val[1]);
    }
    uint32_t w; /* 4 bytes: bits 0-1, 2-3, 4-5, 6-7 */
    memcpy(&w, packed + i / 4, 4);
    const uint8x8_t b = vreinterpret_u8_u32(vdup_n_u32(w)), m2 = vdup_n_u8(0x03);
    uint8x8x2_t z01 = vzip_u8(vand_u8(b, m2), vand_u8(vshr_n_u8(b, 2), m2));
    uint8x8x2_t z23 = vzip_u8(vand_u8(vshr_n_u8(b, 4), m2), vshr_n_u8(b, 6));
    uint16x4x2_t z = vzip_u16(vreinterpret_u16_u8(z01.val[0]), vreinterpret_u16_u8(z23.val[0]));
    return vcombine_u8(vreinterpret_u8_u16(z.val[0]), vreinterpret_u8_u16(z.val[1]));
}

static NINLINE void u8x16_f32(uint8x16_t c, float32x4_t f[4]) {
    uint16x8_t lo = vmovl_u8(vget_low_u8(c)), hi = vmovl_u8(vget_high_u8(c));
    f[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo)));
    f[1] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(lo)));
    f[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi)));
    f[3] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(hi)));
}

static void deq_keys_neon(const uint8_t *packed, int bits, int64_t pb, const float *s, const float *m, int64_t n,
                          int64_t d, float *dst) {
    for (int64_t j = 0; j < n; j++) {
        const uint8_t *row = packed + j * pb;
        float *o = dst + j * d;
        int64_t i = 0;
        for (; i + 16 <= d; i += 16) {
            float32x4_t f[4];
            u8x16_f32(codes16_neon(row, bits, i), f);
            for (int k = 0; k < 4; k++)
                vst1q_f32(o + i + 4 * k, vfmaq_f32(vld1q_f32(m + i + 4 * k), f[k], vld1q_f32(s + i + 4 * k)));
        }
        for (; i < d; i++) o[i] = (float)code_at(row, bits, i) * s[i] + m[i];
    }
}

static void deq_values_neon(const uint8_t *packed, int bits, int64_t pb, const uint16_t *vs, const uint16_t *vm,
                            int64_t vg, int64_t n, int64_t d, float *dst) {
    const int64_t nvg = d / vg, gb = vg * bits / 8;
    for (int64_t j = 0; j < n; j++)
        for (int64_t g = 0; g < nvg; g++) {
            const uint8_t *row = packed + j * pb + g * gb;
            float *o = dst + j * d + g * vg;
            const float sf = er_f16_to_f32(vs[g * n + j]), mf = er_f16_to_f32(vm[g * n + j]);
            const float32x4_t mv = vdupq_n_f32(mf);
            int64_t i = 0;
            for (; i + 16 <= vg; i += 16) {
                float32x4_t f[4];
                u8x16_f32(codes16_neon(row, bits, i), f);
                for (int k = 0; k < 4; k++) vst1q_f32(o + i + 4 * k, vfmaq_n_f32(mv, f[k], sf));
            }
            for (; i < vg; i++) o[i] = (float)code_at(row, bits, i) * sf + mf;
        }
}

/* as kv_attention.c q_prep_scalar: the same products rounded the same way (vrndnq = rintf), so the same qi */
static void q_prep_neon(const float *q, int64_t gq, int64_t d, const float *s, const float *m, int bits, int16_t *qi,
                        er_kv_qg *qg) {
    const float zc = (float)(1 << (bits - 1));
    for (int64_t g = 0; g < gq; g++) {
        const float *qh = q + g * d;
        float32x4_t mx = vdupq_n_f32(0.0f), sq = mx, sm = mx;
        int64_t i = 0;
        for (; i + 4 <= d; i += 4) {
            const float32x4_t qv = vld1q_f32(qh + i), v = vmulq_f32(qv, vld1q_f32(s + i));
            mx = vmaxq_f32(mx, vabsq_f32(v));
            sq = vaddq_f32(sq, v);
            sm = vfmaq_f32(sm, qv, vld1q_f32(m + i));
        }
        float mxs = vmaxvq_f32(mx), sqs = vaddvq_f32(sq), sms = vaddvq_f32(sm);
        for (; i < d; i++) {
            const float v = qh[i] * s[i];
            mxs = fabsf(v) > mxs ? fabsf(v) : mxs;
            sqs += v;
            sms += qh[i] * m[i];
        }
        const float inv = mxs > 0.0f ? (float)KV_QMAX / mxs : 0.0f;
        int32x4_t zs = vdupq_n_s32(0);
        int32_t zt = 0;
        for (i = 0; i + 4 <= d; i += 4) {
            const int32x4_t r = vcvtq_s32_f32(vrndnq_f32(vmulq_n_f32(vmulq_f32(vld1q_f32(qh + i), vld1q_f32(s + i)), inv)));
            zs = vaddq_s32(zs, r);
            vst1_s16(qi + g * d + i, vmovn_s32(r));
        }
        for (; i < d; i++) {
            const int v = (int)rintf(qh[i] * s[i] * inv);
            qi[g * d + i] = (int16_t)v;
            zt += v;
        }
        qg[g].d = mxs / (float)KV_QMAX;
        qg[g].off = sms + zc * sqs;
        qg[g].zsum = (1 << (bits - 1)) * (zt + vaddvq_s32(zs));
    }
}

/* sum_i qi[i] * code_i (raw codes widened to 16 bits) of one row, d a multiple of 16 */
static NINLINE int32_t dot_row_neon(const int16_t *qi, const uint8_t *row, int bits, int64_t d) {
    int32x4_t a0 = vdupq_n_s32(0), a1 = a0;
    for (int64_t i = 0; i < d; i += 16) {
        const uint8x16_t c = codes16_neon(row, bits, i);
        const int16x8_t lo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(c)));
        const int16x8_t hi = vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(c)));
        const int16x8_t q0 = vld1q_s16(qi + i), q1 = vld1q_s16(qi + i + 8);
        a0 = vmlal_s16(a0, vget_low_s16(lo), vget_low_s16(q0));
        a1 = vmlal_s16(a1, vget_high_s16(lo), vget_high_s16(q0));
        a0 = vmlal_s16(a0, vget_low_s16(hi), vget_low_s16(q1));
        a1 = vmlal_s16(a1, vget_high_s16(hi), vget_high_s16(q1));
    }
    return vaddvq_s32(vaddq_s32(a0, a1));
}

static void qk_codes_neon(const int16_t *qi, const er_kv_qg *qg, int64_t gq, const uint8_t *packed, int bits,
                          int64_t pb, int64_t n, int64_t d, float *sc, int64_t ss) {
    for (int64_t g = 0; g < gq; g++)
        for (int64_t j = 0; j < n; j++) {
            int32_t acc = 0;
            int64_t i = 0;
            if (d % 16 == 0) acc = dot_row_neon(qi + g * d, packed + j * pb, bits, d), i = d;
            for (; i < d; i++) acc += (int32_t)qi[g * d + i] * code_at(packed + j * pb, bits, i);
            sc[g * ss + j] = qg[g].d * (float)(acc - qg[g].zsum) + qg[g].off;
        }
}

#define KV_PVH 4

/* NH heads' 16 outputs at channel i0: o += sum_j w[h][j] * code_j (the codes made f32 once for the NH heads) */
static NINLINE void pv16_neon(float *o, int64_t d, const float *w, int64_t ws, int NH, const uint8_t *packed, int bits,
                              int64_t pb, int64_t n, int64_t i0) {
    float32x4_t a[KV_PVH][4];
    for (int h = 0; h < NH; h++)
        for (int k = 0; k < 4; k++) a[h][k] = vld1q_f32(o + h * d + i0 + 4 * k);
    for (int64_t j = 0; j < n; j++) {
        float32x4_t f[4];
        u8x16_f32(codes16_neon(packed + j * pb, bits, i0), f);
        for (int h = 0; h < NH; h++) {
            const float wj = w[h * ws + j];
            for (int k = 0; k < 4; k++) a[h][k] = vfmaq_n_f32(a[h][k], f[k], wj);
        }
    }
    for (int h = 0; h < NH; h++)
        for (int k = 0; k < 4; k++) vst1q_f32(o + h * d + i0 + 4 * k, a[h][k]);
}

static void pv_codes_neon(float *o, int64_t gq, const float *p, int64_t ps, const uint8_t *packed, int bits,
                          int64_t pb, const float *vs, const float *vm, int64_t vg, int64_t n, int64_t d) {
    const int64_t nvg = d / vg;
    float w[KV_PVH * 64];
    if (d % 16 || vg % 16 || n > 64) { /* as the scalar variant */
        for (int64_t g = 0; g < gq; g++)
            for (int64_t j = 0; j < n; j++) {
                const float pj = p[g * ps + j];
                if (pj == 0.0f) continue;
                for (int64_t i = 0; i < d; i++)
                    o[g * d + i] += pj * ((float)code_at(packed + j * pb, bits, i) * vs[(i / vg) * n + j] + vm[(i / vg) * n + j]);
            }
        return;
    }
    for (int64_t h0 = 0; h0 < gq; h0 += KV_PVH) {
        const int NH = gq - h0 < KV_PVH ? (int)(gq - h0) : KV_PVH;
        for (int64_t cg = 0; cg < nvg; cg++) {
            const float *vsg = vs + cg * n, *vmg = vm + cg * n;
            for (int h = 0; h < NH; h++) { /* weights p_j vs_j; the mins sum_j p_j vm_j added to the group's channels */
                const float *ph = p + (h0 + h) * ps;
                float32x4_t bacc = vdupq_n_f32(0.0f);
                int64_t j = 0;
                for (; j + 4 <= n; j += 4) {
                    const float32x4_t pv = vld1q_f32(ph + j);
                    vst1q_f32(w + h * 64 + j, vmulq_f32(pv, vld1q_f32(vsg + j)));
                    bacc = vfmaq_f32(bacc, pv, vld1q_f32(vmg + j));
                }
                float b = vaddvq_f32(bacc);
                for (; j < n; j++) {
                    w[h * 64 + j] = ph[j] * vsg[j];
                    b += ph[j] * vmg[j];
                }
                float *oh = o + (h0 + h) * d + cg * vg;
                for (int64_t i = 0; i < vg; i += 4) vst1q_f32(oh + i, vaddq_f32(vld1q_f32(oh + i), vdupq_n_f32(b)));
            }
            for (int64_t i0 = cg * vg; i0 < (cg + 1) * vg; i0 += 16) switch (NH) {
                case 1: pv16_neon(o + h0 * d, d, w, 64, 1, packed, bits, pb, n, i0); break;
                case 2: pv16_neon(o + h0 * d, d, w, 64, 2, packed, bits, pb, n, i0); break;
                case 3: pv16_neon(o + h0 * d, d, w, 64, 3, packed, bits, pb, n, i0); break;
                default: pv16_neon(o + h0 * d, d, w, 64, 4, packed, bits, pb, n, i0); break;
            }
        }
    }
}

static float vmax_neon(const float *s, int64_t n, float m) {
    float32x4_t a = vdupq_n_f32(m);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) a = vmaxq_f32(a, vld1q_f32(s + j));
    m = vmaxvq_f32(a);
    for (; j < n; j++) m = s[j] > m ? s[j] : m;
    return m;
}

const er_kv_ops er_kv_ops_neon = {qk_neon,      pv_neon,       exp_sum_neon,  scale_neon,
                                  f16_row_neon, deq_keys_neon, deq_values_neon, q_prep_neon,
                                  qk_codes_neon, pv_codes_neon, vmax_neon,     NULL,
                                  NULL};
#endif
