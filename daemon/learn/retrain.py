"""Nightly retraining: decide, train in a subprocess, gate, swap, re-score.

    policy    should_retrain(): enough confirmed labels since the active model's training
              set was frozen (or forced, or no model yet)
    train     `genretagger train` as a SUBPROCESS (nice 19, idle I/O, memory cap, timeout,
              its own process group, dies with its parent): TensorFlow never loads here
              and a crash or OOM cannot touch the daemon
    gate      candidate and active model through onnxruntime on the same artist-disjoint
              holdout, features from the feature cache; gate() is a pure function
    swap      register the bundle (atomic), activate it (one DB transaction), re-score
              pending suggestions from the feature cache (no decoding), history kept;
              rejected songs are suggested again if the new model has another genre

Every run leaves a TrainingRun row (status running -> promoted/rejected/failed/skipped, a
reason, a data summary, the trainer's log path). One run at a time per state dir: an
flock on runs_dir/retrain.lock, which also tells start-up whether a 'running' row is
really running (its owner still holds the lock) or was cut off by a restart.

The scheduler (daemon.service.scheduler) runs `nightly_job(retrainer)` at
retrain.hour, and at once for a night missed while the daemon was down.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import importlib.util
import json
import logging
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from daemon.audio.features import DEFAULT_SPEC
from daemon.core.config import Config
from daemon.core.db.engine import transaction
from daemon.core.db.models import Model, Suggestion, Track, TrainingRun, utcnow
from daemon.core.errors import GenretaggerError, ModelMismatch
from daemon.core.health import Health
from daemon.core.live import Live, as_live
from daemon.core.states import RunStatus, RunTrigger, SuggestionStatus, TrackState
from daemon.suggest.suggestions import suggest
from daemon.tags.genres import station_genres_file
from daemon.tags.read import MULTI_VALUE_SEPARATOR

log = logging.getLogger(__name__)

# Short names for daemon.core.states.RunStatus.
RUNNING, PROMOTED, REJECTED, FAILED, SKIPPED = RunStatus
TRIGGERS = tuple(RunTrigger)
INSTALL_HINT = ("pip install 'genretagger[trainer]'  then  genretagger retrain --now")
# Without a model and without the trainer, say what to run this often (never idle silently).
NO_MODEL_POLL_SECONDS = 3600.0
# Seconds between SIGTERM and SIGKILL when the trainer must stop.
KILL_GRACE_SECONDS = 10.0
# The trainer is asked to finish within this share of retrain.timeout_minutes (it stops
# fitting early, keeping its best epoch), so a long night ends in a model, not a kill.
TRAINER_BUDGET_SHARE = 0.9
# Run folders kept under runs_dir (logs, split.json, labels.json); older ones are pruned.
KEEP_RUNS = 30
# Share of the newly confirmed labels held out of training for the gate.
RECENT_HOLDOUT_SHARE = 0.25
PR_SET_PDEATHSIG = 1
# Log lines that mean the trainer ran out of memory (Python, C++, TF, glibc threads).
OOM_MARKERS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "OOM when allocating",
               "ResourceExhaustedError", "failed to allocate", "pthread_create() failed",
               "Resource temporarily unavailable", "out of memory",
               "failed to map segment")


class RetrainError(GenretaggerError):
    """Retraining cannot run (trainer missing, another run holds the lock...)."""


# ---- the policy (pure) --------------------------------------------------------------------

def should_retrain(now: datetime, active: Model | None, new_labels: int, min_new_labels: int,
                   forced: bool, *, trainable_genres: int | None = None) -> tuple[bool, str]:
    """Whether to train now, and why (the reason is logged and stored on the run).

    In: the current time, the active model (None: none yet), how many confirmed labels
    arrived since its training set was frozen, the threshold, whether an operator asked
    (`retrain --now`), and optionally how many genres have enough tagged songs to train.
    Out: (train?, reason).
    """
    if active is None:
        if trainable_genres is not None and trainable_genres < 2 and not forced:
            return False, (f"no model yet, and {trainable_genres} genre(s) have enough tagged "
                           "songs; the first model needs at least 2")
        return True, "no model yet: training the first one"
    frozen = active.trained_until or active.created_at
    since = f"since v{active.version:04d}'s data was frozen {_age(now, frozen)}"
    if forced:
        return True, f"requested by an operator ({new_labels} new confirmed label(s) {since})"
    if new_labels >= min_new_labels:
        return True, f"{new_labels} new confirmed label(s) {since} (threshold {min_new_labels})"
    return False, (f"nothing to learn: {new_labels} new confirmed label(s) {since}, "
                   f"{min_new_labels} needed")


def _age(now: datetime, then: datetime | None) -> str:
    if then is None:
        return "(unknown time)"
    hours = (now - then).total_seconds() / 3600
    return f"{hours:.0f} h ago" if hours < 48 else f"{hours / 24:.0f} days ago"


# ---- the gate (pure) ----------------------------------------------------------------------

@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict: promote or not, why, and the changes it measured (in points)."""

    promote: bool
    reason: str
    f1_change: float | None = None
    recall_changes: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"promote": self.promote, "reason": self.reason,
                "f1_change": self.f1_change, "recall_changes": self.recall_changes}


def gate(candidate: dict[str, Any], active: dict[str, Any] | None, max_f1_drop: float,
         max_recall_drop: float) -> GateDecision:
    """Promote a candidate or not, from two `song_metrics` dicts on the same holdout.

    Metrics are fractions; the limits are percentage points (config.retrain). Promote when
    there is no active model, or when the candidate's macro-F1 >= the active's minus
    `max_f1_drop` points and no genre's recall (genres with holdout songs) drops by more
    than `max_recall_drop` points; a genre the candidate does not know has recall 0.
    """
    if active is None:
        return GateDecision(True, "no active model to compare with")
    if not candidate.get("n_songs"):
        return GateDecision(False, "the holdout has no songs to compare on")
    eps = 1e-9  # equal scores must pass despite float rounding
    f1_change = 100.0 * (candidate["macro_f1"] - active["macro_f1"])
    changes = {}
    for genre, stats in active.get("per_class", {}).items():
        if not stats.get("support"):
            continue
        mine = candidate.get("per_class", {}).get(genre, {}).get("recall", 0.0)
        changes[genre] = 100.0 * (mine - stats["recall"])
    worst = min(changes.items(), key=lambda kv: kv[1], default=None)
    f1_text = (f"macro-F1 {100 * candidate['macro_f1']:.1f} vs {100 * active['macro_f1']:.1f} "
               f"({f1_change:+.1f} points)")
    if f1_change < -max_f1_drop - eps:
        return GateDecision(False, f"{f1_text}: drops more than {max_f1_drop:g} points",
                            f1_change, changes)
    if worst is not None and worst[1] < -max_recall_drop - eps:
        return GateDecision(False, f"{f1_text}, but {worst[0]} recall drops {-worst[1]:.1f} "
                                   f"points (limit {max_recall_drop:g})", f1_change, changes)
    return GateDecision(True, f"{f1_text}; no genre's recall drops more than "
                              f"{max_recall_drop:g} points", f1_change, changes)


# ---- failure reasons (pure) --------------------------------------------------------------

def failure_reason(returncode: int | None, log_tail: str, *, memory_mb: int,
                   stopped_for: str | None = None) -> str:
    """Why the trainer failed, in words for the run row and `status`.

    In: its exit status (negative: killed by that signal), the end of its log, the memory
    cap, and why we stopped it ourselves ("timeout after 180 min", "daemon stopping"), if so.
    """
    if stopped_for:
        return stopped_for
    if any(marker in log_tail for marker in OOM_MARKERS):
        return f"out of memory: the trainer hit the {memory_mb} MB cap (retrain.memory_max_mb)"
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() \
            else str(-returncode)
        return f"trainer killed by {name}"
    if returncode == 2:
        last = _last_line(log_tail)
        return f"trainer refused to start (exit 2){': ' + last if last else ''}"
    last = _last_line(log_tail)
    return f"trainer failed (exit {returncode}){': ' + last if last else ''}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error", "Error", "ERROR"))
              or "Error:" in line]
    return (errors or lines or [""])[-1][:300]


# ---- the trainer subprocess -----------------------------------------------------------------

def trainer_available() -> bool:
    """The [trainer] extra is installed (checked without importing TensorFlow)."""
    return importlib.util.find_spec("tensorflow") is not None


def holdout_share(recent: Collection[str], share: float = RECENT_HOLDOUT_SHARE) -> list[str]:
    """The recent confirmed labels the candidate must not train on, so the gate always
    judges both models on songs neither has seen: a fixed share (at least one), chosen
    by a hash of the path (deterministic, no clock)."""
    if not recent:
        return []
    ranked = sorted(recent, key=lambda p: hashlib.sha256(p.encode()).digest())
    return sorted(ranked[:max(1, math.ceil(share * len(ranked)))])


def trainer_command(config: Config, run_dir: Path, labels: Path, warm_start: Path | None,
                    holdout: Path | None = None, known: Path | None = None) -> list[str]:
    """The `genretagger train` argv for one run (helper C's CLI contract)."""
    argv = [sys.executable, "-m", "daemon.cli", "train",
            "--library", str(config.library.root), "--out", str(run_dir),
            "--cache", str(config.cache_dir), "--labels", str(labels),
            "--epochs", str(config.retrain.epochs),
            "--min-songs", str(config.min_songs_per_genre),
            # The trainer stops fitting in time to finish; timeout_minutes stays the hard stop.
            "--time-budget", f"{TRAINER_BUDGET_SHARE * config.retrain.timeout_minutes:g}"]
    genres = station_genres_file(config)
    if genres is not None:
        argv += ["--genres", str(genres)]
    if warm_start is not None:
        argv += ["--warm-start", str(warm_start)]
    if holdout is not None:
        argv += ["--holdout", str(holdout)]
    if known is not None:
        argv += ["--known", str(known)]
    return argv


def _load_prctl():
    """libc's prctl, resolved in the parent (the child after fork must not load libraries)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _child_setup(memory_bytes: int, parent_pid: int):
    """What runs in the child between fork and exec: only async-signal-safe-ish C calls.

    PR_SET_PDEATHSIG: the trainer gets SIGKILL when the thread that started it dies (the
    calling thread waits for the child, so that is when the daemon dies). RLIMIT_AS caps
    the address space: TensorFlow training the seed CNN peaks at ~2.7 GB of virtual
    memory here, so the 4096 MB default leaves it room while a runaway still fails.
    """
    def setup() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(70)
        os.setpriority(os.PRIO_PROCESS, 0, 19)
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    return setup


def start_trainer(argv: list[str], log_path: Path, memory_mb: int) -> subprocess.Popen:
    """Start `argv` as a low-priority child in its own process group, output to `log_path`.

    nice 19, idle I/O class (ionice -c3 when installed), address space capped at
    `memory_mb`, SIGKILL when the parent dies. Out: the Popen (pid == its process group).
    """
    ionice = shutil.which("ionice")
    if ionice:
        argv = [ionice, "-c3", *argv]  # execs the trainer: same pid
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("GENRETAGGER_CONFIG", None)  # the trainer takes everything on its command line
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            cwd=str(log_path.parent), start_new_session=True,
            preexec_fn=_child_setup(memory_mb << 20, os.getpid()),  # noqa: PLW1509
        )


def stop_process_group(proc: subprocess.Popen, grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the child's process group, SIGKILL it after `grace` seconds; reap the child."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def process_start_ticks(pid: int) -> int | None:
    """A process's start time (clock ticks since boot) or None when it does not exist.

    Stored with each pid so a later check never confuses a reused pid with our trainer.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def log_tail(path: Path, size: int = 16_384) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


# ---- training data ------------------------------------------------------------------------

def confirmed_labels(session: Session) -> dict[str, str]:
    """{relative path: genre} of every confirmed label on a track still in the library."""
    rows = session.execute(select(Track.path, Track.confirmed_genre).where(
        Track.confirmed_genre.is_not(None), Track.state != TrackState.MISSING))
    return {path: genre for path, genre in rows}


def known_files(session: Session) -> dict[str, dict[str, Any]]:
    """What the daemon read from each file it fingerprinted, for the trainer's --known:
    {relative path: {size, mtime, fingerprint, artist, album, genres}}. A file whose size
    and mtime still match is not read again (over SMB: ~320 KB a song, 5 GB a night at
    15,000 songs)."""
    ours = (Track.written_size == Track.size) & (Track.written_mtime == Track.mtime)
    rows = session.execute(select(
        Track.path, Track.size, Track.mtime, Track.fingerprint, Track.artist, Track.album,
        Track.raw_genre).where(Track.fingerprint.is_not(None),
                               Track.state != TrackState.MISSING,
                               # our own tag write: its tags are newer than the row's
                               ~func.coalesce(ours, False)))
    return {path: {"size": size, "mtime": mtime, "fingerprint": fp, "artist": artist,
                   "album": album, "genres": raw.split(MULTI_VALUE_SEPARATOR) if raw else []}
            for path, size, mtime, fp, artist, album, raw in rows}


def count_new_labels(session: Session, since: datetime | None) -> int:
    """Confirmed labels (on tracks still in the library) newer than `since` (None: all)."""
    query = select(func.count()).select_from(Track).where(
        Track.confirmed_genre.is_not(None), Track.state != TrackState.MISSING)
    if since is not None:
        query = query.where(Track.confirmed_at > since)
    return session.scalar(query) or 0


def recent_label_paths(session: Session, since: datetime | None) -> set[str]:
    query = select(Track.path).where(Track.confirmed_genre.is_not(None))
    if since is not None:
        query = query.where(Track.confirmed_at > since)
    return set(session.scalars(query))


def trainable_genres(session: Session, min_songs: int) -> int:
    """Genres with >= min_songs labelled tracks (confirmed label, else the mapped tag)."""
    label = func.coalesce(Track.confirmed_genre, Track.canonical_genre)
    counts = session.execute(select(label, func.count()).where(
        label.is_not(None), Track.state != TrackState.MISSING).group_by(label)).all()
    return sum(1 for _genre, n in counts if n >= min_songs)


# ---- evaluation on the holdout ------------------------------------------------------------

@dataclass(frozen=True)
class HoldoutSong:
    path: str
    genre: str
    fingerprint: str


def read_split(path: Path, part: str) -> list[HoldoutSong]:
    """One part ("test", "train", "validation") of a trainer split.json ([] when absent)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [HoldoutSong(str(s["path"]), str(s["genre"]), str(s.get("fingerprint") or ""))
            for s in data.get(part, []) if isinstance(s, dict) and "path" in s]


def holdout_for(candidate_split: Path, active_split: Path | None) -> list[HoldoutSong]:
    """The gate's holdout: the candidate's test songs that the active model never saw.

    The trainer's artist-disjoint split is stable across runs (artist hash + seed), so the
    test artists were never trained on by either model; songs in the active model's own
    train/validation lists are removed all the same, should its split have differed.
    """
    seen: set[str] = set()
    if active_split is not None:
        seen = {s.path for part in ("train", "validation") for s in read_split(active_split, part)}
    return [s for s in read_split(candidate_split, "test") if s.path not in seen]


def with_current_labels(session: Session, songs: list[HoldoutSong]) -> list[HoldoutSong]:
    """The holdout judged by the station's labels now (confirmed label, else mapped tag),
    not by whatever labels the candidate was trained with; songs the DB does not know
    keep the split's genre, songs whose label is gone are dropped."""
    rows = {path: (confirmed, canonical) for path, confirmed, canonical in session.execute(
        select(Track.path, Track.confirmed_genre, Track.canonical_genre)
        .where(Track.path.in_([s.path for s in songs])))}
    out = []
    for song in songs:
        if song.path not in rows:
            out.append(song)
            continue
        genre = rows[song.path][0] or rows[song.path][1]
        if genre:
            out.append(HoldoutSong(song.path, genre, song.fingerprint))
    return out


def evaluate_on(classifier, songs: list[HoldoutSong], features: list[np.ndarray],
                classes: list[str], batch: int = 64) -> dict[str, Any]:
    """`song_metrics` of one model on songs over the union `classes` (unknown genres = 0)."""
    from trainer.evaluate import song_metrics  # numpy-only module: no TensorFlow

    probs = np.zeros((len(songs), len(classes)))
    columns = [classes.index(c) for c in classifier.classes]
    for start in range(0, len(songs), batch):
        part = classifier.predict_songs(features[start:start + batch])
        probs[start:start + len(part)][:, columns] = part
    return song_metrics(probs, [s.genre for s in songs], classes)


# ---- re-scoring pending suggestions -----------------------------------------------------

def _cached_predictions(classifier, cache, rows: list[tuple[int, str | None]], batch: int,
                        counts: dict[str, int]) -> Iterator[tuple[list[int], np.ndarray]]:
    """(id, fingerprint) rows -> (ids, song probabilities) per batch, features from the
    cache only; rows without cached features are counted in counts["no_features"]."""
    for start in range(0, len(rows), batch):
        ids, songs = [], []
        for row_id, fingerprint in rows[start:start + batch]:
            features = cache.get(fingerprint) if fingerprint else None
            if features is None:
                counts["no_features"] += 1
                continue
            ids.append(row_id)
            songs.append(features)
        if ids:
            yield ids, classifier.predict_songs(songs)


def rescore_pending(sessions: sessionmaker[Session], config: Config, classifier, model_id: int,
                    batch: int = 64) -> dict[str, int]:
    """Re-score every pending suggestion of another model with `classifier`, from the cache.

    Each one becomes superseded and a new pending suggestion (model_id, replaces_id -> the
    old one) takes its place. Tracks without cached features keep their suggestion (the
    worker never decodes twice for this). Out: counts rescored / no_features / changed.
    """
    from daemon.audio.featurecache import FeatureCache

    cache = FeatureCache(config.cache_dir, classifier.spec)
    with sessions() as session:
        todo = session.execute(
            select(Suggestion.id, Track.fingerprint).join(Track)
            .where(Suggestion.status == SuggestionStatus.PENDING,
                   (Suggestion.model_id != model_id) | Suggestion.model_id.is_(None))
            .order_by(Suggestion.id)).all()
    counts = {"rescored": 0, "no_features": 0, "changed": 0, "dropped": 0}
    for ids, probs in _cached_predictions(classifier, cache, todo, batch, counts):
        with transaction(sessions) as session:
            for suggestion_id, row in zip(ids, probs, strict=True):
                _replace_suggestion(session, config, classifier.top(row, 3), suggestion_id,
                                    model_id, counts)
    return counts


def resuggest_rejected(sessions: sessionmaker[Session], config: Config, classifier,
                       model_id: int, batch: int = 64) -> dict[str, int]:
    """Give songs the reviewer rejected a second chance with a new model, from the cache.

    A rejected, still unlabelled track gets a pending suggestion again only when the new
    model's genre is one the reviewer has not rejected for it (daemon.review.decisions.
    rejected_genres); otherwise it stays reviewed. Out: counts resuggested /
    still_rejected / no_features.
    """
    from daemon.audio.featurecache import FeatureCache

    cache = FeatureCache(config.cache_dir, classifier.spec)
    rejected = select(Suggestion.track_id).where(
        Suggestion.status == SuggestionStatus.REJECTED)
    with sessions() as session:
        todo = session.execute(
            select(Track.id, Track.fingerprint)
            .where(Track.state == TrackState.REVIEWED, Track.confirmed_genre.is_(None),
                   Track.id.in_(rejected))
            .order_by(Track.id)).all()
    counts = {"resuggested": 0, "still_rejected": 0, "no_features": 0}
    for ids, probs in _cached_predictions(classifier, cache, todo, batch, counts):
        with transaction(sessions) as session:
            now = utcnow()
            for track_id, row in zip(ids, probs, strict=True):
                track = session.get(Track, track_id)
                if (track is None or track.state != TrackState.REVIEWED
                        or track.confirmed_genre is not None):
                    continue  # decided, changed or gone meanwhile
                last_rejected = session.scalar(
                    select(Suggestion.id).where(Suggestion.track_id == track_id,
                                                Suggestion.status == SuggestionStatus.REJECTED)
                    .order_by(Suggestion.id.desc()).limit(1))
                verdict = suggest(session, track, classifier.top(row, 3), model_id=model_id,
                                  audit_genre=None,
                                  audit_min_confidence=config.classifier.audit_min_confidence,
                                  replaces_id=last_rejected, now=now)
                counts["resuggested" if verdict.genre else "still_rejected"] += 1
    return counts


def _replace_suggestion(session: Session, config: Config, top: list[tuple[str, float]],
                        old_id: int, model_id: int, counts: dict[str, int]) -> None:
    """A pending suggestion -> the new model's verdict through THE suggestion rule
    (daemon.suggest.suggestions): rejected genres stay rejected, an audit stands only while the
    model strongly disagrees with the file's tag."""
    old = session.get(Suggestion, old_id)
    # Only if still pending: a reviewer may have decided it meanwhile.
    if old is None or old.status != SuggestionStatus.PENDING:
        return
    track = session.get(Track, old.track_id)
    if track.state != TrackState.SUGGESTED:
        return  # queued again or gone meanwhile: the worker decides afresh
    verdict = suggest(session, track, top, model_id=model_id, audit_genre=old.disagrees_with,
                      audit_min_confidence=config.classifier.audit_min_confidence)
    if verdict.genre is None:
        counts["dropped"] += 1
        return
    counts["rescored"] += 1
    counts["changed"] += verdict.genre != old.genre


# ---- run rows ------------------------------------------------------------------------------

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


def next_nightly_run(config: Config, now: datetime | None = None,
                     history=None) -> datetime | None:
    """When the nightly job fires next (local time), or None when retraining is off.

    `history`: daemon.service.scheduler.NightlyHistory from the run rows (nightly_history(session));
    the one computation is daemon.service.scheduler.next_nightly_run."""
    from daemon.service.scheduler import NightlyHistory
    from daemon.service.scheduler import next_nightly_run as scheduled

    return scheduled(config.retrain, now or datetime.now().astimezone(),
                     history or NightlyHistory())


def _update_run(sessions: sessionmaker[Session], run_id: int, **values: Any) -> None:
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
    from daemon.learn.registry import remove_partial_bundles

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


def _prune_run_dirs(config: Config, keep: int = KEEP_RUNS) -> None:
    runs = sorted(p for p in config.runs_dir.glob("run-*") if p.is_dir())
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ---- the Retrainer --------------------------------------------------------------------------

class Retrainer:
    """Runs training runs for the daemon (nightly job) and the CLI (`retrain --now`).

    start() launches a background thread that recovers cut-off runs and makes sure a first
    model exists; run(trigger) does one whole run in the calling thread; close() stops a
    trainer in progress (its process group) and the thread.
    """

    def __init__(self, config: Config | Live, sessions: sessionmaker[Session], *,
                 poll_seconds: float = NO_MODEL_POLL_SECONDS):
        self.live = as_live(config)
        self.sessions = sessions
        self.poll_seconds = poll_seconds
        self.stop_event = threading.Event()
        self._child: subprocess.Popen | None = None
        self._child_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._initial_done = False  # the start-up thread's work is done (a model exists)
        self.health = Health("retrainer")

    @property
    def config(self) -> Config:
        return self.live.config

    # -- lifecycle

    def start(self) -> None:
        """Background: recover cut-off runs, then train the first model if there is none."""
        self._thread = threading.Thread(target=self._initial_loop, name="retrainer",
                                        daemon=True)
        self._thread.start()

    def close(self, timeout: float = 15.0) -> None:
        """Stop: kill a running trainer's process group (the run is recorded failed)."""
        self.stop_event.set()
        with self._child_lock:
            child = self._child
        if child is not None and child.poll() is None:
            stop_process_group(child, grace=min(KILL_GRACE_SECONDS, timeout / 2))
        if self._thread is not None:
            self._thread.join(timeout)

    def _initial_loop(self) -> None:
        recovered = False
        while not self.stop_event.is_set():
            try:
                if not recovered:
                    with run_lock(self.config) as held:
                        if held:
                            recover_interrupted_runs(self.sessions, self.config)
                    recovered = True
                model, _said = self.ensure_initial_model()
            except Exception as err:  # logged; tried again after the poll interval
                log.exception("retrainer: recovering runs or the first model failed; trying "
                              "again in %.0f min", self.poll_seconds / 60)
                self.health.failed(err)
                model = None
            else:
                self.health.progress()
            if model is not None:
                self._initial_done = True
                return
            self.stop_event.wait(self.poll_seconds)

    def health_report(self) -> dict[str, Any]:
        """daemon.core.health shape: its thread runs until the first model exists; after that
        it is healthy as long as the scheduler can call it (the nightly job)."""
        alive = self._thread is not None and self._thread.is_alive()
        return self.health.report(alive, healthy=alive or self._initial_done,
                                  first_model_done=self._initial_done)

    # -- the first model

    def ensure_initial_model(self) -> tuple[Model | None, str]:
        """The active model, training (subprocess) and activating the first one if needed.

        Without the [trainer] extra, logs exactly what to run and returns (None, reason);
        also (None, reason) when there is not enough tagged data yet. Out: (model, what
        happened).
        """
        from daemon.learn.registry import active_model

        with self.sessions() as session:
            model = active_model(session)
            if model is not None:
                session.expunge(model)
                return model, "a model is active"
        if not trainer_available():
            said = ("no model yet and the trainer is not installed; run: " + INSTALL_HINT)
            log.warning(said)
            return None, said
        train, reason, _facts = self.decide()
        if not train:  # not enough tagged songs yet: say so, look again later
            log.warning("%s; checking again in %.0f min", reason, self.poll_seconds / 60)
            return None, reason
        run = self.run("initial")
        with self.sessions() as session:
            model = active_model(session)
            if model is not None:
                session.expunge(model)
        return model, run.get("reason") or run["status"]

    # -- what the policy says now

    def decide(self, forced: bool = False, now: datetime | None = None
               ) -> tuple[bool, str, dict[str, Any]]:
        """The policy's verdict now, with the counts it used (for `retrain` without --now)."""
        from daemon.learn.registry import active_model

        now = now or utcnow()
        with self.sessions() as session:
            active = active_model(session)
            since = (active.trained_until or active.created_at) if active else None
            new = count_new_labels(session, since)
            genres = trainable_genres(session, self.config.min_songs_per_genre)
            total = count_new_labels(session, None)
            train, reason = should_retrain(now, active, new, self.config.retrain.min_new_labels,
                                           forced, trainable_genres=genres)
            facts = {"active_version": active.version if active else None,
                     "new_labels": new, "labels": total, "trainable_genres": genres}
        return train, reason, facts

    # -- one run

    def run(self, trigger: str) -> dict[str, Any]:
        """One training run: policy -> trainer subprocess -> gate -> swap -> re-score.

        `trigger`: initial | nightly | manual (manual is forced past the policy).
        Out: the run's summary (run_summary shape). Never raises for a failed training:
        that is a 'failed' run with its reason; the active model stays untouched.
        """
        if trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {TRIGGERS}")
        with run_lock(self.config) as held:
            if not held:
                return self._record_skip(trigger, "another training run holds "
                                         f"{self.config.runs_dir / 'retrain.lock'}")
            recover_interrupted_runs(self.sessions, self.config)
            return self._run_locked(trigger)

    def _record_skip(self, trigger: str, reason: str, facts: dict | None = None) -> dict:
        log.info("retrain skipped: %s", reason)
        now = utcnow()
        with transaction(self.sessions) as session:
            run = TrainingRun(trigger=trigger, status=SKIPPED, reason=reason, started_at=now,
                              finished_at=now, summary=facts or {})
            session.add(run)
            session.flush()
            return run_summary(run)

    def _run_locked(self, trigger: str) -> dict[str, Any]:
        from daemon.learn.registry import active_model

        frozen = utcnow()  # labels confirmed after this are "new" for the next run
        train, reason, facts = self.decide(forced=trigger == "manual", now=frozen)
        if not train:
            return self._record_skip(trigger, reason, facts)
        if not trainer_available():
            return self._record_skip(trigger, "the trainer is not installed; run: "
                                     + INSTALL_HINT, facts)
        with self.sessions() as session:
            active = active_model(session)
            if active is not None:
                session.expunge(active)
            labels = confirmed_labels(session)
            since = (active.trained_until or active.created_at) if active else None
            recent = recent_label_paths(session, since)
        with transaction(self.sessions) as session:
            run = TrainingRun(trigger=trigger, status=RUNNING, reason=reason,
                              started_at=frozen, summary={**facts, "owner_pid": os.getpid()})
            session.add(run)
            session.flush()
            run_id = run.id
        run_dir = self.config.runs_dir / f"run-{run_id:05d}-{frozen:%Y%m%d-%H%M%S}"
        log_path = run_dir / "train.log"
        run_dir.mkdir(parents=True, exist_ok=True)
        _update_run(self.sessions, run_id, log_path=str(log_path))
        log.info("training run %d (%s): %s; log %s", run_id, trigger, reason, log_path)
        started = time.monotonic()
        try:
            outcome = self._train_gate_swap(run_id, run_dir, log_path, labels, recent, active,
                                            frozen)
        except Exception as err:  # a bug or I/O error must not leave the row 'running'
            log.exception("training run %d failed", run_id)
            outcome = {"status": FAILED, "reason": f"{type(err).__name__}: {err}"}
        except BaseException:  # Ctrl-C in `retrain --now`: the trainer is already stopped
            _update_run(self.sessions, run_id, status=FAILED, reason="interrupted",
                        finished_at=utcnow())
            raise
        finally:
            for name in ("model.onnx", "model.keras"):  # the registry holds its own copy
                (run_dir / name).unlink(missing_ok=True)
        status, why = outcome.pop("status"), outcome.pop("reason")
        outcome["seconds"] = round(time.monotonic() - started, 1)
        _update_run(self.sessions, run_id, status=status, reason=why,
                    finished_at=utcnow(), model_id=outcome.pop("model_id", None),
                    summary=outcome)
        (log.info if status in (PROMOTED, REJECTED) else log.warning)(
            "training run %d %s: %s", run_id, status, why)
        _prune_run_dirs(self.config)
        with self.sessions() as session:
            return run_summary(session.get(TrainingRun, run_id))

    def _train_gate_swap(self, run_id: int, run_dir: Path, log_path: Path,
                         labels: dict[str, str], recent: set[str], active: Model | None,
                         frozen: datetime) -> dict[str, Any]:
        from daemon.learn.registry import bundle_dir

        labels_path = run_dir / "labels.json"
        labels_path.write_text(json.dumps(labels, indent=1, sort_keys=True), encoding="utf-8")
        warm = None
        if active is not None and (bundle_dir(active) / "model.keras").is_file():
            warm = bundle_dir(active)
        _update_run(self.sessions, run_id, summary={
            "labels": len(labels), "new_labels": len(recent),
            "warm_start": active.version if warm is not None else None})
        holdout_path = run_dir / "holdout.json"
        holdout_path.write_text(json.dumps(holdout_share(recent), indent=1), encoding="utf-8")
        known_path = run_dir / "known.json"
        with self.sessions() as session:
            known_path.write_text(json.dumps(known_files(session)), encoding="utf-8")
        failed = self._train(
            run_id, trainer_command(self.config, run_dir, labels_path, warm, holdout_path,
                                    known_path), log_path)
        if failed is not None:
            return {"status": FAILED, "reason": failed}
        return self.consider(run_dir, run_id=run_id, trained_until=frozen, recent=recent,
                             active=active)

    def consider(self, run_dir: Path, *, run_id: int | None = None,
                 trained_until: datetime | None = None, recent: set[str] | None = None,
                 active: Model | None = None) -> dict[str, Any]:
        """Gate a trained candidate (a trainer --out dir) against the active model, register
        it, and on promotion activate it and re-score pending suggestions.

        `active` defaults to the registry's active model, `recent` to the labels confirmed
        since its training set was frozen. Out: {"status": promoted|rejected|failed,
        "reason", "model_id", "candidate_version", "gate", ...} (stored on the run row).
        """
        from daemon.learn.registry import CANDIDATE, activate, active_model, register_bundle
        from daemon.learn.registry import REJECTED as MODEL_REJECTED
        from daemon.suggest.classifier import Classifier

        if active is None:
            with self.sessions() as session:
                active = active_model(session)
                if active is not None:
                    session.expunge(active)
        if recent is None:
            since = (active.trained_until or active.created_at) if active else None
            with self.sessions() as session:
                recent = recent_label_paths(session, since)
        if not (run_dir / "model.onnx").is_file():
            return {"status": FAILED, "reason": "the trainer exited 0 but wrote no model.onnx"}
        try:
            candidate = Classifier.load(run_dir / "model.onnx", DEFAULT_SPEC)
        except ModelMismatch as err:
            return {"status": FAILED, "reason": f"candidate bundle unusable: {err}"}

        # gate: both models through onnxruntime on the same holdout
        verdict, evaluation = self._gate(run_dir, candidate, active, recent)

        # register (atomic copy + fsync + row), then activate or keep as rejected
        model = register_bundle(
            self.sessions, self.config, run_dir,
            status=CANDIDATE if verdict.promote else MODEL_REJECTED, run_id=run_id,
            trained_until=trained_until or utcnow(), parent_id=active.id if active else None,
            metrics=evaluation.pop("candidate_metrics"))
        result: dict[str, Any] = {"candidate_version": model.version, "model_id": model.id,
                                  "gate": {**verdict.to_json(), **evaluation},
                                  **_trainer_report(run_dir)}
        if not verdict.promote:
            return {**result, "status": REJECTED, "reason": f"gate: {verdict.reason}"}
        activate(self.sessions, model.version)

        # re-score pending suggestions with the new model (features from the cache)
        counts = rescore_pending(self.sessions, self.config, candidate, model.id)
        log.info("re-scored %d pending suggestion(s) with v%04d (%d changed genre, %d without "
                 "cached features)", counts["rescored"], model.version, counts["changed"],
                 counts["no_features"])
        second = resuggest_rejected(self.sessions, self.config, candidate, model.id)
        if second["resuggested"] or second["still_rejected"]:
            log.info("rejected songs: %d suggested again with another genre, %d left as "
                     "rejected (v%04d suggests the rejected genre again)",
                     second["resuggested"], second["still_rejected"], model.version)
        return {**result, "rescored": counts, "resuggested": second, "status": PROMOTED,
                "reason": f"v{model.version:04d} active; gate: {verdict.reason}"}

    def _train(self, run_id: int, argv: list[str], log_path: Path) -> str | None:
        """Run the trainer to the end, the timeout or close(). Out: None, or why it failed."""
        retrain = self.config.retrain
        if self.stop_event.is_set():
            return "daemon stopping"
        proc = start_trainer(argv, log_path, retrain.memory_max_mb)
        with self._child_lock:
            self._child = proc
        _update_run(self.sessions, run_id, pid=proc.pid,
                    summary={"trainer_start_ticks": process_start_ticks(proc.pid),
                             "command": argv})
        deadline = time.monotonic() + retrain.timeout_minutes * 60
        stopped_for = None
        try:
            while True:
                try:
                    proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if self.stop_event.is_set():
                    stopped_for = "stopped: the daemon is shutting down"
                elif time.monotonic() > deadline:
                    stopped_for = f"timed out after {retrain.timeout_minutes:g} min"
                if stopped_for:
                    stop_process_group(proc)
                    break
        except BaseException:  # Ctrl-C in `retrain --now`: never leave the trainer behind
            stop_process_group(proc, grace=2.0)
            raise
        finally:
            with self._child_lock:
                self._child = None
            # A trainer's own children (decode pool) die with its process group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode == 0 and stopped_for is None:
            return None
        return failure_reason(proc.returncode, log_tail(log_path),
                              memory_mb=retrain.memory_max_mb, stopped_for=stopped_for)

    def _gate(self, run_dir: Path, candidate, active: Model | None, recent: set[str]
              ) -> tuple[GateDecision, dict[str, Any]]:
        """Both models on the same holdout; out: the verdict and what was measured."""
        from daemon.audio.featurecache import FeatureCache
        from daemon.learn.registry import bundle_dir
        from daemon.suggest.classifier import Classifier

        active_split = bundle_dir(active) / "split.json" if active is not None else None
        songs = holdout_for(run_dir / "split.json", active_split)
        with self.sessions() as session:
            songs = with_current_labels(session, songs)
        cache = FeatureCache(self.config.cache_dir, candidate.spec)
        kept, features = [], []
        for song in songs:
            f = cache.get(song.fingerprint) if song.fingerprint else None
            if f is not None:
                kept.append(song)
                features.append(f)
        facts: dict[str, Any] = {
            "holdout_songs": len(kept), "holdout_without_features": len(songs) - len(kept),
            "holdout_recent_labels": sum(s.path in recent for s in kept),
            "recent_labels": len(recent)}
        classes = list(candidate.classes)
        old = None
        if active is not None:
            try:
                old = Classifier.load(active.path, candidate.spec)
            except ModelMismatch as err:
                log.warning("active model v%04d cannot be evaluated (%s); the candidate "
                            "replaces it", active.version, err)
        if old is not None:
            classes += [c for c in old.classes if c not in classes]
        mine = evaluate_on(candidate, kept, features, classes)
        theirs = evaluate_on(old, kept, features, classes) if old is not None else None
        verdict = gate(mine, theirs, self.config.retrain.max_f1_drop,
                       self.config.retrain.max_recall_drop)
        facts["candidate_metrics"] = mine
        facts["candidate"] = _brief(mine)
        facts["active"] = _brief(theirs) if theirs else None
        return verdict, facts


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "n_songs": metrics["n_songs"],
            "recall": {g: s["recall"] for g, s in metrics["per_class"].items() if s["support"]}}


def _trainer_report(run_dir: Path) -> dict[str, Any]:
    """The data facts the trainer reported (songs, decoded vs cached), for the run row."""
    try:
        report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    keep: dict[str, Any] = {"trainer_warm_start": (report.get("fit") or {}).get("warm_start")}
    for key in ("training_set", "training_set_hash", "cache", "timings"):
        if key in report:
            keep[f"trainer_{key}"] = report[key]
    return keep


# ---- the nightly job ------------------------------------------------------------------------

def nightly_job(retrainer: Retrainer) -> dict[str, Any] | None:
    """The scheduler's nightly entry point: one run of the service's Retrainer; logs and
    does nothing when the daemon is shutting down."""
    if retrainer.stop_event.is_set():
        log.info("nightly retrain skipped: the retrainer is stopping")
        return None
    if not retrainer.config.retrain.enabled:
        log.info("nightly retrain skipped: retrain.enabled is false")
        return None
    try:
        result = retrainer.run("nightly")
    except Exception as err:  # recorded for status; the scheduler logs it, the next night retries
        retrainer.health.failed(err)
        raise
    retrainer.health.progress()
    return result
