"""Cold start in the daemon: an untagged library gets an unverified model at once, and the
first trained model replaces it.

One small station (real encoders, a real migrated SQLite file): Electronic is tagged, Rock
and Jazz are not, so no model can be trained (one genre with enough songs). The Retrainer
builds the cold-start bundle (`python -m trainer coldstart` as a child), registers and
activates it as unverified; the worker suggests genres for the untagged songs with it;
the music director confirms the Rock songs; then the policy trains at once and the gate
promotes the trained model over the unverified one without comparing.

The tests run in file order and build on each other's state (each says what it expects).
Needs `make backbone` (part of `make test`).
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import EXE, wait_for, write_config
from sqlalchemy import select
from stations import Station, open_station

from daemon.cli.demo import make_library
from daemon.core.config import parse_config
from daemon.core.db.engine import open_database
from daemon.core.db.models import Model, Track, TrainingRun
from daemon.core.states import TrackState
from daemon.learn import registry
from daemon.learn.coldstart import is_unverified
from daemon.learn.policy import should_retrain
from daemon.learn.retrainer import Retrainer
from daemon.library.reconcile import Library
from daemon.review import decisions as review
from daemon.suggest.classifier import Classifier
from daemon.suggest.worker import Worker
from daemon.tags.genres import load_genre_map

pytestmark = pytest.mark.slow

MIN_SONGS = 4
NOW = datetime(2026, 3, 10, 3, 0, tzinfo=UTC)


def cold_model(version: int = 1) -> Model:
    return Model(version=version, path="/x/model.onnx", sha256="0" * 64, status="active",
                 classes=["Jazz", "Rock"], metrics={"family": "coldstart", "unverified": True},
                 trained_until=None, created_at=NOW - timedelta(hours=1))


@pytest.mark.parametrize(("genres", "expected", "says"), [
    (2, True, "only the unverified cold-start model v0001 so far: training the first"),
    (1, False, "1 genre(s) have enough tagged songs"),
])
def test_an_unverified_model_counts_as_none_for_the_policy(genres, expected, says):
    """However few labels arrived since the cold start, the first model is trained as soon
    as two genres have enough songs (a trained model's threshold does not apply)."""
    train, reason = should_retrain(NOW, cold_model(), 0, 25, False, trainable_genres=genres)
    assert (train, says in reason) == (expected, True), reason


def open_cold_station(base: Path) -> Station:
    library = base / "library"
    songs = [*make_library(library, songs_per_genre=6, genres=("Electronic",),
                           untagged_share=0.0, seconds=(6, 8), formats=(".flac", ".mp3"),
                           artists_per_genre=6, broken=0, seed=1),
             *make_library(library, songs_per_genre=6, genres=("Rock", "Jazz"),
                           untagged_share=1.0, seconds=(6, 8), formats=(".ogg", ".wav"),
                           artists_per_genre=6, broken=0, seed=2)]
    return open_station(
        base, truth={s.path.relative_to(library).as_posix(): s.genre for s in songs},
        min_songs_per_genre=MIN_SONGS, library={"settle_seconds": 0},
        workers={"processes": 1}, review={"write_tags": False},
        retrain={"min_new_labels": 50, "epochs": 3, "timeout_minutes": 10})


@pytest.fixture(scope="module")
def cold_station(tmp_path_factory):
    """The module's station: walked, no model yet (Electronic tagged, Rock and Jazz not)."""
    station = open_cold_station(tmp_path_factory.mktemp("coldstation"))
    library = Library(station.config, station.sessions, load_genre_map(None))
    library.reconcile()
    library.settle_due(now=time.time() + 60)
    yield station
    station.close()


def test_no_labels_to_train_gives_an_active_unverified_cold_start_model(cold_station):
    retrainer = Retrainer(cold_station.config, cold_station.sessions)
    train, reason, facts = retrainer.decide()
    assert not train and facts["trainable_genres"] == 1, reason

    model, said = retrainer.ensure_initial_model()
    assert model is not None and model.version == 1, said
    assert "cold start v0001 active (unverified)" in said
    assert model.status == "active" and is_unverified(model)
    assert model.metrics == {"family": "coldstart", "unverified": True}
    assert model.n_songs == 0 and model.parent_id is None
    assert model.classes == list(load_genre_map().cold_start)  # Classical has no tag
    classifier = Classifier.load(model.path)
    assert (classifier.family, classifier.unverified) == ("coldstart", True)
    assert classifier.needs == {"backbone"} and classifier.has_embedding
    log = cold_station.config.runs_dir / "coldstart" / "coldstart.log"
    assert "cold start, unverified" in log.read_text()
    assert not (log.parent / "model.onnx").exists()  # the registry holds its copy

    # The CLI says so
    config = write_config(cold_station.base / "cli.toml", cold_station.library,
                          cold_station.config.state_dir)
    shown = subprocess.run([*EXE, "--config", str(config), "models", "show", "1"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "unverified:    yes: the cold start" in shown.stdout
    listed = subprocess.run([*EXE, "--config", str(config), "models", "list", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert [m["unverified"] for m in json.loads(listed.stdout)] == [True], listed.stderr

    # Asked again (the retrainer's poll): the same model, nothing rebuilt, no training run
    again, said = retrainer.ensure_initial_model()
    assert again.id == model.id, said
    with cold_station.sessions() as session:
        assert len(registry.list_models(session)) == 1
        assert session.scalars(select(TrainingRun)).all() == []


def test_the_worker_suggests_with_the_cold_start_model(cold_station):
    cold = cold_station.active()
    with cold_station.sessions() as session:
        queued = session.scalars(select(Track).where(
            Track.state == TrackState.QUEUED)).all()
    assert len(queued) == 12  # Rock and Jazz: untagged
    worker = Worker(cold_station.config, cold_station.sessions, drain_seconds=5)
    worker.start()
    try:
        wait_for(lambda: len(cold_station.pending()) == 12, 180, "a suggestion per untagged song")
    finally:
        worker.close()
    pending = cold_station.pending()
    assert {s.model_id for s in pending} == {cold.id}
    assert all(s.genre in cold.classes for s in pending)
    said = {}
    with cold_station.sessions() as session:
        for s in pending:
            truth = cold_station.truth[session.get(Track, s.track_id).path]
            said.setdefault(truth, []).append(s.genre)
    # Generated tones are not music: what the MSD tags hear is shown, not asserted.
    print("cold-start suggestions by true genre:", json.dumps(said))


def test_the_first_trained_model_replaces_the_cold_start(cold_station):
    cold = cold_station.active()
    pending = cold_station.pending()
    with cold_station.sessions() as session:
        paths = {s.id: session.get(Track, s.track_id).path for s in pending}
    for suggestion in pending:  # the music director confirms the Rock songs
        truth = cold_station.truth[paths[suggestion.id]]
        if truth != "Rock":
            continue
        if suggestion.genre == truth:
            review.accept(cold_station.sessions, cold_station.config, [suggestion.id], who="md")
        else:
            review.override(cold_station.sessions, cold_station.config, suggestion.id, truth,
                            who="md")
    retrainer = Retrainer(cold_station.config, cold_station.sessions)
    train, reason, facts = retrainer.decide()
    # 6 new labels, far below min_new_labels = 50: trained all the same (no trained model yet)
    assert train and facts["new_labels"] == 6 and facts["trainable_genres"] == 2, reason

    model, said = retrainer.ensure_initial_model()
    assert model is not None and model.version == 2, said
    assert not is_unverified(model) and model.parent_id == cold.id
    assert model.classes == ["Electronic", "Rock"]
    with cold_station.sessions() as session:
        run = session.scalars(select(TrainingRun)).one()
        assert session.get(Model, cold.id).status == "retired"
    assert (run.trigger, run.status, run.model_id) == ("initial", "promoted", model.id)
    assert "unverified cold-start model: a trained model replaces it" in run.summary["gate"][
        "reason"]
    assert run.summary["gate"]["active"] is None  # never compared with the table's guesses
    # No unverified suggestion outlives its model: re-scored from the cache where the
    # trained model's features were there, else the song is queued for the worker again
    assert cold.id not in {s.model_id for s in cold_station.pending()}
    jazz = [p for p, g in cold_station.truth.items() if g == "Jazz"]
    with cold_station.sessions() as session:
        states = {t.path: t.state for t in session.scalars(select(Track))}
    rescored = run.summary["rescored"]
    print("after the cold start:", rescored)
    assert rescored["rescored"] + rescored["requeued"] == len(jazz), rescored
    assert sorted(states[p] for p in jazz) == sorted(
        ["suggested"] * rescored["rescored"] + ["queued"] * rescored["requeued"])
    worker = Worker(cold_station.config, cold_station.sessions, drain_seconds=5)
    worker.start()
    try:
        wait_for(lambda: len(cold_station.pending()) == len(jazz), 180,
                 "the trained model's suggestion for every Jazz song")
    finally:
        worker.close()
    assert {s.model_id for s in cold_station.pending()} == {model.id}
    assert {s.genre for s in cold_station.pending()} <= {"Electronic", "Rock"}


def fresh_config(tmp_path, station, **sections):
    data = {"library": {"root": str(station.library), "settle_seconds": 0},
            "state_dir": str(tmp_path / "state"), "min_songs_per_genre": MIN_SONGS}
    data.update(sections)
    return parse_config(data, "test config")


def test_no_cold_start_when_the_backbone_is_switched_off(tmp_path, cold_station):
    config = fresh_config(tmp_path, cold_station, classifier={"backbone": False})
    engine, sessions = open_database(config.db_url)
    try:
        model, said = Retrainer(config, sessions).ensure_initial_model()
        assert model is None and "classifier.backbone is false" in said
        with sessions() as session:
            assert registry.list_models(session) == []
    finally:
        engine.dispose()


def test_a_station_table_that_maps_nothing_is_a_logged_failure_not_a_model(tmp_path, cold_station):
    """genres.toml in the state dir without [cold_start]: the child refuses (exit 2) with
    the reason, no model is registered, and the daemon goes on (tried again at the poll)."""
    config = fresh_config(tmp_path, cold_station)
    config.genres_path.parent.mkdir(parents=True, exist_ok=True)
    config.genres_path.write_text('canonical = ["Jazz", "Rock"]\n', encoding="utf-8")
    engine, sessions = open_database(config.db_url)
    try:
        model, said = Retrainer(config, sessions).ensure_initial_model()
        assert model is None
        assert "cold start failed: trainer refused to start (exit 2)" in said
        assert "no [cold_start.msd_tags] entry" in said
        with sessions() as session:
            assert registry.list_models(session) == []
    finally:
        engine.dispose()
