"""Each song goes through the backbone once: the nightly tournament run again on songs
it (or the service) already embedded runs the backbone on none of them -- only on the
few patches that check each bundle it composes.

The real trainer (`python -m trainer train`, the three families) on a library encoded by
real encoders, in a child process whose onnxruntime sessions are watched: every run fed
backbone patches is counted, apart from the runs inside trainer/bundles.py (the parity
checks of the bundles being written). Then the retrainer gates the last night's model
against the one before and re-scores, in this process, with no patches cached at all.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from daemon.audio.features import BACKBONE_SPEC, EMBEDDING_SPEC
from daemon.cli.demo import make_library
from daemon.core.config import parse_config
from daemon.core.db.engine import open_database
from daemon.learn.retrainer import Retrainer
from trainer.families import PARITY_PATCHES
from trainer.train import WINDOWS

pytestmark = pytest.mark.slow  # three trainer runs with TensorFlow

# The trainer's own entry point, with onnxruntime's InferenceSession.run counting the
# backbone patches fed to it (the real run still happens).
WATCHED_TRAINER = """
import atexit, json, sys, traceback
import numpy as np
import onnxruntime as ort

fed = {"songs": 0, "parity": 0}
real_run = ort.InferenceSession.run

def run(self, output_names, input_feed, *args, **kwargs):
    patches = len(input_feed.get("patches", ()))
    if patches:
        checking = any(f.filename.endswith("trainer/bundles.py")
                       for f in traceback.extract_stack())
        fed["parity" if checking else "songs"] += patches
    return real_run(self, output_names, input_feed, *args, **kwargs)

ort.InferenceSession.run = run
atexit.register(lambda: open(sys.argv[1], "w").write(json.dumps(fed)))
from trainer.cli import main
main(sys.argv[2:])
"""


def night(base, library, name):
    """One nightly trainer run -> (its report, the backbone patches it fed)."""
    out, counted = base / name, base / f"{name}.fed.json"
    done = subprocess.run(
        [sys.executable, "-c", WATCHED_TRAINER, str(counted), "train", "--library",
         str(library), "--out", str(out), "--cache", str(base / "state" / "features"),
         "--epochs", "1",
         "--min-songs", "4", "--seed", "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    return report, json.loads(counted.read_text())


def test_a_night_runs_the_backbone_on_no_song_already_embedded(tmp_path, monkeypatch):
    library = tmp_path / "library"
    make_library(library, songs_per_genre=6, genres=("Classical", "Metal", "Hip-Hop"),
                 untagged_share=0.0, seconds=(4, 6), formats=(".flac", ".mp3"),
                 artists_per_genre=3, broken=0, seed=5)
    songs = 18

    first, fed = night(tmp_path, library, "night1")
    assert {r["family"] for r in first["tournament"]["rows"]} == {"cnn", "backbone",
                                                                   "ensemble"}
    assert first["cache"]["embeddings_computed"] == songs
    assert fed["songs"] == songs * WINDOWS  # every song's patches, once
    # Each bundle written (three held-out fits and the served one) is checked on real
    # patches through the composed graph and through the backbone alone.
    assert 0 < fed["parity"] <= 4 * 2 * PARITY_PATCHES

    second, fed = night(tmp_path, library, "night2")
    assert second["cache"]["embeddings_cached"] == songs
    assert second["cache"]["embeddings_computed"] == 0
    assert second["cache"]["decoded"] == second["cache"]["backbone_decoded"] == 0
    assert fed["songs"] == 0  # judging, context and refit took the cached embeddings
    assert 0 < fed["parity"] <= 4 * 2 * PARITY_PATCHES
    assert second["tournament"]["holdout_songs"] == first["tournament"]["holdout_songs"]
    # Same songs, same embeddings: the backbone head judged the same way both nights.
    heads = [next(r for r in report["tournament"]["rows"] if r["family"] == "backbone")
             for report in (first, second)]
    assert heads[0]["macro_f1"] == heads[1]["macro_f1"]

    # The service embedded the songs and kept no patches: nothing is decoded for them
    # but one song's patches, for the parity checks.
    cache = tmp_path / "state" / "features"
    shutil.rmtree(cache / dataclasses.replace(BACKBONE_SPEC, clips_per_song=WINDOWS).key)
    assert (cache / EMBEDDING_SPEC.key).is_dir()
    third, fed = night(tmp_path, library, "night3")
    assert third["cache"]["embeddings_computed"] == 0
    assert third["cache"]["backbone_decoded"] == 0
    assert third["cache"]["parity_patches_decoded"] == 1
    assert fed["songs"] == 0 and 0 < fed["parity"] <= 4 * 2 * PARITY_PATCHES
    assert (tmp_path / "night3" / "model.onnx").is_file()

    # The retrainer's gate and re-scoring, night 2's model active and night 3's the
    # candidate: both judged on the holdout with no patches cached, the backbone never run.
    config = parse_config({"library": {"root": str(library)},
                           "state_dir": str(tmp_path / "state")}, "test config")
    engine, sessions = open_database(config.db_url)
    retrainer = Retrainer(config, sessions)
    assert retrainer.consider(tmp_path / "night2")["status"] == "promoted"
    real_run, fed = ort.InferenceSession.run, []

    def run(self, output_names, input_feed, *args, **kwargs):
        patches = np.asarray(input_feed.get("patches", np.zeros((0, 1))))
        # The registry's load check warms the whole bundle up on zeros, no song's patches.
        fed.append(int(np.abs(patches.reshape(len(patches), -1)).max(axis=1).astype(bool).sum())
                   if len(patches) else 0)
        return real_run(self, output_names, input_feed, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", run)
    result = retrainer.consider(tmp_path / "night3")
    gate = result["gate"]
    assert gate["active"] is not None and gate["holdout_without_features"] == 0
    assert gate["holdout_songs"] == third["tournament"]["holdout_songs"] > 0
    assert result["status"] in ("promoted", "rejected")
    assert fed and sum(fed) == 0  # the models ran, never on a song's patches
    engine.dispose()
