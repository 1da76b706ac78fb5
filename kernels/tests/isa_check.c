/* Every kernel's vector variant (NEON(+dotprod) on aarch64, AVX2 on x86-64) against its scalar variant,
 * through the public API only (er_set_isa), on random and edge-case shapes.
 *
 * Quantized matmul: both variants quantize x to int8 identically and their integer dots are exact, so
 * they may differ only by float32 summation order: |y_vec - y_scalar| <= 2e-5 * sum_k |x_k w_nk| + 2e-6
 * (twice the per-variant slack tests/test_kernels_matmul.py allows against the float64 emulation; one
 * wrong code or activation moves y by ~|x_k w_nk|, far above it even at K = 4100). Float matmul and ops use
 * twice the tolerances of tests/test_kernels_matmul.py / test_kernels_ops.py.
 * GGUF block formats (q4_1 .. q6_K): the same bound with sum_k |x_k| (|term 1| + |term 2|) of each weight (its
 * scale and min / offset terms), since the kernels add those separately; matmul_multi must equal er_matmul exactly.
 *
 * Build (aarch64, from the repository root; tests/test_kernels_aarch64.py does this):
 *   aarch64-linux-gnu-gcc -O2 -std=c11 -static -Ikernels/src <every kernels/src .c file> \
 *       kernels/tests/isa_check.c -o isa_check -lm -lpthread
 *   qemu-aarch64 -cpu max ./isa_check          (NEON with sdot)
 *   qemu-aarch64 -cpu cortex-a57 ./isa_check   (NEON without dotprod: the emulated-sdot path)
 * On x86-64 the same driver built with gcc checks AVX2 against scalar.
 * Prints one summary line; exit status 1 on any mismatch. Argument "-v": one line per case.
 */
#if defined(__aarch64__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE 1
#endif
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgerun_kernels.h"

#if defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#define VEC_ISA ER_ISA_NEON
#define VEC_NAME "neon"
#else
#define VEC_ISA ER_ISA_AVX2
#define VEC_NAME "avx2"
#endif

static int verbose = 0;
static long n_cases = 0, n_fail = 0;

/* ---- random numbers and f16 ---------------------------------------------------------------------- */

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (uint32_t)(rs >> 11);
}
static float frand(void) { return (float)(rnd() % 2000001) / 1000000.0f - 1.0f; } /* [-1, 1] */
static float gauss(void) { return (frand() + frand() + frand() + frand()) * 0.8660254f; }

static float f16_to_f32(uint16_t h) {
    int e = (h >> 10) & 31, man = h & 1023;
    float v = e == 0 ? ldexpf((float)man, -24) : e == 31 ? INFINITY : ldexpf((float)(man | 1024), e - 25);
    return (h & 0x8000) ? -v : v;
}
static uint16_t f32_to_f16(float f) { /* truncating, normal range (enough for test data) */
    uint16_t s = f < 0 ? 0x8000 : 0;
    float a = fabsf(f);
    if (a < 6.2e-5f) return s;
    int e;
    float m = frexpf(a, &e); /* a = m 2^e, m in [0.5, 1) */
    int he = e - 1 + 15;
    if (he >= 31) return s | 0x7bff;
    return (uint16_t)(s | (he << 10) | ((int)(m * 2048.0f) & 1023));
}

/* ---- comparison ---------------------------------------------------------------------------------- */

static void report(const char *what, int bad, double worst, int64_t at) {
    n_cases++;
    if (bad) n_fail++;
    if (bad || verbose)
        printf("%s %s  (%d elements out of tolerance, worst excess %.3g at %lld)\n", bad ? "FAIL" : "ok  ", what,
               bad, worst, (long long)at);
}

/* |a - b| <= tol[i] (tol NULL: rtol * |b| + atol) */
static void compare(const char *what, const float *a, const float *b, const float *tol, int64_t n, float rtol,
                    float atol) {
    int bad = 0;
    double worst = 0.0;
    int64_t at = -1;
    for (int64_t i = 0; i < n; i++) {
        double t = tol ? tol[i] : rtol * fabs((double)b[i]) + atol, d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= t) && !(isnan(a[i]) && isnan(b[i]))) {
            bad++;
            if (d - t > worst || at < 0) worst = d - t, at = i;
        }
    }
    report(what, bad, worst, at);
}

/* ---- quantized matmul ---------------------------------------------------------------------------- */

enum { ZP_NONE = 0, ZP_BLOCK = 1, ZP_UNIFORM = 2 };

/* x (m, k): kind 0 gaussian, 1 zeros, 2 one huge value in a sea of tiny ones */
static void fill_x(float *x, int64_t m, int64_t k, int kind) {
    for (int64_t i = 0; i < m * k; i++) x[i] = kind == 1 ? 0.0f : kind == 2 ? 1e-3f * frand() : gauss();
    if (kind == 2)
        for (int64_t t = 0; t < m; t++) x[t * k + (t * 7) % k] = 1e4f;
}

static void check_q(int bits, int bs, int zpm, int64_t n, int64_t k, int64_t m, int threads, int xkind) {
    const int64_t nb = (k + bs - 1) / bs, row_bytes = nb * bs * bits / 8, zpb = (nb * bits + 7) / 8;
    const int mask = (1 << bits) - 1, uz = bits == 2 ? 1 : (int)(rnd() % (mask + 1));
    uint8_t *data = malloc((size_t)(n * row_bytes));
    uint16_t *scales = malloc(sizeof(uint16_t) * (size_t)(n * nb));
    uint8_t *zp = zpm ? calloc((size_t)(n * zpb), 1) : NULL;
    float *x = malloc(sizeof(float) * (size_t)(m * k)), *y0 = malloc(sizeof(float) * (size_t)(m * n));
    float *y1 = malloc(sizeof(float) * (size_t)(m * n)), *tol = malloc(sizeof(float) * (size_t)(m * n));
    for (int64_t i = 0; i < n * row_bytes; i++) data[i] = (uint8_t)rnd(); /* padding codes too: must not matter */
    if (bits == 2) /* ternary codes 0..2 except in a few rows (any 2-bit code must work) */
        for (int64_t r = 0; r < n; r++)
            if (r % 5)
                for (int64_t i = 0; i < row_bytes; i++) {
                    uint8_t b = data[r * row_bytes + i], o = 0;
                    for (int f = 0; f < 4; f++) o |= (uint8_t)((((b >> (2 * f)) & 3) % 3) << (2 * f));
                    data[r * row_bytes + i] = o;
                }
    for (int64_t i = 0; i < n * nb; i++) scales[i] = f32_to_f16((0.002f + 0.05f * fabsf(frand())) * (rnd() & 1 ? 1 : -1));
    if (zpm)
        for (int64_t r = 0; r < n; r++)
            for (int64_t b = 0; b < nb; b++) {
                int z = zpm == ZP_UNIFORM ? uz : (int)(rnd() & (uint32_t)mask);
                int64_t bit = b * bits;
                zp[r * zpb + (bit >> 3)] |= (uint8_t)(z << (bit & 7));
            }
    fill_x(x, m, k, xkind);
    er_weight w = {.type = ER_W_Q, .bits = bits, .n = n, .k = k, .block_size = bs,
                   .zp_hint = zpm == ZP_UNIFORM ? 1 + uz : 0, .data = data, .scales = scales, .zero_points = zp};
    /* tolerance from sum_k |x_k| |w_nk| with the dequantized weights */
    for (int64_t r = 0; r < n; r++)
        for (int64_t t = 0; t < m; t++) {
            double s = 0.0;
            for (int64_t e = 0; e < k; e++) {
                int64_t b = e / bs, bit = b * bits;
                int z = zp ? (zp[r * zpb + (bit >> 3)] >> (bit & 7)) & mask : 1 << (bits - 1);
                int code = bits == 8   ? data[r * row_bytes + e]
                           : bits == 4 ? (data[r * row_bytes + e / 2] >> ((e & 1) * 4)) & 15
                                       : (data[r * row_bytes + e / 4] >> ((e & 3) * 2)) & 3;
                s += fabs((double)x[t * k + e]) * fabs(f16_to_f32(scales[r * nb + b]) * (double)(code - z));
            }
            tol[t * n + r] = (float)(2e-5 * s + 2e-6);
        }
    er_set_num_threads(threads);
    er_set_isa(ER_ISA_SCALAR);
    int rc0 = er_matmul(&w, x, y0, m);
    er_set_isa(VEC_ISA);
    int rc1 = er_matmul(&w, x, y1, m);
    char what[160];
    snprintf(what, sizeof what, "matmul q%d bs=%d zp=%s n=%lld k=%lld m=%lld threads=%d x=%s", bits, bs,
             zpm == ZP_NONE ? "none" : zpm == ZP_BLOCK ? "block" : "uniform", (long long)n, (long long)k,
             (long long)m, threads, xkind == 0 ? "gauss" : xkind == 1 ? "zeros" : "spike");
    if (rc0 || rc1) {
        printf("FAIL %s: er_matmul returned %d / %d\n", what, rc0, rc1);
        n_cases++, n_fail++;
    } else {
        compare(what, y1, y0, tol, m * n, 0, 0);
    }
    free(data), free(scales), free(zp), free(x), free(y0), free(y1), free(tol);
}

/* ---- GGUF block formats (er_weight.type ER_W_Q4_1 .. ER_W_Q6_K, src/ggml_blocks.h) -------------------- */

#include "ggml_blocks.h"

static const char *ggml_name(int type) {
    static const char *names[] = {"q4_1", "q5_0", "q5_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K"};
    return names[type - ER_W_Q4_1];
}

/* random blocks; the f16 fields (d, m / dmin) finite, |v| in [0.001, 0.05], either sign */
static void fill_ggml(int type, uint8_t *d, int64_t nblocks) {
    const int ts = gg_type_size(type);
    int offs[2], no = 0;
    switch (type) {
    case ER_W_Q5_0: offs[no++] = 0; break;
    case ER_W_Q2_K: offs[no++] = 80, offs[no++] = 82; break;
    case ER_W_Q3_K: offs[no++] = 108; break;
    case ER_W_Q6_K: offs[no++] = 208; break;
    default: offs[no++] = 0, offs[no++] = 2; break; /* q4_1, q5_1, q4_K, q5_K */
    }
    for (int64_t i = 0; i < nblocks * ts; i++) d[i] = (uint8_t)rnd();
    for (int64_t b = 0; b < nblocks; b++)
        for (int o = 0; o < no; o++) {
            uint16_t h = f32_to_f16((0.001f + 0.049f * fabsf(frand())) * (rnd() & 1 ? 1 : -1));
            memcpy(d + b * ts + offs[o], &h, 2);
        }
}

/* sum_k |x_k| (|first term of w_nk| + |second term|) per row and token: the scale of float32 rounding */
static void ggml_tol(const er_weight *w, const float *x, int64_t m, float *tol) {
    const int type = w->type, qk = gg_qk(type), ts = gg_type_size(type);
    const int64_t nblk = w->k / qk;
    for (int64_t r = 0; r < w->n; r++)
        for (int64_t t = 0; t < m; t++) {
            double s = 0.0;
            for (int64_t b = 0; b < nblk; b++) {
                const uint8_t *blk = (const uint8_t *)w->data + (r * nblk + b) * ts;
                const float *xb = x + t * w->k + b * qk;
                if (qk == 256) {
                    gg_kform f;
                    gg_unpack_k(type, blk, &f);
                    for (int e = 0; e < 256; e++)
                        s += fabs((double)xb[e]) * (fabs((double)f.dA * f.sc[e / 16] * f.q[e]) + fabs((double)f.dB * f.mn[e / 16]));
                } else {
                    uint8_t q[32];
                    float fw, fm;
                    gg_unpack_32(type, blk, q, &fw, &fm);
                    for (int e = 0; e < 32; e++) s += fabs((double)xb[e]) * (fabs((double)fw * q[e]) + fabs((double)fm));
                }
            }
            tol[t * w->n + r] = (float)(2e-5 * s + 2e-6);
        }
}

static void check_ggml(int type, int64_t n, int64_t nblk, int64_t m, int threads, int xkind) {
    const int qk = gg_qk(type), ts = gg_type_size(type);
    const int64_t k = nblk * qk;
    uint8_t *data = malloc((size_t)(n * nblk * ts));
    float *x = malloc(sizeof(float) * (size_t)(m * k)), *y0 = malloc(sizeof(float) * (size_t)(m * n));
    float *y1 = malloc(sizeof(float) * (size_t)(m * n)), *tol = malloc(sizeof(float) * (size_t)(m * n));
    fill_ggml(type, data, n * nblk);
    fill_x(x, m, k, xkind);
    er_weight w = {.type = type, .bits = 4, .n = n, .k = k, .block_size = qk, .data = data};
    ggml_tol(&w, x, m, tol);
    er_set_num_threads(threads);
    er_set_isa(ER_ISA_SCALAR);
    int rc0 = er_matmul(&w, x, y0, m);
    er_set_isa(VEC_ISA);
    int rc1 = er_matmul(&w, x, y1, m);
    char what[160];
    snprintf(what, sizeof what, "matmul %s n=%lld k=%lld m=%lld threads=%d x=%s", ggml_name(type), (long long)n,
             (long long)k, (long long)m, threads, xkind == 0 ? "gauss" : xkind == 1 ? "zeros" : "spike");
    if (rc0 || rc1) {
        printf("FAIL %s: er_matmul returned %d / %d\n", what, rc0, rc1);
        n_cases++, n_fail++;
    } else {
        compare(what, y1, y0, tol, m * n, 0, 0);
    }
    free(data), free(x), free(y0), free(y1), free(tol);
}

/* er_matmul_multi over GGUF weights of one activation kind (x quantized once) == one er_matmul each, exactly */
static void check_ggml_multi(const int *types, int nw, int64_t nblk256, int64_t m, int threads) {
    const int64_t k = nblk256 * 256;
    uint8_t *data[4];
    float *ys[4], *yr[4];
    er_weight w[4];
    const er_weight *wp[4];
    float *x = malloc(sizeof(float) * (size_t)(m * k));
    fill_x(x, m, k, 0);
    for (int i = 0; i < nw; i++) {
        const int64_t n = 5 + 17 * i, nblk = k / gg_qk(types[i]);
        data[i] = malloc((size_t)(n * nblk * gg_type_size(types[i])));
        fill_ggml(types[i], data[i], n * nblk);
        w[i] = (er_weight){.type = types[i], .bits = 4, .n = n, .k = k, .block_size = gg_qk(types[i]), .data = data[i]};
        wp[i] = &w[i];
        ys[i] = malloc(sizeof(float) * (size_t)(m * n));
        yr[i] = malloc(sizeof(float) * (size_t)(m * n));
    }
    er_set_num_threads(threads);
    char what[160];
    for (int isa = 0; isa < 2; isa++) {
        er_set_isa(isa ? VEC_ISA : ER_ISA_SCALAR);
        int rc = er_matmul_multi(wp, nw, x, ys, m);
        for (int i = 0; i < nw; i++) rc |= er_matmul(&w[i], x, yr[i], m);
        for (int i = 0; i < nw; i++) {
            snprintf(what, sizeof what, "matmul_multi %s (%d weights) k=%lld m=%lld threads=%d isa=%s", ggml_name(types[i]),
                     nw, (long long)k, (long long)m, threads, isa ? VEC_NAME : "scalar");
            if (rc) {
                printf("FAIL %s: returned %d\n", what, rc);
                n_cases++, n_fail++;
                break;
            }
            compare(what, ys[i], yr[i], NULL, m * w[i].n, 0, 0);
        }
    }
    for (int i = 0; i < nw; i++) free(data[i]), free(ys[i]), free(yr[i]);
    free(x);
}

/* ---- float matmul -------------------------------------------------------------------------------- */

static void check_f(int f16, int64_t n, int64_t k, int64_t m, int threads) {
    float *wf = malloc(sizeof(float) * (size_t)(n * k));
    uint16_t *wh = malloc(sizeof(uint16_t) * (size_t)(n * k));
    float *x = malloc(sizeof(float) * (size_t)(m * k)), *y0 = malloc(sizeof(float) * (size_t)(m * n));
    float *y1 = malloc(sizeof(float) * (size_t)(m * n)), *tol = malloc(sizeof(float) * (size_t)(m * n));
    for (int64_t i = 0; i < n * k; i++) {
        wh[i] = f32_to_f16(gauss());
        wf[i] = f16 ? f16_to_f32(wh[i]) : gauss();
    }
    fill_x(x, m, k, 0);
    for (int64_t r = 0; r < n; r++)
        for (int64_t t = 0; t < m; t++) {
            double s = 0.0;
            for (int64_t e = 0; e < k; e++) s += fabs((double)x[t * k + e] * wf[r * k + e]);
            tol[t * n + r] = (float)(4e-6 * sqrt((double)k) * s + 2e-6);
        }
    er_weight w = {.type = f16 ? ER_W_F16 : ER_W_F32, .n = n, .k = k, .data = f16 ? (const void *)wh : wf};
    er_set_num_threads(threads);
    er_set_isa(ER_ISA_SCALAR);
    int rc0 = er_matmul(&w, x, y0, m);
    er_set_isa(VEC_ISA);
    int rc1 = er_matmul(&w, x, y1, m);
    char what[120];
    snprintf(what, sizeof what, "matmul %s n=%lld k=%lld m=%lld threads=%d", f16 ? "f16" : "f32", (long long)n,
             (long long)k, (long long)m, threads);
    if (rc0 || rc1) {
        printf("FAIL %s: er_matmul returned %d / %d\n", what, rc0, rc1);
        n_cases++, n_fail++;
    } else {
        compare(what, y1, y0, tol, m * n, 0, 0);
    }
    free(wf), free(wh), free(x), free(y0), free(y1), free(tol);
}

/* ---- ops ----------------------------------------------------------------------------------------- */

static void check_ops(int64_t n) {
    float *a = malloc(sizeof(float) * (size_t)(3 * n)), *b = malloc(sizeof(float) * (size_t)(3 * n));
    float *w = malloc(sizeof(float) * (size_t)n), *o0 = malloc(sizeof(float) * (size_t)(3 * n));
    float *o1 = malloc(sizeof(float) * (size_t)(3 * n));
    float amax = 0.0f, bmax = 0.0f;
    const float edge[] = {0.0f, -0.0f, 88.0f, -88.0f, 100.0f, -100.0f, 1e-30f, -1e-30f, 20.0f, -20.0f};
    for (int64_t i = 0; i < 3 * n; i++) {
        a[i] = i < 10 && n >= 10 ? edge[i] : 6.0f * gauss();
        b[i] = gauss();
        amax = fmaxf(amax, fabsf(a[i]));
        bmax = fmaxf(bmax, fabsf(b[i]));
    }
    for (int64_t i = 0; i < n; i++) w[i] = 1.0f + 0.5f * frand();
    char what[80];
#define RUN2(CALL, TAG, RT, AT, LEN)                                   \
    do {                                                               \
        float *o = o0;                                                 \
        er_set_isa(ER_ISA_SCALAR);                                     \
        CALL;                                                          \
        o = o1;                                                        \
        er_set_isa(VEC_ISA);                                           \
        CALL;                                                          \
        snprintf(what, sizeof what, "%s n=%lld", TAG, (long long)n);   \
        compare(what, o1, o0, NULL, LEN, RT, AT);                      \
    } while (0)
    const float gatol = 2.4e-7f * amax + 2e-7f;
    RUN2(er_silu(a, o, n), "silu", 4e-6f, 2e-7f, n);
    RUN2(er_gelu_tanh(a, o, n), "gelu_tanh", 4e-6f, gatol, n);
    RUN2(er_mul(a, b, o, n), "mul", 0.0f, 0.0f, n);
    RUN2(er_silu_mul(a, b, o, n), "silu_mul", 4e-6f, 2e-7f, n);
    RUN2(er_gelu_mul(a, b, o, n), "gelu_mul", 4e-6f, gatol * bmax, n);
    RUN2(er_rmsnorm(b, w, o, 3, n, 1e-6f), "rmsnorm rows=3", 2e-5f, 2e-6f, 3 * n);
    RUN2((memcpy(o, a, sizeof(float) * (size_t)(3 * n)), er_softmax(o, 3, n)), "softmax rows=3", 2e-5f, 2e-8f,
         3 * n);
    for (int64_t i = 0; i < n; i += 3) a[i] = -INFINITY; /* masked scores */
    a[n - 1] = 1.0f;
    RUN2((memcpy(o, a, sizeof(float) * (size_t)n), er_softmax(o, 1, n)), "softmax masked", 2e-5f, 2e-8f, n);
#undef RUN2
    free(a), free(b), free(w), free(o0), free(o1);
}

/* decode (T = 0) or prefill attention, kv (hkv, s, d) f32 or f16 */
static void check_attn(int f16, int64_t h, int64_t hkv, int64_t d, int64_t s, int64_t nctx, int64_t T, int64_t p0,
                       int64_t window, float softcap, int threads) {
    const int64_t nq = (T ? T : 1) * h * d;
    float *q = malloc(sizeof(float) * (size_t)nq), *kf = malloc(sizeof(float) * (size_t)(hkv * s * d));
    float *vf = malloc(sizeof(float) * (size_t)(hkv * s * d));
    uint16_t *kh = malloc(sizeof(uint16_t) * (size_t)(hkv * s * d)), *vh = malloc(sizeof(uint16_t) * (size_t)(hkv * s * d));
    float *o0 = malloc(sizeof(float) * (size_t)nq), *o1 = malloc(sizeof(float) * (size_t)nq);
    for (int64_t i = 0; i < nq; i++) q[i] = gauss();
    for (int64_t i = 0; i < hkv * s * d; i++) {
        kh[i] = f32_to_f16(gauss()), vh[i] = f32_to_f16(gauss());
        kf[i] = f16 ? f16_to_f32(kh[i]) : gauss(), vf[i] = f16 ? f16_to_f32(vh[i]) : gauss();
    }
    const void *k = f16 ? (const void *)kh : kf, *v = f16 ? (const void *)vh : vf;
    const float scale = 1.0f / sqrtf((float)d);
    er_set_num_threads(threads);
    int rc[2];
    for (int i = 0; i < 2; i++) {
        er_set_isa(i ? VEC_ISA : ER_ISA_SCALAR);
        float *o = i ? o1 : o0;
        rc[i] = T ? er_attention_prefill(q, k, v, o, h, hkv, d, T, p0, s, f16, scale, softcap, window)
                  : er_attention(q, k, v, o, h, hkv, d, nctx, s, f16, scale, softcap);
    }
    char what[160];
    snprintf(what, sizeof what, "attention%s kv=%s h=%lld hkv=%lld d=%lld ctx=%lld T=%lld p0=%lld window=%lld "
             "softcap=%g threads=%d", T ? "_prefill" : "", f16 ? "f16" : "f32", (long long)h, (long long)hkv,
             (long long)d, (long long)nctx, (long long)T, (long long)p0, (long long)window, softcap, threads);
    if (rc[0] || rc[1]) {
        printf("FAIL %s: returned %d / %d\n", what, rc[0], rc[1]);
        n_cases++, n_fail++;
    } else {
        compare(what, o1, o0, NULL, nq, 2e-4f, 4e-5f);
    }
    free(q), free(kf), free(vf), free(kh), free(vh), free(o0), free(o1);
}

/* attention over the KIVI int8/int4/int2 cache (kv_attention.c): one cache filled by er_kivi_store (scalar C,
 * identical for both variants), past its window so the ring has wrapped; decode (T = 1) and prefill blocks */
static void check_kivi(int bits, int64_t h, int64_t hkv, int64_t d, int64_t G, int64_t S, int64_t W, int64_t n0,
                       int64_t T, float softcap, int threads) {
    const int64_t nb = (W + G - 1) / G, pb = d * bits / 8, vg = d < 32 ? d : 32;
    er_kivi c = {.bits = bits, .group = (int32_t)G, .vgroup = (int32_t)vg, .n_blocks = (int32_t)nb, .n_kv_heads = hkv,
                 .head_dim = d, .sinks = S, .window = W};
    c.sink_k = calloc((size_t)(hkv * S * d + 1), 2), c.sink_v = calloc((size_t)(hkv * S * d + 1), 2);
    c.sink_pos = malloc(sizeof(int64_t) * (size_t)(S + 1));
    c.res_k = calloc((size_t)(hkv * G * d), 2), c.res_v = calloc((size_t)(hkv * G * d), 2);
    c.res_pos = malloc(sizeof(int64_t) * (size_t)G);
    c.qk = calloc((size_t)(nb * hkv * G * pb), 1), c.qv = calloc((size_t)(nb * hkv * G * pb), 1);
    c.qk_scale = calloc((size_t)(nb * hkv * d), 2), c.qk_min = calloc((size_t)(nb * hkv * d), 2);
    c.qv_scale = calloc((size_t)(nb * hkv * G * (d / vg)), 2), c.qv_min = calloc((size_t)(nb * hkv * G * (d / vg)), 2);
    c.q_start = malloc(sizeof(int64_t) * (size_t)nb);
    for (int64_t i = 0; i < S; i++) c.sink_pos[i] = -1;
    for (int64_t i = 0; i < G; i++) c.res_pos[i] = -1;
    for (int64_t i = 0; i < nb; i++) c.q_start[i] = -1;
    const int64_t nq = T * h * d, nk = hkv * T * d;
    float *kv = malloc(sizeof(float) * (size_t)(2 * hkv * d)), *q = malloc(sizeof(float) * (size_t)nq);
    float *qs = malloc(sizeof(float) * (size_t)nq), *kn = malloc(sizeof(float) * (size_t)nk);
    float *vn = malloc(sizeof(float) * (size_t)nk);
    float *o0 = malloc(sizeof(float) * (size_t)nq), *o1 = malloc(sizeof(float) * (size_t)nq);
    int rs = 0;
    for (int64_t p = 0; p < n0; p++) {
        for (int64_t i = 0; i < 2 * hkv * d; i++) kv[i] = gauss() + (i % d == 3 ? 3.0f : 0.0f);
        rs |= er_kivi_store(&c, kv, kv + hkv * d, 1, p);
    }
    for (int64_t i = 0; i < nq; i++) q[i] = gauss(), qs[i] = gauss();
    for (int64_t i = 0; i < nk; i++) kn[i] = gauss(), vn[i] = gauss();
    er_set_num_threads(threads);
    int rc[2];
    for (int i = 0; i < 2; i++) {
        er_set_isa(i ? VEC_ISA : ER_ISA_SCALAR);
        rc[i] = er_kivi_attention(&c, q, S ? qs : NULL, kn, vn, i ? o1 : o0, h, T, n0, 1.0f / sqrtf((float)d), softcap);
    }
    char what[200];
    snprintf(what, sizeof what, "kivi_attention int%d h=%lld hkv=%lld d=%lld G=%lld S=%lld W=%lld ctx=%lld T=%lld "
             "softcap=%g threads=%d", bits, (long long)h, (long long)hkv, (long long)d, (long long)G, (long long)S,
             (long long)W, (long long)n0, (long long)T, softcap, threads);
    if (rc[0] || rc[1] || rs) {
        printf("FAIL %s: returned %d / %d (store %d)\n", what, rc[0], rc[1], rs);
        n_cases++, n_fail++;
    } else {
        compare(what, o1, o0, NULL, nq, 2e-4f, 4e-5f);
    }
    free(c.sink_k), free(c.sink_v), free(c.sink_pos), free(c.res_k), free(c.res_v), free(c.res_pos), free(c.qk);
    free(c.qv), free(c.qk_scale), free(c.qk_min), free(c.qv_scale), free(c.qv_min), free(c.q_start);
    free(kv), free(q), free(qs), free(kn), free(vn), free(o0), free(o1);
}

int main(int argc, char **argv) {
    verbose = argc > 1 && strcmp(argv[1], "-v") == 0;
    if (!er_isa_supported(VEC_ISA)) {
        printf("isa_check: the %s variant is not supported on this CPU/build\n", VEC_NAME);
        return 2;
    }
    const char *extra = "";
#if defined(__aarch64__)
    const char *env = getenv("EDGERUN_NEON_DOTPROD");
    int dp = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) && !(env && env[0] == '0');
    extra = dp ? " (dotprod: sdot path)" : " (no dotprod: emulated-sdot path)";
#endif
    /* quantized formats: bits, block size, zero points */
    static const int fmts[][3] = {
        {8, 32, ZP_NONE},  {8, 64, ZP_BLOCK},   {8, 128, ZP_UNIFORM}, {4, 32, ZP_NONE},    {4, 64, ZP_NONE},
        {4, 128, ZP_NONE}, {4, 32, ZP_BLOCK},   {4, 64, ZP_BLOCK},    {4, 128, ZP_BLOCK},  {4, 32, ZP_UNIFORM},
        {2, 256, ZP_UNIFORM}, {2, 256, ZP_NONE}, {2, 256, ZP_BLOCK},  {2, 512, ZP_UNIFORM}, {2, 32, ZP_UNIFORM},
        {2, 64, ZP_BLOCK}, {2, 128, ZP_NONE},   {2, 32, ZP_BLOCK},
    };
    static const int64_t shapes[][2] = {{1, 1},  {3, 31},  {7, 100},  {5, 256},  {16, 576},
                                        {9, 300}, {33, 1000}, {4, 1537}, {21, 4100}, {6, 96}};
    static const int64_t ms[] = {1, 3, 5, 8};
    int ci = 0;
    for (size_t f = 0; f < sizeof fmts / sizeof fmts[0]; f++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++, ci++) {
                if (ms[mi] == 8 && s % 3) continue; /* m = 8 (two whole token groups) on a third of the shapes */
                int xkind = shapes[s][1] == 96 ? (int)(mi % 3) : 0; /* zeros / spike on the small shape */
                check_q(fmts[f][0], fmts[f][1], fmts[f][2], shapes[s][0], shapes[s][1], ms[mi], ci % 2 ? 3 : 1,
                        xkind);
            }
    /* GGUF block formats: (rows, blocks per row) x tokens, threads 1 / 3; zeros / spike x on one shape */
    static const int64_t gshapes[][2] = {{1, 1}, {7, 2}, {33, 5}, {4, 8}, {100, 1}, {9, 20}};
    static const int64_t gms[] = {1, 3, 4, 5, 17};
    for (int type = ER_W_Q4_1; type <= ER_W_Q6_K; type++)
        for (size_t s = 0; s < sizeof gshapes / sizeof gshapes[0]; s++)
            for (size_t mi = 0; mi < sizeof gms / sizeof gms[0]; mi++, ci++) {
                if (gg_is_k(type) && gshapes[s][1] == 20 && gms[mi] > 4) continue; /* keep qemu runs short */
                int xkind = s == 1 ? (int)(mi % 3) : 0;
                check_ggml(type, gshapes[s][0], gshapes[s][1], gms[mi], ci % 2 ? 3 : 1, xkind);
            }
    for (int type = ER_W_Q4_1; type <= ER_W_Q6_K; type++) check_ggml(type, 9, 3, 40, 3, 0); /* two token tiles */
    static const int mk[][3] = {{ER_W_Q4_K, ER_W_Q6_K, ER_W_Q4_K}, {ER_W_Q2_K, ER_W_Q3_K, ER_W_Q5_K},
                                {ER_W_Q5_0, ER_W_Q5_0, ER_W_Q4_1}, {ER_W_Q5_1, ER_W_Q4_1, ER_W_Q5_0}};
    for (size_t i = 0; i < sizeof mk / sizeof mk[0]; i++)
        for (int64_t m = 1; m <= 5; m += 4) check_ggml_multi(mk[i], 3, 3, m, 1 + 2 * (int)(i % 2));
    static const int64_t fshapes[][2] = {{1, 1}, {7, 100}, {33, 256}, {16, 576}, {9, 301}, {5, 1537}};
    for (int f16 = 0; f16 < 2; f16++)
        for (size_t s = 0; s < sizeof fshapes / sizeof fshapes[0]; s++)
            for (int64_t m = 1; m <= 6; m += 2) check_f(f16, fshapes[s][0], fshapes[s][1], m, m == 3 ? 3 : 1);
    static const int64_t ons[] = {1, 3, 4, 17, 64, 576, 1001};
    for (size_t i = 0; i < sizeof ons / sizeof ons[0]; i++) check_ops(ons[i]);
    /* attention: (h, hkv, d, s, n_ctx) as tests/test_kernels_ops.py, f32/f16 kv, softcap 0/5 */
    static const int64_t att[][5] = {{9, 3, 64, 40, 33}, {4, 4, 8, 1, 1}, {8, 1, 64, 300, 300}, {15, 5, 64, 17, 5},
                                     {2, 1, 70, 130, 129}, {4, 2, 6, 9, 9}};
    for (int f16 = 0; f16 < 2; f16++)
        for (size_t i = 0; i < sizeof att / sizeof att[0]; i++)
            for (int sc = 0; sc < 2; sc++)
                check_attn(f16, att[i][0], att[i][1], att[i][2], att[i][3], att[i][4], 0, 0, 0, sc ? 5.0f : 0.0f,
                           1 + 2 * (int)(i % 2));
    /* prefill: (h, hkv, d, T, p0, s, window) */
    static const int64_t pre[][7] = {{9, 3, 64, 37, 0, 40, 0}, {4, 4, 8, 1, 0, 1, 0}, {8, 1, 64, 20, 100, 130, 0},
                                     {6, 2, 70, 33, 5, 40, 9}, {2, 1, 16, 64, 0, 64, 1}};
    for (int f16 = 0; f16 < 2; f16++)
        for (size_t i = 0; i < sizeof pre / sizeof pre[0]; i++)
            for (int sc = 0; sc < 2; sc++)
                check_attn(f16, pre[i][0], pre[i][1], pre[i][2], pre[i][5], 0, pre[i][3], pre[i][4], pre[i][6],
                           sc ? 5.0f : 0.0f, 1 + 2 * (int)(i % 2));
    /* KIVI cache attention: (h, hkv, d, G, S, W, tokens cached, T) for int8/int4/int2, softcap 0/5 */
    static const int64_t kiv[][8] = {{9, 3, 64, 32, 4, 100, 300, 1},  {9, 3, 64, 32, 4, 512, 700, 1},
                                     {4, 2, 32, 16, 0, 40, 97, 1},    {8, 1, 128, 8, 2, 33, 61, 1},
                                     {9, 3, 64, 32, 4, 100, 300, 40}, {6, 2, 20, 4, 1, 21, 50, 3}};
    static const int kbits[] = {8, 4, 2};
    for (size_t b = 0; b < 3; b++)
        for (size_t i = 0; i < sizeof kiv / sizeof kiv[0]; i++)
            for (int sc = 0; sc < 2; sc++)
                check_kivi(kbits[b], kiv[i][0], kiv[i][1], kiv[i][2], kiv[i][3], kiv[i][4], kiv[i][5], kiv[i][6],
                           kiv[i][7], sc ? 5.0f : 0.0f, 1 + (int)((i + sc) % 2));
    printf("isa_check %s%s vs scalar: %ld cases, %ld failed\n", VEC_NAME, extra, n_cases, n_fail);
    return n_fail ? 1 : 0;
}
