"""The ``llamahome`` command line (click). Entry point: :func:`llamahome.cli.main.main`."""

from __future__ import annotations

from .main import cli, main

__all__ = ["cli", "main"]
