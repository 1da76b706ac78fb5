"""CPU features, core count, RAM and Jetson detection from /proc and /sys (stdlib only)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

# Flags that matter to the kernels, per ISA, in the spelling /proc/cpuinfo uses.
KERNEL_FLAGS = {
    "x86_64": ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni"),
    "aarch64": ("asimd", "asimddp", "fphp", "asimdhp", "sve", "sve2", "i8mm", "bf16"),
}


@dataclass(frozen=True)
class CpuInfo:
    """What the CPU is: ISA, model name, logical/physical cores, all flags and the kernel-relevant ones."""

    arch: str  # "x86_64" | "aarch64" | ...
    model: str
    logical_cores: int
    physical_cores: int
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def simd(self) -> str:
        """The best kernel variant this CPU can run: avx512_vnni, avx512, avx2, neon_dotprod, neon, scalar."""
        f = self.flags
        if self.arch in ("x86_64", "amd64", "i686"):
            if {"avx512f", "avx512_vnni"} <= f:
                return "avx512_vnni"
            if "avx512f" in f:
                return "avx512"
            if {"avx2", "fma"} <= f:
                return "avx2"
            return "scalar"
        if self.arch in ("aarch64", "arm64"):
            if "asimddp" in f:
                return "neon_dotprod"
            if "asimd" in f or self.arch == "aarch64":
                return "neon"  # NEON is mandatory on ARMv8-A
        return "scalar"

    def kernel_flags(self) -> list[str]:
        """The flags among KERNEL_FLAGS (the ones the C kernels dispatch on) this CPU has."""
        return [f for f in KERNEL_FLAGS.get(self.arch, ()) if f in self.flags]

    def has(self, flag: str) -> bool:
        """True when /proc/cpuinfo lists `flag` (x86 'flags' or ARM 'Features')."""
        return flag in self.flags


def parse_cpuinfo(text: str, arch: str | None = None, root: str = "/") -> CpuInfo:
    """Parse the text of /proc/cpuinfo (x86 or aarch64 layout) into a :class:`CpuInfo`."""
    arch = arch or platform.machine()
    flags: set[str] = set()
    model = ""
    logical = 0
    cores: set[tuple[str, str]] = set()
    phys_id = core_id = ""
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, _, val = line.partition(":")
        key, val = key.strip().lower(), val.strip()
        if key == "processor":
            logical += 1
        elif key in ("flags", "features") and not flags:
            flags = set(val.split())
        elif key in ("model name", "hardware", "cpu model") and not model:
            model = val
        elif key == "physical id":
            phys_id = val
        elif key == "core id":
            core_id = val
            cores.add((phys_id, core_id))
    if not model and arch in ("aarch64", "arm64"):
        model = _read(os.path.join(root, "proc/device-tree/model")).strip("\x00\n ") or "arm64"
    logical = logical or (os.cpu_count() or 1)
    physical = len(cores) or logical
    return CpuInfo(
        arch=arch, model=model, logical_cores=logical, physical_cores=physical, flags=frozenset(flags)
    )


def cpu_info(root: str = "/") -> CpuInfo:
    """Describe this machine's CPU from /proc/cpuinfo; falls back to platform/os when /proc is absent.

    `root` points at another file tree (tests use a real Jetson's files); its ISA is read from the tree."""
    text = _read(os.path.join(root, "proc/cpuinfo"))
    arch = None
    if root != "/":
        arch = "aarch64" if "Features" in text and "flags" not in text else "x86_64"
    info = parse_cpuinfo(text, arch, root)
    if root != "/":
        return info
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else info.logical_cores
    if usable < info.logical_cores:  # containers / taskset: report what we may use
        info = CpuInfo(info.arch, info.model, usable, min(info.physical_cores, usable), info.flags)
    return info


@dataclass(frozen=True)
class MemoryInfo:
    """Total and available RAM, in bytes (MemAvailable: what can be allocated without swapping)."""

    total: int
    available: int
    swap_total: int = 0
    cgroup_limit: int | None = None  # cgroup v2/v1 memory limit when one is set


def parse_meminfo(text: str) -> dict[str, int]:
    """Parse /proc/meminfo text into {key: bytes}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        try:
            n = int(parts[0])
        except ValueError:
            continue
        out[key.strip()] = n * 1024 if len(parts) > 1 and parts[1].lower() == "kb" else n
    return out


def memory_info(root: str = "/") -> MemoryInfo:
    """Total/available RAM from /proc/meminfo, capped by a cgroup memory limit when one applies."""
    mi = parse_meminfo(_read(os.path.join(root, "proc/meminfo")))
    total = mi.get("MemTotal", 0)
    avail = mi.get("MemAvailable", mi.get("MemFree", 0))
    if not total and root == "/" and hasattr(os, "sysconf"):
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError):
            pass
    limit = None
    for path in (os.path.join(root, "sys/fs/cgroup/memory.max"),
                 os.path.join(root, "sys/fs/cgroup/memory/memory.limit_in_bytes")):  # fmt: skip
        raw = _read(path).strip()
        if raw and raw != "max":
            try:
                v = int(raw)
            except ValueError:
                continue
            if 0 < v < total:
                limit = v
            break
    if limit is not None:
        avail = min(avail, limit)
    return MemoryInfo(total=total, available=avail, swap_total=mi.get("SwapTotal", 0), cgroup_limit=limit)


# Tegra SoC (device-tree `compatible`) -> the GPU's CUDA architecture
TEGRA_CUDA_ARCH = {"tegra234": "sm_87", "tegra194": "sm_72", "tegra186": "sm_62", "tegra210": "sm_53"}


def jetson_info(root: str = "/") -> dict[str, str] | None:
    """Return {'model', 'l4t', 'soc', 'cuda_arch'} when this is an NVIDIA Jetson (/etc/nv_tegra_release or a Tegra
    device-tree model), else None. `root` lets tests point at a fake file tree."""
    rel = _read(os.path.join(root, "etc/nv_tegra_release"))
    model = _read(os.path.join(root, "proc/device-tree/model")).strip("\x00\n ")
    compat = _read(os.path.join(root, "proc/device-tree/compatible"))
    compat = compat.lower()
    is_tegra = bool(rel) or "jetson" in model.lower() or "tegra" in compat or "nvidia" in compat
    if not is_tegra:
        return None
    l4t = ""
    if rel:  # "# R35 (release), REVISION: 4.1, GCID: ..."
        head = rel.splitlines()[0]
        parts = [p.strip() for p in head.lstrip("# ").split(",")]
        major = parts[0].split()[0] if parts and parts[0] else ""
        rev = next((p.split(":")[1].strip() for p in parts if p.upper().startswith("REVISION")), "")
        l4t = f"{major}.{rev}".lstrip("R") if major else ""
    soc = next((c.split(",")[1] for c in compat.split("\x00") if c.startswith("nvidia,tegra")), "")
    return {"model": model or "NVIDIA Jetson", "l4t": l4t, "soc": soc, "cuda_arch": TEGRA_CUDA_ARCH.get(soc, "")}


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""
