"""Retraining end to end with a tiny real model, and its faults.

One small station (3 genres, short songs, real encoders) is shared by the module: the
library is walked into a real SQLite DB (daemon.library.reconcile), the first model is trained by
the Retrainer (`python -m trainer train` as a subprocess), the worker suggests genres for the
untagged songs, and the music director confirms some through daemon.review.decisions. Then:
faults (SIGKILL halfway, timeout, out of memory, the daemon killed mid-training) leave the
active model untouched; `genretagger retrain --now` promotes a new version that re-scores
the pending suggestions; a candidate trained on shuffled labels is rejected; rollback.

The tests run in file order and build on each other's state (each says what it expects).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_for
from sqlalchemy import select
from stations import Station, open_station

from daemon.cli.demo import make_library
from daemon.core.db.models import Suggestion, Track
from daemon.core.states import TrackState
from daemon.learn import registry
from daemon.learn.retrainer import Retrainer
from daemon.learn.runs import run_lock
from daemon.learn.trainer_process import process_start_ticks
from daemon.library.reconcile import Library
from daemon.review import decisions as review
from daemon.suggest.worker import Worker
from daemon.tags.genres import load_genre_map

# Each night trains twice (the held-out fit, then the refit on every label) on 2 cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

GENRES = ("Classical", "Electronic", "Hip-Hop")
FORMATS = (".flac", ".wav", ".ogg", ".mp3")
MIN_SONGS = 5
EPOCHS = 4


def open_retrain_station(base: Path) -> Station:
    library = base / "library"
    # Hip-Hop is mostly untagged: the first model cannot learn it (too few songs); the
    # music director's labels add it, so the next model has a new class.
    songs = [*make_library(library, songs_per_genre=12, genres=GENRES[:2],
                           untagged_share=0.25, seconds=(3, 5), formats=FORMATS,
                           artists_per_genre=12, broken=0, seed=1),
             *make_library(library, songs_per_genre=12, genres=GENRES[2:],
                           untagged_share=0.85, seconds=(3, 5), formats=FORMATS,
                           artists_per_genre=12, broken=0, seed=2)]
    return open_station(
        base, truth={s.path.relative_to(library).as_posix(): s.genre for s in songs},
        min_songs_per_genre=MIN_SONGS, library={"settle_seconds": 0},
        workers={"processes": 1}, review={"write_tags": False},
        retrain={"min_new_labels": 4, "epochs": EPOCHS, "timeout_minutes": 10})


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.fixture(scope="module")
def trained_station(tmp_path_factory):
    """The module's station, walked, with its first model trained and promoted and a
    suggestion for every untagged song."""
    station = open_retrain_station(tmp_path_factory.mktemp("station"))
    library = Library(station.config, station.sessions, load_genre_map(None))
    library.reconcile()
    library.settle_due(now=time.time() + 60)
    with station.sessions() as session:
        states = [t.state for t in session.scalars(select(Track))]
    assert len(states) == len(station.truth)

    # The first model: no active model -> the Retrainer trains one (no gate).
    first = Retrainer(station.config, station.sessions).run("initial")
    assert first["status"] == "promoted", first
    assert station.active().version == 1

    # The worker suggests genres for the untagged songs with model v1.
    worker = Worker(station.config, station.sessions, drain_seconds=5)
    worker.start()
    try:
        wait_for(lambda: len(station.pending()) == states.count(TrackState.QUEUED), 120,
                 "suggestions for every untagged song")
    finally:
        worker.close()
    yield station
    station.close()


def test_first_model_and_confirmed_labels(trained_station):
    v1 = trained_station.active()
    assert v1.trained_until is not None and v1.parent_id is None
    assert v1.classes == ["Classical", "Electronic"]  # too few tagged Hip-Hop songs
    assert (registry.bundle_dir(trained_station.sessions, trained_station.config, v1)
            / "model.keras").is_file()  # for warm starts
    run = trained_station.runs()[-1]
    assert (run.trigger, run.status, run.model_id) == ("initial", "promoted", v1.id)
    assert Path(run.log_path).is_file()
    assert not (Path(run.log_path).parent / "model.onnx").exists()  # the registry has it

    # The music director confirms all but 4 suggestions: right ones accepted, wrong ones
    # set to the true genre (both are confirmed labels).
    pending = trained_station.pending()
    assert all(s.model_id == v1.id for s in pending)
    with trained_station.sessions() as session:
        paths = {s.id: session.get(Track, s.track_id).path for s in pending}
    for suggestion in pending[:-4]:
        truth = trained_station.truth[paths[suggestion.id]]
        if suggestion.genre == truth:
            review.accept(trained_station.sessions, trained_station.config, [suggestion.id],
                          who="md")
        else:
            review.override(trained_station.sessions, trained_station.config, suggestion.id,
                            truth, who="md")
    with trained_station.sessions() as session:
        confirmed = session.scalars(select(Track).where(
            Track.confirmed_genre.is_not(None))).all()
    assert len(confirmed) == len(pending) - 4 >= 4
    assert all(t.confirmed_genre == trained_station.truth[t.path] for t in confirmed)

    status = trained_station.cli("retrain", "--json")
    assert status.returncode == 0, status.stderr
    decision = json.loads(status.stdout)
    assert decision["would_train"] is True and decision["new_labels"] == len(confirmed)
    assert decision["next_nightly"] is not None


def assert_untouched(station: Station, v1_id: int, models_before: int) -> None:
    assert station.active().id == v1_id
    assert len(station.models()) == models_before
    assert all(s.model_id == v1_id for s in station.pending())


def test_trainer_killed_halfway(trained_station):
    v1, n_models = trained_station.active(), len(trained_station.models())
    retrainer = Retrainer(trained_station.config, trained_station.sessions)
    result = {}
    thread = threading.Thread(target=lambda: result.update(retrainer.run("manual")))
    thread.start()
    run = wait_for(lambda: next((r for r in trained_station.runs()
                                 if r.status == "running" and r.pid), None),
                   30, "a running trainer")
    # Halfway: the trainer has its dataset, TensorFlow loaded, and is fitting.
    wait_for(lambda: "training on" in Path(run.log_path).read_text(errors="replace"), 90,
             "the trainer to start fitting")
    os.kill(run.pid, signal.SIGKILL)
    thread.join(60)
    assert result["status"] == "failed" and "killed by SIGKILL" in result["reason"], result
    assert not alive(run.pid)
    assert not (Path(run.log_path).parent / "model.onnx").exists()
    assert_untouched(trained_station, v1.id, n_models)


def test_trainer_timed_out(trained_station):
    v1, n_models = trained_station.active(), len(trained_station.models())
    config = trained_station.reconfigured(retrain={"timeout_minutes": 0.05})  # 3 s
    started = time.monotonic()
    result = Retrainer(config, trained_station.sessions).run("manual")
    assert result["status"] == "failed" and result["reason"] == "timed out after 0.05 min"
    assert time.monotonic() - started < 30
    run = trained_station.runs()[-1]
    assert run.finished_at is not None and not alive(run.pid)
    assert_untouched(trained_station, v1.id, n_models)


def test_trainer_out_of_memory(trained_station):
    v1, n_models = trained_station.active(), len(trained_station.models())
    # too little for TensorFlow
    config = trained_station.reconfigured(retrain={"memory_max_mb": 700})
    result = Retrainer(config, trained_station.sessions).run("manual")
    assert result["status"] == "failed", result
    assert result["reason"].startswith("out of memory: the trainer hit the 700 MB cap"), result
    assert_untouched(trained_station, v1.id, n_models)
    # The next nightly run tries again: failed runs do not move the labels' watermark.
    train, reason, _facts = Retrainer(trained_station.config, trained_station.sessions).decide()
    assert train, reason


def test_daemon_killed_during_training_leaves_no_orphan(trained_station):
    v1, n_models = trained_station.active(), len(trained_station.models())
    owner = subprocess.Popen([sys.executable, "-m", "daemon.cli", "--config",
                              str(trained_station.config_path), "retrain", "--now"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = wait_for(lambda: next((r for r in trained_station.runs()
                                 if r.status == "running" and r.pid), None),
                   60, "the trainer to start")
    assert alive(run.pid) and run.summary["trainer_start_ticks"] == process_start_ticks(run.pid)
    owner.kill()
    owner.wait(10)
    # PR_SET_PDEATHSIG: the trainer dies with the process that started it.
    wait_for(lambda: not alive(run.pid), 10, "the orphaned trainer to die")
    with run_lock(trained_station.config) as held:
        assert held  # nobody is training any more
    # A restarted daemon's Retrainer closes the cut-off run.
    retrainer = Retrainer(trained_station.config, trained_station.sessions, poll_seconds=3600)
    retrainer.start()
    try:
        wait_for(lambda: trained_station.runs()[-1].status != "running", 20, "recovery")
    finally:
        retrainer.close()
    last = trained_station.runs()[-1]
    assert (last.id, last.status, last.reason) == (run.id, "failed",
                                                   "daemon restarted during training")
    assert not list(trained_station.config.models_dir.glob(".v*"))
    assert_untouched(trained_station, v1.id, n_models)


def test_retrain_now_promotes_and_rescores_pending_suggestions(trained_station):
    v1 = trained_station.active()
    before = {s.id: s for s in trained_station.pending()}
    assert len(before) == 4
    done = trained_station.cli("retrain", "--now")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "promoted" in done.stdout, done.stdout

    v2 = trained_station.active()
    assert v2.version == max(m.version for m in trained_station.models()) and v2.id != v1.id
    assert v2.parent_id == v1.id and v2.metrics["n_songs"] > 0
    run = trained_station.runs()[-1]
    assert (run.trigger, run.status, run.model_id) == ("manual", "promoted", v2.id)
    # The labels added a class: the CNN starts from v1's convolutions with a new output
    # layer, and the gate compares both models on the same holdout.
    assert v2.classes == list(GENRES) and run.summary["warm_start"] == v1.version
    assert run.summary["trainer_warm_start"] is True
    assert "new output layer (2 -> 3 genres)" in run.summary["trainer_warm_start_how"]
    gate = run.summary["gate"]
    assert gate["promote"] and gate["holdout_songs"] > 0 and gate["active"] is not None
    assert gate["holdout_recent_labels"] >= 1  # fresh confirmed songs judged every time
    assert run.summary["trainer_cache"]["decoded"] == 0  # every song came from the cache
    # ... and most files were not even opened: the daemon's known.json had them.
    reused = re.search(r"(\d+) of (\d+) files known to the daemon and unchanged",
                       Path(run.log_path).read_text())
    assert reused and int(reused[1]) > 0, "trainer read every file again"

    after = trained_station.pending()
    assert len(after) == len(before)
    assert all(s.model_id == v2.id for s in after)
    assert {s.replaces_id for s in after} == set(before)
    with trained_station.sessions() as session:
        for old_id in before:
            old = session.get(Suggestion, old_id)
            assert (old.status, old.model_id) == ("superseded", v1.id)

    nothing = Retrainer(trained_station.config, trained_station.sessions).run("nightly")
    assert nothing["status"] == "skipped" and "nothing to learn" in nothing["reason"]


def test_shuffled_label_candidate_is_rejected(trained_station):
    active, n_models = trained_station.active(), len(trained_station.models())
    with trained_station.sessions() as session:
        labelled = {t.path: t.confirmed_genre or t.canonical_genre
                    for t in session.scalars(select(Track))
                    if t.confirmed_genre or t.canonical_genre}
    rng = np.random.default_rng(7)
    shuffled = dict(zip(labelled, rng.permutation(list(labelled.values())), strict=True))
    labels = trained_station.base / "shuffled.json"
    labels.write_text(json.dumps(shuffled))
    out = trained_station.base / "shuffled-run"
    trained = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "train", "--library", str(trained_station.library),
         "--out", str(out), "--cache", str(trained_station.config.cache_dir),
         "--labels", str(labels),
         "--epochs", "2", "--min-songs", str(MIN_SONGS)],
        capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]

    outcome = Retrainer(trained_station.config, trained_station.sessions).consider(out)
    assert outcome["status"] == "rejected", outcome
    assert outcome["gate"]["candidate"]["macro_f1"] < outcome["gate"]["active"]["macro_f1"]
    assert trained_station.active().id == active.id
    rejected = trained_station.models()[0]
    assert (rejected.status, len(trained_station.models())) == ("rejected", n_models + 1)
    assert Path(rejected.report_path).is_file()
    assert all(s.model_id == active.id for s in trained_station.pending())


def test_rollback(trained_station):
    current = trained_station.active()
    rolled = trained_station.cli("models", "rollback")
    assert rolled.returncode == 0, rolled.stderr
    back = trained_station.active()
    assert back.id == current.parent_id
    listed = json.loads(trained_station.cli("models", "list", "--json").stdout)
    statuses = {m["version"]: m["status"] for m in listed}
    assert statuses[current.version] == "rolled_back" and statuses[back.version] == "active"
    assert "rejected" in statuses.values()
