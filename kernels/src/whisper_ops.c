/* Whisper encoder ops on float32: LayerNorm, exact-erf GELU, and non-causal attention of T queries over keys
 * held in two segments (the audio's own frames in f32, then the rest of the 30-s window from a precomputed
 * f16/f32 cache). Scalar everywhere, AVX2/FMA on x86-64 (runtime dispatch on er_get_isa()). References:
 * kernels/reference.py (layer_norm, gelu_erf, attention_seg2). */
#include <math.h>
#include <stdlib.h>

#include "edgerun_kernels.h"
#include "er_internal.h"

/* ---- LayerNorm ------------------------------------------------------------------------------ */

typedef struct {
    const float *x, *g, *b;
    float *out;
    int64_t n;
    float eps;
    int isa;
} ln_ctx;

static void ln_row_scalar(const float *x, const float *g, const float *b, float *o, int64_t n, float eps) {
    double s = 0.0, ss = 0.0;
    for (int64_t i = 0; i < n; i++) s += x[i];
    const float mu = (float)(s / (double)n);
    for (int64_t i = 0; i < n; i++) {
        float d = x[i] - mu;
        ss += (double)d * d;
    }
    const float r = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    for (int64_t i = 0; i < n; i++) o[i] = (x[i] - mu) * r * g[i] + b[i];
}

#if ER_X86
ER_AVX2 static void ln_row_avx2(const float *x, const float *g, const float *b, float *o, int64_t n, float eps) {
    __m256 a = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) a = _mm256_add_ps(a, _mm256_loadu_ps(x + i));
    float s = er_hsum8(a);
    for (; i < n; i++) s += x[i];
    const float mu = s / (float)n;
    const __m256 m = _mm256_set1_ps(mu);
    a = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), m);
        a = _mm256_fmadd_ps(d, d, a);
    }
    float ss = er_hsum8(a);
    for (; i < n; i++) ss += (x[i] - mu) * (x[i] - mu);
    const float r = 1.0f / sqrtf(ss / (float)n + eps);
    const __m256 rv = _mm256_set1_ps(r);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), m), rv);
        _mm256_storeu_ps(o + i, _mm256_fmadd_ps(d, _mm256_loadu_ps(g + i), _mm256_loadu_ps(b + i)));
    }
    for (; i < n; i++) o[i] = (x[i] - mu) * r * g[i] + b[i];
}
#endif

static void ln_task(void *vc, int64_t start, int64_t end, int tid) {
    (void)tid;
    ln_ctx *c = (ln_ctx *)vc;
    for (int64_t r = start; r < end; r++) {
#if ER_X86
        if (c->isa == ER_ISA_AVX2) {
            ln_row_avx2(c->x + r * c->n, c->g, c->b, c->out + r * c->n, c->n, c->eps);
            continue;
        }
#endif
        ln_row_scalar(c->x + r * c->n, c->g, c->b, c->out + r * c->n, c->n, c->eps);
    }
}

void er_layer_norm(const float *x, const float *g, const float *b, float *out, int64_t rows, int64_t n, float eps) {
    ln_ctx c = {.x = x, .g = g, .b = b, .out = out, .n = n, .eps = eps, .isa = er_get_isa()};
    er_parallel_for(rows, rows * n >= 65536 ? 16 : rows, ln_task, &c);
}

/* ---- GELU, exact (erf) form ------------------------------------------------------------------ */
/* erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7): erf(|x|) = 1 - t (a1 + t (a2 + ..)) exp(-x^2),
 * t = 1 / (1 + p |x|) */
#define GE_P 0.3275911f
#define GE_A1 0.254829592f
#define GE_A2 -0.284496736f
#define GE_A3 1.421413741f
#define GE_A4 -1.453152027f
#define GE_A5 1.061405429f

static inline float gelu_erf1(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

#if ER_X86
ER_AVX2 static void gelu_erf_avx2(const float *x, float *o, int64_t n) {
    const __m256 sgn = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 z = _mm256_mul_ps(v, _mm256_set1_ps(0.70710678118654752f));
        __m256 az = _mm256_andnot_ps(sgn, z);
        __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(GE_P), az, one));
        __m256 p = _mm256_set1_ps(GE_A5);
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(GE_A4));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(GE_A3));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(GE_A2));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(GE_A1));
        p = _mm256_mul_ps(p, t);
        __m256 e = er_exp256(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(az, az)));
        __m256 erf_abs = _mm256_fnmadd_ps(p, e, one);              /* erf(|z|) */
        __m256 erf_z = _mm256_or_ps(erf_abs, _mm256_and_ps(sgn, z)); /* sign of z */
        _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, erf_z)));
    }
    for (; i < n; i++) o[i] = gelu_erf1(x[i]);
}
#endif

typedef struct {
    const float *x;
    float *out;
    int isa;
} gelu_ctx;

static void gelu_task(void *vc, int64_t start, int64_t end, int tid) {
    (void)tid;
    gelu_ctx *c = (gelu_ctx *)vc;
#if ER_X86
    if (c->isa == ER_ISA_AVX2) {
        gelu_erf_avx2(c->x + start, c->out + start, end - start);
        return;
    }
#endif
    for (int64_t i = start; i < end; i++) c->out[i] = gelu_erf1(c->x[i]);
}

void er_gelu_erf(const float *x, float *out, int64_t n) {
    gelu_ctx c = {.x = x, .out = out, .isa = er_get_isa()};
    er_parallel_for(n, n >= 65536 ? 4096 : n, gelu_task, &c);
}

/* ---- attention over two key segments ----------------------------------------------------------- */

typedef struct {
    const float *q;
    int64_t q_stride;
    const float *ka, *va;
    int64_t na, a_stride;
    const char *kb, *vb;
    int64_t b0, nb, b_stride, b_step;
    float b_logw;
    int b_f16, isa;
    float *out;
    int64_t out_stride, H, D, T;
    float scale;
    float *scores; /* per thread: na + nb floats */
    float *qbuf;   /* per thread: D floats */
} seg_ctx;

static inline float ld_b(const char *base, int f16, int64_t i) {
    return f16 ? er_f16_to_f32(((const uint16_t *)base)[i]) : ((const float *)base)[i];
}

static void seg_query_scalar(const seg_ctx *c, const float *q, int64_t h, float *sc, float *o) {
    const int64_t D = c->D, S = c->na + c->nb, es = c->b_f16 ? 2 : 4;
    float mx = -INFINITY;
    for (int64_t j = 0; j < c->na; j++) {
        const float *k = c->ka + (h * c->a_stride + j) * D;
        float s = 0.0f;
        for (int64_t i = 0; i < D; i++) s += q[i] * k[i];
        sc[j] = s;
        mx = s > mx ? s : mx;
    }
    for (int64_t j = 0; j < c->nb; j++) {
        const char *k = c->kb + (h * c->b_stride + c->b0 + j * c->b_step) * D * es;
        float s = c->b_logw;
        for (int64_t i = 0; i < D; i++) s += q[i] * ld_b(k, c->b_f16, i);
        sc[c->na + j] = s;
        mx = s > mx ? s : mx;
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < S; j++) {
        sc[j] = expf(sc[j] - mx);
        sum += sc[j];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < D; i++) o[i] = 0.0f;
    for (int64_t j = 0; j < c->na; j++) {
        const float *v = c->va + (h * c->a_stride + j) * D, p = sc[j];
        for (int64_t i = 0; i < D; i++) o[i] += p * v[i];
    }
    for (int64_t j = 0; j < c->nb; j++) {
        const char *v = c->vb + (h * c->b_stride + c->b0 + j * c->b_step) * D * es;
        const float p = sc[c->na + j];
        for (int64_t i = 0; i < D; i++) o[i] += p * ld_b(v, c->b_f16, i);
    }
    for (int64_t i = 0; i < D; i++) o[i] *= inv;
}

#if ER_X86
ER_AVX2 static inline __m256 ld8(const void *p, int f16, int64_t i) {
    if (f16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
    return _mm256_loadu_ps((const float *)p + i);
}

/* 8 vectors -> one vector of their 8 horizontal sums */
ER_AVX2 static inline __m256 hsum_8x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6,
                                      __m256 a7) {
    __m256 s0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    __m256 s1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    return _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
}

/* sc[j] = q . k_j + bias for n keys (D values each, D % 8 == 0, rb bytes apart) from kbase (f32 or f16);
 * returns the max of mx and the scores */
ER_AVX2 static float qk_rows_avx2(const float *q, const char *kbase, int f16, int64_t n, int64_t D, int64_t rb,
                                  float bias, float *sc, float mx) {
    const __m256 vb = _mm256_set1_ps(bias);
    __m256 vmx = _mm256_set1_ps(mx);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const char *k = kbase + j * rb;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int64_t i = 0; i < D; i += 8) {
            __m256 qv = _mm256_loadu_ps(q + i);
            a0 = _mm256_fmadd_ps(qv, ld8(k, f16, i), a0);
            a1 = _mm256_fmadd_ps(qv, ld8(k + rb, f16, i), a1);
            a2 = _mm256_fmadd_ps(qv, ld8(k + 2 * rb, f16, i), a2);
            a3 = _mm256_fmadd_ps(qv, ld8(k + 3 * rb, f16, i), a3);
            a4 = _mm256_fmadd_ps(qv, ld8(k + 4 * rb, f16, i), a4);
            a5 = _mm256_fmadd_ps(qv, ld8(k + 5 * rb, f16, i), a5);
            a6 = _mm256_fmadd_ps(qv, ld8(k + 6 * rb, f16, i), a6);
            a7 = _mm256_fmadd_ps(qv, ld8(k + 7 * rb, f16, i), a7);
        }
        __m256 s = _mm256_add_ps(hsum_8x8(a0, a1, a2, a3, a4, a5, a6, a7), vb);
        _mm256_storeu_ps(sc + j, s);
        vmx = _mm256_max_ps(vmx, s);
    }
    __m128 hm = _mm_max_ps(_mm256_castps256_ps128(vmx), _mm256_extractf128_ps(vmx, 1));
    hm = _mm_max_ps(hm, _mm_movehl_ps(hm, hm));
    hm = _mm_max_ss(hm, _mm_movehdup_ps(hm));
    mx = _mm_cvtss_f32(hm);
    for (; j < n; j++) {
        const char *k = kbase + j * rb;
        __m256 a = _mm256_setzero_ps();
        for (int64_t i = 0; i < D; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), ld8(k, f16, i), a);
        float s = er_hsum8(a) + bias;
        sc[j] = s;
        mx = s > mx ? s : mx;
    }
    return mx;
}

/* acc (columns [c0, c0+64)) += sum_j p_j v_j for n value rows rb bytes apart */
ER_AVX2 static void pv64_avx2(__m256 acc[8], const float *p, const char *vbase, int f16, int64_t n, int64_t rb,
                              int64_t c0) {
    const int64_t es = f16 ? 2 : 4;
    __m256 o0 = acc[0], o1 = acc[1], o2 = acc[2], o3 = acc[3], o4 = acc[4], o5 = acc[5], o6 = acc[6], o7 = acc[7];
    for (int64_t j = 0; j < n; j++) {
        const char *v = vbase + j * rb + c0 * es;
        __m256 pj = _mm256_set1_ps(p[j]);
        o0 = _mm256_fmadd_ps(pj, ld8(v, f16, 0), o0);
        o1 = _mm256_fmadd_ps(pj, ld8(v, f16, 8), o1);
        o2 = _mm256_fmadd_ps(pj, ld8(v, f16, 16), o2);
        o3 = _mm256_fmadd_ps(pj, ld8(v, f16, 24), o3);
        o4 = _mm256_fmadd_ps(pj, ld8(v, f16, 32), o4);
        o5 = _mm256_fmadd_ps(pj, ld8(v, f16, 40), o5);
        o6 = _mm256_fmadd_ps(pj, ld8(v, f16, 48), o6);
        o7 = _mm256_fmadd_ps(pj, ld8(v, f16, 56), o7);
    }
    acc[0] = o0, acc[1] = o1, acc[2] = o2, acc[3] = o3, acc[4] = o4, acc[5] = o5, acc[6] = o6, acc[7] = o7;
}

ER_AVX2 static void seg_query_avx2(const seg_ctx *c, const float *q, int64_t h, float *sc, float *o) {
    const int64_t D = c->D, S = c->na + c->nb, es = c->b_f16 ? 2 : 4;
    const char *ka = (const char *)(c->ka + h * c->a_stride * D), *va = (const char *)(c->va + h * c->a_stride * D);
    const char *kb = c->kb + (h * c->b_stride + c->b0) * D * es, *vb = c->vb + (h * c->b_stride + c->b0) * D * es;
    float mx = -INFINITY;
    const int64_t rbb = D * es * c->b_step;
    if (c->na) mx = qk_rows_avx2(q, ka, 0, c->na, D, D * 4, 0.0f, sc, mx);
    if (c->nb) mx = qk_rows_avx2(q, kb, c->b_f16, c->nb, D, rbb, c->b_logw, sc + c->na, mx);
    const float sum = er_exp_sum_avx2(sc, S, mx);
    const __m256 inv = _mm256_set1_ps(1.0f / sum);
    if (D % 64 == 0) {
        for (int64_t c0 = 0; c0 < D; c0 += 64) {
            __m256 acc[8];
            for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
            if (c->na) pv64_avx2(acc, sc, va, 0, c->na, D * 4, c0);
            if (c->nb) pv64_avx2(acc, sc + c->na, vb, c->b_f16, c->nb, rbb, c0);
            for (int i = 0; i < 8; i++) _mm256_storeu_ps(o + c0 + 8 * i, _mm256_mul_ps(acc[i], inv));
        }
        return;
    }
    for (int64_t i = 0; i < D; i += 8) { /* D % 8 == 0: one column block at a time */
        __m256 a = _mm256_setzero_ps();
        for (int64_t t = 0; t < c->na; t++)
            a = _mm256_fmadd_ps(_mm256_set1_ps(sc[t]), _mm256_loadu_ps((const float *)va + t * D + i), a);
        for (int64_t t = 0; t < c->nb; t++)
            a = _mm256_fmadd_ps(_mm256_set1_ps(sc[c->na + t]), ld8(vb + t * rbb, c->b_f16, i), a);
        _mm256_storeu_ps(o + i, _mm256_mul_ps(a, inv));
    }
}
#endif

/* items: (head, query); query-major within a head so a thread's chunk reuses one head's K/V from cache */
static void seg_task(void *vc, int64_t start, int64_t end, int tid) {
    seg_ctx *c = (seg_ctx *)vc;
    const int64_t D = c->D, S = c->na + c->nb;
    float *sc = c->scores + (int64_t)tid * S, *qs = c->qbuf + (int64_t)tid * D;
    for (int64_t it = start; it < end; it++) {
        const int64_t h = it / c->T, t = it % c->T;
        const float *q = c->q + t * c->q_stride + h * D;
        for (int64_t i = 0; i < D; i++) qs[i] = q[i] * c->scale;
        float *o = c->out + t * c->out_stride + h * D;
#if ER_X86
        if (c->isa == ER_ISA_AVX2 && D % 8 == 0) {
            seg_query_avx2(c, qs, h, sc, o);
            continue;
        }
#endif
        seg_query_scalar(c, qs, h, sc, o);
    }
}

int er_attention_seg2(const float *q, int64_t q_stride, const float *ka, const float *va, int64_t na,
                      int64_t a_stride, const void *kb, const void *vb, int64_t b0, int64_t nb, int64_t b_step,
                      int64_t b_stride, int b_f16, float *out, int64_t out_stride, int64_t n_heads, int64_t head_dim,
                      int64_t T, float scale) {
    if (n_heads < 1 || head_dim < 1 || T < 1 || na < 0 || nb < 0 || na + nb < 1 || a_stride < na || b_step < 1 ||
        (nb && b_stride < b0 + (nb - 1) * b_step + 1) || b0 < 0 || q_stride < n_heads * head_dim || out_stride < n_heads * head_dim ||
        (na && (!ka || !va)) || (nb && (!kb || !vb)))
        return -1;
    const int nt = er_get_num_threads();
    float *buf = (float *)malloc(sizeof(float) * (size_t)nt * (size_t)(na + nb + head_dim));
    if (!buf) return -3;
    seg_ctx c = {.q = q, .q_stride = q_stride, .ka = ka, .va = va, .na = na, .a_stride = a_stride,
                 .kb = (const char *)kb, .vb = (const char *)vb, .b0 = b0, .nb = nb, .b_stride = b_stride,
                 .b_step = b_step, .b_logw = logf((float)b_step),
                 .b_f16 = b_f16 ? 1 : 0, .isa = er_get_isa(), .out = out, .out_stride = out_stride, .H = n_heads,
                 .D = head_dim, .T = T, .scale = scale, .scores = buf, .qbuf = buf + (size_t)nt * (na + nb)};
    const int64_t items = n_heads * T;
    er_parallel_for(items, items * (na + nb) * head_dim >= 65536 ? 4 : items, seg_task, &c);
    free(buf);
    return 0;
}
