"""The `genretagger` command (entry point `daemon.cli:main`)."""

from daemon.cli.commands import cli, main

__all__ = ["cli", "main"]
