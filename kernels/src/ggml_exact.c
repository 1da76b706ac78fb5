/* llama.cpp's CPU float order, bit for bit: a validation path, not a fast one.
 *
 * Two engines that quantize activations to 8 bits on the fly disagree on top-1 wherever any
 * ulp differs (a flipped int8 rounding propagates), so checking our imported weights against
 * llama.cpp needs the same float operations in the same order. Each function here mirrors one
 * ggml CPU kernel of an x86-64 AVX2/FMA/F16C build of llama.cpp (llama-cpp-python 0.3.36):
 *
 *   er_gx_rmsnorm       ggml_compute_forward_rms_norm_f32 (+ mul by the norm weight)
 *   er_gx_matmul_q0     repacked Q4_0 8x8 GEMM (mode 0): acc = fma(isum_b, dw*dx, acc) per block;
 *                       llamafile tinyBLAS_Q0_AVX (mode 1): 8 lanes of 4 products, fma per block, hsum
 *   er_gx_matmul_tq2    ggml_vec_dot_tq2_0_q8_K with quantize_row_q8_K_ref activations
 *   er_gx_f16_gemm      llamafile tinyBLAS<8, __m256> on f16 x f16 (attention's KQ and KQV)
 *   er_gx_softmax       ggml_compute_forward_soft_max_f32 with ggml_v_expf
 *   er_gx_rope          ggml_rope_cache_init + rotate_pairs (NORM pairs; fma-contracted as built)
 *   er_gx_swiglu        ggml_vec_swiglu_f32 with ggml_v_silu
 *
 * Integer parts are exact in any order; only float steps follow ggml. The numpy reference of each
 * is kernels/ggml_exact.py; tests/test_quant_export_llama_cpp.py compares the whole forward with
 * llama.cpp. This file is compiled with -std=c11 (no implicit fma contraction): every fused step is
 * an explicit fmaf, as in ggml's intrinsics.
 */
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "edgerun_kernels.h"
#include "er_internal.h"

/* fmaf must be the FMA instruction to be usable at all (the library's baseline is plain x86-64);
 * callers check er_isa_supported(ER_ISA_AVX2) first (kernels/ggml_exact.py) */
#if ER_X86
#define GX __attribute__((target("avx2,fma")))
#else
#define GX
#endif

/* ---- helpers ------------------------------------------------------------------------------ */

static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* hsum of 8 lanes as _mm256 -> _mm_add_ps(hi, lo) -> movehl -> movehdup (llamafile / quants.c) */
static inline float hsum8(const float v[8]) {
    float h0 = v[4] + v[0], h1 = v[5] + v[1], h2 = v[6] + v[2], h3 = v[7] + v[3];
    float s0 = h0 + h2, s1 = h1 + h3;
    return s0 + s1;
}

/* ggml_v_expf, one lane (vec.h, AVX2 + FMA) */
GX static float gx_expf(float x) {
    const float r = 0x1.8p23f;
    const float z = fmaf(x, 0x1.715476p+0f, r);
    const float n = z - r;
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    const uint32_t e = f32_bits(z) << 23;
    const float k = bits_f32(e + f32_bits(1.0f));
    const int c = fabsf(n) > 126.0f;
    const float u = b * b;
    const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
                         u, 0x1.ffffecp-1f * b);
    if (!c) return fmaf(j, k, k);
    const uint32_t g = (n <= 0.0f) ? 0x82000000u : 0u;
    const float s1 = bits_f32(g + 0x7f000000u);
    const float s2 = bits_f32(e - g);
    if (fabsf(n) > 192.0f) return s1 * s1;
    return fmaf(s2, j, s2) * s1;
}

/* ---- RMSNorm --------------------------------------------------------------------------------- */

GX void er_gx_rmsnorm(const float *x, const float *w, float *out, int64_t rows, int64_t n, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) sum += (double)(xr[i] * xr[i]);
        const float mean = (float)(sum / (double)n);
        const float scale = 1.0f / sqrtf(mean + eps);
        for (int64_t i = 0; i < n; i++) out[r * n + i] = xr[i] * scale * w[i];
    }
}

/* ---- activation quantization (the matmuls below are x86-only, like the build they mirror) --------- */
#if ER_X86

/* quantize_row_q8_0 (AVX2): d = max/127 stored f16, q = round-half-even(x * (127/max)) */
GX static void q8_0_row(const float *x, int64_t k, int8_t *q, float *d) {
    for (int64_t b = 0; b < k / 32; b++) {
        const float *v = x + b * 32;
        float mx = 0.0f;
        for (int i = 0; i < 32; i++) mx = fmaxf(mx, fabsf(v[i]));
        const float db = mx / 127.0f;
        const float id = mx != 0.0f ? 127.0f / mx : 0.0f;
        for (int i = 0; i < 32; i++) q[b * 32 + i] = (int8_t)lrintf(v[i] * id);
        d[b] = er_f16_to_f32(er_f32_to_f16(db));
    }
}

/* quantize_row_q8_K_ref: iscale = -127/max (signed max), q = nearest_int(iscale*x) clipped to 127, d = 1/iscale */
GX static void q8_k_row(const float *x, int64_t k, int8_t *q, float *d) {
    for (int64_t b = 0; b < k / 256; b++) {
        const float *v = x + b * 256;
        float max = 0.0f, amax = 0.0f;
        for (int i = 0; i < 256; i++) {
            const float ax = fabsf(v[i]);
            if (ax > amax) { amax = ax; max = v[i]; }
        }
        if (amax == 0.0f) {
            d[b] = 0.0f;
            memset(q + b * 256, 0, 256);
            continue;
        }
        const float iscale = -127.0f / max;
        for (int i = 0; i < 256; i++) {
            const float val = iscale * v[i] + 12582912.0f;
            int32_t bits;
            memcpy(&bits, &val, 4);
            const int iv = (bits & 0x007fffff) - 0x00400000;
            q[b * 256 + i] = (int8_t)(iv < 127 ? iv : 127);
        }
        d[b] = 1.0f / iscale;
    }
}

/* ---- weight codes ---------------------------------------------------------------------------- */

/* signed values (code - zero point) of row `r` of a quantized weight, K values */
static void decode_row(const er_weight *w, int64_t r, int8_t *out) {
    const int bits = w->bits, bs = w->block_size, mask = (1 << bits) - 1;
    const int64_t nb = (w->k + bs - 1) / bs, row_bytes = nb * bs * bits / 8;
    const uint8_t *row = (const uint8_t *)w->data + r * row_bytes;
    const int64_t zp_bytes = (nb * bits + 7) / 8;
    for (int64_t b = 0; b < nb; b++) {
        int zp = 1 << (bits - 1);
        if (w->zero_points) {
            const int64_t bit = b * bits;
            zp = (w->zero_points[r * zp_bytes + bit / 8] >> (bit % 8)) & mask;
        } else if (w->zp_hint) {
            zp = w->zp_hint - 1;
        }
        for (int64_t i = 0; i < bs && b * bs + i < w->k; i++) {
            const int64_t e = b * bs + i, bit = e * bits;
            out[e] = (int8_t)(((row[bit / 8] >> (bit % 8)) & mask) - zp);
        }
    }
}

/* ---- Q4_0 / Q8_0 matmul ------------------------------------------------------------------------- */

/* 8 int32 lanes, lane l = sum of w[i]*x[i] for i in 4l..4l+3 (exact for |values| <= 127):
 * the maddubs + madd(1) pattern of llamafile's updot and of the TQ2_0 kernel */
GX static inline __m256i dot_lanes(const int8_t *w, const int8_t *x) {
    const __m256i a = _mm256_loadu_si256((const __m256i *)w), b = _mm256_loadu_si256((const __m256i *)x);
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

typedef struct {
    const er_weight *w;
    const int8_t *xq;   /* (m, k) int8 activations */
    const float *xd;    /* (m, k/32) activation scales */
    float *y;           /* (m, n) */
    int64_t m;
    int mode;
} q0_ctx;

GX static void q0_task(void *vctx, int64_t start, int64_t end, int tid) {
    (void)tid;
    const q0_ctx *c = (const q0_ctx *)vctx;
    const er_weight *w = c->w;
    const int64_t k = w->k, nb = k / 32, bpw = w->block_size / 32, nbw = (k + w->block_size - 1) / w->block_size;
    int8_t wq[65536];
    float ws[2048];
    for (int64_t r = start; r < end; r++) {
        decode_row(w, r, wq);
        for (int64_t b = 0; b < nb; b++) ws[b] = er_f16_to_f32(w->scales[r * nbw + b / bpw]);
        for (int64_t t = 0; t < c->m; t++) {
            const int8_t *xq = c->xq + t * k;
            const float *xd = c->xd + t * nb;
            if (c->mode == 0) { /* repacked Q4_0 8x8 GEMM/GEMV: one accumulator, fma per block */
                float acc = 0.0f;
                for (int64_t b = 0; b < nb; b++) {
                    int32_t l8[8];
                    _mm256_storeu_si256((__m256i *)l8, dot_lanes(wq + b * 32, xq + b * 32));
                    const int32_t isum = l8[0] + l8[1] + l8[2] + l8[3] + l8[4] + l8[5] + l8[6] + l8[7];
                    acc = fmaf((float)isum, ws[b] * xd[b], acc);
                }
                c->y[t * w->n + r] = acc;
            } else { /* tinyBLAS_Q0_AVX: Cv = fma(dw*dx, float(lanes), Cv) per block, then hsum */
                __m256 acc = _mm256_setzero_ps();
                for (int64_t b = 0; b < nb; b++) {
                    const __m256 dd = _mm256_set1_ps(ws[b] * xd[b]);
                    acc = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(dot_lanes(wq + b * 32, xq + b * 32)), acc);
                }
                float lanes[8];
                _mm256_storeu_ps(lanes, acc);
                c->y[t * w->n + r] = hsum8(lanes);
            }
        }
    }
}
#endif

/* y (m, N) = x (m, K) @ W^T for int4/int8 block-32 weights (imported Q4_0 / Q8_0), ggml's order.
 * xq_buf: m*K bytes, xd_buf: m*K/32 floats of scratch. Returns 0, or -1 on unsupported weights/CPU. */
GX int er_gx_matmul_q0(const er_weight *w, const float *x, float *y, int64_t m, int mode, int8_t *xq_buf,
                       float *xd_buf) {
#if ER_X86
    if (w->type != ER_W_Q || (w->bits != 4 && w->bits != 8) || w->block_size % 32 || w->k % 32 || w->k > 65536)
        return -1;
    for (int64_t t = 0; t < m; t++) q8_0_row(x + t * w->k, w->k, xq_buf + t * w->k, xd_buf + t * (w->k / 32));
    q0_ctx c = {w, xq_buf, xd_buf, y, m, mode};
    er_parallel_for(w->n, 1, q0_task, &c);
    return 0;
#else
    (void)w; (void)x; (void)y; (void)m; (void)mode; (void)xq_buf; (void)xd_buf;
    return -1;
#endif
}

/* ---- TQ2_0 matmul ----------------------------------------------------------------------------- */

#if ER_X86
typedef struct {
    const er_weight *w;
    const int8_t *xq;    /* (m, k) Q8_K activations */
    const float *xd;     /* (m, k/256) */
    const int32_t *corr; /* (m, k/256, 8): per lane, sum of y over (e%32)/4 == l minus sum over [32l, 32l+32) */
    float *y;
    int64_t m;
    int fused;
} tq2_ctx;

GX static void tq2_task(void *vctx, int64_t start, int64_t end, int tid) {
    (void)tid;
    const tq2_ctx *c = (const tq2_ctx *)vctx;
    const er_weight *w = c->w;
    const int64_t k = w->k, nb = k / 256, per = 256 / w->block_size;
    int8_t wq[65536];
    float ws[256];
    for (int64_t r = start; r < end; r++) {
        decode_row(w, r, wq);
        for (int64_t b = 0; b < nb; b++) ws[b] = er_f16_to_f32(w->scales[r * (k / w->block_size) + b * per]);
        for (int64_t t = 0; t < c->m; t++) {
            const int8_t *xq = c->xq + t * k;
            __m256 acc = _mm256_setzero_ps();
            for (int64_t b = 0; b < nb; b++) {
                /* ggml's int32 lane l = sum over e with (e % 32) / 4 == l of (v_e + 1) * y_e, minus the
                 * y sum over [32l, 32l+32): the v_e * y_e part by groups of 32, plus the activation-only corr */
                __m256i li = _mm256_loadu_si256((const __m256i *)(c->corr + (t * nb + b) * 8));
                for (int g = 0; g < 8; g++)
                    li = _mm256_add_epi32(li, dot_lanes(wq + b * 256 + g * 32, xq + b * 256 + g * 32));
                const __m256 d = _mm256_set1_ps(c->xd[t * nb + b] * ws[b]);
                const __m256 f = _mm256_cvtepi32_ps(li);
                acc = c->fused ? _mm256_fmadd_ps(f, d, acc) : _mm256_add_ps(_mm256_mul_ps(f, d), acc);
            }
            float lanes[8];
            _mm256_storeu_ps(lanes, acc);
            c->y[t * w->n + r] = hsum8(lanes);
        }
    }
}
#endif

/* y (m, N) = x (m, K) @ W^T for 2-bit ternary weights with 256-blocks (imported TQ2_0), ggml's order.
 * xq_buf: m*K bytes, xd_buf: m*K/256 floats. Returns 0, or -1 on unsupported weights/CPU. */
GX int er_gx_matmul_tq2(const er_weight *w, const float *x, float *y, int64_t m, int fused, int8_t *xq_buf,
                        float *xd_buf) {
#if ER_X86
    if (w->type != ER_W_Q || w->bits != 2 || 256 % w->block_size || w->k % 256 || w->k > 65536) return -1;
    const int64_t nb = w->k / 256;
    int32_t *corr = (int32_t *)malloc((size_t)(m * nb * 8) * sizeof(int32_t));
    if (!corr) return -2;
    for (int64_t t = 0; t < m; t++) {
        q8_k_row(x + t * w->k, w->k, xq_buf + t * w->k, xd_buf + t * nb);
        for (int64_t b = 0; b < nb; b++) {
            const int8_t *yb = xq_buf + t * w->k + b * 256;
            int32_t *cb = corr + (t * nb + b) * 8;
            for (int l = 0; l < 8; l++) cb[l] = 0;
            for (int e = 0; e < 256; e++) {
                cb[(e % 32) / 4] += yb[e];
                cb[e / 32] -= yb[e];
            }
        }
    }
    tq2_ctx c = {w, xq_buf, xd_buf, corr, y, m, fused};
    er_parallel_for(w->n, 1, tq2_task, &c);
    free(corr);
    return 0;
#else
    (void)w; (void)x; (void)y; (void)m; (void)fused; (void)xq_buf; (void)xd_buf;
    return -1;
#endif
}

/* ---- attention pieces ------------------------------------------------------------------------- */

/* C[j*ldc + i] = sum_l A[i*lda + l] * B[j*ldb + l] over rows of f16 values (given as float32),
 * K a multiple of 8: one 8-lane accumulator, fma per 8 values, then hsum (llamafile tinyBLAS<8, __m256>
 * on f16 x f16, AVX2 + F16C). */
GX void er_gx_f16_gemm(const float *A, int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc,
                    int64_t M, int64_t N, int64_t K) {
    for (int64_t j = 0; j < N; j++) {
        for (int64_t i = 0; i < M; i++) {
            float lanes[8] = {0};
            for (int64_t l = 0; l < K; l += 8)
                for (int q = 0; q < 8; q++)
                    lanes[q] = fmaf(A[i * lda + l + q], B[j * ldb + l + q], lanes[q]);
            C[j * ldc + i] = hsum8(lanes);
        }
    }
}

/* Softmax of rows (rows, n) in place after x*scale, keys >= n_valid[r] masked (-inf); n a multiple of 8. */
GX void er_gx_softmax(float *x, int64_t rows, int64_t n, const int64_t *n_valid, float scale) {
    for (int64_t r = 0; r < rows; r++) {
        float *w = x + r * n;
        for (int64_t i = 0; i < n; i++) w[i] = i < n_valid[r] ? w[i] * scale : -INFINITY;
        float max = -INFINITY;
        for (int64_t i = 0; i < n; i++) max = fmaxf(max, w[i]);
        double sum = 0.0;
        for (int64_t i = 0; i < n; i += 8) {
            float v[8];
            for (int q = 0; q < 8; q++) v[q] = w[i + q] = gx_expf(w[i + q] - max);
            sum += (double)hsum8(v);
        }
        const float inv = (float)(1.0 / sum);
        for (int64_t i = 0; i < n; i++) w[i] *= inv;
    }
}

/* RoPE in place on x (T, H, hd): pair (i, i + hd/2) when neox else (2i, 2i+1); theta = pos * base^(-2i/hd)
 * by repeated products as ggml_rope_cache_init; x0*cos - x1*sin contracted like the AVX2 build. */
GX void er_gx_rope(float *x, int64_t T, int64_t H, int64_t hd, const int64_t *pos, float base, int neox) {
    const float theta_scale = powf(base, -2.0f / (float)hd);
    float cs[1024];
    for (int64_t t = 0; t < T; t++) {
        float theta = (float)pos[t];
        for (int64_t i = 0; i < hd / 2; i++) {
            cs[2 * i] = cosf(theta);
            cs[2 * i + 1] = sinf(theta);
            theta *= theta_scale;
        }
        for (int64_t h = 0; h < H; h++) {
            float *v = x + (t * H + h) * hd;
            for (int64_t i = 0; i < hd / 2; i++) {
                float *p0 = neox ? v + i : v + 2 * i, *p1 = neox ? v + i + hd / 2 : v + 2 * i + 1;
                const float x0 = *p0, x1 = *p1, c = cs[2 * i], s = cs[2 * i + 1];
                *p0 = fmaf(x0, c, -(x1 * s));
                *p1 = fmaf(x0, s, x1 * c);
            }
        }
    }
}

/* out = silu(g) * u: ggml_v_silu on groups of 8, the scalar silu on the tail */
GX void er_gx_swiglu(const float *g, const float *u, float *out, int64_t n) {
    const int64_t n8 = n - n % 8;
    for (int64_t i = 0; i < n8; i++) out[i] = (g[i] / (1.0f + gx_expf(0.0f - g[i]))) * u[i];
    for (int64_t i = n8; i < n; i++) out[i] = (g[i] / (1.0f + expf(-g[i]))) * u[i];
}
