"""A generated station library for `make demo`, the tests and the benchmarks.

Songs are synthesised per genre with clearly different spectra (so a small model can
learn them in a few epochs), encoded by real encoders (libmp3lame, FLAC, Vorbis, Opus,
AAC, WMA through PyAV; WAV/AIFF through libsndfile) and tagged with mutagen.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from daemon.tags.write import write_tags

# extension -> (container format, codec, sample format, encoder sample rate or None)
ENCODERS: dict[str, tuple[str, str, str, int | None]] = {
    ".mp3": ("mp3", "libmp3lame", "fltp", None),
    ".flac": ("flac", "flac", "s16", None),
    ".opus": ("ogg", "libopus", "flt", 48_000),
    ".m4a": ("ipod", "aac", "fltp", None),
    ".wma": ("asf", "wmav2", "fltp", None),
}
# libsndfile: PCM, and Ogg Vorbis through libvorbis (PyAV's wheel has no libvorbis).
SOUNDFILE_FORMATS = {".wav": ("WAV", "PCM_16"), ".aif": ("AIFF", "PCM_16"),
                     ".aiff": ("AIFF", "PCM_16"), ".ogg": ("OGG", "VORBIS")}
FORMATS = (".mp3", ".flac", ".ogg", ".opus", ".m4a", ".wav", ".aiff", ".wma")

# Per genre: (tone Hz, noise band Hz, beats per second, tone harmonics). Distinct on
# purpose: the demo shows the pipeline, not a musicology result.
VOICES: dict[str, tuple[float, tuple[float, float], float, int]] = {
    "Blues": (196.0, (300, 900), 1.5, 3),
    "Classical": (440.0, (2000, 3000), 0.0, 1),
    "Country": (330.0, (1200, 1800), 2.5, 2),
    "Electronic": (110.0, (6000, 9000), 4.0, 5),
    "Folk": (262.0, (600, 1000), 1.0, 1),
    "Hip-Hop": (65.0, (150, 400), 1.5, 4),
    "Jazz": (523.0, (3000, 4500), 2.0, 2),
    "Metal": (147.0, (4000, 8000), 6.0, 8),
    "Pop": (784.0, (1500, 2500), 2.0, 3),
    "Rock": (165.0, (2500, 5000), 3.0, 6),
}


def synthesize(genre: str, seconds: float, sr: int = 22_050, seed: int = 0,
               channels: int = 2) -> np.ndarray:
    """A song of `genre` as float32 (samples, channels) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    tone, (lo, hi), bps, harmonics = VOICES[genre]
    tone *= rng.uniform(0.94, 1.06)
    n = int(seconds * sr)
    t = np.arange(n, dtype=np.float64) / sr
    x = np.zeros(n)
    for h in range(1, harmonics + 1):
        x += np.sin(2 * np.pi * tone * h * t + rng.uniform(0, 2 * np.pi)) / h
    # Band-limited noise through the FFT: cheap and exact.
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spectrum[(freqs < lo) | (freqs > hi)] = 0
    x += 2.0 * np.fft.irfft(spectrum, n) / max(np.std(np.fft.irfft(spectrum, n)), 1e-9) * 0.3
    if bps:
        x *= 0.55 + 0.45 * np.sign(np.sin(2 * np.pi * bps * t + rng.uniform(0, 6)))
    x *= 0.5 / max(np.abs(x).max(), 1e-9)
    out = np.repeat(x[:, None], channels, axis=1)
    if channels > 1:  # a little stereo difference so downmixing is exercised
        out[:, 1] *= 0.8
    return out.astype(np.float32)


def encode(path: Path, samples: np.ndarray, sr: int, subtype: str | None = None) -> Path:
    """Write `samples` (frames, channels) float32 to `path`; the extension picks the codec."""
    path = Path(path)
    ext = path.suffix.lower()
    if samples.ndim == 1:
        samples = samples[:, None]
    if ext in SOUNDFILE_FORMATS:
        container_fmt, default_subtype = SOUNDFILE_FORMATS[ext]
        # In blocks: libsndfile's Vorbis encoder crashes on very large single writes.
        with sf.SoundFile(path, "w", sr, samples.shape[1], subtype or default_subtype,
                          format=container_fmt) as out:
            for start in range(0, len(samples), 1 << 16):
                out.write(samples[start:start + (1 << 16)])
        return path
    container_fmt, codec, sample_fmt, codec_sr = ENCODERS[ext]
    channels = samples.shape[1]
    layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
    out_sr = codec_sr or sr
    with av.open(str(path), "w", format=container_fmt) as container:
        stream = container.add_stream(codec, rate=out_sr, layout=layout)
        if codec in ("libmp3lame", "wmav2"):
            stream.bit_rate = 128_000
        resampler = av.AudioResampler(format=sample_fmt, layout=layout, rate=out_sr)
        block = sr * 10
        for start in range(0, len(samples), block):
            chunk = np.ascontiguousarray(samples[start:start + block].T)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = sr
            frame.pts = start
            frame.time_base = Fraction(1, sr)
            for resampled in resampler.resample(frame):
                for packet in stream.encode(resampled):
                    container.mux(packet)
        for resampled in resampler.resample(None):
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def encode_masters(folder: Path, per_format: int, genres: Sequence[str], sr: int, seed: int,
                   formats: Sequence[str] = FORMATS,
                   seconds: tuple[float, float] = (180.0, 420.0)) -> dict[str, list[Path]]:
    """Long songs for the benchmarks: `per_format` per extension, 3-7 minutes by default.

    Encoding is the slow part (MP3 ~35x, AAC ~20x real time), so each master is written
    once under a name that says what it is and reused by later runs. Out: ext -> paths.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    masters: dict[str, list[Path]] = {}
    for f_index, ext in enumerate(formats):
        for m in range(per_format):
            length = float(rng.uniform(*seconds))  # drawn even when cached: names stay put
            genre = genres[(f_index + m) % len(genres)]
            path = folder / f"{genre}-{m}{ext}"
            if not path.exists():
                started = time.perf_counter()
                partial = path.with_name("partial-" + path.name)
                encode(partial, synthesize(genre, length, sr, seed=f_index * 10 + m), sr)
                partial.rename(path)
                print(f"  encoded {path.name} ({length / 60:.1f} min) in "
                      f"{time.perf_counter() - started:.1f} s", flush=True)
            masters.setdefault(ext, []).append(path)
    return masters


@dataclass(frozen=True)
class DemoSong:
    path: Path
    genre: str
    artist: str
    tagged: bool
    raw_genre: str | None


# Raw spellings as a real station has them: the genre map must cope.
SPELLINGS: dict[str, tuple[str, ...]] = {
    "Blues": ("Blues", "delta blues", "(0)"),
    "Classical": ("Classical", "Baroque", "classical music"),
    "Country": ("Country", "bluegrass", "(2)"),
    "Electronic": ("Electronic", "Techno", "electronica"),
    "Folk": ("Folk", "folk rock", "Singer-Songwriter"),
    "Hip-Hop": ("Hip-Hop", "hip hop", "Rap"),
    "Jazz": ("Jazz", "Bebop", "(8)"),
    "Metal": ("Metal", "Thrash Metal", "heavy metal"),
    "Pop": ("Pop", "pop", "Synthpop"),
    "Rock": ("Rock", "Classic Rock", "(17)"),
}


def album_tagging(album: int, song: int) -> bool:
    """by_album's rule: of every three albums the first is fully tagged, the second
    partly (its first song untagged), the third not at all."""
    kind = album % 3
    return kind == 0 or (kind == 1 and song > 0)


def make_library(root: Path, songs_per_genre: int = 12, genres: tuple[str, ...] = tuple(VOICES),
                 untagged_share: float = 0.3, seconds: tuple[float, float] = (20, 40),
                 formats: tuple[str, ...] = FORMATS, artists_per_genre: int = 4,
                 broken: int = 3, sr: int = 22_050, seed: int = 1,
                 by_album: bool = False) -> list[DemoSong]:
    """Write a station library: genre folders by artist (one album each), some untagged,
    a few broken. Untagged songs are drawn at random (`untagged_share`), or with
    `by_album` per album as a station has them (album_tagging): fully, partly, not at
    all tagged."""
    rng = np.random.default_rng(seed)
    songs = []
    for g_index, genre in enumerate(genres):
        for i in range(songs_per_genre):
            artist = f"{genre} Artist {i % artists_per_genre + 1}"
            ext = formats[(g_index + i) % len(formats)]
            folder = root / artist.replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{genre} Song {i + 1:03d}{ext}"
            duration = float(rng.uniform(*seconds))
            song_seed = int(rng.integers(1 << 31))
            encode(path, synthesize(genre, duration, sr, song_seed), sr)
            draw = rng.random()  # drawn either way: the songs' audio stays the same
            tagged = (album_tagging(i % artists_per_genre, i // artists_per_genre) if by_album
                      else draw >= untagged_share)
            raw = SPELLINGS[genre][i % len(SPELLINGS[genre])] if tagged else None
            write_tags(path, title=f"{genre} Song {i + 1}", artist=artist,
                       album=f"{artist} Sessions", genre=raw)
            songs.append(DemoSong(path, genre, artist, tagged, raw))
    broken_dir = root / "Incoming"
    broken_dir.mkdir(parents=True, exist_ok=True)
    makers = [
        ("empty.mp3", b""),
        ("not really.flac", b"Just some text that is not audio at all.\n" * 20),
        ("random.mp3", rng.bytes(40_000)),
    ]
    for name, data in makers[:broken]:
        (broken_dir / name).write_bytes(data)
    return songs


def make_imaging(root: Path, sr: int = 22_050) -> list[Path]:
    """The station's imaging beside the songs, as a station drive has it: a station ID, a
    sweeper and a liner (5-20 s, one tagged like a song) in a Jingles folder, which the
    demo's `[library] exclude` keeps out of the queue and of training."""
    folder = root / "Jingles"
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    imaging = [("Station ID.mp3", "Electronic", 5.0, "Pop"),
               ("Sweeper.flac", "Electronic", 12.0, None), ("Liner.wav", "Pop", 20.0, None)]
    for i, (name, genre, seconds, tag) in enumerate(imaging):
        path = encode(folder / name, synthesize(genre, seconds, sr, 900 + i), sr)
        write_tags(path, title=name.rsplit(".", 1)[0], artist="Demo FM", genre=tag)
        made.append(path)
    return made


def run_demo(base: Path) -> int:
    """`make demo`: generate a library, train the first model, run the daemon on it."""
    base = base.resolve()
    library, state = base / "library", base / "state"
    config = base / "config.toml"
    exe = [sys.executable, "-m", "daemon.cli", "--config", str(config)]
    if base.exists():
        shutil.rmtree(base)
    print(f"demo: writing a small station library under {library} ...", flush=True)
    started = time.monotonic()
    # Albums fully, partly and not at all tagged: the album-mates' genres weigh in.
    songs = make_library(library, songs_per_genre=12, seconds=(15, 30), by_album=True)
    untagged = sum(not s.tagged for s in songs)
    imaging = make_imaging(library)
    print(f"demo: {len(songs)} songs ({untagged} untagged), {len(imaging)} jingles and 3 "
          f"broken files in {time.monotonic() - started:.0f} s", flush=True)
    subprocess.run(exe + ["init", "--library", str(library), "--state-dir", str(state)],
                   check=True)
    # A small library: let every genre with a handful of songs take part.
    text = config.read_text().replace("min_songs_per_genre = 20", "min_songs_per_genre = 5")
    text = text.replace("settle_seconds = 10", "settle_seconds = 2")
    # Broken demo files reach quarantine in seconds; the first model trains quickly.
    text = text.replace("backoff_seconds = 60", "backoff_seconds = 5")
    text = text.replace("epochs = 30", "epochs = 5")  # its genres are learnt by epoch 3
    text = text.replace("\nexclude = []\n", '\nexclude = ["Jingles"]\n')  # not songs
    config.write_text(text)
    print("demo: starting the daemon (it trains the first model, then suggests genres).")
    print(f"demo: in another shell: .venv/bin/genretagger --config {config} status")
    print("demo: review page: http://127.0.0.1:8650/  — Ctrl-C stops the daemon.", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    daemon = subprocess.Popen(exe + ["run"], env=env)
    # A SIGTERM to the demo stops the daemon it started, like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        show_status_when_suggested(exe, daemon, expected=untagged)
        return daemon.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if daemon.poll() is None:
            daemon.terminate()
            daemon.wait(30)


def show_status_when_suggested(exe: list[str], daemon: subprocess.Popen, expected: int) -> None:
    """Print `genretagger status` once every untagged demo song has a suggestion."""
    started = time.monotonic()
    while daemon.poll() is None:
        time.sleep(5)
        probe = subprocess.run(exe + ["status", "--json"], capture_output=True, text=True)
        if probe.returncode != 0:
            continue
        states = json.loads(probe.stdout).get("tracks", {}).get("by_state", {})
        if states.get("suggested", 0) >= expected:
            print(f"demo: all {expected} untagged songs have suggestions after "
                  f"{time.monotonic() - started:.0f} s:", flush=True)
            subprocess.run(exe + ["status"])
            print("demo: how the first model was chosen (the tournament):", flush=True)
            subprocess.run(exe + ["models", "show", "1"])
            print("demo: the three most confident suggestions, with the songs each sounds "
                  "like:", flush=True)
            subprocess.run(exe + ["review", "list", "--limit", "3"])
            print("demo: review them at http://127.0.0.1:8650/ — Ctrl-C stops the daemon.",
                  flush=True)
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemon.cli.demo")
    sub = parser.add_subparsers(dest="cmd", required=True)
    lib = sub.add_parser("library", help="write a demo library")
    lib.add_argument("dir", type=Path)
    lib.add_argument("--songs-per-genre", type=int, default=12)
    lib.add_argument("--seconds", type=float, nargs=2, default=(20, 40))
    lib.add_argument("--untagged-share", type=float, default=0.3)
    run = sub.add_parser("run", help="the `make demo` walk-through")
    run.add_argument("--dir", type=Path, default=Path("demo-station"))
    args = parser.parse_args(argv)
    if args.cmd == "library":
        songs = make_library(args.dir, args.songs_per_genre, seconds=tuple(args.seconds),
                             untagged_share=args.untagged_share)
        print(f"{len(songs)} songs in {args.dir}")
        return 0
    return run_demo(args.dir)


if __name__ == "__main__":
    sys.exit(main())
