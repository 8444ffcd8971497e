"""Bundles on the backbone (trainer/head.py, trainer/bundles.py) run by the daemon's
Classifier: real ONNX (the converted musicnn backbone, a seed CNN trained by the real
trainer), songs synthesised per genre and encoded by real encoders, decoded by the
daemon's decoder. Needs `make backbone` (part of `make test`); no TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from daemon.audio.decode import decode_clips
from daemon.audio.features import (
    BACKBONE_SPEC,
    DEFAULT_SPEC,
    EMBEDDING_SPEC,
    backbone_patches,
    song_features,
)
from daemon.cli.demo import encode, synthesize
from daemon.core.errors import ModelMismatch
from daemon.learn.backbone_file import BackboneUnavailable, backbone_onnx
from daemon.suggest.classifier import (
    MAX_CLIPS_PER_RUN,
    MAX_PATCHES_PER_RUN,
    Classifier,
    combine_members,
    read_metadata,
    softmax,
    song_log_probabilities,
    song_probabilities,
)
from trainer import backbone, bundles
from trainer.export import ParityError
from trainer.head import CV_MIN_SONGS_PER_GENRE, fit_head, song_embedding

pytestmark = pytest.mark.slow  # trains heads and bundles

GENRES = ("Classical", "Hip-Hop", "Metal")  # the trained_bundle CNN's genres
FEW_SHOT = "Jazz"  # a genre only the head learns (three songs)
FORMATS = (".mp3", ".flac", ".ogg")


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    """genre -> [song features dict] for 3 training and 2 test songs per genre (the
    few-shot genre: 3 and 1), each encoded by a real encoder and decoded back."""
    folder = tmp_path_factory.mktemp("bundle-songs")
    out: dict[str, list[dict]] = {}
    for g, genre in enumerate((*GENRES, FEW_SHOT)):
        out[genre] = []
        for i in range(5 if genre != FEW_SHOT else 4):
            path = encode(folder / f"{genre} {i}{FORMATS[i % 3]}",
                          synthesize(genre, 9.0, 44_100, 1000 + 10 * g + i), 44_100)
            out[genre].append({"cnn": song_features(decode_clips(path, DEFAULT_SPEC)[1]),
                               "backbone": backbone_patches(decode_clips(path, BACKBONE_SPEC)[1])})
    return out


@pytest.fixture(scope="module")
def session():
    import onnxruntime as ort

    return ort.InferenceSession(str(backbone_onnx()),
                                providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def embedded(songs, session):
    """genre -> [per-patch embeddings (patches, 200)] straight from backbone.onnx."""
    return {genre: [backbone.embed_patches(session, s["backbone"]) for s in group]
            for genre, group in songs.items()}


def split(embedded, genres, train=3):
    x = [song_embedding(e) for g in genres for e in embedded[g][:train]]
    return np.stack(x), [g for g in genres for _ in range(train)]


@pytest.fixture(scope="module")
def head(embedded):
    return fit_head(*split(embedded, GENRES))


@pytest.fixture(scope="module")
def cnn(trained_bundle):
    return onnx.load(str(trained_bundle / "model.onnx"))


def parity_inputs(songs):
    return (np.concatenate([songs[g][0]["cnn"] for g in GENRES]),
            np.concatenate([songs[g][0]["backbone"] for g in GENRES]))


@pytest.fixture(scope="module")
def backbone_bundle(tmp_path_factory, head, songs):
    out = tmp_path_factory.mktemp("bundles") / "backbone.onnx"
    report = bundles.build_backbone(head, out, parity_inputs(songs)[1], temperature=1.4,
                                    metadata={"metrics": {"macro_f1": 1.0}})
    assert set(report) == {"backbone_probs", "embedding"} and max(report.values()) < 1e-5
    return out


def test_the_head_learns_each_genre_from_three_songs(embedded, head, backbone_bundle, songs):
    assert head.classes == GENRES and head.weights.shape == (3, EMBEDDING_SPEC.dim)
    assert "fixed" in head.chosen_by  # three songs a genre: no cross-validation
    classifier = Classifier.load(backbone_bundle)
    held_out = [s for g in GENRES for s in songs[g][3:]]
    predicted = [classifier.classes[i] for i in classifier.predict(held_out).probs.argmax(1)]
    assert predicted == [g for g in GENRES for _ in range(2)]


def test_with_enough_songs_cross_validation_picks_the_strength(embedded):
    # Each 3-s patch as its own example, grouped by song: real embeddings, enough rows.
    x, y, groups = [], [], []
    for genre in GENRES:
        for i, song in enumerate(embedded[genre]):
            x += list(song)
            y += [genre] * len(song)
            groups += [f"{genre}-{i}"] * len(song)
    assert min(y.count(g) for g in GENRES) >= CV_MIN_SONGS_PER_GENRE
    fitted = fit_head(np.stack(x), y, groups=groups)
    assert "cross-validation" in fitted.chosen_by
    assert (np.array(fitted.classes)[fitted.probabilities(np.stack(x)).argmax(1)]
            == np.array(y)).mean() > 0.9
    with pytest.raises(ValueError, match="at least two genres"):
        fit_head(np.stack(x[:5]), ["Metal"] * 5)


def test_backbone_bundle_songs_are_the_head_on_the_mean_embedding(backbone_bundle, head,
                                                                  embedded, songs):
    classifier = Classifier.load(backbone_bundle)
    assert classifier.family == "backbone" and classifier.needs == {"backbone"}
    assert classifier.has_embedding and not classifier.unverified
    group = [s for g in GENRES for s in songs[g]]
    prediction = classifier.predict(group)
    means = np.stack([song_embedding(e) for g in GENRES for e in embedded[g]])
    # The affine identity: mean of per-patch log-softmax / T, softmax == head(mean) / T.
    np.testing.assert_allclose(prediction.probs, softmax(head.logits(means) / 1.4), atol=1e-5)
    for ours, theirs in zip(prediction.embeddings, [e for g in GENRES for e in embedded[g]],
                            strict=True):
        assert ours.dtype == np.float32
        # float32 sums differ with the batch size (2 patches a run here, 8 in theirs).
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    meta = read_metadata(backbone_bundle)
    assert meta["members"] == [{"kind": "backbone", "input": "patches",
                                "output": "backbone_probs", "classes": list(GENRES),
                                "temperature": 1.4, "weight": 1.0}]
    assert meta["temperature"] == 1.4 and meta["metrics"] == {"macro_f1": 1.0}
    assert meta["backbone_spec"] == json.loads(BACKBONE_SPEC.to_json())
    assert meta["embedding"]["output"] == "embedding"
    assert meta["embedding"]["spec"] == json.loads(EMBEDDING_SPEC.to_json())
    assert meta["backbone_licence"] == "ISC" and "CC BY-NC-SA" in meta["backbone_licence_note"]
    assert meta["backbone_wheel_sha256"] == backbone.WHEEL_SHA256 and "feature_spec" not in meta


def test_cnn_bundle_carries_the_backbones_embedding_beside_the_same_cnn(
        tmp_path, cnn, trained_bundle, songs, embedded):
    legacy = Classifier.load(trained_bundle / "model.onnx")
    out = tmp_path / "cnn.onnx"
    clips, patches = parity_inputs(songs)
    bundles.build_cnn(cnn, legacy.classes, out, clips, patches,
                      temperature=legacy.temperature)
    classifier = Classifier.load(out)
    assert classifier.family == "cnn" and classifier.needs == {"cnn", "backbone"}
    group = [s for g in GENRES for s in songs[g]]
    prediction = classifier.predict(group)
    np.testing.assert_allclose(prediction.probs, legacy.predict_songs(group), atol=1e-9)
    for ours, theirs in zip(prediction.embeddings, [e for g in GENRES for e in embedded[g]],
                            strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # Probabilities alone need only the CNN's clips (the gate and rescoring read those).
    np.testing.assert_allclose(classifier.predict_songs([s["cnn"] for s in group]),
                               prediction.probs, atol=1e-12)
    with pytest.raises(ValueError, match="no 'backbone' features"):
        classifier.predict([s["cnn"] for s in group])
    # The backbone switched off: one input, no embedding.
    bundles.build_cnn(cnn, legacy.classes, tmp_path / "plain.onnx", clips, None)
    plain = Classifier.load(tmp_path / "plain.onnx")
    assert plain.needs == {"cnn"} and not plain.has_embedding
    assert plain.predict(group).embeddings is None
    assert "backbone_licence" not in read_metadata(tmp_path / "plain.onnx")


def test_ensemble_is_the_weighted_mean_of_calibrated_member_log_probabilities(
        tmp_path, cnn, trained_bundle, songs, embedded):
    legacy = Classifier.load(trained_bundle / "model.onnx")
    # The head also knows a genre the CNN never saw, from three songs.
    wide = fit_head(*split(embedded, (*GENRES, FEW_SHOT)))
    out = tmp_path / "ensemble.onnx"
    clips, patches = parity_inputs(songs)
    bundles.build_ensemble(cnn, legacy.classes, wide, out, clips, patches,
                           temperatures=(1.3, 0.7), weights=(0.6, 0.4))
    classifier = Classifier.load(out)
    assert classifier.family == "ensemble" and classifier.needs == {"cnn", "backbone"}
    assert classifier.classes == (*legacy.classes, FEW_SHOT)
    assert [(m.kind, m.weight) for m in classifier.members] == [("cnn", 0.6), ("backbone", 0.4)]
    group = [s for g in (*GENRES, FEW_SHOT) for s in songs[g]]
    probs = classifier.predict(group).probs
    # By hand: each member's song log-probabilities, mixed per genre over who knows it.
    cnn_lp = np.stack([song_log_probabilities(legacy.clip_probabilities(s["cnn"])[None], 1.3)[0]
                       for s in group])
    head_lp = np.stack([song_log_probabilities(wide.probabilities(
        backbone.embed_patches(backbone_onnx(), s["backbone"]))[None], 0.7)[0]
        for s in group])
    mixed = np.empty((len(group), 4))
    for c, genre in enumerate(classifier.classes):
        h = wide.classes.index(genre)
        if genre in legacy.classes:
            k = legacy.classes.index(genre)
            mixed[:, c] = 0.6 * cnn_lp[:, k] + 0.4 * head_lp[:, h]
        else:
            mixed[:, c] = head_lp[:, h]  # only the head knows it: its own log-probability
    np.testing.assert_allclose(probs, softmax(mixed), atol=1e-5)
    assert classifier.top(probs[-1])[0][0] == FEW_SHOT  # the held-out Jazz song
    # Many songs at once run in bounded chunks per input, with the same answers.
    many = group * 2
    assert sum(len(s["backbone"]) for s in many) > 4 * MAX_CLIPS_PER_RUN
    alone = np.concatenate([classifier.predict([s]).probs for s in many])
    real_run, fed = classifier.session.run, []

    def run(outputs, feeds):  # the real session, its batch sizes noted
        fed.append({name: len(value) for name, value in feeds.items()})
        return real_run(outputs, feeds)

    classifier.session.run = run
    np.testing.assert_allclose(classifier.predict(many).probs, alone, atol=1e-6)
    assert max(f["clips"] for f in fed) == MAX_CLIPS_PER_RUN
    assert max(f["patches"] for f in fed) == MAX_PATCHES_PER_RUN  # ~30 MB each in flight
    assert sum(f["patches"] for f in fed) == sum(len(s["backbone"]) for s in many)


def test_combine_members_is_the_mean_over_members_that_know_the_genre():
    classes = ("A", "B", "C")
    first = np.log(np.array([[0.7, 0.2, 0.1]]))
    second = ("C", "A"), np.log(np.array([[0.5, 0.5]]))
    got = combine_members([first, second], [1.0, 3.0], classes)
    expected = softmax(np.array([[(np.log(0.7) + 3 * np.log(0.5)) / 4, np.log(0.2),
                                  (np.log(0.1) + 3 * np.log(0.5)) / 4]]))
    np.testing.assert_allclose(got, expected, atol=1e-12)
    # One member: exactly the seed CNN's song probabilities.
    clip_probs = np.array([[[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]])
    np.testing.assert_allclose(
        combine_members([song_log_probabilities(clip_probs, 1.5)], [1.0], classes),
        song_probabilities(clip_probs, 1.5), atol=1e-12)
    with pytest.raises(ValueError, match=r"no member knows \['B'\]"):
        combine_members([second], [1.0], classes)
    with pytest.raises(ValueError, match="does not fit"):
        combine_members([(("A", "Z"), np.zeros((1, 2)))], [1.0], classes)


def test_a_legacy_bundle_still_loads_and_predicts_as_before(trained_bundle, songs):
    classifier = Classifier.load(trained_bundle / "model.onnx")
    assert classifier.family == "cnn" and classifier.needs == {"cnn"}
    assert not classifier.has_embedding and not classifier.unverified
    assert [m.kind for m in classifier.members] == ["cnn"]
    group = [s["cnn"] for g in GENRES for s in songs[g]]
    # The rule before members existed: mean clip log-probability / T, softmax.
    before = np.stack([song_probabilities(classifier.clip_probabilities(s)[None],
                                          classifier.temperature)[0] for s in group])
    np.testing.assert_allclose(classifier.predict_songs(group), before, atol=1e-12)
    prediction = classifier.predict([{"cnn": s} for s in group])
    np.testing.assert_allclose(prediction.probs, before, atol=1e-12)
    assert prediction.embeddings is None


def rewrite(source, target, **changes):
    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    props.update({k: json.dumps(v) for k, v in changes.items()})
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(target))
    return target


def test_a_bundle_whose_backbone_spec_differs_is_refused_naming_the_field(tmp_path,
                                                                         backbone_bundle):
    other = dataclasses.replace(BACKBONE_SPEC, fmax=11_025.0)
    path = rewrite(backbone_bundle, tmp_path / "other.onnx",
                   backbone_spec=json.loads(other.to_json()))
    with pytest.raises(ModelMismatch, match=r"backbone_spec.*fmax: bundle 11025\.0, "
                                            r"daemon 8000\.0"):
        Classifier.load(path)
    # Windows per song is a run-time choice: a bundle fitted on 8 patches a song loads.
    eight = dataclasses.replace(BACKBONE_SPEC, clips_per_song=8)
    loaded = Classifier.load(rewrite(backbone_bundle, tmp_path / "eight.onnx",
                                     backbone_spec=json.loads(eight.to_json())),
                             windows_per_song=8)
    assert loaded.windows_per_song == 8
    # An embedding from another checkpoint is not what this daemon caches.
    embedding = read_metadata(backbone_bundle)["embedding"]
    embedding["spec"]["wheel_sha256"] = "0" * 64
    with pytest.raises(ModelMismatch, match=r"embedding.*wheel_sha256"):
        Classifier.load(rewrite(backbone_bundle, tmp_path / "e.onnx", embedding=embedding))
    with pytest.raises(ModelMismatch, match="lacks backbone_spec"):
        model = onnx.load(str(backbone_bundle))
        kept = [p for p in model.metadata_props if p.key != "backbone_spec"]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        onnx.save(model, str(tmp_path / "none.onnx"))
        Classifier.load(tmp_path / "none.onnx")


def test_a_composed_bundle_that_disagrees_with_its_parts_is_not_written(tmp_path, head, songs):
    out = tmp_path / "backbone.onnx"
    with pytest.raises(ParityError, match="backbone.onnx not written"):
        bundles.build_backbone(head, out, parity_inputs(songs)[1], tolerance=-1.0)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_missing_onnx_backbone_names_the_command(tmp_path):
    with pytest.raises(BackboneUnavailable, match="make backbone"):
        backbone_onnx(tmp_path)


def test_heads_and_bundles_need_no_tensorflow():
    check = """
import sys
import trainer.bundles, trainer.export, trainer.head
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx"))
print(loaded)
sys.exit(1 if loaded else 0)
"""
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr


def test_classify_runs_a_backbone_bundle_from_one_decode_pass(backbone_bundle, tmp_path):
    """`genretagger classify` computes what the bundle's members take (here only patches:
    a backbone bundle has no clips input) and says which family answered."""
    import json
    import subprocess

    from helpers import EXE

    song = encode(tmp_path / "metal.mp3", synthesize("Metal", 9.0, 44_100, 4242), 44_100)
    done = subprocess.run(EXE + ["classify", str(song), "--model", str(backbone_bundle),
                                 "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["model"]["family"] == "backbone" and answer["model"]["unverified"] is False
    assert answer["files"][0]["genres"][0]["genre"] == "Metal"
