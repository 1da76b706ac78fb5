/* Decode ops on float32: RMSNorm, NEOX RoPE, softmax, SiLU, GELU (tanh), GLU products, and
 * single-token GQA attention over an f32/f16 KV cache. Scalar everywhere; AVX2 where the op
 * streams memory (rmsnorm, mul, attention dot/axpy) and for SiLU/GELU(-mul) (er_exp256; GELU as
 * x sigmoid(2v), as NEON). References: kernels/reference.py. */
#include <math.h>
#include <stdlib.h>

#include "edgerun_kernels.h"
#include "er_internal.h"
#include "er_kv.h"
#include "er_neon.h"

#if ER_X86
ER_AVX2 static void rmsnorm_avx2(const float *x, const float *w, float *out, int64_t n, float eps) {
    __m256 a = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        a = _mm256_fmadd_ps(v, v, a);
    }
    float ss = er_hsum8(a);
    for (; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    __m256 rv = _mm256_set1_ps(r);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), rv), _mm256_loadu_ps(w + i)));
    for (; i < n; i++) out[i] = x[i] * r * w[i];
}

ER_AVX2 static void mul_avx2(const float *a, const float *b, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    for (; i < n; i++) out[i] = a[i] * b[i];
}

ER_AVX2 static inline __m256 kv_load8(const void *p, int f16, int64_t i) {
    if (f16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
    return _mm256_loadu_ps((const float *)p + i);
}

ER_AVX2 static float kv_dot_avx2(const float *q, const void *k, int f16, int64_t d) {
    __m256 a = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), kv_load8(k, f16, i), a);
    float s = er_hsum8(a);
    for (; i < d; i++) s += q[i] * (f16 ? er_f16_to_f32(((const uint16_t *)k)[i]) : ((const float *)k)[i]);
    return s;
}

ER_AVX2 static void kv_axpy_avx2(float *o, float p, const void *v, int f16, int64_t d) {
    __m256 pv = _mm256_set1_ps(p);
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) _mm256_storeu_ps(o + i, _mm256_fmadd_ps(pv, kv_load8(v, f16, i), _mm256_loadu_ps(o + i)));
    for (; i < d; i++) o[i] += p * (f16 ? er_f16_to_f32(((const uint16_t *)v)[i]) : ((const float *)v)[i]);
}

ER_AVX2 static void scale_avx2(float *o, int64_t n, float r) {
    const __m256 rv = _mm256_set1_ps(r);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_loadu_ps(o + i), rv));
    for (; i < n; i++) o[i] *= r;
}

/* sc[t] *= scale for the first n - n % 8 scores; *mx = their max; returns how many were done */
ER_AVX2 static int64_t scale_max_avx2(float *sc, int64_t n, float scale, float *mx) {
    __m256 s = _mm256_set1_ps(scale), m = _mm256_set1_ps(-INFINITY);
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(sc + t), s);
        _mm256_storeu_ps(sc + t, v);
        m = _mm256_max_ps(m, v);
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    *mx = _mm_cvtss_f32(h);
    return t;
}

/* sc[t] = q . k[t] for t < n, 8 keys at a time (8 dot accumulators reduced together) */
ER_AVX2 static void qk_avx2(const float *q, const char *kb, int64_t n, int64_t D, int f16, float *sc) {
    const int64_t es = f16 ? 2 : 4;
    int64_t t = 0;
    if (D % 8 == 0) {
        for (; t + 8 <= n; t += 8) {
            __m256 a[8];
            for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
            for (int64_t i = 0; i < D; i += 8) {
                __m256 qv = _mm256_loadu_ps(q + i);
                for (int j = 0; j < 8; j++) a[j] = _mm256_fmadd_ps(qv, kv_load8(kb + (t + j) * D * es, f16, i), a[j]);
            }
            __m256 u01 = _mm256_add_ps(_mm256_unpacklo_ps(a[0], a[1]), _mm256_unpackhi_ps(a[0], a[1]));
            __m256 u23 = _mm256_add_ps(_mm256_unpacklo_ps(a[2], a[3]), _mm256_unpackhi_ps(a[2], a[3]));
            __m256 u45 = _mm256_add_ps(_mm256_unpacklo_ps(a[4], a[5]), _mm256_unpackhi_ps(a[4], a[5]));
            __m256 u67 = _mm256_add_ps(_mm256_unpacklo_ps(a[6], a[7]), _mm256_unpackhi_ps(a[6], a[7]));
            __m256 w0 = _mm256_add_ps(_mm256_shuffle_ps(u01, u23, 0x44), _mm256_shuffle_ps(u01, u23, 0xee));
            __m256 w1 = _mm256_add_ps(_mm256_shuffle_ps(u45, u67, 0x44), _mm256_shuffle_ps(u45, u67, 0xee));
            _mm256_storeu_ps(sc + t, _mm256_add_ps(_mm256_permute2f128_ps(w0, w1, 0x20),
                                                   _mm256_permute2f128_ps(w0, w1, 0x31)));
        }
    }
    for (; t < n; t++) sc[t] = kv_dot_avx2(q, kb + t * D * es, f16, D);
}

/* o (D) (+)= sum_t p[t] * v[t] over n rows (acc: add to o); 64 outputs at a time held in registers */
ER_AVX2 static void pv_avx2(float *o, const float *p, const char *vb, int64_t n, int64_t D, int f16, int acc) {
    const int64_t es = f16 ? 2 : 4;
    int64_t i0 = 0;
    for (; i0 + 64 <= D; i0 += 64) {
        __m256 a[8];
        for (int j = 0; j < 8; j++) a[j] = acc ? _mm256_loadu_ps(o + i0 + 8 * j) : _mm256_setzero_ps();
        for (int64_t t = 0; t < n; t++) {
            const char *row = vb + t * D * es;
            __m256 pt = _mm256_set1_ps(p[t]);
            for (int j = 0; j < 8; j++) a[j] = _mm256_fmadd_ps(pt, kv_load8(row, f16, i0 + 8 * j), a[j]);
        }
        for (int j = 0; j < 8; j++) _mm256_storeu_ps(o + i0 + 8 * j, a[j]);
    }
    if (i0 < D) {
        if (!acc)
            for (int64_t i = i0; i < D; i++) o[i] = 0.0f;
        for (int64_t t = 0; t < n; t++) {
            const char *row = vb + t * D * es + i0 * es;
            kv_axpy_avx2(o + i0, p[t], row, f16, D - i0);
        }
    }
}
#endif

static void rmsnorm_scalar(const float *x, const float *w, float *out, int64_t n, float eps) {
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * r * w[i];
}

void er_rmsnorm(const float *x, const float *w, float *out, int64_t rows, int64_t n, float eps) {
#if defined(__aarch64__) /* ops_neon.c */
    if (er_get_isa() == ER_ISA_NEON) { er_rmsnorm_neon(x, w, out, rows, n, eps); return; }
#endif
    for (int64_t r = 0; r < rows; r++) {
#if ER_X86
        if (er_get_isa() == ER_ISA_AVX2) {
            rmsnorm_avx2(x + r * n, w, out + r * n, n, eps);
            continue;
        }
#endif
        rmsnorm_scalar(x + r * n, w, out + r * n, n, eps);
    }
}

void er_rope_neox(float *x, int64_t n_heads, int64_t head_dim, int64_t pos, float theta, float freq_scale) {
    const int64_t half = head_dim / 2;
    for (int64_t i = 0; i < half; i++) {
        double inv = pow((double)theta, -2.0 * (double)i / (double)head_dim);
        double ang = (double)pos * (double)freq_scale * inv;
        float c = (float)cos(ang), s = (float)sin(ang);
        for (int64_t h = 0; h < n_heads; h++) {
            float *xh = x + h * head_dim;
            float a = xh[i], b = xh[i + half];
            xh[i] = a * c - b * s;
            xh[i + half] = a * s + b * c;
        }
    }
}

#if ER_X86
/* the same products and sums as the scalar loop (no FMA): the floats of numpy's apply_rope */
ER_AVX2 static void rope_rows_avx2(float *x, int64_t rows, int64_t n_heads, int64_t half, const float *cs,
                                   const float *sn) {
    for (int64_t t = 0; t < rows; t++) {
        const float *c = cs + t * half, *s = sn + t * half;
        for (int64_t h = 0; h < n_heads; h++) {
            float *a = x + (t * n_heads + h) * 2 * half, *b = a + half;
            int64_t i = 0;
            for (; i + 8 <= half; i += 8) {
                const __m256 av = _mm256_loadu_ps(a + i), bv = _mm256_loadu_ps(b + i);
                const __m256 cv = _mm256_loadu_ps(c + i), sv = _mm256_loadu_ps(s + i);
                _mm256_storeu_ps(a + i, _mm256_sub_ps(_mm256_mul_ps(av, cv), _mm256_mul_ps(bv, sv)));
                _mm256_storeu_ps(b + i, _mm256_add_ps(_mm256_mul_ps(bv, cv), _mm256_mul_ps(av, sv)));
            }
            for (; i < half; i++) {
                const float ai = a[i], bi = b[i];
                a[i] = ai * c[i] - bi * s[i];
                b[i] = bi * c[i] + ai * s[i];
            }
        }
    }
}
#endif

void er_rope_rows(float *x, int64_t rows, int64_t n_heads, int64_t head_dim, const float *cos_t, const float *sin_t) {
    const int64_t half = head_dim / 2;
#if ER_X86
    if (er_get_isa() == ER_ISA_AVX2) {
        rope_rows_avx2(x, rows, n_heads, half, cos_t, sin_t);
        return;
    }
#endif
    for (int64_t t = 0; t < rows; t++) {
        const float *c = cos_t + t * half, *s = sin_t + t * half;
        for (int64_t h = 0; h < n_heads; h++) {
            float *a = x + (t * n_heads + h) * head_dim, *b = a + half;
            for (int64_t i = 0; i < half; i++) {
                const float ai = a[i], bi = b[i];
                a[i] = ai * c[i] - bi * s[i];
                b[i] = bi * c[i] + ai * s[i];
            }
        }
    }
}

void er_softmax(float *x, int64_t rows, int64_t n) {
#if defined(__aarch64__) /* ops_neon.c */
    if (er_get_isa() == ER_ISA_NEON) { er_softmax_neon(x, rows, n); return; }
#endif
    for (int64_t r = 0; r < rows; r++) {
        float *v = x + r * n;
        float mx = -INFINITY;
        for (int64_t i = 0; i < n; i++) mx = v[i] > mx ? v[i] : mx;
        float s = 0.0f;
        for (int64_t i = 0; i < n; i++) {
            v[i] = expf(v[i] - mx);
            s += v[i];
        }
        float inv = 1.0f / s;
        for (int64_t i = 0; i < n; i++) v[i] *= inv;
    }
}

static inline float silu1(float x) { return x / (1.0f + expf(-x)); }
static inline float gelu1(float x) {
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

#if ER_X86
/* silu(g) * u (u = NULL: silu(g)) with e = exp(-|g|): sigmoid = 1/(1+e) for g >= 0, e/(1+e) below */
ER_AVX2 static void silu_mul_avx2(const float *g, const float *u, float *out, int64_t n) {
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 e = er_exp256(_mm256_or_ps(x, sign)); /* exp(-|x|) */
        __m256 r = _mm256_div_ps(_mm256_blendv_ps(one, e, x), _mm256_add_ps(one, e));
        __m256 y = _mm256_mul_ps(x, r);
        if (u) y = _mm256_mul_ps(y, _mm256_loadu_ps(u + i));
        _mm256_storeu_ps(out + i, y);
    }
    for (; i < n; i++) out[i] = u ? silu1(g[i]) * u[i] : silu1(g[i]);
}

/* gelu_tanh(g) * u (u = NULL: gelu_tanh(g)) as x * sigmoid(2v), v = sqrt(2/pi) (x + 0.044715 x^3) (as NEON) */
ER_AVX2 static void gelu_mul_avx2(const float *g, const float *u, float *out, int64_t n) {
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    const __m256 c2 = _mm256_set1_ps(2.0f * 0.7978845608028654f), c3 = _mm256_set1_ps(0.044715f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
        __m256 z = _mm256_mul_ps(_mm256_fmadd_ps(x3, c3, x), c2);
        __m256 e = er_exp256(_mm256_or_ps(z, sign)); /* exp(-|z|) */
        __m256 r = _mm256_div_ps(_mm256_blendv_ps(one, e, z), _mm256_add_ps(one, e));
        __m256 y = _mm256_mul_ps(x, r);
        if (u) y = _mm256_mul_ps(y, _mm256_loadu_ps(u + i));
        _mm256_storeu_ps(out + i, y);
    }
    for (; i < n; i++) out[i] = u ? gelu1(g[i]) * u[i] : gelu1(g[i]);
}
#endif

void er_silu(const float *x, float *out, int64_t n) {
#if defined(__aarch64__) /* ops_neon.c */
    if (er_get_isa() == ER_ISA_NEON) { er_silu_mul_neon(x, NULL, out, n); return; }
#endif
#if ER_X86
    if (er_get_isa() == ER_ISA_AVX2) {
        silu_mul_avx2(x, NULL, out, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) out[i] = silu1(x[i]);
}
void er_gelu_tanh(const float *x, float *out, int64_t n) {
#if defined(__aarch64__) /* ops_neon.c */
    if (er_get_isa() == ER_ISA_NEON) { er_gelu_mul_neon(x, NULL, out, n); return; }
#endif
#if ER_X86
    if (er_get_isa() == ER_ISA_AVX2) {
        gelu_mul_avx2(x, NULL, out, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) out[i] = gelu1(x[i]);
}
void er_mul(const float *a, const float *b, float *out, int64_t n) {
#if defined(__aarch64__) /* ops_neon.c */
    if (er_get_isa() == ER_ISA_NEON) { er_mul_neon(a, b, out, n); return; }
#endif
#if ER_X86
    if (er_get_isa() == ER_ISA_AVX2) {
        mul_avx2(a, b, out, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) out[i] = a[i] * b[i];
}
void er_silu_mul(const float *g, const float *u, float *out, int64_t n) {
#if defined(__aarch64__) /* ops_neon.c */
    if (er_get_isa() == ER_ISA_NEON) { er_silu_mul_neon(g, u, out, n); return; }
#endif
#if ER_X86
    if (er_get_isa() == ER_ISA_AVX2) {
        silu_mul_avx2(g, u, out, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) out[i] = silu1(g[i]) * u[i];
}
void er_gelu_mul(const float *g, const float *u, float *out, int64_t n) {
#if defined(__aarch64__) /* ops_neon.c */
    if (er_get_isa() == ER_ISA_NEON) { er_gelu_mul_neon(g, u, out, n); return; }
#endif
#if ER_X86
    if (er_get_isa() == ER_ISA_AVX2) {
        gelu_mul_avx2(g, u, out, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) out[i] = gelu1(g[i]) * u[i];
}

/* ---- attention ------------------------------------------------------------------------------ */

typedef struct {
    const float *q;
    const char *k, *v;
    float *out, *scores;
    int64_t n_heads, group, head_dim, n_ctx, kv_stride;
    int64_t sub; /* work items per kv head: its query heads split into `sub` groups of gsub (the last may be less) */
    int64_t gsub;
    int f16, isa;
    float scale, softcap;
} attn_ctx;

static float kv_dot_scalar(const float *q, const void *k, int f16, int64_t d) {
    float s = 0.0f;
    for (int64_t i = 0; i < d; i++) s += q[i] * (f16 ? er_f16_to_f32(((const uint16_t *)k)[i]) : ((const float *)k)[i]);
    return s;
}

static void kv_axpy_scalar(float *o, float p, const void *v, int f16, int64_t d) {
    for (int64_t i = 0; i < d; i++) o[i] += p * (f16 ? er_f16_to_f32(((const uint16_t *)v)[i]) : ((const float *)v)[i]);
}

/* one query vector qh over n keys/values kb, vb (rows of D, element size es): o = softmax(scale q.k) v */
static void attend_one(const float *qh, const char *kb, const char *vb, int64_t n, int64_t D, int f16, int isa,
                       float scale, float softcap, float *sc, float *o) {
    const int64_t es = f16 ? 2 : 4;
    float mx = -INFINITY;
#if ER_X86
    if (isa == ER_ISA_AVX2) qk_avx2(qh, kb, n, D, f16, sc);
#endif
    for (int64_t t = 0; t < n; t++) {
        float s;
#if ER_X86
        if (isa == ER_ISA_AVX2) s = sc[t];
        else
#endif
            s = kv_dot_scalar(qh, kb + t * D * es, f16, D);
        s *= scale;
        if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
        sc[t] = s;
        mx = s > mx ? s : mx;
    }
#if ER_X86
    if (isa == ER_ISA_AVX2) {
        float inv = 1.0f / er_exp_sum_avx2(sc, n, mx);
        for (int64_t t = 0; t < n; t++) sc[t] *= inv;
        pv_avx2(o, sc, vb, n, D, f16, 0);
        return;
    }
#endif
    float sum = 0.0f;
    for (int64_t t = 0; t < n; t++) {
        sc[t] = expf(sc[t] - mx);
        sum += sc[t];
    }
    float inv = 1.0f / sum;
    for (int64_t i = 0; i < D; i++) o[i] = 0.0f;
    for (int64_t t = 0; t < n; t++) kv_axpy_scalar(o, sc[t] * inv, vb + t * D * es, f16, D);
    (void)isa;
}

/* scale, softcap and exp of one head's scores in place; returns 1 / their sum (softmax = exp * that) */
static float softmax_scores(float *sc, int64_t n, float scale, float softcap, int isa) {
    float mx = -INFINITY;
    int64_t t0 = 0;
#if ER_X86
    if (isa == ER_ISA_AVX2 && softcap <= 0.0f) t0 = scale_max_avx2(sc, n, scale, &mx);
#endif
    for (int64_t t = t0; t < n; t++) {
        float s = sc[t] * scale;
        if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
        sc[t] = s;
        mx = s > mx ? s : mx;
    }
    float sum = 0.0f;
#if ER_X86
    if (isa == ER_ISA_AVX2) sum = er_exp_sum_avx2(sc, n, mx);
    else
#endif
        for (int64_t t = 0; t < n; t++) {
            sc[t] = expf(sc[t] - mx);
            sum += sc[t];
        }
    (void)isa;
    return 1.0f / sum;
}

#define ATT_KB 64 /* keys per block: 64 rows of K or V stay in L1 while every head of the group uses them */

/* G query heads sharing one kv head (GQA): q (G, D) and o (G, D) contiguous, sc (G, n) scratch.
 * Keys and values are read in blocks that serve all G heads from L1. */
static void attend_group(const float *q, int64_t G, const char *kb, const char *vb, int64_t n, int64_t D, int f16,
                         int isa, float scale, float softcap, float *sc, float *o) {
#if ER_X86
    if (isa == ER_ISA_AVX2) {
        const int64_t es = f16 ? 2 : 4;
        for (int64_t t0 = 0; t0 < n; t0 += ATT_KB) {
            int64_t nb = n - t0 < ATT_KB ? n - t0 : ATT_KB;
            for (int64_t g = 0; g < G; g++) qk_avx2(q + g * D, kb + t0 * D * es, nb, D, f16, sc + g * n + t0);
        }
        float inv[64];
        for (int64_t g = 0; g < G; g++) {
            float r = softmax_scores(sc + g * n, n, scale, softcap, isa);
            if (G <= 64) inv[g] = r;
            else for (int64_t t = 0; t < n; t++) sc[g * n + t] *= r;
        }
        for (int64_t t0 = 0; t0 < n; t0 += ATT_KB) {
            int64_t nb = n - t0 < ATT_KB ? n - t0 : ATT_KB;
            for (int64_t g = 0; g < G; g++) pv_avx2(o + g * D, sc + g * n + t0, vb + t0 * D * es, nb, D, f16, t0 > 0);
        }
        if (G <= 64) /* normalize once at the end: o = (sum_t e_t v_t) / sum_t e_t */
            for (int64_t g = 0; g < G; g++) scale_avx2(o + g * D, D, inv[g]);
        return;
    }
#endif
    for (int64_t g = 0; g < G; g++) attend_one(q + g * D, kb, vb, n, D, f16, isa, scale, softcap, sc, o + g * D);
}

static void attn_task(void *vc, int64_t start, int64_t end, int tid) {
    (void)tid;
    attn_ctx *c = (attn_ctx *)vc;
    const int64_t D = c->head_dim, es = c->f16 ? 2 : 4, G = c->group;
    for (int64_t it = start; it < end; it++) { /* items: (kv head, group of its query heads) */
        const int64_t kvh = it / c->sub, g0 = it % c->sub * c->gsub, ng = G - g0 < c->gsub ? G - g0 : c->gsub;
        const char *kb = c->k + kvh * c->kv_stride * D * es, *vb = c->v + kvh * c->kv_stride * D * es;
        const int64_t h0 = kvh * G + g0; /* first query head of the item */
        attend_group(c->q + h0 * D, ng, kb, vb, c->n_ctx, D, c->f16, c->isa, c->scale, c->softcap,
                     c->scores + h0 * c->n_ctx, c->out + h0 * D);
    }
}

int er_attention(const float *q, const void *k, const void *v, float *out, int64_t n_heads, int64_t n_kv_heads,
                 int64_t head_dim, int64_t n_ctx, int64_t kv_stride, int kv_f16, float scale, float softcap) {
#if defined(__aarch64__) /* ops_neon.c */
    if (er_get_isa() == ER_ISA_NEON) return er_attention_neon(q, k, v, out, n_heads, n_kv_heads, head_dim, n_ctx, kv_stride, kv_f16, scale, softcap);
#endif
    if (n_heads < 1 || n_kv_heads < 1 || n_heads % n_kv_heads || n_ctx < 1 || kv_stride < n_ctx) return -1;
    float *scores = (float *)malloc(sizeof(float) * (size_t)(n_heads * n_ctx));
    if (!scores) return -3;
    attn_ctx c = {.q = q, .k = (const char *)k, .v = (const char *)v, .out = out, .scores = scores,
                  .n_heads = n_heads, .group = n_heads / n_kv_heads, .head_dim = head_dim, .n_ctx = n_ctx,
                  .kv_stride = kv_stride, .f16 = kv_f16 ? 1 : 0, .isa = er_get_isa(), .scale = scale,
                  .softcap = softcap};
    /* one kv head (with its query heads) per item unless the kv heads cannot be shared evenly by the threads
     * (Gemma-3: one kv head): then one query head per item (each head's floats are the same either way); all
     * in one chunk when the context is short (then threading costs more than it saves) */
    const int nt = er_get_num_threads();
    c.sub = nt > 1 && n_kv_heads % nt ? c.group : 1;
    c.gsub = (c.group + c.sub - 1) / c.sub;
    const int64_t items = n_kv_heads * c.sub;
    er_parallel_for(items, n_ctx * head_dim * c.group >= 8192 ? 1 : items, attn_task, &c);
    free(scores);
    return 0;
}

/* ---- prefill attention ------------------------------------------------------------------------ */

typedef struct {
    const float *q;
    const char *k, *v;
    float *out, *scores;
    int64_t n_heads, group, head_dim, T, p0, kv_stride, window, ctx_max;
    int f16, isa;
    float scale, softcap;
} pattn_ctx;

/* work item i -> (query t, head h); queries interleaved short/long (t = 0, T-1, 1, T-2, ...) so that
 * contiguous chunks of items cost about the same under the causal mask */
static void pattn_task(void *vc, int64_t start, int64_t end, int tid) {
    pattn_ctx *c = (pattn_ctx *)vc;
    const int64_t D = c->head_dim, es = c->f16 ? 2 : 4, H = c->n_heads, G = c->group, HKV = H / G;
    float *sc = c->scores + (int64_t)tid * G * c->ctx_max;
    for (int64_t i = start; i < end; i++) { /* items: (query, kv head) with the G query heads of the group */
        const int64_t j = i / HKV, kvh = i % HKV;
        const int64_t t = (j & 1) ? c->T - 1 - (j >> 1) : (j >> 1);
        const int64_t p = c->p0 + t, first = c->window > 0 && p + 1 > c->window ? p + 1 - c->window : 0;
        const char *kb = c->k + (kvh * c->kv_stride + first) * D * es;
        const char *vb = c->v + (kvh * c->kv_stride + first) * D * es;
        attend_group(c->q + (t * H + kvh * G) * D, G, kb, vb, p + 1 - first, D, c->f16, c->isa, c->scale, c->softcap,
                     sc, c->out + (t * H + kvh * G) * D);
    }
}

int er_attention_prefill(const float *q, const void *k, const void *v, float *out, int64_t n_heads,
                         int64_t n_kv_heads, int64_t head_dim, int64_t T, int64_t p0, int64_t kv_stride, int kv_f16,
                         float scale, float softcap, int64_t window) {
#if defined(__aarch64__) /* ops_neon.c */
    if (er_get_isa() == ER_ISA_NEON) return er_attention_prefill_neon(q, k, v, out, n_heads, n_kv_heads, head_dim, T, p0, kv_stride, kv_f16,
                                         scale, softcap, window);
#endif
    if (n_heads < 1 || n_kv_heads < 1 || n_heads % n_kv_heads || T < 1 || p0 < 0 || kv_stride < p0 + T ||
        head_dim < 1)
        return -1;
#if ER_X86
    if (er_get_isa() == ER_ISA_AVX2) { /* queries in blocks sharing each key / value tile (kv_attention.c) */
        const int r = er_kv_prefill_plain(ER_ISA_AVX2, q, k, v, out, n_heads, n_kv_heads, head_dim, T, p0, kv_stride,
                                          kv_f16, scale, softcap, window);
        if (r <= 0) return r;
    }
#endif
    const int nt = er_get_num_threads();
    const int64_t ctx_max = p0 + T;
    float *scores = (float *)malloc(sizeof(float) * (size_t)(nt * (n_heads / n_kv_heads) * ctx_max));
    if (!scores) return -3;
    pattn_ctx c = {.q = q, .k = (const char *)k, .v = (const char *)v, .out = out, .scores = scores,
                   .n_heads = n_heads, .group = n_heads / n_kv_heads, .head_dim = head_dim, .T = T, .p0 = p0,
                   .kv_stride = kv_stride, .window = window, .ctx_max = ctx_max, .f16 = kv_f16 ? 1 : 0,
                   .isa = er_get_isa(), .scale = scale, .softcap = softcap};
    /* items in pairs of queries (short + long) times kv heads: grain keeps the pairs whole */
    er_parallel_for(n_kv_heads * T, 2 * n_kv_heads, pattn_task, &c);
    free(scores);
    return 0;
}
