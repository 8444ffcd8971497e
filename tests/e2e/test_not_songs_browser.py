""""Not a song" on the review page in a real browser (Debian's chromium through
Playwright) against the real WebServer, a real SQLite file and real encoded songs: the
`n` key takes the card out of the queue and the song out of training; `u` brings it back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import add_suggested_track
from playwright.sync_api import expect, sync_playwright
from sqlalchemy import select

from daemon.audio.fingerprint import fingerprint
from daemon.core.db.models import Decision, Suggestion, Track
from daemon.core.states import SuggestionStatus, TrackState
from daemon.review.web import WebServer

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SONGS = [("Incoming/Night Drive.flac", "Night Drive", (("Electronic", 0.93), ("Pop", 0.07))),
         ("Imaging/Station ID.wav", "Station ID", (("Pop", 0.81), ("Rock", 0.19)))]


@pytest.fixture
def served(tmp_path, make_config, database, make_song):
    library = tmp_path / "library"
    config = make_config(library)
    _, sessions = database
    for i, (rel, title, top) in enumerate(SONGS):
        path = make_song(Path(rel).name, genre=top[0][0], seconds=6, folder=library /
                         Path(rel).parent, seed=i)
        st = path.stat()
        add_suggested_track(sessions, rel, top, fmt=rel.rsplit(".", 1)[1], title=title,
                            size=st.st_size, mtime=st.st_mtime, duration=6.0,
                            fingerprint=fingerprint(path))
    server = WebServer(config, sessions, port=0)
    server.start()
    yield server, sessions
    server.close()


def track(sessions, title: str) -> tuple[str, str]:
    with sessions() as session:
        t = session.scalar(select(Track).where(Track.title == title))
        [s] = t.suggestions
        return t.state, s.status


@pytest.mark.slow
def test_not_a_song_by_key_and_its_undo_in_a_real_browser(served):
    server, sessions = served
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(server.url)
        expect(page.locator("#total")).to_have_text("2")
        expect(page.locator(".keys")).to_contain_text("not a song")
        page.keyboard.press("j")  # the station ID (less sure, second)
        expect(page.locator("article.song.current h2")).to_have_text("Station ID")
        page.keyboard.press("n")
        expect(page.locator("#total")).to_have_text("1")
        expect(page.locator("#status")).to_contain_text("Marked not a song")
        expect(page.locator("article.song", has_text="Station ID")).to_have_count(0)
        assert track(sessions, "Station ID") == (TrackState.NOT_A_SONG,
                                                 SuggestionStatus.SUPERSEDED)
        assert track(sessions, "Night Drive") == (TrackState.SUGGESTED,
                                                  SuggestionStatus.PENDING)
        with sessions() as session:
            [mark] = session.scalars(select(Decision)).all()
            assert (mark.action, mark.genre, mark.write_status) == ("not_a_song", None, "none")

        # The page after a reload still does not list it; History names the action.
        page.reload()
        expect(page.locator("#total")).to_have_text("1")
        page.goto(server.url.rstrip("/") + "/history")
        expect(page.locator(f"#d{mark.id}")).to_contain_text("Not a song")

        page.goto(server.url)
        page.keyboard.press("u")
        expect(page.locator("#total")).to_have_text("2")
        expect(page.locator("article.song", has_text="Station ID")).to_have_count(1)
        browser.close()
    assert track(sessions, "Station ID") == (TrackState.SUGGESTED, SuggestionStatus.PENDING)
    with sessions() as session:
        assert session.scalar(select(Suggestion).where(
            Suggestion.status == SuggestionStatus.SUPERSEDED)) is None
    assert not errors, errors
