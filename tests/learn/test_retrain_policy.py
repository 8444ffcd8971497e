"""The pure parts of retraining: the policy, the gate, failure reasons, the training label,
the trainer's command line. Fixed datetimes and counts, table-driven; no trainer run."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select

from daemon.core.config import parse_config
from daemon.core.db.engine import open_database
from daemon.core.db.models import Model, Track
from daemon.core.labels import LABEL, training_label
from daemon.core.states import TrackState
from daemon.learn.gate import gate
from daemon.learn.labels import current_labels, song_label
from daemon.learn.metrics import paired_comparison, song_metrics
from daemon.learn.policy import holdout_share, should_retrain
from daemon.learn.trainer_process import failure_reason, trainer_command
from daemon.tags.genres import load_genre_map

pytestmark = pytest.mark.slow  # starts the trainer

NOW = datetime(2026, 3, 10, 3, 0, tzinfo=UTC)


def model(trained_until: datetime | None = NOW - timedelta(days=1), version: int = 3) -> Model:
    return Model(version=version, path="/x/model.onnx", sha256="0" * 64, status="active",
                 classes=["Jazz", "Rock"], metrics={}, trained_until=trained_until,
                 created_at=NOW - timedelta(days=2))


@pytest.mark.parametrize(
    ("active", "new_labels", "forced", "genres", "expected", "says"),
    [
        # no model yet: train the first one when at least 2 genres have enough songs
        (None, 0, False, 3, True, "no model yet"),
        (None, 0, False, None, True, "no model yet"),
        (None, 0, False, 1, False, "1 genre(s) have enough"),
        (None, 0, True, 0, True, "no model yet"),  # forced: let the trainer say what lacks
        # a model: the label threshold decides
        (model(), 25, False, 5, True, "25 new confirmed label(s)"),
        (model(), 40, False, 5, True, "threshold 25"),
        (model(), 24, False, 5, False, "nothing to learn: 24"),
        (model(), 0, False, 5, False, "nothing to learn: 0"),
        (model(), 0, True, 5, True, "requested by an operator"),
        (model(trained_until=None), 30, False, 5, True, "frozen 2 days ago"),
        (model(trained_until=NOW - timedelta(days=9)), 3, False, 5, False, "9 days ago"),
    ],
)
def test_should_retrain(active, new_labels, forced, genres, expected, says):
    train, reason = should_retrain(NOW, active, new_labels, 25, forced, trainable_genres=genres)
    assert train is expected
    assert says in reason


GENRES3 = ["Jazz", "Rock", "Pop"]


def judged(n: int, wrong: int, active_wrong: int = 0, limits=(0.5, 5.0)):
    """The gate on n songs (3 genres) where the candidate misses `wrong` songs and the
    active model `active_wrong` (different songs: the first and the last ones)."""
    truth = np.arange(n) % 3
    candidate, active = truth.copy(), truth.copy()
    candidate[:wrong] = (truth[:wrong] + 1) % 3
    if active_wrong:
        active[-active_wrong:] = (truth[-active_wrong:] + 1) % 3
    eye = np.eye(3)
    labels = [GENRES3[i] for i in truth]
    mine, theirs = (song_metrics(eye[p], labels, GENRES3) for p in (candidate, active))
    return gate(mine, theirs, *limits, paired_comparison(labels, candidate, active, GENRES3))


@pytest.mark.parametrize(
    ("n", "wrong", "active_wrong", "promote", "says"),
    [
        (90, 0, 9, True, "not worse with evidence"),  # better
        (90, 0, 0, True, "+0.0 points"),  # the same
        (20, 1, 0, True, "not worse with evidence"),  # one song of 20: no evidence
        (30, 3, 0, True, "95% interval"),  # three of 30 wrong, no more than chance
        (300, 30, 0, False, "worse with evidence"),  # 30 of 300 is evidence
        (300, 100, 10, False, "worse with evidence"),  # a shuffled-label candidate
    ],
)
def test_gate(n, wrong, active_wrong, promote, says):
    verdict = judged(n, wrong, active_wrong)
    assert verdict.promote is promote, verdict.reason
    assert says in verdict.reason


def test_gate_limits_come_from_arguments():
    assert not judged(300, 60).promote
    lenient = judged(300, 60, limits=(40.0, 60.0))
    assert lenient.promote, lenient.reason
    assert lenient.f1_change == pytest.approx(-20.0, abs=2.0)
    assert lenient.f1_interval[0] < lenient.f1_change < lenient.f1_interval[1] < -10


@pytest.mark.parametrize(
    ("returncode", "tail", "stopped", "says"),
    [
        (-signal.SIGKILL, "epoch 2/3\n", None, "killed by SIGKILL"),
        (-signal.SIGABRT, "F env.cc:84] Thread creation via pthread_create() failed.\n", None,
         "out of memory: the trainer hit the 512 MB cap"),
        (1, "Traceback...\nMemoryError: Unable to allocate 3.1 GiB\n", None, "out of memory"),
        (1, "x\nerror: need at least 2 genres with >= 20 songs\n", None,
         "exit 1): error: need at least 2 genres"),
        (2, "error: the trainer needs the [trainer] extra\n", None, "refused to start (exit 2)"),
        (-signal.SIGTERM, "", "timed out after 1 min", "timed out after 1 min"),
    ],
)
def test_failure_reason(returncode, tail, stopped, says):
    assert says in failure_reason(returncode, tail, memory_mb=512, stopped_for=stopped)


def test_a_share_of_recent_labels_is_always_held_out():
    recent = {f"New/{i:03d}.mp3" for i in range(40)}
    held = holdout_share(recent, 0.25)
    assert len(held) == 10 and set(held) <= recent
    assert holdout_share(set(recent), 0.25) == held  # deterministic, order-free
    assert holdout_share({"a.mp3"}, 0.25) == ["a.mp3"]  # at least one
    assert holdout_share(set(), 0.25) == []


# ---- the training label: one rule for the daemon's rows and the trainer's files ---------

@pytest.mark.parametrize(
    ("confirmed", "raw", "expected"),
    [
        ("Jazz", ["Rock"], "Jazz"),  # a reviewer's genre wins over the file's tag
        ("jazz", None, "Jazz"),  # in its canonical spelling
        ("Polka Noir", ["Rock"], "Polka Noir"),  # a genre the map does not know: as given
        (None, ["Rock"], "Rock"),  # no confirmed genre: the tag, mapped
        (None, ["not a genre at all"], None),
        (None, None, None),
    ])
def test_a_song_label_is_the_confirmed_genre_else_the_mapped_tag(confirmed, raw, expected):
    assert song_label(load_genre_map(), confirmed, raw) == expected


def test_the_sql_label_is_the_same_rule_as_the_python_one(database_url):
    _engine, sessions = open_database(database_url)
    rows = [("a.mp3", "Jazz", "Rock"), ("b.mp3", None, "Rock"), ("c.mp3", "Jazz", None),
            ("d.mp3", None, None)]
    with sessions.begin() as session:
        for path, confirmed, canonical in rows:
            session.add(Track(path=path, size=1, mtime=1.0, state=TrackState.REVIEWED,
                              confirmed_genre=confirmed, canonical_genre=canonical))
    with sessions() as session:
        in_sql = dict(session.execute(select(Track.path, LABEL)).all())
        assert current_labels(session, [r[0] for r in rows]) == in_sql
    assert in_sql == {path: training_label(c, t) for path, c, t in rows}
    assert in_sql == {"a.mp3": "Jazz", "b.mp3": "Rock", "c.mp3": "Jazz", "d.mp3": None}


def test_a_genre_newly_learnable_retrains_however_few_labels_are_new():
    train, reason = should_retrain(NOW, model(), 5, 25, False, trainable_genres=3,
                                   new_genres=["Reggae"])
    assert train and "Reggae now has enough songs to be learned (5 new" in reason
    assert should_retrain(NOW, model(), 5, 25, False, new_genres=())[0] is False


@pytest.mark.parametrize(("backbone", "expected"), [(True, ["Reggae"]), (False, [])])
def test_five_confirmed_reggae_songs_are_learned_the_next_night(tmp_path, backbone, expected,
                                                                 database_url):
    """The director confirms five Reggae songs: with the backbone (a genre from 3 songs)
    the nightly run trains, though 5 labels are far below min_new_labels; with the seed
    CNN alone (20 songs a genre) it waits."""
    from daemon.learn.retrainer import Retrainer

    config = parse_config({"library": {"root": str(tmp_path / "lib")},
                           "state_dir": str(tmp_path / "state"), "database_url": database_url,
                           "classifier": {"backbone": backbone}}, "test")
    _engine, sessions = open_database(config.db_url)
    frozen = datetime.now(UTC) - timedelta(days=1)
    with sessions.begin() as session:
        session.add(Model(version=1, path="/x/model.onnx", sha256="0" * 64, status="active",
                          classes=["Jazz", "Rock"], metrics={}, trained_until=frozen,
                          created_at=frozen))
        for genre, n in (("Jazz", 25), ("Rock", 25)):
            for i in range(n):
                session.add(Track(path=f"{genre}/{i}.mp3", size=1, mtime=1.0,
                                  state=TrackState.TAGGED, canonical_genre=genre))
        for i in range(5):
            session.add(Track(path=f"Reggae/{i}.mp3", size=1, mtime=1.0,
                              state=TrackState.REVIEWED, confirmed_genre="Reggae",
                              confirmed_at=datetime.now(UTC)))
    train, reason, facts = Retrainer(config, sessions).decide()
    assert facts["newly_learnable"] == expected and facts["new_labels"] == 5
    assert train is bool(expected), reason


# ---- the trainer's command line -----------------------------------------------------------

def test_the_retrainer_starts_the_trainer_as_python_m_trainer_train(tmp_path):
    library = tmp_path / "library"
    library.mkdir()
    config = parse_config({"state_dir": str(tmp_path / "state"),
                           "library": {"root": str(library)}})
    argv = trainer_command(config, tmp_path / "run", tmp_path / "labels.json", None)
    assert argv[:4] == [sys.executable, "-m", "trainer", "train"]
    # The nightly tournament, with each family's threshold.
    assert argv[argv.index("--family") + 1] == "all"
    assert argv[argv.index("--min-songs") + 1] == "20"
    assert argv[argv.index("--min-songs-backbone") + 1] == "3"
    # One window count: the trainer learns on the windows the service classifies by.
    assert argv[argv.index("--windows") + 1] == "8"
    assert "--no-backbone" not in argv
    # A station that switched the backbone off trains the CNN alone.
    off = parse_config({"state_dir": str(tmp_path / "state"), "library": {"root": str(library)},
                        "classifier": {"backbone": False}})
    no_backbone = trainer_command(off, tmp_path / "run", tmp_path / "labels.json", None)
    assert "--no-backbone" in no_backbone
    shown = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    for option in (*argv[4:], *no_backbone[4:]):
        if option.startswith("--"):
            assert option in shown.stdout


def test_genretagger_evaluate_runs_the_trainers_evaluate(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    (tmp_path / "library").mkdir()
    args = ["evaluate", "--model", str(bad), "--library", str(tmp_path / "library")]
    for module in ("trainer", "daemon.cli"):
        run = subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 2, run.stderr
        assert run.stderr.startswith(f"Usage: python -m {module} evaluate [OPTIONS]")
        assert "Invalid value for" in run.stderr and "bad.onnx" in run.stderr


def test_python_m_trainer_train_logs_its_progress_and_fails_with_exit_1(tmp_path):
    library = tmp_path / "library"
    library.mkdir()
    run = subprocess.run([sys.executable, "-m", "trainer", "train", "--library", str(library),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1, run.stderr
    assert f"INFO trainer.train: 0 labelled songs in {library}" in run.stderr
    assert "error: " in run.stderr and not (tmp_path / "out" / "model.onnx").exists()


def test_the_trainer_never_imports_the_daemons_command_line():
    code = ("import sys, trainer.cli, trainer.__main__; "
            "sys.exit(any(m.startswith('daemon.cli') for m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
