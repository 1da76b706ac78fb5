"""devices/: CPU features, RAM, Jetson detection, disk read speed, profiles."""

import os

import pytest
from edgerun.devices import cpu_info, detect_profile, disk_read_speed, jetson_info, memory_info
from edgerun.devices.info import parse_cpuinfo, parse_meminfo
from edgerun.devices.profiles import PROFILES, default_threads

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i7
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse4_2 avx avx2 fma f16c
processor\t: 1
model name\t: Intel(R) Core(TM) i7
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse4_2 avx avx2 fma f16c
"""

ARM = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
processor\t: 1
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
"""


def test_parse_x86_cpuinfo():
    info = parse_cpuinfo(X86, arch="x86_64")
    assert info.logical_cores == 2 and info.physical_cores == 1  # hyper-threads share core 0
    assert info.has("avx2") and not info.has("avx512f")
    assert info.simd == "avx2" and "i7" in info.model


def test_parse_aarch64_cpuinfo():
    info = parse_cpuinfo(ARM, arch="aarch64")
    assert info.logical_cores == 2
    assert info.has("asimddp") and info.simd == "neon_dotprod"
    info2 = parse_cpuinfo(ARM.replace(" asimddp", ""), arch="aarch64")
    assert info2.simd == "neon"


def test_this_machine():
    cpu = cpu_info()
    assert cpu.logical_cores >= 1 and cpu.physical_cores >= 1
    assert cpu.simd in ("avx512_vnni", "avx512", "avx2", "neon_dotprod", "neon", "scalar")
    mem = memory_info()
    assert mem.total > 0 and 0 < mem.available <= mem.total
    assert default_threads() >= 1
    assert detect_profile().name in PROFILES


def test_parse_meminfo_units():
    mi = parse_meminfo("MemTotal:       16000 kB\nMemAvailable:    8000 kB\nHugePages_Total:  3\n")
    assert mi["MemTotal"] == 16000 * 1024 and mi["HugePages_Total"] == 3


def test_jetson_detection(tmp_path):
    assert jetson_info(str(tmp_path)) is None
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text(
        "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref\n"
    )
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text("NVIDIA Jetson Orin Nano Developer Kit\x00")
    j = jetson_info(str(tmp_path))
    assert j == {"model": "NVIDIA Jetson Orin Nano Developer Kit", "l4t": "35.4.1", "soc": "", "cuda_arch": ""}


def test_disk_read_speed(tmp_path):
    p = tmp_path / "blob.bin"
    p.write_bytes(os.urandom(8 << 20))
    r = disk_read_speed(str(p), block=1 << 20)
    assert r["bytes"] == 8 << 20 and r["bytes_per_s"] > 0 and r["seconds"] > 0
    r2 = disk_read_speed(str(p), max_bytes=3 << 20, block=1 << 20, direct=True)
    assert r2["bytes"] == 3 << 20  # O_DIRECT or its buffered fallback both read exactly max_bytes
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        disk_read_speed(str(tmp_path / "empty"))


ORIN = os.path.join(os.path.dirname(__file__), "fixtures", "jetson_orin_nano")


def test_jetson_orin_fixture_profile_and_report():
    """A Jetson Orin Nano's /etc, /proc and /sys entries (the real files' layout): detected, and its profile
    decides the defaults a load() would take there."""
    from edgerun.devices.profiles import PROFILES, default_threads, detect_profile, device_report

    j = jetson_info(ORIN)
    assert j["model"].startswith("NVIDIA Jetson Orin Nano") and j["l4t"] == "36.3.0"
    assert j["soc"] == "tegra234" and j["cuda_arch"] == "sm_87"
    cpu = cpu_info(ORIN)
    assert cpu.arch == "aarch64" and cpu.logical_cores == 6 and cpu.simd == "neon_dotprod"
    assert memory_info(ORIN).total == 7802236 * 1024
    assert detect_profile(ORIN) is PROFILES["jetson"]
    assert default_threads(root=ORIN) == 6
    r = device_report(ORIN)
    assert r["jetson"]["cuda_arch"] == "sm_87" and r["profile"]["name"] == "jetson"
    assert r["defaults"]["kv_bits_under_budget"] == 8 and r["defaults"]["max_kv_window"] == 2048


def test_profile_decides_load_defaults(tmp_path, smollm2_gguf):
    """load() takes threads from the profile when none is given, and the budgeted plan its KV bits / window."""
    import edgerun
    from edgerun.devices.profiles import PROFILES
    from tiny_models import make_tiny

    hf, _ = make_tiny("llama", tmp_path, smollm2_gguf)
    path = edgerun.export(hf, tmp_path / "llama.edge", weights="int8")
    m = edgerun.load(path, profile=PROFILES["small-arm"], ram="400MB")
    assert m.plan.kv_bits == 8 and m.plan.kv_window <= 1024 and m.threads >= 1
    m2 = edgerun.load(path, profile=PROFILES["laptop"], ram="400MB")
    assert m2.plan.kv_bits == 16
    m3 = edgerun.load(path, threads=1, profile=PROFILES["small-arm"])
    assert m3.threads == 1 and not m3.budgeted and m3.plan.budget is None
