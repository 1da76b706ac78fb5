"""Load the compiled kernel library (``edgerun.kernels._edgerun_kernels``) through ctypes.

ctypes releases the GIL around every foreign call. The library is a plain shared object built by
setup.py from ``kernels/src/*.c``; it is looked up next to this file (``pip install -e .`` or
``python setup.py build_ext --inplace`` puts it there).
"""

from __future__ import annotations

import ctypes
import glob
import os
from ctypes import POINTER, c_double, c_float, c_int, c_int32, c_int64, c_size_t, c_void_p

_here = os.path.dirname(os.path.abspath(__file__))


class ErWeight(ctypes.Structure):
    """Mirror of ``er_weight`` in ``src/edgerun_kernels.h``."""

    _fields_ = [
        ("type", c_int32),
        ("bits", c_int32),
        ("n", c_int64),
        ("k", c_int64),
        ("block_size", c_int32),
        ("zp_hint", c_int32),
        ("data", c_void_p),
        ("scales", c_void_p),
        ("zero_points", c_void_p),
    ]


class ErLayer(ctypes.Structure):
    """Mirror of ``er_layer`` (one decoder layer's weights and vectors for the fused decode)."""

    _fields_ = [
        ("w", c_void_p * 7),
        ("attn_norm", c_void_p),
        ("ffn_norm", c_void_p),
        ("bias", c_void_p * 3),
        ("q_norm", c_void_p),
        ("k_norm", c_void_p),
        ("post_attn_norm", c_void_p),
        ("post_ffw_norm", c_void_p),
        ("rope_theta", c_float),
        ("rope_freq_scale", c_float),
        ("window", c_int64),
    ]


class ErDecodeCfg(ctypes.Structure):
    """Mirror of ``er_decode_cfg`` (model sizes and the decode scratch buffers)."""

    _fields_ = [
        ("dim", c_int64),
        ("n_heads", c_int64),
        ("n_kv_heads", c_int64),
        ("head_dim", c_int64),
        ("ffn_dim", c_int64),
        ("eps", c_float),
        ("attn_scale", c_float),
        ("softcap", c_float),
        ("gelu", c_int32),
        ("kv_f16", c_int32),
        *[(n, c_void_p) for n in ("x", "h", "q", "k", "v", "att", "o", "g", "u")],
    ]


TASK_FN = ctypes.CFUNCTYPE(None, c_void_p, c_int64, c_int64, c_int)

_SIGNATURES = {
    "er_isa_supported": (c_int, [c_int]),
    "er_get_isa": (c_int, []),
    "er_set_isa": (c_int, [c_int]),
    "er_best_isa": (c_int, []),
    "er_set_num_threads": (c_int, [c_int]),
    "er_get_num_threads": (c_int, []),
    "er_set_spin_us": (None, [c_int64]),
    "er_parallel_for": (None, [c_int64, c_int64, TASK_FN, c_void_p]),
    "er_matmul": (c_int, [POINTER(ErWeight), c_void_p, c_void_p, c_int64]),
    "er_matmul_multi": (c_int, [c_void_p, c_int, c_void_p, c_void_p, c_int64]),
    "er_ggml_type_supported": (c_int, [c_int]),
    "er_ggml_type_size": (c_int, [c_int]),
    "er_rmsnorm": (None, [c_void_p, c_void_p, c_void_p, c_int64, c_int64, c_float]),
    "er_rope_neox": (None, [c_void_p, c_int64, c_int64, c_int64, c_float, c_float]),
    "er_rope_rows": (None, [c_void_p, c_int64, c_int64, c_int64, c_void_p, c_void_p]),
    "er_softmax": (None, [c_void_p, c_int64, c_int64]),
    "er_silu": (None, [c_void_p, c_void_p, c_int64]),
    "er_gelu_tanh": (None, [c_void_p, c_void_p, c_int64]),
    "er_mul": (None, [c_void_p, c_void_p, c_void_p, c_int64]),
    "er_silu_mul": (None, [c_void_p, c_void_p, c_void_p, c_int64]),
    "er_gelu_mul": (None, [c_void_p, c_void_p, c_void_p, c_int64]),
    "er_attention": (
        c_int,
        [c_void_p, c_void_p, c_void_p, c_void_p, c_int64, c_int64, c_int64, c_int64, c_int64, c_int,
         c_float, c_float],
    ),
    "er_attention_prefill": (
        c_int,
        [c_void_p, c_void_p, c_void_p, c_void_p, c_int64, c_int64, c_int64, c_int64, c_int64, c_int64, c_int,
         c_float, c_float, c_int64],
    ),
    "er_decode_attn_in": (c_int, [POINTER(ErDecodeCfg), POINTER(ErLayer), c_int64]),
    "er_decode_attn_out": (c_int, [POINTER(ErDecodeCfg), POINTER(ErLayer)]),
    "er_decode_layer": (c_int, [POINTER(ErDecodeCfg), POINTER(ErLayer), c_void_p, c_void_p, c_int64, c_int64]),
    "er_decode_layers": (c_int, [POINTER(ErDecodeCfg), c_void_p, c_void_p, c_void_p, c_int64, c_int64, c_int64]),
    "er_weight_row": (c_int, [POINTER(ErWeight), c_int64, c_float, c_void_p]),
    "er_layer_norm": (None, [c_void_p, c_void_p, c_void_p, c_void_p, c_int64, c_int64, c_float]),
    "er_gelu_erf": (None, [c_void_p, c_void_p, c_int64]),
    "er_attention_seg2": (
        c_int,
        [c_void_p, c_int64, c_void_p, c_void_p, c_int64, c_int64, c_void_p, c_void_p, c_int64, c_int64, c_int64,
         c_int64, c_int, c_void_p, c_int64, c_int64, c_int64, c_int64, c_float],
    ),
    "er_memcpy": (None, [c_void_p, c_void_p, c_size_t]),
    "er_read_sum": (c_double, [c_void_p, c_size_t]),
}


def library_path() -> str:
    """Path of the built extension file, or raise EdgerunError saying how to build it."""
    found = sorted(glob.glob(os.path.join(_here, "_edgerun_kernels*.so")) +
                   glob.glob(os.path.join(_here, "_edgerun_kernels*.pyd")))
    if not found:
        from edgerun.errors import EdgerunError

        raise EdgerunError(
            "the edgerun C kernels are not built; run `pip install -e .` (or "
            "`python setup.py build_ext --inplace`) in the edgerun source folder"
        )
    return found[0]


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(library_path())
    for name, (res, args) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args
    return lib


lib = _load()


# ---- attention over the KIVI KV cache (src/kv_attention.c) ------------------------------------------


class ErKivi(ctypes.Structure):
    """Mirror of ``er_kivi``: one layer of the quantized sink + window cache (runtime/llm/kv_cache.py)."""

    _fields_ = [
        ("bits", c_int32),
        ("group", c_int32),
        ("vgroup", c_int32),
        ("n_blocks", c_int32),
        ("n_kv_heads", c_int64),
        ("head_dim", c_int64),
        ("sinks", c_int64),
        ("window", c_int64),
        *[(n, c_void_p) for n in ("sink_k", "sink_v", "sink_pos", "res_k", "res_v", "res_pos", "qk", "qv",
                                  "qk_scale", "qk_min", "qv_scale", "qv_min", "q_start", "q_sink",
                                  "ring_k", "ring_v", "ring_pos")],
        ("ring_stride", c_int64),
    ]


_KIVI_SIGNATURES = {
    "er_kivi_attention": (
        c_int,
        [POINTER(ErKivi), c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_int64, c_int64, c_int64, c_float,
         c_float],
    ),
    "er_kivi_store": (c_int, [POINTER(ErKivi), c_void_p, c_void_p, c_int64, c_int64]),
    "er_decode_layer_kivi": (c_int, [POINTER(ErDecodeCfg), POINTER(ErLayer), POINTER(ErKivi), c_int64]),
}
for _name, (_res, _args) in _KIVI_SIGNATURES.items():
    _fn = getattr(lib, _name)
    _fn.restype = _res
    _fn.argtypes = _args
