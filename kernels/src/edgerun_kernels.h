/* edgerun kernels: public C API (callable from C and, through ctypes, from Python).
 *
 * Conventions
 *   - row-major, float32 activations; weights are (N, K) "Linear" weights: y = x @ W^T
 *   - block-quantized weights use onnxruntime MatMulNBits' layout (see edgerun/quant/formats.py):
 *       data        uint8  (N, n_blocks, block_size*bits/8), codes packed low-bits-first along K
 *       scales      f16    (N, n_blocks)
 *       zero_points uint8  (N, ceil(n_blocks*bits/8)) packed low-bits-first, or NULL (= 2^(bits-1))
 *     w = scale * (code - zero_point); n_blocks = ceil(K / block_size), K zero-padded.
 *   - every kernel has a portable scalar variant and a vector variant chosen at run time: AVX2/FMA/F16C
 *     on x86-64, NEON on aarch64 with an sdot path when the CPU has dotprod (RoPE stays scalar there);
 *     er_set_isa overrides the choice, for tests and benchmarks. AVX-512/VNNI is not built yet.
 *   - multi-threaded kernels run on a small persistent pthread pool (er_set_num_threads).
 */
#ifndef EDGERUN_KERNELS_H
#define EDGERUN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- CPU dispatch -------------------------------------------------------------------------- */
enum { ER_ISA_SCALAR = 0, ER_ISA_AVX2 = 1, ER_ISA_AVX512 = 2, ER_ISA_NEON = 3 };
int er_isa_supported(int isa);   /* 1 if this CPU (and build) can run variant `isa` */
int er_get_isa(void);            /* variant in use */
int er_set_isa(int isa);         /* force a variant; -1 (default: best) re-detects; returns the one set or -1 */
int er_best_isa(void);

/* ---- thread pool --------------------------------------------------------------------------- */
int er_set_num_threads(int n);   /* 1..64; n <= 0 = number of online CPUs; returns the count set */
int er_get_num_threads(void);
void er_set_spin_us(int64_t us);  /* how long an idle worker busy-waits before it sleeps (default 2000) */
typedef void (*er_task_fn)(void *ctx, int64_t start, int64_t end, int tid);
/* run fn over [0, n) split in contiguous chunks (multiples of `grain`, about 4 per thread) that the
 * caller and the workers claim in turn; tid identifies the running thread (0 = caller), and one thread
 * may run several chunks. Nested calls from inside a task run serially. */
void er_parallel_for(int64_t n, int64_t grain, er_task_fn fn, void *ctx);

/* ---- matmul (GEMV for m == 1, GEMM for m > 1) ---------------------------------------------- */
enum { ER_W_F32 = 0, ER_W_F16 = 1, ER_W_Q = 2 };
/* GGUF block formats, read verbatim (src/ggml_blocks.h, src/matmul_ggml.c): data = each row's GGUF blocks byte
 * for byte, (N, K / block_size, type_size) uint8; block_size = 32 (q4_1, q5_0, q5_1) or 256 (K-quants), K a
 * multiple of it; bits = the nominal width (unused); scales = zero_points = NULL. Activations are quantized on
 * the fly as llama.cpp does for these types: Q8_0 per 32 (with d * sum(q) per block, like block_q8_1) or Q8_K
 * per 256 (f32 d, sums of 16). */
enum {
    ER_W_Q4_1 = 3, ER_W_Q5_0 = 4, ER_W_Q5_1 = 5,
    ER_W_Q2_K = 6, ER_W_Q3_K = 7, ER_W_Q4_K = 8, ER_W_Q5_K = 9, ER_W_Q6_K = 10
};
int er_ggml_type_supported(int type); /* 1 if er_matmul runs er_weight.type `type` (a GGUF block format) */
int er_ggml_type_size(int type);      /* bytes per block of a GGUF block format, 0 if not one */
typedef struct er_weight {
    int32_t type;         /* ER_W_F32 (data float[N][K]), ER_W_F16 (uint16 f16[N][K]), ER_W_Q, ER_W_Q4_1.. */
    int32_t bits;         /* ER_W_Q: 2, 4 or 8 */
    int64_t n, k;
    int32_t block_size;   /* ER_W_Q: power of two, >= 32 */
    int32_t zp_hint;      /* ER_W_Q: 0, or 1 + z when every zero point equals z (kernels then skip them) */
    const void *data;
    const uint16_t *scales;       /* ER_W_Q: f16 (N, n_blocks) */
    const uint8_t *zero_points;   /* ER_W_Q: packed, or NULL */
} er_weight;
/* y (m, N) = x (m, K) @ W^T. Quantized weights: x is quantized to int8 per 32 values on the fly
 * (like llama.cpp's q8 activations). Returns 0, or < 0 on bad arguments. Thread-safe. */
int er_matmul(const er_weight *w, const float *x, float *y, int64_t m);
/* ys[i] (m, N_i) = x (m, K) @ W_i^T for nw <= 8 weights that read the same x (q/k/v, gate/up): x is quantized
 * once when the weights share a kind (type, bits, block size, K, default zero point) and all rows run in one
 * parallel job; other mixes fall back to one er_matmul each. Same results as er_matmul. */
int er_matmul_multi(const er_weight *const *ws, int nw, const float *x, float *const *ys, int64_t m);

/* ---- decode ops (float32, single token unless noted) --------------------------------------- */
void er_rmsnorm(const float *x, const float *w, float *out, int64_t rows, int64_t n, float eps);
/* NEOX / rotate-half RoPE in place on x (n_heads, head_dim): pairs (i, i + head_dim/2),
 * angle = pos * freq_scale * theta^(-2i/head_dim) */
void er_rope_neox(float *x, int64_t n_heads, int64_t head_dim, int64_t pos, float theta, float freq_scale);
/* NEOX RoPE in place on x (rows, n_heads, head_dim) from tables: row t rotated by cos_t/sin_t (rows, head_dim/2)
 * (runtime/models/base.py rope_tables; a prefill block's positions); the products and sums of base.apply_rope,
 * without FMA, so the same floats */
void er_rope_rows(float *x, int64_t rows, int64_t n_heads, int64_t head_dim, const float *cos_t, const float *sin_t);
void er_softmax(float *x, int64_t rows, int64_t n);                /* in place, per row */
void er_silu(const float *x, float *out, int64_t n);
void er_gelu_tanh(const float *x, float *out, int64_t n);
void er_mul(const float *a, const float *b, float *out, int64_t n);
void er_silu_mul(const float *gate, const float *up, float *out, int64_t n);   /* silu(g) * u */
void er_gelu_mul(const float *gate, const float *up, float *out, int64_t n);   /* gelu_tanh(g) * u */
/* One query token, GQA. q (n_heads, head_dim); k, v (n_kv_heads, kv_stride, head_dim) with
 * kv_f16 = 0 (float32) or 1 (f16 as uint16); the first n_ctx positions are valid.
 * out (n_heads, head_dim). scores = scale * q.k (then softcap*tanh(s/softcap) if softcap > 0). */
int er_attention(const float *q, const void *k, const void *v, float *out, int64_t n_heads,
                 int64_t n_kv_heads, int64_t head_dim, int64_t n_ctx, int64_t kv_stride, int kv_f16,
                 float scale, float softcap);

/* Prefill (T query tokens at absolute positions p0..p0+T-1), causal GQA. q (T, n_heads, head_dim) as a
 * q projection writes it; k, v (n_kv_heads, kv_stride, head_dim) f32 (kv_f16 = 0) or f16 caches holding
 * positions 0..p0+T-1; query t sees keys j <= p0 + t with p0 + t - j < window (window <= 0: all).
 * out (T, n_heads, head_dim), ready for the output projection. Returns 0, or < 0 on bad arguments. */
int er_attention_prefill(const float *q, const void *k, const void *v, float *out, int64_t n_heads,
                         int64_t n_kv_heads, int64_t head_dim, int64_t T, int64_t p0, int64_t kv_stride, int kv_f16,
                         float scale, float softcap, int64_t window);

/* ---- fused decode (one token, one call per layer; src/decode.c) ------------------------------ */
typedef struct er_layer {
    const er_weight *w[7];        /* q, k, v, o, gate, up, down */
    const float *attn_norm, *ffn_norm;                   /* (dim) */
    const float *bias[3];         /* q, k, v biases (Qwen2) or NULL */
    const float *q_norm, *k_norm; /* (head_dim) per-head norms (Gemma 3) or NULL */
    const float *post_attn_norm, *post_ffw_norm;         /* (dim) (Gemma 3) or NULL */
    float rope_theta, rope_freq_scale;
    int64_t window;               /* sliding window in positions; <= 0: none */
} er_layer;
typedef struct er_decode_cfg {
    int64_t dim, n_heads, n_kv_heads, head_dim, ffn_dim;
    float eps, attn_scale, softcap;
    int32_t gelu;                 /* 0: SwiGLU (silu(g) * u), 1: GeGLU (gelu_tanh(g) * u) */
    int32_t kv_f16;               /* er_decode_layer's full cache: 0 float32, 1 float16 */
    float *x;                     /* (dim) residual stream, read and updated */
    float *h, *q, *k, *v, *att, *o, *g, *u; /* scratch: (dim), (nh*hd), (nkv*hd) x2, (nh*hd), (dim), (ffn) x2 */
} er_decode_cfg;
/* norm -> q, k, v -> [bias] -> [q/k norm] -> RoPE at pos (pos < 0: no RoPE): leaves q, k, v in the scratch */
int er_decode_attn_in(const er_decode_cfg *c, const er_layer *L, int64_t pos);
/* att -> o -> [norm] -> x += o -> norm -> gate/up -> act -> down -> [norm] -> x += o */
int er_decode_attn_out(const er_decode_cfg *c, const er_layer *L);
/* the whole layer over a full cache k, v (n_kv_heads, capacity, head_dim), float32 or float16 (c->kv_f16):
 * attn_in, k/v stored at pos (rounded to nearest-even f16), attention over [max(0, pos + 1 - window), pos],
 * attn_out. Returns 0, or < 0 on bad arguments. */
int er_decode_layer(const er_decode_cfg *c, const er_layer *L, void *k_cache, void *v_cache, int64_t capacity,
                    int64_t pos);
/* er_decode_layer over layers 0..n-1 in turn (k_caches[i], v_caches[i] the caches of layer i): one call per token */
int er_decode_layers(const er_decode_cfg *c, const er_layer *const *layers, void *const *k_caches,
                     void *const *v_caches, int64_t n, int64_t capacity, int64_t pos);
/* row `row` of a float or ER_W_Q weight as float32 (an embedding lookup): scale * (code - zero point), then times
 * mul unless mul == 1 (the same float operations as the numpy dequantization). Returns 0, -1 on bad arguments,
 * -2 for a weight type it does not read (GGUF block formats). */
int er_weight_row(const er_weight *w, int64_t row, float mul, float *out);

/* ---- bandwidth probes (for benchmarks) ----------------------------------------------------- */
void er_memcpy(void *dst, const void *src, size_t n);   /* threaded memcpy */
double er_read_sum(const float *src, size_t n);         /* threaded streaming read */


/* ---- attention over the KIVI int8/int4/int2 KV cache (src/kv_attention.c) ------------------------- */
/* One layer of runtime/llm/kv_cache.py's quantized sink + window cache (KIVI, quant/kv.py): sinks and the
 * newest < G tokens (the residual) in f16, older tokens in a ring of nb quantized groups of G tokens.
 * Keys per channel over a group ((scale, min) per kv head and channel), values per token over vgroup
 * channels; codes packed low-bits-first along head_dim; x = code * scale + min; scale/min f16.
 * A query at absolute p sees key a iff a <= p and (a < sinks or a > p - window). */
typedef struct er_kivi {
    int32_t bits;              /* 8, 4 or 2 */
    int32_t group;             /* G: tokens per quantized key group (= residual slots) */
    int32_t vgroup;            /* channels per value (scale, min) */
    int32_t n_blocks;          /* nb: quantized groups in the ring */
    int64_t n_kv_heads, head_dim, sinks, window;
    uint16_t *sink_k, *sink_v; /* (n_kv, sinks, hd) f16, keys rotated at their own positions */
    int64_t *sink_pos;         /* (sinks): position or -1 */
    uint16_t *res_k, *res_v;   /* (n_kv, G, hd) f16: token at p >= sinks in slot (p - sinks) % G */
    int64_t *res_pos;          /* (G): position or -1 */
    uint8_t *qk, *qv;          /* (n_kv, nb, G, hd*bits/8) codes: a kv head's groups contiguous */
    uint16_t *qk_scale, *qk_min; /* (n_kv, nb, hd) f16 */
    uint16_t *qv_scale, *qv_min; /* (n_kv, nb, hd/vgroup, G) f16: per channel group, then token; qv_min NULL
                                  * for bits = 8 (symmetric values: min = -128 * scale) */
    int64_t *q_start;          /* (nb): first position of the G consecutive tokens of group b, or -1 */
    float *q_sink;             /* scratch (n_heads * hd) for er_decode_layer_kivi */
    /* bits = 16: the float16 layout instead (er_kivi_attention only; prefill of the f16 cache): one block per kv
     * head [sinks | ring of W slots] (n_kv, ring_stride, hd), slot positions ring_pos (W), n_blocks = ceil(W / 64);
     * sink keys from sink_k (unshifted), sink values the block's first rows; group, vgroup, res_*, q* unused */
    uint16_t *ring_k, *ring_v;
    int64_t *ring_pos;
    int64_t ring_stride;
} er_kivi;
/* Causal GQA attention of T new tokens at p0..p0+T-1 over the cache (as it is before they are stored) plus
 * the new tokens themselves. q (T, n_heads, hd) rotated at each query's position; q_sink (T, n_heads, hd)
 * the queries rotated at min(p, sinks + window - 1) for the sink keys (StreamingLLM in-cache position), or
 * NULL (= q); k_new, v_new (n_kv, T, hd) f32, keys rotated. out (T, n_heads, hd). Quantized keys/values are
 * dequantized per group into an L1 tile shared by the query heads of their kv head; decode (T = 1) splits the
 * keys over the threads and merges the partial softmaxes. Returns 0, or < 0 on bad arguments. */
int er_kivi_attention(const er_kivi *c, const float *q, const float *q_sink, const float *k_new, const float *v_new,
                      float *out, int64_t n_heads, int64_t T, int64_t p0, float scale, float softcap);
/* Store T tokens k, v (n_kv, T, hd) f32 (keys rotated) at positions p0..: sinks, or the residual; a full residual
 * is quantized into ring group ((p - sinks) / G) % nb (the same bytes as quant/kv.py's quantizers). */
int er_kivi_store(const er_kivi *c, const float *k, const float *v, int64_t T, int64_t p0);
/* A whole decode layer over the KIVI cache: attn_in (no RoPE), q/k RoPE at pos (and q at the in-cache position
 * into c->q_sink), er_kivi_attention (T = 1), er_kivi_store, attn_out. The layer's window is the cache's. */
int er_decode_layer_kivi(const er_decode_cfg *cfg, const er_layer *L, const er_kivi *c, int64_t pos);

/* ---- Whisper encoder ops (src/whisper_ops.c) ----------------------------------------------------- */
/* LayerNorm over the last axis of x (rows, n): (x - mean) / sqrt(var + eps) * g + b (threaded over rows) */
void er_layer_norm(const float *x, const float *g, const float *b, float *out, int64_t rows, int64_t n, float eps);
/* GELU, exact form 0.5 x (1 + erf(x / sqrt 2)) (erf to ~1.5e-7 absolute) */
void er_gelu_erf(const float *x, float *out, int64_t n);
/* Non-causal attention of T queries over na + nb keys in two segments, n_heads heads of head_dim:
 *   q      head h of query t at q + t*q_stride + h*head_dim (f32)
 *   ka, va segment A, f32 (n_heads, a_stride, head_dim), rows 0..na-1
 *   kb, vb segment B, f16 (b_f16) or f32 (n_heads, b_stride, head_dim), rows b0, b0 + b_step, .. (nb rows),
 *          each standing for b_step keys (its score gets + log(b_step): a strided sample of a smooth segment)
 *   out    head h of query t at out + t*out_stride + h*head_dim
 * out = softmax(scale q.k) v over both segments. Returns 0, or -1 on bad sizes, -3 out of memory. */
int er_attention_seg2(const float *q, int64_t q_stride, const float *ka, const float *va, int64_t na,
                      int64_t a_stride, const void *kb, const void *vb, int64_t b0, int64_t nb, int64_t b_step,
                      int64_t b_stride, int b_f16, float *out, int64_t out_stride, int64_t n_heads, int64_t head_dim,
                      int64_t T, float scale);

#ifdef __cplusplus
}
#endif
#endif
