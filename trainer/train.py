"""`genretagger train`: library -> dataset -> the tournament's families -> model.onnx.

One decode pass per song fills the CNN's feature cache and (the backbone switched on)
the backbone's patch cache; each song's embedding is computed once into the embedding
cache (a song the service or an earlier night embedded is neither decoded for patches nor
run through the backbone again). Then the families (trainer.runner) are fitted,
calibrated and written as out/<family>.onnx, judged on the same test songs
(trainer.tournament: the backbone's bundles on the cached embeddings); the winner is kept
as held_out.onnx (what the gate judges: it never saw the test songs) and its family is
refit on every labelled song of its genres (trainer.runner.Run.refit, with the epochs,
regularisation and temperature the held-out fit chose): that refit is model.onnx, the
model served. Writes into --out: model.keras (the refit CNN when there is one),
split.json (+ "fitted": the songs the served model learned from), report.json (the
winner's held-out figures at the top, every family's under "families", the table under
"tournament", the refit under "served"), confusion.png, reliability.png, the family
bundles, held_out.onnx and, last, model.onnx. A run that dies part-way leaves no
model.onnx, so a directory holding one holds a complete run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import BACKBONE_SPEC, CNN, DEFAULT_SPEC, FeatureSpec
from daemon.core.config import ClassifierConfig, RetrainConfig
from daemon.core.errors import ConfigError
from daemon.suggest.stored_bundles import HELD_OUT, file_sha256
from daemon.tags.genres import load_genre_map
from trainer import TRAINER_VERSION
from trainer.context import carve, context_report
from trainer.dataset import (
    Dataset,
    DatasetError,
    LabelledSong,
    default_cache_dir,
    find_labelled_songs,
    load_features,
    load_holdout,
    load_known,
    load_labels,
    load_not_songs,
)
from trainer.families import Backbone, embed_songs, open_backbone
from trainer.runner import Run
from trainer.split import build_dataset, narrow
from trainer.tournament import (
    ALL,
    FAMILIES,
    Entry,
    families_for,
    judge_bundle,
    judge_families,
    write_winner,
)

log = logging.getLogger(__name__)

# Windows per song: the service's default (config [classifier] windows_per_song), so the
# model learns, is judged and is served on the same windows; the retrainer passes the
# station's value.
WINDOWS = ClassifierConfig.model_fields["windows_per_song"].default
# The CNN's ceiling of songs an epoch (config [retrain] songs_per_epoch; trainer.sample).
SONGS_PER_EPOCH = RetrainConfig.model_fields["songs_per_epoch"].default


def fit_deadline(started: float, budget_minutes: float | None) -> float | None:
    """When fitting must end so the run ends within its budget: after fitting come
    predictions on validation and test songs, export and the parity check (about a
    minute at 15,000 songs); a tenth of the budget, at least two minutes, is kept."""
    if budget_minutes is None:
        return None
    budget = budget_minutes * 60
    return started + budget - max(120.0, 0.1 * budget)


def train(library: Path, out: Path, *, cache_dir: Path | None = None, epochs: int = 30,
          clip_seconds: float = 1.0, windows: int = WINDOWS, seed: int = 0,
          min_songs: int = 20, min_songs_backbone: int = 3, family: str = ALL,
          backbone: bool = True,
          genres_path: Path | None = None, labels_path: Path | None = None,
          warm_start: Path | None = None, holdout_path: Path | None = None,
          known_path: Path | None = None, not_songs_path: Path | None = None,
          batch_size: int | None = None, time_budget_minutes: float | None = None,
          songs_per_epoch: int | None = SONGS_PER_EPOCH, threads: int | None = None,
          processes: int | None = None, progress: bool | None = None) -> dict:
    """Run a whole training (the tournament of `family`); returns the report (also written
    to out/report.json).

    backbone: False switches the backbone off (the CNN alone, no embedding output); on but
    not converted (`make backbone`), the same with a warning. time_budget_minutes: the
    whole run should end within this; fitting stops early enough to leave time for
    calibration, evaluation and export (fit_deadline). songs_per_epoch: the CNN's ceiling
    of songs an epoch (trainer.sample; None: every song every epoch).

    Raises DatasetError (library unusable), ParityError (export not trusted), other
    GenretaggerErrors for bad inputs.
    """
    started = time.monotonic()
    progress = sys.stderr.isatty() if progress is None else progress
    library, out = Path(library).resolve(), Path(out)
    prepare_out(out, warm_start)
    spec = dataclasses.replace(DEFAULT_SPEC, clip_seconds=float(clip_seconds),
                               clips_per_song=int(windows))
    root = Path(cache_dir or default_cache_dir())
    cache = FeatureCache(root, spec)
    backbone_on = open_backbone(root, backbone,
                                dataclasses.replace(BACKBONE_SPEC, clips_per_song=int(windows)))
    families = families_for(family, FAMILIES if backbone_on else ("cnn",))
    thresholds = {f: min_songs if f == "cnn" else min_songs_backbone for f in families}
    # One split for every family, wide enough for the one needing fewest songs per genre.
    songs = gather(library, cache, backbone_on, genres_path=genres_path,
                   labels_path=labels_path, known_path=known_path, holdout_path=holdout_path,
                   not_songs_path=not_songs_path, seed=seed,
                   min_songs=min(thresholds.values()), processes=processes, progress=progress)
    # Every family's test songs; one song of each big enough album kept out of training
    # for fitting the album/artist context (trainer.context.carve).
    wide, carved = keep_trained(*carve(songs.dataset, seed))
    songs = dataclasses.replace(songs, dataset=wide)
    decoded = time.monotonic()
    if backbone_on is not None:
        songs.cache_stats.update(prepare_backbone(songs, cache, backbone_on, processes,
                                                  threads))
    extracted = time.monotonic()
    families = cnn_can_learn(wide, families, min_songs, family)
    run = Run(out, wide, cache, spec, backbone_on, families, seed, songs_per_epoch)
    if {"cnn", "ensemble"} & set(families):
        run.fit_cnn(narrow(wide, min_songs), epochs=epochs, warm_start=warm_start,
                    batch_size=batch_size, threads=threads, progress=progress,
                    deadline=fit_deadline(started, time_budget_minutes))
    if {"backbone", "ensemble"} & set(families):
        run.fit_head(narrow(wide, min_songs_backbone))
    trained = time.monotonic()
    common = common_report(songs, cache, spec, library=library, seed=seed,
                           parent=_parent_model(warm_start) if run.warm_started else "")
    entries = run.write_bundles(common)
    written = time.monotonic()
    caches, embeddings = {CNN: cache}, backbone_on.embeddings if backbone_on else None
    table = judge_families(out, entries, wide.test, caches, seed=seed, embeddings=embeddings)
    winner = next(e for e in entries if e.family == table["winner"])
    context = fit_context(winner, carved, wide.test, songs.songs, caches, embeddings)
    _list_context_split(out, carved)
    judged = time.monotonic()
    # Chosen on held-out songs; served as refit on every labelled song of its genres.
    served_entry, served = run.refit(
        winner.family, songs.songs, common, batch_size=batch_size,
        deadline=fit_deadline(started, time_budget_minutes), progress=progress)
    _list_fitted(out, run)
    report = {**common, **run.facts[winner.family], "family": winner.family,
              "families": run.facts, "tournament": table, "context": context,
              "served": served, "fitted_on_songs": served["songs"],
              "held_out_bundle": HELD_OUT,
              "parity_max_abs_diff": run.parity.get("cnn_keras", 0.0), "parity": run.parity,
              "timings": _timings(started, decoded, extracted, trained, written, judged)}
    write_results(out, report, winner, served_entry)
    return report


def _timings(started: float, decoded: float, extracted: float, trained: float,
             written: float, judged: float) -> dict[str, float]:
    # decode_s includes the library walk; embed_s the backbone run on uncached songs.
    return {"features_s": round(extracted - started, 1),
            "decode_s": round(decoded - started, 1), "embed_s": round(extracted - decoded, 1),
            "fit_s": round(trained - extracted, 1), "bundles_s": round(written - trained, 1),
            "judge_s": round(judged - written, 1),
            "refit_s": round(time.monotonic() - judged, 1),
            "total_s": round(time.monotonic() - started, 1)}


def write_results(out: Path, report: dict, held_out: Entry, served: Entry) -> None:
    """report.json, then the held-out fit (which the gate judges) as HELD_OUT, then the
    served model as model.onnx, last: a directory holding one holds a complete run."""
    (out / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True),
                                     encoding="utf-8")
    context, table = report["context"], report["tournament"]
    extra = ({"context": {k: context[k] for k in ("weight", "smoothing")}}
             if context["weight"] is not None else {})
    write_winner(out, held_out, table, extra, name=HELD_OUT)
    write_winner(out, served, table, {**extra, "served": report["served"],
                                      "fitted_on_songs": report["fitted_on_songs"]})
    log.info("tournament winner %s written to %s: %s", table["winner"], out / "model.onnx",
             table["why"])


def fit_context(winner, carved: Sequence[LabelledSong], test: Sequence[LabelledSong],
                library: Sequence[LabelledSong], caches: dict,
                embeddings: FeatureCache | None = None) -> dict:
    """The album/artist context fitted with the winner's audio (trainer.context) on the
    context split (songs kept out of training whose album-mates were trained on), else on
    the test songs: report.json's "context", whose weight and smoothing go into the bundle."""
    from daemon.suggest.bundle import read_metadata

    classes = tuple(read_metadata(winner.bundle)["classes"])
    report: dict = {}
    for where, held in (("context split: album-mates trained on", carved),
                        ("test songs (artist-disjoint): too few songs on trained albums", test)):
        held = [s for s in held if s.genre in classes]
        if not held:
            continue
        probs, _ = judge_bundle(winner.bundle, held, caches, classes,
                                embeddings=embeddings)
        report = {**context_report(probs, held, library, classes), "fitted_on": where}
        if report["weight"] is not None:
            log.info("context: weight %.2f, smoothing %.1f on the %s (accuracy %.3f audio, "
                     "%.3f with context)", report["weight"], report["smoothing"], where,
                     report["audio"]["song_accuracy"], report["with_context"]["song_accuracy"])
            return report
    log.info("context not fitted: %s", report.get("why", "no held-out song"))
    return report or {"weight": None, "smoothing": None, "why": "no held-out song"}


def keep_trained(wide: Dataset, carved: Sequence[LabelledSong]
                 ) -> tuple[Dataset, tuple[LabelledSong, ...]]:
    """The context split gives back the songs a genre cannot spare: a genre whose only
    training songs were carved keeps them (a genre nobody trains on cannot be learned)."""
    left = {s.genre for s in wide.train}
    back = [s for s in carved if s.genre not in left]
    if not back:
        return wide, tuple(carved)
    log.info("context split: %d song(s) kept in training, their genre's only ones",
             len(back))
    kept = tuple(s for s in carved if s.genre in left)
    return dataclasses.replace(wide, train=(*wide.train, *back)), kept


def _list_fitted(out: Path, run: Run) -> None:
    """split.json gains "fitted": every song the served model was fitted on (a gate that
    judges the served model does so only on songs not listed here); model.keras becomes
    the served CNN, when there is one (the next night's warm start)."""
    if run.served_model is not None:
        run.served_model.save(out / "model.keras")
    listing = json.loads((out / "split.json").read_text(encoding="utf-8"))
    listing["fitted"] = [{"path": s.rel, "genre": s.genre, "fingerprint": s.fingerprint}
                         for s in sorted(run.fitted, key=lambda s: s.rel)]
    (out / "split.json").write_text(json.dumps(listing, indent=1), encoding="utf-8")


def _list_context_split(out: Path, carved: Sequence[LabelledSong]) -> None:
    """split.json gains "context": the songs kept out of training for the context fit."""
    listing = json.loads((out / "split.json").read_text(encoding="utf-8"))
    listing["context"] = [{"path": s.rel, "genre": s.genre, "fingerprint": s.fingerprint}
                          for s in carved]
    (out / "split.json").write_text(json.dumps(listing, indent=1), encoding="utf-8")


def cnn_can_learn(wide: Dataset, families: tuple[str, ...], min_songs: int,
                  choice: str) -> tuple[str, ...]:
    """The tournament without the CNN families when fewer than two genres have the CNN's
    `min_songs` (the backbone head may still learn a few-shot station's genres); a CNN
    family asked for by name fails with the DatasetError."""
    if not {"cnn", "ensemble"} & set(families):  # the backbone head alone: no CNN to check
        return families
    try:
        narrow(wide, min_songs)
    except DatasetError as err:
        if choice != ALL or "backbone" not in families:
            raise
        log.warning("cnn and ensemble left out of the tournament: %s", err)
        return ("backbone",)
    return families


def prepare_out(out: Path, warm_start: Path | None) -> None:
    """Make --out ready for a new run: its own folder, no result of an earlier run."""
    if warm_start is not None and Path(warm_start).resolve() == out.resolve():
        raise ConfigError(f"--warm-start {warm_start} is --out: give the new run its own "
                          "directory")
    out.mkdir(parents=True, exist_ok=True)
    # A reused --out must not show an old bundle as this run's result if this run fails.
    for stale in ("model.onnx", "report.json", "not_trained.json", HELD_OUT,
                  *(f"{f}.onnx" for f in FAMILIES)):
        (out / stale).unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class Gathered:
    """The dataset step's result: the splits and what was left out on the way."""

    dataset: Dataset
    songs: list[LabelledSong]  # every labelled song with features
    skipped: list[tuple[str, str]]
    failed: list[tuple[str, str]]
    cache_stats: dict[str, int]


def gather(library: Path, cache: FeatureCache, backbone: Backbone | None, *,
           genres_path: Path | None, labels_path: Path | None, known_path: Path | None,
           holdout_path: Path | None, seed: int, min_songs: int, processes: int | None,
           progress: bool, not_songs_path: Path | None = None) -> Gathered:
    """Labelled songs, their cached features (and backbone input, in the same decode
    pass), classes and artist-disjoint splits."""
    genre_map = load_genre_map(genres_path)
    songs, skipped = find_labelled_songs(library, genre_map, load_labels(labels_path),
                                         known=load_known(known_path),
                                         not_songs=load_not_songs(not_songs_path))
    log.info("%d labelled songs in %s (%d files left out)", len(songs), library, len(skipped))
    songs, failed, cache_stats = load_features(
        songs, cache, patches=backbone.patches if backbone else None,
        embeddings=backbone.embeddings if backbone else None, processes=processes,
        progress=progress)
    log.info("features: %(cached)d cached, %(decoded)d decoded, %(failed)d failed", cache_stats)
    if backbone is not None:
        log.info("backbone patches: %(backbone_cached)d cached (or embedded already), "
                 "%(backbone_decoded)d decoded in the same pass", cache_stats)
    dataset = build_dataset(songs, seed=seed, min_songs=min_songs,
                            holdout=load_holdout(holdout_path))
    if dataset.left_out:
        log.info("genres left out (fewer than %d songs or no training artist): %s",
                 min_songs, dataset.left_out)
    return Gathered(dataset, songs, skipped, failed, cache_stats)


def prepare_backbone(songs: Gathered, cache: FeatureCache, backbone: Backbone,
                     processes: int | None, threads: int | None) -> dict[str, int]:
    """Every labelled song's embedding into the embedding cache (computed once; judging
    takes them through each bundle's head), and real patches of one song for the bundles'
    parity checks when no song has its patches cached (the worker embedded them all)."""
    dataset = songs.dataset
    ordered = (*dataset.test, *dataset.validation, *dataset.train)
    sample = [] if any(backbone.patches.has(s.fingerprint) for s in ordered) else ordered[:1]
    if sample:
        load_features(list(sample), cache, patches=backbone.patches, processes=1)
    stats = embed_songs(songs.songs, backbone, threads or 0)
    stats["parity_patches_decoded"] = len(sample)
    log.info("embeddings: %(embeddings_cached)d cached, %(embeddings_computed)d computed "
             "with the backbone", stats)
    return stats


def common_report(songs: Gathered, cache: FeatureCache, spec: FeatureSpec, *, library: Path,
                  seed: int, parent: str) -> dict:
    """report.json's keys shared by every family."""
    return {
        "feature_spec": json.loads(spec.to_json()),
        "cache": {**songs.cache_stats, "dir": str(cache.root)},
        "skipped": [{"path": rel, "reason": reason} for rel, reason in songs.skipped],
        "failed": [{"path": rel, "reason": reason} for rel, reason in songs.failed],
        "library": str(library),
        "seed": seed,
        "parent_model": parent,
        "trainer_version": TRAINER_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _parent_model(warm_start: Path) -> str:
    """sha256 of the warm-start run's bundle (what the model registry knows it by)."""
    try:
        return file_sha256(Path(warm_start) / "model.onnx")
    except OSError:
        return str(warm_start)
