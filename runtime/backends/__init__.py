"""Backends that run an artifact's decoder: ``reference`` (numpy), ``native`` (C kernels), ``onnxruntime``,
``tvm`` (the artifact's Apache TVM module).

Each builds an object with the reference Transformer's interface (``args``, ``window(layer)``,
``new_cache()``, ``forward(tokens, cache, last_only)``), so :class:`edgerun.runtime.llm.model.LLM`
drives all of them the same way.
"""

from __future__ import annotations

from edgerun.errors import EdgerunError

BACKENDS = ("auto", "reference", "native", "onnxruntime", "tvm")
PLAIN = ("f16", "f32", "bf16")


def kernels_available() -> bool:
    """Whether edgerun's compiled C kernels load on this machine."""
    try:
        from edgerun import kernels

        kernels.get_num_threads()
        return True
    except Exception:  # noqa: BLE001 - no compiled library (e.g. a source tree never built): numpy only
        return False


def resolve_backend(artifact, backend: str | None) -> str:
    """`auto`/None -> `native` (the C kernels, any weight format) when they load, else `reference`."""
    backend = backend or "auto"
    if backend not in BACKENDS:
        raise EdgerunError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "native" if kernels_available() else "reference"
    return backend


def build_model(artifact, backend: str, ref_model, threads: int | None = None, plan=None, read_cache: str = "drop"):
    """The model object for `backend` (`ref_model` is the reference model, used for its hooks).

    `plan` (a budgeted :class:`edgerun.runtime.memory.MemoryPlan`, native only) streams weights as it says."""
    if backend == "reference":
        return ref_model
    if backend == "native":
        from edgerun.runtime.backends.native import NativeModel

        return NativeModel(artifact, ref_model, threads=threads, plan=plan, read_cache=read_cache)
    if backend == "onnxruntime":
        from edgerun.runtime.backends.onnxruntime import OrtModel

        return OrtModel(artifact, ref_model, threads=threads)
    if backend == "tvm":
        from edgerun.runtime.backends.tvm import TvmModel

        return TvmModel(artifact, ref_model, threads=threads)
    raise EdgerunError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
