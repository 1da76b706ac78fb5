"""edgerun.quant — block-quantized weight formats (MatMulNBits layout) and GGUF converters.

Public API::

    from edgerun.quant import quantize, dequantize, QuantizedTensor, FORMATS, get_format, from_gguf
    q = quantize(w, "int4", block_size=32)      # w: (N, K) float32 -> QuantizedTensor
    w2 = dequantize(q)                          # (N, K) float32
"""

from edgerun.quant.formats import (
    FORMATS,
    QuantFormat,
    QuantizedTensor,
    dequantize,
    get_format,
    pack_codes,
    pack_zero_points,
    quantize,
    unpack_codes,
    unpack_zero_points,
)
from edgerun.quant.gguf_convert import from_gguf
from edgerun.quant.parts import dequantize_parts, dequantize_rows, quantized_from_parts

__all__ = [
    "FORMATS",
    "QuantFormat",
    "QuantizedTensor",
    "dequantize",
    "dequantize_parts",
    "dequantize_rows",
    "from_gguf",
    "get_format",
    "pack_codes",
    "pack_zero_points",
    "quantize",
    "quantized_from_parts",
    "unpack_codes",
    "unpack_zero_points",
]
