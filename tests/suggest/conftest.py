"""Bundles on the real backbone, shared by the suggest tests that run them: songs encoded
by real encoders and decoded by the daemon's decoder, heads fitted on them, the real seed
CNN of the shared trained bundle, composed by the trainer's builders. Needs `make
backbone`; the builders need no TensorFlow.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from daemon.audio.decode import decode_clips
from daemon.audio.features import (
    BACKBONE,
    BACKBONE_SPEC,
    CNN,
    DEFAULT_SPEC,
    backbone_patches,
    song_features,
)
from daemon.cli.demo import encode, synthesize
from daemon.learn.backbone_file import backbone_onnx
from trainer import backbone, bundles
from trainer.head import fit_head, song_embedding

GENRES = ("Classical", "Hip-Hop", "Metal")  # the trained_bundle CNN's genres


@pytest.fixture(scope="session")
def sample_songs(tmp_path_factory):
    """Three songs per genre: {"cnn": clips, "backbone": patches, "embedding": what
    backbone.onnx gives per patch (the trainer's cache)}."""
    import onnxruntime as ort

    folder = tmp_path_factory.mktemp("embedded-songs")
    session = ort.InferenceSession(str(backbone_onnx()),
                                   providers=["CPUExecutionProvider"])
    out = []
    for g, genre in enumerate(GENRES):
        for i in range(3):
            path = encode(folder / f"{genre} {i}{('.mp3', '.flac', '.ogg')[i]}",
                          synthesize(genre, 9.0, 44_100, 500 + 10 * g + i), 44_100)
            patches = backbone_patches(decode_clips(path, BACKBONE_SPEC)[1])
            out.append({CNN: song_features(decode_clips(path, DEFAULT_SPEC)[1]),
                        BACKBONE: patches,
                        "embedding": backbone.embed_patches(session, patches)})
    return out


@pytest.fixture(scope="session")
def composed(tmp_path_factory, sample_songs, trained_bundle):
    """cnn.onnx (with the embedding), backbone.onnx and ensemble.onnx composed by the
    trainer's builders."""
    folder = tmp_path_factory.mktemp("embedded-bundles")
    head = fit_head(np.stack([song_embedding(s["embedding"]) for s in sample_songs]),
                    [g for g in GENRES for _ in range(3)])
    checks = np.concatenate([s[BACKBONE] for s in sample_songs[::3]])
    clips = np.concatenate([s[CNN] for s in sample_songs[::3]])
    bundles.build_backbone(head, folder / "backbone.onnx", checks, temperature=0.8)
    cnn = onnx.load(str(trained_bundle / "model.onnx"))
    bundles.build_cnn(cnn, GENRES, folder / "cnn.onnx", clips, checks, temperature=1.2)
    bundles.build_ensemble(cnn, GENRES, head, folder / "ensemble.onnx", clips, checks,
                           temperatures=(1.2, 0.8))
    return folder
