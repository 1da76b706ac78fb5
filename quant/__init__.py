"""edgerun.quant — block-quantized weight formats (MatMulNBits layout, verbatim ggml blocks) and GGUF converters.

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
from edgerun.quant.ggml_blocks import BLOCK_TYPES, FORMAT_OF_GGML, dequantize_blocks, from_gguf_blocks
from edgerun.quant.gguf_convert import from_gguf
from edgerun.quant.parts import dequantize_parts, dequantize_rows, quantized_from_parts

# the formats in MatMulNBits layout (quantizable here, codes + f16 scales); the rest are verbatim ggml blocks
MATMULNBITS_FORMATS = tuple(f for f in FORMATS if f not in BLOCK_TYPES)

__all__ = [
    "BLOCK_TYPES",
    "FORMATS",
    "FORMAT_OF_GGML",
    "MATMULNBITS_FORMATS",
    "QuantFormat",
    "QuantizedTensor",
    "dequantize",
    "dequantize_blocks",
    "dequantize_parts",
    "dequantize_rows",
    "from_gguf",
    "from_gguf_blocks",
    "get_format",
    "pack_codes",
    "pack_zero_points",
    "quantize",
    "quantized_from_parts",
    "unpack_codes",
    "unpack_zero_points",
]
