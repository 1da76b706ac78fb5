"""Packed bytes of every format give, through a real onnxruntime MatMulNBits node, dequantize(q) @ x."""

import numpy as np
import pytest
from edgerun.quant import MATMULNBITS_FORMATS, dequantize, quantize

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _session(q, a_dtype):
    """One-node graph: Y = MatMulNBits(A, B, scales[, zero_points]); f16 A gets Cast in/out."""
    from onnx import TensorProto, helper, numpy_helper

    n, k = q.shape
    scales = q.scales.astype(a_dtype)
    inits = [numpy_helper.from_array(q.data, "B"), numpy_helper.from_array(scales, "scales")]
    inputs = ["A16" if a_dtype == np.float16 else "A", "B", "scales"]
    if q.zero_points is not None:
        inits.append(numpy_helper.from_array(q.zero_points, "zero_points"))
        inputs.append("zero_points")
    mm_out = "Y16" if a_dtype == np.float16 else "Y"
    nodes = [helper.make_node("MatMulNBits", inputs, [mm_out], domain="com.microsoft",
                              K=k, N=n, bits=q.bits, block_size=q.block_size)]
    if a_dtype == np.float16:
        nodes.insert(0, helper.make_node("Cast", ["A"], ["A16"], to=TensorProto.FLOAT16))
        nodes.append(helper.make_node("Cast", ["Y16"], ["Y"], to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


CASES = [(f, None) for f in sorted(MATMULNBITS_FORMATS)] + [("int4", 64), ("int4", 128), ("int4_asym", 128),
                                                ("ternary", 64), ("ternary", 32)]


@pytest.mark.parametrize("fmt,bs", CASES)
@pytest.mark.parametrize("shape", [(48, 256), (33, 200)])  # second: K not a block multiple
def test_matmulnbits_matches_dequantize(fmt, bs, shape):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    x = rng.standard_normal((3, shape[1])).astype(np.float32)
    q = quantize(w, fmt, bs)
    ref = x @ dequantize(q).T  # (3, N)
    # f32 A (scales cast to f32): checks the layout to f32 rounding
    y32 = _session(q, np.float32).run(None, {"A": x})[0]
    np.testing.assert_allclose(y32, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # f16 A with the stored f16 scales (the artifact's graph): f16 output rounding
    y16 = _session(q, np.float16).run(None, {"A": x})[0]
    np.testing.assert_allclose(y16, ref, rtol=0, atol=4e-3 * np.abs(ref).max())
