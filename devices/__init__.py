"""edgerun.devices — what this machine is (stdlib only).

- :func:`cpu_info` / :func:`memory_info` / :func:`jetson_info` in :mod:`edgerun.devices.info`
- :func:`disk_read_speed` in :mod:`edgerun.devices.disk`
- :func:`detect_profile` / :data:`PROFILES` in :mod:`edgerun.devices.profiles`
"""

from edgerun.devices.disk import disk_read_speed
from edgerun.devices.info import CpuInfo, MemoryInfo, cpu_info, jetson_info, memory_info
from edgerun.devices.profiles import PROFILES, DeviceProfile, detect_profile

__all__ = [
    "CpuInfo",
    "MemoryInfo",
    "cpu_info",
    "memory_info",
    "jetson_info",
    "disk_read_speed",
    "DeviceProfile",
    "PROFILES",
    "detect_profile",
]
