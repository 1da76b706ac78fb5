"""edgerun.devices."""
