"""`genretagger train` and `evaluate`: the trainer's own commands (trainer.cli), handed
over to it. trainer is imported only when one of them runs: it needs TensorFlow and the
[trainer] extra, which the daemon never loads. Options, --help and errors are the
trainer's own."""

from __future__ import annotations

import click

from daemon.cli.base import cli

TRAINER_COMMAND = {"context_settings": {"ignore_unknown_options": True},
                   "add_help_option": False}


def run_trainer_command(name: str, args: tuple[str, ...]) -> int:
    """Run trainer.cli's command `name` with `args`, under this command's name."""
    from trainer.cli import cli as trainer_cli

    prog = click.get_current_context().find_root().info_name
    return trainer_cli.main([name, *args], prog_name=prog, standalone_mode=False)


@cli.command(**TRAINER_COMMAND)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train(args: tuple[str, ...]) -> int:
    """Train a model on a tagged library and write a calibrated ONNX bundle into --out."""
    return run_trainer_command("train", args)


@cli.command(**TRAINER_COMMAND)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def evaluate(args: tuple[str, ...]) -> int:
    """Score a model bundle on a tagged library through onnxruntime (the serving path)."""
    return run_trainer_command("evaluate", args)

