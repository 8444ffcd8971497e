"""Bundles run on cached per-patch embeddings (daemon/suggest/embedded.py) give what the
whole bundle gives on the songs' patches: the real converted backbone, heads fitted on
songs encoded by real encoders and decoded by the daemon's decoder, the real seed CNN of
the shared trained bundle. Needs `make backbone`; no TensorFlow here.
"""

from __future__ import annotations

import numpy as np
import pytest

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import (
    BACKBONE,
    BACKBONE_SPEC,
    CNN,
    DEFAULT_SPEC,
    EMBEDDING_SPEC,
)
from daemon.suggest.classifier import Classifier
from daemon.suggest.embedded import (
    EmbeddedClassifier,
    cached_features,
    load_on_embeddings,
    member_caches,
)
from trainer import bundles

pytestmark = pytest.mark.slow  # fits a head and composes bundles on the backbone


@pytest.mark.parametrize("family", ["cnn", "backbone", "ensemble"])
def test_the_bundle_on_cached_embeddings_is_the_bundle_on_patches(composed, sample_songs, family):
    whole = Classifier.load(composed / f"{family}.onnx")
    cut = load_on_embeddings(composed / f"{family}.onnx")
    assert isinstance(cut, EmbeddedClassifier) and cut.classes == whole.classes
    assert [m.temperature for m in cut.members] == [m.temperature for m in whole.members]
    assert not cut.has_embedding  # no backbone in the cut graph
    assert "patches" not in {i.name for i in cut.session.get_inputs()}
    prediction = whole.predict([{k: s[k] for k in (CNN, BACKBONE)} for s in sample_songs])
    # Exact: the bundle's own float32 embeddings through its own head (and CNN).
    own = cut.predict_songs([{CNN: s[CNN], BACKBONE: e}
                             for s, e in zip(sample_songs, prediction.embeddings, strict=True)])
    np.testing.assert_allclose(own, prediction.probs, rtol=0, atol=1e-6)
    # What the trainer cached from backbone.onnx alone: within the bundles' parity.
    cached = cut.predict_songs([{CNN: s[CNN], BACKBONE: s["embedding"]} for s in sample_songs])
    np.testing.assert_allclose(cached, prediction.probs, rtol=0, atol=bundles.PARITY_TOLERANCE)
    assert (cached.argmax(axis=1) == prediction.probs.argmax(axis=1)).all()


def test_the_caches_feed_each_member_its_kind(composed, sample_songs, tmp_path):
    features, embeddings = FeatureCache(tmp_path, DEFAULT_SPEC), FeatureCache(tmp_path,
                                                                               EMBEDDING_SPEC)
    for i, song in enumerate(sample_songs):
        features.put(f"{i:04d}", song[CNN])
        embeddings.put(f"{i:04d}", song["embedding"])
    patches = FeatureCache(tmp_path, BACKBONE_SPEC)  # empty: nothing decoded for patches
    caches = {CNN: features, BACKBONE: patches}
    cut = load_on_embeddings(composed / "ensemble.onnx")
    feeding = member_caches(cut, caches, embeddings)
    assert feeding == {CNN: features, BACKBONE: embeddings}
    found = [cached_features(f"{i:04d}", feeding) for i in range(len(sample_songs))]
    whole = Classifier.load(composed / "ensemble.onnx")
    np.testing.assert_allclose(cut.predict_songs(found),
                               whole.predict_songs([{k: s[k] for k in (CNN, BACKBONE)}
                                                    for s in sample_songs]),
                               rtol=0, atol=bundles.PARITY_TOLERANCE)
    # The whole bundle would need patches, which are not cached: no features.
    assert member_caches(whole, caches, embeddings) == {CNN: features, BACKBONE: patches}
    assert cached_features("0000", member_caches(whole, caches, embeddings)) is None
    assert cached_features("", feeding) is None  # a track without a fingerprint yet


def test_a_bundle_without_a_backbone_member_is_loaded_as_it_is(trained_bundle):
    plain = load_on_embeddings(trained_bundle / "model.onnx")
    assert type(plain) is Classifier and plain.needs == {CNN}
