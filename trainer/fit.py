"""Training: Adam, early stopping with best-weights restore, class weights, fixed seeds.

Clips stream from the feature cache through tf.data (one song's .npy at a time, a
bounded shuffle buffer), so memory does not grow with the library: a 75,000-clip library
would need 3.8 GB as float32 arrays, streaming needs ~100 MB of buffer on top of
TensorFlow itself (bench/train.py prints the peak RSS).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from daemon.audio.featurecache import FeatureCache
from daemon.core.errors import ModelMismatch
from daemon.suggest.classifier import read_metadata
from trainer.dataset import LabelledSong, song_chunks
from trainer.model import build_model
from trainer.sample import epoch_songs

log = logging.getLogger(__name__)

# bench/train.py on 2 shared cores: batch 64 was no faster per clip than 32 and needs
# more memory, so the seed's 32 stays.
BATCH_SIZE = 32
# A small library still gets this many steps per epoch (smaller batches), so a few
# epochs are enough to learn from it.
MIN_STEPS_PER_EPOCH = 8
SHUFFLE_CLIPS = 2048
PATIENCE = 4
# Validation loss (nats per clip) must fall by more than this to count as better. A model
# that already hears validation right keeps "improving" by 1e-5 an epoch: measured on a
# warm night (bench/nightly.py), 13 epochs instead of 5, ~40 minutes at a 15,000-song
# station. At the losses of a model still learning (0.1 and up) it changes nothing.
MIN_IMPROVEMENT = 1e-3
LEARNING_RATE = 1e-3
# A warm start fine-tunes a model that already works: smaller steps keep what it knows.
WARM_START_LEARNING_RATE = 3e-4


def configure(seed: int, threads: int | None = None) -> None:
    """Fixed seeds, deterministic ops and TF thread pools; call before building a model."""
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
        except RuntimeError:  # TF already running in this process: its pools stay as they are
            log.debug("TensorFlow already initialised; thread settings unchanged")
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights (mean 1 over the training songs) per class index."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return weights.astype(np.float32)


def clip_stream(songs: list[LabelledSong], labels: np.ndarray, cache: FeatureCache, *,
                batch_size: int, weights: np.ndarray | None = None, shuffle: bool = False,
                seed: int = 0, ceiling: int | None = None,
                yielded: list[int] | None = None) -> tf.data.Dataset:
    """Songs -> batches of (clips, labels[, sample weights]) read from the cache as needed.

    With shuffle, song order is reshuffled every epoch (seeded) and clips mix in a
    bounded buffer; memory stays at the buffer, never the library. With a `ceiling` too,
    each epoch is a fresh sample of at most that many songs (trainer.sample.epoch_songs).
    `yielded` gets each pass's count of clips, as the stream gave them.
    """
    spec = cache.spec
    epoch = [0]

    def clips():
        order = np.arange(len(songs))
        if shuffle:
            chosen = epoch_songs(labels, ceiling, seed, epoch[0])
            order = np.random.default_rng([seed, epoch[0]]).permutation(
                len(songs) if len(chosen) == len(songs) else chosen)
            epoch[0] += 1
        if yielded is not None:
            yielded.append(0)
        for i in order:
            features = cache.get(songs[i].fingerprint)
            if features is None:
                raise RuntimeError(f"{songs[i].rel}: features vanished from the cache")
            for clip in features:
                if yielded is not None:
                    yielded[-1] += 1
                if weights is None:
                    yield clip, labels[i]
                else:
                    yield clip, labels[i], weights[labels[i]]

    per_epoch = len(epoch_songs(labels, ceiling, seed, 0)) if shuffle else len(songs)
    signature = [tf.TensorSpec(spec.input_shape, tf.float32), tf.TensorSpec((), tf.int64)]
    if weights is not None:
        signature.append(tf.TensorSpec((), tf.float32))
    data = tf.data.Dataset.from_generator(clips, output_signature=tuple(signature))
    data = data.apply(tf.data.experimental.assert_cardinality(per_epoch * spec.clips_per_song))
    if shuffle:
        data = data.shuffle(SHUFFLE_CLIPS, seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(2)


class PopulationStatistics(keras.callbacks.Callback):
    """Sets each BatchNorm's inference statistics to its input's mean and variance over a
    fixed sample of training clips, before every validation pass.

    On a small library training runs a few dozen steps, and the moving averages that
    BatchNormalization keeps for inference still lag far behind the batch statistics
    the weights were trained with, so inference sits near chance while training accuracy
    is perfect (momentum 0.9 instead of 0.99 narrows the gap; this closes it). With the
    true statistics, validation loss judges the model as it will run, and early
    stopping restores weights and statistics together.
    """

    def __init__(self, clips: np.ndarray, chunk: int = 64, at_end: bool = False):
        super().__init__()
        self.clips = clips
        self.chunk = chunk
        self.at_end = at_end  # no validation pass (a refit): set them once, at the end
        self._probes: list[tuple[keras.layers.BatchNormalization, keras.Model]] = []
        self.seconds: list[float] = []  # each update's: a cost per epoch that stays fixed

    def on_train_begin(self, logs=None):
        self._probes = [(layer, keras.Model(self.model.inputs[0], layer.input))
                        for layer in self.model.layers
                        if isinstance(layer, keras.layers.BatchNormalization)]

    def on_test_begin(self, logs=None):
        self.update()

    def on_train_end(self, logs=None):
        if self.at_end:
            self.update()

    def update(self) -> None:
        began = time.monotonic()
        self._update()
        self.seconds.append(round(time.monotonic() - began, 3))

    def _update(self) -> None:
        # In layer order: each probe runs through the BatchNorms already updated.
        for layer, probe in self._probes:
            total = squares = None
            count = 0
            for start in range(0, len(self.clips), self.chunk):
                act = np.asarray(probe(self.clips[start:start + self.chunk], training=False),
                                 dtype=np.float64)
                act = act.reshape(-1, act.shape[-1])
                total = act.sum(axis=0) if total is None else total + act.sum(axis=0)
                sq = np.square(act).sum(axis=0)
                squares = sq if squares is None else squares + sq
                count += len(act)
            if not count:
                return
            mean = total / count
            layer.moving_mean.assign(mean.astype(np.float32))
            layer.moving_variance.assign(np.maximum(squares / count - mean**2, 0)
                                         .astype(np.float32))


def statistics_sample(songs: list[LabelledSong], cache: FeatureCache, seed: int,
                      max_clips: int = 512) -> np.ndarray:
    """Up to `max_clips` training clips from songs picked at random (seeded)."""
    per_song = cache.spec.clips_per_song
    chosen = np.random.default_rng(seed).permutation(len(songs))[:max(1, max_clips // per_song)]
    picked = [songs[i] for i in sorted(chosen)]
    return np.concatenate([c.reshape(-1, *c.shape[2:]) for c in song_chunks(picked, cache)])


class EpochLog(keras.callbacks.Callback):
    """One log line per epoch, for journald and the retrain log (no progress bar)."""

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        log.info("epoch %d: %s", epoch + 1,
                 " ".join(f"{k} {v:.4f}" for k, v in sorted(logs.items())
                          if isinstance(v, float | int)))


class EpochSeconds(keras.callbacks.Callback):
    """Each epoch's wall seconds and, of those, its validation pass's: what a night's fit
    costs per epoch (bench/nightly.py extrapolates from them)."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self.validation: list[float] = []
        self._began = self._tested = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._began = time.monotonic()
        self.validation.append(0.0)

    def on_test_begin(self, logs=None):
        self._tested = time.monotonic()

    def on_test_end(self, logs=None):
        self.validation[-1] = round(time.monotonic() - self._tested, 3)

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.monotonic() - self._began, 3))


class LossTarget(keras.callbacks.Callback):
    """Stop once an epoch's training loss is `target` or below: the refit goes on from the
    held-out fit on every song until it fits them as well as the held-out fit fitted its
    own songs at its best epoch (then more epochs would only fit them closer)."""

    def __init__(self, target: float):
        super().__init__()
        self.target = target

    def on_epoch_end(self, epoch, logs=None):
        if (logs or {}).get("loss", np.inf) <= self.target:
            self.model.stop_training = True


class TimeBudget(keras.callbacks.Callback):
    """Stop before an epoch would end past `deadline` (a time.monotonic() value).

    The nightly run has a hard timeout, and a run stopped by it is lost. Stopped here, the
    fit keeps its best epoch (EarlyStopping restores it at the end of training) and the run
    goes on to calibration, evaluation, export and the gate.
    """

    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline
        self.longest = 0.0
        self.stopped_after: int | None = None  # epochs run when the budget stopped it
        self._began = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._began = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        self.longest = max(self.longest, now - self._began)
        if now + self.longest > self.deadline:
            self.model.stop_training = True
            self.stopped_after = epoch + 1
            log.warning("stopping after epoch %d: another epoch (%.0f s) would overrun the "
                        "time budget; keeping the best epoch so far", epoch + 1, self.longest)


def load_warm_start(path: Path, classes: tuple[str, ...],
                    input_shape: tuple[int, int, int]) -> tuple[keras.Model | None, str]:
    """A previous run's model.keras to continue from -> (model, how), or (None, why not).

    Same classes: the model as it was. Other classes (a genre became learnable, or one
    left): the convolutions start warm, the output layer is new, with the old weights of
    the genres both models know copied into their columns."""
    model_path = Path(path) / "model.keras"
    report_path = Path(path) / "report.json"
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        # The CNN's own genres: the top-level ones are the winner's, and a backbone head
        # that won may know genres the CNN had too few songs for.
        previous_classes = tuple((report.get("families", {}).get("cnn") or report)["classes"])
    except (OSError, ValueError, KeyError, AttributeError):
        try:  # a run directory without its report: the bundle knows the classes too
            previous_classes = tuple(read_metadata(Path(path) / "model.onnx")["classes"])
        except (ModelMismatch, KeyError) as err:
            return None, f"no classes in {path} ({err}); trained from scratch"
    try:
        model = keras.models.load_model(model_path, compile=False)
    except (OSError, ValueError) as err:
        return None, f"{model_path} unreadable ({err}); trained from scratch"
    if tuple(model.input_shape[1:]) != tuple(input_shape):
        return None, (f"input {model.input_shape[1:]} differs from {input_shape}; trained "
                      "from scratch")
    if int(model.output_shape[-1]) != len(previous_classes):
        return None, (f"{model_path} has {model.output_shape[-1]} outputs for "
                      f"{len(previous_classes)} genres; trained from scratch")
    if previous_classes == classes:
        log.info("warm start from %s", model_path)
        return model, "warm: same genres"
    fresh = with_new_output(model, previous_classes, classes, input_shape)
    log.info("warm start from %s with a new output layer: genres %s -> %s", model_path,
             ", ".join(previous_classes), ", ".join(classes))
    return fresh, (f"warm convolutions, new output layer ({len(previous_classes)} -> "
                   f"{len(classes)} genres)")


def with_new_output(model: keras.Model, previous: tuple[str, ...], classes: tuple[str, ...],
                    input_shape: tuple[int, int, int]) -> keras.Model:
    """The seed CNN for `classes` with every layer but the output copied from `model`
    (built for `previous`); the output's columns of genres in both are copied too."""
    fresh = build_model(len(classes), input_shape)
    if len(fresh.layers) != len(model.layers):
        raise ValueError(f"the warm-start model has {len(model.layers)} layers, the seed "
                         f"CNN {len(fresh.layers)}")
    for old, new in zip(model.layers[:-1], fresh.layers[:-1], strict=True):
        new.set_weights(old.get_weights())
    kernel, bias = (np.array(w) for w in fresh.layers[-1].get_weights())
    old_kernel, old_bias = model.layers[-1].get_weights()
    for i, genre in enumerate(classes):
        if genre in previous:
            kernel[:, i] = old_kernel[:, previous.index(genre)]
            bias[i] = old_bias[previous.index(genre)]
    fresh.layers[-1].set_weights([kernel, bias])
    return fresh


def starting_model(classes: tuple[str, ...], input_shape: tuple[int, int, int],
                   warm_start: Path | None, start_from: keras.Model | None
                   ) -> tuple[keras.Model, bool, str]:
    """(model to train, warm, how): a copy of `start_from` (the refit goes on from the
    held-out fit), else a previous run's model (load_warm_start), else the seed CNN."""
    if start_from is not None:
        if int(start_from.output_shape[-1]) != len(classes):
            raise ValueError(f"the model to go on from has {start_from.output_shape[-1]} "
                             f"outputs for {len(classes)} genres")
        model = keras.models.clone_model(start_from)
        model.set_weights(start_from.get_weights())
        return model, True, "continued from the held-out fit"
    model, how = (load_warm_start(warm_start, classes, input_shape) if warm_start
                  else (None, "cold: no earlier model"))
    if model is not None:
        return model, True, how
    if warm_start:
        log.warning("warm start: %s", how)
    return build_model(len(classes), input_shape), False, how


def fit(train: list[LabelledSong], validation: list[LabelledSong], classes: tuple[str, ...],
        cache: FeatureCache, *, epochs: int, seed: int = 0, batch_size: int = BATCH_SIZE,
        patience: int = PATIENCE, warm_start: Path | None = None,
        start_from: keras.Model | None = None, songs_per_epoch: int | None = None,
        stop_at_loss: float | None = None, deadline: float | None = None,
        verbose: int | None = None) -> tuple[keras.Model, dict]:
    """Train the seed CNN on cached features -> (model with the best val-loss weights, info).

    info: {"epochs_run", "best_epoch", "history": {metric: [per epoch]}, "warm_start",
    "stopped_for_time", "songs_per_epoch", "validation_songs", "epoch_clips" (clips each
    epoch's stream gave), "epoch_seconds", "validation_seconds" and "statistics_seconds"
    (of those: PopulationStatistics' fixed cost)}. Without
    `validation` songs (the refit on every label) it runs `epochs` epochs, fewer if an
    epoch's training loss reaches `stop_at_loss`. songs_per_epoch: the ceiling of songs
    an epoch trains on (trainer.sample); validation is capped at as many, one fixed
    sample. start_from: a model to go on from (its copy is trained), else warm_start: a
    previous run's directory.
    deadline: a time.monotonic() value no epoch may end after (TimeBudget). verbose: Keras
    verbosity; default a progress bar on a terminal, else one line per epoch.
    """
    index = {g: i for i, g in enumerate(classes)}
    y_train = np.array([index[s.genre] for s in train], dtype=np.int64)
    y_val = np.array([index[s.genre] for s in validation], dtype=np.int64)
    # Validation above the ceiling: one balanced sample, the same every epoch, so the
    # stopper compares epochs on the same songs.
    kept = epoch_songs(y_val, songs_per_epoch, seed, 0)
    validation, y_val = [validation[i] for i in kept], y_val[kept]
    model, warm, how = starting_model(classes, cache.spec.input_shape, warm_start, start_from)
    model.compile(
        optimizer=keras.optimizers.Adam(WARM_START_LEARNING_RATE if warm else LEARNING_RATE),
        loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    # Weighted by one epoch's sample: every epoch's has the same songs per genre.
    sampled = y_train[epoch_songs(y_train, songs_per_epoch, seed, 0)]
    weights = class_weights(sampled, len(classes))
    log.info("training on %d songs (%s), %d an epoch, validating on %d; class weights %s",
             len(train), dict(sorted(Counter(s.genre for s in train).items())), len(sampled),
             len(validation), [round(float(w), 2) for w in weights])
    batch_size = max(1, min(batch_size,
                            len(sampled) * cache.spec.clips_per_song // MIN_STEPS_PER_EPOCH))
    yielded: list[int] = []
    train_data = clip_stream(train, y_train, cache, batch_size=batch_size, weights=weights,
                             shuffle=True, seed=seed, ceiling=songs_per_epoch, yielded=yielded)
    val_data = (clip_stream(validation, y_val, cache, batch_size=batch_size) if validation
                else None)
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 0
    # Population statistics first: validation (and the stopper's choice) sees them.
    callbacks = [PopulationStatistics(statistics_sample(train, cache, seed),
                                      at_end=val_data is None), EpochSeconds()]
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                            min_delta=MIN_IMPROVEMENT,
                                            restore_best_weights=True)
    if val_data is not None:
        callbacks.append(stopper)
    if stop_at_loss is not None:
        callbacks.append(LossTarget(stop_at_loss))
    budget = TimeBudget(deadline) if deadline is not None else None
    if budget is not None:
        callbacks.append(budget)
    if not verbose:
        callbacks.append(EpochLog())
    history = model.fit(train_data, validation_data=val_data, epochs=epochs,
                        callbacks=callbacks, verbose=verbose, shuffle=False)
    ran = len(history.history.get("loss", []))
    # The epoch whose weights the stopper restored (its last gain over MIN_IMPROVEMENT).
    best = stopper.best_epoch + 1 if val_data is not None else ran
    return model, {"epochs_run": ran, "best_epoch": best, "warm_start": warm,
                   "warm_start_how": how, "batch_size": batch_size,
                   "stopped_for_time": budget is not None and budget.stopped_after is not None,
                   "songs_per_epoch": len(sampled), "validation_songs": len(validation),
                   "epoch_clips": yielded, "epoch_seconds": callbacks[1].seconds,
                   "validation_seconds": callbacks[1].validation[:ran],
                   # In an epoch only before validation passes (a refit's is at its end).
                   "statistics_seconds": callbacks[0].seconds[:ran] if validation else [],
                   "history": {k: [float(v) for v in vals]
                               for k, vals in history.history.items()}}


def predict_clips(model: keras.Model, songs: list[LabelledSong], cache: FeatureCache,
                  n_classes: int, batch_songs: int = 16) -> np.ndarray:
    """Keras clip probabilities for `songs` -> (n_songs, clips, n_classes), inference mode."""
    parts = [np.zeros((0, cache.spec.clips_per_song, n_classes), np.float32)]
    for chunk in song_chunks(songs, cache, batch_songs):
        flat = chunk.reshape(-1, *chunk.shape[2:])
        probs = model.predict_on_batch(flat) if len(flat) else np.zeros((0, n_classes))
        parts.append(np.asarray(probs).reshape(len(chunk), -1, n_classes))
    return np.concatenate(parts)
