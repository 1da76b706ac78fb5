"""Device profiles: the defaults (threads, KV bits, prefetch depth, longest KV window, RAM share) the runtime
takes on a kind of device when the user sets nothing, and :func:`device_report` (what `edgerun devices` prints).

Who uses them: :class:`edgerun.runtime.llm.model.LLM` (threads always; KV bits, window and prefetch depth
under a RAM budget) and the voice assistant through it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgerun.devices.info import cpu_info, jetson_info, memory_info


@dataclass(frozen=True)
class DeviceProfile:
    """Defaults the runtime uses on a kind of device when the user sets nothing."""

    name: str
    threads: int  # 0 = one per physical core
    ram_fraction: float  # suggested budget = this share of available RAM (shown by `edgerun devices`)
    kv_bits: int  # 16 | 8 | 4 | 2, under a RAM budget
    prefetch_layers: int  # layer buffers ahead of the computing one when streaming
    kv_window: int  # longest sliding window a budget may choose


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


def detect_profile(root: str = "/") -> DeviceProfile:
    """Pick the profile for this machine: Jetson when detected, small-arm for aarch64 boards with
    under 4 GB RAM, otherwise laptop. `root` reads another file tree (tests: a real Orin's files)."""
    if jetson_info(root) is not None:
        return PROFILES["jetson"]
    cpu = cpu_info(root)
    if cpu.arch in ("aarch64", "arm64") and memory_info(root).total < (4 << 30):
        return PROFILES["small-arm"]
    return PROFILES["laptop"]


def default_threads(profile: DeviceProfile | None = None, root: str = "/") -> int:
    """Threads for compute: the profile's, or one per physical core (at least 1)."""
    profile = profile or detect_profile(root)
    return profile.threads or max(1, cpu_info(root).physical_cores)


def _kernel_variant() -> str:
    """The variant the C kernels dispatch to here ('' when the compiled library is missing)."""
    try:
        from edgerun import kernels

        return kernels.get_isa()
    except Exception:  # noqa: BLE001 - a source tree never built: numpy only
        return ""


def _disk_speed(folder=None) -> dict:
    """Cold read speed of a 64 MiB file written for the purpose in `folder` (default: the temp folder)."""
    import os
    import tempfile

    from edgerun.devices.disk import disk_read_speed

    fd, tmp = tempfile.mkstemp(prefix="edgerun-disk-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            for _ in range(16):
                f.write(os.urandom(4 << 20))
            f.flush()
            os.fsync(f.fileno())
        return disk_read_speed(tmp, max_bytes=64 << 20)
    finally:
        os.unlink(tmp)


def device_report(root: str = "/", measure_disk: bool = True, disk_dir=None) -> dict:
    """What was detected (CPU, SIMD, kernel variant, cores, RAM, disk read speed, Jetson) and the defaults chosen."""
    cpu, mem = cpu_info(root), memory_info(root)
    profile = detect_profile(root)
    disk = _disk_speed(disk_dir) if measure_disk and root == "/" else None
    return {
        "cpu": {"arch": cpu.arch, "model": cpu.model, "simd": cpu.simd, "kernel_flags": cpu.kernel_flags(),
                "logical_cores": cpu.logical_cores, "physical_cores": cpu.physical_cores},
        "kernel_variant": _kernel_variant() if root == "/" else "",
        "memory": {"total": mem.total, "available": mem.available, "cgroup_limit": mem.cgroup_limit},
        "disk_read_bytes_per_s": disk["bytes_per_s"] if disk else None,
        "jetson": jetson_info(root),
        "profile": asdict(profile),
        "defaults": {"threads": default_threads(profile, root), "kv_bits_under_budget": profile.kv_bits,
                     "prefetch_layers": profile.prefetch_layers, "max_kv_window": profile.kv_window,
                     "suggested_ram": int(mem.available * profile.ram_fraction)},
    }  # fmt: skip
