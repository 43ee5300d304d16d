"""`llamahome ... --help`: every command's summary is a whole sentence that fits a terminal line."""

from __future__ import annotations

import click
from click.testing import CliRunner

from llamahome.cli.main import cli

#: Beside a command name of up to 14 characters, a summary of 60 fits an 80-column terminal on one line.
LIMIT = 60


def _groups(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Group]]:
    found = [(path, group)]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _groups(command, (*path, name))
    return found


def test_every_command_summary_is_whole_and_fits() -> None:
    for path, group in _groups(cli):
        result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=80)
        assert result.exit_code == 0, result.output
        listing = result.output.split("Commands:", 1)[1]
        assert "..." not in listing, f"`llamahome {' '.join(path)} --help` cuts a summary:\n{listing}"
        for name, command in group.commands.items():
            summary = command.get_short_help_str(limit=1000)
            assert summary and len(summary) <= LIMIT, f"{' '.join((*path, name))}: {summary!r} is too long"
            assert f"  {name} " in listing and summary in " ".join(listing.split())
