"""daemon.suggest.classifier on real ONNX files run by onnxruntime.

The bundles here are small hand-built ONNX graphs (mean over time -> linear -> softmax),
so these tests need no TensorFlow; tests/trainer/test_trainer.py runs the classifier on a real
exported seed CNN.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from daemon.audio.features import DEFAULT_SPEC, clip_starts, song_features
from daemon.cli.demo import synthesize
from daemon.core.errors import ModelMismatch
from daemon.suggest.classifier import Classifier, read_metadata, song_probabilities

CLASSES = ("Blues", "Electronic", "Jazz")


def write_bundle(path, spec=DEFAULT_SPEC, classes=CLASSES, temperature=1.7, seed=0,
                 metadata=None):
    """A real ONNX model taking (batch, F, T, 1) clips to softmax over `classes`."""
    rng = np.random.default_rng(seed)
    freqs, frames, _ = spec.input_shape
    weights = rng.normal(0, 3, (freqs, len(classes))).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["clips", "axes"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        "tiny",
        [helper.make_tensor_value_info("clips", TensorProto.FLOAT, [None, freqs, frames, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, len(classes)])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
         numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    props = {"classes": json.dumps(list(classes)), "feature_spec": spec.to_json(),
             "temperature": json.dumps(temperature), "clips_per_song": "5",
             "created_at": "2026-01-01T00:00:00+00:00"}
    props.update(metadata or {})
    helper.set_model_props(model, {k: v for k, v in props.items() if v is not None})
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def song(genre, seed=0, seconds=6.0, spec=DEFAULT_SPEC):
    mono = synthesize(genre, seconds, spec.sample_rate, seed, channels=1)[:, 0]
    clips = np.stack([mono[int(s * spec.sample_rate):][:spec.clip_samples]
                      for s in clip_starts(seconds, spec)])
    return song_features(clips, spec)


def test_load_reads_metadata_and_checks_the_spec(tmp_path):
    path = write_bundle(tmp_path / "m.onnx")
    classifier = Classifier.load(path, DEFAULT_SPEC, threads=1)
    assert classifier.classes == CLASSES
    assert classifier.temperature == pytest.approx(1.7)
    assert classifier.spec == DEFAULT_SPEC
    assert len(classifier.sha256) == 64
    meta = read_metadata(path)
    assert meta["classes"] == list(CLASSES) and meta["clips_per_song"] == 5
    assert meta["feature_spec"]["clip_seconds"] == 1.0


def test_songs_are_calibrated_mean_log_probabilities_in_one_batch(tmp_path):
    classifier = Classifier.load(write_bundle(tmp_path / "m.onnx"))
    songs = [song("Blues", 1), song("Jazz", 2), song("Electronic", 3)[:3]]  # 3-clip song too
    probs = classifier.predict_songs(songs)
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    for features, row in zip(songs, probs, strict=True):
        clip = classifier.clip_probabilities(features)
        logits = np.log(clip.astype(np.float64)).mean(axis=0) / 1.7
        expected = np.exp(logits - logits.max())
        np.testing.assert_allclose(row, expected / expected.sum(), atol=1e-6)
        # Alone or batched with other songs: the same answer.
        np.testing.assert_allclose(classifier.predict_songs([features])[0], row, atol=1e-6)
    top = classifier.top(probs[0])
    assert [g for g, _ in top] == [CLASSES[i] for i in np.argsort(probs[0])[::-1]]
    assert top[0][1] >= top[1][1] >= top[2][1]
    assert classifier.predict_songs([]).shape == (0, 3)


def test_temperature_flattens_or_sharpens_song_probabilities():
    clip_probs = np.array([[[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]]])
    sharp, plain, flat = (song_probabilities(clip_probs, t)[0] for t in (0.5, 1.0, 3.0))
    assert sharp[0] > plain[0] > flat[0] > 1 / 3
    # Exact zeros from a saturated softmax stay finite.
    assert np.isfinite(song_probabilities(np.array([[[1.0, 0.0, 0.0]]]), 1.0)).all()


def test_a_bundle_trained_on_other_features_is_refused_naming_the_difference(tmp_path):
    other = dataclasses.replace(DEFAULT_SPEC, clip_seconds=2.0)
    path = write_bundle(tmp_path / "two-second.onnx", spec=other)
    with pytest.raises(ModelMismatch, match=r"clip_seconds: bundle 2\.0, daemon 1\.0"):
        Classifier.load(path, DEFAULT_SPEC)
    # The daemon that computes 2-s features takes it.
    assert Classifier.load(path, other).predict_songs([song("Jazz", spec=other)]).shape == (1, 3)


@pytest.mark.parametrize("metadata, match", [
    ({"classes": None}, "lacks classes"),
    ({"feature_spec": None, "temperature": None}, "lacks feature_spec, temperature"),
    ({"feature_spec": '{"sample_rate": 22050}'}, "feature_spec unreadable"),
])
def test_incomplete_bundles_are_refused(tmp_path, metadata, match):
    path = write_bundle(tmp_path / "m.onnx", metadata=metadata)
    with pytest.raises(ModelMismatch, match=match):
        Classifier.load(path)


def test_files_that_are_not_bundles_are_refused(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model at all" * 10)
    with pytest.raises(ModelMismatch, match="garbage.onnx"):
        Classifier.load(garbage)
    with pytest.raises(ModelMismatch, match="garbage.onnx"):
        read_metadata(garbage)
    with pytest.raises(ModelMismatch, match="cannot read"):
        Classifier.load(tmp_path / "missing.onnx")


@pytest.mark.slow  # runs the CLI in several subprocesses; make test runs it
def test_classify_command_prints_top3_per_file_and_errors_per_file(tmp_path, make_song):
    bundle = write_bundle(tmp_path / "m.onnx")
    good = make_song("good.flac", genre="Jazz", seconds=8)
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"\x00" * 5000)
    missing = tmp_path / "missing.ogg"
    run = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "classify", str(good), str(broken), str(missing),
         "--model", str(bundle), "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr  # some files failed
    out = json.loads(run.stdout)
    by_path = {row["path"]: row for row in out["files"]}
    assert [g["genre"] for g in by_path[str(good)]["genres"]] and \
        len(by_path[str(good)]["genres"]) == 3
    confidences = [g["confidence"] for g in by_path[str(good)]["genres"]]
    assert confidences == sorted(confidences, reverse=True) and 0 < sum(confidences) <= 1.0001
    assert by_path[str(broken)]["error"] and by_path[str(missing)]["error"]
    assert out["model"]["classes"] == list(CLASSES)
    text = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "classify", str(good), "--model", str(bundle)],
        capture_output=True, text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    assert str(good) in text.stdout and "%" in text.stdout


def test_classify_command_refuses_a_broken_model_with_exit_2(tmp_path, make_song):
    good = make_song("good.flac", genre="Jazz", seconds=8)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    run = subprocess.run([sys.executable, "-m", "daemon.cli", "classify", str(good),
                          "--model", str(bad)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "bad.onnx" in run.stderr


def test_evaluate_command_refuses_a_broken_model_with_exit_2(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    (tmp_path / "library").mkdir()
    run = subprocess.run([sys.executable, "-m", "daemon.cli", "evaluate", "--model", str(bad),
                          "--library", str(tmp_path / "library")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "bad.onnx" in run.stderr


def test_big_batches_run_in_bounded_chunks_with_the_same_answers(tmp_path):
    from daemon.suggest.classifier import MAX_CLIPS_PER_RUN

    classifier = Classifier.load(write_bundle(tmp_path / "m.onnx"))
    songs = [song(("Blues", "Jazz", "Electronic")[i % 3], i) for i in range(31)]
    assert sum(len(s) for s in songs) > 2 * MAX_CLIPS_PER_RUN  # chunks split songs
    together = classifier.predict_songs(songs)
    alone = np.concatenate([classifier.predict_songs([s]) for s in songs])
    np.testing.assert_allclose(together, alone, atol=1e-6)
