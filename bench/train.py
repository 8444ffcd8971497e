"""Training throughput of the seed CNN: clips/s, peak RSS, and a 75,000-clip epoch.

Compares, in the same run, Keras' plain setup (all clips in memory as numpy, batch 32,
TensorFlow's default thread pools) with the trainer's own path (clips streamed from the
feature cache through tf.data, trainer.fit's batch size and thread settings). Each setup
runs in its own process (TensorFlow's thread pools are per process), so peak RSS is the
setup's own. Features are real (daemon.audio.features on synthesized songs), cached under
bench/out/train-cache; no decoding is timed here (bench/decode.py does that).

    .venv/bin/python bench/train.py [--songs-per-genre 12] [--epochs 1] [--batches 32 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.audio.featurecache import FeatureCache  # noqa: E402
from daemon.audio.features import DEFAULT_SPEC, clip_starts, song_features  # noqa: E402
from daemon.cli.demo import VOICES, synthesize  # noqa: E402
from trainer.dataset import LabelledSong  # noqa: E402

CACHE = ROOT / "bench" / "out" / "train-cache"
LIBRARY_CLIPS = 75_000


def make_songs(per_genre: int) -> list[LabelledSong]:
    """Real features for per_genre songs of each demo genre, cached across runs."""
    spec, cache = DEFAULT_SPEC, FeatureCache(CACHE, DEFAULT_SPEC)
    songs = []
    for g, genre in enumerate(VOICES):
        for i in range(per_genre):
            fp = f"{g:04d}{i:028d}"
            if not cache.has(fp):
                seconds = 8.0
                mono = synthesize(genre, seconds, spec.sample_rate, 1000 * g + i, 1)[:, 0]
                clips = np.stack([mono[int(s * spec.sample_rate):][:spec.clip_samples]
                                  for s in clip_starts(seconds, spec)])
                cache.put(fp, song_features(clips, spec))
            songs.append(LabelledSong(cache.path(fp), f"{genre}/{i}", genre, f"{genre}{i}", fp))
    return songs


def child(setup: str, per_genre: int, epochs: int, batch: int) -> dict:
    """One setup, in this process: returns its figures."""
    import keras
    import tensorflow as tf

    from trainer.fit import class_weights, clip_stream, configure
    from trainer.model import build_model

    songs = make_songs(per_genre)
    cache = FeatureCache(CACHE, DEFAULT_SPEC)
    classes = tuple(VOICES)
    labels = np.array([classes.index(s.genre) for s in songs])
    times: list[float] = []
    cpu: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)
            cpu.append(time.process_time() - self.cpu)

    if setup == "baseline":
        keras.utils.set_random_seed(0)
        x = np.concatenate([cache.get(s.fingerprint) for s in songs])
        y = np.repeat(labels, DEFAULT_SPEC.clips_per_song)
        data = {"x": x, "y": y, "batch_size": 32}
    else:
        configure(0, os.cpu_count())
        data = {"x": clip_stream(songs, labels, cache, batch_size=batch,
                                 weights=class_weights(labels, len(classes)), shuffle=True)}
    model = build_model(len(classes))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    # One extra epoch first: it traces the graph, which a long training pays once.
    model.fit(**data, epochs=epochs + 1, verbose=0, callbacks=[Clock()])
    clips = len(songs) * DEFAULT_SPEC.clips_per_song
    per_second = clips / float(np.mean(times[1:]))
    return {"setup": setup, "batch": 32 if setup == "baseline" else batch,
            "threads": (f"intra {tf.config.threading.get_intra_op_parallelism_threads()} "
                        f"inter {tf.config.threading.get_inter_op_parallelism_threads()}"
                        " (0 = TF default)"),
            "clips": clips, "clips_per_s": per_second,
            # CPU seconds per 1,000 clips: steadier than wall time on a shared machine.
            "cpu_s_per_1k": 1000 * float(np.mean(cpu[1:])) / clips,
            "epoch_75k_min": LIBRARY_CLIPS / per_second / 60,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs-per-genre", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per setup")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64],
                        help="batch sizes to try on the trainer's path")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.songs_per_genre, args.epochs, args.batch)))
        return 0
    make_songs(args.songs_per_genre)
    print(f"seed CNN, {args.songs_per_genre * len(VOICES) * 5} clips, {args.epochs} timed "
          f"epoch(s) per setup after one warm-up epoch, {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f}")
    results = []
    setups = [("baseline", 32)] + [("trainer", b) for b in args.batches]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    for setup, batch in setups:
        run = subprocess.run([sys.executable, __file__, "--child", setup, "--batch", str(batch),
                              "--songs-per-genre", str(args.songs_per_genre),
                              "--epochs", str(args.epochs)],
                             capture_output=True, text=True, env=env)
        if run.returncode:
            print(f"{setup} batch {batch} failed:\n{run.stderr[-2000:]}")
            return 1
        results.append(json.loads(run.stdout.strip().splitlines()[-1]))
    base = results[0]
    print(f"{'setup':<10}{'batch':>6}{'clips/s':>10}{'x base':>8}{'75k epoch':>12}"
          f"{'CPU s/1k clips':>16}{'x base':>8}{'peak RSS':>11}  threads")
    for r in results:
        print(f"{r['setup']:<10}{r['batch']:>6}{r['clips_per_s']:>10.1f}"
              f"{r['clips_per_s'] / base['clips_per_s']:>8.2f}{r['epoch_75k_min']:>9.1f} min"
              f"{r['cpu_s_per_1k']:>16.1f}{base['cpu_s_per_1k'] / r['cpu_s_per_1k']:>8.2f}"
              f"{r['peak_rss_mb']:>8.0f} MB  {r['threads']}")
    print("wall-clock figures move with other load on a shared machine; CPU seconds per "
          "clip move less")
    in_memory_gb = LIBRARY_CLIPS * np.prod(DEFAULT_SPEC.input_shape) * 4 / 1e9
    print(f"baseline holds every clip in memory: {in_memory_gb:.1f} GB of float32 for "
          f"75,000 clips; the trainer streams from the cache (RSS above does not grow "
          "with the library)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
