/* The dot kernels of matmul_ggml_neon.c, included twice by it: NS(name) names the variant (_dp: sdot, _nodp:
 * baseline NEON) and DOTS(acc, a, b) adds the 16 byte products of a and b to acc's lanes (in any split; every
 * caller adds the 4 lanes up). Integer sums equal gg_row_scalar's (matmul_ggml.c); the float steps are the
 * scalar's for K-quants, and per 4 blocks for the 32-element formats. */

/* K-quants: the dots of sub-blocks 4i..4i+3 -> [4i 4i+1 4i+2 4i+3] */
static GN_INLINE int32x4_t NS(gn_kdot4)(const gn_kform *u, const int8_t *a, const int i) {
    const int32x4_t z = vdupq_n_s32(0);
    const int32x4_t p0 = DOTS(z, u->q[4 * i], vld1q_s8(a + 64 * i));
    const int32x4_t p1 = DOTS(z, u->q[4 * i + 1], vld1q_s8(a + 64 * i + 16));
    const int32x4_t p2 = DOTS(z, u->q[4 * i + 2], vld1q_s8(a + 64 * i + 32));
    const int32x4_t p3 = DOTS(z, u->q[4 * i + 3], vld1q_s8(a + 64 * i + 48));
    return vpaddq_s32(vpaddq_s32(p0, p1), vpaddq_s32(p2, p3));
}

/* one super-block and one token: dy * (dA * sum_j sc_j dot_j - dB * sum_j mn_j bsum_j) */
static GN_INLINE float NS(gn_ksb)(const int type, const gn_kform *u, const int8_t *a, const int16_t *bs, float dy) {
    int32x4_t s = vmulq_s32(NS(gn_kdot4)(u, a, 0), u->sc[0]);
    s = vmlaq_s32(s, NS(gn_kdot4)(u, a, 1), u->sc[1]);
    s = vmlaq_s32(s, NS(gn_kdot4)(u, a, 2), u->sc[2]);
    s = vmlaq_s32(s, NS(gn_kdot4)(u, a, 3), u->sc[3]);
    const int16x8_t b0 = vld1q_s16(bs), b1 = vld1q_s16(bs + 8);
    int32x4_t o = vmull_s16(vget_low_s16(u->mn[0]), vget_low_s16(b0));
    o = vmlal_high_s16(o, u->mn[0], b0);
    o = vmlal_s16(o, vget_low_s16(u->mn[1]), vget_low_s16(b1));
    o = vmlal_high_s16(o, u->mn[1], b1);
    if (gn_same_d(type)) return dy * u->dA * (float)vaddvq_s32(vsubq_s32(s, o));
    return dy * (u->dA * (float)vaddvq_s32(s) - u->dB * (float)vaddvq_s32(o));
}

static GN_INLINE void NS(gn_k_rows)(const int type, const gg_job *j, int64_t n0, int64_t n1) {
    const er_weight *w = j->w;
    const gg_act *a = j->a;
    const int ts = gg_type_size(type);
    const int64_t nsb = w->k / 256, N = w->n;
    if (a->m == 1) {
        for (int64_t n = n0; n < n1; n++) {
            const uint8_t *row = (const uint8_t *)w->data + n * nsb * ts;
            float acc = 0.0f;
            for (int64_t g = 0; g < nsb; g++) {
                gn_kform u;
                gn_unpack_k(type, row + g * ts, &u);
                acc += NS(gn_ksb)(type, &u, a->q + g * 256, a->bs + g * 16, a->d[g]);
            }
            j->y[n] = acc;
        }
        return;
    }
    float acc[GN_TT];
    for (int64_t t0 = 0; t0 < a->m; t0 += GN_TT) {
        const int T = (int)(a->m - t0 < GN_TT ? a->m - t0 : GN_TT);
        for (int64_t n = n0; n < n1; n++) {
            const uint8_t *row = (const uint8_t *)w->data + n * nsb * ts;
            for (int t = 0; t < T; t++) acc[t] = 0.0f;
            for (int64_t g = 0; g < nsb; g++) {
                gn_kform u;
                gn_unpack_k(type, row + g * ts, &u);
                for (int t = 0; t < T; t++) {
                    const int64_t tt = t0 + t;
                    acc[t] += NS(gn_ksb)(type, &u, a->q + tt * a->qstride + g * 256, a->bs + (tt * a->ngrp + g) * 16,
                                         a->d[tt * a->ngrp + g]);
                }
            }
            for (int t = 0; t < T; t++) j->y[(t0 + t) * N + n] = acc[t];
        }
    }
}

/* 32-element blocks: the dots of 4 blocks with natural-order activations a (128 bytes) -> [b b+1 b+2 b+3] */
static GN_INLINE int32x4_t NS(gn_bdots)(const gn_b4 *u, const int8_t *a) {
    const int32x4_t z = vdupq_n_s32(0);
    int32x4_t p[4];
    for (int i = 0; i < 4; i++)
        p[i] = DOTS(DOTS(z, u->q[2 * i], vld1q_s8(a + 32 * i)), u->q[2 * i + 1], vld1q_s8(a + 32 * i + 16));
    return vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]));
}

static GN_INLINE void NS(gn_b_rows)(const int type, const gg_job *j, int64_t n0, int64_t n1) {
    const er_weight *w = j->w;
    const gg_act *a = j->a;
    const int ts = gg_type_size(type);
    const int64_t nblk = w->k / 32, N = w->n, na = a->ngrp * 8, n4 = nblk / 4 * 4;
    const int tail = (int)(nblk - n4);
    if (a->m == 1) {
        for (int64_t n = n0; n < n1; n++) {
            const uint8_t *row = (const uint8_t *)w->data + n * nblk * ts;
            float32x4_t acc = vdupq_n_f32(0.0f), accm = acc;
            gn_b4 u;
            for (int64_t b = 0; b < n4; b += 4) {
                gn_unpack_b4(type, row + b * ts, ts, 4, &u);
                acc = vfmaq_f32(acc, vcvtq_f32_s32(NS(gn_bdots)(&u, a->q + 32 * b)), vmulq_f32(u.fw, vld1q_f32(a->d + b)));
                accm = vfmaq_f32(accm, u.fm, vld1q_f32(a->s + b));
            }
            if (tail) {
                gn_unpack_b4(type, row + n4 * ts, ts, tail, &u);
                acc = vfmaq_f32(acc, vcvtq_f32_s32(NS(gn_bdots)(&u, a->q + 32 * n4)), vmulq_f32(u.fw, vld1q_f32(a->d + n4)));
                accm = vfmaq_f32(accm, u.fm, vld1q_f32(a->s + n4));
            }
            j->y[n] = vaddvq_f32(acc) + vaddvq_f32(accm);
        }
        return;
    }
    float32x4_t acc[GN_TT], accm[GN_TT];
    for (int64_t t0 = 0; t0 < a->m; t0 += GN_TT) {
        const int T = (int)(a->m - t0 < GN_TT ? a->m - t0 : GN_TT);
        for (int64_t n = n0; n < n1; n++) {
            const uint8_t *row = (const uint8_t *)w->data + n * nblk * ts;
            for (int t = 0; t < T; t++) acc[t] = accm[t] = vdupq_n_f32(0.0f);
            for (int64_t b = 0; b < nblk; b += 4) {
                gn_b4 u;
                if (b + 4 <= nblk) gn_unpack_b4(type, row + b * ts, ts, 4, &u);
                else gn_unpack_b4(type, row + b * ts, ts, tail, &u);
                for (int t = 0; t < T; t++) {
                    const int64_t tt = t0 + t;
                    acc[t] = vfmaq_f32(acc[t], vcvtq_f32_s32(NS(gn_bdots)(&u, a->q + tt * a->qstride + 32 * b)),
                                       vmulq_f32(u.fw, vld1q_f32(a->d + tt * na + b)));
                    accm[t] = vfmaq_f32(accm[t], u.fm, vld1q_f32(a->s + tt * na + b));
                }
            }
            for (int t = 0; t < T; t++) j->y[(t0 + t) * N + n] = vaddvq_f32(acc[t]) + vaddvq_f32(accm[t]);
        }
    }
}

#define GN_DEF(NAME, T)                                                                                            \
    static void NS(gn_rows_##NAME)(const gg_job *j, int64_t n0, int64_t n1) {                                      \
        if (gg_is_k(T)) NS(gn_k_rows)(T, j, n0, n1);                                                                \
        else NS(gn_b_rows)(T, j, n0, n1);                                                                           \
    }
GN_DEF(q4_1, ER_W_Q4_1)
GN_DEF(q5_0, ER_W_Q5_0)
GN_DEF(q5_1, ER_W_Q5_1)
GN_DEF(q2_k, ER_W_Q2_K)
GN_DEF(q3_k, ER_W_Q3_K)
GN_DEF(q4_k, ER_W_Q4_K)
GN_DEF(q5_k, ER_W_Q5_K)
GN_DEF(q6_k, ER_W_Q6_K)
#undef GN_DEF

static void NS(gn_rows)(const gg_job *j, int64_t n0, int64_t n1) {
    switch (j->w->type) {
    case ER_W_Q4_1: NS(gn_rows_q4_1)(j, n0, n1); break;
    case ER_W_Q5_0: NS(gn_rows_q5_0)(j, n0, n1); break;
    case ER_W_Q5_1: NS(gn_rows_q5_1)(j, n0, n1); break;
    case ER_W_Q2_K: NS(gn_rows_q2_k)(j, n0, n1); break;
    case ER_W_Q3_K: NS(gn_rows_q3_k)(j, n0, n1); break;
    case ER_W_Q4_K: NS(gn_rows_q4_k)(j, n0, n1); break;
    case ER_W_Q5_K: NS(gn_rows_q5_k)(j, n0, n1); break;
    default: NS(gn_rows_q6_k)(j, n0, n1); break;
    }
}
