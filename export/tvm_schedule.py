"""Schedules for the TVM module of export/tvm_graph.py: lower the Relax ops, fuse, then schedule every PrimFunc.

CPU (llvm): our own rule for the fused dequantize-matmuls (`qmm`: output rows split across threads,
the reduction split per block and unrolled so LLVM vectorizes the dequantize), the rest parallelized over
its outermost spatial loop. CUDA: TVM's dlight rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback),
as the CUDA pipeline of apache-tvm does.
"""

from __future__ import annotations


def _legalize_and_fuse(mod, target):
    import tvm
    from tvm import relax

    seq = [relax.backend.DispatchSampling(), relax.backend.DispatchSortScan(), relax.transform.LegalizeOps(),
           relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(), relax.transform.FuseOps(),
           relax.transform.FuseTIR()]
    with target:
        return tvm.transform.Sequential(seq)(mod)


def _cpu_schedule(func, target):
    """Schedule one PrimFunc for the CPU; returns the new function (or the old one if no rule applies)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []
    if not blocks:
        return func
    # inline injective producers (e.g. a cast or reshape before a matmul), keep the reductions
    for b in blocks[:-1]:
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001 - not inlinable (a reduction): keep the block
            pass
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    main = blocks[-1]
    for b in blocks:
        loops = sch.get_loops(b)
        if loops:
            try:
                sch.parallel(loops[0]) if len(loops) == 1 or b != main else None
            except Exception:  # noqa: BLE001
                pass
    loops = sch.get_loops(main)
    try:
        if len(loops) >= 2:
            fused = sch.fuse(*loops[: len(loops) - _n_reduce(sch, main)]) if _n_reduce(sch, main) else sch.fuse(
                *loops)
            sch.parallel(fused)
    except Exception:  # noqa: BLE001 - leave the loops as they are
        pass
    return sch.mod["main"]


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001
        return False


def _n_reduce(sch, block) -> int:
    from tvm import tirx

    b = sch.get(block)
    return sum(1 for iv in b.iter_vars if iv.iter_type == tirx.IterVar.CommReduce)


def schedule_module(mod, target):
    """Legalize, fuse and schedule `mod` for `target`; returns the module ready for `tvm.compile`."""
    import tvm
    from tvm import tirx

    mod = _legalize_and_fuse(mod, target)
    if target.kind.name == "cuda":
        from tvm.s_tir import dlight as dl

        with target:
            return dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                           dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
    out = tvm.IRModule({}, attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc):
            func = _cpu_schedule(func, target).with_attr("global_symbol", gv.name_hint)
        out[gv] = func
    return out
