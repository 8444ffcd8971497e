"""When the nightly retrain runs next: pure maths of the retrain config, the time and
what the training-run rows say.

A nightly run missed while the daemon was down fires when it comes back (within
retrain.misfire_grace_minutes; several missed runs fire once). `next_nightly_run()` is the
one answer the scheduler, `status`, `retrain` and the review page use; a due time in the
past means "missed: runs now".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from daemon.core.config import RetrainConfig
from daemon.core.db.models import TrainingRun
from daemon.core.states import RunTrigger


def next_nightly(hour: int, minute: int, now: datetime) -> datetime:
    """The next local `hour:minute` strictly after `now` (an aware local datetime)."""
    candidate = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return candidate if candidate > now else candidate + timedelta(days=1)


@dataclass(frozen=True)
class NightlyHistory:
    """What the training-run rows say: when the newest nightly run started, and when the
    first run of any kind did (the station has been retraining since then)."""

    last_nightly: datetime | None = None
    first_run: datetime | None = None


def next_nightly_run(retrain: RetrainConfig, now: datetime,
                     history: NightlyHistory = NightlyHistory()) -> datetime | None:
    """When the nightly retrain runs next (aware, in now's zone's local time), or None
    when retraining is off.

    A scheduled time that passed without a nightly run since (the daemon was down) is
    still the answer while it is at most retrain.misfire_grace_minutes old: it is due now.
    Older missed runs are skipped; several missed nights count once. Before any run at
    all nothing counts as missed (nothing says the daemon was meant to be up).
    """
    if not retrain.enabled:
        return None
    local = now.astimezone()
    upcoming = next_nightly(retrain.hour, retrain.minute, local)
    previous = upcoming - timedelta(days=1)
    since = history.last_nightly or history.first_run
    if (since is not None and since < previous
            and local - previous <= timedelta(minutes=retrain.misfire_grace_minutes)):
        return previous
    return upcoming


def nightly_history(session: Session) -> NightlyHistory:
    """The two facts next_nightly_run needs, from the training_runs table."""
    last = session.scalar(select(func.max(TrainingRun.started_at))
                          .where(TrainingRun.trigger == RunTrigger.NIGHTLY))
    first = session.scalar(select(func.min(TrainingRun.started_at)))
    return NightlyHistory(_aware(last), _aware(first))


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # SQLite hands back naive UTC
    return value
