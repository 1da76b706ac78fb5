"""The Whisper encoder kernels (src/whisper_ops.c): LayerNorm, exact GELU and two-segment attention against
their numpy references, every variant this CPU runs, odd shapes, 1 and 2 threads."""

import numpy as np
import pytest

ops = pytest.importorskip("edgerun.kernels.ops")
from edgerun.kernels import reference as ref  # noqa: E402

ISAS = ops.available_isas()


@pytest.fixture(params=[1, 2])
def threads(request):
    old = ops.get_num_threads()
    ops.set_num_threads(request.param)
    yield request.param
    ops.set_num_threads(old)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(1, 7), (5, 512), (33, 24), (300, 384)])
def test_layer_norm(isa, shape, threads):
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal(shape) + 1).astype(np.float32)
    g, b = rng.standard_normal((2, shape[-1])).astype(np.float32)
    with ops.use_isa(isa):
        got = ops.layer_norm(x, g, b)
    np.testing.assert_allclose(got, ref.layer_norm(x, g, b), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 9, 4096 * 17 + 5])
def test_gelu_erf(isa, n, threads):
    rng = np.random.default_rng(1)
    x = (4 * rng.standard_normal(n)).astype(np.float32)
    x[:3] = [0.0, -12.0, 12.0][:n] if n >= 3 else x[:3]
    with ops.use_isa(isa):
        got = ops.gelu_erf(x)
        inplace = x.copy()
        ops.gelu_erf(inplace, out=inplace)
    want = ref.gelu_erf(x)
    np.testing.assert_allclose(got, want, atol=2e-6 * 12, rtol=2e-6)
    np.testing.assert_array_equal(inplace, got)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("h,d,t,na,nb,b0,step,f16", [
    (8, 64, 37, 37, 1500, 37, 4, True),  # Whisper: the audio's frames + every 4th frame of the cached window
    (8, 64, 3, 3, 1500, 3, 1, True),     # the decoder: every cached frame
    (2, 64, 5, 5, 0, 0, 1, False),       # one segment only
    (3, 16, 9, 4, 11, 3, 3, False),      # D not a multiple of 64, f32 segment B
    (1, 6, 3, 2, 5, 0, 2, True),         # D not a multiple of 8: scalar path
    (2, 128, 4, 0, 13, 2, 1, True),      # segment A empty
])
def test_attention_seg2(isa, h, d, t, na, nb, b0, step, f16, threads):
    rng = np.random.default_rng(2)
    qkv = rng.standard_normal((t, 3 * h * d)).astype(np.float32)  # q is a column slice of a fused projection
    q = qkv[:, : h * d]
    ka, va = rng.standard_normal((2, h, na, d)).astype(np.float32)
    kb = vb = None
    if nb:
        kb, vb = (2 * rng.standard_normal((2, h, nb, d))).astype(np.float16 if f16 else np.float32)
    with ops.use_isa(isa):
        got = ops.attention_seg2(q, ka, va, kb, vb, b0=b0, b_step=step)
    qh = q.reshape(t, h, d)
    kb_ = kb[:, b0::step] if nb else np.zeros((h, 0, d), np.float32)
    vb_ = vb[:, b0::step] if nb else np.zeros((h, 0, d), np.float32)
    want = ref.attention_seg2(qh, ka, va, kb_, vb_, 1 / np.sqrt(d), step).reshape(t, h * d)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_attention_seg2_rejects_bad_shapes():
    ka = np.zeros((2, 3, 8), np.float32)
    with pytest.raises(ValueError):
        ops.attention_seg2(np.zeros((3, 15), np.float32), ka, ka)
    with pytest.raises(ValueError):
        ops.attention_seg2(np.zeros((3, 16), np.float32), ka, ka, np.zeros((2, 4, 8), np.float16),
                           np.zeros((2, 4, 8), np.float16), b0=5)
