"""edgerun.export."""
