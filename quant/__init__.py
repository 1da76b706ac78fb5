"""edgerun.quant."""
