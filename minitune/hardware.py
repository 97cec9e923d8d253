"""What this machine's CPU can do, read from /proc/cpuinfo: the flags the precision choice (train/amp.py) and the
CPU attention's compute dtype (models/attention.py) decide by."""

from __future__ import annotations


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """This CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()
