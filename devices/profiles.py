"""Device profiles: defaults (threads, RAM budget share, KV bits, prefetch depth) per kind of device."""

from __future__ import annotations

from dataclasses import dataclass

from edgerun.devices.info import cpu_info, jetson_info, memory_info


@dataclass(frozen=True)
class DeviceProfile:
    """Defaults the runtime uses on a kind of device when the user sets nothing."""

    name: str
    threads: int  # 0 = one per physical core
    ram_fraction: float  # default budget = this share of available RAM
    kv_bits: int  # 16 | 8 | 4 | 2
    prefetch_layers: int  # layer buffers ahead of the computing one when streaming
    kv_window: int  # default sliding window when the budget allows it


PROFILES: dict[str, DeviceProfile] = {
    "laptop": DeviceProfile(
        "laptop", threads=0, ram_fraction=0.5, kv_bits=16, prefetch_layers=2, kv_window=4096
    ),
    "jetson": DeviceProfile(
        "jetson", threads=0, ram_fraction=0.4, kv_bits=8, prefetch_layers=2, kv_window=2048
    ),
    "small-arm": DeviceProfile(
        "small-arm", threads=0, ram_fraction=0.3, kv_bits=8, prefetch_layers=1, kv_window=1024
    ),
}


def detect_profile() -> DeviceProfile:
    """Pick the profile for this machine: Jetson when detected, small-arm for aarch64 boards with
    under 4 GB RAM, otherwise laptop."""
    if jetson_info() is not None:
        return PROFILES["jetson"]
    cpu = cpu_info()
    if cpu.arch in ("aarch64", "arm64") and memory_info().total < (4 << 30):
        return PROFILES["small-arm"]
    return PROFILES["laptop"]


def default_threads(profile: DeviceProfile | None = None) -> int:
    """Threads for compute: the profile's, or one per physical core (at least 1)."""
    profile = profile or detect_profile()
    return profile.threads or max(1, cpu_info().physical_cores)
