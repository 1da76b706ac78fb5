/* Fused decode (one token): a whole transformer layer per call, so the Python loop makes one foreign call per
 * layer instead of ~16. The math and its float order are those of the per-op path in
 * runtime/backends/native.py (each step is the same kernel call or the same elementwise float operation):
 *
 *   attn_in:  h = rmsnorm(x) ; q, k, v = h @ Wq^T, Wk^T, Wv^T (one er_matmul_multi) ; [+ bias]
 *             [q, k = rmsnorm per head (Gemma)] ; [RoPE q, k at pos]
 *   layer:    attn_in ; k, v -> cache[:, pos] ; att = attention(q, cache[:, start:pos+1])
 *   attn_out: o = att @ Wo^T ; [o = rmsnorm(o)] ; x += o ; h = rmsnorm(x) ; g, u = h @ Wg^T, Wu^T (one call)
 *             g = act(g) * u ; o = g @ Wd^T ; [o = rmsnorm(o)] ; x += o
 */
#include <math.h>
#include <stdlib.h>

#include "edgerun_kernels.h"
#include "er_internal.h"

/* er_rope_neox's angles, computed once for q and k (the same double math, so the same floats) */
static void rope_apply(float *x, int64_t n_heads, int64_t head_dim, const float *c, const float *s) {
    const int64_t half = head_dim / 2;
    for (int64_t i = 0; i < half; i++)
        for (int64_t h = 0; h < n_heads; h++) {
            float *xh = x + h * head_dim;
            float a = xh[i], b = xh[i + half];
            xh[i] = a * c[i] - b * s[i];
            xh[i + half] = a * s[i] + b * c[i];
        }
}

/* the cos/sin of the last few (theta, scale, head_dim, pos) met: a token's layers share one or two RoPE bases
 * (Gemma-3: local and global), so each table is computed once per token instead of once per layer */
#define ROPE_MEMO 4
#define ROPE_MEMO_HALF 256
static _Thread_local struct {
    float theta, fscale;
    int64_t hd, pos;
    int valid;
    float cs[2 * ROPE_MEMO_HALF];
} rope_memo[ROPE_MEMO];
static _Thread_local int rope_memo_next = 0;

static int rope_qk(const er_decode_cfg *c, const er_layer *L, int64_t pos) {
    const int64_t hd = c->head_dim, half = hd / 2;
    float *cs = NULL;
    int memo = half <= ROPE_MEMO_HALF;
    if (memo) {
        for (int i = 0; i < ROPE_MEMO && !cs; i++)
            if (rope_memo[i].valid && rope_memo[i].pos == pos && rope_memo[i].hd == hd &&
                rope_memo[i].theta == L->rope_theta && rope_memo[i].fscale == L->rope_freq_scale)
                cs = rope_memo[i].cs;
    }
    if (!cs) {
        if (memo) {
            const int i = rope_memo_next;
            rope_memo_next = (rope_memo_next + 1) % ROPE_MEMO;
            rope_memo[i].valid = 0;
            cs = rope_memo[i].cs;
        } else if (!(cs = (float *)malloc(sizeof(float) * 2 * (size_t)half))) {
            return -3;
        }
        for (int64_t i = 0; i < half; i++) {
            double inv = pow((double)L->rope_theta, -2.0 * (double)i / (double)hd);
            double ang = (double)pos * (double)L->rope_freq_scale * inv;
            cs[i] = (float)cos(ang);
            cs[half + i] = (float)sin(ang);
        }
        if (memo) {
            const int i = (rope_memo_next + ROPE_MEMO - 1) % ROPE_MEMO;
            rope_memo[i].theta = L->rope_theta;
            rope_memo[i].fscale = L->rope_freq_scale;
            rope_memo[i].hd = hd;
            rope_memo[i].pos = pos;
            rope_memo[i].valid = 1;
        }
    }
    rope_apply(c->q, c->n_heads, hd, cs, cs + half);
    rope_apply(c->k, c->n_kv_heads, hd, cs, cs + half);
    if (!memo) free(cs);
    return 0;
}

static void add_inplace(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

static int check_cfg(const er_decode_cfg *c, const er_layer *L) {
    if (!c || !L || c->dim < 1 || c->n_heads < 1 || c->n_kv_heads < 1 || c->head_dim < 2 || c->ffn_dim < 1 ||
        c->n_heads % c->n_kv_heads || !c->x || !c->h || !c->q || !c->k || !c->v || !c->att || !c->o || !c->g || !c->u)
        return -1;
    for (int i = 0; i < 7; i++)
        if (!L->w[i]) return -1;
    if (!L->attn_norm || !L->ffn_norm) return -1;
    return 0;
}

int er_decode_attn_in(const er_decode_cfg *c, const er_layer *L, int64_t pos) {
    int r = check_cfg(c, L);
    if (r) return r;
    const int64_t hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    er_rmsnorm(c->x, L->attn_norm, c->h, 1, c->dim, c->eps);
    const er_weight *qkv[3] = {L->w[0], L->w[1], L->w[2]};
    float *ys[3] = {c->q, c->k, c->v};
    r = er_matmul_multi(qkv, 3, c->h, ys, 1);
    if (r) return r;
    if (L->bias[0]) {
        add_inplace(c->q, L->bias[0], nh * hd);
        add_inplace(c->k, L->bias[1], nkv * hd);
        add_inplace(c->v, L->bias[2], nkv * hd);
    }
    if (L->q_norm) er_rmsnorm(c->q, L->q_norm, c->q, nh, hd, c->eps);
    if (L->k_norm) er_rmsnorm(c->k, L->k_norm, c->k, nkv, hd, c->eps);
    return pos >= 0 ? rope_qk(c, L, pos) : 0;
}

int er_decode_attn_out(const er_decode_cfg *c, const er_layer *L) {
    int r = check_cfg(c, L);
    if (r) return r;
    if ((r = er_matmul(L->w[3], c->att, c->o, 1))) return r;
    if (L->post_attn_norm) er_rmsnorm(c->o, L->post_attn_norm, c->o, 1, c->dim, c->eps);
    add_inplace(c->x, c->o, c->dim);
    er_rmsnorm(c->x, L->ffn_norm, c->h, 1, c->dim, c->eps);
    const er_weight *gu[2] = {L->w[4], L->w[5]};
    float *ys[2] = {c->g, c->u};
    if ((r = er_matmul_multi(gu, 2, c->h, ys, 1))) return r;
    if (c->gelu) er_gelu_mul(c->g, c->u, c->g, c->ffn_dim);
    else er_silu_mul(c->g, c->u, c->g, c->ffn_dim);
    if ((r = er_matmul(L->w[6], c->g, c->o, 1))) return r;
    if (L->post_ffw_norm) er_rmsnorm(c->o, L->post_ffw_norm, c->o, 1, c->dim, c->eps);
    add_inplace(c->x, c->o, c->dim);
    return 0;
}

/* k, v (n_kv, hd) of this token -> cache[h, pos], float32 or float16 */
static void store_kv(const er_decode_cfg *c, void *k_cache, void *v_cache, int64_t capacity, int64_t pos) {
    const int64_t hd = c->head_dim, nkv = c->n_kv_heads;
    for (int64_t h = 0; h < nkv; h++) {
        const int64_t at = (h * capacity + pos) * hd;
        if (c->kv_f16) {
            uint16_t *kd = (uint16_t *)k_cache + at, *vd = (uint16_t *)v_cache + at;
            for (int64_t i = 0; i < hd; i++) kd[i] = er_f32_to_f16(c->k[h * hd + i]);
            for (int64_t i = 0; i < hd; i++) vd[i] = er_f32_to_f16(c->v[h * hd + i]);
        } else {
            memcpy((float *)k_cache + at, c->k + h * hd, sizeof(float) * (size_t)hd);
            memcpy((float *)v_cache + at, c->v + h * hd, sizeof(float) * (size_t)hd);
        }
    }
}

int er_decode_layer(const er_decode_cfg *c, const er_layer *L, void *k_cache, void *v_cache, int64_t capacity,
                    int64_t pos) {
    if (!k_cache || !v_cache || pos < 0 || capacity <= pos) return -1;
    int r = er_decode_attn_in(c, L, pos);
    if (r) return r;
    const int64_t hd = c->head_dim, es = c->kv_f16 ? 2 : 4;
    store_kv(c, k_cache, v_cache, capacity, pos);
    const int64_t start = L->window > 0 && pos + 1 > L->window ? pos + 1 - L->window : 0;
    r = er_attention(c->q, (const char *)k_cache + start * hd * es, (const char *)v_cache + start * hd * es, c->att,
                     c->n_heads, c->n_kv_heads, hd, pos + 1 - start, capacity, c->kv_f16 ? 1 : 0, c->attn_scale,
                     c->softcap);
    if (r) return r;
    return er_decode_attn_out(c, L);
}

int er_decode_layers(const er_decode_cfg *c, const er_layer *const *layers, void *const *k_caches,
                     void *const *v_caches, int64_t n, int64_t capacity, int64_t pos) {
    if (!layers || !k_caches || !v_caches || n < 0) return -1;
    for (int64_t i = 0; i < n; i++) {
        int r = er_decode_layer(c, layers[i], k_caches[i], v_caches[i], capacity, pos);
        if (r) return r;
    }
    return 0;
}

int er_weight_row(const er_weight *w, int64_t row, float mul, float *out) {
    if (!w || !out || !w->data || row < 0 || row >= w->n || w->k < 1) return -1;
    const int64_t k = w->k;
    if (w->type == ER_W_F32) {
        const float *r = (const float *)w->data + row * k;
        for (int64_t i = 0; i < k; i++) out[i] = r[i];
    } else if (w->type == ER_W_F16) {
        const uint16_t *r = (const uint16_t *)w->data + row * k;
        for (int64_t i = 0; i < k; i++) out[i] = er_f16_to_f32(r[i]);
    } else if (w->type == ER_W_Q) {
        const int bits = w->bits, bs = w->block_size;
        if (!(bits == 2 || bits == 4 || bits == 8) || bs < 1 || (bs * bits) % 8 || !w->scales) return -1;
        const int64_t nb = (k + bs - 1) / bs, row_bytes = nb * (bs * bits / 8), zp_bytes = (nb * bits + 7) / 8;
        const uint8_t *r = (const uint8_t *)w->data + row * row_bytes;
        const uint8_t *zp = w->zero_points ? w->zero_points + row * zp_bytes : NULL;
        const uint16_t *sc = w->scales + row * nb;
        const int mask = (1 << bits) - 1, per = 8 / bits;
        for (int64_t b = 0; b < nb; b++) {
            const float s = er_f16_to_f32(sc[b]);
            const int z = zp ? (zp[b * bits >> 3] >> (b * bits & 7)) & mask : 1 << (bits - 1);
            for (int64_t e = b * bs; e < (b + 1) * bs && e < k; e++) {
                const int code = (r[e / per] >> (e % per * bits)) & mask;
                out[e] = (float)(code - z) * s;
            }
        }
    } else {
        return -2;
    }
    if (mul != 1.0f)
        for (int64_t i = 0; i < k; i++) out[i] = out[i] * mul;
    return 0;
}
