"""edgerun.kernels."""
