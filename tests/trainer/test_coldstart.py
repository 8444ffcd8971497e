"""Cold start: genres.toml's MSD-tag table, and the unverified bundle built from it.

Needs `make backbone` (part of `make test`): the musicnn wheel and the converted ONNX
backbone, never fetched here. The bundle is built by the real `python -m trainer
coldstart` and run through onnxruntime on songs generated, encoded by real encoders and
decoded by the daemon's decoder. The generated songs are tones and filtered noise, not
music: the tests assert the mechanics, never that the MSD tags hear the right genre.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from daemon.audio.decode import decode_clips
from daemon.audio.features import BACKBONE_SPEC, EMBEDDING_SPEC, backbone_patches
from daemon.core.errors import ConfigError
from daemon.learn.backbone_file import backbone_onnx
from daemon.suggest.classifier import song_probabilities
from daemon.tags.genres import MSD_TAGS, default_genres_text, load_genre_map, parse_genre_map
from trainer import backbone
from trainer.coldstart import (
    NoColdStartGenres,
    genre_probabilities,
    mapping_matrix,
)

pytestmark = pytest.mark.slow  # builds cold-start bundles on the backbone

COLDSTART = [sys.executable, "-m", "trainer", "coldstart"]
TWO_GENRES = """canonical = ["Jazz", "Rock", "Classical"]
[cold_start]
verified = false
[cold_start.msd_tags]
Jazz = ["jazz"]
Rock = ["ROCK", "punk", "hard rock"]
"""


# ---- the table ------------------------------------------------------------------------------

def test_daemons_msd_tags_are_the_wheels():
    """The daemon's written-out tag list is the taggram's order, read from the wheel."""
    assert backbone.msd_tags() == MSD_TAGS
    assert len(MSD_TAGS) == 50


def test_shipped_table_names_only_the_wheels_tags_and_canonical_genres():
    genres = load_genre_map()
    wheel = set(backbone.msd_tags())
    assert genres.cold_start, "the shipped genres.toml has a [cold_start] table"
    for genre, tags in genres.cold_start.items():
        assert genre in genres.canonical
        assert tags and set(tags) <= wheel, genre
    # Classical has no MSD tag: no cold-start suggestions for it, rather than a guess
    assert "Classical" not in genres.cold_start
    assert genres.cold_start["Hip-Hop"] == ("Hip-Hop",)
    text = default_genres_text()
    assert "UNVERIFIED" in text and "verified = false" in text


def test_table_spelling_is_matched_ignoring_case_and_stored_as_the_taggrams():
    genres = parse_genre_map(TWO_GENRES)
    assert dict(genres.cold_start) == {"Jazz": ("jazz",), "Rock": ("rock", "punk", "hard rock")}


def test_a_genre_map_without_the_table_has_no_cold_start():
    genres = parse_genre_map('canonical = ["Jazz", "Rock"]\n')
    assert dict(genres.cold_start) == {}
    with pytest.raises(NoColdStartGenres, match="cold_start"):
        mapping_matrix(genres.cold_start, MSD_TAGS)


BAD_TABLES = [
    ('Reggae = ["rock"]', "'Reggae' is not a canonical genre"),
    ('Rock = ["rock", "grunge"]', "'grunge' is not one of the backbone's MSD tags"),
    ('Rock = "rock"', "Rock: must be a list of MSD tags"),
    ('Rock = [1]', "Rock: must be a list of MSD tags"),
]


@pytest.mark.parametrize(("entry", "message"), BAD_TABLES)
def test_a_bad_table_entry_is_a_config_error_naming_it(entry, message):
    text = ('canonical = ["Jazz", "Rock"]\n[cold_start]\nverified = false\n'
            f"[cold_start.msd_tags]\n{entry}\n")
    with pytest.raises(ConfigError, match=message):
        parse_genre_map(text, "station genres.toml")


@pytest.mark.parametrize(("table", "message"), [
    ("[cold_start]\nverified = true\n", "`verified` must be false"),
    ("[cold_start]\nverified = false\nweights = 2\n", "unknown key.*weights"),
    ("cold_start = 3\n", "`cold_start` must be a table"),
])
def test_a_bad_cold_start_table_is_a_config_error(table, message):
    with pytest.raises(ConfigError, match=message):
        parse_genre_map('canonical = ["Jazz"]\n' + table, "station genres.toml")


# ---- the mapping ----------------------------------------------------------------------------

def test_a_genre_scores_its_strongest_tag_not_the_sum_of_its_tags():
    """Three Rock tags at 0.5 and one Jazz tag at 0.5 are an even call: listing more
    synonyms for a genre must not make it likelier."""
    genres = parse_genre_map(TWO_GENRES)
    classes, matrix = mapping_matrix(genres.cold_start, MSD_TAGS)
    assert classes == ("Jazz", "Rock")  # Classical has no tag: not a class
    assert matrix.shape == (2, 50) and matrix.sum() == 4
    taggram = np.full((3, 50), 0.01, np.float32)
    for tag in ("rock", "punk", "hard rock", "jazz"):
        taggram[0, MSD_TAGS.index(tag)] = 0.5
    taggram[1, MSD_TAGS.index("punk")] = 0.9  # one strong Rock tag
    taggram[2, MSD_TAGS.index("soul")] = 0.99  # an unmapped tag changes nothing
    probs = genre_probabilities(taggram, matrix)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs[0], [0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(probs[1], [0.01 / 0.91, 0.9 / 0.91], rtol=1e-5)
    np.testing.assert_allclose(probs[2], [0.5, 0.5], rtol=1e-6)


# ---- the bundle -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The shipped table's cold-start bundle, by the real command."""
    out = tmp_path_factory.mktemp("coldstart")
    done = subprocess.run([*COLDSTART, "--out", str(out)], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "unverified" in done.stdout and "Classical" in done.stdout
    return out / "model.onnx"


def decoded(value: str):
    """A metadata_props value: JSON (trainer.export.metadata_props) or a plain string."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def session_for(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_the_bundle_is_one_file_that_says_it_is_unverified(bundle):
    session = session_for(bundle)
    meta = {k: decoded(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    classes = list(load_genre_map().cold_start)
    assert meta["family"] == "coldstart" and meta["unverified"] is True
    assert meta["classes"] == classes
    assert meta["members"] == [{"kind": "backbone", "input": "patches",
                                "output": "coldstart_probs", "classes": classes,
                                "temperature": 1.0, "weight": 1.0}]
    assert meta["embedding"] == {"input": "patches", "output": "embedding",
                                 "spec": json.loads(EMBEDDING_SPEC.to_json())}
    assert meta["backbone_spec"] == json.loads(BACKBONE_SPEC.to_json())
    assert meta["metrics"] == {"family": "coldstart", "unverified": True}
    assert meta["backbone_licence"] == backbone.wheel_licence() == "ISC"
    assert "CC BY-NC-SA 4.0" in meta["backbone_licence_note"]
    assert meta["backbone_wheel_sha256"] == backbone.WHEEL_SHA256
    assert meta["cold_start_no_tag"] == ["Classical"]
    assert "feature_spec" not in meta  # no CNN input
    assert [i.name for i in session.get_inputs()] == ["patches"]
    assert [o.name for o in session.get_outputs()] == ["coldstart_probs", "embedding"]
    assert not list(bundle.parent.glob(".*"))  # no temp file left beside it
    report = json.loads((bundle.parent / "report.json").read_text())
    assert report["unverified"] is True and report["parity_max_abs_diff"] < 1e-5


@pytest.fixture(scope="module")
def encoded_songs(tmp_path_factory):
    """Three generated songs in the demo's rock, jazz and electronic voices, encoded by
    ffmpeg/lame/flac (daemon.cli.demo.encode) at 44.1 kHz stereo."""
    from daemon.cli.demo import encode, synthesize

    folder = tmp_path_factory.mktemp("songs")
    return {genre: encode(folder / f"{genre}{ext}", synthesize(genre, 20.0, 44_100, seed,
                                                               channels=2), 44_100)
            for seed, (genre, ext) in enumerate((("Rock", ".mp3"), ("Jazz", ".flac"),
                                                 ("Electronic", ".ogg")))}


def test_the_bundle_is_the_backbone_through_the_table(bundle, encoded_songs):
    """On real decoded patches the one graph gives the plain backbone's taggram through
    the numpy mapping, and its embedding is the backbone's penultimate layer."""
    session = session_for(bundle)
    classes, matrix = mapping_matrix(load_genre_map().cold_start, MSD_TAGS)
    said = {}
    for genre, path in encoded_songs.items():
        patches = backbone_patches(decode_clips(path, BACKBONE_SPEC)[1])
        assert patches.shape == (BACKBONE_SPEC.clips_per_song, 187, 96)
        probs, embedding = session.run(["coldstart_probs", "embedding"], {"patches": patches})
        plain = backbone.run_onnx(backbone_onnx(), patches)
        assert probs.shape == (len(patches), len(classes))
        assert np.all(probs > 0)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(probs, genre_probabilities(plain["taggram"], matrix),
                                   atol=1e-5)
        np.testing.assert_allclose(embedding, plain["penultimate"], atol=1e-5)
        assert embedding.shape == (len(patches), EMBEDDING_SPEC.dim)
        song = song_probabilities(probs[None])[0]
        said[genre] = classes[int(np.argmax(song))], float(song.max())
    # What the MSD tags make of tones and noise is printed, not asserted (see the docstring)
    print("cold start on generated songs:", said)


def test_a_station_table_gives_a_bundle_of_its_genres(tmp_path):
    genres = tmp_path / "genres.toml"
    genres.write_text(TWO_GENRES, encoding="utf-8")
    done = subprocess.run([*COLDSTART, "--out", str(tmp_path / "out"), "--genres", str(genres)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = session_for(tmp_path / "out" / "model.onnx").get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == ["Jazz", "Rock"]
    assert json.loads(meta["cold_start_tags"]) == {"Jazz": ["jazz"],
                                                   "Rock": ["rock", "punk", "hard rock"]}


@pytest.mark.parametrize(("text", "message"), [
    ('canonical = ["Jazz"]\n', "no \\[cold_start.msd_tags\\] entry"),
    ('canonical = ["Jazz"]\n[cold_start.msd_tags]\nJazz = ["bebop"]\n', "'bebop'"),
])
def test_no_usable_table_is_a_usage_error_and_no_bundle(tmp_path, text, message):
    genres = tmp_path / "genres.toml"
    genres.write_text(text, encoding="utf-8")
    done = subprocess.run([*COLDSTART, "--out", str(tmp_path / "out"), "--genres", str(genres)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert re.search(message, done.stderr), done.stderr
    assert not (tmp_path / "out" / "model.onnx").exists()
