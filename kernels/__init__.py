"""edgerun.kernels — own C kernels (runtime CPU dispatch, persistent thread pool) + numpy references.

Public API (see ``ops.py``; C API in ``src/edgerun_kernels.h``)::

    from edgerun.kernels import Weight, matmul, rmsnorm, rope_neox, softmax, silu, gelu_tanh, mul,
        silu_mul, gelu_mul, attention, attention_prefill, set_num_threads, set_isa, use_isa, available_isas
    w = Weight(quantize(W, "int4"))     # or a float32 / float16 (N, K) array
    y = matmul(w, x)                    # x (K,) -> (N,);  (M, K) -> (M, N)

GGUF block formats (``q4_1``, ``q5_0``, ``q5_1``, ``q2_k`` .. ``q6_k``) run from the GGUF's own blocks: a
``QuantizedTensor(format="q4_k", shape=(N, K), block_size=256, data=(N, K // 256, 144) uint8, scales=None)``
goes to :class:`Weight` as is; ``supported_formats()`` lists what the compiled library runs.

The C library loads on first use of one of these names (PEP 562), so importing the package
costs nothing until a kernel is needed.
"""

from __future__ import annotations

_OPS = (
    "Weight", "as_weight", "matmul", "matmul_multi", "rmsnorm", "rope_neox", "rope_rows", "softmax", "silu",
    "gelu_tanh", "mul", "silu_mul", "gelu_mul", "attention", "attention_prefill", "set_num_threads", "get_num_threads",
    "layer_norm", "gelu_erf", "attention_seg2", "set_spin_us", "set_isa", "get_isa", "use_isa", "isa_supported",
    "available_isas", "supported_formats",
)
__all__ = list(_OPS)


def __getattr__(name: str):
    if name in _OPS:
        from edgerun.kernels import ops

        value = getattr(ops, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgerun.kernels' has no attribute {name!r}")
