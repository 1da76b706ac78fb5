/* NEON variants of the decode ops (aarch64): RMSNorm, softmax, elementwise products, SiLU/GELU (+GLU),
 * and single-token / prefill GQA attention over an f32/f16 KV cache. Each mirrors the scalar function of
 * ops.c named in its comment; only float summation order and the exp approximation (Cephes expf
 * polynomial, ~1 ulp, as the AVX2 er_exp256) differ. RoPE stays scalar (its cost is the per-pair
 * pow/cos/sin in double, not the rotation). */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "edgerun_kernels.h"
#include "er_internal.h"
#include "er_neon.h"

#define NINLINE inline __attribute__((always_inline))

/* ---- rmsnorm (rmsnorm_scalar), mul, softmax (er_softmax) -------------------------------------- */

void er_rmsnorm_neon(const float *x, const float *w, float *out, int64_t rows, int64_t n, float eps) {
    for (int64_t rr = 0; rr < rows; rr++) {
        const float *xr = x + rr * n;
        float *o = out + rr * n;
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0;
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) {
            float32x4_t v0 = vld1q_f32(xr + i), v1 = vld1q_f32(xr + i + 4);
            a0 = vfmaq_f32(a0, v0, v0);
            a1 = vfmaq_f32(a1, v1, v1);
        }
        float ss = vaddvq_f32(vaddq_f32(a0, a1));
        for (; i < n; i++) ss += xr[i] * xr[i];
        const float r = 1.0f / sqrtf(ss / (float)n + eps);
        for (i = 0; i + 4 <= n; i += 4)
            vst1q_f32(o + i, vmulq_f32(vmulq_n_f32(vld1q_f32(xr + i), r), vld1q_f32(w + i)));
        for (; i < n; i++) o[i] = xr[i] * r * w[i];
    }
}

void er_mul_neon(const float *a, const float *b, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(out + i, vmulq_f32(vld1q_f32(a + i), vld1q_f32(b + i)));
    for (; i < n; i++) out[i] = a[i] * b[i];
}

/* v[t] = exp(v[t] - mx) for t < n; returns the sum */
static float exp_sum(float *v, int64_t n, float mx) {
    const float32x4_t m = vdupq_n_f32(mx);
    float32x4_t acc = vdupq_n_f32(0.0f);
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
        float32x4_t e = er_exp4(vsubq_f32(vld1q_f32(v + t), m));
        vst1q_f32(v + t, e);
        acc = vaddq_f32(acc, e);
    }
    float sum = vaddvq_f32(acc);
    for (; t < n; t++) {
        v[t] = expf(v[t] - mx);
        sum += v[t];
    }
    return sum;
}

static void scale_inplace(float *o, int64_t n, float r) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(o + i, vmulq_n_f32(vld1q_f32(o + i), r));
    for (; i < n; i++) o[i] *= r;
}

static float max_n(const float *v, int64_t n) {
    float32x4_t m = vdupq_n_f32(-INFINITY);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) m = vmaxq_f32(m, vld1q_f32(v + i));
    float mx = vmaxvq_f32(m);
    for (; i < n; i++) mx = v[i] > mx ? v[i] : mx;
    return mx;
}

void er_softmax_neon(float *x, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; r++) {
        float *v = x + r * n;
        float mx = max_n(v, n);
        scale_inplace(v, n, 1.0f / exp_sum(v, n, mx));
    }
}

/* ---- SiLU / GELU (silu1 / gelu1), optionally times u ----------------------------------------------- */

/* sigmoid(z) with e = exp(-|z|): 1/(1+e) for z >= 0, e/(1+e) below (exact for every z, no overflow) */
static NINLINE float32x4_t sigmoid4(float32x4_t z) {
    const float32x4_t one = vdupq_n_f32(1.0f);
    float32x4_t e = er_exp4(vnegq_f32(vabsq_f32(z)));
    uint32x4_t neg = vreinterpretq_u32_s32(vshrq_n_s32(vreinterpretq_s32_f32(z), 31)); /* sign bit */
    return vdivq_f32(vbslq_f32(neg, e, one), vaddq_f32(one, e));
}

static inline float silu1(float x) { return x / (1.0f + expf(-x)); }
static inline float gelu1(float x) {
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

void er_silu_mul_neon(const float *g, const float *u, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t x = vld1q_f32(g + i);
        float32x4_t y = vmulq_f32(x, sigmoid4(x));
        if (u) y = vmulq_f32(y, vld1q_f32(u + i));
        vst1q_f32(out + i, y);
    }
    for (; i < n; i++) out[i] = u ? silu1(g[i]) * u[i] : silu1(g[i]);
}

/* gelu_tanh(x) = 0.5 x (1 + tanh(v)) = x * sigmoid(2v), v = sqrt(2/pi) (x + 0.044715 x^3) */
void er_gelu_mul_neon(const float *g, const float *u, float *out, int64_t n) {
    const float c2 = 2.0f * 0.7978845608028654f;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t x = vld1q_f32(g + i);
        float32x4_t x3 = vmulq_f32(vmulq_f32(x, x), x);
        float32x4_t z = vmulq_n_f32(vfmaq_n_f32(x, x3, 0.044715f), c2);
        float32x4_t y = vmulq_f32(x, sigmoid4(z));
        if (u) y = vmulq_f32(y, vld1q_f32(u + i));
        vst1q_f32(out + i, y);
    }
    for (; i < n; i++) out[i] = u ? gelu1(g[i]) * u[i] : gelu1(g[i]);
}

/* ---- attention (ops.c attend_one / attend_group) ----------------------------------------------------- */

static NINLINE float32x4_t kv4(const void *p, int f16, int64_t i) {
    if (f16) return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)p + i)));
    return vld1q_f32((const float *)p + i);
}

static NINLINE float kv1(const void *p, int f16, int64_t i) {
    return f16 ? er_f16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static float kv_dot(const float *q, const void *k, int f16, int64_t d) { /* kv_dot_scalar */
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0;
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) {
        a0 = vfmaq_f32(a0, vld1q_f32(q + i), kv4(k, f16, i));
        a1 = vfmaq_f32(a1, vld1q_f32(q + i + 4), kv4(k, f16, i + 4));
    }
    for (; i + 4 <= d; i += 4) a0 = vfmaq_f32(a0, vld1q_f32(q + i), kv4(k, f16, i));
    float s = vaddvq_f32(vaddq_f32(a0, a1));
    for (; i < d; i++) s += q[i] * kv1(k, f16, i);
    return s;
}

/* sc[t] = q . k[t] for t < n, 4 keys at a time (their 4 sums reduced into one vector) */
static void qk(const float *q, const char *kb, int64_t n, int64_t D, int f16, float *sc) {
    const int64_t es = f16 ? 2 : 4;
    int64_t t = 0;
    if (D % 4 == 0) {
        for (; t + 4 <= n; t += 4) {
            const char *k0 = kb + t * D * es, *k1 = k0 + D * es, *k2 = k1 + D * es, *k3 = k2 + D * es;
            float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t i = 0; i < D; i += 4) {
                float32x4_t qv = vld1q_f32(q + i);
                a0 = vfmaq_f32(a0, qv, kv4(k0, f16, i));
                a1 = vfmaq_f32(a1, qv, kv4(k1, f16, i));
                a2 = vfmaq_f32(a2, qv, kv4(k2, f16, i));
                a3 = vfmaq_f32(a3, qv, kv4(k3, f16, i));
            }
            vst1q_f32(sc + t, vpaddq_f32(vpaddq_f32(a0, a1), vpaddq_f32(a2, a3)));
        }
    }
    for (; t < n; t++) sc[t] = kv_dot(q, kb + t * D * es, f16, D);
}

/* o (D) (+)= sum_t p[t] * v[t] over n rows (acc: add to o); 32 outputs at a time held in registers */
static void pv(float *o, const float *p, const char *vb, int64_t n, int64_t D, int f16, int acc) {
    const int64_t es = f16 ? 2 : 4;
    int64_t i0 = 0;
    for (; i0 + 32 <= D; i0 += 32) {
        float32x4_t a[8];
        for (int j = 0; j < 8; j++) a[j] = acc ? vld1q_f32(o + i0 + 4 * j) : vdupq_n_f32(0.0f);
        for (int64_t t = 0; t < n; t++) {
            const char *row = vb + t * D * es;
            const float pt = p[t];
            for (int j = 0; j < 8; j++) a[j] = vfmaq_n_f32(a[j], kv4(row, f16, i0 + 4 * j), pt);
        }
        for (int j = 0; j < 8; j++) vst1q_f32(o + i0 + 4 * j, a[j]);
    }
    for (; i0 + 4 <= D; i0 += 4) {
        float32x4_t a = acc ? vld1q_f32(o + i0) : vdupq_n_f32(0.0f);
        for (int64_t t = 0; t < n; t++) a = vfmaq_n_f32(a, kv4(vb + t * D * es, f16, i0), p[t]);
        vst1q_f32(o + i0, a);
    }
    for (; i0 < D; i0++) {
        float a = acc ? o[i0] : 0.0f;
        for (int64_t t = 0; t < n; t++) a += p[t] * kv1(vb + t * D * es, f16, i0);
        o[i0] = a;
    }
}

/* scale, softcap and exp of one head's scores in place; returns 1 / their sum (ops.c softmax_scores) */
static float softmax_scores(float *sc, int64_t n, float scale, float softcap) {
    float mx;
    if (softcap > 0.0f) {
        mx = -INFINITY;
        for (int64_t t = 0; t < n; t++) {
            float s = softcap * tanhf(sc[t] * scale / softcap);
            sc[t] = s;
            mx = s > mx ? s : mx;
        }
    } else {
        scale_inplace(sc, n, scale);
        mx = max_n(sc, n);
    }
    return 1.0f / exp_sum(sc, n, mx);
}

#define ATT_KB 64 /* keys per block: 64 rows of K or V stay in L1 while every head of the group uses them */

/* G query heads sharing one kv head: q (G, D) and o (G, D) contiguous, sc (G, n) scratch */
static void attend_group(const float *q, int64_t G, const char *kb, const char *vb, int64_t n, int64_t D, int f16,
                         float scale, float softcap, float *sc, float *o) {
    const int64_t es = f16 ? 2 : 4;
    for (int64_t t0 = 0; t0 < n; t0 += ATT_KB) {
        int64_t nb = n - t0 < ATT_KB ? n - t0 : ATT_KB;
        for (int64_t g = 0; g < G; g++) qk(q + g * D, kb + t0 * D * es, nb, D, f16, sc + g * n + t0);
    }
    float inv[64];
    for (int64_t g = 0; g < G; g++) {
        float r = softmax_scores(sc + g * n, n, scale, softcap);
        if (G <= 64) inv[g] = r;
        else scale_inplace(sc + g * n, n, r);
    }
    for (int64_t t0 = 0; t0 < n; t0 += ATT_KB) {
        int64_t nb = n - t0 < ATT_KB ? n - t0 : ATT_KB;
        for (int64_t g = 0; g < G; g++) pv(o + g * D, sc + g * n + t0, vb + t0 * D * es, nb, D, f16, t0 > 0);
    }
    if (G <= 64) /* normalize once at the end: o = (sum_t e_t v_t) / sum_t e_t */
        for (int64_t g = 0; g < G; g++) scale_inplace(o + g * D, D, inv[g]);
}

typedef struct {
    const float *q;
    const char *k, *v;
    float *out, *scores;
    int64_t n_heads, group, head_dim, n_ctx, kv_stride, T, p0, window, ctx_max;
    int f16;
    float scale, softcap;
} nattn_ctx;

static void attn_task(void *vc, int64_t start, int64_t end, int tid) {
    (void)tid;
    const nattn_ctx *c = (const nattn_ctx *)vc;
    const int64_t D = c->head_dim, es = c->f16 ? 2 : 4, G = c->group;
    for (int64_t kvh = start; kvh < end; kvh++) {
        const char *kb = c->k + kvh * c->kv_stride * D * es, *vb = c->v + kvh * c->kv_stride * D * es;
        attend_group(c->q + kvh * G * D, G, kb, vb, c->n_ctx, D, c->f16, c->scale, c->softcap,
                     c->scores + kvh * G * c->n_ctx, c->out + kvh * G * D);
    }
}

int er_attention_neon(const float *q, const void *k, const void *v, float *out, int64_t n_heads, int64_t n_kv_heads,
                      int64_t head_dim, int64_t n_ctx, int64_t kv_stride, int kv_f16, float scale, float softcap) {
    if (n_heads < 1 || n_kv_heads < 1 || n_heads % n_kv_heads || n_ctx < 1 || kv_stride < n_ctx) return -1;
    float *scores = (float *)malloc(sizeof(float) * (size_t)(n_heads * n_ctx));
    if (!scores) return -3;
    nattn_ctx c = {.q = q, .k = (const char *)k, .v = (const char *)v, .out = out, .scores = scores,
                   .n_heads = n_heads, .group = n_heads / n_kv_heads, .head_dim = head_dim, .n_ctx = n_ctx,
                   .kv_stride = kv_stride, .f16 = kv_f16 ? 1 : 0, .scale = scale, .softcap = softcap};
    er_parallel_for(n_kv_heads, n_ctx * head_dim * c.group >= 8192 ? 1 : n_kv_heads, attn_task, &c);
    free(scores);
    return 0;
}

/* items (query t, kv head) interleaved short/long as ops.c pattn_task */
static void pattn_task(void *vc, int64_t start, int64_t end, int tid) {
    const nattn_ctx *c = (const nattn_ctx *)vc;
    const int64_t D = c->head_dim, es = c->f16 ? 2 : 4, H = c->n_heads, G = c->group, HKV = H / G;
    float *sc = c->scores + (int64_t)tid * G * c->ctx_max;
    for (int64_t i = start; i < end; i++) {
        const int64_t j = i / HKV, kvh = i % HKV;
        const int64_t t = (j & 1) ? c->T - 1 - (j >> 1) : (j >> 1);
        const int64_t p = c->p0 + t, first = c->window > 0 && p + 1 > c->window ? p + 1 - c->window : 0;
        const char *kb = c->k + (kvh * c->kv_stride + first) * D * es;
        const char *vb = c->v + (kvh * c->kv_stride + first) * D * es;
        attend_group(c->q + (t * H + kvh * G) * D, G, kb, vb, p + 1 - first, D, c->f16, c->scale, c->softcap, sc,
                     c->out + (t * H + kvh * G) * D);
    }
}

int er_attention_prefill_neon(const float *q, const void *k, const void *v, float *out, int64_t n_heads,
                              int64_t n_kv_heads, int64_t head_dim, int64_t T, int64_t p0, int64_t kv_stride,
                              int kv_f16, float scale, float softcap, int64_t window) {
    if (n_heads < 1 || n_kv_heads < 1 || n_heads % n_kv_heads || T < 1 || p0 < 0 || kv_stride < p0 + T ||
        head_dim < 1)
        return -1;
    const int nt = er_get_num_threads();
    const int64_t ctx_max = p0 + T;
    float *scores = (float *)malloc(sizeof(float) * (size_t)(nt * (n_heads / n_kv_heads) * ctx_max));
    if (!scores) return -3;
    nattn_ctx c = {.q = q, .k = (const char *)k, .v = (const char *)v, .out = out, .scores = scores,
                   .n_heads = n_heads, .group = n_heads / n_kv_heads, .head_dim = head_dim, .T = T, .p0 = p0,
                   .kv_stride = kv_stride, .window = window, .ctx_max = ctx_max, .f16 = kv_f16 ? 1 : 0,
                   .scale = scale, .softcap = softcap};
    er_parallel_for(n_kv_heads * T, 2 * n_kv_heads, pattn_task, &c);
    free(scores);
    return 0;
}
#endif /* __aarch64__ */
