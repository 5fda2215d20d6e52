"""The memory budget: how much the solvers may hold at once (``--max-memory``)."""

from __future__ import annotations

import math
import os
import re
from typing import Any

from .errors import OptionError

#: Share of the memory available at start that the default budget allows.
DEFAULT_SHARE = 0.5
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable``; physical memory where that is unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 8 * 2**30


def default_budget() -> int:
    """Half the memory available now."""
    return int(DEFAULT_SHARE * available_memory())


def parse_memory(value: Any) -> int:
    """``None`` (the default budget), a number of bytes, or a size such as ``"8G"``/``"512M"``."""
    if value is None:
        return default_budget()
    if isinstance(value, bool):
        raise OptionError(f"max_memory must be a size such as 8G or 512M, not {value!r}")
    if isinstance(value, int | float):
        nbytes = float(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgtb]?)(?:i?b)?\s*", value.lower())
        if match is None:
            raise OptionError(f"max_memory must be a size such as 8G or 512M, not {value!r}")
        nbytes = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise OptionError(f"max_memory must be a size such as 8G or 512M, not {value!r}")
    if not math.isfinite(nbytes) or nbytes < 2**20:
        raise OptionError(f"max_memory must be at least 1M, not {value!r}")
    return int(nbytes)
