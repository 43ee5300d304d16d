"""Click parameter types shared by the commands."""

from __future__ import annotations

import click

from llamahome.cache.units import parse_size

__all__ = ["SIZE"]


class SizeType(click.ParamType):  # type: ignore[type-arg,unused-ignore]  # generic in click >= 8.2 only
    """A size in MB: ``512``, ``"512KB"``, ``"4GB"``, ``"1.5GiB"`` (converted to float megabytes)."""

    name = "size"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SIZE = SizeType()
