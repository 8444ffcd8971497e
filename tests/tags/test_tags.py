"""Reading and writing tags on files made by real encoders, plus hand-made ID3, MP4 and
APEv2 cases built with mutagen (or byte by byte where mutagen cannot write the form)."""

from __future__ import annotations

import os
import random
import shutil
import struct
from pathlib import Path

import mutagen
import pytest
from mutagen.apev2 import APEv2
from mutagen.asf import ASF
from mutagen.flac import FLAC
from mutagen.id3 import COMM, ID3, TCON, TIT2, TPE1, TYER
from mutagen.mp4 import MP4

from daemon.cli.demo import FORMATS, encode, synthesize
from daemon.core.errors import TagError
from daemon.tags.read import ID3V1_GENRES, read_tags
from daemon.tags.write import set_genre, write_tags

SR = 22_050
# The content-derived format name each extension's encoder produces.
FORMAT_OF = {".mp3": "mp3", ".flac": "flac", ".ogg": "ogg", ".opus": "opus", ".m4a": "m4a",
             ".wav": "wav", ".aiff": "aiff", ".wma": "wma"}


@pytest.fixture(scope="module")
def masters(tmp_path_factory):
    """One untouched 3 s song per format, encoded once; tests copy them."""
    folder = tmp_path_factory.mktemp("masters")
    samples = synthesize("Jazz", 3.0, SR, seed=3)
    return {ext: encode(folder / f"master{ext}", samples, SR) for ext in FORMATS}


@pytest.fixture
def copy_of(masters, tmp_path):
    def copy(ext: str, name: str | None = None) -> Path:
        target = tmp_path / (name or f"song{ext}")
        shutil.copyfile(masters[ext], target)
        return target

    return copy


@pytest.mark.parametrize("ext", FORMATS)
def test_round_trip_in_every_format(make_song, ext):
    # make_song's `genre` is the synthesised music, so the genre tag is written after.
    path = make_song(f"Song{ext}", genre="Metal", seconds=4, title="Tïtle", artist="Ärtist",
                     album="Album")
    assert read_tags(path).title == "Tïtle"
    write_tags(path, genre="Thrash Metal")
    tags = read_tags(path)
    assert (tags.title, tags.artist, tags.album) == ("Tïtle", "Ärtist", "Album")
    assert tags.genres == ("Thrash Metal",)
    assert tags.format == FORMAT_OF[ext]
    assert tags.duration == pytest.approx(4.0, abs=0.1)


@pytest.mark.parametrize("ext", FORMATS)
def test_untagged_file_reads_as_empty(copy_of, ext):
    tags = read_tags(copy_of(ext))
    assert tags.genres == () and tags.title is None and tags.album is None
    assert tags.format == FORMAT_OF[ext]


@pytest.mark.parametrize("ext", FORMATS)
def test_set_genre_replace_and_add_keep_other_tags(copy_of, ext):
    path = copy_of(ext)
    write_tags(path, title="Title", artist="Artist", album="Album", genre="Bebop")
    # The accepted genre comes first: single-value readers (FFmpeg, mediainfo) show it.
    set_genre(path, "Jazz", "add")
    assert read_tags(path).genres == ("Jazz", "Bebop")
    set_genre(path, "bebop", "add")  # already there, whatever the case: moves first
    assert read_tags(path).genres == ("bebop", "Jazz")
    set_genre(path, "Blues")
    tags = read_tags(path)
    assert tags.genres == ("Blues",)
    assert (tags.title, tags.artist, tags.album) == ("Title", "Artist", "Album")
    assert tags.duration == pytest.approx(3.0, abs=0.1)


@pytest.mark.parametrize("ext", FORMATS)
def test_write_tags_leaves_unnamed_fields_alone(copy_of, ext):
    path = copy_of(ext)
    write_tags(path, title="First", genre="Folk")
    write_tags(path, artist="Someone")
    tags = read_tags(path)
    assert (tags.title, tags.artist, tags.genres) == ("First", "Someone", ("Folk",))


def test_set_genre_rejects_bad_arguments(copy_of):
    path = copy_of(".flac")
    with pytest.raises(TagError, match="empty genre"):
        set_genre(path, "  ")
    with pytest.raises(ValueError, match="mode"):
        set_genre(path, "Rock", "append")  # type: ignore[arg-type]


# --- ID3 by hand --------------------------------------------------------------------------

def id3_song(copy_of, version: int, genre_text: list[str] | None, name="id3.mp3") -> Path:
    """An MP3 whose ID3v2 tag is exactly what we say, saved as v2.`version`."""
    path = copy_of(".mp3", name)
    mutagen.id3.delete(path)
    tags = ID3()
    tags.add(TIT2(encoding=1, text=["Hand Made"]))
    tags.add(TPE1(encoding=1, text=["Someone"]))
    tags.add(COMM(encoding=1, lang="eng", desc="", text=["keep me"]))
    if version == 3:
        tags.add(TYER(encoding=1, text=["1999"]))
    if genre_text is not None:
        tags.add(TCON(encoding=1, text=genre_text))
    tags.save(path, v2_version=version)
    return path


NUMERIC_TCON = [
    (["(17)"], ("Rock",)),
    (["17"], ("Rock",)),
    (["(17)Rock"], ("Rock",)),
    (["(9)Thrash Metal"], ("Metal", "Thrash Metal")),
    (["(8)(0)"], ("Jazz", "Blues")),
    (["(32)"], ("Classical",)),
    (["Rock", "Jazz"], ("Rock", "Jazz")),
]


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize(("text", "expected"), NUMERIC_TCON)
def test_id3_tcon_forms(copy_of, version, text, expected):
    path = id3_song(copy_of, version, text)
    assert read_tags(path).genres == expected


def test_id3v23_slash_joined_values_are_split_but_genre_names_with_slashes_are_not(copy_of):
    path = id3_song(copy_of, 3, ["Rock/Jazz"])
    assert read_tags(path).genres == ("Rock", "Jazz")
    path = id3_song(copy_of, 3, ["Pop/Funk"], "popfunk.mp3")  # ID3v1 genre 62
    assert read_tags(path).genres == ("Pop/Funk",)
    path = id3_song(copy_of, 4, ["AC/DC Tribute"], "v24.mp3")  # v2.4 separates with NUL
    assert read_tags(path).genres == ("AC/DC Tribute",)


@pytest.mark.parametrize("version", [3, 4])
def test_set_genre_keeps_the_id3_version_and_other_frames(copy_of, version):
    path = id3_song(copy_of, version, ["(17)"])
    set_genre(path, "Jazz")
    tags = ID3(path, translate=False)
    assert tags.version[:2] == (2, version)
    assert tags["TCON"].text == ["Jazz"]
    assert tags["TIT2"].text == ["Hand Made"]
    assert tags.getall("COMM")[0].text == ["keep me"]
    if version == 3:
        assert tags["TYER"].text == ["1999"]
    # add mode on v2.3 separates values with a null, as v2.4 does, and reads back as two
    set_genre(path, "Blues", "add")
    assert ID3(path, translate=False).version[:2] == (2, version)
    assert ID3(path, translate=False)["TCON"].text == ["Blues", "Jazz"]
    assert read_tags(path).genres == ("Blues", "Jazz")
    assert read_tags(path).duration == pytest.approx(3.0, abs=0.1)


def id3v1_block(title: str, artist: str, album: str, genre: int) -> bytes:
    """An ID3v1.1 tag: 128 bytes at the end of the file."""
    def field(text: str, size: int) -> bytes:
        return text.encode("latin-1")[:size].ljust(size, b"\x00")

    return (b"TAG" + field(title, 30) + field(artist, 30) + field(album, 30) + b"1987"
            + field("", 28) + b"\x00" + bytes([3]) + bytes([genre]))


def test_id3v1_only_file_changes_only_its_genre_byte(copy_of):
    path = copy_of(".mp3", "v1.mp3")
    mutagen.id3.delete(path)  # no ID3v2 left
    with open(path, "ab") as f:
        f.write(id3v1_block("Old Song", "Old Band", "Old Album", ID3V1_GENRES.index("Jazz")))
    before = path.read_bytes()
    tags = read_tags(path)
    assert (tags.title, tags.artist, tags.album, tags.genres) == (
        "Old Song", "Old Band", "Old Album", ("Jazz",))
    set_genre(path, "Rock")
    data = path.read_bytes()
    # Rock has an ID3v1 number: the v1 genre byte is the only byte that changed.
    assert data[:-1] == before[:-1] and data[-1] == ID3V1_GENRES.index("Rock")
    assert read_tags(path).genres == ("Rock",)
    set_genre(path, "Blues", "add")  # v1 holds one genre: the accepted one
    assert path.read_bytes()[-1] == ID3V1_GENRES.index("Blues")


def test_id3v1_only_file_gains_v23_for_a_genre_v1_cannot_hold(copy_of):
    path = copy_of(".mp3", "v1.mp3")
    mutagen.id3.delete(path)
    with open(path, "ab") as f:
        f.write(id3v1_block("Old Song", "Old Band", "Old Album", ID3V1_GENRES.index("Jazz")))
    set_genre(path, "Chillwave")
    tags = ID3(path, translate=False, load_v1=False)
    assert tags.version[:2] == (2, 3) and tags["TCON"].text == ["Chillwave"]
    # v1's fields are carried into the v2.3 tag (FFmpeg reads v1 only without v2)
    assert tags["TIT2"].text == ["Old Song"] and tags["TPE1"].text == ["Old Band"]
    assert path.read_bytes()[-128:-125] == b"TAG" and path.read_bytes()[-1] == 255
    assert read_tags(path).genres == ("Chillwave",)
    assert read_tags(path).title == "Old Song"


def test_vorbis_multi_valued_genre(copy_of):
    path = copy_of(".flac")
    audio = FLAC(path)
    audio["GENRE"] = ["Bebop", "Delta Blues"]
    audio.save()
    assert read_tags(path).genres == ("Bebop", "Delta Blues")
    set_genre(path, "Jazz")
    assert FLAC(path)["genre"] == ["Jazz"]


@pytest.mark.parametrize(("number", "expected"), [
    (ID3V1_GENRES.index("Rock") + 1, ("Rock",)),  # gnre counts from 1
    (250, ()),  # outside the table: mutagen keeps the atom verbatim
])
def test_mp4_numeric_gnre_is_read_and_replaced(copy_of, number, expected):
    path = copy_of(".m4a")
    audio = MP4(path)
    audio["\xa9gen"] = ["Xy"]  # two bytes, the size of a gnre payload
    audio.save()
    # Turn the text atom into a numeric gnre atom in place (same sizes): mutagen reads
    # gnre but never writes it, so we make it the way iTunes did.
    data = bytearray(path.read_bytes())
    at = data.index(b"\xa9gen")
    assert data[at + 8:at + 12] == b"data" and data[at + 12:at + 16] == b"\x00\x00\x00\x01"
    data[at:at + 4] = b"gnre"
    data[at + 12:at + 16] = b"\x00\x00\x00\x00"  # implicit type
    data[at + 20:at + 22] = struct.pack(">H", number)
    path.write_bytes(bytes(data))
    assert b"gnre" in path.read_bytes()
    assert read_tags(path).genres == expected
    set_genre(path, "Jazz")
    assert read_tags(path).genres == ("Jazz",)
    assert b"gnre" not in path.read_bytes()  # no numeric genre left to contradict ©gen


def test_asf_genre_id_is_dropped_on_replace(copy_of):
    path = copy_of(".wma")
    audio = ASF(path)
    audio["WM/Genre"] = ["Bebop"]
    audio["WM/GenreID"] = ["8"]
    audio.save()
    assert read_tags(path).genres == ("Bebop",)
    set_genre(path, "Jazz")
    audio = ASF(path)
    assert [str(v) for v in audio["WM/Genre"]] == ["Jazz"] and "WM/GenreID" not in audio


def test_apev2_on_mp3_is_read_and_replaced(copy_of):
    path = id3_song(copy_of, 4, None)  # ID3 without a genre
    ape = APEv2()
    ape["Genre"] = "Delta Blues"
    ape["Album"] = "From APE"
    ape.save(path)
    tags = read_tags(path)
    assert tags.genres == ("Delta Blues",) and tags.album == "From APE"
    assert tags.title == "Hand Made"  # ID3 wins where it has the field
    set_genre(path, "Blues")
    assert list(APEv2(path)["Genre"]) == ["Blues"]
    assert ID3(path)["TCON"].text == ["Blues"]
    set_genre(path, "Jazz", "add")
    assert list(APEv2(path)["Genre"]) == ["Jazz", "Blues"]


# --- bad input -----------------------------------------------------------------------------

def test_bad_files_raise_tag_errors_with_reasons(tmp_path, copy_of):
    cases = {}
    (tmp_path / "empty.mp3").write_bytes(b"")
    cases["empty.mp3"] = "empty file"
    # Fixed noise: some random draws hold a run of valid-looking MPEG frame headers.
    (tmp_path / "random.mp3").write_bytes(random.Random(40).randbytes(40_000))
    cases["random.mp3"] = "no MPEG audio frames"
    (tmp_path / "text.flac").write_text("not audio at all\n" * 50)
    cases["text.flac"] = "not a valid FLAC file"
    (tmp_path / "folder.mp3").mkdir()
    cases["folder.mp3"] = "is a directory"
    (tmp_path / "broken.mp3").symlink_to(tmp_path / "nowhere.mp3")
    cases["broken.mp3"] = "broken symlink"
    cases["vanished.mp3"] = "file vanished"
    os.mkfifo(tmp_path / "pipe.mp3")
    cases["pipe.mp3"] = "not a regular file"
    cases["x" * 300 + ".mp3"] = "file name too long"
    for name, reason in cases.items():
        with pytest.raises(TagError, match=reason) as caught:
            read_tags(tmp_path / name)
        assert caught.value.path.endswith(name)
        with pytest.raises(TagError, match=reason):
            set_genre(tmp_path / name, "Rock")


def test_truncated_tag_area_is_a_tag_error(copy_of, tmp_path):
    path = copy_of(".flac")
    write_tags(path, genre="Jazz")
    half = tmp_path / "cut.flac"
    half.write_bytes(path.read_bytes()[:60])  # inside the metadata blocks
    with pytest.raises(TagError):
        read_tags(half)


def test_odd_names_read_fine(copy_of, tmp_path):
    long_name = copy_of(".ogg", "l" * 240 + ".ogg")
    write_tags(long_name, genre="Folk")
    assert read_tags(long_name).genres == ("Folk",)
    latin1 = os.path.join(os.fsencode(tmp_path), b"caf\xe9.mp3")
    os.rename(copy_of(".mp3"), latin1)
    write_tags(latin1, genre="Pop")
    assert read_tags(latin1).genres == ("Pop",)
    os.remove(latin1)
    with pytest.raises(TagError) as caught:
        read_tags(latin1)
    assert caught.value.path.endswith("caf\\xe9.mp3")  # printable, no surrogates


@pytest.mark.parametrize(("name", "sr", "channels", "subtype"), [
    ("float.wav", 44_100, 2, "FLOAT"),
    ("surround.wav", 96_000, 6, "PCM_24"),
    ("phone.flac", 8_000, 1, "PCM_16"),
    ("hires.flac", 96_000, 2, "PCM_24"),
    ("deep.aiff", 48_000, 1, "PCM_32"),
    ("tiny.wav", 8_000, 1, "PCM_U8"),
])
def test_tags_on_unusual_sample_formats(tmp_path, name, sr, channels, subtype):
    mono = synthesize("Classical", 2.0, sr, seed=1, channels=1)
    path = encode(tmp_path / name, mono.repeat(channels, axis=1), sr, subtype=subtype)
    write_tags(path, title="Odd", genre="Baroque")
    tags = read_tags(path)
    assert (tags.title, tags.genres) == ("Odd", ("Baroque",))
    assert tags.duration == pytest.approx(2.0, abs=0.01)
