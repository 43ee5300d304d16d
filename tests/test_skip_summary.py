"""The test suite's skip summary (issue 11, item 18): each reason once, and no path outside the repository.

A small suite runs through this repository's ``tests/conftest.py`` (via pytester) and its ``-rs`` summary is read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")


def summary(pytester: pytest.Pytester) -> list[str]:
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    return [line for line in result.outlines if line.startswith("SKIPPED")]


def test_a_fixtures_skip_reason_is_listed_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_a="""
        import pytest

        @pytest.fixture
        def server():
            pytest.skip("redis-server is not installed")

        @pytest.mark.parametrize("n", range(20))
        def test_one(server, n):
            pass

        def test_two(server):
            pass

        def test_other():
            pytest.skip("another reason")
        """,
        test_b="""
        import pytest

        @pytest.fixture
        def server():
            pytest.skip("redis-server is not installed")

        def test_three(server):
            pass

        def test_four(server):
            pass
        """,
    )
    lines = summary(pytester)
    assert len(lines) == 2, lines
    assert lines[0].startswith("SKIPPED [23] ") and lines[0].endswith(": redis-server is not installed")
    assert lines[1].startswith("SKIPPED [1] ") and lines[1].endswith(": another reason")


def test_no_skip_reason_names_a_path_outside_the_repository(pytester: pytest.Pytester, tmp_path: Path) -> None:
    outside = tmp_path.parent / "elsewhere" / "seed" / "Cache.md"
    inside = pytester.path / "data" / "x.bin"
    pytester.makepyfile(
        test_paths=f"""
        import pytest

        def test_outside():
            pytest.skip("{outside} is not available here")

        def test_inside():
            pytest.skip("{inside} is missing")
        """
    )
    lines = summary(pytester)
    text = "\n".join(lines)
    assert str(outside.parent) not in text and str(pytester.path) not in text, text
    assert "<outside the repository>/seed/Cache.md is not available here" in text
    assert ": data/x.bin is missing" in text
