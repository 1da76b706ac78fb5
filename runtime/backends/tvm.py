"""The TVM backend: the artifact's `tvm/llvm.so` (export/tvm_build.py) run by TVM's Relax VM on the host CPU.

Weights are the artifact's weights.bin parts, handed to the module as they are stored (a GGUF block tensor
is dequantized to f16 once, in memory). The KV cache is explicit state: per layer k, v (n_kv, length, hd)
TVM tensors returned by one call and passed to the next (:class:`TvmKVCache`).
"""

from __future__ import annotations

import zlib

import numpy as np
from edgerun.errors import CorruptFileError, EdgerunError
from edgerun.export.artifact import Artifact

HOST_TARGET = "tvm-llvm"


class TvmKVCache:
    """KV state of one sequence: per layer k, v TVM tensors (n_kv, length, head_dim) float32."""

    def __init__(self, empty, n_layers: int, limit: int):
        self.n_layers, self.limit, self._empty = n_layers, limit, empty
        self.reset()

    def reset(self) -> None:
        self.kv = [self._empty] * (2 * self.n_layers)
        self.length = 0


def _weight_arrays(art: Artifact, params: list, device):
    """TVM tensors for the module's weight parameters, in the manifest's order."""
    import tvm
    from edgerun.quant import BLOCK_TYPES, dequantize_parts

    out = []
    for name, part in params:
        e = art.tensors.get(name)
        if e is None:
            raise CorruptFileError(f"{art.path}: the TVM module wants tensor {name!r}, which the artifact lacks; "
                                   "compile it again (`edgerun compile ART --target tvm-llvm`)")
        if part == "dequant":
            assert e["format"] in BLOCK_TYPES
            arr = dequantize_parts(e, {p: art.part(name, p) for p in e["parts"]}).astype(np.float16)
        else:
            arr = art.part(name, part)
            if e["format"] == "bf16" and part == "data":
                arr = arr.view(np.uint16)
        out.append(tvm.runtime.tensor(np.ascontiguousarray(arr), device))
    return out


class TvmModel:
    """Forward of a decoder-only model through the compiled TVM module; the reference Transformer's interface."""

    def __init__(self, artifact: Artifact, ref, threads: int | None = None, target: str = HOST_TARGET):
        from edgerun.export.tvm_build import library_name, require_tvm

        tvm = require_tvm()
        from tvm import relax

        self.artifact, self.ref, self.args = artifact, ref, ref.args
        info = artifact.manifest.get("tvm", {}).get(target)
        if info is None:
            raise EdgerunError(f"{artifact.path}: no {target} module in this artifact; add it with "
                               f"`edgerun compile {artifact.path} --target {target}`")
        lib = artifact.path / library_name(target)
        rec = artifact.manifest["files"].get(info["library"])
        if not lib.exists():
            raise CorruptFileError(f"{lib}: missing; compile it again (`edgerun compile {artifact.path} "
                                   f"--target {target}`)")
        if rec is None or zlib.crc32(lib.read_bytes()) != rec["crc32"]:
            raise CorruptFileError(f"{lib}: checksum mismatch; compile it again (`edgerun compile "
                                   f"{artifact.path} --target {target}`)")
        if threads:
            tvm.get_global_func("runtime.config_threadpool")(0, int(threads))
        self.device = tvm.cpu()
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), self.device)
        self.weights = _weight_arrays(artifact, info["params"], self.device)
        self._fns = {n: self.vm[n] for n in ("prefill", "prefill_last")}
        try:  # the T=1 function (a module built without one runs the step with prefill_last)
            self._fns["decode"] = self.vm["decode"]
        except Exception:  # noqa: BLE001 - AttributeError / KeyError / tvm error, depending on the version
            self._fns["decode"] = self._fns["prefill_last"]
        a = self.args
        self._empty = tvm.runtime.tensor(np.zeros((a.n_kv_heads, 0, a.head_dim), np.float32), self.device)
        self._tvm = tvm

    def window(self, layer: int):
        return self.ref.window(layer)

    def new_cache(self) -> TvmKVCache:
        return TvmKVCache(self._empty, self.args.n_layers, self.args.context_length)

    def forward(self, tokens, cache: TvmKVCache, last_only: bool = False) -> np.ndarray:
        """Run tokens (T,) at positions cache.length..; returns logits (T, vocab) or (1, vocab)."""
        tokens = np.asarray(tokens, dtype=np.int32).reshape(-1)
        T = len(tokens)
        if cache.length + T > cache.limit:
            raise EdgerunError(f"the conversation needs {cache.length + T} positions; this model's context "
                               f"is {cache.limit}")
        fn = self._fns["decode" if T == 1 else ("prefill_last" if last_only else "prefill")]
        out = fn(self._tvm.runtime.tensor(tokens, self.device), *cache.kv, *self.weights)
        cache.kv = list(out[1:])
        cache.length += T
        return out[0].numpy()
