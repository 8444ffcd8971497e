"""The model the worker classifies with: the registry's active one, swapped in when another
becomes active (`active_model`, checked every MODEL_CHECK_SECONDS).

The bundle is this host's copy (daemon.suggest.stored_bundles: on a shared database it is
rebuilt from there when missing or different). A bundle that fails to load, or whose
stored copy is damaged, is logged once and not retried until another model becomes
active; the worker keeps the classifier it had, if any. A copy this host cannot write
(a full disk) is an error of the worker's step, tried again.

A bundle with the backbone (its members', or a cnn bundle's for "sounds like" alone) is
loaded split (daemon.suggest.embedded.load_split): `classifier` is the bundle from its
embedding output on, `backbone` the graph file the decoder children embed each song's
patches by (daemon.audio.embedding), so decoding and the backbone share every decoder
core. Any other bundle, or with `backbone_in_decoders` off, is loaded whole and
`backbone` is None.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from daemon.core.config import Config
from daemon.core.db.models import Model
from daemon.core.errors import ModelMismatch
from daemon.core.states import ModelStatus
from daemon.suggest.classifier import Classifier
from daemon.suggest.embedded import load_split
from daemon.suggest.inputs import WindowSpecs
from daemon.suggest.queue import queue_depth
from daemon.suggest.stored_bundles import BundleUnavailable, local_bundle

log = logging.getLogger(__name__)

MODEL_CHECK_SECONDS = 2.0


def active_model(session: Session) -> Model | None:
    """The model the daemon classifies with, or None before the first one."""
    return session.scalars(
        select(Model).where(Model.status == ModelStatus.ACTIVE)
        .order_by(Model.activated_at.desc(), Model.id.desc()).limit(1)
    ).first()


class ActiveModel:
    """`classifier` and `model_id` of the active model; `refresh()` follows the registry."""

    def __init__(self, sessions: sessionmaker[Session], specs: WindowSpecs,
                 check_seconds: float = MODEL_CHECK_SECONDS, backbone_in_decoders: bool = True):
        self.sessions = sessions
        self.check_seconds = check_seconds  # how often the registry is asked
        self.specs = specs  # the worker's: its windows per song
        # A bundle with the backbone is split (daemon.suggest.embedded): the decoder
        # children run its backbone, `classifier` the rest on embeddings.
        self.backbone_in_decoders = backbone_in_decoders
        self.classifier: Classifier | None = None
        self.backbone: Path | None = None  # the split-off backbone graph, or None
        self.model_id: int | None = None
        self._failed: tuple[int, str] | None = None
        self._said_no_model = False
        self._checked = 0.0

    def refresh(self, config: Config) -> bool:
        """Load the active model when it changed. True when a classifier is ready.
        `config` is the running one (the worker's, which a reload replaces)."""
        now = time.monotonic()
        if now - self._checked < self.check_seconds:
            return self.classifier is not None
        self._checked = now
        with self.sessions() as session:
            model: Model | None = active_model(session)
            if model is not None:
                session.expunge(model)
        if model is None:
            self._no_model()
            return False
        if model.id == self.model_id and self.classifier is not None:
            return True
        if self._failed == (model.id, model.sha256):
            return self.classifier is not None
        return self._load(model, config)

    def _no_model(self) -> None:
        if self.classifier is not None:
            log.warning("no active model any more; suggestions wait for one")
        elif not self._said_no_model:
            with self.sessions() as session:
                waiting = queue_depth(session)
            log.info("no model yet: %d track(s) wait for the first one", waiting)
        self._said_no_model = True
        self.classifier, self.model_id, self.backbone = None, None, None

    def _load(self, model: Model, config: Config) -> bool:
        try:
            # This host's copy: on a shared database, rebuilt from it when missing.
            path = local_bundle(self.sessions, config, model) / "model.onnx"
            split = (load_split(path, config.cache_dir, self.specs.cnn, self.specs.backbone,
                                config.classifier.threads)
                     if self.backbone_in_decoders else None)
            classifier, backbone = split or (Classifier.load(
                path, spec=self.specs.cnn, backbone_spec=self.specs.backbone,
                threads=config.classifier.threads, windows_per_song=self.specs.windows), None)
        except (ModelMismatch, BundleUnavailable) as err:
            log.error("active model %s (v%s) cannot be used: %s", model.id, model.version, err)
            self._failed = (model.id, model.sha256)
            return self.classifier is not None
        log.info("using model v%s (%s) for suggestions%s", model.version, path.name,
                 ", its backbone in the decoders" if backbone else "")
        self.classifier, self.backbone = classifier, backbone
        self.model_id, self._failed = model.id, None
        return True
