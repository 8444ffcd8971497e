"""The review web app through Flask's test client on a real migrated DB and real songs:
pages, review actions (JSON and plain forms), spectrogram PNG, audio preview with Range."""

from __future__ import annotations

import io
import re
import threading

import numpy as np
import pytest
import soundfile as sf
from helpers import add_suggested_track
from PIL import Image

from daemon.audio.fingerprint import fingerprint
from daemon.core.db.models import Decision, Model, Track, utcnow
from daemon.review.web import create_app
from daemon.review.web.media import preview_windows


class CountedEvent(threading.Event):
    """The Event the writer would wake on, counting how often a decision sets it."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def set(self) -> None:
        self.count += 1
        super().set()


@pytest.fixture
def client(station):
    config, sessions = station.config, station.sessions
    woken = CountedEvent()
    app = create_app(config, sessions, decision_made=woken)
    app.testing = True
    c = app.test_client()
    c.woken = woken
    return c


def csrf(client, url="/") -> str:
    page = client.get(url).get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)


def post_json(client, url, data=None):
    return client.post(url, data=data or {}, headers={
        "X-CSRFToken": csrf(client), "Accept": "application/json"})


def test_every_page_belongs_to_a_blueprint_and_finds_its_dependencies_in_the_app(station):
    """The factory registers blueprints; their views read config, sessions, the decoder
    children and the decision Event from app.extensions, not from a closure."""
    config, sessions = station.config, station.sessions
    woken = CountedEvent()
    app = create_app(config, sessions, decision_made=woken)
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()} - {"static"}
    assert {e.split(".")[0] for e in endpoints} == {"auth", "songs", "albums", "history",
                                                   "models", "media", "metrics",
                                                   "notsongs"}
    assert all("." in e for e in endpoints)
    review = app.extensions["review"]
    assert review.config is config and review.children is app.extensions["children"]
    review.notify()
    assert woken.is_set() and woken.count == 1
    app.extensions["children"].close()


def test_queue_lists_pending_with_filters_sort_and_pages(station, client):
    sessions = station.sessions
    for i in range(60):
        add_suggested_track(sessions, f"{'Jazz' if i % 2 else 'Rock'}/song {i}.mp3",
                            top=(("Jazz" if i % 3 else "Pop", 0.3 + i / 100), ("Blues", 0.1)),
                            fmt="flac" if i % 5 == 0 else "mp3", artist=f"Artist {i}",
                            title=f"Title {i}", raw_genre="weird" if i == 59 else None)
    page = client.get("/").get_data(as_text=True)
    assert "Songs to review" in page and 'id="total">60<' in page
    assert page.count('class="song"') == 50 and "Page 1 of 2" in page
    assert page.index("Title 59") < page.index("Title 58")  # most sure first
    assert "Genre in the file now: <strong>weird</strong>" in page
    for key in ("<kbd>j</kbd>", "<kbd>a</kbd>", "<kbd>r</kbd>", "<kbd>u</kbd>"):
        assert key in page
    page = client.get("/?sort=uncertain").get_data(as_text=True)
    assert page.index("Title 0<") < page.index("Title 1<")
    page = client.get("/?page=2").get_data(as_text=True)
    assert page.count('class="song"') == 10
    page = client.get("/?folder=Jazz&format=flac").get_data(as_text=True)
    assert 'id="total">6<' in page  # odd i, multiple of 5: 5 15 25 35 45 55
    page = client.get("/?genre=Pop").get_data(as_text=True)
    assert 'id="total">20<' in page
    assert client.get("/?sort=bogus").status_code == 200  # an unknown order: the usual one
    assert client.get("/?page=abc").status_code == 400  # not a page number (test_web_stress)


def test_actions_by_json_and_by_plain_form(station, client):
    sessions = station.sessions
    sids = [add_suggested_track(sessions, f"A/{i}.mp3")[1] for i in range(4)]
    r = post_json(client, f"/suggestions/{sids[0]}/accept", {"choice": "1"})
    assert r.status_code == 200 and r.json["decisions"][0]["genre"] == "Rock"
    r = post_json(client, f"/suggestions/{sids[1]}/accept", {"choice": "3"})
    assert r.json["decisions"][0]["action"] == "override"
    r = post_json(client, f"/suggestions/{sids[2]}/set", {"genre": "Folk"})
    assert r.json["decisions"][0]["genre"] == "Folk"
    r = post_json(client, f"/suggestions/{sids[2]}/set", {"genre": "Folk"})
    assert r.status_code == 409 and "already" in r.json["error"]
    r = post_json(client, f"/suggestions/{sids[3]}/set", {"genre": "Polka"})
    assert r.status_code == 400
    r = post_json(client, "/suggestions/999/reject")
    assert r.status_code == 404
    # Plain form (no JavaScript): redirect back to the page it came from, with a message.
    r = client.post(f"/suggestions/{sids[3]}/reject",
                    data={"csrf_token": csrf(client), "next": "/?sort=uncertain"})
    assert r.status_code == 303 and r.headers["Location"].endswith("/?sort=uncertain")
    assert "Marked as not this genre" in client.get("/").get_data(as_text=True)
    r = client.post(f"/suggestions/{sids[3]}/reject",
                    data={"csrf_token": csrf(client), "next": "//evil.example/"})
    assert r.headers["Location"] == "/"
    # u: undo the newest decision (the reject), then the one before it.
    r = post_json(client, "/undo-last")
    assert r.json["decisions"][0]["undoes_id"] is not None
    history = client.get("/history").get_data(as_text=True)
    assert "Undid #" in history and "Changed to <strong>Folk</strong>" in history
    assert "Waiting to be written" in history
    assert client.woken.count == 5


def test_bulk_accept_shows_the_count_before_confirming(station, client):
    sessions = station.sessions
    for i, c in enumerate((0.99, 0.95, 0.91, 0.5)):
        add_suggested_track(sessions, f"B/{i}.mp3", top=(("Jazz" if i else "Metal", c),))
    page = client.get("/bulk?threshold=90").get_data(as_text=True)
    assert 'id="bulk-count">3<' in page and "Jazz: 2" in page and "Metal: 1" in page
    up_to = re.search(r'name="up_to_id" value="(\d+)"', page).group(1)
    add_suggested_track(sessions, "B/late.mp3", top=(("Jazz", 0.99),))
    r = client.post("/bulk", data={"csrf_token": csrf(client), "threshold": "0.9",
                                   "up_to_id": up_to})
    assert r.status_code == 303
    assert 'id="total">2<' in client.get("/").get_data(as_text=True)
    assert "No waiting suggestion" in client.get("/bulk?threshold=100").get_data(as_text=True)
    assert client.get("/bulk?threshold=abc").status_code == 400


def test_models_page_shows_metrics_and_confusion(station, client):
    sessions = station.sessions
    assert "No model yet" in client.get("/models").get_data(as_text=True)
    with sessions() as session, session.begin():
        session.add(Model(version=1, path="/m/v1/model.onnx", sha256="a" * 64, status="retired",
                          classes=["Jazz", "Rock"], metrics={"accuracy": 0.7}, n_songs=80))
        session.add(Model(version=2, path="/m/v2/model.onnx", sha256="b" * 64, status="active",
                          classes=["Jazz", "Rock"], n_songs=120, activated_at=utcnow(),
                          metrics={"accuracy": 0.875, "macro_f1": 0.86, "genres": ["Jazz", "Rock"],
                                   "confusion": [[9, 1], [2, 12]],
                                   "per_class": {"Jazz": {"precision": 0.82, "recall": 0.9,
                                                          "f1": 0.86, "support": 10},
                                                 "Rock": {"precision": 0.92, "recall": 0.86,
                                                          "f1": 0.89, "support": 14}}}))
    page = client.get("/models").get_data(as_text=True)
    assert "In use" in page and "Replaced" in page and "88%" in page
    assert "Version 2, genre by genre" in page and "What it confuses" in page
    assert re.search(r'class="shade9 diagonal">9<', page)
    page = client.get("/models?version=1").get_data(as_text=True)
    assert "Version 1" in page and "No confusion matrix" in page


@pytest.fixture
def song_track(station, make_song):
    sessions, library = station.sessions, station.library
    path = make_song("Artist/Song.ogg", genre="Jazz", seconds=20, folder=library)
    st = path.stat()
    track_id, sid = add_suggested_track(sessions, "Artist/Song.ogg", fmt="ogg",
                                        size=st.st_size, mtime=st.st_mtime, duration=20.0,
                                        fingerprint=fingerprint(path))
    return track_id, path


def test_spectrogram_thumbnail_is_a_png(station, client, song_track):
    config = station.config
    track_id, _ = song_track
    r = client.get(f"/tracks/{track_id}/spectrogram.png")
    assert r.status_code == 200 and r.mimetype == "image/png"
    image = Image.open(io.BytesIO(r.data))
    assert image.size == (5 * 49 + 4, 64)
    # Decoded once, then served from the feature cache.
    assert any(config.cache_dir.rglob("*.npy"))
    pixels = np.asarray(image)
    assert pixels.std() > 10  # a picture, not a flat colour


def test_audio_preview_plays_clip_regions_with_range(station, client, song_track):
    track_id, _ = song_track
    r = client.get(f"/tracks/{track_id}/preview.wav")
    assert r.status_code == 200 and r.mimetype == "audio/wav"
    assert r.headers["Accept-Ranges"] == "bytes"
    samples, sr = sf.read(io.BytesIO(r.data))
    expected = sum(s for _, s in preview_windows(20.0)) + 4 * 0.25
    assert abs(len(samples) / sr - expected) < 0.2 and np.abs(samples).max() > 0.05
    r2 = client.get(f"/tracks/{track_id}/preview.wav", headers={"Range": "bytes=100-1099"})
    assert r2.status_code == 206
    assert r2.headers["Content-Range"] == f"bytes 100-1099/{len(r.data)}"
    assert r2.data == r.data[100:1100]
    assert client.get("/tracks/9999/preview.wav").status_code == 404


def test_unreadable_song_is_a_message_not_a_crash(station, client):
    sessions, library = station.sessions, station.library
    (library / "bad.mp3").write_bytes(b"no audio here" * 50)
    track_id, _ = add_suggested_track(sessions, "bad.mp3")
    for url in (f"/tracks/{track_id}/preview.wav", f"/tracks/{track_id}/spectrogram.png"):
        r = client.get(url)
        assert r.status_code == 422


def test_history_shows_write_failures_in_plain_words(station, client):
    sessions = station.sessions
    track_id, sid = add_suggested_track(sessions, "C/one.mp3")
    post_json(client, f"/suggestions/{sid}/accept")
    with sessions() as session, session.begin():
        decision = session.query(Decision).one()
        decision.write_status, decision.write_error = "failed", "the file is read-only"
    page = client.get("/").get_data(as_text=True)
    assert "could not be written yet" in page
    page = client.get("/history?show=unwritten").get_data(as_text=True)
    assert "Not written yet: the file is read-only" in page
    with sessions() as session:
        assert session.get(Track, track_id).state == "reviewed"


def test_models_page_shows_last_and_next_retraining(station, client):
    from daemon.core.db.models import TrainingRun

    sessions = station.sessions
    page = client.get("/models").get_data(as_text=True)
    assert "It has not learned from reviews yet." in page
    assert "Next time: " in page  # nightly learning is on by default
    with sessions.begin() as db:
        db.add(TrainingRun(trigger="nightly", status="rejected", started_at=utcnow(),
                           reason="macro-F1 dropped 4.0 points (limit 0.5)"))
    page = client.get("/models").get_data(as_text=True)
    assert "the new version was not better, so the old one stays in use" in page
    assert "macro-F1 dropped 4.0 points" in page
