"""edgerun.runtime."""
