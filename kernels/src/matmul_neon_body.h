/* The int8-dot kernels of matmul_neon.c, included twice by it: NS(name) names the variant (_dp: sdot,
 * _nodp: baseline-NEON emulation) and DOT(acc, a, b) adds the 4 sums of byte products a[4l..4l+3] *
 * b[4l..4l+3] to lane l of acc; DOTS(acc, a, b) adds the same total to acc's lanes in any split (cheaper
 * to emulate; for sums whose lanes are added together afterwards). Every function mirrors qdot_row_scalar (matmul.c) for its bit width:
 * y[n] = sum_t sw[b(t)] * sx[t] * sum_i (code_i - z_b) * q_i, the integer sums identical to the scalar's. */

/* the 4 fields of 16 bytes of 2-bit codes (elements 4j + f of 2 sub-blocks) dotted with layout-2 q:
 * lanes [A A B B] */
static NINLINE int32x4_t NS(pair_q2)(int32x4_t d, uint8x16_t v, int8x16_t z, const int8_t *qt, const int EXACT) {
    const uint8x16_t m2 = vdupq_n_u8(3);
    int8x16_t f0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, m2)), z);
    int8x16_t f1 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 2), m2)), z);
    int8x16_t f2 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 4), m2)), z);
    int8x16_t f3 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 6)), z);
    if (!EXACT) { /* lanes summed later */
        d = DOTS(d, f0, vld1q_s8(qt));
        d = DOTS(d, f1, vld1q_s8(qt + 16));
        d = DOTS(d, f2, vld1q_s8(qt + 32));
        return DOTS(d, f3, vld1q_s8(qt + 48));
    }
    d = DOT(d, f0, vld1q_s8(qt));
    d = DOT(d, f1, vld1q_s8(qt + 16));
    d = DOT(d, f2, vld1q_s8(qt + 32));
    return DOT(d, f3, vld1q_s8(qt + 48));
}

/* GEMV. Sub-blocks are taken 4 at a time: their raw dots (unsigned 4-/2-bit codes, 8-bit codes - 128)
 * reduce with pairwise adds to one int32x4 D = [t t+1 t+2 t+3]; D -= z' * isum (z' = z, or z - 128 for
 * 8 bits: the scalar's dot - z * isum, exact), then acc += float(D) * sw * sx with 4 scales at once. */

/* raw dot of the 4 sub-blocks t..t+3 (t % 4 == 0) of one row with their activations qv (8 x 16 bytes at
 * q + 32 t, loaded once for every row of the tile) */
static NINLINE int32x4_t NS(dot4)(const uint8_t *row, const int8x16_t *qv, int64_t t, const int BITS) {
    const int32x4_t z0 = vdupq_n_s32(0);
    int32x4_t d[4];
    if (BITS == 4) {
        const uint8x16_t m4 = vdupq_n_u8(15);
        for (int i = 0; i < 4; i++) {
            uint8x16_t v = vld1q_u8(row + (t + i) * 16);
            d[i] = DOTS(DOTS(z0, vreinterpretq_s8_u8(vandq_u8(v, m4)), qv[2 * i]),
                        vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), qv[2 * i + 1]);
        }
    } else if (BITS == 8) {
        const uint8x16_t f = vdupq_n_u8(0x80);
        for (int i = 0; i < 4; i++) {
            const uint8_t *rt = row + (t + i) * NSUB;
            d[i] = DOTS(DOTS(z0, vreinterpretq_s8_u8(veorq_u8(vld1q_u8(rt), f)), qv[2 * i]),
                        vreinterpretq_s8_u8(veorq_u8(vld1q_u8(rt + 16), f)), qv[2 * i + 1]);
        }
    } else { /* two pairs, lanes [A A B B] each */
        const uint8x16_t m2 = vdupq_n_u8(3);
        for (int p = 0; p < 2; p++) {
            uint8x16_t v = vld1q_u8(row + t * 8 + 16 * p);
            int32x4_t e = DOT(z0, vreinterpretq_s8_u8(vandq_u8(v, m2)), qv[4 * p]);
            e = DOT(e, vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 2), m2)), qv[4 * p + 1]);
            e = DOT(e, vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 4), m2)), qv[4 * p + 2]);
            d[p] = DOT(e, vreinterpretq_s8_u8(vshrq_n_u8(v, 6)), qv[4 * p + 3]);
        }
        return vpaddq_s32(d[0], d[1]);
    }
    return vpaddq_s32(vpaddq_s32(d[0], d[1]), vpaddq_s32(d[2], d[3]));
}

/* raw dot of one sub-block t (the < 4 tail sub-blocks) */
static NINLINE int32_t NS(dot1)(const uint8_t *row, const int8_t *q, int64_t t, int64_t nsub, const int BITS) {
    const int32x4_t z0 = vdupq_n_s32(0);
    if (BITS == 4) {
        uint8x16_t v = vld1q_u8(row + t * 16);
        const int8_t *qt = q + t * NSUB;
        return vaddvq_s32(DOTS(DOTS(z0, vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(15))), vld1q_s8(qt)),
                               vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), vld1q_s8(qt + 16)));
    }
    if (BITS == 8) {
        const uint8x16_t f = vdupq_n_u8(0x80);
        const uint8_t *rt = row + t * NSUB;
        const int8_t *qt = q + t * NSUB;
        return vaddvq_s32(DOTS(DOTS(z0, vreinterpretq_s8_u8(veorq_u8(vld1q_u8(rt), f)), vld1q_s8(qt)),
                               vreinterpretq_s8_u8(veorq_u8(vld1q_u8(rt + 16), f)), vld1q_s8(qt + 16)));
    }
    /* 2-bit: the pair holding t (a lone last sub-block: its pair's other half of q is zero) */
    const int64_t t0 = t & ~(int64_t)1;
    uint8x16_t v = t0 + 1 < nsub ? vld1q_u8(row + t0 * 8) : vcombine_u8(vld1_u8(row + t0 * 8), vdup_n_u8(0));
    int32x4_t d = NS(pair_q2)(z0, v, vdupq_n_s8(0), q + t0 * NSUB, 1);
    return (t & 1) ? vgetq_lane_s32(d, 2) + vgetq_lane_s32(d, 3) : vgetq_lane_s32(d, 0) + vgetq_lane_s32(d, 1);
}

/* f32 scales of the 4 sub-blocks t..t+3 (t % 4 == 0) */
static NINLINE float32x4_t NS(scale4)(const uint16_t *sr, int64_t t, int lp) {
    if (lp == 0) return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(sr + t)));
    if (lp == 1) { /* blocks b, b, b + 1, b + 1 */
        uint32_t two;
        memcpy(&two, sr + (t >> 1), 4);
        uint16x4_t v = vreinterpret_u16_u32(vdup_n_u32(two));
        return vcvt_f32_f16(vreinterpret_f16_u16(vzip1_u16(v, v)));
    }
    return vdupq_n_f32(h2f(sr[t >> lp]));
}

/* zero points of the 4 sub-blocks t..t+3 minus off */
static NINLINE int32x4_t NS(zero4)(const nq_ctx *c, const uint8_t *zr, int64_t t, int off) {
    const int lp = c->lp;
    if (lp >= 2) return vdupq_n_s32(zpoint(c, zr, t >> lp) - off);
    int32x4_t z = vdupq_n_s32(0);
    z = vsetq_lane_s32(zpoint(c, zr, t >> lp) - off, z, 0);
    z = vsetq_lane_s32(zpoint(c, zr, (t + 1) >> lp) - off, z, 1);
    z = vsetq_lane_s32(zpoint(c, zr, (t + 2) >> lp) - off, z, 2);
    return vsetq_lane_s32(zpoint(c, zr, (t + 3) >> lp) - off, z, 3);
}

/* acc + float(D - z' * isum) * sw * sx for the 4 sub-blocks t..t+3 of one row */
static NINLINE float32x4_t NS(step4)(const nq_ctx *c, float32x4_t acc, const uint8_t *row, const uint16_t *sr,
                                     const uint8_t *zr, int64_t t, const int8x16_t *qv, float32x4_t sx4,
                                     int32x4_t is4, int32x4_t zu, const int BITS, const int ZM) {
    int32x4_t d = NS(dot4)(row, qv, t, BITS);
    if (ZM == 1) d = vmlsq_s32(d, is4, zu);
    if (ZM == 2) d = vmlsq_s32(d, is4, NS(zero4)(c, zr, t, BITS == 8 ? 128 : 0));
    return vfmaq_f32(acc, vcvtq_f32_s32(d), vmulq_f32(NS(scale4)(sr, t, c->lp), sx4));
}

/* y[n0 .. n0 + R) (R = 1, 2: the second row reuses the activation loads) for 4-/8-bit and 2-bit without
 * Q8_K; ZM: 0 no zero-point term (8-bit, none stored), 1 one zero point for all blocks (c->zdef), 2 per
 * block */
static NINLINE void NS(gemv_tile)(const nq_ctx *c, int64_t n0, const int R, const int BITS, const int ZM) {
    const int64_t nsub = c->nsub, n4 = nsub & ~(int64_t)3;
    const int lp = c->lp, off = BITS == 8 ? 128 : 0;
    const float *sx = c->sx;
    const int32_t *is = c->isum;
    const uint8_t *row[2];
    const uint16_t *sr[2];
    const uint8_t *zr[2];
    row_ptrs(c, n0, R, row, sr, zr);
    const int32x4_t zu = vdupq_n_s32(c->zdef - off);
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;
    for (int64_t t = 0; t < n4; t += 4) {
        const float32x4_t sx4 = vld1q_f32(sx + t);
        const int32x4_t is4 = ZM ? vld1q_s32(is + t) : vdupq_n_s32(0);
        int8x16_t qv[8];
        for (int i = 0; i < 8; i++) qv[i] = vld1q_s8(c->q + t * NSUB + 16 * i);
        acc0 = NS(step4)(c, acc0, row[0], sr[0], zr[0], t, qv, sx4, is4, zu, BITS, ZM);
        if (R == 2) acc1 = NS(step4)(c, acc1, row[1], sr[1], zr[1], t, qv, sx4, is4, zu, BITS, ZM);
    }
    for (int r = 0; r < R; r++) {
        float s = vaddvq_f32(r ? acc1 : acc0);
        for (int64_t t = n4; t < nsub; t++) {
            int32_t d = NS(dot1)(row[r], c->q, t, nsub, BITS);
            if (ZM) d -= (zpoint(c, zr[r], t >> lp) - off) * is[t];
            s += h2f(sr[r][t >> lp]) * sx[t] * (float)d;
        }
        c->y[n0 + r] = s;
    }
}

/* 2-bit (ternary) rows with Q8_K activations (one scale per group of 8 sub-blocks, blocks >= 256), R = 1
 * or 2 rows sharing the activation loads: raw codes, then per group (dot - z * group isum) exactly in int32
 * and one float FMA */
static NINLINE void NS(gemv_q2k)(const nq_ctx *c, int64_t n0, const int R, const int ASYM) {
    const int64_t nsub = c->nsub; /* a multiple of 8 */
    const int lp = c->lp;
    const uint8_t *row[2];
    const uint16_t *sr[2];
    const uint8_t *zr[2];
    row_ptrs(c, n0, R, row, sr, zr);
    const uint8x16_t m2 = vdupq_n_u8(3);
    const int32x4_t z0 = vdupq_n_s32(0);
    float acc[2] = {0.0f, 0.0f};
    for (int64_t g = 0; g < nsub; g += 8) {
        const int8_t *qg = c->q + g * NSUB;
        int32x4_t d[2][2] = {{z0, z0}, {z0, z0}};
        for (int p = 0; p < 4; p++) { /* 4 pairs of sub-blocks: 16 code bytes, 64 activation bytes each */
            int8x16_t q0 = vld1q_s8(qg + 64 * p), q1 = vld1q_s8(qg + 64 * p + 16);
            int8x16_t q2 = vld1q_s8(qg + 64 * p + 32), q3 = vld1q_s8(qg + 64 * p + 48);
            for (int r = 0; r < R; r++) {
                uint8x16_t v = vld1q_u8(row[r] + g * 8 + 16 * p);
                int32x4_t e = d[r][p & 1];
                e = DOTS(e, vreinterpretq_s8_u8(vandq_u8(v, m2)), q0);
                e = DOTS(e, vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 2), m2)), q1);
                e = DOTS(e, vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 4), m2)), q2);
                d[r][p & 1] = DOTS(e, vreinterpretq_s8_u8(vshrq_n_u8(v, 6)), q3);
            }
        }
        const int32_t gs = c->gsum[g >> 3];
        const float sxg = c->sx[g];
        for (int r = 0; r < R; r++) {
            const int z = ASYM ? zpoint(c, zr[r], g >> lp) : c->zdef;
            const int32_t dot = vaddvq_s32(vaddq_s32(d[r][0], d[r][1])) - z * gs;
            acc[r] += h2f(sr[r][g >> lp]) * sxg * (float)dot;
        }
    }
    for (int r = 0; r < R; r++) c->y[n0 + r] = acc[r];
}

static NINLINE void NS(gemv_rows_b)(const nq_ctx *c, int64_t start, int64_t end, const int BITS, const int ZM) {
    int64_t n = start;
    for (; n + 2 <= end; n += 2) NS(gemv_tile)(c, n, 2, BITS, ZM);
    if (n < end) NS(gemv_tile)(c, n, 1, BITS, ZM);
}

/* GEMV (m == 1): rows [start, end) */
static void NS(gemv_rows)(const nq_ctx *c, int64_t start, int64_t end) {
    const int zm = c->asym ? 2 : (c->bits == 8 && c->zdef == 128) ? 0 : 1;
    if (c->bits == 2 && c->q8k) {
        int64_t n = start;
        if (c->asym) {
            for (; n + 2 <= end; n += 2) NS(gemv_q2k)(c, n, 2, 1);
            if (n < end) NS(gemv_q2k)(c, n, 1, 1);
        } else {
            for (; n + 2 <= end; n += 2) NS(gemv_q2k)(c, n, 2, 0);
            if (n < end) NS(gemv_q2k)(c, n, 1, 0);
        }
    } else if (c->bits == 4) {
        if (zm == 2) NS(gemv_rows_b)(c, start, end, 4, 2);
        else NS(gemv_rows_b)(c, start, end, 4, 1);
    } else if (c->bits == 2) {
        if (zm == 2) NS(gemv_rows_b)(c, start, end, 2, 2);
        else NS(gemv_rows_b)(c, start, end, 2, 1);
    } else {
        if (zm == 2) NS(gemv_rows_b)(c, start, end, 8, 2);
        else if (zm == 1) NS(gemv_rows_b)(c, start, end, 8, 1);
        else NS(gemv_rows_b)(c, start, end, 8, 0);
    }
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
                for (int r = 0; r < 4; r++) a[r][j] = DOTS(DOTS(a[r][j], wa[r], xa), wb[r], xb);
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
