"""`genretagger scan`: a mixed library with broken files, through the real CLI."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import make_not_songs

from daemon.cli import cli
from daemon.cli.demo import FORMATS, encode, synthesize
from daemon.library.scan import inspect_file, list_library, scan_library
from daemon.tags.genres import load_genre_map
from daemon.tags.write import write_tags

GENRETAGGER = Path(sys.executable).parent / "genretagger"
LATIN1_NAME = b"caf\xe9.mp3"
LONG_NAME = "L" * 240 + ".flac"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A small station library: one tagged song per format, untagged and oddly tagged
    ones, broken files of every kind, and files the scan must skip.
    Returns (root, expected {relative path: (status, format, genre, error part)})."""
    root = tmp_path_factory.mktemp("library")
    expected: dict[str, tuple] = {}
    raw_genres = ["(17)", "Bebop", "hip hop", "Thrash Metal", "delta blues", "Baroque",
                  "bluegrass", "Techno"]
    canonical = ["Rock", "Jazz", "Hip-Hop", "Metal", "Blues", "Classical", "Country",
                 "Electronic"]
    for i, ext in enumerate(FORMATS):
        folder = root / f"Artist {i}"
        folder.mkdir()
        path = encode(folder / f"Song {i}{ext}", synthesize("Rock", 3.0, 22_050, seed=i), 22_050)
        write_tags(path, title=f"Song {i}", artist=f"Artist {i}", genre=raw_genres[i])
        expected[f"Artist {i}/Song {i}{ext}"] = ("tagged", ext.strip("."), canonical[i], None)
    masters = {ext: root / f"Artist {i}" / f"Song {i}{ext}" for i, ext in enumerate(FORMATS)}

    odd = root / "Odd"
    odd.mkdir()
    shutil.copyfile(masters[".flac"], odd / "untagged.flac")
    write_tags(odd / "untagged.flac", genre="Funk")  # a genre with no home: untagged
    expected["Odd/untagged.flac"] = ("untagged", "flac", None, None)
    shutil.copyfile(masters[".ogg"], odd / "several.ogg")
    write_tags(odd / "several.ogg", genre="Soul; Delta Blues")
    expected["Odd/several.ogg"] = ("tagged", "ogg", "Blues", None)
    shutil.copyfile(masters[".mp3"], odd / os.fsdecode(LATIN1_NAME))
    expected["Odd/caf\\xe9.mp3"] = ("tagged", "mp3", "Rock", None)
    shutil.copyfile(masters[".flac"], odd / LONG_NAME)
    expected[f"Odd/{LONG_NAME}"] = ("tagged", "flac", "Jazz", None)

    bad = root / "Incoming"
    bad.mkdir()
    (bad / "empty.mp3").write_bytes(b"")
    expected["Incoming/empty.mp3"] = ("error", None, None, "empty file")
    # Fixed noise: some random draws hold a run of valid-looking MPEG frame headers.
    (bad / "random.mp3").write_bytes(random.Random(50).randbytes(50_000))
    expected["Incoming/random.mp3"] = ("error", None, None, "no MPEG audio frames")
    (bad / "text.flac").write_text("Just some text that is not audio.\n" * 30)
    expected["Incoming/text.flac"] = ("error", None, None, "not a valid FLAC file")
    for ext in (".mp3", ".flac"):
        data = masters[ext].read_bytes()
        (bad / f"truncated{ext}").write_bytes(data[:len(data) // 2])
    expected["Incoming/truncated.mp3"] = ("error", "mp3", None, "truncated")
    # libsndfile refuses the missing half; FFmpeg, its fallback, finds the audio stops early.
    expected["Incoming/truncated.flac"] = ("error", "flac", None, "truncated")
    (bad / "folder.mp3").mkdir()
    expected["Incoming/folder.mp3"] = ("error", None, None, "is a directory")
    (bad / "broken.mp3").symlink_to(bad / "gone-away.mp3")
    expected["Incoming/broken.mp3"] = ("error", None, None, "broken symlink")
    os.mkfifo(bad / "pipe.wav")
    expected["Incoming/pipe.wav"] = ("error", None, None, "not a regular file")

    # Skipped: hidden, temporary, AppleDouble, NAS housekeeping, not audio.
    for name in (".hidden.mp3", "._Song 0.mp3", "copying.mp3.part", "download.tmp",
                 "backup.flac~", "cover.jpg", "notes.txt"):
        (bad / name).write_bytes(b"x" * 10)
    (root / ".Trash").mkdir()
    shutil.copyfile(masters[".mp3"], root / ".Trash" / "deleted.mp3")
    (root / "@eaDir").mkdir()
    shutil.copyfile(masters[".mp3"], root / "@eaDir" / "thumb.mp3")
    return root, expected


def check_report(data: dict, root: Path, expected: dict) -> None:
    assert data["root"] == str(root)
    files = {f["path"]: f for f in data["files"]}
    assert set(files) == set(expected)
    assert [f["path"] for f in data["files"]] == sorted(files)
    for path, (status, fmt, genre, error) in expected.items():
        entry = files[path]
        assert set(entry) == {"path", "status", "format", "duration", "title", "artist",
                              "album", "raw_genres", "genre", "error", "skipped",
                              "not_song"}
        assert entry["status"] == status, (path, entry)
        assert entry["genre"] == genre, path
        if fmt is not None:
            assert entry["format"] == fmt, path
        if error is None:
            assert entry["error"] is None
            assert entry["duration"] == pytest.approx(3.0, abs=0.1), path
        else:
            assert error in entry["error"], (path, entry["error"])
    assert files["Artist 0/Song 0.mp3"]["raw_genres"] == ["Rock"]  # ID3 "(17)" resolved
    assert files["Artist 2/Song 2.ogg"]["raw_genres"] == ["hip hop"]
    assert files["Odd/untagged.flac"]["raw_genres"] == ["Funk"]

    summary = data["summary"]
    statuses = [s for s, *_ in expected.values()]
    assert summary["files"] == len(expected)
    assert summary["tagged"] == statuses.count("tagged")
    assert summary["untagged"] == statuses.count("untagged")
    assert summary["errors"] == statuses.count("error")
    assert summary["genres"]["Rock"] == 2 and summary["genres"]["Jazz"] == 2
    assert summary["genres"]["Blues"] == 2
    assert summary["unmapped"] == {"Funk": 1}
    assert summary["formats"]["mp3"] == 3 and summary["formats"]["flac"] == 4
    assert summary["skipped"] == 7
    assert summary["unlistable"] == []


def test_scan_json_through_the_cli(library):
    root, expected = library
    result = CliRunner().invoke(cli, ["scan", str(root), "--json"])
    assert result.exit_code == 0, result.output
    check_report(json.loads(result.output), root, expected)


def test_scan_as_a_real_subprocess_text_and_json(library):
    root, expected = library
    done = subprocess.run([GENRETAGGER, "scan", str(root), "--json"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    check_report(json.loads(done.stdout), root, expected)
    assert "reading" not in done.stderr  # no progress bar when not on a terminal

    done = subprocess.run([GENRETAGGER, "scan", str(root)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "Artist 1/Song 1.flac\tflac\t0:03\tBebop -> Jazz" in lines
    assert "Odd/untagged.flac\tflac\t0:03\tFunk -> untagged" in lines
    assert any(line.startswith(f"{len(expected)} audio files in {root}:") for line in lines)
    assert "  Incoming/empty.mp3: empty file (0 bytes)" in lines


def test_scan_uses_an_explicit_genre_map(library, tmp_path):
    root, _ = library
    genres = tmp_path / "genres.toml"
    genres.write_text('canonical = ["Soul"]\n[genres.Soul]\naliases = ["Funk"]\n')
    result = CliRunner().invoke(cli, ["scan", str(root), "--json", "--genres", str(genres)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)["summary"]
    assert summary["genres"] == {"Soul": 2}  # "Funk", and "Soul; Delta Blues"
    bad = tmp_path / "bad.toml"
    bad.write_text('canonical = ["Soul"]\n[genres.Funk]\naliases = ["x"]\n')
    done = subprocess.run([GENRETAGGER, "scan", str(root), "--genres", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "[genres.Funk]" in done.stderr


def test_tags_only_skips_the_truncation_check(library):
    root, _ = library
    report = scan_library(root, load_genre_map(), check_end=False)
    files = {f.path: f for f in report.files}
    assert files["Incoming/truncated.mp3"].status == "tagged"
    assert files["Incoming/random.mp3"].status == "error"


def test_file_vanishing_between_listing_and_reading(tmp_path):
    song = encode(tmp_path / "here.flac", synthesize("Folk", 2.0, 22_050), 22_050)
    listing = list_library(str(tmp_path))
    assert listing.files == [("here.flac", str(song))]
    song.unlink()
    report = inspect_file(str(song), "here.flac", load_genre_map())
    assert report.status == "error" and "file vanished" in report.error


def test_exit_codes_for_unusable_dir_and_usage(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["scan", str(tmp_path / "nowhere")]).exit_code == 1
    (tmp_path / "file.mp3").write_bytes(b"")
    assert runner.invoke(cli, ["scan", str(tmp_path / "file.mp3")]).exit_code == 1
    done = subprocess.run([GENRETAGGER, "scan"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    done = subprocess.run([GENRETAGGER, "scan", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "does not exist" in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(cli, ["scan", str(empty), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["summary"]["files"] == 0


def test_unreadable_file_and_folder_as_an_unprivileged_user(library):
    """Root reads everything, so as root the scan runs as `nobody` over a world-readable
    copy; anyone else is unprivileged already."""
    root, _ = library
    base = Path(tempfile.mkdtemp(prefix="genretagger-perm-"))
    try:
        base.chmod(0o755)
        shutil.copyfile(root / "Artist 1" / "Song 1.flac", base / "readable.flac")
        shutil.copyfile(root / "Artist 0" / "Song 0.mp3", base / "locked.mp3")
        (base / "locked.mp3").chmod(0o000)
        (base / "Private").mkdir(mode=0o700)
        shutil.copyfile(root / "Artist 0" / "Song 0.mp3", base / "Private" / "hidden.mp3")
        (base / "readable.flac").chmod(0o644)
        nobody = (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
                  if os.geteuid() == 0 else [])
        env = {"PATH": "/usr/bin:/bin", "HOME": str(base), "PYTHONDONTWRITEBYTECODE": "1"}
        done = subprocess.run([*nobody, GENRETAGGER, "scan", str(base), "--json"],
                              capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        files = {f["path"]: f for f in data["files"]}
        assert files["locked.mp3"]["error"] == "permission denied"
        assert files["readable.flac"]["genre"] == "Jazz"
        assert data["summary"]["unlistable"] == ["Private"]
        done = subprocess.run([*nobody, GENRETAGGER, "scan", str(base / "Private")],
                              capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 1 and "cannot list" in done.stderr
    finally:
        shutil.rmtree(base)


def test_a_stalled_read_is_reported_and_the_scan_finishes(tmp_path):
    """A read that never returns (a dead network mount) must not hold the scan."""
    names = ("a.wav", "stuck1.wav", "b.wav", "stuck2.wav", "c.wav", "d.wav")
    for name in names:
        encode(tmp_path / name, synthesize("Blues", 1.0, 22_050), 22_050)
    release = threading.Event()

    def stalling_inspect(path, relpath, genre_map, check_end):
        if relpath.startswith("stuck"):
            release.wait(30)  # like a read blocked on a mount that went away
        return inspect_file(path, relpath, genre_map, check_end)

    started = time.monotonic()
    try:
        report = scan_library(tmp_path, load_genre_map(), threads=2, file_timeout=0.5,
                              inspect=stalling_inspect)
    finally:
        release.set()
    assert time.monotonic() - started < 15
    files = {f.path: f for f in report.files}
    # Both reader threads got stuck; fresh ones read the rest.
    assert files["stuck1.wav"].error == files["stuck2.wav"].error == (
        "timed out after 0.5 s (a stalled network drive?)")
    assert [files[n].status for n in names if "stuck" not in n] == ["untagged"] * 4


def test_everything_the_walk_skips_is_reported_and_nothing_outside_is_opened(tmp_path):
    """Folders, FIFOs, sockets, devices, broken links, loops and links leading outside:
    each is an entry with its reason in --json and in the text report; the link to a
    FIFO outside is never opened (opening it would block until file_timeout)."""
    root = tmp_path / "library"
    song = encode(tmp_path / "song.mp3", synthesize("Rock", 3.0, 22_050, seed=1), 22_050)
    made = make_not_songs(root, tmp_path / "outside", song)
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["scan", str(root), "--json"])
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 30
    data = json.loads(result.output)
    files = {f["path"]: f for f in data["files"]}
    assert set(files) == set(made)  # not the songs behind the links leading outside
    for rel, reason in made.items():
        assert files[rel]["skipped"] is True and reason in files[rel]["error"], files[rel]
        assert files[rel]["status"] == "error"
    assert sum(data["summary"]["not_read"].values()) == len(made)
    assert data["summary"]["not_read"]["leads outside the library"] == 3

    text = CliRunner().invoke(cli, ["scan", str(root)]).output
    for rel, reason in made.items():
        assert any(rel in line and reason in line for line in text.splitlines()), rel
    assert "not read (song names that are not songs)" in text
