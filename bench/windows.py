"""Song accuracy and songs/s against the number of windows per song at inference.

    .venv/bin/python bench/windows.py [--windows 5 8 12] [--songs-per-genre 8]
                                      [--test-songs-per-genre 10] [--epochs 2]

Trains nothing new per window count: one seed CNN is trained once (`python -m trainer
train`, as tests/conftest.py's trained_bundle does) on a demo library (daemon.cli.demo
make_library, 20-40 s songs) and kept in bench/out/windows/. It then classifies two test
libraries of other songs (other seeds, 30-90 s) with each window count, decode + features
+ model in this process at one ORT thread (the daemon's setting):
  - plain:  the demo generator's songs as they are;
  - breaks: the same kind of songs with passages of another genre's sound over 30% of
            their length (intros, bridges, a guest's verse: what makes one clip lie).
Prints song accuracy and songs/s per window count, and the ratio of each to 5 windows'.
With the converted backbone at hand (`make backbone`: <musicnn dir>/backbone.onnx), also
songs/s of both kinds from one decode pass (decode_song + spectrograms + mel patches +
the CNN + the backbone's embedding, one ORT thread), which is what the worker pays for a
bundle that embeds.
Figures, not a pass/fail test; the machine may be shared, so the load average is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.audio.features import BACKBONE, BACKBONE_SPEC, CNN, DEFAULT_SPEC  # noqa: E402
from daemon.audio.jobs import extract  # noqa: E402
from daemon.cli.demo import VOICES, encode, make_library, synthesize  # noqa: E402
from daemon.suggest.classifier import Classifier  # noqa: E402

OUT = ROOT / "bench" / "out" / "windows"
SR = 22_050
BREAK_SHARE = 0.3


def trained_cnn(songs_per_genre: int, epochs: int) -> Path:
    """The seed CNN bundle trained on a demo library (trained once, then reused)."""
    out = OUT / f"cnn-{songs_per_genre}x{epochs}"
    if (out / "model.onnx").exists():
        return out / "model.onnx"
    library = OUT / f"train-{songs_per_genre}"
    if not library.exists():
        make_library(library, songs_per_genre=songs_per_genre, untagged_share=0.0,
                     seconds=(20, 40), artists_per_genre=4, broken=0, seed=1)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "trainer", "train", "--library",
                           str(library), "--out", str(out), "--cache", str(OUT / "cache"),
                           "--epochs", str(epochs), "--min-songs", "4"],
                          capture_output=True, text=True, env={**os.environ,
                                                               "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        sys.exit(f"training failed:\n{done.stderr[-3000:]}")
    print(f"trained the seed CNN on {songs_per_genre} songs/genre, {epochs} epochs, in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return out / "model.onnx"


def with_breaks(genre: str, seconds: float, seed: int) -> np.ndarray:
    """A `genre` song where BREAK_SHARE of its length, in 2-6 s passages, sounds like
    another genre."""
    rng = np.random.default_rng(seed)
    song = synthesize(genre, seconds, SR, seed)
    others = [g for g in VOICES if g != genre]
    n, covered = len(song), 0
    while covered < BREAK_SHARE * n:
        length = int(rng.uniform(2, 6) * SR)
        at = int(rng.integers(0, max(1, n - length)))
        other = synthesize(str(rng.choice(others)), length / SR, SR, int(rng.integers(1 << 31)))
        song[at:at + len(other)] = other[:n - at]
        covered += len(other)
    return song


def test_library(kind: str, per_genre: int) -> list[tuple[Path, str]]:
    """(path, genre) of the test songs, made once."""
    root = OUT / f"test-{kind}-{per_genre}"
    marker = root / ".done"
    rng = np.random.default_rng(7)
    songs = []
    for g, genre in enumerate(VOICES):
        for i in range(per_genre):
            ext = (".mp3", ".flac", ".ogg", ".m4a")[(g + i) % 4]
            path = root / genre / f"{i:02d}{ext}"
            seconds, seed = float(rng.uniform(30, 90)), 10_000 + 100 * g + i
            if not marker.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                samples = (synthesize(genre, seconds, SR, seed) if kind == "plain"
                           else with_breaks(genre, seconds, seed))
                encode(path, samples, SR)
            songs.append((path, genre))
    marker.touch()
    return songs


def measure(classifier: Classifier, songs: list[tuple[Path, str]], windows: int
            ) -> tuple[float, float]:
    """(song accuracy, songs/s) classifying every song from `windows` windows."""
    spec = dataclasses.replace(DEFAULT_SPEC, clips_per_song=windows)
    extract(songs[0][0], spec)  # first-open costs out of the measurement
    right = 0
    started = time.perf_counter()
    for path, genre in songs:
        probs = classifier.predict_songs([extract(path, spec).features])[0]
        right += classifier.classes[int(np.argmax(probs))] == genre
    return right / len(songs), len(songs) / (time.perf_counter() - started)


def backbone_rate(classifier: Classifier, backbone, songs: list[tuple[Path, str]],
                  windows: int) -> float:
    """Songs/s of one decode pass for both kinds, the CNN and the backbone's embedding."""
    cnn, patches = (dataclasses.replace(s, clips_per_song=windows)
                    for s in (DEFAULT_SPEC, BACKBONE_SPEC))
    started = time.perf_counter()
    for path, _ in songs:
        both = extract(path, cnn, patches, (CNN, BACKBONE))
        classifier.predict_songs([both.features])
        backbone.run(["penultimate"], {"patches": both.patches})
    return len(songs) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[5, 8, 12])
    parser.add_argument("--songs-per-genre", type=int, default=8)
    parser.add_argument("--test-songs-per-genre", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)

    OUT.mkdir(parents=True, exist_ok=True)
    classifier = Classifier.load(trained_cnn(args.songs_per_genre, args.epochs))
    print(f"cpus={os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at start; "
          f"{len(classifier.classes)} genres", flush=True)
    for kind in ("plain", "breaks"):
        songs = test_library(kind, args.test_songs_per_genre)
        print(f"\n{kind}: {len(songs)} test songs")
        print(f"{'windows':>8} {'accuracy':>9} {'songs/s':>8} {'songs/s vs first':>17}")
        first = None
        for windows in args.windows:
            accuracy, rate = measure(classifier, songs, windows)
            first = first or rate
            print(f"{windows:8d} {accuracy:9.3f} {rate:8.1f} {rate / first:16.2f}x",
                  flush=True)
    model = Path(sys.prefix) / "share" / "genretagger" / "musicnn" / "backbone.onnx"
    if model.exists():
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        backbone = ort.InferenceSession(str(model), options,
                                        providers=["CPUExecutionProvider"])
        songs = test_library("plain", args.test_songs_per_genre)[::5]
        print(f"\nCNN + backbone embedding from one decode pass, {len(songs)} songs")
        print(f"{'windows':>8} {'songs/s':>8}")
        for windows in args.windows:
            print(f"{windows:8d} {backbone_rate(classifier, backbone, songs, windows):8.1f}",
                  flush=True)
    print(f"\nload average at end: {os.getloadavg()[0]:.1f} (cpus={os.cpu_count()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
