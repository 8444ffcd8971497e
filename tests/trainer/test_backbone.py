"""The pretrained backbone: the fetched musicnn wheel, its ONNX conversion against
TensorFlow, and feature contract 2 (daemon.audio.features) against musicnn's librosa recipe.

Needs `make backbone` (part of `make test`): the wheel and its checkpoint, never fetched
here. Songs are generated and encoded by real encoders, decoded by the daemon's decoder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import librosa
import numpy as np
import pytest

from daemon.audio.decode import decode_clips, probe, read_window
from daemon.audio.features import (
    BACKBONE_SPEC,
    DEFAULT_SPEC,
    BackboneSpec,
    backbone_patches,
    clip_starts,
    mel_filterbank,
)
from daemon.cli.demo import encode, synthesize
from daemon.learn.backbone_file import BackboneUnavailable, default_dir
from trainer import backbone

pytestmark = pytest.mark.slow  # converts the backbone with TensorFlow

SPEC = BACKBONE_SPEC


def musicnn_log_mel(audio: np.ndarray) -> np.ndarray:
    """musicnn/extractor.py's batch_data, whole song -> (frames, 96), but in float32.

    librosa 0.7 (what musicnn required) padded the centred STFT by reflection; librosa
    0.10 pads with zeros by default, so the old default is named. The float16 cast that
    follows in musicnn is left out on purpose (see test_full_scale_song_stays_finite).
    """
    mel = librosa.feature.melspectrogram(y=audio, sr=16_000, hop_length=256, n_fft=512,
                                         n_mels=96, pad_mode="reflect").T
    return np.log10(10_000 * mel + 1)


def musicnn_patches(log_mel: np.ndarray, n_frames: int = 187) -> np.ndarray:
    """musicnn's own patching: consecutive, non-overlapping runs of n_frames frames."""
    return np.stack([log_mel[t:t + n_frames]
                     for t in range(0, log_mel.shape[0] - n_frames + 1, n_frames)])


def windows_at_frames(audio: np.ndarray, frames: list[int], spec: BackboneSpec = SPEC):
    """The windows whose first frame is the whole song's centred frame `t`."""
    starts = [t * spec.hop - spec.n_fft // 2 for t in frames]
    assert min(starts) >= 0
    return np.stack([audio[s:s + spec.patch_samples] for s in starts])


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    """Two real encoded songs (MP3 and FLAC, 44.1 kHz stereo), 40 s each."""
    folder = tmp_path_factory.mktemp("backbone-songs")
    return [encode(folder / "rock.mp3", synthesize("Rock", 40.0, 44_100, 1), 44_100),
            encode(folder / "jazz.flac", synthesize("Jazz", 40.0, 44_100, 2), 44_100)]


@pytest.fixture(scope="module")
def song_patches(songs):
    """Backbone input of both songs, decoded at their clip_starts windows."""
    return np.concatenate([backbone_patches(decode_clips(s, SPEC)[1]) for s in songs])


@pytest.fixture(scope="module")
def converted(tmp_path_factory, song_patches):
    """The ONNX backbone, converted once for the module (parity-checked on real patches)."""
    out = tmp_path_factory.mktemp("backbone") / "backbone.onnx"
    return backbone.convert(out, song_patches)


# ---------------------------------------------------------------- the fetched wheel


def test_fetched_wheel_is_the_pinned_one():
    wheel = default_dir() / backbone.WHEEL_NAME
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == backbone.WHEEL_SHA256
    assert backbone.wheel_path() == wheel
    checkpoint = backbone.checkpoint_dir()
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(backbone.CHECKPOINT_FILES)


def test_licence_and_tags_come_from_the_wheel():
    assert backbone.wheel_licence() == backbone.LICENCE == "ISC"
    tags = backbone.msd_tags()
    assert len(tags) == len(set(tags)) == 50
    assert tags[:3] == ("rock", "pop", "alternative") and tags[-1] == "happy"
    assert {"jazz", "metal", "Hip-Hop", "country", "House"} <= set(tags)


def test_missing_or_altered_wheel_says_how_to_fetch_it(tmp_path):
    with pytest.raises(BackboneUnavailable, match="make backbone"):
        backbone.checkpoint_dir(tmp_path)
    wheel = tmp_path / backbone.WHEEL_NAME
    shutil.copyfile(backbone.wheel_path(), wheel)
    with pytest.raises(BackboneUnavailable, match="not unpacked"):
        backbone.checkpoint_dir(tmp_path)
    data = backbone.unpack(tmp_path) / ".index"
    data.write_bytes(data.read_bytes()[:-1] + b"\0")
    with pytest.raises(BackboneUnavailable, match="differs from the wheel"):
        backbone.checkpoint_dir(tmp_path)
    with open(wheel, "r+b") as file:
        file.seek(1000)
        byte = file.read(1)
        file.seek(1000)
        file.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BackboneUnavailable, match="is not the pinned"):
        backbone.unpack(tmp_path)


# ---------------------------------------------------------------- conversion


def test_onnx_backbone_matches_tensorflow_on_real_patches(converted, song_patches):
    for name, figures in converted.parity.items():
        assert figures["relative"] <= 1e-5, (name, figures)
    assert converted.parity["taggram"]["max_abs_diff"] <= 1e-5
    # Independently of convert's own check: TF and ORT on the patches, output by output.
    theirs = backbone.run_tensorflow(backbone.frozen_graph(backbone.checkpoint_dir()),
                                     song_patches)
    ours = backbone.run_onnx(converted.path, song_patches)
    n = len(song_patches)
    shapes = {"taggram": (n, 50), "penultimate": (n, 200), "max_pool": (n, 753),
              "mean_pool": (n, 753)}
    for name, shape in shapes.items():
        assert ours[name].shape == theirs[name].shape == shape
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-4,
                                   atol=1e-5 * max(1.0, float(np.abs(theirs[name]).max())))
    assert np.all((ours["taggram"] > 0) & (ours["taggram"] < 1))
    # Different music, different tags: the weights are really there.
    assert np.abs(ours["taggram"][:5].mean(0) - ours["taggram"][5:].mean(0)).max() > 0.01


def test_onnx_backbone_says_what_it_is(converted):
    import onnx

    model = onnx.load(converted.path)
    assert [i.name for i in model.graph.input] == [backbone.INPUT]
    assert [o.name for o in model.graph.output] == list(backbone.OUTPUTS)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "patches"
    props = {p.key: p.value for p in model.metadata_props}
    assert props["backbone_licence"] == "ISC"
    assert "CC BY-NC-SA 4.0" in props["backbone_licence_note"]
    assert props["backbone_wheel_sha256"] == backbone.WHEEL_SHA256
    assert BackboneSpec.from_json(props["backbone_spec"]) == SPEC
    assert tuple(json.loads(props["msd_tags"])) == backbone.msd_tags() == converted.tags
    assert 2e6 < converted.size < 5e6
    # Readable by the service's user, not only by whoever ran `make backbone`.
    assert converted.path.stat().st_mode & 0o777 == 0o644


def test_onnx_backbone_runs_without_tensorflow(converted, songs):
    check = f"""
import sys
import numpy as np
from daemon.audio.decode import decode_clips
from daemon.audio.features import BACKBONE_SPEC, backbone_patches
from trainer.backbone import run_onnx
patches = backbone_patches(decode_clips({str(songs[0])!r}, BACKBONE_SPEC)[1])
out = run_onnx({str(converted.path)!r}, patches)
assert out["taggram"].shape == (5, 50) and np.isfinite(out["mean_pool"]).all()
loaded = sorted(m for m in sys.modules
                if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "librosa"))
print(loaded)
sys.exit(1 if loaded else 0)
"""
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "[]"


# ---------------------------------------------------------------- feature contract 2


def test_mel_filterbank_equals_librosa():
    ours = mel_filterbank(SPEC)
    theirs = librosa.filters.mel(sr=16_000, n_fft=512, n_mels=96, htk=False, norm="slaney")
    assert ours.shape == theirs.shape == (96, 257) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9)
    assert mel_filterbank(SPEC) is ours  # computed once
    assert not ours.flags.writeable


@pytest.mark.parametrize("index", [0, 1])
def test_front_end_equals_musicnns_recipe_on_a_decoded_song(songs, index):
    path = songs[index]
    audio = read_window(path, 0.0, probe(path).duration + 1.0, sr=SPEC.sample_rate)
    theirs = musicnn_patches(musicnn_log_mel(audio))
    # musicnn's patches 1..n (patch 0's first frame is the padded start of the song).
    frames = [k * SPEC.patch_frames for k in range(1, len(theirs))]
    ours = backbone_patches(windows_at_frames(audio, frames))
    assert ours.shape == (len(theirs) - 1, 187, 96) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs[1:], rtol=1e-5, atol=1e-5)


def test_full_scale_song_stays_finite(tmp_path, converted):
    # Clipped at full scale: the loudest a mastered song gets.
    samples = np.clip(synthesize("Metal", 12.0, 44_100, 3) * 4.0, -1.0, 1.0)
    path = encode(tmp_path / "loud.flac", samples, 44_100)
    windows = decode_clips(path, SPEC)[1]
    assert np.abs(windows).max() > 0.99
    ours = backbone_patches(windows)
    assert np.isfinite(ours).all()
    outputs = backbone.run_onnx(converted.path, ours)
    assert all(np.isfinite(value).all() for value in outputs.values())
    # musicnn's own float16 cast overflows on the same audio (the case is exercised).
    mel = librosa.feature.melspectrogram(y=windows[0], sr=16_000, hop_length=256, n_fft=512,
                                         n_mels=96, center=False)
    with np.errstate(over="ignore"):
        float16 = np.log10(10_000 * mel.astype(np.float16) + 1)
    assert not np.isfinite(float16).all()


def test_patches_sit_where_the_cnn_clips_sit():
    assert SPEC.patch_samples == 48_128 and SPEC.input_shape == (187, 96)
    assert BackboneSpec.from_json(SPEC.to_json()) == SPEC and SPEC.key != DEFAULT_SPEC.key
    for duration in np.concatenate([np.linspace(SPEC.clip_seconds, 12, 40),
                                    np.linspace(12, 1200, 40)]):
        patches = clip_starts(duration, SPEC)
        clips = clip_starts(duration, DEFAULT_SPEC)
        assert len(patches) == len(clips) == 5
        assert patches[-1] + SPEC.clip_seconds <= duration + 1e-9
        for patch, clip in zip(patches, clips, strict=True):
            # One decode of the patch's window holds the CNN's clip too.
            assert patch - 1e-9 <= clip and clip + DEFAULT_SPEC.clip_seconds \
                <= patch + SPEC.clip_seconds + 1e-9


def test_wrong_window_length_is_refused():
    with pytest.raises(ValueError, match="48128"):
        backbone_patches(np.zeros((2, 16_000), dtype=np.float32))


# ---------------------------------------------------------------- the exact rewrite


def test_rewritten_backbone_equals_the_converted_graph_on_real_songs(converted, song_patches):
    """convert's front-end rewrite changes the arithmetic's order, not the results: every
    output within the TensorFlow parity tolerance of tf2onnx's own graph, on patches
    decoded from real encoded songs, at any batch size."""
    import onnx

    plain = backbone.to_onnx(backbone.frozen_graph(backbone.checkpoint_dir()))
    before = backbone.run_onnx(plain.SerializeToString(), song_patches)
    after = backbone.run_onnx(converted.path, song_patches)
    for name in backbone.OUTPUTS:
        scale = max(1.0, float(np.abs(before[name]).max()))
        assert float(np.abs(after[name] - before[name]).max()) / scale <= 1e-5, name
    half = len(song_patches) // 2
    for one, two in ((before["penultimate"][:half], after["penultimate"][:half]),
                     (before["penultimate"][half:], after["penultimate"][half:])):
        a, b = one.mean(0), two.mean(0)
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.999999
    singles = np.concatenate([backbone.run_onnx(converted.path, song_patches[i:i + 1])
                              ["penultimate"] for i in range(3)])
    np.testing.assert_allclose(singles, after["penultimate"][:3], rtol=1e-5, atol=1e-5)

    model = onnx.load(converted.path)
    produced_by = {out: node for node in model.graph.node for out in node.output}
    pools = [node for node in model.graph.node if node.op_type == "MaxPool"]
    assert len(pools) == 5
    for pool in pools:
        conv = produced_by[pool.input[0]]
        assert conv.op_type == "Conv"  # no batch-norm or ReLU left before a pool
        kernel = next(i for i in model.graph.initializer if i.name == conv.input[1])
        assert kernel.dims[0] % 16 == 0
    props = {p.key: p.value for p in model.metadata_props}
    assert props["backbone_graph"] == backbone.GRAPH_REWRITTEN
