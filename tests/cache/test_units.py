"""Sizes and durations as people write them (``llamahome.cache.units``): every accepted spelling, every refusal.

Sizes are megabytes where 1 MB = 1 MiB; strings may carry a unit, case-insensitive, and KB/MB/GB/TB mean
their binary twins. Durations are seconds; strings may carry s/sec/m/min/h/d/w. Whatever is refused is a
``ConfigError`` (also a ``ValueError``) whose message is a whole sentence saying what is accepted;
``CacheConfig`` prefixes it with the YAML path (``tests/cache/test_config.py`` checks that side, and the caps
on absurdly large sizes and durations).
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

KIB = 1024


def test_a_configuration_megabyte_is_a_mebibyte() -> None:
    assert MIB == 1024 * 1024 == SIZE_UNITS["mb"] == SIZE_UNITS["mib"] == SIZE_UNITS["m"]


# ------------------------------------------------------------------------------------------------ parse_size
@pytest.mark.parametrize(
    ("unit", "nbytes"),
    [
        ("B", 1),
        ("K", KIB), ("KB", KIB), ("KiB", KIB),
        ("M", MIB), ("MB", MIB), ("MiB", MIB),
        ("G", 1024 * MIB), ("GB", 1024 * MIB), ("GiB", 1024 * MIB),
        ("T", 1024**2 * MIB), ("TB", 1024**2 * MIB), ("TiB", 1024**2 * MIB),
    ],
)  # fmt: skip
def test_every_unit_in_every_case(unit: str, nbytes: int) -> None:
    assert SIZE_UNITS[unit.lower()] == nbytes
    for spelling in (unit, unit.lower(), unit.upper(), unit.swapcase()):
        assert parse_size(f"3{spelling}") == 3 * nbytes / MIB, spelling
        assert parse_size(f"3 {spelling}") == 3 * nbytes / MIB, spelling


def test_the_unit_table_is_exactly_the_documented_one() -> None:
    assert set(SIZE_UNITS) == {"b", "k", "kb", "kib", "m", "mb", "mib", "g", "gb", "gib", "t", "tb", "tib"}


@pytest.mark.parametrize(
    ("given", "megabytes"),
    [
        (1000, 1000.0),  # a number is megabytes already
        (0.5, 0.5),
        (1234.5 * 0.3, 370.35),  # the seed's ResourceManager line passes a float of megabytes
        ("512", 512.0),  # so is a string without a unit
        ("0.25", 0.25),
        ("512KB", 0.5),
        ("1.5GiB", 1536.0),
        (".5GB", 512.0),  # leading point
        ("2.MB", 2.0),  # trailing point
        ("+4MB", 4.0),  # explicit plus sign
        ("1_024MB", 1024.0),  # thousands separators: underscore ...
        ("1,024MB", 1024.0),  # ... or comma, in groups of three
        ("1,048,576B", 1.0),
        ("1e3", 1000.0),  # exponent
        ("2E3KB", 2000 / 1024),
        ("1.5e-3GB", 1.5e-3 * 1024),
        (" 8 GB ", 8192.0),  # spaces around and between
        ("\t64\tMB\n", 64.0),
    ],
)
def test_size_spellings(given: object, megabytes: float) -> None:
    got = parse_size(given)
    assert type(got) is float
    assert got == pytest.approx(megabytes, rel=1e-12)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("big", r"^cannot read 'big' as a size; use a number of megabytes \(1 MB = 1 MiB\) or a string with a unit"),
        ("", r"^cannot read '' as a size"),
        ("   ", r"^cannot read '   ' as a size"),
        ("MB", r"^cannot read 'MB' as a size"),  # a unit without a number
        ("ten MB", r"^cannot read 'ten MB' as a size"),
        ("1,5GB", r"^cannot read '1,5GB' as a size"),  # a decimal comma is not read as 15 GB
        ("1,0000MB", r"^cannot read '1,0000MB' as a size"),
        ("4 G B", r"^cannot read '4 G B' as a size"),
        ("5 parsecs", r"^unknown size unit 'parsecs' in '5 parsecs'; use one of B, KB, MB, GB, TB \(or KiB"),
        ("12PB", r"^unknown size unit 'PB'"),
        ("3 bytes", r"^unknown size unit 'bytes'"),
        (0, r"^a size must be larger than zero, not 0; give the tier a positive budget\.$"),
        (0.0, r"^a size must be larger than zero"),
        (-1, r"^a size must be larger than zero, not -1;"),
        ("-5MB", r"^a size must be larger than zero, not '-5MB';"),
        ("0GB", r"^a size must be larger than zero, not '0GB';"),
        (float("nan"), r"^a size must be a finite number, not nan\.$"),
        (float("inf"), r"^a size must be a finite number, not inf\.$"),
        (float("-inf"), r"^a size must be a finite number"),
        ("inf", r"^cannot read 'inf' as a size"),
        ("nan MB", r"^cannot read 'nan MB' as a size"),
        (True, r"^expected a size, not the boolean true; use"),  # YAML's yes/true: not 1 MB
        (False, r"^expected a size, not the boolean false; use"),
        (None, r"^expected a size, not NoneType; use"),
        ([1], r"^expected a size, not list; use"),
        (b"512KB", r"^expected a size, not bytes; use"),
    ],
)
def test_refused_sizes_say_what_is_accepted(given: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_size(given)
    assert str(info.value).endswith(".")


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


# ---------------------------------------------------------------------------------------------- size_to_bytes
@pytest.mark.parametrize(
    ("given", "nbytes"),
    [
        (1, MIB),
        (0.5, 512 * KIB),
        ("512KB", 512 * KIB),
        ("4GB", 4096 * MIB),
        ("2048B", 2048),
        ("1B", 1),
        ("1.5KB", 1536),
        ("1.9B", 1),  # whole bytes, rounded down ...
        ("0.1B", 1),  # ... but never below one byte
        (1e-9, 1),
    ],
)
def test_size_to_bytes_is_a_whole_number_of_bytes_at_least_one(given: object, nbytes: int) -> None:
    got = size_to_bytes(given)
    assert type(got) is int and got == nbytes


@given(st.integers(min_value=1, max_value=2**40))
def test_whole_kib_sizes_are_exact_in_bytes(kib: int) -> None:
    assert size_to_bytes(f"{kib}KB") == kib * 1024


@pytest.mark.parametrize("bad", ["lots", 0, -1, True, None, float("nan")])
def test_size_to_bytes_refuses_what_parse_size_refuses(bad: object) -> None:
    with pytest.raises(ConfigError):
        size_to_bytes(bad)


# ---------------------------------------------------------------------------------------------- format_bytes
@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1023.9, "1023 B"),  # bytes are whole
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (999 * KIB, "999 KiB"),  # three digits: no decimal
        (99.9 * KIB, "99.9 KiB"),
        (MIB - 500, "1.0 MiB"),  # steps up at 1000, not 1024: never "1023 KiB"
        (512 * MIB, "512 MiB"),
        (1024 * MIB, "1.0 GiB"),
        (3 * 1024**4, "3.0 TiB"),
        (3 * 1024**5, "3072 TiB"),  # TiB is the largest unit
        (-2048, "-2.0 KiB"),
    ],
)
def test_format_bytes(n: float, text: str) -> None:
    assert format_bytes(n) == text


@given(st.integers(min_value=1024, max_value=2**50))
def test_format_bytes_reads_back_within_rounding(n: int) -> None:
    number, unit = format_bytes(n).split()
    back = float(number) * {"KiB": KIB, "MiB": MIB, "GiB": 1024 * MIB, "TiB": 1024**2 * MIB}[unit]
    assert back == pytest.approx(n, rel=0.06)


# -------------------------------------------------------------------------------------------- parse_duration
@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        (3600, 3600.0),  # a number is seconds
        (0.5, 0.5),
        ("10", 10.0),  # so is a string without a unit
        ("90s", 90.0),
        ("90sec", 90.0),
        ("15m", 900.0),
        ("15min", 900.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("1.5h", 5400.0),
        (".5m", 30.0),
        ("2.h", 7200.0),
        ("1H", 3600.0),  # case-insensitive
        ("15 MIN", 900.0),
        (" 30 s ", 30.0),
    ],
)
def test_duration_spellings(given: object, seconds: float) -> None:
    got = parse_duration(given)
    assert type(got) is float and got == seconds


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("soon", r"^cannot read 'soon' as a duration; use a number of seconds, or a string such as \"90s\""),
        ("", r"^cannot read '' as a duration"),
        ("5y", r"^cannot read '5y' as a duration"),  # years are not a unit
        ("1ms", r"^cannot read '1ms' as a duration"),
        ("1 hour", r"^cannot read '1 hour' as a duration"),
        ("-5s", r"^cannot read '-5s' as a duration"),  # no sign in strings
        ("1e3", r"^cannot read '1e3' as a duration"),
        ("1h30m", r"^cannot read '1h30m' as a duration"),
        (0, r"^must be larger than zero seconds, not 0\.$"),
        (-5, r"^must be larger than zero seconds, not -5\.$"),
        ("0s", r"^must be larger than zero seconds, not '0s'\.$"),
        (float("inf"), r"^a duration must be a finite number of seconds, not inf\.$"),
        (float("nan"), r"^a duration must be a finite number of seconds"),
        (True, r"^expected a number of seconds, not the boolean true; use"),
        (None, r"^expected a number of seconds, not NoneType; use"),
        ([60], r"^expected a number of seconds, not list; use"),
    ],
)
def test_refused_durations_say_what_is_accepted(given: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_duration(given)
    assert str(info.value).endswith(".")


# up to 1e4 weeks: well under the 1000-year cap
@given(st.floats(min_value=1e-6, max_value=1e4, allow_nan=False), st.sampled_from(["", "s", "m", "h", "d", "w"]))
def test_duration_strings_scale_by_their_unit(number: float, unit: str) -> None:
    factor = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    text = f"{number:f}{unit}"
    assert math.isclose(parse_duration(text), float(f"{number:f}") * factor, rel_tol=1e-12)


# ------------------------------------------------------------------ the caps, and values quoted briefly
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
