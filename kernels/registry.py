"""Registry ``(op, format) -> kernel``: the C implementation and its numpy reference side by side.

``format`` is the weight format for ``matmul`` (``f32``, ``f16``, ``int8``, ``int4``, ``int4_asym``,
``ternary``, and the GGUF block formats ``q4_1``, ``q5_0``, ``q5_1``, ``q2_k`` .. ``q6_k`` read verbatim), the
KV-cache dtype for ``attention`` (``f32``, ``f16``) and ``f32`` for the other ops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgerun.kernels import ops, reference
from edgerun.quant import FORMATS


@dataclass(frozen=True)
class Kernel:
    """One registered kernel: ``impl`` (C through ctypes) and ``reference`` (numpy)."""

    op: str
    format: str
    impl: Callable
    reference: Callable


REGISTRY: dict[tuple[str, str], Kernel] = {}


def register(op: str, fmt: str, impl: Callable, ref: Callable) -> None:
    """Add (or replace) the kernel for ``(op, fmt)``."""
    REGISTRY[(op, fmt)] = Kernel(op, fmt, impl, ref)


def get(op: str, fmt: str = "f32") -> Kernel:
    """The kernel for ``(op, fmt)``; raises UnsupportedError naming what exists."""
    try:
        return REGISTRY[(op, fmt)]
    except KeyError:
        from edgerun.errors import UnsupportedError

        have = ", ".join(f"{o}/{f}" for o, f in sorted(REGISTRY))
        raise UnsupportedError(f"no kernel for {op}/{fmt}; available: {have}") from None


for _fmt in ("f32", "f16", *sorted(FORMATS), *ops.GGML_TYPES):
    register("matmul", _fmt, ops.matmul, reference.matmul)
for _name in ("rmsnorm", "rope_neox", "softmax", "silu", "gelu_tanh", "mul", "silu_mul", "gelu_mul"):
    register(_name, "f32", getattr(ops, _name), getattr(reference, _name))
for _fmt in ("f32", "f16"):
    register("attention", _fmt, ops.attention, reference.attention)
