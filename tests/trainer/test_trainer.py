"""The trainer end to end on a tiny generated library, plus its numpy-only parts.

The library is encoded by real encoders and tagged with mutagen (daemon.cli.demo), once per
module; `genretagger train` runs as a real subprocess, as the nightly retrain runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import overconfident_clips

from daemon.cli.demo import encode, make_library, synthesize
from daemon.suggest.classifier import Classifier, read_metadata, song_probabilities
from trainer.dataset import DatasetError, LabelledSong, artist_key
from trainer.evaluate import (
    expected_calibration_error,
    fit_temperature,
    song_metrics,
)
from trainer.split import build_dataset, split_of

pytestmark = pytest.mark.slow  # runs the trainer

GENRES = ("Classical", "Electronic", "Hip-Hop", "Metal")
# With this seed the library's 20 artists split 13/4/3 (train/validation/test), covering
# 4 genres in validation and 3 in test (seed 0 leaves 1 artist each in validation and test).
SEED = 5
BUNDLE_KEYS = {"classes", "feature_spec", "temperature", "clips_per_song", "metrics",
               "training_set", "training_set_hash", "created_at", "parent_model",
               "trainer_version"}


def genretagger(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "daemon.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# ---------------------------------------------------------------- numpy-only parts

def song(rel, genre, artist):
    return LabelledSong(Path(rel), rel, genre, artist_key(artist, None, rel), rel.encode().hex())


def test_artist_key_falls_back_to_album_then_folder():
    from daemon.library.albums import AlbumTags, album_identities

    assert artist_key(" The  Band ", "X", "a/b.mp3") == "artist:the band"
    # No artist: the album (daemon.library.albums' key), else the album folder's.
    live = album_identities([AlbumTags("a/b.mp3", "Live Album", None, None)])[0].key
    assert artist_key(None, "Live Album", "a/b.mp3") == f"album:{live}"
    assert artist_key(None, "LIVE  album", "c/d.mp3") != artist_key(None, "Live", "c/d.mp3")
    assert artist_key("  ", None, "Rock/Live/b.mp3").startswith("album:")
    assert artist_key("  ", None, "b.mp3") == "folder:"


def test_splits_are_artist_disjoint_and_stable_as_the_library_grows():
    small = [song(f"{g}/{a}/{i}.mp3", g, f"{g} artist {a}")
             for g in GENRES for a in range(10) for i in range(3)]
    grown = small + [song(f"{g}/new{a}/{i}.mp3", g, f"{g} newcomer {a}")
                     for g in GENRES for a in range(10) for i in range(3)]
    one, two = build_dataset(small, seed=5, min_songs=5), build_dataset(grown, seed=5,
                                                                        min_songs=5)
    for dataset in (one, two):
        artists = [{s.artist_key for s in dataset.split(n)} for n in ("train", "validation",
                                                                      "test")]
        assert not (artists[0] & artists[1] or artists[0] & artists[2] or artists[1] & artists[2])
        assert sum(len(dataset.split(n)) for n in ("train", "validation", "test")) == \
            len({s.rel for s in dataset.train + dataset.validation + dataset.test})
    for name in ("train", "validation", "test"):
        assert {s.rel for s in one.split(name)} <= {s.rel for s in two.split(name)}
    assert split_of("artist:x", 1) == split_of("artist:x", 1)
    # A different seed makes a different split.
    assert build_dataset(small, seed=6, min_songs=5).test != one.test


def test_holdout_songs_take_their_whole_artist_to_test():
    songs = [song(f"{g}/{a}/{i}.mp3", g, f"{g} artist {a}")
             for g in GENRES for a in range(10) for i in range(3)]
    plain = build_dataset(songs, seed=5, min_songs=5)
    trained = next(s for s in plain.train if s.genre == "Metal")
    held = build_dataset(songs, seed=5, min_songs=5, holdout={trained.rel})
    test_rels = {s.rel for s in held.test}
    assert {s.rel for s in songs if s.artist_key == trained.artist_key} <= test_rels
    assert not any(s.artist_key == trained.artist_key for s in held.train + held.validation)
    # Everyone else keeps their hashed split.
    others = {s.rel for s in plain.test}
    assert others <= test_rels


def test_classes_need_min_songs_and_leftovers_are_reported():
    songs = [song(f"{g}/{a}/{i}.mp3", g, f"{g} artist {a}")
             for g in ("Jazz", "Rock") for a in range(8) for i in range(3)]
    songs += [song(f"Polka/{i}.mp3", "Polka", "polka band") for i in range(4)]
    dataset = build_dataset(songs, seed=0, min_songs=10)
    assert dataset.classes == ("Jazz", "Rock")
    assert dataset.left_out == {"Polka": {"songs": 4, "needs": 6}}
    assert all(s.genre != "Polka" for s in dataset.train + dataset.validation + dataset.test)
    with pytest.raises(DatasetError, match="at least 2 genres"):
        build_dataset(songs, seed=0, min_songs=100)


def test_song_metrics_for_the_gate():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    m = song_metrics(probs, ["Jazz", "Jazz", "Rock", "Rock"], ("Jazz", "Rock"))
    assert m["accuracy"] == 0.75 and m["confusion"] == [[2, 0], [1, 1]]
    assert m["per_class"]["Jazz"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert m["per_class"]["Rock"]["recall"] == 0.5
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert song_metrics(probs, [0, 0, 1, 1], ("Jazz", "Rock"))["confusion"] == m["confusion"]
    # A genre the model does not know counts as a miss with its own row.
    unknown = song_metrics(probs, ["Jazz", "Jazz", "Rock", "Polka"], ("Jazz", "Rock"))
    assert unknown["genres"] == ["Jazz", "Rock", "Polka"]
    assert unknown["per_class"]["Polka"]["recall"] == 0.0 and unknown["accuracy"] == 0.75


def test_temperature_scaling_reduces_overconfidence():
    clip_probs, labels = overconfident_clips(300)
    temperature = fit_temperature(clip_probs, labels)
    assert temperature > 1.5
    before = expected_calibration_error(song_probabilities(clip_probs, 1.0), labels)
    after = expected_calibration_error(song_probabilities(clip_probs, temperature), labels)
    assert after < before / 3


# ---------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("station") / "library"
    songs = make_library(root, songs_per_genre=10, genres=GENRES, untagged_share=0.0,
                         seconds=(8, 12), formats=(".flac", ".ogg", ".mp3", ".wav"),
                         artists_per_genre=5, broken=2, seed=3)
    return root, songs


def test_confirmed_labels_override_file_tags(library, tmp_path):
    from daemon.tags.genres import load_genre_map
    from daemon.tags.write import write_tags
    from trainer.dataset import find_labelled_songs, load_labels

    root, songs = library
    rel = songs[0].path.relative_to(root).as_posix()
    labels_file = tmp_path / "labels.json"
    labels_file.write_text(json.dumps({rel: "Metal"}))
    found, skipped = find_labelled_songs(root, load_genre_map(None), load_labels(labels_file))
    genre_of = {s.rel: s.genre for s in found}
    assert songs[0].genre == "Classical" and genre_of[rel] == "Metal"
    assert len(found) == len(songs) and len(skipped) == 2
    # An untagged file with a confirmed label is a labelled song; without one it is not.
    bare = tmp_path / "lib" / "Someone" / "untagged.flac"
    bare.parent.mkdir(parents=True)
    encode(bare, synthesize("Jazz", 3, 22_050, 0), 22_050)
    write_tags(bare, title="no artist, no album, no genre")
    found, skipped = find_labelled_songs(tmp_path / "lib", load_genre_map(None))
    assert not found and skipped == [("Someone/untagged.flac", skipped[0][1])]
    labels_file.write_text(json.dumps({"Someone/untagged.flac": "jazz"}))
    found, _ = find_labelled_songs(tmp_path / "lib", load_genre_map(None),
                                   load_labels(labels_file))
    assert [(s.genre, s.artist_key) for s in found] == [
        ("Jazz", artist_key(None, None, "Someone/untagged.flac"))]
    labels_file.write_text("[1, 2]")
    with pytest.raises(DatasetError, match="labels.json"):
        load_labels(labels_file)


def test_files_the_daemon_knows_are_not_read_again(library, tmp_path):
    """--known: an unchanged file's fingerprint and tags come from the daemon's list (the
    made-up values below prove the file was not read); a changed one is read again."""
    from daemon.tags.genres import load_genre_map
    from trainer.dataset import find_labelled_songs, load_known

    root, songs = library
    genre_map = load_genre_map(None)
    found, _ = find_labelled_songs(root, genre_map)
    first, second = found[0], found[1]
    known = {}
    for song, stale in ((first, False), (second, True)):
        st = song.path.stat()
        known[song.rel] = {"size": st.st_size, "mtime": st.st_mtime + (60 if stale else 0),
                           "fingerprint": "0" * 32, "artist": "From The Daemon",
                           "album": None, "genres": ["Bebop"]}
    known_file = tmp_path / "known.json"
    known_file.write_text(json.dumps(known))
    again, _ = find_labelled_songs(root, genre_map, known=load_known(known_file))
    by_rel = {s.rel: s for s in again}
    assert (by_rel[first.rel].fingerprint, by_rel[first.rel].genre,
            by_rel[first.rel].artist_key) == ("0" * 32, "Jazz", "artist:from the daemon")
    assert by_rel[second.rel] == second  # its mtime differs: read from the file
    assert [s.rel for s in again] == [s.rel for s in found]
    known_file.write_text('{"a.mp3": {"size": 1}}')
    with pytest.raises(DatasetError, match="known.json"):
        load_known(known_file)


@pytest.fixture(scope="module")
def first_run(library, tmp_path_factory):
    root, _ = library
    base = tmp_path_factory.mktemp("runs")
    run = genretagger("train", "--library", root, "--out", base / "one", "--cache",
                      base / "cache", "--epochs", 5, "--min-songs", 5, "--seed", SEED)
    assert run.returncode == 0, run.stderr[-3000:]
    return base, run


@pytest.mark.slow
def test_train_writes_a_complete_calibrated_bundle(library, first_run):
    root, songs = library
    base, run = first_run
    out = base / "one"
    for name in ("model.onnx", "model.keras", "report.json", "confusion.png",
                 "reliability.png", "split.json"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert report["classes"] == sorted(GENRES)
    assert report["parity_max_abs_diff"] <= 1e-4
    assert report["cache"]["decoded"] == len(songs) and report["cache"]["failed"] == 0
    # The backbone's patches came from the same decode pass; each song embedded once.
    assert report["cache"]["backbone_decoded"] == len(songs)
    assert report["cache"]["embeddings_computed"] == len(songs)
    # The two broken files are reported, not fatal.
    assert {s["path"] for s in report["skipped"]} == {"Incoming/empty.mp3",
                                                      "Incoming/not really.flac"}
    test = report["metrics"]["test"]
    assert test["n_songs"] >= 4
    assert test["song_accuracy"] >= 0.75, report["test"]  # chance is 0.25
    # The CNN's own figures, whichever family won.
    cnn = report["families"]["cnn"]
    calibration = cnn["metrics"]["calibration"]["validation"]
    assert calibration["nll_after"] <= calibration["nll_before"] + 1e-9
    assert 0.2 - 1e-6 <= cnn["temperature"] <= 20
    assert read_metadata(out / "cnn.onnx")["temperature"] == pytest.approx(cnn["temperature"])
    meta = read_metadata(out / "model.onnx")
    # A bundle states the spec of each input it has: a backbone head has no "clips".
    assert set(meta) >= BUNDLE_KEYS - {"feature_spec"} | {"backbone_spec", "embedding"}
    assert ("feature_spec" in meta) == (meta["family"] != "backbone")
    # Trained on the windows the service hears a song by (classifier.windows_per_song).
    assert meta["classes"] == report["classes"] and meta["clips_per_song"] == 8
    assert meta["temperature"] == pytest.approx(report["temperature"])
    assert meta["training_set"]["songs"]["train"] == len(json.loads(
        (out / "split.json").read_text())["train"])
    assert meta["parent_model"] == ""
    assert "test" in run.stdout and "model.onnx" in run.stdout


@pytest.mark.slow
def test_the_tournament_table_is_in_the_report_and_the_winners_metadata(first_run):
    """--family all (the default): cnn.onnx, backbone.onnx and ensemble.onnx, each with
    the embedding output, judged on the same test songs; the winner is model.onnx."""
    base, run = first_run
    out = base / "one"
    report = json.loads((out / "report.json").read_text())
    table = report["tournament"]
    assert [r["family"] for r in table["rows"]] == ["cnn", "backbone", "ensemble"]
    test_songs = json.loads((out / "split.json").read_text())["test"]
    assert table["holdout_songs"] == len(test_songs)
    for row in table["rows"]:
        assert set(row) >= {"family", "accuracy", "macro_f1", "recall", "not_tested", "ece",
                            "temperature", "calibration", "train_seconds", "classes",
                            "left_out"}
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["macro_f1"] <= 1
        assert 0 <= row["ece"] <= 1 and row["train_seconds"] >= 0
        assert row["classes"] and sorted(row["classes"]) == sorted(GENRES)
        # Stratified: every genre learned has test songs, so none is "not tested".
        assert row["not_tested"] == [] and all(v is not None for v in row["recall"].values())
        meta = read_metadata(out / f"{row['family']}.onnx")
        assert meta["family"] == row["family"] and meta["embedding"]["output"] == "embedding"
        classifier = Classifier.load(out / f"{row['family']}.onnx")
        assert classifier.has_embedding and classifier.family == row["family"]
    assert table["rows"][1]["train_seconds"] < table["rows"][0]["train_seconds"]
    winner = next(r for r in table["rows"] if r["family"] == table["winner"])
    assert winner["macro_f1"] == max(r["macro_f1"] for r in table["rows"])
    assert winner["macro_f1"] == pytest.approx(report["test"]["macro_f1"])
    assert report["family"] == table["winner"] and set(report["families"]) == {
        "cnn", "backbone", "ensemble"}
    assert winner["calibration"] == report["metrics"]["calibration"]["how"]
    meta = read_metadata(out / "model.onnx")
    assert meta["tournament"] == table and meta["family"] == table["winner"]
    assert meta["left_out"] == report["left_out"] == {}
    assert Classifier.load(out / "model.onnx").has_embedding
    assert f"tournament: {table['winner']} wins" in run.stdout


@pytest.mark.slow
def test_split_is_artist_disjoint_and_songs_never_cross(library, first_run):
    root, songs = library
    base, _ = first_run
    split = json.loads((base / "one" / "split.json").read_text())
    # "fitted": the served model's songs, every labelled one (the refit after selection).
    fitted = split.pop("fitted")
    artist_of = {s.path.relative_to(root).as_posix(): s.artist for s in songs}
    seen = [row["path"] for rows in split.values() for row in rows]
    assert sorted(row["path"] for row in fitted) == sorted(seen)
    assert len(seen) == len(set(seen)) == len(songs)
    artists = {name: {artist_of[row["path"]] for row in rows} for name, rows in split.items()}
    assert not artists["train"] & artists["test"]
    assert not artists["train"] & artists["validation"]
    assert not artists["validation"] & artists["test"]
    assert all(row["genre"] in GENRES and len(row["fingerprint"]) == 32
               for rows in split.values() for row in rows)


@pytest.mark.slow
def test_rerun_decodes_nothing_warm_starts_keeps_the_split_and_its_time_budget(library, first_run):
    root, songs = library
    base, _ = first_run
    entries = sorted((base / "cache").rglob("*.npy"))
    # Per song: CNN features, backbone patches and per-patch embeddings, one folder each.
    assert len(entries) == 3 * len(songs)
    assert len({p.parent.parent for p in entries}) == 3
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in entries}
    # --time-budget as the nightly run passes it; 3 s are gone after the first epoch of
    # 30, so fitting stops there and the run still ends in a checked bundle.
    run = genretagger("train", "--library", root, "--out", base / "two", "--cache",
                      base / "cache", "--epochs", 30, "--min-songs", 5, "--seed", SEED,
                      "--warm-start", base / "one", "--time-budget", 0.05)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((base / "two" / "report.json").read_text())
    fit = report["families"]["cnn"]["fit"]
    assert fit["stopped_for_time"] is True and fit["epochs_run"] == 1
    assert "would overrun the time budget" in run.stderr
    assert report["parity_max_abs_diff"] <= 1e-4
    assert report["cache"]["decoded"] == 0 and report["cache"]["cached"] == len(songs)
    # A second night: no patch decoded, no song through the backbone again.
    assert report["cache"]["backbone_decoded"] == 0
    assert report["cache"]["embeddings_computed"] == 0
    assert report["cache"]["embeddings_cached"] == len(songs)
    # Not one cache entry was rewritten: nothing was decoded again.
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in entries} == before
    assert fit["warm_start"] is True
    assert json.loads((base / "two" / "split.json").read_text()) == \
        json.loads((base / "one" / "split.json").read_text())
    parent = read_metadata(base / "two" / "model.onnx")["parent_model"]
    assert parent == Classifier.load(base / "one" / "model.onnx").sha256


def test_fit_deadline_keeps_time_for_evaluation_and_export():
    from trainer.train import fit_deadline

    assert fit_deadline(1000.0, None) is None
    assert fit_deadline(1000.0, 180) == 1000.0 + 180 * 60 - 18 * 60  # a tenth of 3 hours
    assert fit_deadline(1000.0, 10) == 1000.0 + 600 - 120  # at least two minutes


@pytest.mark.slow
def test_evaluate_and_classify_through_onnxruntime(library, first_run):
    root, songs = library
    base, _ = first_run
    model = base / "one" / "model.onnx"
    run = genretagger("evaluate", "--model", model, "--library", root, "--cache",
                      base / "cache", "--json", timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["n_songs"] == len(songs) and report["decoded"] == 0
    assert report["accuracy"] >= 0.75 and set(report["per_class"]) == set(GENRES)
    test_rows = json.loads((base / "one" / "split.json").read_text())["test"]
    files = [root / row["path"] for row in test_rows][:4]
    run = genretagger("classify", *files, root / "Incoming" / "empty.mp3", "--model", model,
                      "--json", timeout=300)
    assert run.returncode == 1, run.stderr  # the empty file failed, the others did not
    rows = json.loads(run.stdout)["files"]
    genre_of = {str(root / row["path"]): row["genre"] for row in test_rows}
    right = sum(r["genres"][0]["genre"] == genre_of[r["path"]] for r in rows[:-1])
    assert right >= len(files) - 1
    assert rows[-1]["error"] and not rows[-1]["genres"]


@pytest.mark.slow
def test_train_fails_cleanly(library, first_run, tmp_path):
    root, _ = library
    base, _ = first_run
    run = genretagger("train", "--library", root, "--out", tmp_path / "x", "--cache",
                      base / "cache", "--min-songs", 1000, "--min-songs-backbone", 1000)
    assert run.returncode == 1 and "at least 2 genres" in run.stderr
    assert not (tmp_path / "x" / "model.onnx").exists()
    # Without the [trainer] extra: a message naming it, exit 2.
    code = ("import sys; sys.modules['tensorflow'] = None; sys.argv = ['genretagger', "
            f"'train', '--library', {str(root)!r}, '--out', {str(tmp_path / 'y')!r}]; "
            "from daemon.cli import main; main()")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "pip install 'genretagger[trainer]'" in run.stderr
