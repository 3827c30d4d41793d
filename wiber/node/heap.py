"""The node process hands freed memory back to the system soon after a burst (glibc only).

glibc's default malloc raises its trim and mmap thresholds as large blocks come and go, so after a
flood of large frames (a snapshot transfer, or an attacker's 1 MiB chunks on an open raft port) a
node kept what the flood left: measured, two floods of 1,024 x 1 MiB frames left 600 MiB, then
900 MiB. A fixed trim threshold (which also fixes the mmap threshold at its 128 KiB default) gives
the heap's free top back once it passes 1 MiB: the same floods left 85 MiB, then 86 MiB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

#: glibc's mallopt parameter number for the trim threshold (malloc.h: M_TRIM_THRESHOLD).
M_TRIM_THRESHOLD = -1
#: Free bytes at the heap's top above which glibc gives them back to the system.
TRIM_THRESHOLD_BYTES = 1 << 20


def keep_heap_trimmed(threshold: int = TRIM_THRESHOLD_BYTES) -> bool:
    """Fix glibc's trim threshold at `threshold` for this process.

    Returns: whether it was set (False off glibc, e.g. on musl or macOS, where nothing is needed
    or possible through mallopt)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_TRIM_THRESHOLD, threshold))
    log.debug("malloc trim threshold %d: %s", threshold, "set" if done else "refused")
    return done
