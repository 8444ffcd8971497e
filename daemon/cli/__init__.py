"""The `genretagger` command (entry point `daemon.cli:main`): the group and `main()` are in
daemon.cli.base; each command group's module adds its commands to it when imported."""

from daemon.cli import (  # noqa: F401 - imported for the commands they add to `cli`
    classify,
    commands,
    library,
    models,
    review,
    service,
    setup,
)
from daemon.cli.base import cli, main

__all__ = ["cli", "main"]
