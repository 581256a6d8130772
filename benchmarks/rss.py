"""Peak memory of the current process, as the benchmarks report it."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mib() -> float:
    """This process's own peak RSS in MiB. Not ru_maxrss in a child: Linux carries the parent's
    high-water mark across fork + exec into it (exec_mmap keeps the old mm's hiwater in
    signal->maxrss), so every child of a 1.5 GiB parent would report 1.5 GiB. VmHWM is the
    peak of the process's current address space, which exec starts afresh."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
