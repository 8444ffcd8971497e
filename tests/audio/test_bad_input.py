"""Bad input is normal input: each file below either decodes correctly or gives
the right typed error naming the file and a human reason; nothing hangs or crashes.

Formats, sample rates, bit depths and channel layouts that must decode correctly are
checked against a full decode in test_audio.py; this module holds the broken, odd and huge.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from helpers import assert_matches, full_decode

from daemon.audio.decode import probe, read_clips, read_window
from daemon.audio.features import DEFAULT_SPEC, clip_starts
from daemon.cli.demo import encode, synthesize
from daemon.core.errors import FileError, SilentAudio, TooShort, UnreadableAudio

SR = 22_050
pytestmark = pytest.mark.timeout(30)


def assert_error(path, kind: type[FileError], reason: str) -> FileError:
    """read_clips and probe-then-read both fail with `kind`, naming the file."""
    with pytest.raises(FileError) as caught:
        read_clips(path)
    error = caught.value
    assert type(error) is kind, f"{type(error).__name__}: {error}"
    assert reason in error.reason, error.reason
    assert error.path == os.fsencode(path).decode("utf-8", "backslashreplace")
    assert str(error).startswith(error.path + ": ")
    return error


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    """20 s of the same music in every format, to cut and copy."""
    folder = tmp_path_factory.mktemp("bad-input-masters")
    samples = synthesize("Metal", 20.0, 44_100, seed=11)
    return {ext: encode(folder / f"master{ext}", samples, 44_100)
            for ext in (".mp3", ".flac", ".wav", ".m4a", ".ogg", ".opus", ".wma", ".aiff")}


def test_zero_byte_file(tmp_path):
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    assert_error(empty, UnreadableAudio, "file is empty")


def test_random_bytes_named_mp3_and_text_named_flac(tmp_path):
    noise = tmp_path / "noise.mp3"
    noise.write_bytes(np.random.default_rng(4).bytes(64_000))
    assert_error(noise, UnreadableAudio, "not an audio file")
    text = tmp_path / "liner notes.flac"
    text.write_text("Recorded live at the station, 1994.\n" * 40)
    assert_error(text, UnreadableAudio, "not an audio file")
    with pytest.raises(UnreadableAudio):
        probe(text)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_files_error_or_decode_correctly(song, tmp_path, keep):
    """An interrupted copy: the header may promise more audio than there is. The result is
    either a typed error saying so, or clips that equal a full decode of what is there."""
    for ext, master in song.items():
        data = master.read_bytes()
        cut = tmp_path / f"cut{ext}"
        cut.write_bytes(data[:int(len(data) * keep)])
        try:
            clips = read_clips(cut)
        except FileError as error:
            assert type(error) is UnreadableAudio, error
            assert error.path == str(cut)
            assert ("truncated" in error.reason or "corrupt" in error.reason), error.reason
            continue
        reference = full_decode(cut)
        starts = clip_starts(probe(cut).duration, DEFAULT_SPEC)
        assert starts[-1] + 1.0 <= len(reference) / SR + 0.05
        for start, clip in zip(starts, clips, strict=True):
            assert_matches(clip, reference, start)


def test_truncated_flac_and_mp3_with_lying_headers_say_truncated(song, tmp_path):
    for ext in (".flac", ".mp3"):
        data = song[ext].read_bytes()
        cut = tmp_path / f"half{ext}"
        cut.write_bytes(data[:len(data) // 2])
        assert probe(cut).duration == pytest.approx(20.0, abs=0.1)  # the header lies
        assert_error(cut, UnreadableAudio, "truncated")


def test_only_headers_left_is_a_corrupt_file(song, tmp_path):
    for ext, kind in ((".flac", "FLAC"), (".m4a", "M4A"), (".mp3", "MP3")):
        stub = tmp_path / f"stub{ext}"
        stub.write_bytes(song[ext].read_bytes()[:600])
        error = assert_error(stub, UnreadableAudio, "")
        assert any(word in error.reason for word in ("corrupt", "truncated", "not an audio")), (
            ext, error.reason)
        if ext != ".mp3":
            assert f"corrupt or truncated {kind}" in error.reason


def test_a_directory_named_like_a_song(tmp_path):
    folder = tmp_path / "x.mp3"
    folder.mkdir()
    assert_error(folder, UnreadableAudio, "is a directory")


def test_symlinks_broken_and_good(song, tmp_path):
    broken = tmp_path / "gone.flac"
    broken.symlink_to(tmp_path / "never-there.flac")
    assert_error(broken, UnreadableAudio, "broken symlink")
    good = tmp_path / "link.flac"
    good.symlink_to(song[".flac"])
    assert np.array_equal(read_clips(good), read_clips(song[".flac"]))


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "x.mp3"
    os.mkfifo(fifo)
    started = time.monotonic()
    assert_error(fifo, UnreadableAudio, "not a regular file")
    assert time.monotonic() - started < 2


def test_file_deleted_between_listing_and_reading(song, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    shutil.copy(song[".mp3"], folder / "leaving.mp3")
    (listed,) = sorted(folder.iterdir())
    listed.unlink()
    assert_error(listed, UnreadableAudio, "file vanished")


_LIBC = ctypes.CDLL(None, use_errno=True)


def _without_root_file_powers() -> None:
    """preexec_fn: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set,
    so after exec even root obeys file permission bits."""
    for capability in (1, 2):
        if _LIBC.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_file_without_read_permission(song, tmp_path):
    """chmod 000 does not stop root (CI runs as root): the check runs in a subprocess that
    has lost root's permission-override capabilities; a readable control file in the same
    folder decodes there, so the failure is the permission and nothing else."""
    locked = tmp_path / "locked.flac"
    shutil.copy(song[".flac"], locked)
    locked.chmod(0)
    control = tmp_path / "readable.flac"
    shutil.copy(song[".flac"], control)
    script = (
        "import sys\n"
        "from daemon.audio.decode import read_clips\n"
        "from daemon.core.errors import FileError\n"
        "print(read_clips(sys.argv[2]).shape)\n"
        "try:\n"
        "    read_clips(sys.argv[1])\n"
        "except FileError as e:\n"
        "    print(type(e).__name__, '|', e.path, '|', e.reason)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(locked), str(control)],
        preexec_fn=_without_root_file_powers if os.geteuid() == 0 else None,
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "(5, 22050)"
    assert lines[1] == f"UnreadableAudio | {locked} | permission denied"


def test_non_utf8_and_very_long_file_names(song, tmp_path):
    raw_dir = os.fsencode(tmp_path)
    latin1 = os.path.join(raw_dir, b"Caf\xe9 del Mar \xff.flac")
    os.rename(shutil.copy(song[".flac"], tmp_path / "plain.flac"), latin1)
    expected = read_clips(song[".flac"])
    assert np.array_equal(read_clips(latin1), expected)
    assert np.array_equal(read_clips(os.fsdecode(latin1)), expected)  # surrogate-escaped
    broken = os.path.join(raw_dir, b"Caf\xe9 empty.mp3")
    open(broken, "wb").close()
    error = assert_error(broken, UnreadableAudio, "file is empty")
    assert "Caf\\xe9 empty.mp3" in error.path
    error.path.encode("utf-8")  # safe to log and to store in the database

    long_name = tmp_path / ("Ä" * 123 + ".mp3")  # 250 bytes: near NAME_MAX
    shutil.copy(song[".mp3"], long_name)
    assert read_clips(long_name).shape == (5, SR)
    too_long = tmp_path / ("x" * 300 + ".mp3")
    assert_error(too_long, UnreadableAudio, "name too long")


def test_a_song_shorter_than_one_clip(tmp_path):
    for ext in (".mp3", ".wav", ".opus"):
        path = encode(tmp_path / f"jingle{ext}", synthesize("Pop", 0.6, 44_100), 44_100)
        error = assert_error(path, TooShort, "shorter than one 1 s clip")
        assert error.reason.startswith("0.")


@pytest.mark.parametrize("ext", [".flac", ".mp3", ".m4a"])
def test_only_silence(tmp_path, ext):
    path = encode(tmp_path / f"silence{ext}", np.zeros((10 * 44_100, 2), np.float32), 44_100)
    assert_error(path, SilentAudio, "only silence")
    # Very quiet music is still music.
    quiet = synthesize("Folk", 10.0, 44_100) * 0.003
    assert read_clips(encode(tmp_path / f"quiet{ext}", quiet, 44_100)).shape == (5, SR)


def _two_hour_mp3(path: Path, block: np.ndarray, rate: int) -> float:
    """A 2-hour CBR MP3 without a Xing header (duration from the bitrate, as for many
    station files): one block encoded, its frames repeated. Returns the duration of one
    repeat."""
    one = path.with_name("block.mp3")
    with av.open(str(one), "w", format="mp3",
                 options={"write_xing": "0", "id3v2_version": "0"}) as out:
        stream = out.add_stream("libmp3lame", rate=rate, layout="mono")
        stream.bit_rate = 32_000
        frame = av.AudioFrame.from_ndarray(block[None, :], format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    path.write_bytes(one.read_bytes() * REPEATS)
    with av.open(str(one)) as container:
        return sum(f.samples for f in container.decode(audio=0)) / rate


# 152 x 47.3 s = 2 h; a block length that puts the 5 clips at different places in it.
BLOCK_SECONDS, REPEATS = 47.3, 152


@pytest.mark.timeout(60)
def test_two_hour_files_are_fast(tmp_path):
    """A 2-hour FLAC (8 kHz) and MP3 (22.05 kHz, 32 kbit/s), mono so they are quick to make,
    read in well under 2 s each, because only the clip windows are decoded. Each clip is
    the music at its place: compared at the file's own rate with the repeated block (the
    resampler's output grid would not line up with the block's), sample-exact for the
    FLAC; for MP3s this long the seek goes by bitrate, within one 26 ms frame."""
    files = []
    for rate, make in ((8_000, "flac"), (22_050, "mp3")):
        block = synthesize("Jazz", BLOCK_SECONDS, rate, seed=9, channels=1)[:, 0]
        path = tmp_path / f"two hours.{make}"
        if make == "flac":
            with sf.SoundFile(path, "w", rate, 1, "PCM_16", format="FLAC") as out:
                for _ in range(REPEATS):
                    out.write(block)
            files.append((path, rate, BLOCK_SECONDS, block))
        else:
            period = _two_hour_mp3(path, block, rate)
            files.append((path, rate, period, full_decode(path.with_name("block.mp3"), rate)))

    for path, rate, period, reference in files:
        info = probe(path)
        assert info.duration == pytest.approx(7200, rel=0.01)
        started = time.perf_counter()
        clips = read_clips(path)
        elapsed = time.perf_counter() - started
        assert elapsed < 2.0, f"{path.name}: {elapsed:.2f} s"
        assert clips.shape == (5, SR) and np.abs(clips).max() > 0.1
        checked = 0
        for start in clip_starts(info.duration, DEFAULT_SPEC):
            offset = start % period
            if 0.3 < offset < period - 1.3:  # not across the seam of two repeats
                lag = assert_matches(read_window(path, start, 1.0, sr=rate), reference,
                                     offset, sr=rate)
                assert lag == 0 or path.suffix == ".mp3"
                checked += 1
        assert checked >= 3
        # A window at the very end of the 2 hours.
        assert len(read_window(path, info.duration - 1.5, 1.0)) == SR


# ------------------------------------------- more kinds, table-driven


def _spliced(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new):]


def _zero_middle_third(data: bytes) -> bytes:
    third = len(data) // 3
    return data[:third] + bytes(third) + data[2 * third:]


def _sync_noise() -> bytes:
    rng = np.random.default_rng(5)  # MPEG frame headers followed by garbage
    return b"".join(b"\xff\xfb\x90\x64" + rng.bytes(413) for _ in range(300))


# kind -> (extension, bytes made from the masters, what must happen: "decodes" (the same
# clips as the master of `same_as`) or a reason part of an UnreadableAudio).
MORE_KINDS = {
    "one byte": (".mp3", lambda m: b"\xff", "not an audio file"),
    "only NUL bytes": (".flac", lambda m: bytes(100_000), "not an audio file"),
    "only 0xFF bytes": (".mp3", lambda m: b"\xff" * 100_000, "not an audio file"),
    "MPEG frame headers over noise": (".mp3", lambda m: _sync_noise(), "decode failed"),
    "an ID3 tag and no audio": (".mp3", lambda m: b"ID3\x04\x00\x00\x00\x00\x10\x00"
                                + bytes(2048), "corrupt or truncated MP3"),
    "an ID3 tag declaring 256 MB": (".mp3", lambda m: b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f"
                                    + m[".mp3"], "corrupt or truncated MP3"),
    "WAV with 0 channels": (".wav", lambda m: _spliced(m[".wav"], 22, b"\x00\x00"),
                            "no sample rate or channels"),
    "WAV with sample rate 0": (".wav", lambda m: _spliced(m[".wav"], 24, bytes(4)),
                               "corrupt or truncated WAV"),
    "FLAC magic, then junk": (".flac", lambda m: b"fLaC" + np.random.default_rng(6)
                              .bytes(50_000), "corrupt or truncated FLAC"),
    "Ogg magic, then junk": (".ogg", lambda m: b"OggS" + np.random.default_rng(7)
                             .bytes(50_000), "corrupt or truncated Ogg"),
    "M4A ftyp, then junk": (".m4a", lambda m: b"\x00\x00\x00\x18ftypM4A "
                            + np.random.default_rng(8).bytes(50_000), "corrupt or truncated M4A"),
    "an HTML error page named .mp3": (".mp3", lambda m: b"<!DOCTYPE html><html><body>404"
                                      b" Not Found</body></html>\n" * 100, "not an audio file"),
    "a ZIP named .mp3": (".mp3", lambda m: b"PK\x03\x04" + bytes(20_000), "not an audio file"),
    "a JPEG named .flac": (".flac", lambda m: b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(20_000),
                           "not an audio file"),
    "MP3 middle third zeroed": (".mp3", lambda m: _zero_middle_third(m[".mp3"]), ""),
    "FLAC middle third zeroed": (".flac", lambda m: _zero_middle_third(m[".flac"]), ""),
    "WAV whose data size says 4 GB": (".wav", lambda m: _spliced(m[".wav"], 40,
                                                                 b"\xff\xff\xff\xff"),
                                      "decodes .wav"),
    "an MP3 named .flac": (".flac", lambda m: m[".mp3"], "decodes .mp3"),
    "a FLAC named .mp3": (".mp3", lambda m: m[".flac"], "decodes .flac"),
    "an Ogg Vorbis named .wav": (".wav", lambda m: m[".ogg"], "decodes .ogg"),
}


@pytest.mark.parametrize("kind", MORE_KINDS)
def test_more_kinds_of_bad_input(kind, song, tmp_path):
    ext, make, expected = MORE_KINDS[kind]
    masters = {e: p.read_bytes() for e, p in song.items()}
    path = tmp_path / f"{kind}{ext}"
    path.write_bytes(make(masters))
    if expected.startswith("decodes "):
        assert np.array_equal(read_clips(path), read_clips(song[expected.split()[1]]))
    else:
        assert_error(path, UnreadableAudio, expected)


def _lame_mp3_with_xing_frames(tmp_path, frames: int) -> tuple[Path, Path]:
    """A real 12-s MP3 made by lame (VBR, so with a Xing header), and a copy whose Xing
    frame count says `frames`."""
    wav = encode(tmp_path / "lame.wav", synthesize("Rock", 12.0, 44_100, seed=3), 44_100)
    real = tmp_path / "lame.mp3"
    subprocess.run(["lame", "--quiet", "-V", "4", str(wav), str(real)], check=True)
    data = bytearray(real.read_bytes())
    at = data.find(b"Xing")
    assert at > 0 and int.from_bytes(data[at + 4:at + 8], "big") & 1  # frames field present
    data[at + 8:at + 12] = frames.to_bytes(4, "big")
    patched = tmp_path / "claims.mp3"
    patched.write_bytes(bytes(data))
    return real, patched


def test_a_xing_header_claiming_10_million_frames_gives_a_sane_duration(tmp_path):
    """10 million frames would be a 72-hour song in a 200-kB file: the size-based
    estimate is used instead, the clips are the real song's, and the library stores the
    sane duration, and so does `scan`."""
    from sqlalchemy import select

    from daemon.core.config import parse_config
    from daemon.core.db.engine import open_database
    from daemon.core.db.models import Track
    from daemon.library.reconcile import Library
    from daemon.library.scan import inspect_file
    from daemon.tags.genres import load_genre_map

    real, patched = _lame_mp3_with_xing_frames(tmp_path, 10_000_000)
    truth = probe(real).duration
    assert truth == pytest.approx(12.0, abs=0.1)
    assert probe(patched).duration == pytest.approx(truth, rel=0.1)
    assert read_clips(patched).shape == (5, SR)
    root = tmp_path / "library"
    root.mkdir()
    shutil.copyfile(patched, root / "claims.mp3")
    config = parse_config({"library": {"root": str(root), "settle_seconds": 1},
                           "state_dir": str(tmp_path / "state")})
    engine, sessions = open_database(config.db_url)
    library = Library(config, sessions, load_genre_map())
    library.reconcile(now=100.0)
    assert library.settle_due(now=102.0) == 1
    with sessions() as session:
        [track] = session.scalars(select(Track)).all()
    engine.dispose()
    assert track.duration == pytest.approx(truth, rel=0.1)  # what the library stores
    report = inspect_file(str(patched), "claims.mp3", load_genre_map())
    assert report.error is None and report.duration == pytest.approx(truth, rel=0.1)
    # A count the bytes can hold is believed: a half copy still says "truncated".
    half = tmp_path / "half.mp3"
    half.write_bytes(real.read_bytes()[:real.stat().st_size // 2])
    assert probe(half).duration == pytest.approx(truth, abs=0.1)
    assert_error(half, UnreadableAudio, "truncated")


def test_what_the_walk_skips_is_never_opened(song, tmp_path):
    """Folders, FIFOs, sockets, devices (as root), broken links, loops and links leading
    outside: each has its reason and none is opened (the link to a FIFO outside would
    block), whichever way the walk meets it: listed, or one path from the watcher."""
    from helpers import make_not_songs

    from daemon.library.walk import examine, walk_library

    root = tmp_path / "library"
    made = make_not_songs(root, tmp_path / "outside", song[".mp3"])
    walk = walk_library(root, (".mp3", ".flac", ".wav", ".ogg"))
    assert walk.files == {}
    assert walk.skipped.keys() == made.keys()
    real_root = os.path.realpath(root)
    for rel, reason in made.items():
        assert reason in walk.skipped[rel]
        assert examine(str(root / rel), real_root) == (None, walk.skipped[rel])


@pytest.mark.parametrize("raw", [b"L" * 250 + b".flac", b"AC\\DC.flac", b"caf\xe9.flac",
                                 b"caf\\xe9.flac", b"Caf\xe9/Ni\xf1a.flac", b"tab\there.flac",
                                 b"new\nline.flac", b"%41 percent.flac"],
                         ids=["255 bytes", "backslash", "raw byte", "literal escape",
                              "non-UTF-8 folder", "tab", "newline", "percent"])
def test_every_name_the_filesystem_allows_is_walked_stored_and_found(raw, song, tmp_path):
    from daemon.core.paths import library_file, stored_path
    from daemon.library.walk import walk_library

    root = tmp_path / "library"
    target = os.path.join(os.fsencode(root), raw)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(song[".flac"], target)
    [rel] = walk_library(root, (".flac",)).files
    stored = stored_path(rel)
    stored.encode("utf-8")
    found = library_file(root, stored)
    assert os.fsencode(found) == os.path.join(os.fsencode(root.resolve()), raw)
    assert np.array_equal(read_clips(found), read_clips(song[".flac"]))


@pytest.mark.parametrize("keep", [200, 4096])
@pytest.mark.parametrize("ext", [".flac", ".mp3", ".ogg", ".opus"])
def test_a_real_header_then_noise_is_tried_by_both_decoders(song, tmp_path, ext, keep):
    """Neither FFmpeg nor libsndfile decodes it: unreadable, with both decoders' reasons
    (the fallback never hides one behind the other, nor passes noise off as a song)."""
    data = song[ext].read_bytes()
    path = tmp_path / f"noise after {keep} bytes{ext}"
    path.write_bytes(data[:keep] + np.random.default_rng(keep).bytes(len(data) - keep))
    error = assert_error(path, UnreadableAudio, "FFmpeg: ")
    assert "libsndfile: " in error.reason and "permission" not in error.reason
    assert "not a regular file" not in error.reason
