"""The stored form of a library path is one-to-one with the bytes on disk (daemon.core.paths)."""

from __future__ import annotations

import itertools
import os
import random

import pytest

from daemon.core.paths import (
    OutsideLibrary,
    display,
    filesystem_path,
    library_file,
    relative_inside,
    stored_path,
    within,
)

# Bytes where escaping goes wrong if it can: the escape character and what follows it in
# an escape, both halves of the 0x80 boundary, UTF-8 lead/continuation bytes, a whole
# multi-byte character's pieces, "/" and "%".
EDGE_BYTES = [b"\\", b"x", b"e", b"9", b"8", b"0", b"f", b"\x7f", b"\x80", b"\xe9", b"\xff",
              b"\xc3", b"\xa9", b"\xf0\x9f\x8e\xb5", b"/", b"%", b" ", b"a"]


def names_from(pieces) -> bytes:
    return b"".join(pieces)


def round_trips(raw: bytes) -> str:
    """raw bytes -> stored form, checked to come back to the same bytes; returns it."""
    fs = os.fsdecode(raw)
    stored = stored_path(fs)
    stored.encode("utf-8")  # what SQL databases need: no lone surrogates
    assert os.fsencode(filesystem_path(stored)) == raw
    return stored


def test_every_short_name_over_the_edge_bytes_round_trips_and_none_collide():
    seen: dict[str, bytes] = {}
    for length in range(1, 4):
        for pieces in itertools.product(EDGE_BYTES, repeat=length):
            raw = names_from(pieces)
            stored = round_trips(raw)
            assert seen.setdefault(stored, raw) == raw, f"{raw!r} and {seen[stored]!r} collide"
    assert len(seen) > 5000


def test_random_byte_names_round_trip_and_none_collide():
    rng = random.Random(20261201)  # fixed: a failure names a reproducible case
    seen: dict[str, bytes] = {}
    for _ in range(20_000):
        n = rng.randint(1, 40)
        if rng.random() < 0.5:  # any byte a POSIX name may hold
            raw = bytes(rng.choice([b for b in range(1, 256) if b != 0x2F]) for _ in range(n))
        else:
            raw = names_from(rng.choice(EDGE_BYTES) for _ in range(n))
        stored = round_trips(raw)
        assert seen.setdefault(stored, raw) == raw


def test_a_literal_escape_and_the_raw_byte_it_spells_are_stored_apart():
    literal = os.fsdecode(b"collide_\\xe9.mp3")  # backslash, x, e, 9
    raw_byte = os.fsdecode(b"collide_\xe9.mp3")
    assert stored_path(literal) != stored_path(raw_byte)
    assert stored_path(raw_byte) == "collide_\\xe9.mp3"  # what rows already hold
    assert stored_path(literal) == "collide_\\\\xe9.mp3"


def test_common_names_are_stored_as_they_are():
    for name in ("Artist/Album/01 Song.mp3", "Björk/Jóga.mp3", "100% Hits/a b.flac",
                 "日本語/曲.ogg"):
        assert stored_path(name) == name == filesystem_path(name)


@pytest.mark.parametrize("bad", ["a\\b.mp3", "a\\x41.mp3", "trailing\\", "a\\xE9.mp3",
                                 "a\udce9.mp3"])
def test_text_that_is_not_a_stored_form_is_refused_not_guessed(bad):
    with pytest.raises(ValueError):
        filesystem_path(bad)


def test_display_shows_undecodable_bytes_escaped():
    assert display(os.fsdecode(b"caf\xe9.mp3")) == "caf\\xe9.mp3"
    assert display(b"caf\xc3\xa9.mp3") == "café.mp3"


def test_library_file_takes_backslashes_and_raw_bytes_and_refuses_escapes(tmp_path):
    root = tmp_path / "library"
    root.mkdir()
    outside = tmp_path / "outside.mp3"
    outside.write_bytes(b"ID3")
    names = [b"AC\\DC - Back\\In Black.mp3", b"caf\xe9.mp3", b"collide_\\xe9.mp3",
             b"..\\..\\x.mp3", b"x" * 251 + b".mp3"]
    for raw in names:
        with open(os.fsencode(root) + b"/" + raw, "wb"):
            pass
        found = library_file(root, stored_path(os.fsdecode(raw)))
        assert os.fsencode(found) == os.fsencode(root.resolve()) + b"/" + raw
    (root / "out.mp3").symlink_to(outside)
    for stored, reason in (("out.mp3", "leads outside"), ("../outside.mp3", "not a path"),
                           ("/etc/passwd", "not a path"), ("a\\b.mp3", "not a path"),
                           ("gone.mp3", "gone")):
        with pytest.raises(OutsideLibrary, match=reason):
            library_file(root, stored)


def test_inside_a_folder_is_one_rule():
    """A folder's sibling with a longer name is not inside it; the folder itself is within
    but has no relative path; the root folder holds everything."""
    assert within("/srv/music", "/srv/music/Rock/a.mp3")
    assert within("/srv/music", "/srv/music")
    assert not within("/srv/music", "/srv/musicbox/a.mp3")
    assert not within("/srv/music", "/srv")
    assert within("/", "/srv/music")
    assert relative_inside("/srv/music", "/srv/music/Rock/a.mp3") == "Rock/a.mp3"
    assert relative_inside("/srv/music/", "/srv/music/..b.mp3") == "..b.mp3"
    assert relative_inside("/srv/music", "/srv/music") is None
    assert relative_inside("/srv/music", "/srv/musicbox/a.mp3") is None
    assert relative_inside("/", "/srv/a.mp3") == "srv/a.mp3"
