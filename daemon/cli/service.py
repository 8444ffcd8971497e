"""`genretagger run`, `worker`, `status`, `retrain`, `restore`: the service, what it is
doing, and putting a database backup back."""

from __future__ import annotations

from pathlib import Path

import click

from daemon.cli.base import (
    EXISTING_FILE,
    Context,
    cli,
    echo_json,
    pass_context,
    refuse_root_in_service_state,
)
from daemon.core.errors import BackupFailed
from daemon.core.states import RunStatus, RunTrigger
from daemon.service.logs import setup_logging

# Each command imports what it works with inside its body: `genretagger --help` or
# `status` takes about 0.3 s that way, against about 2 s with every command's modules
# (onnxruntime, numpy, Flask, the trainer plumbing) imported up front.


@cli.command()
@pass_context
def run(ctx: Context) -> int:
    """Run the service in the foreground (systemd: Type=notify). SIGTERM stops, SIGHUP reloads."""
    from daemon.service.wiring import Service

    config = ctx.config
    setup_logging(config.log_level)
    refuse_root_in_service_state(config.state_dir)
    return Service(config, ctx.config_path).run()


@cli.command()
@click.option("--name", default=None,
              help="what `status` calls this worker (systemd: the unit's instance, %i)")
@pass_context
def worker(ctx: Context, name: str | None) -> int:
    """Claim, decode, classify and store suggestions only (an extra host or process
    beside `run`; several hosts need PostgreSQL). SIGTERM stops."""
    from daemon.service.workerprocess import WorkerProcess

    config = ctx.config
    setup_logging(config.log_level)
    refuse_root_in_service_state(config.state_dir)
    return WorkerProcess(config, name).run()


@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help="the stable JSON shape (documented in daemon/service/status.py)")
@pass_context
def status(ctx: Context, as_json: bool) -> None:
    """Is the daemon running, what is queued, the model, quarantined files."""
    from daemon.cli.status_text import render_status
    from daemon.service.status import collect_status

    config = ctx.config
    engine, sessions = ctx.database()
    try:
        data = collect_status(config, sessions)
    finally:
        engine.dispose()
    if as_json:
        echo_json(data)
    else:
        click.echo(render_status(data))


@cli.command()
@click.option("--now", is_flag=True,
              help="train now in the foreground (trainer subprocess), gate, activate")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@pass_context
def retrain(ctx: Context, now: bool, as_json: bool) -> int:
    """Show what the nightly retraining would do, or (--now) retrain immediately."""
    from daemon.core.db.models import utcnow
    from daemon.learn.retrainer import Retrainer
    from daemon.learn.runs import last_run, run_summary
    from daemon.service.status import next_retrain

    config = ctx.config
    _engine, sessions = ctx.database()
    retrainer = Retrainer(config, sessions)
    if now:
        try:
            result = retrainer.run(RunTrigger.MANUAL)
        finally:
            retrainer.close()
        if as_json:
            echo_json(result)
        else:
            click.echo(f"run {result['id']}: {result['status']}: {result['reason']}")
            if result.get("log_path"):
                click.echo(f"trainer log: {result['log_path']}")
        done = (RunStatus.PROMOTED, RunStatus.REJECTED, RunStatus.SKIPPED)
        return 0 if result["status"] in done else 1
    train, reason, facts = retrainer.decide()
    with sessions() as session:
        last = last_run(session)
        nightly = next_retrain(session, config, utcnow())
        data = {"would_train": train, "reason": reason, **facts,
                "last_run": run_summary(last) if last else None,
                "next_nightly": nightly.isoformat() if nightly else None}
    if as_json:
        echo_json(data)
        return 0
    click.echo(f"policy: {'would train' if train else 'would skip'}: {reason}")
    if last is not None:
        click.echo(f"last run: {last.started_at.astimezone():%Y-%m-%d %H:%M} {last.status}: "
                   f"{last.reason}")
    click.echo("next nightly run: " + (f"{nightly.astimezone():%Y-%m-%d %H:%M}" if nightly
                                       else "disabled (retrain.enabled = false)"))
    return 0


@cli.command()
@click.argument("backup", required=False, type=EXISTING_FILE)
@click.option("--list", "list_only", is_flag=True, help="list the backups, newest first")
@pass_context
def restore(ctx: Context, backup: Path | None, list_only: bool) -> int:
    """Put a backup of the SQLite database back (default: the newest good one in
    state_dir/backups). The service must be stopped; the file it replaces is kept."""
    from daemon.core.db.backup import list_backups, newest_good_backup, restore_backup
    from daemon.core.db.engine import sqlite_path
    from daemon.core.disk import human_bytes
    from daemon.service.leader import LeaderLock, lock_holder

    config = ctx.config
    path = sqlite_path(config.db_url)
    if path is None:
        raise BackupFailed("the database is on a PostgreSQL server: restore it with "
                           "pg_restore from your pg_dump (README, Backups)")
    if list_only:
        for found in list_backups(config.backups_dir):
            click.echo(f"{found}  {human_bytes(found.stat().st_size)}")
        return 0
    refuse_root_in_service_state(config.state_dir)
    lock = LeaderLock(config.db_url, config.state_dir)
    # Holding the service's lock while we work: it cannot start under us either.
    if not lock.acquire(0):
        pid = lock_holder(config.state_dir)
        raise BackupFailed(f"the service is running (pid {pid if pid else '?'}) on {path}: "
                           "stop it first (sudo systemctl stop genretagger), then run "
                           "this again")
    try:
        chosen = backup or newest_good_backup(config.backups_dir)
        if chosen is None:
            raise BackupFailed(f"no good backup in {config.backups_dir}")
        kept = restore_backup(path, chosen)
    finally:
        lock.close()
    click.echo(f"restored {path} from {chosen}"
               + (f"; the file it replaced is kept as {kept}" if kept else ""))
    click.echo("now start the service: sudo systemctl start genretagger")
    return 0
