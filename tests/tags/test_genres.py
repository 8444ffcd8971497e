"""The genre map: spellings to canonical genres (table-driven) and genres.toml validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli.demo import SPELLINGS
from daemon.core.errors import GenreMapError
from daemon.tags.genres import (
    default_genres_text,
    load_genre_map,
    normalise,
    parse_genre_map,
    station_genre_map,
    station_genres_file,
)
from daemon.tags.read import ID3V1_GENRES

DEFAULT_TEN = ("Blues", "Classical", "Country", "Electronic", "Folk", "Hip-Hop", "Jazz",
               "Metal", "Pop", "Rock")

# ID3v1/Winamp names deliberately left without a home among the ten (they count as
# untagged, so the model suggests one). Every other name of the 192 must map.
NO_HOME = {
    "Funk", "New Age", "Other", "R&B", "Reggae", "Ska", "Pranks", "Soundtrack", "Vocal",
    "Instrumental", "Game", "Sound Clip", "Gospel", "Noise", "Soul", "Space", "Meditative",
    "Comedy", "Cult", "Cabaret", "Showtunes", "Trailer", "Lo-Fi", "Tribal", "Retro",
    "Musical", "Latin", "Revival", "Avantgarde", "Humour", "Speech", "Chanson",
    "Porn Groove", "Satire", "Slow Jam", "Tango", "Samba", "Rhythmic Soul", "Freestyle",
    "Duet", "Drum Solo", "A Cappella", "Dance Hall", "Hardcore", "Terror", "Merengue",
    "Salsa", "Anime", "Abstract", "Bhangra", "Dub", "Eclectic", "Experimental", "Garage",
    "Global", "World Music", "Audiobook", "Audio Theatre", "Podcast",
}


@pytest.fixture(scope="module")
def genre_map():
    return load_genre_map()


RAW_TO_CANONICAL = [
    # exact and case
    ("Rock", "Rock"), ("rock", "Rock"), ("ROCK", "Rock"), ("  Jazz  ", "Jazz"),
    # the hip-hop family of spellings
    ("Hip-Hop", "Hip-Hop"), ("hip hop", "Hip-Hop"), ("HipHop", "Hip-Hop"),
    ("hip_hop", "Hip-Hop"), ("Hip Hop/Rap", "Hip-Hop"), ("Rap", "Hip-Hop"),
    # & / and / n
    ("Rock & Roll", "Rock"), ("Rock and Roll", "Rock"), ("rock 'n' roll", "Rock"),
    ("Rock'n'Roll", "Rock"), ("Drum & Bass", "Electronic"), ("drum and bass", "Electronic"),
    ("Drum'n'Bass", "Electronic"), ("Country & Western", "Country"),
    ("Country and Western", "Country"), ("Jazz+Funk", "Jazz"), ("jazz & funk", "Jazz"),
    # punctuation and accents
    ("Alt. Rock", "Rock"), ("alt rock", "Rock"), ("Post-Punk", "Rock"), ("post punk", "Rock"),
    ("Synth-Pop", "Pop"), ("synthpop", "Pop"), ("Néo-Classical", "Classical"),
    # sub-genres
    ("Thrash Metal", "Metal"), ("Death Metal", "Metal"), ("Nu Metal", "Metal"),
    ("Delta Blues", "Blues"), ("Chicago Blues", "Blues"), ("Bebop", "Jazz"),
    ("Hard Bop", "Jazz"), ("Big Band", "Jazz"), ("Techno", "Electronic"),
    ("Deep House", "Electronic"), ("Trip-Hop", "Electronic"), ("Bluegrass", "Country"),
    ("Americana", "Country"), ("Baroque", "Classical"), ("Opera", "Classical"),
    ("Chamber Music", "Classical"), ("Singer-Songwriter", "Folk"),
    ("Singer/Songwriter", "Folk"), ("Celtic", "Folk"), ("Folk-Rock", "Folk"),
    ("Gangsta Rap", "Hip-Hop"), ("Trap", "Hip-Hop"), ("Top 40", "Pop"), ("K-Pop", "Pop"),
    ("Classic Rock", "Rock"), ("Indie", "Rock"), ("Shoegaze", "Rock"),
    # numeric ID3v1 references left as text
    ("(17)", "Rock"), ("17", "Rock"), ("(17)Rock", "Rock"), ("(0)", "Blues"),
    ("(8)", "Jazz"), ("9", "Metal"), ("(32)", "Classical"), ("(2)", "Country"),
    ("(9)Thrash Metal", "Metal"), ("(5)(17)", "Rock"),  # Funk has no home; Rock does
    ("(17)Something Odd", "Rock"),
    # several values in one string
    ("Rock; Pop", "Rock"), ("Electronica/Dance", "Electronic"), ("Funk, Jazz", "Jazz"),
    ("Soul|Blues", "Blues"),
    # no mapping: untagged
    ("Funk", None), ("R&B", None), ("Podcast", None), ("", None), ("   ", None),
    ("(255)", None), ("999", None), ("(12)", None), ("Unknown", None), ("???", None),
]


@pytest.mark.parametrize(("raw", "expected"), RAW_TO_CANONICAL)
def test_raw_spellings_map_to_canonical_genres(genre_map, raw, expected):
    assert genre_map.canonical_for(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    (None, None), ([], None), (("Rock",), "Rock"), (["Funk", "Jazz", "Rock"], "Jazz"),
    (["Soul", "Other"], None), (iter(["(13)", "Rock"]), "Pop"),
])
def test_several_raw_genres_first_mapping_wins(genre_map, raw, expected):
    assert genre_map.canonical_for(raw) == expected


@pytest.mark.parametrize(("a", "b"), [
    ("Hip Hop", "hip-hop"), ("hip-hop", "HIPHOP"), ("R&B", "r and b"), ("Rock 'n' Roll",
    "rock and roll"), ("Électronique", "electronique"), ("Drum&Bass", "drum n bass"),
])
def test_normalise_equates_variants(a, b):
    assert normalise(a) == normalise(b) != ""


def test_shipped_map_has_the_default_ten_and_enough_spellings(genre_map):
    assert genre_map.canonical == DEFAULT_TEN
    assert len(genre_map.aliases) - len(DEFAULT_TEN) >= 150
    assert set(genre_map.aliases.values()) == set(DEFAULT_TEN)


@pytest.mark.parametrize("index", range(len(ID3V1_GENRES)))
def test_every_id3v1_genre_is_mapped_or_deliberately_homeless(genre_map, index):
    name = ID3V1_GENRES[index]
    genre = genre_map.canonical_for(name)
    assert (genre is None) == (name in NO_HOME), name
    # The number, as conversion tools leave it, means the same as the name.
    assert genre_map.canonical_for(f"({index})") == genre
    assert genre_map.canonical_for(str(index)) == genre


def test_demo_spellings_all_map_to_their_genre(genre_map):
    for genre, spellings in SPELLINGS.items():
        for raw in spellings:
            assert genre_map.canonical_for(raw) == genre, raw


def test_station_copy_loads_like_the_shipped_file(tmp_path, genre_map):
    path = tmp_path / "genres.toml"
    path.write_text(default_genres_text(), encoding="utf-8")
    assert load_genre_map(path) == genre_map
    shipped = Path(__file__).parents[2] / "daemon" / "tags" / "genres.toml"
    assert default_genres_text() == shipped.read_text(encoding="utf-8")


def test_station_genre_map_is_the_state_dirs_file_else_the_shipped_one(tmp_path, make_config,
                                                                        genre_map):
    config = make_config(tmp_path / "library")
    assert not config.genres_path.exists()
    assert station_genres_file(config) is None
    assert station_genre_map(config) == genre_map
    assert station_genre_map(config).source == "shipped genres.toml"
    config.state_dir.mkdir(parents=True, exist_ok=True)
    config.genres_path.write_text('canonical = ["Polka", "Jazz"]\n', encoding="utf-8")
    assert station_genres_file(config) == config.genres_path
    station = station_genre_map(config)
    assert station.canonical == ("Polka", "Jazz")
    assert station.source == str(config.genres_path)
    config.genres_path.write_text('canonical = "Polka"\n', encoding="utf-8")
    with pytest.raises(GenreMapError, match="genres.toml"):
        station_genre_map(config)


def test_station_can_add_a_genre_and_spellings(tmp_path):
    text = default_genres_text().replace('"Pop", "Rock",', '"Pop", "Rock", "R&B",')
    text += '\n[genres."R&B"]\naliases = ["Soul", "Funk", "Rhythm and Blues"]\n'
    path = tmp_path / "genres.toml"
    path.write_text(text, encoding="utf-8")
    genre_map = load_genre_map(path)
    assert genre_map.canonical[-1] == "R&B"
    assert genre_map.canonical_for("(5)") == "R&B"  # Funk
    assert genre_map.canonical_for("rhythm & blues") == "R&B"
    assert genre_map.canonical_for("R and B") == "R&B"


BAD_FILES = [
    ('canonical = ["Rock"]\n[genres.Reggae]\naliases = ["Dub"]\n',
     r"\[genres.Reggae\]: 'Reggae' is not a canonical genre"),
    ('canonical = ["Rock", "Metal"]\n[genres.Rock]\naliases = ["Thrash"]\n'
     '[genres.Metal]\naliases = ["thrash!"]\n',
     r"\[genres.Metal\]: alias 'thrash!' already maps to 'Rock' \(as 'Thrash'\)"),
    ('canonical = ["Rock", "Metal"]\n[genres.Metal]\naliases = ["rock"]\n',
     r"alias 'rock' already maps to 'Rock'"),
    ('canonical = []\n', r"`canonical` is an empty list"),
    ('canonical = ["Rock"]\n[genres.Rock]\naliases = []\n',
     r"\[genres.Rock\]: `aliases` is an empty list"),
    ('canonical = ["Rock", "rock"]\n', r"'Rock' and 'rock' are the same spelling"),
    ('canonical = ["Rock"]\n[genres.Rock]\naliases = "Hard Rock"\n',
     r"\[genres.Rock\]: `aliases` must be a list"),
    ('canonical = ["Rock"]\n[genres.Rock]\naliases = ["Hard Rock"]\nweight = 2\n',
     r"\[genres.Rock\]: unknown key\(s\) weight"),
    ('canonical = ["Rock"]\nmapping = {}\n', r"unknown key\(s\) mapping"),
    ('[genres.Rock]\naliases = ["x"]\n', r"missing `canonical"),
    ('canonical = ["Rock"\n', r"not valid TOML"),
    ('canonical = ["Rock"]\n[genres.Rock]\naliases = ["--"]\n', r"alias '--' has no letters"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_invalid_genre_files_name_the_file_and_entry(tmp_path, text, message):
    path = tmp_path / "station-genres.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(GenreMapError, match=message) as caught:
        load_genre_map(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_missing_or_binary_genre_file(tmp_path):
    with pytest.raises(GenreMapError, match="nope.toml: cannot read"):
        load_genre_map(tmp_path / "nope.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(GenreMapError, match="not UTF-8"):
        load_genre_map(binary)


def test_parse_names_its_source():
    with pytest.raises(GenreMapError, match="^inline: "):
        parse_genre_map("canonical = 3", "inline")
