"""Sizes and durations as people write them: ``512``, ``"512KB"``, ``"4GB"``, ``"1.5GiB"``, ``"1h"``.

Configuration sizes are megabytes where 1 MB = 1 MiB = 1,048,576 bytes, as the seed's YAML means them
(``size: 1000  # MB``). Decimal-looking units (KB, MB, GB, TB) are read as their binary twins, because
that is what every cache-size knob in practice means and mixing the two would make ``"1GB"`` and
``1024`` disagree by 7%.

    >>> parse_size("512KB")
    0.5
    >>> parse_size(1000)
    1000.0
    >>> format_bytes(1536)
    '1.5 KiB'
"""

from __future__ import annotations

import math
import re

__all__ = ["MIB", "SIZE_UNITS", "format_bytes", "parse_duration", "parse_size", "size_to_bytes"]

#: Bytes in one configuration megabyte.
MIB = 1024 * 1024

_K = 1024
#: Accepted units (lower case) and their value in bytes. A bare number means megabytes.
SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "k": _K, "kb": _K, "kib": _K,
    "m": _K**2, "mb": _K**2, "mib": _K**2,
    "g": _K**3, "gb": _K**3, "gib": _K**3,
    "t": _K**4, "tb": _K**4, "tib": _K**4,
}  # fmt: skip

_SIZE_RE = re.compile(
    r"^\s*(?P<num>[+-]?(?:\d+(?:[_,]\d{3})*(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*(?P<unit>[a-z]*)\s*$", re.I
)

_ACCEPTED_SIZES = 'a number of megabytes (1 MB = 1 MiB) or a string with a unit such as "512KB", "4GB" or "1.5GiB"'


def parse_size(value: object) -> float:
    """Return ``value`` as a positive number of megabytes (MiB).

    Numbers are megabytes already; strings may carry a unit (B, KB, MB, GB, TB, their KiB forms, or
    K/M/G/T), case-insensitive. Raises :class:`ValueError` with a sentence saying what is accepted.
    """
    if isinstance(value, bool):
        # YAML turns `yes`/`true` into True, and True == 1 would silently mean 1 MB.
        raise ValueError(f"expected a size, not the boolean {str(value).lower()}; use {_ACCEPTED_SIZES}.")
    if isinstance(value, (int, float)):
        megabytes = float(value)
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match is None:
            raise ValueError(f"cannot read {value!r} as a size; use {_ACCEPTED_SIZES}.")
        unit = match["unit"].lower()
        if unit and unit not in SIZE_UNITS:
            raise ValueError(
                f"unknown size unit {match['unit']!r} in {value!r}; use one of B, KB, MB, GB, TB "
                "(or KiB, MiB, GiB, TiB; KB/MB/GB mean KiB/MiB/GiB)."
            )
        number = float(match["num"].replace("_", "").replace(",", ""))
        megabytes = number * SIZE_UNITS[unit] / MIB if unit else number
    else:
        raise ValueError(f"expected a size, not {type(value).__name__}; use {_ACCEPTED_SIZES}.")
    if not math.isfinite(megabytes):
        raise ValueError(f"a size must be a finite number, not {value!r}.")
    if megabytes <= 0:
        raise ValueError(f"a size must be larger than zero, not {value!r}; give the tier a positive budget.")
    return megabytes


def size_to_bytes(value: object) -> int:
    """Return ``value`` (anything :func:`parse_size` accepts) as a whole number of bytes, at least 1."""
    return max(1, int(parse_size(value) * MIB))


def format_bytes(n: float) -> str:
    """Human-readable binary size: ``format_bytes(1536) == '1.5 KiB'``."""
    n = float(n)
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        # Step up at 1000 rather than 1024 so 1,048,000 bytes reads "1.0 MiB", not "1023 KiB".
        if abs(n) < 999.95 or unit == "TiB":
            return f"{n:.1f} {unit}" if abs(n) < 100 else f"{n:.0f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


_DURATION_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_RE = re.compile(r"^\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[a-z]*)\s*$", re.I)
_ACCEPTED_DURATIONS = 'a number of seconds, or a string such as "90s", "15m", "1h" or "1d"'


def parse_duration(value: object) -> float:
    """Return ``value`` as a positive number of seconds (numbers are seconds; "15m", "1h", "1d" also work)."""
    if isinstance(value, bool):
        raise ValueError(
            f"expected a number of seconds, not the boolean {str(value).lower()}; use {_ACCEPTED_DURATIONS}."
        )
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        unit = match["unit"].lower() if match else None
        if match is None or unit not in _DURATION_UNITS:
            raise ValueError(f"cannot read {value!r} as a duration; use {_ACCEPTED_DURATIONS}.")
        seconds = float(match["num"]) * _DURATION_UNITS[unit]
    else:
        raise ValueError(f"expected a number of seconds, not {type(value).__name__}; use {_ACCEPTED_DURATIONS}.")
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number of seconds, not {value!r}.")
    if seconds <= 0:
        raise ValueError(f"must be larger than zero seconds, not {value!r}.")
    return seconds
