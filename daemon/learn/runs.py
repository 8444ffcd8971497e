"""Training-run rows and the one-run-at-a-time lock.

Every run leaves a TrainingRun row (status running -> promoted/rejected/failed/skipped, a
reason, a data summary, the trainer's log path). One run at a time per state dir: an
flock on runs_dir/retrain.lock, which also tells start-up whether a 'running' row is
really running (its owner still holds the lock) or was cut off by a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.config import Config
from daemon.core.db.engine import transaction
from daemon.core.db.models import TrainingRun, utcnow
from daemon.core.states import RunStatus, RunTrigger
from daemon.learn.registry import remove_partial_bundles
from daemon.learn.trainer_process import process_start_ticks

log = logging.getLogger(__name__)

# Short names for daemon.core.states.RunStatus.
RUNNING, PROMOTED, REJECTED, FAILED, SKIPPED = RunStatus
TRIGGERS = tuple(RunTrigger)
# Run folders kept under runs_dir (logs, split.json, labels.json); older ones are pruned.
KEEP_RUNS = 30


def run_summary(run: TrainingRun) -> dict[str, Any]:
    """A TrainingRun as JSON for `status`, the web page and `retrain` (stable shape)."""
    summary = run.summary or {}
    return {
        "id": run.id, "trigger": run.trigger, "status": run.status, "reason": run.reason,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "seconds": summary.get("seconds"), "model_id": run.model_id,
        "candidate_version": summary.get("candidate_version"),
        "new_labels": summary.get("new_labels"), "labels": summary.get("labels"),
        "gate": summary.get("gate"), "log_path": run.log_path,
    }


def last_run(session: Session, *, finished: bool = False) -> TrainingRun | None:
    """The newest training run (finished ones only when asked)."""
    query = select(TrainingRun).order_by(TrainingRun.started_at.desc(), TrainingRun.id.desc())
    if finished:
        query = query.where(TrainingRun.status != RUNNING)
    return session.scalars(query.limit(1)).first()


def update_run(sessions: sessionmaker[Session], run_id: int, **values: Any) -> None:
    """Set columns of run `run_id`; `summary=` is merged into the stored summary."""
    summary = values.pop("summary", None)
    with transaction(sessions) as session:
        run = session.get(TrainingRun, run_id)
        for key, value in values.items():
            setattr(run, key, value)
        if summary:
            run.summary = {**(run.summary or {}), **summary}


@contextlib.contextmanager
def run_lock(config: Config) -> Iterator[bool]:
    """The per-state-dir retrain lock (flock, released when the holder dies). Yields held?"""
    config.runs_dir.mkdir(parents=True, exist_ok=True)
    with open(config.runs_dir / "retrain.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def recover_interrupted_runs(sessions: sessionmaker[Session], config: Config) -> int:
    """Runs left 'running' by a daemon that died -> failed 'daemon restarted'.

    Call while holding run_lock (then no live process is training). A trainer that
    survived its parent (matched by pid AND start time, never a reused pid) is killed
    with its process group. Out: how many runs were closed.
    """
    remove_partial_bundles(config)
    with transaction(sessions) as session:
        stale = session.scalars(select(TrainingRun).where(TrainingRun.status == RUNNING)).all()
        for run in stale:
            start = (run.summary or {}).get("trainer_start_ticks")
            if run.pid and start is not None and process_start_ticks(run.pid) == start:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(run.pid, signal.SIGKILL)
                log.warning("killed trainer pid %d left over from run %d", run.pid, run.id)
            run.status = FAILED
            run.reason = "daemon restarted during training"
            run.finished_at = utcnow()
        if stale:
            log.warning("%d training run(s) were cut off by a restart; marked failed", len(stale))
        return len(stale)


def prune_run_dirs(config: Config, keep: int = KEEP_RUNS) -> None:
    """Delete all but the newest `keep` run folders under runs_dir."""
    runs = sorted(p for p in config.runs_dir.glob("run-*") if p.is_dir())
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)

