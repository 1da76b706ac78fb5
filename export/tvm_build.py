"""`compile_tvm(artifact_dir, targets)`: compile the artifact's decoder with Apache TVM and add it to the artifact.

Targets (the name is what `--target` takes and what `manifest["targets"]` lists):

| name | TVM target | output |
|---|---|---|
| `tvm-llvm` | llvm for this host's CPU (`mcpu` = LLVM's name for it) | `tvm/llvm.so` |
| `tvm-aarch64` | llvm `aarch64-linux-gnu`, ARMv8.2-A + dotprod + NEON (Cortex-A76 class) | `tvm/aarch64.so` |
| `tvm-cuda` | cuda sm_87 (Jetson Orin), aarch64 host code | `tvm/cuda-sm87.so` |
| `tvm-cuda-sm90` | cuda sm_90 (Hopper), x86-64 host code | `tvm/cuda-sm90.so` |

Each library holds the Relax VM executable of export/tvm_graph.py (prefill, prefill_last, decode) scheduled
for its target (export/tvm_schedule.py: our CPU schedules, dlight rules on CUDA). The weights stay in
weights.bin; `manifest["tvm"][name]` records the library file, the weight parameter order and the target.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from edgerun.errors import EdgerunError
from edgerun.export.artifact import Artifact

TVM_TARGETS = ("tvm-llvm", "tvm-aarch64", "tvm-cuda", "tvm-cuda-sm90")
TVM_DIR = "tvm"
INSTALL_HINT = "install it with `pip install 'edgerun[tvm]'` (apache-tvm 0.27)"


def require_tvm():
    """Import tvm, or raise a one-line EdgerunError saying how to install it."""
    try:
        import tvm
    except ImportError:
        raise EdgerunError(f"the TVM backend needs Apache TVM, which is not installed; {INSTALL_HINT}") from None
    return tvm


def target_spec(name: str) -> dict:
    """The TVM target dict for a target name (one of TVM_TARGETS)."""
    tvm = require_tvm()
    aarch64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
               "mattr": ["+neon", "+v8.2a", "+dotprod", "+fullfp16"]}
    if name == "tvm-llvm":
        return {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}
    if name == "tvm-aarch64":
        return aarch64
    if name == "tvm-cuda":
        return {"kind": "cuda", "arch": "sm_87", "max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
                "thread_warp_size": 32, "host": aarch64}
    if name == "tvm-cuda-sm90":
        return {"kind": "cuda", "arch": "sm_90", "max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
                "thread_warp_size": 32, "host": {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}}
    raise EdgerunError(f"unknown TVM target {name!r}; choose from {', '.join(TVM_TARGETS)}")


def library_name(name: str) -> str:
    """Relative path of a target's library inside the artifact."""
    return f"{TVM_DIR}/" + {"tvm-llvm": "llvm", "tvm-aarch64": "aarch64", "tvm-cuda": "cuda-sm87",
                            "tvm-cuda-sm90": "cuda-sm90"}[name] + ".so"


def compile_module(art: Artifact, name: str, progress=None):
    """Build + schedule + compile the artifact's module for target `name`; returns (executable, specs, target)."""
    tvm = require_tvm()
    from edgerun.export.tvm_graph import SUPPORTED_ARCHS, build_irmodule
    from edgerun.export.tvm_schedule import schedule_module
    from edgerun.runtime.models import get_model_class

    if art.arch not in SUPPORTED_ARCHS:
        raise EdgerunError(f"TVM export supports {', '.join(SUPPORTED_ARCHS)}, not {art.arch!r}; "
                           "use backend='native' for this model")
    model_cls, args_cls = get_model_class(art.arch)
    ref = model_cls(args_cls.from_dict(art.config), None)
    target = tvm.target.Target(target_spec(name))
    mod, specs = build_irmodule(art, ref)
    if progress:
        progress("schedule")
    mod = schedule_module(mod, target)
    if progress:
        progress("codegen")
    ex = tvm.compile(mod, target=target)
    return ex, specs, target


def _export(ex, path: Path, name: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.so")
    if name == "tvm-llvm":
        ex.export_library(str(tmp))
    else:
        from tvm.support import cc

        host = "x86_64" if name == "tvm-cuda-sm90" else "aarch64"
        if host == "aarch64":
            ex.export_library(str(tmp), fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
        else:
            ex.export_library(str(tmp))
    os.replace(tmp, path)


def compile_tvm(artifact_dir: str | os.PathLike, targets, progress=None) -> list[Path]:
    """Compile the artifact for each TVM target name and record it in the manifest; returns the libraries.

    `progress(done, total, item)` is called as the work moves on (4 stages per target: build the Relax program,
    schedule, code generation, write the library)."""
    from edgerun.export.onnx_graph import update_manifest

    require_tvm()
    art = Artifact(artifact_dir)
    out, targets = [], list(dict.fromkeys(targets))
    for name in targets:
        if name not in TVM_TARGETS:
            raise EdgerunError(f"unknown TVM target {name!r}; choose from {', '.join(TVM_TARGETS)}")
    total, step = 4 * len(targets), [0]

    def report(item: str) -> None:
        if progress:
            progress(step[0], total, item)
        step[0] += 1

    for name in targets:
        report(f"{name}: Relax program")
        ex, specs, target = compile_module(art, name, lambda st, n=name: report(f"{n}: {st}"))
        report(f"{name}: write {library_name(name)}")
        lib = art.path / library_name(name)
        lib.parent.mkdir(exist_ok=True)
        _export(ex, lib, name)
        data = lib.read_bytes()
        import tvm

        def add(m: dict, name=name, specs=specs, target=target, data=data, lib=library_name(name)) -> None:
            if name not in m.setdefault("targets", []):
                m["targets"].append(name)
            m["files"][lib] = {"crc32": zlib.crc32(data), "nbytes": len(data)}
            m.setdefault("tvm", {})[name] = {
                "library": lib, "tvm_version": tvm.__version__, "target": str(target.export()),
                "params": [[s.tensor, s.part] for s in specs]}

        update_manifest(art.path, add)
        out.append(lib)
    if progress:
        progress(total, total, "done")
    return out
