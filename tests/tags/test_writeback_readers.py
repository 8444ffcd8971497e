"""Write-back against independent readers: a genre write changes the genre and nothing
else that exiftool, kid3-cli (TagLib), ffprobe (FFmpeg) or mediainfo can see, and leaves
the decoded audio byte-identical.

Files are made by independent writers (lame, flac, oggenc, opusenc, ffmpeg, kid3-cli) in
every tag layout a station library holds; mutagen is used only where none of these can
make the layout, and each such place says so. The tools come from Debian (`make test`
installs them).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mutagen.apev2 import APEv2
from mutagen.id3 import (
    APIC,
    ID3,
    RVA2,
    TCON,
    TDRL,
    TMOO,
    TSO2,
    TSOA,
    TSOC,
    TSOP,
    TSOT,
    TSST,
    TXXX,
    UFID,
    USLT,
)
from mutagen.mp4 import MP4, MP4Cover, MP4FreeForm

from daemon.tags.read import read_tags
from daemon.tags.write import write_genre_atomically

NEW = "Jazz"

# What legitimately changes when a file is rewritten: its name, dates, size, and the
# figures derived from the size (bit rates, header/stream sizes). Nothing else.
EXIFTOOL_CHANGING = {"SourceFile", "ExifTool:ExifToolVersion", "System:FileName",
                     "System:Directory", "System:FileSize", "System:FileModifyDate",
                     "System:FileAccessDate", "System:FileInodeChangeDate",
                     # the ID3 tag's size grows when a tag without padding gets some
                     "File:ID3Size",
                     # computed from the file size for Opus ("approx") and for WAV
                     "Composite:Duration"}
FFPROBE_FORMAT_CHANGING = {"filename", "size", "bit_rate"}
MEDIAINFO_CHANGING = {"@ref", "FileSize", "File_Modified_Date", "File_Modified_Date_Local",
                      "StreamSize", "HeaderSize", "OverallBitRate", "DataSize", "FooterSize",
                      "File_Created_Date", "File_Created_Date_Local"}


def run(*cmd: str | Path) -> str:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{cmd[0]} failed: {done.stderr}"
    return done.stdout


# --- making the files ----------------------------------------------------------------------

def pcm(folder: Path) -> Path:
    wav = folder / "source.wav"
    if not wav.exists():
        run("ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
            "sine=frequency=330:duration=1.5", "-ac", "2", "-ar", "44100", wav)
        run("ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=red:s=16x16",
            "-frames:v", "1", folder / "cover.png")
    return wav


LAME_TAGS = ["--tt", "Hand Made", "--ta", "The Band", "--tl", "First Album", "--ty", "1999",
             "--tn", "3/12", "--tc", "kept comment", "--tv", "TPE2=Album Band",
             "--tv", "TXXX=REPLAYGAIN_TRACK_GAIN=-6.20 dB",
             "--tv", "TXXX=MusicBrainz Album Id=9e2b5b5c-1111-4c1e-9c6d-3b0e5b5a0001"]


def lame(folder: Path, out: str, *flags: str) -> Path:
    path = folder / out
    run("lame", "--quiet", *flags, pcm(folder), path)
    return path


def add_v24_frames_to_v23(path: Path) -> None:
    # No tool here writes v2.4-only frames into a v2.3 tag (TagLib drops them on a v2.3
    # save), yet iTunes, Mp3tag and foobar2000 do, so mutagen puts them in, untranslated.
    tags = ID3(path, translate=False, load_v1=False)
    tags.add(TSOP(encoding=1, text="Band, The"))
    tags.add(TSOA(encoding=1, text="Album, First"))
    tags.add(TSOT(encoding=1, text="Made, Hand"))
    tags.add(TSO2(encoding=1, text="Band, Album"))
    tags.add(TSOC(encoding=1, text="Composer, A"))
    tags.add(TMOO(encoding=1, text="Calm"))
    tags.add(TSST(encoding=1, text="Disc One"))
    tags.add(TDRL(encoding=0, text="2001-02-03"))
    tags.add(RVA2(desc="track", channel=1, gain=-6.2, peak=0.9))
    tags.add(USLT(encoding=1, lang="eng", desc="", text="la la la\nla"))
    tags.add(UFID(owner="http://musicbrainz.org", data=b"9e2b5b5c-2222"))
    tags.add(TXXX(encoding=1, desc="Station Rotation", text="heavy"))
    tags.add(APIC(encoding=0, mime="image/png", type=3, desc="front",
                  data=(path.parent / "cover.png").read_bytes()))
    tags.save(path, v1=1, v2_version=3, v23_sep=None)


def mp3_v23(folder: Path) -> Path:
    path = lame(folder, "v23.mp3", "--id3v2-only", "--tg", "Rock", *LAME_TAGS)
    add_v24_frames_to_v23(path)
    return path


def mp3_v23_v1(folder: Path) -> Path:
    path = lame(folder, "v23v1.mp3", "--add-id3v2", "--tg", "Rock", *LAME_TAGS)
    add_v24_frames_to_v23(path)
    return path


def mp3_v23_ape_v1(folder: Path) -> Path:
    # The mp3gain / foobar2000 layout [ID3v2][audio][APEv2][ID3v1]. mp3gain is not in
    # Debian's main archive, so mutagen writes the APE tag, placed before the v1 tag.
    path = lame(folder, "ape.mp3", "--add-id3v2", "--tg", "Rock", *LAME_TAGS)
    add_v24_frames_to_v23(path)
    data = path.read_bytes()
    path.write_bytes(data[:-128])
    ape = APEv2()
    ape["Genre"] = "Rock"
    ape["MP3GAIN_MINMAX"] = "150,210"
    ape["REPLAYGAIN_TRACK_GAIN"] = "-6.20 dB"
    ape["Artist"] = "The Band"
    ape.save(path)
    with open(path, "ab") as f:
        f.write(data[-128:])
    return path


def mp3_v24_multi(folder: Path) -> Path:
    path = lame(folder, "v24.mp3", "--id3v2-only", *LAME_TAGS)
    # lame writes v2.3 only and kid3-cli cannot be told to store two TCON values; mutagen
    # makes the v2.4 multi-valued tag.
    tags = ID3(path)
    tags.add(TCON(encoding=3, text=["Rock", "Pop"]))
    tags.add(TSOP(encoding=3, text="Band, The"))
    tags.save(path, v2_version=4)
    return path


def mp3_v1_numeric(folder: Path) -> Path:
    return lame(folder, "v1.mp3", "--id3v1-only", "--tt", "Hand Made", "--ta", "The Band",
                "--tl", "First Album", "--ty", "1999", "--tc", "kept comment", "--tg", "Rock")


def mp3_reference(folder: Path) -> Path:
    path = lame(folder, "ref.mp3", "--id3v2-only", *LAME_TAGS)
    # A "(17)" reference, as old taggers wrote it; lame writes the genre's name.
    tags = ID3(path, translate=False)
    tags.add(TCON(encoding=0, text="(17)"))
    tags.save(path, v1=0, v2_version=3)
    return path


def mp3_untagged(folder: Path) -> Path:
    return lame(folder, "bare.mp3")


def flac(folder: Path) -> Path:
    path = folder / "song.flac"
    run("flac", "--silent", "-f", "-o", path, "-T", "TITLE=Hand Made", "-T", "ARTIST=The Band",
        "-T", "ARTISTSORT=Band, The", "-T", "GENRE=Rock", "-T", "GENRE=Pop",
        "-T", "REPLAYGAIN_TRACK_GAIN=-6.20 dB", "-T", "MUSICBRAINZ_TRACKID=9e2b-3333",
        "-T", "LYRICS=la la la", "-T", "COMMENT=kept", "-T", "STATION_ROTATION=heavy",
        f"--picture=3|image/png|front||{folder / 'cover.png'}", pcm(folder))
    return path


def ogg(folder: Path) -> Path:
    path = folder / "song.ogg"
    run("oggenc", "--quiet", "-o", path, "-c", "TITLE=Hand Made", "-c", "ARTIST=The Band",
        "-c", "ARTISTSORT=Band, The", "-c", "GENRE=Rock", "-c", "GENRE=Pop",
        "-c", "REPLAYGAIN_TRACK_GAIN=-6.20 dB", "-c", "MUSICBRAINZ_TRACKID=9e2b-3333",
        "-c", "COMMENT=kept", "-c", "STATION_ROTATION=heavy", pcm(folder))
    return path


def opus(folder: Path) -> Path:
    path = folder / "song.opus"
    run("opusenc", "--quiet", "--title", "Hand Made", "--artist", "The Band",
        "--genre", "Rock", "--genre", "Pop", "--comment", "ARTISTSORT=Band, The",
        "--comment", "MUSICBRAINZ_TRACKID=9e2b-3333", "--comment", "STATION_ROTATION=heavy",
        "--picture", folder / "cover.png", pcm(folder), path)
    return path


def m4a(folder: Path) -> Path:
    path = folder / "song.m4a"
    run("ffmpeg", "-v", "error", "-y", "-i", pcm(folder), "-i", folder / "cover.png",
        "-map", "0:a", "-map", "1:v", "-c:a", "aac", "-b:a", "96k", "-c:v", "copy",
        "-disposition:v", "attached_pic", "-metadata", "title=Hand Made",
        "-metadata", "artist=The Band", "-metadata", "album=First Album",
        "-metadata", "sort_artist=Band, The", "-metadata", "genre=Rock",
        "-metadata", "comment=kept", path)
    # FFmpeg cannot write iTunes freeform atoms (----); mutagen adds them as Picard does.
    audio = MP4(path)
    audio["----:com.apple.iTunes:MusicBrainz Track Id"] = [MP4FreeForm(b"9e2b-3333")]
    audio["----:com.apple.iTunes:replaygain_track_gain"] = [MP4FreeForm(b"-6.20 dB")]
    if "covr" not in audio:
        audio["covr"] = [MP4Cover((folder / "cover.png").read_bytes(), MP4Cover.FORMAT_PNG)]
    audio.save()
    return path


def wma(folder: Path) -> Path:
    path = folder / "song.wma"
    run("ffmpeg", "-v", "error", "-y", "-i", pcm(folder), "-c:a", "wmav2",
        "-metadata", "title=Hand Made", "-metadata", "artist=The Band",
        "-metadata", "album=First Album", "-metadata", "comment=kept description",
        "-metadata", "genre=Rock", "-metadata", "copyright=Station", path)
    return path


def wav_info(folder: Path) -> Path:
    path = folder / "info.wav"
    run("ffmpeg", "-v", "error", "-y", "-i", pcm(folder), "-metadata", "title=Hand Made",
        "-metadata", "artist=The Band", "-metadata", "genre=Rock",
        "-metadata", "comment=kept", "-metadata", "copyright=Station", path)
    return path


def wav_info_id3(folder: Path) -> Path:
    path = folder / "both.wav"
    shutil.copyfile(wav_info(folder), path)
    run("kid3-cli", "-c", "set title 'Hand Made' 2", "-c", "set artist 'The Band' 2",
        "-c", "set genre Rock 2", "-c", "set comment kept 2", path)
    return path


def bare(folder: Path, suffix: str) -> Path:
    """The PCM master in `suffix`'s container with no tag at all (FFmpeg)."""
    path = folder / f"bare{suffix}"
    run("ffmpeg", "-v", "error", "-y", "-i", pcm(folder), "-map_metadata", "-1",
        "-fflags", "+bitexact", path)
    return path


def wav_untagged(folder: Path) -> Path:
    return bare(folder, ".wav")


def aiff(folder: Path) -> Path:
    path = folder / "song.aiff"
    run("ffmpeg", "-v", "error", "-y", "-i", pcm(folder), "-write_id3v2", "1",
        "-id3v2_version", "3", "-metadata", "title=Hand Made", "-metadata", "artist=The Band",
        "-metadata", "genre=Rock", "-metadata", "comment=kept", path)
    return path


def aiff_untagged(folder: Path) -> Path:
    return bare(folder, ".aiff")


LAYOUTS = {
    "mp3-v23": mp3_v23, "mp3-v23+v1": mp3_v23_v1, "mp3-v23+ape+v1": mp3_v23_ape_v1,
    "mp3-v24-multi": mp3_v24_multi, "mp3-v1-numeric": mp3_v1_numeric,
    "mp3-(17)": mp3_reference, "mp3-untagged": mp3_untagged, "flac": flac, "ogg": ogg,
    "opus": opus, "m4a": m4a, "wma": wma, "wav-info": wav_info, "wav-info+id3": wav_info_id3,
    "wav-untagged": wav_untagged, "aiff": aiff, "aiff-untagged": aiff_untagged,
}
UNTAGGED = {"mp3-untagged", "wav-untagged", "aiff-untagged"}


# --- what each reader sees -----------------------------------------------------------------

def exiftool(path: Path) -> dict:
    # -G1:4 names a tag that occurs twice (two GENRE comments) Copy1:..., so none is lost.
    [data] = json.loads(run("exiftool", "-j", "-a", "-G1:4", "-struct", "-b", path))
    return {k: v for k, v in data.items() if k not in EXIFTOOL_CHANGING}


def ffprobe(path: Path) -> dict:
    data = json.loads(run("ffprobe", "-v", "error", "-show_format", "-show_streams",
                          "-of", "json", path))
    for key in FFPROBE_FORMAT_CHANGING:
        data["format"].pop(key, None)
    return data


def mediainfo(path: Path) -> dict:
    data = json.loads(run("mediainfo", "--Output=JSON", path))["media"]
    data.pop("@ref", None)
    for track in data["track"]:
        for key in MEDIAINFO_CHANGING:
            track.pop(key, None)
    return data


def kid3(path: Path) -> dict:
    # "get" lists every tag kid3 knows in the file (ID3v1, ID3v2, RIFF INFO, ...) by field.
    out = run("kid3-cli", "-c", "get", path)
    fields, tag = {}, "file"
    for line in out.splitlines()[2:]:  # skip "File: ..." and "Name: ..."
        if not line.startswith("  "):
            tag = line.strip()
            continue
        name, _, value = line.strip().partition("  ")
        key = f"{tag}/{name.strip()}"
        while key in fields:  # a repeated field (two Genre values) keeps every value
            key += "+"
        fields[key] = value.strip()
    return fields


SINGLE_VALUE_READERS = {"ffprobe", "mediainfo"}  # what AzuraCast and LibreTime see
READERS = {"exiftool": exiftool, "ffprobe": ffprobe, "mediainfo": mediainfo, "kid3": kid3}


def audio_md5(path: Path) -> str:
    return run("ffmpeg", "-v", "error", "-i", path, "-map", "0:a", "-f", "md5", "-").strip()


def views(path: Path) -> dict:
    jobs = {**READERS, "md5": audio_md5}
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(job, path) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


GENRE_KEY = re.compile(r"genre", re.IGNORECASE)


def flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}/{k}"))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def split_genre(flat: dict[str, object]) -> tuple[dict, dict]:
    genre = {k: v for k, v in flat.items() if GENRE_KEY.search(k.rsplit("/", 1)[-1])}
    rest = {k: v for k, v in flat.items() if k not in genre}
    return genre, rest


@pytest.fixture(scope="module")
def masters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("masters")
    pcm(folder)
    with ThreadPoolExecutor(2) as pool:
        made = dict(zip(LAYOUTS, pool.map(lambda make: make(folder), LAYOUTS.values()),
                        strict=True))
    return made


@pytest.mark.parametrize("mode", ["replace", "add"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_only_the_genre_changes_for_every_reader(masters, tmp_path, layout, mode):
    path = tmp_path / masters[layout].name
    shutil.copyfile(masters[layout], path)
    before = views(path)
    write_genre_atomically(path, NEW, mode)
    after = views(path)

    assert after["md5"] == before["md5"], "the decoded audio changed"
    for reader in READERS:
        old_genre, old_rest = split_genre(flatten(before[reader]))
        new_genre, new_rest = split_genre(flatten(after[reader]))
        if layout in UNTAGGED:
            # The new ID3v2.3 tag: its version is the only other thing a reader may show.
            new_rest = {k: v for k, v in new_rest.items() if k not in old_rest
                        and not re.search(r"ID3|Tag 2|tag_size", k)} | {
                k: v for k, v in new_rest.items() if k in old_rest}
        changed = {k: (old_rest.get(k), new_rest.get(k)) for k in old_rest.keys()
                   | new_rest.keys() if old_rest.get(k) != new_rest.get(k)}
        assert not changed, f"{reader} sees more than the genre change: {changed}"
        shown = [str(v) for v in new_genre.values()]
        if not old_genre and layout not in UNTAGGED:
            # kid3-cli here does not read RIFF INFO: it shows no genre before or after.
            assert not shown, f"{reader} shows a genre field the file did not have"
            continue
        assert any(v.startswith(NEW) for v in shown), f"{reader} does not show {NEW!r}"
        if reader in SINGLE_VALUE_READERS:
            assert all(v.startswith(NEW) for v in shown), (
                f"{reader} does not show {NEW!r} first: {new_genre}")
    genres = read_tags(path).genres
    assert genres[0] == NEW
    if mode == "add" and layout != "mp3-v1-numeric":  # ID3v1 holds one genre
        assert set(read_tags(masters[layout]).genres) <= set(genres)


# --- undo and reject put the file back ----------------------------------------------------

@pytest.fixture(scope="module")
def master_views(masters):
    """What each reader shows of each untouched master (shared by both modes)."""
    return {layout: views(path) for layout, path in masters.items()}


def accept_and_write(sessions, config, writer, sid: int):
    from daemon.review import decisions as review

    [decision] = review.accept(sessions, config, [sid], who="md")
    assert writer.run_once().written == 1
    return decision


@pytest.mark.slow  # four independent readers, twice a layout, after two full write rounds
@pytest.mark.parametrize("mode", ["replace", "add"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_undo_and_reject_put_the_file_back_for_every_reader(
        masters, master_views, tmp_path, make_config, database, layout, mode):
    """Accepted, written, undone (and written back): every reader shows exactly what it
    showed before the accept, the genre included, and the audio is the same. Then
    accepted again, written, undone and rejected before the writer came round: the same.
    The genre the file reads afterwards is told from the file, and the undone genre is
    nobody's training label."""
    from helpers import add_suggested_track
    from sqlalchemy import select

    from daemon.core.db.models import Decision, Track
    from daemon.learn.labels import current_labels
    from daemon.review import decisions as review
    from daemon.review.writeback import Writer, file_report
    from daemon.tags.read import MULTI_VALUE_SEPARATOR

    library = tmp_path / "library"
    (library / "A").mkdir(parents=True)
    path = library / "A" / masters[layout].name
    shutil.copyfile(masters[layout], path)
    rel = f"A/{path.name}"
    original = read_tags(path).genres
    config = make_config(library, review={"tag_mode": mode})
    _, sessions = database
    _, sid = add_suggested_track(sessions, rel, top=((NEW, 0.9), ("Blues", 0.1)),
                                 raw_genre=MULTI_VALUE_SEPARATOR.join(original) or None,
                                 size=path.stat().st_size, mtime=path.stat().st_mtime)
    writer = Writer(config, sessions)
    expected = master_views[layout]

    def same_as_before(what: str) -> None:
        now = views(path)
        assert now["md5"] == expected["md5"], f"{what}: the decoded audio changed"
        for reader in READERS:
            old, new = flatten(expected[reader]), flatten(now[reader])
            changed = {k: (old.get(k), new.get(k)) for k in old.keys() | new.keys()
                       if old.get(k) != new.get(k)}
            assert not changed, f"{what}: {reader} does not show the file as it was: {changed}"

    first = accept_and_write(sessions, config, writer, sid)
    assert read_tags(path).genres[0] == NEW
    undo_row = review.undo(sessions, config, first.id, who="md")
    assert writer.run_once().written == 1
    same_as_before("after accept + undo")
    with sessions() as db:
        undo_row = db.get(Decision, undo_row.id)
        assert undo_row.file_genre == MULTI_VALUE_SEPARATOR.join(original)
        told = file_report(undo_row)
        assert told == (f"the file's genre now: {undo_row.file_genre}" if original
                        else "the file has no genre now")
        assert db.get(Track, undo_row.track_id).raw_genre == (undo_row.file_genre or None)

    second = accept_and_write(sessions, config, writer, sid)
    review.undo(sessions, config, second.id, who="md")  # not yet written back ...
    review.reject(sessions, config, [sid], who="md")  # ... when None of these comes
    assert writer.run_once().written == 1
    same_as_before("after accept + undo + reject")
    with sessions() as db:
        assert not db.scalars(select(Decision).where(
            Decision.write_status.in_(("pending", "failed")))).all()
        label = current_labels(db, [rel])[rel]
    # The file's own genre, as it maps; never the undone or rejected one.
    assert label == (writer.live.genre_map.canonical_for(original) if original else None)
