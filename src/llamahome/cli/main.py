"""The ``llamahome`` command line: ``llamahome cache demo|config|stats|clear|cleanup|serve``.

Every failure ends in one ``Error: ...`` message on stderr and a non-zero exit status, never a traceback:
library errors (:class:`~llamahome.errors.CacheError`) and operating-system errors are translated here, in
one place, and ``--debug`` shows the traceback for bug reports.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from llamahome import __version__
from llamahome.errors import CacheError

__all__ = ["cache", "cli", "main"]

#: Exit status for a failure the user can fix (bad configuration, unreadable directory, ...).
EXIT_FAILURE = 1
#: Exit status for a bug: something raised that the library does not expect.
EXIT_INTERNAL = 3


def _describe_os_error(exc: OSError) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename:
        return f"{exc.filename}: {reason}. Check that the path exists and that you may read and write it."
    return f"{reason} (operating system error)."


def _quiet_broken_pipe() -> None:
    """The reader of our output went away (``llamahome ... | head``): stop without a word, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the final flush at exit cannot fail again
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass


class _Group(click.Group):
    """A click group that turns every error into one clear message and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except CacheError as exc:
            raise click.ClickException(str(exc)) from exc
        except BrokenPipeError:
            _quiet_broken_pipe()
            raise click.exceptions.Exit(EXIT_FAILURE) from None
        except OSError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            raise click.ClickException(_describe_os_error(exc)) from exc
        except Exception as exc:
            if ctx.find_root().params.get("debug"):
                raise
            raise _InternalError(
                f"internal error ({type(exc).__name__}: {exc}). This is a bug in LlamaHome Cache; "
                "rerun with `llamahome --debug ...` and report the traceback."
            ) from exc


class _InternalError(click.ClickException):
    exit_code = EXIT_INTERNAL


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llamahome")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """LlamaHome: memory, disk and Redis caches for LLM work."""


@cli.group(cls=_Group)
def cache() -> None:
    """Try, configure and inspect the cache."""


def _register() -> None:
    # Commands live in their own modules; importing them here keeps `main` the one entry point.
    from . import config_cmd, demo, disk_cmds, serve_cmd

    cache.add_command(demo.demo)
    cache.add_command(config_cmd.config)
    for command in disk_cmds.COMMANDS:
        cache.add_command(command)
    cache.add_command(serve_cmd.serve)


_register()


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``llamahome = "llamahome.cli.main:main"``); returns the exit status."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="llamahome", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
