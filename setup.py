"""Build the C kernel library as part of the package build.

The library is compiled for the baseline of the target ISA; faster variants
(AVX2/FMA, AVX-512/VNNI, NEON dot-product) are selected at run time inside C,
so no `-march=native` ever reaches a distributed build.
"""

import glob
import os

from setuptools import Extension, setup

here = os.path.dirname(os.path.abspath(__file__))
sources = sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "kernels", "src", "*.c")))

ext_modules = []
if sources:
    ext_modules.append(
        Extension(
            "edgerun.kernels._edgerun_kernels",
            sources=sources,
            include_dirs=["kernels/src"],
            extra_compile_args=["-O3", "-std=c11", "-fno-math-errno", "-pthread", "-Wall"],
            extra_link_args=["-pthread", "-lm"],
        )
    )

setup(ext_modules=ext_modules)
