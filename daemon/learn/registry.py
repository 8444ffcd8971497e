"""The model registry: every bundle the daemon has known, on disk and in the `models` table.

A bundle lives in `config.models_dir/v{version:04d}/` (model.onnx plus what the trainer
left beside it: model.keras for warm starts, report.json, split.json, the PNGs). It is
copied there under a temporary name, fsynced, and renamed, so a crash never leaves a
half-written bundle under a real version name; the DB row is inserted only after the
bundle loads through the daemon's own Classifier. On a shared (PostgreSQL) database the
bundle's bytes go into the database in the same transaction as the row, and every other
host uses its own copy rebuilt from there (daemon.suggest.stored_bundles): `bundle_dir`
is that copy's folder on this host.

Activation is the DB row alone: the worker notices that `active_model()` changed and
reloads its onnxruntime session between batches. Statuses:

    candidate  registered, not yet decided
    active     the one the daemon classifies with (at most one)
    retired    was active; a newer model replaced it
    rejected   failed the nightly gate (kept with its report)
    rolled_back was active; an operator rolled it back (never chosen by rollback again)
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from daemon.audio.features import DEFAULT_SPEC
from daemon.core.config import Config
from daemon.core.db.engine import transaction
from daemon.core.db.models import Model, utcnow
from daemon.core.durable import fsync_dir, fsync_file
from daemon.core.errors import GenretaggerError, ModelMismatch
from daemon.core.states import ModelStatus
from daemon.suggest.active import active_model
from daemon.suggest.classifier import Classifier
from daemon.suggest.stored_bundles import (
    BUNDLE_FILES,
    BundleUnavailable,
    bundle_folder,
    file_sha256,
    local_bundle,
    shares_bundles,
    store_bundle,
    stored_files,
    verify_stored,
)

log = logging.getLogger(__name__)

# Short names for daemon.core.states.ModelStatus.
CANDIDATE, ACTIVE, RETIRED, REJECTED, ROLLED_BACK = ModelStatus
STATUSES = tuple(ModelStatus)

VERSION_DIR = re.compile(r"^v(\d{4,})$")


class RegistryError(GenretaggerError):
    """A registry operation cannot be done (unknown version, nothing to roll back to...)."""


version_dir = bundle_folder


def bundle_dir(sessions: sessionmaker[Session], config: Config, model: Model) -> Path:
    """The folder on this host holding a registered model's bundle (model.onnx,
    model.keras, ...), copied from the shared database first when this host lacks it.
    When it cannot be had, the recorded folder (whose files are then missing: callers
    treat a missing split.json or model.keras as absent), and a warning in the log."""
    try:
        return local_bundle(sessions, config, model)
    except (BundleUnavailable, OSError) as err:
        log.warning("model v%04d: no copy of its bundle on this host: %s", model.version, err)
        return Path(model.path).parent


# ---- reading ---------------------------------------------------------------------------

def get_model(session: Session, version: int) -> Model:
    """The model with this version number; raises RegistryError when there is none."""
    model = session.scalars(select(Model).where(Model.version == version)).first()
    if model is None:
        raise RegistryError(f"no model version {version}")
    return model


def list_models(session: Session) -> list[Model]:
    """Every registered model, newest version first."""
    return list(session.scalars(select(Model).order_by(Model.version.desc())))


def model_summary(model: Model) -> dict[str, Any]:
    """A model as the stable JSON shape of `models list --json` (and the web model page)."""
    metrics = model.metrics or {}
    return {
        "version": model.version,
        "id": model.id,
        "status": model.status,
        "created_at": _iso(model.created_at),
        "activated_at": _iso(model.activated_at),
        "trained_until": _iso(model.trained_until),
        "n_songs": model.n_songs,
        "classes": list(model.classes or []),
        "accuracy": metrics.get("accuracy"),
        "macro_f1": metrics.get("macro_f1"),
        # The cold start (daemon.learn.coldstart) says so; a trained model has no such key.
        "unverified": bool(metrics.get("unverified", False)),
        "parent_id": model.parent_id,
        "sha256": model.sha256,
        "path": model.path,
    }


def model_details(model: Model) -> dict[str, Any]:
    """`models show --json`: the summary plus every stored metric and the report's path."""
    return {**model_summary(model), "metrics": model.metrics or {},
            "data_hash": model.data_hash, "report_path": model.report_path}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# ---- registering -------------------------------------------------------------------------

@dataclass(frozen=True)
class BundleFacts:
    """What the registry records about a trainer output, read from its files."""

    sha256: str
    classes: tuple[str, ...]
    metrics: dict[str, Any]
    n_songs: int
    data_hash: str | None


def read_bundle(out_dir: Path) -> BundleFacts:
    """A trainer --out dir -> its facts; raises ModelMismatch when it is not a usable bundle.

    The model must load through the daemon's Classifier (spec check included); metrics and
    the training-set summary come from report.json when present, else the bundle metadata.
    """
    onnx_path = out_dir / "model.onnx"
    classifier = Classifier.load(onnx_path, DEFAULT_SPEC)
    report = read_json(out_dir / "report.json")
    meta = classifier.metadata
    metrics = report_metrics(report) or _as_dict(meta.get("metrics"))
    training_set = _as_dict(report.get("training_set")) or _as_dict(meta.get("training_set"))
    # The trainer's summary: {"songs": {"train": n, "validation": n, "test": n}, ...}
    n_songs = training_set.get("n_songs") or training_set.get("songs") or 0
    if isinstance(n_songs, dict):
        n_songs = sum(int(v) for v in n_songs.values())
    data_hash = (report.get("training_set_hash") or meta.get("training_set_hash")
                 or training_set.get("hash"))
    return BundleFacts(classifier.sha256, classifier.classes, metrics, int(n_songs or 0),
                       str(data_hash) if data_hash else None)


def report_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The test-split song metrics out of a trainer report.json ({} when absent):
    {accuracy, macro_f1, n_songs, per_class, genres, confusion} (trainer.evaluate)."""
    test = report.get("test")
    return test if isinstance(test, dict) and "macro_f1" in test else {}


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; {} when absent, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def next_version(session: Session, config: Config) -> int:
    """One more than any version in the DB or on disk (a crash may leave a folder behind)."""
    in_db = session.scalar(select(func.max(Model.version))) or 0
    on_disk = 0
    if config.models_dir.is_dir():
        for entry in config.models_dir.iterdir():
            match = VERSION_DIR.match(entry.name)
            if match:
                on_disk = max(on_disk, int(match.group(1)))
    return max(in_db, on_disk) + 1


def register_bundle(sessions: sessionmaker[Session], config: Config, out_dir: Path,
                    status: str = CANDIDATE, run_id: int | None = None, *,
                    trained_until: datetime | None = None, parent_id: int | None = None,
                    metrics: dict[str, Any] | None = None) -> Model:
    """Copy the trainer's `out_dir` bundle into the registry and add its Model row.

    In: a trainer --out dir (model.onnx required), the status to record (candidate,
    rejected, ...; use `activate` to make one active), optionally the training run, when
    its training set was frozen, its parent model and metrics overriding report.json's.
    Out: the new Model row. Raises ModelMismatch when the bundle does not load.
    `run_id` is recorded by the caller on the TrainingRun row (Model has no run column).
    """
    out_dir = Path(out_dir)
    if status not in STATUSES or status == ACTIVE:
        raise ValueError(f"register as one of candidate/rejected/retired, not {status!r}")
    facts = read_bundle(out_dir)
    config.models_dir.mkdir(parents=True, exist_ok=True)
    with transaction(sessions) as session:
        version = next_version(session, config)
    target = version_dir(config, version)
    _copy_bundle(out_dir, target)
    onnx_path = target / "model.onnx"
    if file_sha256(onnx_path) != facts.sha256:  # the copy must be the file we checked
        shutil.rmtree(target, ignore_errors=True)
        raise ModelMismatch(f"{out_dir}: model.onnx changed while it was being registered")
    report = target / "report.json"
    try:
        with transaction(sessions) as session:
            model = Model(
                version=version, path=str(onnx_path), sha256=facts.sha256, status=status,
                classes=list(facts.classes), metrics=metrics if metrics is not None
                else facts.metrics, n_songs=facts.n_songs, data_hash=facts.data_hash,
                trained_until=trained_until, parent_id=parent_id,
                report_path=str(report) if report.exists() else None,
            )
            session.add(model)
            if shares_bundles(session):
                session.flush()  # model.id, which the stored files name
                sent = store_bundle(session.connection(), model.id, target)
                log.info("model v%04d: bundle stored in the database (%.1f MB)", version,
                         sent / 1e6)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    log.info("registered model v%04d (%s, %d classes, %d songs%s)", version, status,
             len(facts.classes), facts.n_songs, f", run {run_id}" if run_id else "")
    return model


def _copy_bundle(source: Path, target: Path) -> None:
    """Copy the bundle files into `target` atomically: temp folder, fsync, rename."""
    if target.exists():
        raise RegistryError(f"{target} already exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        for name in BUNDLE_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
                fsync_file(tmp / name)
        os.chmod(tmp, 0o755)
        fsync_dir(tmp)
        os.rename(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_partial_bundles(config: Config) -> list[Path]:
    """Delete temp folders a crash left in models_dir (never a real version folder)."""
    removed = []
    if config.models_dir.is_dir():
        for entry in config.models_dir.glob(".v*.tmp"):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    if removed:
        log.info("removed %d half-written bundle folder(s) in %s", len(removed),
                 config.models_dir)
    return removed


# ---- activating ---------------------------------------------------------------------------

def activate(sessions: sessionmaker[Session], version: int) -> Model:
    """Make model `version` the active one, in one transaction.

    The previously active model becomes retired. Refuses (RegistryError) a bundle whose file
    is gone or whose bytes no longer match the recorded sha256: a damaged bundle is never
    activated (on a shared database, the stored copy every host rebuilds its own from is
    the one checked). Out: the now-active Model.
    """
    with transaction(sessions) as session:
        model = get_model(session, version)
        _check_bundle(session, model)
        if model.status == ACTIVE:
            return model
        previous = active_model(session)
        _switch(session, model, RETIRED)
        log.info("model v%04d active (was %s)", version,
                 f"v{previous.version:04d}" if previous else "none")
        return model


def rollback(sessions: sessionmaker[Session]) -> Model:
    """Re-activate the model that was active before the current one.

    The current model becomes rolled_back (so a second rollback goes one further back, not
    forth). Raises RegistryError when no earlier model can be re-activated.
    Out: the now-active Model.
    """
    with transaction(sessions) as session:
        current = active_model(session)
        if current is None:
            raise RegistryError("no active model to roll back")
        earlier = session.scalars(
            select(Model).where(Model.status == RETIRED, Model.activated_at.is_not(None),
                                Model.id != current.id)
            .order_by(Model.activated_at.desc(), Model.id.desc())
        ).all()
        for model in earlier:
            try:
                _check_bundle(session, model)
            except RegistryError as err:
                log.warning("rollback skips v%04d: %s", model.version, err)
                continue
            _switch(session, model, ROLLED_BACK)
            log.info("rolled back from v%04d to v%04d", current.version, model.version)
            return model
        raise RegistryError(f"v{current.version:04d} is the only model that was ever active; "
                            "nothing to roll back to")


def _switch(session: Session, model: Model, old_status: str) -> None:
    """Every active model -> `old_status`; `model` -> active now."""
    session.execute(update(Model).where(Model.status == ACTIVE, Model.id != model.id)
                    .values(status=old_status))
    model.status = ACTIVE
    model.activated_at = utcnow()
    session.flush()


def _check_bundle(session: Session, model: Model) -> None:
    if stored_files(session, model.id):
        try:
            verify_stored(session, model)
        except BundleUnavailable as err:
            raise RegistryError(str(err)) from None
        return
    path = Path(model.path)
    if not path.is_file():
        raise RegistryError(f"v{model.version:04d}: bundle {path} is missing")
    if file_sha256(path) != model.sha256:
        raise RegistryError(f"v{model.version:04d}: bundle {path} does not match its sha256")
