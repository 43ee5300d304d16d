"""Sizes and durations as people write them (``llamahome.cache.units``), and values quoted briefly in messages.

How the configuration uses these (YAML paths in messages) is tested in ``test_config.py``.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamahome.cache.units import (
    MAX_DURATION,
    MAX_SIZE_MB,
    MIB,
    SIZE_UNITS,
    format_bytes,
    parse_duration,
    parse_size,
    shown,
    size_to_bytes,
)
from llamahome.errors import ConfigError


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(512 * MIB) == "512 MiB"
    assert format_bytes(3 * 1024**5) == "3072 TiB"
    assert format_bytes(MIB - 500) == "1.0 MiB"
    assert format_bytes(999 * 1024) == "999 KiB"


@given(
    # up to 1e6 of the largest unit (TB): just under the 1 EiB cap
    st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from(sorted(SIZE_UNITS)),
)
def test_size_strings_scale_by_their_unit(number: float, unit: str) -> None:
    text = f"{number!r}{unit}"
    expected = number * SIZE_UNITS[unit] / MIB
    assert parse_size(text) == pytest.approx(expected, rel=1e-12)
    assert parse_size(text.upper()) == parse_size(text)


@given(st.integers(min_value=1, max_value=2**40))
def test_whole_kib_sizes_are_exact_in_bytes(kib: int) -> None:
    assert size_to_bytes(f"{kib}KB") == kib * 1024


def test_unit_errors_are_library_errors() -> None:
    for bad in ("lots", 10**5000, float("nan"), None):
        with pytest.raises(ConfigError):
            parse_size(bad)
    for bad in ("soon", 10**400, float("nan"), -1):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def test_the_bounds_themselves_are_accepted() -> None:
    assert parse_size(MAX_SIZE_MB) == MAX_SIZE_MB
    assert parse_duration(MAX_DURATION) == MAX_DURATION
    assert size_to_bytes(MAX_SIZE_MB) == 2**60
    with pytest.raises(ConfigError, match="at most"):
        parse_size(math.nextafter(MAX_SIZE_MB, math.inf))
    with pytest.raises(ConfigError, match="at most"):
        parse_duration(math.nextafter(MAX_DURATION, math.inf))


def test_long_strings_are_not_matched_or_quoted_in_full() -> None:
    for text in ("1" * 10_000 + "MB", "x" * 1_000_000):
        with pytest.raises(ConfigError) as info:
            parse_size(text)
        assert len(str(info.value)) < 300
        with pytest.raises(ConfigError) as info:
            parse_duration(text)
        assert len(str(info.value)) < 300


def test_shown_cuts_values_to_a_readable_length() -> None:
    assert shown("abc") == "'abc'" and shown(3) == "3" and shown(None) == "None"
    assert len(shown("x" * 10_000)) <= 100
    assert shown(10**5000) == "an integer of about 5001 digits"
    nested: list = ["x"]
    for _ in range(40):
        nested = [nested] * 9  # 9**40 leaves if printed in full
    assert len(shown(nested)) <= 100
    loop: list = []
    loop.append(loop)
    assert len(shown(loop)) <= 100

    class BrokenRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert shown(BrokenRepr()).startswith("<BrokenRepr")  # the complaint is still made


def test_docstring_examples_run() -> None:
    import doctest

    import llamahome.cache.units as units_module

    result = doctest.testmod(units_module)
    assert result.attempted > 0 and result.failed == 0
