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


VEC = 8  # f32 lanes of AVX2 (2 x NEON 128-bit; LLVM splits)
ROWS = 16  # output rows per parallel task


def _qmm_schedule(sch, blk, static_t: bool):
    """The fused dequantize-matmul `qmm` (t, n, reduction...): the innermost reduction axis (consecutive bytes
    of a block, or K for plain weights split by VEC) becomes VEC-wide lanes (rfactor) so the dequantize
    vectorizes; output rows in tasks of ROWS across threads; for a prefill the tokens loop sits inside the
    reduction so each weight vector is decoded once for all tokens; the epilogue (bias, activation, residual
    add) runs per task right after its rows."""
    consumers = sch.get_consumers(blk)
    producers = sch.get_producers(blk)
    loops = sch.get_loops(blk)
    t, n, red = loops[0], loops[1], loops[2:]
    inner = red[-1]
    ext = sch.get(inner).extent
    if int(ext) > VEC and int(ext) % VEC == 0 or len(red) == 1:
        _, inner = sch.split(inner, [None, VEC])
    no, ni = sch.split(n, [None, ROWS])
    red = sch.get_loops(blk)[3:]
    if static_t:
        sch.reorder(no, t, ni, *red)
    else:
        sch.reorder(no, ni, *red[:-1], t, red[-1])
    rf = sch.rfactor(inner, factor_axis=2)  # rf (t, n, lanes) accumulates lanes; blk sums them
    rl = sch.get_loops(rf)
    sch.vectorize(rl[-1])
    sch.reverse_compute_at(blk, rl[2] if static_t else rl[1])
    for c in consumers:
        try:
            sch.reverse_compute_at(c, rl[2] if static_t else rl[1])
        except Exception:  # noqa: BLE001 - leave it at the root
            pass
    for p in producers:  # the permuted activations: computed once, in parallel over tokens
        try:
            sch.parallel(sch.get_loops(p)[0])
        except Exception:  # noqa: BLE001
            pass
    sch.parallel(rl[0])


def _below(sch, block, loop) -> list:
    """The loops of `block` nested inside `loop`."""
    loops = sch.get_loops(block)
    i = next(j for j, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(loop)))
    return loops[i + 1:]


def _named(sch, block, loop, names) -> dict:
    """{name: loop} for the loops of `block` inside `loop`, which TVM generated (compute_at) for the iter vars
    `names` in this order, leaving out those of extent 1."""
    from tvm import tirx

    ivs = {iv.var.name.removeprefix("v_"): iv for iv in sch.get(block).iter_vars}
    keep = [n for n in names
            if not (isinstance(ivs[n].dom.extent, tirx.IntImm) and int(ivs[n].dom.extent) == 1)]
    below = _below(sch, block, loop)
    assert len(below) == len(keep), (keep, len(below))
    return dict(zip(keep, below, strict=True))


def _qmm_lanes_schedule(sch, static_t: bool):
    """The packed-format dequantize-matmul (blocks xperm, xsum, qpart, qacc, qcorr, qsum, qmm of
    export/tvm_graph.py `qmatmul_te`): output rows in tasks of ROWS across threads; per row, the LANES-wide
    partial sums of each block (`qpart`: unpack + convert + multiply-add, vectorized over LANES bytes) are
    scaled into `qacc`, then summed and corrected by the zero points; the epilogue (bias, activation,
    residual add) runs right after its rows."""
    qmm = sch.get_sblock("qmm")
    consumers = sch.get_consumers(qmm)
    t, n = sch.get_loops(qmm)
    no, ni = sch.split(n, [None, ROWS])
    sch.reorder(no, ni, t)  # tokens innermost: a row's codes are decoded once for every token of a prefill
    for name in ("qsum", "qcorr", "qacc"):
        sch.compute_at(sch.get_sblock(name), ni)
    acc = sch.get_sblock("qacc")
    lp = _named(sch, acc, ni, ("t", "lane", "ab"))
    ab = lp["ab"]
    sch.reorder(ab, *[lp[k] for k in ("t", "lane") if k in lp])
    part = sch.get_sblock("qpart")
    sch.compute_at(part, ab)
    lp = _named(sch, part, ab, ("t", "lane", "ps", "pj"))
    sch.reorder(*[lp[k] for k in ("ps", "pj", "t", "lane") if k in lp])
    sch.vectorize(sch.get_loops(part)[-1])
    sch.vectorize(sch.get_loops(acc)[-1])
    sch.parallel(no)
    sch.decompose_reduction(part, _below(sch, part, ab)[0])
    sch.decompose_reduction(acc, _below(sch, acc, ni)[0])
    for c in consumers:
        try:
            sch.reverse_compute_at(c, ni)
        except Exception:  # noqa: BLE001 - leave it at the root
            pass
    for name in ("xperm", "xsum"):
        try:
            sch.parallel(sch.get_loops(sch.get_sblock(name))[0])
        except Exception:  # noqa: BLE001
            pass


def _cpu_schedule(func, target):
    """Schedule one PrimFunc for the CPU; returns the new function (unchanged where no rule applies)."""
    from tvm import s_tir, tirx

    sch = s_tir.Schedule(func)
    try:
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001
        return func
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    if "qpart" in names:
        blk = sch.get_sblock("qmm")
        t_ext = sch.get(sch.get_loops(blk)[0]).extent
        try:
            _qmm_lanes_schedule(sch, isinstance(t_ext, tirx.IntImm) and int(t_ext) == 1)
            return sch.mod["main"]
        except Exception:  # noqa: BLE001 - fall back to the generic rule below
            sch = s_tir.Schedule(func)
    elif "qmm" in names:
        blk = sch.get_sblock("qmm")
        t_ext = sch.get(sch.get_loops(blk)[0]).extent
        try:
            _qmm_schedule(sch, blk, isinstance(t_ext, tirx.IntImm) and int(t_ext) == 1)
            return sch.mod["main"]
        except Exception:  # noqa: BLE001 - fall back to the generic rule below
            sch = s_tir.Schedule(func)
    for b in sch.get_child_blocks(sch.get_sblock("root")):
        loops = sch.get_loops(b)
        spatial = [lp for lp, iv in zip(loops, sch.get(b).iter_vars, strict=False)
                   if iv.iter_type == tirx.IterVar.DataPar]
        if len(spatial) >= 2 and len(loops) == len(sch.get(b).iter_vars):
            try:
                sch.parallel(sch.fuse(spatial[0], spatial[1]) if _adjacent(loops, spatial) else spatial[0])
                continue
            except Exception:  # noqa: BLE001
                pass
        if spatial:
            try:
                sch.parallel(spatial[0])
            except Exception:  # noqa: BLE001
                pass
    return sch.mod["main"]


def _adjacent(loops, spatial) -> bool:
    return len(loops) >= 2 and loops[0] == spatial[0] and loops[1] == spatial[1]


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

        rules = (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback())
        simple = (dl.gpu.Fallback(),)  # attention score / value reductions over the cache: one thread per output
        out = tvm.IRModule({}, attrs=mod.attrs)
        for gv, func in mod.functions.items():
            if isinstance(func, tirx.PrimFunc):
                attn = gv.name_hint.startswith(("scores", "attend"))
                one = tvm.IRModule({gv: func})
                with target:
                    one = dl.ApplyDefaultSchedule(*(simple if attn else rules))(one)
                func = one[gv]
            out[gv] = func
        return out
    out = tvm.IRModule({}, attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc):
            func = _cpu_schedule(func, target).with_attr("global_symbol", gv.name_hint)
        out[gv] = func
    return out
