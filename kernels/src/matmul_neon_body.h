/* The int8-dot kernels of matmul_neon.c, included twice by it: NS(name) names the variant (_dp: sdot,
 * _nodp: baseline-NEON emulation) and DOT(acc, a, b) adds the 4 sums of byte products a[4l..4l+3] *
 * b[4l..4l+3] to lane l of acc. Every function mirrors qdot_row_scalar (matmul.c) for its bit width:
 * y[n] = sum_t sw[b(t)] * sx[t] * sum_i (code_i - z_b) * q_i, the integer sums identical to the scalar's. */

/* 4-bit row: 16 code bytes per sub-block, low nibbles = even elements, high = odd (layout 4) */
static NINLINE float NS(row_q4)(const nq_ctx *c, int64_t n) {
    const er_weight *w = c->w;
    const uint8_t *row = (const uint8_t *)w->data + n * c->row_bytes;
    const uint16_t *sr = w->scales + n * c->nb;
    const uint8_t *zr = w->zero_points ? w->zero_points + n * c->zp_bytes : NULL;
    const int8_t *q = c->q;
    const float *sx = c->sx;
    const uint8x16_t m4 = vdupq_n_u8(15);
    const int8x16_t zd = vdupq_n_s8((int8_t)c->zdef);
    const int32x4_t z0 = vdupq_n_s32(0);
    const int64_t nsub = c->nsub;
    const int lp = c->lp, asym = c->asym;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;
    int64_t t = 0;
    for (; t + 2 <= nsub; t += 2) {
        uint8x16_t v0 = vld1q_u8(row + t * 16), v1 = vld1q_u8(row + t * 16 + 16);
        int8x16_t za = asym ? vdupq_n_s8((int8_t)zpoint(c, zr, t >> lp)) : zd;
        int8x16_t zb = asym ? vdupq_n_s8((int8_t)zpoint(c, zr, (t + 1) >> lp)) : zd;
        int8x16_t l0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v0, m4)), za);
        int8x16_t h0 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v0, 4)), za);
        int8x16_t l1 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v1, m4)), zb);
        int8x16_t h1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v1, 4)), zb);
        const int8_t *qt = q + t * NSUB;
        int32x4_t d0 = DOT(DOT(z0, l0, vld1q_s8(qt)), h0, vld1q_s8(qt + 16));
        int32x4_t d1 = DOT(DOT(z0, l1, vld1q_s8(qt + 32)), h1, vld1q_s8(qt + 48));
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(d0), h2f(sr[t >> lp]) * sx[t]);
        acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(d1), h2f(sr[(t + 1) >> lp]) * sx[t + 1]);
    }
    if (t < nsub) {
        uint8x16_t v0 = vld1q_u8(row + t * 16);
        int8x16_t za = asym ? vdupq_n_s8((int8_t)zpoint(c, zr, t >> lp)) : zd;
        int8x16_t l0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v0, m4)), za);
        int8x16_t h0 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v0, 4)), za);
        const int8_t *qt = q + t * NSUB;
        int32x4_t d0 = DOT(DOT(z0, l0, vld1q_s8(qt)), h0, vld1q_s8(qt + 16));
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(d0), h2f(sr[t >> lp]) * sx[t]);
    }
    return vaddvq_f32(vaddq_f32(acc0, acc1));
}

/* the 4 fields of 16 bytes of 2-bit codes (elements 4j + f of 2 sub-blocks) dotted with layout-2 q:
 * lanes [A A B B] */
static NINLINE int32x4_t NS(pair_q2)(int32x4_t d, uint8x16_t v, int8x16_t z, const int8_t *qt) {
    const uint8x16_t m2 = vdupq_n_u8(3);
    int8x16_t f0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, m2)), z);
    int8x16_t f1 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 2), m2)), z);
    int8x16_t f2 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 4), m2)), z);
    int8x16_t f3 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 6)), z);
    d = DOT(d, f0, vld1q_s8(qt));
    d = DOT(d, f1, vld1q_s8(qt + 16));
    d = DOT(d, f2, vld1q_s8(qt + 32));
    return DOT(d, f3, vld1q_s8(qt + 48));
}

/* 2-bit row (ternary): pairs of sub-blocks; Q8_K activations (q8k: one scale per 8 sub-blocks, blocks
 * >= 256) add 4 pairs in int32 before one float FMA */
static NINLINE float NS(row_q2)(const nq_ctx *c, int64_t n) {
    const er_weight *w = c->w;
    const uint8_t *row = (const uint8_t *)w->data + n * c->row_bytes;
    const uint16_t *sr = w->scales + n * c->nb;
    const uint8_t *zr = w->zero_points ? w->zero_points + n * c->zp_bytes : NULL;
    const int8_t *q = c->q;
    const float *sx = c->sx;
    const int8x16_t zd = vdupq_n_s8((int8_t)c->zdef);
    const int32x4_t z0 = vdupq_n_s32(0);
    const int64_t nsub = c->nsub;
    const int lp = c->lp, asym = c->asym;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;
    if (c->q8k) { /* nsub is a multiple of 8 */
        for (int64_t g = 0; g < nsub; g += 8) {
            int8x16_t z = asym ? vdupq_n_s8((int8_t)zpoint(c, zr, g >> lp)) : zd;
            const uint8_t *rg = row + g * 8;
            const int8_t *qg = q + g * NSUB;
            int32x4_t d0 = NS(pair_q2)(z0, vld1q_u8(rg), z, qg);
            int32x4_t d1 = NS(pair_q2)(z0, vld1q_u8(rg + 16), z, qg + 64);
            d0 = NS(pair_q2)(d0, vld1q_u8(rg + 32), z, qg + 128);
            d1 = NS(pair_q2)(d1, vld1q_u8(rg + 48), z, qg + 192);
            float s = h2f(sr[g >> lp]) * sx[g];
            if (g & 8) acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(vaddq_s32(d0, d1)), s);
            else acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(vaddq_s32(d0, d1)), s);
        }
        return vaddvq_f32(vaddq_f32(acc0, acc1));
    }
    int64_t t = 0;
    for (; t + 2 <= nsub; t += 2) {
        int8x16_t z = asym ? vcombine_s8(vdup_n_s8((int8_t)zpoint(c, zr, t >> lp)),
                                         vdup_n_s8((int8_t)zpoint(c, zr, (t + 1) >> lp)))
                           : zd;
        int32x4_t d = NS(pair_q2)(z0, vld1q_u8(row + t * 8), z, q + t * NSUB);
        float32x4_t sv = vcombine_f32(vdup_n_f32(h2f(sr[t >> lp]) * sx[t]), vdup_n_f32(h2f(sr[(t + 1) >> lp]) * sx[t + 1]));
        if (t & 2) acc1 = vfmaq_f32(acc1, vcvtq_f32_s32(d), sv);
        else acc0 = vfmaq_f32(acc0, vcvtq_f32_s32(d), sv);
    }
    if (t < nsub) { /* a lone last sub-block: its pair's second half of q is zero, and so is its scale */
        int8x16_t z = asym ? vdupq_n_s8((int8_t)zpoint(c, zr, t >> lp)) : zd;
        uint8x16_t v = vcombine_u8(vld1_u8(row + t * 8), vdup_n_u8(0));
        int32x4_t d = NS(pair_q2)(z0, v, z, q + t * NSUB);
        float32x4_t sv = vcombine_f32(vdup_n_f32(h2f(sr[t >> lp]) * sx[t]), vdup_n_f32(0.0f));
        acc0 = vfmaq_f32(acc0, vcvtq_f32_s32(d), sv);
    }
    return vaddvq_f32(vaddq_f32(acc0, acc1));
}

/* 8-bit row: codes as (code - 128); (z - 128) * isum subtracted when a zero point differs from 128 */
static NINLINE float NS(row_q8)(const nq_ctx *c, int64_t n) {
    const er_weight *w = c->w;
    const uint8_t *row = (const uint8_t *)w->data + n * c->row_bytes;
    const uint16_t *sr = w->scales + n * c->nb;
    const uint8_t *zr = w->zero_points ? w->zero_points + n * c->zp_bytes : NULL;
    const int8_t *q = c->q;
    const float *sx = c->sx;
    const int32_t *is = c->isum;
    const uint8x16_t f = vdupq_n_u8(0x80);
    const int32x4_t z0 = vdupq_n_s32(0);
    const int64_t nsub = c->nsub;
    const int lp = c->lp, corr = c->asym || c->zdef != 128;
    float32x4_t acc[2] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    for (int64_t t = 0; t < nsub; t++) {
        const uint8_t *rt = row + t * NSUB;
        int8x16_t s0 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(rt), f));
        int8x16_t s1 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(rt + 16), f));
        int32x4_t d = DOT(DOT(z0, s0, vld1q_s8(q + t * NSUB)), s1, vld1q_s8(q + t * NSUB + 16));
        if (corr) d = vsubq_s32(d, vsetq_lane_s32((zpoint(c, zr, t >> lp) - 128) * is[t], z0, 0));
        acc[t & 1] = vfmaq_n_f32(acc[t & 1], vcvtq_f32_s32(d), h2f(sr[t >> lp]) * sx[t]);
    }
    return vaddvq_f32(vaddq_f32(acc[0], acc[1]));
}

/* GEMV (m == 1): rows [start, end) */
static void NS(gemv_rows)(const nq_ctx *c, int64_t start, int64_t end) {
    float *y = c->y;
    if (c->bits == 4)
        for (int64_t n = start; n < end; n++) y[n] = NS(row_q4)(c, n);
    else if (c->bits == 2)
        for (int64_t n = start; n < end; n++) y[n] = NS(row_q2)(c, n);
    else
        for (int64_t n = start; n < end; n++) y[n] = NS(row_q8)(c, n);
}

/* GEMM tile: 4 unpacked rows wt (4, kp) x the 4 tokens of group g; out[r][j] = y of row r, token 4g + j.
 * G sub-blocks share one scale pair (Q8_K: 8, else 1) and are summed in int32 first. */
static NINLINE void NS(gemm_tile_g)(const nq_ctx *c, const int8_t *wt, const float *swf, const int32_t *zc,
                                    int64_t g, float out[4][4], const int G) {
    const int64_t kp = c->kp, qs = c->qs, nsub = c->nsub, nb = c->nb;
    const int lp = c->lp, corr = c->bits == 8 && (c->asym || c->zdef != 128);
    const int8_t *x0 = c->q + g * 4 * qs, *x1 = x0 + qs, *x2 = x1 + qs, *x3 = x2 + qs;
    const float *sx4 = c->sx + g * nsub * 4;
    const int32_t *is4 = c->isum + g * nsub * 4;
    float32x4_t f[4];
    for (int r = 0; r < 4; r++) f[r] = vdupq_n_f32(0.0f);
    for (int64_t t0 = 0; t0 < nsub; t0 += G) {
        int32x4_t a[4][4];
        for (int r = 0; r < 4; r++)
            for (int j = 0; j < 4; j++) a[r][j] = vdupq_n_s32(0);
        for (int64_t t = t0; t < t0 + G; t++) {
            const int64_t o = t * NSUB;
            int8x16_t wa[4], wb[4];
            for (int r = 0; r < 4; r++) {
                wa[r] = vld1q_s8(wt + r * kp + o);
                wb[r] = vld1q_s8(wt + r * kp + o + 16);
            }
            const int8_t *xs[4] = {x0 + o, x1 + o, x2 + o, x3 + o};
            for (int j = 0; j < 4; j++) {
                int8x16_t xa = vld1q_s8(xs[j]), xb = vld1q_s8(xs[j] + 16);
                for (int r = 0; r < 4; r++) a[r][j] = DOT(DOT(a[r][j], wa[r], xa), wb[r], xb);
            }
        }
        const int64_t b = t0 >> lp;
        const float32x4_t sxv = vld1q_f32(sx4 + t0 * 4);
        for (int r = 0; r < 4; r++) {
            int32x4_t v = vpaddq_s32(vpaddq_s32(a[r][0], a[r][1]), vpaddq_s32(a[r][2], a[r][3])); /* tokens */
            if (corr) v = vmlsq_s32(v, vld1q_s32(is4 + t0 * 4), vdupq_n_s32(zc[r * nb + b]));
            f[r] = vfmaq_f32(f[r], vcvtq_f32_s32(v), vmulq_n_f32(sxv, swf[r * nb + b]));
        }
    }
    for (int r = 0; r < 4; r++) vst1q_f32(out[r], f[r]);
}

static void NS(gemm_tile)(const nq_ctx *c, const int8_t *wt, const float *swf, const int32_t *zc, int64_t g,
                          float out[4][4]) {
    if (c->q8k) NS(gemm_tile_g)(c, wt, swf, zc, g, out, 8);
    else NS(gemm_tile_g)(c, wt, swf, zc, g, out, 1);
}
