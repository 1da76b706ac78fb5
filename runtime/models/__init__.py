"""edgerun.runtime.models."""
