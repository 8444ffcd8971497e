"""Bad input is normal input (issue 2): each file below either decodes correctly or gives
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
from test_audio import assert_matches, full_decode

from daemon.audio import probe, read_clips, read_window
from daemon.demo import encode, synthesize
from daemon.errors import FileError, SilentAudio, TooShort, UnreadableAudio
from daemon.features import DEFAULT_SPEC, clip_starts

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
        "from daemon.audio import read_clips\n"
        "from daemon.errors import FileError\n"
        "print(read_clips(sys.argv[2]).shape)\n"
        "try:\n"
        "    read_clips(sys.argv[1])\n"
        "except FileError as e:\n"
        "    print(type(e).__name__, '|', e.path, '|', e.reason)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(locked), str(control)],
        preexec_fn=_without_root_file_powers if os.geteuid() == 0 else None,
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
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
