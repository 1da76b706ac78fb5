"""Measured disk read speed of a file, as cold as the OS lets us make it (stdlib only)."""

from __future__ import annotations

import os
import time


def drop_file_cache(path: str) -> bool:
    """Ask the kernel to drop `path`'s pages from the page cache (posix_fadvise DONTNEED).

    Returns True when the advice was given. Dirty or mapped pages may stay, so the next
    read is "cold-ish": a best effort without root."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def disk_read_speed(
    path: str, max_bytes: int = 256 << 20, block: int = 4 << 20, cold: bool = True, direct: bool = False
) -> dict:
    """Read up to `max_bytes` of `path` in `block`-sized chunks and return the speed.

    cold: drop the file from the page cache first (posix_fadvise DONTNEED).
    direct: read with O_DIRECT (bypasses the page cache; falls back to buffered when refused).
    Returns {'bytes', 'seconds', 'bytes_per_s', 'gb_per_s', 'cold', 'direct'}.
    """
    size = os.path.getsize(path)
    n = min(size, max_bytes)
    if n <= 0:
        raise ValueError(f"{path} is empty: cannot measure its read speed")
    dropped = drop_file_cache(path) if cold else False
    flags = os.O_RDONLY
    used_direct = False
    if direct and hasattr(os, "O_DIRECT"):
        try:
            fd = os.open(path, flags | os.O_DIRECT)
            used_direct = True
        except OSError:
            fd = os.open(path, flags)
    else:
        fd = os.open(path, flags)
    import mmap

    buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT requires
    mv = memoryview(buf)
    done = 0
    try:
        if not used_direct and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, n, os.POSIX_FADV_SEQUENTIAL)
        t0 = time.perf_counter()
        while done < n:
            try:
                got = os.preadv(fd, [mv], done)
            except OSError:
                if not used_direct:
                    raise
                os.close(fd)  # O_DIRECT refused mid-way (e.g. tmpfs): redo buffered
                fd = os.open(path, os.O_RDONLY)
                used_direct = False
                continue
            if got <= 0:
                break
            done += got
        dt = time.perf_counter() - t0
    finally:
        os.close(fd)
        mv.release()
        buf.close()
    dt = max(dt, 1e-9)
    return {
        "bytes": done,
        "seconds": dt,
        "bytes_per_s": done / dt,
        "gb_per_s": done / dt / 1e9,
        "cold": bool(dropped),
        "direct": used_direct,
    }
