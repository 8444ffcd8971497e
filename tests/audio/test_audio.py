"""daemon.audio.decode: seek-decoded clip windows equal a full decode at the same offset, for
every format, rate, bit depth and channel layout; clips sit where ARCHITECTURE.md says.

The reference here decodes the WHOLE file independently (soundfile for PCM/FLAC, PyAV with
its own format conversion for the rest), downmixes by the channel mean and resamples with
soxr HQ, the way librosa.load would; daemon.audio.decode must agree with it after seeking.
"""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf
import soxr
from helpers import assert_matches, full_decode, negative_granule_ogg, ogg_nobody_decodes

from daemon.audio import decode as audio
from daemon.audio.decode import AudioInfo, decode_clips, probe, read_clips, read_window
from daemon.audio.features import DEFAULT_SPEC, FeatureSpec, clip_starts
from daemon.cli.demo import encode, synthesize
from daemon.core.errors import TooShort, UnreadableAudio

SR = 22_050
FORMATS = [".mp3", ".flac", ".ogg", ".opus", ".m4a", ".wav", ".aiff", ".wma"]
FORMAT_NAMES = {".mp3": "mp3", ".flac": "flac", ".ogg": "ogg", ".opus": "opus",
                ".m4a": "m4a", ".wav": "wav", ".aiff": "aiff", ".wma": "wma"}

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    """One 20 s song per format at 44.1 kHz stereo (Opus: 48 kHz), encoded once."""
    folder = tmp_path_factory.mktemp("formats")
    samples = synthesize("Rock", 20.0, 44_100, seed=3)
    return {ext: encode(folder / f"song{ext}", samples, 44_100) for ext in FORMATS}


@pytest.mark.parametrize("ext", FORMATS)
def test_seeked_windows_match_a_full_decode(songs, ext):
    path = songs[ext]
    info = probe(path)
    assert info.format == FORMAT_NAMES[ext]
    assert info.duration == pytest.approx(20.0, abs=0.1)
    reference = full_decode(path)
    offsets = np.random.default_rng(8).uniform(0.0, 18.9, 20)  # Vorbis quirks hide anywhere
    for start in (0.0, 0.37, 18.9, *offsets):
        window = read_window(path, start, 1.0)
        assert window.dtype == np.float32 and len(window) == SR
        # Better than the 50 ms the contract allows: seeking is sample-exact here.
        assert assert_matches(window, reference, start) == 0


@pytest.mark.parametrize("ext", FORMATS)
def test_clips_sit_where_the_architecture_says(songs, ext):
    """5 clips evenly spaced inside 10%..90% of the duration, each equal to the full
    decode there."""
    path = songs[ext]
    info, clips = decode_clips(path)
    assert isinstance(info, AudioInfo)
    assert clips.shape == (DEFAULT_SPEC.clips_per_song, DEFAULT_SPEC.clip_samples)
    assert clips.dtype == np.float32
    starts = clip_starts(info.duration, DEFAULT_SPEC)
    assert starts[0] == pytest.approx(0.1 * info.duration)
    assert starts[-1] + DEFAULT_SPEC.clip_seconds == pytest.approx(0.9 * info.duration)
    reference = full_decode(path)
    for start, clip in zip(starts, clips, strict=True):
        assert_matches(clip, reference, start)
    assert np.array_equal(read_clips(path), clips)


def test_two_second_clips_and_other_rates(songs):
    spec = FeatureSpec(clip_seconds=2.0, sample_rate=16_000, clips_per_song=3)
    clips = read_clips(songs[".mp3"], spec)
    assert clips.shape == (3, 32_000)
    reference = full_decode(songs[".mp3"], 16_000)
    for start, clip in zip(clip_starts(probe(songs[".mp3"]).duration, spec), clips,
                           strict=True):
        assert_matches(clip, reference, start, sr=16_000)


def test_short_song_spreads_clips_over_what_exists(make_song):
    path = make_song("short.flac", seconds=1.5)
    clips = read_clips(path)
    starts = clip_starts(1.5, DEFAULT_SPEC)
    assert starts == pytest.approx(np.linspace(0.15, 0.35, 5))
    reference = full_decode(path)
    for start, clip in zip(starts, clips, strict=True):
        assert_matches(clip, reference, start)

    barely = make_song("barely.wav", seconds=1.05)
    assert clip_starts(probe(barely).duration, DEFAULT_SPEC)[0] == 0.0
    assert read_clips(barely).shape == (5, SR)

    with pytest.raises(TooShort) as err:
        read_clips(make_song("tiny.mp3", seconds=0.5))
    assert "tiny.mp3" in str(err.value) and "shorter than one" in err.value.reason


def test_format_comes_from_the_content_not_the_name(songs, tmp_path):
    flac_named_mp3 = shutil.copy(songs[".flac"], tmp_path / "really flac.mp3")
    mp3_named_ogg = shutil.copy(songs[".mp3"], tmp_path / "really mp3.ogg")
    no_extension = shutil.copy(songs[".m4a"], tmp_path / "no extension")
    assert probe(flac_named_mp3).format == "flac"
    assert probe(mp3_named_ogg).format == "mp3"
    assert probe(no_extension).format == "m4a"
    assert np.array_equal(read_clips(flac_named_mp3), read_clips(songs[".flac"]))


def test_window_past_the_end_is_short_not_garbage(songs):
    for ext in (".mp3", ".flac", ".opus"):
        tail = read_window(songs[ext], 19.5, 1.0)
        assert 0.45 * SR <= len(tail) <= 0.55 * SR
        assert_matches(tail, full_decode(songs[ext]), 19.5)
        assert len(read_window(songs[ext], 25.0, 1.0)) == 0


def _channels(n: int) -> np.ndarray:
    """n channels of different content, so a wrong downmix shows."""
    return np.stack([synthesize(g, 6.0, 44_100, seed=i, channels=1)[:, 0] for i, g in
                     enumerate(["Rock", "Jazz", "Blues", "Pop", "Metal", "Folk"][:n])], axis=1)


@pytest.mark.parametrize(("ext", "channels"), [
    (".wav", 1), (".flac", 6), (".aiff", 2), (".mp3", 1), (".m4a", 6), (".ogg", 6),
    (".opus", 1), (".wma", 1),
])
def test_mono_stereo_and_5_1_are_downmixed_by_the_channel_mean(tmp_path, ext, channels):
    path = encode(tmp_path / f"ch{channels}{ext}", _channels(channels), 44_100)
    info = probe(path)
    assert info.channels == channels
    reference = full_decode(path)
    for start in (0.5, 3.3):
        assert_matches(read_window(path, start, 1.0), reference, start)


@pytest.mark.parametrize(("ext", "rate"), [
    (".wav", 8_000), (".flac", 11_025), (".wav", 16_000), (".aiff", 22_050),
    (".flac", 48_000), (".wav", 88_200), (".flac", 96_000), (".mp3", 8_000),
    (".mp3", 32_000), (".mp3", 48_000), (".m4a", 8_000), (".m4a", 96_000), (".ogg", 96_000),
    (".wma", 22_050),
])
def test_sample_rates_from_8_to_96_khz(tmp_path, ext, rate):
    path = encode(tmp_path / f"r{rate}{ext}", synthesize("Jazz", 4.0, rate, seed=2), rate)
    info = probe(path)
    assert info.sample_rate == rate
    reference = full_decode(path)
    for start in (0.4, 2.2):
        window = read_window(path, start, 1.0)
        assert len(window) == SR
        assert_matches(window, reference, start)


@pytest.mark.parametrize(("ext", "subtype"), [
    (".wav", "PCM_U8"), (".wav", "PCM_16"), (".wav", "PCM_24"), (".wav", "PCM_32"),
    (".wav", "FLOAT"), (".wav", "DOUBLE"), (".aiff", "PCM_S8"), (".aiff", "PCM_24"),
    (".aiff", "FLOAT"), (".flac", "PCM_S8"), (".flac", "PCM_24"),
])
def test_bit_depths_8_to_32_and_float(tmp_path, ext, subtype):
    samples = synthesize("Pop", 4.0, 44_100, seed=5)
    path = tmp_path / f"{subtype}{ext}"
    sf.write(path, samples, 44_100, subtype=subtype)  # demo.encode's FLAC is 16-bit only
    assert sf.info(path).subtype == subtype
    clips = read_clips(path)
    reference = soxr.resample(samples.mean(axis=1), 44_100, SR, quality="HQ")
    # The source itself: 8-bit quantisation noise stays far below the music.
    for start, clip in zip(clip_starts(4.0, DEFAULT_SPEC), clips, strict=True):
        assert_matches(clip, reference, start, min_corr=0.99)
        assert np.abs(clip).max() <= 1.0


@pytest.mark.parametrize("sample_format", ["s16p", "s32p"])
def test_integer_samples_from_ffmpeg_are_scaled_like_libsndfile(tmp_path, sample_format):
    """ALAC in M4A decodes to 16/24-bit integers in FFmpeg (the other codecs give floats)."""
    rate = 44_100
    samples = synthesize("Blues", 4.0, rate, seed=7)
    path = tmp_path / f"alac-{sample_format}.m4a"
    with av.open(str(path), "w", format="ipod") as out:
        stream = out.add_stream("alac", rate=rate, layout="stereo")
        stream.format = sample_format
        convert = av.AudioResampler(format=sample_format, layout="stereo", rate=rate)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T), format="fltp",
                                           layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        for converted in [*convert.resample(frame), *convert.resample(None)]:
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    info = probe(path)
    assert (info.format, info.codec) == ("m4a", "alac")
    reference = soxr.resample(samples.mean(axis=1), rate, SR, quality="HQ")
    for start in (0.5, 2.5):
        window = read_window(path, start, 1.0)
        assert_matches(window, reference, start, min_corr=0.999)
        assert np.abs(window - reference[int(start * SR):][:SR]).max() < 1e-3


@pytest.mark.parametrize("kind", ["vbr", "cbr without header"])
def test_mp3_vbr_and_headerless_seek_exactly(tmp_path, kind):
    """CBR files with a LAME "Info" tag seek by byte offset (the songs fixture); VBR
    ("Xing") and headerless files take FFmpeg's exact frame-scanning seek."""
    rate = 44_100
    samples = synthesize("Rock", 20.0, rate, seed=4)
    path = tmp_path / f"{kind}.mp3"
    options = {"write_xing": "0"} if kind != "vbr" else {}
    with av.open(str(path), "w", format="mp3", options=options) as out:
        stream = out.add_stream("libmp3lame", rate=rate, layout="stereo")
        if kind == "vbr":
            stream.codec_context.qscale = True
            stream.codec_context.global_quality = 4 * 118  # -q:a 4 (FF_QP2LAMBDA = 118)
        else:
            stream.bit_rate = 128_000
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T), format="fltp",
                                           layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    reference = full_decode(path)
    for start in (*np.random.default_rng(6).uniform(0.0, 18.5, 30), 19.5):
        assert assert_matches(read_window(path, start, 1.0), reference, start) == 0, start


# ---- each decoder the other's fallback ------------------------------------------------------

def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def test_an_ogg_with_negative_granule_positions_is_decoded_by_libsndfile(tmp_path):
    """FFmpeg refuses what a buggy encoder wrote; libsndfile (libvorbis) decodes it, and
    the clips are the song's."""
    path = negative_granule_ogg(tmp_path)
    # Independent tools: the page checksums hold, the granules are a buggy encoder's ...
    report = _run("ogginfo", str(path), check=False).stdout  # exit 1: it found warnings
    assert "Negative or zero granulepos" in report and "Hole in data" not in report
    # ... libvorbis plays it whole, while FFmpeg's timing for it is broken ...
    whole = tmp_path / "oggdec.wav"
    _run("oggdec", "-Q", "-o", str(whole), str(path))
    reference, rate = sf.read(whole, dtype="float32")
    assert rate == SR and len(reference) > 9.9 * SR
    probed = float(_run("ffprobe", "-v", "error", "-show_entries", "format=duration",
                        "-of", "csv=p=0", str(path)).stdout)
    assert probed < 8.0
    # ... and our FFmpeg reader refuses it.
    with open(path, "rb") as file, pytest.raises(UnreadableAudio, match="truncated"):
        reader = audio._PyAVReader.open(file, str(path), "Ogg")
        audio._decode_clips(path, str(path), reader, DEFAULT_SPEC, None)

    info, clips = decode_clips(path)
    assert info.format == "ogg" and info.codec == "vorbis"
    assert info.duration == pytest.approx(10.0, abs=0.05)
    mono = reference.mean(axis=1)
    for start, clip in zip(clip_starts(info.duration, DEFAULT_SPEC), clips, strict=True):
        # The song's own samples, exactly; libsndfile's seeks in this file land a Vorbis
        # block or two early (40-60 ms), which the clip placement can afford.
        at = int(round(start * SR))
        errors = [np.abs(mono[at + shift:at + shift + len(clip)] - clip).max()
                  for shift in range(-2048, 2049)]
        assert min(errors) < 1e-4  # oggdec writes 16-bit samples


def test_a_file_neither_decoder_reads_names_both_errors(tmp_path):
    path = ogg_nobody_decodes(tmp_path)
    with pytest.raises(UnreadableAudio) as caught:
        decode_clips(path)
    reason = caught.value.reason
    assert reason.startswith("FFmpeg: corrupt or truncated Ogg file; libsndfile: "), reason


@pytest.mark.parametrize("ext, fmt", [(".wav", "wav"), (".aiff", "aiff"), (".flac", "flac"),
                                      (".ogg", "ogg"), (".opus", "opus"), (".mp3", "mp3")])
def test_libsndfile_reads_every_format_it_stands_in_for(tmp_path, ext, fmt):
    """The fallback is real for each format: libsndfile opens it and gives FFmpeg's audio."""
    path = encode(tmp_path / f"song{ext}", synthesize("Jazz", 6.0, SR, 2, 2), SR)
    with open(path, "rb") as file:
        reader = audio._SoundfileReader.open(file, str(path))
        assert reader is not None and reader.info.format == fmt
        assert reader.info.duration == pytest.approx(6.0, abs=0.1)
        start = 2 * reader.info.sample_rate
        window, got = reader.window(start, reader.info.sample_rate)
        reader.close()
    assert got == start and len(window) == reader.info.sample_rate
    with open(path, "rb") as file:
        other = audio._PyAVReader.open(file, str(path), None)
        same, _ = other.window(start, reader.info.sample_rate)
        other.close()
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    assert rms(window) == pytest.approx(rms(same), rel=0.05)
