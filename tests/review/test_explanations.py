"""What the director and the IT volunteer are told about a suggestion and a model: the songs
it sounds like (with a play link that plays), the unverified mark of the cold-start
model, the tournament table ("not tested", never 0%) and the genres it cannot suggest yet.
Through the Flask app and the real `genretagger` commands on a real migrated SQLite file."""

from __future__ import annotations

import io
import json
import re

import pytest
import soundfile as sf
from click.testing import CliRunner
from helpers import add_suggested_track

from daemon.audio.fingerprint import fingerprint
from daemon.cli import cli
from daemon.core.db.models import Model, Suggestion, Track, utcnow
from daemon.core.states import TrackState
from daemon.review.web import create_app

TOURNAMENT = {
    "holdout_songs": 24, "winner": "backbone", "why": "best macro-F1, not worse with evidence",
    "rows": [
        {"family": "cnn", "accuracy": 0.625, "macro_f1": 0.6, "ece": 0.12,
         "recall": {"Jazz": 0.7, "Rock": 0.5, "Reggae": None}, "not_tested": ["Reggae"],
         "temperature": 1.4, "calibration": "fitted", "train_seconds": 41.0,
         "classes": ["Jazz", "Rock", "Reggae"], "left_out": {}},
        {"family": "backbone", "accuracy": 0.875, "macro_f1": 0.86, "ece": 0.05,
         "recall": {"Jazz": 0.9, "Rock": 0.8, "Reggae": None}, "not_tested": ["Reggae"],
         "temperature": 1.0, "calibration": "1.0 (fit on too few songs)",
         "train_seconds": 3.5, "classes": ["Jazz", "Rock", "Reggae"], "left_out": {}}]}


@pytest.fixture
def explained(sqlite_station, make_song):
    """(station, ids, sounds-like list) of a station with a reference song on disk, and three
    suggestions: one from a trained model with sounds-like songs, one from the cold-start
    model."""
    sessions, library = sqlite_station.sessions, sqlite_station.library
    song = make_song("Reference/Blue Note.ogg", genre="Jazz", seconds=20, folder=library)
    st = song.stat()
    with sessions() as session, session.begin():
        trained = Model(version=2, path="/m/v2/model.onnx", sha256="b" * 64, status="active",
                        classes=["Jazz", "Rock", "Reggae"], n_songs=120,
                        activated_at=utcnow(),
                        metrics={"accuracy": 0.875, "macro_f1": 0.86,
                                 "tournament": TOURNAMENT})
        cold = Model(version=1, path="/m/v1/model.onnx", sha256="a" * 64, status="retired",
                     classes=["Jazz", "Rock"], n_songs=0,
                     metrics={"family": "coldstart", "unverified": True})
        reference = Track(path="Reference/Blue Note.ogg", size=st.st_size, mtime=st.st_mtime,
                          fingerprint=fingerprint(song), duration=20.0, format="ogg",
                          title="Blue Note", artist="Quartet Nine", canonical_genre="Jazz",
                          confirmed_genre="Blues", state=TrackState.REVIEWED)
        untitled = Track(path="Rock/garage take 3.mp3", size=1, mtime=1.0,
                         canonical_genre="Rock", state=TrackState.TAGGED)
        gone = Track(path="Gone/away.mp3", size=1, mtime=1.0, canonical_genre="Rock",
                     state=TrackState.MISSING, title="Away")
        # Two Hip-Hop songs: not enough for a genre yet (3 with the backbone).
        hiphop = [Track(path=f"HH/{i}.mp3", size=1, mtime=1.0, canonical_genre="Hip-Hop",
                        state=TrackState.TAGGED) for i in range(2)]
        session.add_all([trained, cold, reference, untitled, gone, *hiphop])
        session.flush()
        ids = {"trained": trained.id, "cold": cold.id, "reference": reference.id,
               "untitled": untitled.id, "gone": gone.id}
    alike = [{"track_id": ids["reference"], "path": "Reference/Blue Note.ogg",
              "genre": "Jazz", "similarity": 0.981},
             {"track_id": ids["gone"], "path": "Gone/away.mp3", "genre": "Rock",
              "similarity": 0.93},
             {"track_id": ids["untitled"], "path": "Rock/garage take 3.mp3", "genre": "Rock",
              "similarity": 0.71}]
    _, ids["suggestion"] = add_suggested_track(sessions, "New/tune.mp3",
                                               (("Jazz", 0.9), ("Rock", 0.1)))
    _, ids["cold_suggestion"] = add_suggested_track(sessions, "New/other.mp3",
                                                    (("Rock", 0.6), ("Jazz", 0.4)))
    with sessions() as session, session.begin():
        session.get(Suggestion, ids["suggestion"]).sounds_like = alike
        session.get(Suggestion, ids["suggestion"]).model_id = ids["trained"]
        session.get(Suggestion, ids["cold_suggestion"]).model_id = ids["cold"]
    return sqlite_station, ids, alike


def run_cli(config_path, *args):
    result = CliRunner().invoke(cli, ["--config", str(config_path), *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in args else result.stdout


def test_the_review_page_says_what_a_song_sounds_like_and_plays_it(explained):
    station, ids, _ = explained
    config, sessions = station.config, station.sessions
    app = create_app(config, sessions)
    app.testing = True
    client = app.test_client()
    page = client.get("/").get_data(as_text=True)
    row = page[page.index(f'id="s{ids["suggestion"]}"'):]
    row = row[:row.index("</article>")]
    assert "Sounds like" in row
    # Title by artist, its genre now (corrected since the suggestion was made), in words.
    assert re.search(r'Blue Note by Quartet Nine</span> <span class="alike-genre">\(Blues\)'
                     r'</span>\s*<span class="likeness">very close</span>', row)
    assert "garage take 3.mp3" in row and "(Rock)" in row and "only a little alike" in row
    assert "Away" not in row  # no longer in the library: nothing to play
    assert "0.98" not in row and "Unverified" not in row  # no figures, no jargon
    link = re.search(rf'<a class="play-alike" href="([^"]+)" data-track="{ids["reference"]}"',
                     row).group(1)
    played = client.get(link)
    assert played.status_code == 200 and played.mimetype == "audio/wav"
    samples, sr = sf.read(io.BytesIO(played.data))
    assert len(samples) / sr > 5 and abs(samples).max() > 0.05
    cold_row = page[page.index(f'id="s{ids["cold_suggestion"]}"'):]
    cold_row = cold_row[:cold_row.index("</article>")]
    assert "Unverified — not yet learned from your station's songs" in cold_row
    assert "Sounds like" not in cold_row


def test_review_list_carries_sounds_like_and_unverified(explained):
    station, ids, alike = explained
    config_path = station.config_path
    data = run_cli(config_path, "review", "list", "--json")
    rows = {row["id"]: row for row in data["suggestions"]}
    assert rows[ids["suggestion"]]["sounds_like"] == alike
    assert rows[ids["suggestion"]]["unverified"] is False
    assert rows[ids["cold_suggestion"]]["sounds_like"] == []
    assert rows[ids["cold_suggestion"]]["unverified"] is True
    text = run_cli(config_path, "review", "list")
    assert "sounds like: Blue Note by Quartet Nine (Blues, very close); garage take 3.mp3 " \
        "(Rock, only a little alike)" in text
    [cold_line] = [line for line in text.splitlines() if "New/other.mp3" in line]
    assert "unverified: not yet learned from your station's songs" in cold_line


def test_models_show_and_status_print_the_tournament_and_what_cannot_be_suggested(explained):
    config_path = explained[0].config_path
    text = run_cli(config_path, "models", "show", "2")
    # The verdict first: 3 of the 10 station genres and Reggae (a tagged genre); the
    # stored metrics hold no test songs to count.
    assert text.splitlines()[0] == ("Suggests 3 of your 11 genres; no test songs were "
                                    "recorded for this version")
    assert "24 holdout songs; winner backbone" in text
    [backbone] = [line for line in text.splitlines() if line.strip().startswith("backbone")]
    assert "87.5%" in backbone and "86.0%" in backbone and "0.050" in backbone
    [reggae] = [line for line in text.splitlines() if line.strip().startswith("Reggae")]
    assert reggae.split()[1:] == ["not", "tested", "not", "tested"]  # never 0%
    assert "0%" not in reggae
    assert "Hip-Hop: 2 song(s), needs 1 more confirmed" in text
    shown = run_cli(config_path, "models", "show", "2", "--json")
    assert shown["tournament"] == TOURNAMENT
    assert shown["cannot_suggest_yet"]["Hip-Hop"] == {"songs": 2, "needs": 1}
    assert "Jazz" not in shown["cannot_suggest_yet"]  # the model suggests it
    status = run_cli(config_path, "status", "--json")
    cannot = status["cannot_suggest_yet"]
    assert cannot["Hip-Hop"] == {"songs": 2, "needs": 1}
    assert cannot["Metal"] == {"songs": 0, "needs": 3}
    assert "Rock" not in cannot and "Reggae" not in cannot
    assert "  Hip-Hop: 2 song(s), needs 1 more confirmed" in run_cli(config_path, "status")


def test_the_seed_cnn_alone_needs_more_songs_per_genre(explained, tmp_path):
    config_path = explained[0].config_path
    config_path.write_text(config_path.read_text().replace(
        "[library]", "min_songs_per_genre = 20\n[classifier]\nbackbone = false\n[library]"))
    assert run_cli(config_path, "status", "--json")["cannot_suggest_yet"]["Hip-Hop"] == {
        "songs": 2, "needs": 18}


def test_the_model_page_shows_the_tournament_and_the_genres_left_out(explained):
    station = explained[0]
    config, sessions = station.config, station.sessions
    app = create_app(config, sessions)
    app.testing = True
    page = app.test_client().get("/models").get_data(as_text=True)
    assert "How it was chosen" in page and "The same 24 test songs" in page
    recall = page[page.index('class="tournament-recall'):]
    recall = recall[:recall.index("</table>")]
    cell = "<td[^>]*>"  # each cell is named by its column for a phone's stacked table
    assert re.search(rf"{cell}Reggae</td>{cell}not tested</td>{cell}not tested</td>", recall)
    assert re.search(rf"{cell}Jazz</td>{cell}70%</td>{cell}90%</td>", recall)
    left = page[page.index('id="cannot-suggest"'):]
    assert re.search(r"<strong>Hip-Hop</strong>: 2 songs so far — needs 1 more", left)
