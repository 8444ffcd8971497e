"""The tournament's few-shot genre and its switches, `python -m trainer train` as a real
subprocess on a small generated library (real encoders, the real converted backbone).

Two genres with 20 songs each (the CNN's min_songs) and Jazz with 3 songs by 3 artists:
the backbone head learns Jazz, the CNN leaves it out saying it needs 17 more songs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import BACKBONE_SPEC, EMBEDDING_SPEC
from daemon.cli.demo import make_library
from daemon.suggest.bundle import read_metadata
from daemon.suggest.classifier import Classifier

MIN_SONGS = 20
FEW = 3


def test_the_head_takes_cached_embeddings_of_any_patch_count(tmp_path):
    """The worker caches embeddings of its own windows per song (8), the trainer of 5:
    the head's song probabilities are the head on the mean embedding either way."""
    from trainer.dataset import LabelledSong
    from trainer.families import window_probs
    from trainer.head import fit_head

    rng = np.random.default_rng(0)
    cache = FeatureCache(tmp_path, EMBEDDING_SPEC)
    songs, means = [], []
    for i in range(12):
        genre = ("Jazz", "Rock")[i % 2]
        per_patch = (rng.normal(i % 2, 1.0, (5 if i < 6 else 8, EMBEDDING_SPEC.dim))
                     .astype(np.float32))
        fp = f"{i:032x}"
        cache.put(fp, per_patch)
        songs.append(LabelledSong(tmp_path / f"{i}.flac", f"{i}.flac", genre, f"a{i}", fp))
        means.append(per_patch.mean(axis=0))
    head = fit_head(np.stack(means), [s.genre for s in songs])
    probs = window_probs(head, songs, cache)
    assert probs.shape == (12, BACKBONE_SPEC.clips_per_song, 2)
    np.testing.assert_allclose(probs[:, 0], head.probabilities(np.stack(means)), atol=1e-6)
    assert (probs == probs[:, :1]).all()


def trainer(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "trainer", "train", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def fewshot_library(tmp_path_factory):
    """(base, library): the few-shot library, trained once into base/"all" (every family)."""
    base = tmp_path_factory.mktemp("fewshot")
    library = base / "library"
    make_library(library, songs_per_genre=MIN_SONGS, genres=("Classical", "Electronic"),
                 untagged_share=0.0, seconds=(3, 4), formats=(".flac", ".mp3"),
                 artists_per_genre=5, broken=0, seed=7)
    make_library(library, songs_per_genre=FEW, genres=("Jazz",), untagged_share=0.0,
                 seconds=(3, 4), formats=(".ogg",), artists_per_genre=FEW, broken=0, seed=8)
    run = trainer("--library", library, "--out", base / "all", "--cache", base / "cache",
                  "--epochs", 2, "--min-songs", MIN_SONGS, "--seed", 1)
    assert run.returncode == 0, run.stderr[-3000:]
    return base, library


@pytest.mark.slow
def test_a_genre_with_three_songs_is_learned_by_the_backbone_head(fewshot_library):
    base, _ = fewshot_library
    out = base / "all"
    report = json.loads((out / "report.json").read_text())
    rows = {r["family"]: r for r in report["tournament"]["rows"]}
    assert set(rows) == {"cnn", "backbone", "ensemble"}
    assert "Jazz" in read_metadata(out / "backbone.onnx")["classes"]
    assert "Jazz" in Classifier.load(out / "backbone.onnx").classes
    assert "Jazz" in Classifier.load(out / "ensemble.onnx").classes
    cnn = read_metadata(out / "cnn.onnx")
    assert "Jazz" not in cnn["classes"]
    assert cnn["left_out"] == {"Jazz": {"songs": FEW, "needs": MIN_SONGS - FEW}}
    assert rows["cnn"]["left_out"] == {"Jazz": {"songs": FEW, "needs": MIN_SONGS - FEW}}
    assert rows["backbone"]["left_out"] == {} and "Jazz" in rows["backbone"]["classes"]
    # Jazz has a test song (three artists: one per split), so its recall is measured
    # for every family; the CNN cannot know it, so it misses it.
    assert rows["cnn"]["recall"]["Jazz"] == 0.0
    assert rows["backbone"]["recall"]["Jazz"] is not None
    assert report["left_out"] == rows[report["family"]]["left_out"]


@pytest.mark.slow
def test_no_backbone_trains_the_cnn_alone_without_an_embedding(fewshot_library):
    base, library = fewshot_library
    out = base / "plain"
    run = trainer("--library", library, "--out", out, "--cache", base / "cache",
                  "--epochs", 1, "--min-songs", MIN_SONGS, "--seed", 1, "--no-backbone")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [r["family"] for r in report["tournament"]["rows"]] == ["cnn"]
    assert not (out / "backbone.onnx").exists() and not (out / "ensemble.onnx").exists()
    for name in ("cnn.onnx", "model.onnx"):
        assert "embedding" not in read_metadata(out / name)
        classifier = Classifier.load(out / name)
        assert not classifier.has_embedding and classifier.needs == {"cnn"}
    assert report["left_out"] == {"Jazz": {"songs": FEW, "needs": MIN_SONGS - FEW}}
    # Its CNN features were cached by the first run; nothing about the backbone is asked.
    assert report["cache"]["decoded"] == 0 and "backbone_decoded" not in report["cache"]


@pytest.mark.slow
def test_the_backbone_family_alone_needs_no_cnn(fewshot_library):
    base, library = fewshot_library
    out = base / "backbone"
    run = trainer("--library", library, "--out", out, "--cache", base / "cache",
                  "--family", "backbone", "--min-songs", MIN_SONGS, "--seed", 1)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [r["family"] for r in report["tournament"]["rows"]] == ["backbone"]
    assert not (out / "model.keras").exists() and not (out / "cnn.onnx").exists()
    assert Classifier.load(out / "model.onnx").needs == {"backbone"}
    assert "Jazz" in report["classes"] and report["family"] == "backbone"
    assert report["cache"]["decoded"] == 0 and report["cache"]["embeddings_computed"] == 0


@pytest.mark.slow
def test_evaluate_and_classify_take_a_backbone_bundle(fewshot_library):
    """A bundle without a "clips" input has no feature_spec: evaluate and classify feed it
    the backbone's patches (from the cache / one decode pass) all the same."""
    base, library = fewshot_library
    bundle = base / "all" / "backbone.onnx"
    run = subprocess.run([sys.executable, "-m", "trainer", "evaluate", "--model", bundle,
                          "--library", library, "--cache", base / "cache", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["n_songs"] == 2 * MIN_SONGS + FEW and report["decoded"] == 0
    assert report["clip_accuracy"] is None or 0 <= report["clip_accuracy"] <= 1
    assert report["accuracy"] >= 0.9, report  # training songs included: an easy library
    test = json.loads((base / "all" / "split.json").read_text())["test"]
    files = [library / row["path"] for row in test[:3]]
    run = subprocess.run([sys.executable, "-m", "daemon.cli", "classify", *files, "--model",
                          bundle, "--json"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(run.stdout)["files"]
    assert [r["path"] for r in rows] == [str(f) for f in files]
    assert all(r["error"] is None and len(r["genres"]) == 3 for r in rows)


@pytest.mark.slow
def test_a_station_too_small_for_the_cnn_still_gets_the_backbone_head(fewshot_library):
    """No genre has the CNN's min_songs: --family all is the backbone head alone (a named
    --family cnn fails, saying why)."""
    base, library = fewshot_library
    run = trainer("--library", library, "--out", base / "small", "--cache", base / "cache",
                  "--min-songs", 30, "--seed", 1)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "cnn and ensemble left out of the tournament" in run.stderr
    report = json.loads((base / "small" / "report.json").read_text())
    assert [r["family"] for r in report["tournament"]["rows"]] == ["backbone"]
    assert set(report["classes"]) == {"Classical", "Electronic", "Jazz"}
    run = trainer("--library", library, "--out", base / "small-cnn", "--cache",
                  base / "cache", "--min-songs", 30, "--family", "cnn")
    assert run.returncode == 1 and "at least 2 genres with >= 30 songs" in run.stderr
