"""Write a GGUF with the same metadata as another, its weights converted to one ggml type.

Used to give llama.cpp exactly the weights edgerun runs: F32 (dequantized, so both run
the same numbers), or Q8_0 / Q4_0 / TQ2_0 made by `gguf`'s own quantizers for the
quantized-kernel comparisons. 1-D tensors (norms, biases) stay F32, as llama.cpp wants.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from edgerun.export.gguf_reader import open_gguf


def retype_gguf(src: str | os.PathLike, dst: str | os.PathLike, ggml_type: str = "F32", progress=None) -> Path:
    """Write `dst`: `src`'s metadata and tensors, every matrix re-encoded as `ggml_type`.

    A matrix whose row length does not fit the type's block size is kept as F32.
    Written to a temporary name and renamed, so `dst` is complete or absent.
    """
    import gguf
    from gguf.quants import dequantize, quantize

    qtype = gguf.GGMLQuantizationType[ggml_type]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    reader = open_gguf(src)
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".part")
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(tmp), arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        if field.name == "general.file_type":
            continue
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    n = len(reader.tensors)
    for i, t in enumerate(reader.tensors):
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        w = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        if w.ndim >= 2 and qtype != gguf.GGMLQuantizationType.F32 and shape[-1] % block == 0:
            data = quantize(w, qtype)
            writer.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(t.name, w)
        if progress:
            progress(i + 1, n, t.name)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(dst)
    return dst
