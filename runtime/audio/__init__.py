"""edgerun.runtime.audio."""
