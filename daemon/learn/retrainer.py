"""The Retrainer: the background component that runs training runs.

Before any model can be trained, a cold start (daemon.learn.coldstart): an unverified
model from the backbone's MSD tags, active until the first trained model replaces it.

One run: policy (daemon.learn.policy) -> the trainer as a subprocess
(daemon.learn.trainer_process) -> the gate on an artist-disjoint holdout
(daemon.learn.gate) -> register the bundle and activate it (daemon.learn.registry) ->
re-score pending suggestions (daemon.learn.rescore). Each run is a TrainingRun row under
the run lock (daemon.learn.runs).

The scheduler (daemon.service.scheduler) runs "daemon.learn.retrainer:nightly_job" at
retrain.hour, and at once for a night missed while the daemon was down; the Service
registers the live Retrainer as "retrainer".
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from daemon.audio.features import DEFAULT_SPEC
from daemon.core.config import Config
from daemon.core.db.engine import transaction
from daemon.core.db.models import Model, TrainingRun, utcnow
from daemon.core.errors import ModelMismatch
from daemon.core.health import Health
from daemon.learn import coldstart, registry
from daemon.learn.gate import held_out_model, judge
from daemon.learn.labels import (
    confirmed_labels,
    count_new_labels,
    label_counts,
    min_songs_per_genre,
    not_songs,
    recent_label_paths,
)
from daemon.learn.policy import holdout_share, should_retrain
from daemon.learn.rescore import rescore_pending, resuggest_rejected
from daemon.learn.runs import (
    FAILED,
    PROMOTED,
    REJECTED,
    RUNNING,
    SKIPPED,
    TRIGGERS,
    prune_run_dirs,
    recover_interrupted_runs,
    run_lock,
    run_summary,
    update_run,
)
from daemon.learn.trainer_process import (
    INSTALL_HINT,
    KILL_GRACE_SECONDS,
    failure_reason,
    known_files,
    log_tail,
    not_trained_reason,
    process_start_ticks,
    start_trainer,
    stop_process_group,
    supervise,
    trainer_available,
    trainer_command,
    trainer_report,
)
from daemon.suggest.active import active_model
from daemon.suggest.embedded import load_on_embeddings
from daemon.tags.live import Live, as_live

log = logging.getLogger(__name__)

# Without a model, look again this often for enough tagged songs to train one (a new
# station tagging its first songs gets its first model within minutes; the look is one
# count query), and without the trainer say what to run (never idle silently).
NO_MODEL_POLL_SECONDS = 300.0


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
                if not coldstart.is_unverified(model):
                    return
            # No model, or only the cold start: train as soon as the labels suffice.
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

        When none can be trained (not enough tagged data yet, or no [trainer] extra: logged
        with exactly what to run) and no model is active, builds and activates the
        unverified cold-start model instead (when the backbone is there and switched on).
        An active cold-start model is replaced as soon as the policy says train.
        Out: (active model or None, what happened).
        """
        active = self._active()
        if active is not None and not coldstart.is_unverified(active):
            return active, "a model is active"
        train, reason, _facts = self.decide()
        if train and trainer_available():
            run = self.run("initial")
            active = self._active()
            if active is not None and not coldstart.is_unverified(active):
                return active, run.get("reason") or run["status"]
            reason = run.get("reason") or run["status"]
        elif train:
            reason = "no trained model yet and the trainer is not installed; run: " + INSTALL_HINT
            log.warning(reason)
        else:  # not enough tagged songs yet: say so, look again later
            log.warning("%s; checking again in %.0f min", reason, self.poll_seconds / 60)
        if active is None:
            return self.cold_start(reason)
        return active, reason

    def _active(self) -> Model | None:
        with self.sessions() as session:
            model = active_model(session)
            if model is not None:
                session.expunge(model)
        return model

    def cold_start(self, why: str = "") -> tuple[Model | None, str]:
        """Build, register and activate the unverified cold-start model (a child process,
        `python -m trainer coldstart`), unless a model is active. Out: (the active model
        or None, what happened). A failure is logged and tried again at the next poll."""
        said = coldstart.unavailable(self.config)
        if said is not None:
            log.warning(said)
            return None, f"{why}; {said}" if why else said
        with run_lock(self.config) as held:
            if not held:
                return None, "another training run holds the run lock"
            if self._active() is not None:  # another process was quicker
                return self._active(), "a model is active"
            out = self.config.runs_dir / "coldstart"  # the last attempt's log stays there
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            failed = self._child_run(coldstart.coldstart_command(self.config, out),
                                     out / "coldstart.log")
            if failed is not None:
                log.warning("cold start failed (log %s): %s", out / "coldstart.log", failed)
                return None, f"cold start failed: {failed}"
            model = registry.register_bundle(self.sessions, self.config, out,
                                             metrics=dict(coldstart.METRICS))
            (out / "model.onnx").unlink(missing_ok=True)  # the registry holds its own copy
            model = registry.activate(self.sessions, model.version)
        log.warning("cold start: v%04d active, UNVERIFIED (the backbone's MSD tags mapped "
                    "through genres.toml); the first trained model replaces it", model.version)
        return self._active(), f"cold start v{model.version:04d} active (unverified)"

    # -- what the policy says now

    def decide(self, forced: bool = False, now: datetime | None = None
               ) -> tuple[bool, str, dict[str, Any]]:
        """The policy's verdict now, with the counts it used (for `retrain` without --now)."""
        now = now or utcnow()
        with self.sessions() as session:
            active = active_model(session)
            since = (active.trained_until or active.created_at) if active else None
            new = count_new_labels(session, since)
            # The backbone head learns a genre from few songs, when it can be trained here.
            least = (min_songs_per_genre(self.config) if coldstart.unavailable(self.config)
                     is None else self.config.min_songs_per_genre)
            counts = label_counts(session)
            genres = sum(1 for n in counts.values() if n >= least)
            known = set(active.classes or ()) if active is not None else set()
            learnable = sorted(g for g, n in counts.items() if n >= least and g not in known)
            total = count_new_labels(session, None)
            train, reason = should_retrain(now, active, new, self.config.retrain.min_new_labels,
                                           forced, trainable_genres=genres,
                                           new_genres=learnable if active else ())
            facts = {"active_version": active.version if active else None,
                     "new_labels": new, "labels": total, "trainable_genres": genres,
                     "min_songs_per_genre": least, "newly_learnable": learnable}
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
        update_run(self.sessions, run_id, log_path=str(log_path))
        log.info("training run %d (%s): %s; log %s", run_id, trigger, reason, log_path)
        started = time.monotonic()
        try:
            outcome = self._train_gate_swap(run_id, run_dir, log_path, labels, recent, active,
                                            frozen)
        except Exception as err:  # a bug or I/O error must not leave the row 'running'
            log.exception("training run %d failed", run_id)
            outcome = {"status": FAILED, "reason": f"{type(err).__name__}: {err}"}
        except BaseException:  # Ctrl-C in `retrain --now`: the trainer is already stopped
            update_run(self.sessions, run_id, status=FAILED, reason="interrupted",
                       finished_at=utcnow())
            raise
        finally:
            for name in ("model.onnx", "model.keras"):  # the registry holds its own copy
                (run_dir / name).unlink(missing_ok=True)
        status, why = outcome.pop("status"), outcome.pop("reason")
        outcome["seconds"] = round(time.monotonic() - started, 1)
        update_run(self.sessions, run_id, status=status, reason=why,
                   finished_at=utcnow(), model_id=outcome.pop("model_id", None),
                   summary=outcome)
        (log.info if status in (PROMOTED, REJECTED) else log.warning)(
            "training run %d %s: %s", run_id, status, why)
        prune_run_dirs(self.config)
        with self.sessions() as session:
            return run_summary(session.get(TrainingRun, run_id))

    def _train_gate_swap(self, run_id: int, run_dir: Path, log_path: Path,
                         labels: dict[str, str], recent: set[str], active: Model | None,
                         frozen: datetime) -> dict[str, Any]:
        labels_path = run_dir / "labels.json"
        labels_path.write_text(json.dumps(labels, indent=1, sort_keys=True), encoding="utf-8")
        warm = None
        if active is not None:
            folder = registry.bundle_dir(self.sessions, self.config, active)
            warm = folder if (folder / "model.keras").is_file() else None
        update_run(self.sessions, run_id, summary={
            "labels": len(labels), "new_labels": len(recent),
            "warm_start": active.version if warm is not None else None})
        holdout_path = run_dir / "holdout.json"
        holdout_path.write_text(json.dumps(holdout_share(recent), indent=1), encoding="utf-8")
        known_path = run_dir / "known.json"
        not_songs_path = run_dir / "not_songs.json"
        with self.sessions() as session:
            known_path.write_text(json.dumps(known_files(session)), encoding="utf-8")
            not_songs_path.write_text(json.dumps(not_songs(session), indent=1, sort_keys=True),
                                      encoding="utf-8")
        failed = self._train(
            run_id, trainer_command(self.config, run_dir, labels_path, warm, holdout_path,
                                    known_path, not_songs_path), log_path)
        if failed is not None:
            why = not_trained_reason(run_dir)
            if why is not None:  # the library's shape: not a failure, the night is skipped
                return {"status": SKIPPED, "reason": f"not trained: {why}"}
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
            # On cached embeddings: the gate and re-scoring never run its backbone.
            candidate = load_on_embeddings(run_dir / "model.onnx", DEFAULT_SPEC)
        except ModelMismatch as err:
            return {"status": FAILED, "reason": f"candidate bundle unusable: {err}"}

        # gate: both models through onnxruntime on the same holdout, neither having
        # trained on it (the candidate by its held-out fit)
        judged, which = held_out_model(run_dir, candidate)
        verdict, evaluation = judge(self.sessions, self.config, run_dir, judged, active,
                                    recent)
        evaluation["candidate_judged"] = which

        # register (atomic copy + fsync + row), then activate or keep as rejected
        model = registry.register_bundle(
            self.sessions, self.config, run_dir,
            status=registry.CANDIDATE if verdict.promote else registry.REJECTED, run_id=run_id,
            trained_until=trained_until or utcnow(), parent_id=active.id if active else None,
            metrics=evaluation.pop("candidate_metrics"))
        result: dict[str, Any] = {"candidate_version": model.version, "model_id": model.id,
                                  "gate": {**verdict.to_json(), **evaluation},
                                  **trainer_report(run_dir)}
        if not verdict.promote:
            return {**result, "status": REJECTED, "reason": f"gate: {verdict.reason}"}
        registry.activate(self.sessions, model.version)

        # re-score pending suggestions with the new model (features from the cache)
        counts = rescore_pending(self.sessions, self.config, candidate, model.id)
        log.info("re-scored %d pending suggestion(s) with v%04d (%d changed genre, %d without "
                 "cached features)", counts["rescored"], model.version, counts["changed"],
                 counts["no_features"])
        if coldstart.is_unverified(active):  # no unverified suggestion outlives its model
            counts["requeued"] = coldstart.requeue_suggestions(self.sessions, active.id)
            log.info("%d song(s) with a cold-start suggestion queued again for v%04d",
                     counts["requeued"], model.version)
        second = resuggest_rejected(self.sessions, self.config, candidate, model.id)
        if second["resuggested"] or second["still_rejected"]:
            log.info("rejected songs: %d suggested again with another genre, %d left as "
                     "rejected (v%04d suggests the rejected genre again)",
                     second["resuggested"], second["still_rejected"], model.version)
        return {**result, "rescored": counts, "resuggested": second, "status": PROMOTED,
                "reason": f"v{model.version:04d} active; gate: {verdict.reason}"}

    def _train(self, run_id: int, argv: list[str], log_path: Path) -> str | None:
        """Run the trainer to the end, the timeout or close(). Out: None, or why it failed."""
        return self._child_run(argv, log_path, lambda proc: update_run(
            self.sessions, run_id, pid=proc.pid,
            summary={"trainer_start_ticks": process_start_ticks(proc.pid), "command": argv}))

    def _child_run(self, argv: list[str], log_path: Path, started=None) -> str | None:
        """A trainer command as a capped child (start_trainer), to the end, the timeout or
        close(); `started(proc)` runs once it is started. Out: None, or why it failed."""
        retrain = self.config.retrain
        if self.stop_event.is_set():
            return "daemon stopping"
        proc = start_trainer(argv, log_path, retrain.memory_max_mb)
        with self._child_lock:
            self._child = proc
        if started is not None:
            started(proc)
        try:
            stopped_for = supervise(proc, self.stop_event, retrain.timeout_minutes)
        finally:
            with self._child_lock:
                self._child = None
        if proc.returncode == 0 and stopped_for is None:
            return None
        return failure_reason(proc.returncode, log_tail(log_path),
                              memory_mb=retrain.memory_max_mb, stopped_for=stopped_for)


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
