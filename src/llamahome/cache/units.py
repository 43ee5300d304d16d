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
import reprlib

from llamahome.errors import ConfigError

__all__ = [
    "MAX_DURATION",
    "MAX_SIZE_MB",
    "MIB",
    "SIZE_UNITS",
    "format_bytes",
    "parse_duration",
    "parse_size",
    "shown",
    "size_to_bytes",
]

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

#: Largest size accepted, in MB: 1 EiB. Larger numbers are typos (``1e300``) and would overflow the integer
#: byte counts every store keeps (SQLite and numpy hold 64-bit integers).
MAX_SIZE_MB = float(2**40)
#: Longest duration accepted, in seconds: 1000 years. Larger numbers are typos and overflow timers and Redis.
MAX_DURATION = 1000 * 365.25 * 86400.0

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxlevel = 2
_REPR.maxlong = 40


def shown(value: object) -> str:
    """``repr(value)`` cut to a readable length, for error messages.

    Configs come from files anyone can write: a YAML alias bomb expands to gigabytes when printed, so every
    message quotes values through this (at most about 100 characters, nested containers elided).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        # repr() of a huge int is slow, and refused past 4300 digits: describe it instead.
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real complaint
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 100 else text[:97] + "..."


_SIZE_RE = re.compile(
    r"^\s*(?P<num>[+-]?(?:\d+(?:[_,]\d{3})*(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*(?P<unit>[a-z]*)\s*$", re.I
)

_ACCEPTED_SIZES = 'a number of megabytes (1 MB = 1 MiB) or a string with a unit such as "512KB", "4GB" or "1.5GiB"'


def parse_size(value: object) -> float:
    """Return ``value`` as a positive number of megabytes (MiB).

    Numbers are megabytes already; strings may carry a unit (B, KB, MB, GB, TB, their KiB forms, or
    K/M/G/T), case-insensitive, up to :data:`MAX_SIZE_MB`. Raises :class:`~llamahome.errors.ConfigError`
    (a ``ValueError``) with a sentence saying what is accepted.
    """
    if isinstance(value, bool):
        # YAML turns `yes`/`true` into True, and True == 1 would silently mean 1 MB.
        raise ConfigError(f"expected a size, not the boolean {str(value).lower()}; use {_ACCEPTED_SIZES}.")
    if isinstance(value, (int, float)):
        megabytes = _to_float(value)  # an int beyond a float's range is inf: refused below as too large
    elif isinstance(value, str):
        match = _SIZE_RE.match(value) if len(value) <= 100 else None
        if match is None:
            raise ConfigError(f"cannot read {shown(value)} as a size; use {_ACCEPTED_SIZES}.")
        unit = match["unit"].lower()
        if unit and unit not in SIZE_UNITS:
            raise ConfigError(
                f"unknown size unit {match['unit']!r} in {value!r}; use one of B, KB, MB, GB, TB "
                "(or KiB, MiB, GiB, TiB; KB/MB/GB mean KiB/MiB/GiB)."
            )
        number = float(match["num"].replace("_", "").replace(",", ""))
        megabytes = number * SIZE_UNITS[unit] / MIB if unit else number
    else:
        raise ConfigError(f"expected a size, not {type(value).__name__}; use {_ACCEPTED_SIZES}.")
    if math.isnan(megabytes) or (math.isinf(megabytes) and not isinstance(value, int)):
        raise ConfigError(f"a size must be a finite number, not {shown(value)}.")
    if megabytes <= 0:
        raise ConfigError(f"a size must be larger than zero, not {shown(value)}; give the tier a positive budget.")
    if megabytes > MAX_SIZE_MB:
        raise ConfigError(
            f"a size must be at most {MAX_SIZE_MB:,.0f} MB (1 EiB), not {shown(value)}; check for a typo "
            "in the exponent."
        )
    return megabytes


def _to_float(value: int | float) -> float:
    """``float(value)``, with an int too large for a float reported as the inf it stands for (checked later)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


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
    """Return ``value`` as a positive number of seconds (numbers are seconds; "15m", "1h", "1d" also work).

    At most :data:`MAX_DURATION`; anything else raises :class:`~llamahome.errors.ConfigError` (a ``ValueError``).
    """
    if isinstance(value, bool):
        raise ConfigError(
            f"expected a number of seconds, not the boolean {str(value).lower()}; use {_ACCEPTED_DURATIONS}."
        )
    if isinstance(value, (int, float)):
        seconds = _to_float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value) if len(value) <= 100 else None
        unit = match["unit"].lower() if match else None
        if match is None or unit not in _DURATION_UNITS:
            raise ConfigError(f"cannot read {shown(value)} as a duration; use {_ACCEPTED_DURATIONS}.")
        seconds = float(match["num"]) * _DURATION_UNITS[unit]
    else:
        raise ConfigError(f"expected a number of seconds, not {type(value).__name__}; use {_ACCEPTED_DURATIONS}.")
    if math.isnan(seconds) or (math.isinf(seconds) and not isinstance(value, int)):
        raise ConfigError(f"a duration must be a finite number of seconds, not {shown(value)}.")
    if seconds <= 0:
        raise ConfigError(f"must be larger than zero seconds, not {shown(value)}.")
    if seconds > MAX_DURATION:
        raise ConfigError(
            f"a duration must be at most {MAX_DURATION:,.0f} seconds (1000 years), not {shown(value)}; "
            "check for a typo in the exponent."
        )
    return seconds
