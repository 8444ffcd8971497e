"""The review page in a real browser (Debian's chromium through Playwright) against the
real WebServer on a real DB with real encoded songs: keyboard accept, override, bulk
accept, undo, the audio preview (206 for a Range request). Screenshots go to
test-artifacts/ (gitignored)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from chromium import ARTIFACTS, SONGS, browser_page
from helpers import add_suggested_track
from playwright.sync_api import expect
from sqlalchemy import select

from daemon.audio.fingerprint import fingerprint
from daemon.core.db.models import Decision, Model, Suggestion, Track, utcnow
from daemon.review.web import WebServer

pytestmark = pytest.mark.slow  # a real browser


@pytest.fixture
def served(request, tmp_path, make_config, database, make_song):
    """The real server on songs and a model; parametrize with a URL prefix ("/radio")."""
    library = tmp_path / "library"
    config = make_config(library)
    _, sessions = database
    genres = {"mp3": "Electronic", "flac": "Blues", "ogg": "Rock", "m4a": "Jazz", "opus": "Folk"}
    for rel, title, artist, top in SONGS:
        folder = library / Path(rel).parent
        path = make_song(Path(rel).name, genre=genres[rel.rsplit(".", 1)[1]], seconds=15,
                         folder=folder, seed=len(title))
        st = path.stat()
        add_suggested_track(sessions, rel, top, fmt=rel.rsplit(".", 1)[1], title=title,
                            artist=artist, size=st.st_size, mtime=st.st_mtime, duration=15.0,
                            fingerprint=fingerprint(path),
                            raw_genre="Misc" if "Fast" in title else None)
    with sessions() as session, session.begin():
        classes = ["Blues", "Electronic", "Folk", "Jazz", "Rock"]
        confusion = [[8, 0, 1, 1, 0], [0, 11, 0, 0, 1], [2, 0, 7, 0, 1], [1, 0, 0, 9, 0],
                     [0, 1, 1, 0, 12]]
        per_class = {g: {"precision": 0.8, "recall": row[i] / sum(row), "f1": 0.8,
                         "support": sum(row)}
                     for i, (g, row) in enumerate(zip(classes, confusion, strict=True))}
        session.add(Model(version=3, path="/m/v3/model.onnx", sha256="c" * 64, status="active",
                          classes=classes, n_songs=240, activated_at=utcnow(),
                          metrics={"accuracy": 0.82, "macro_f1": 0.81, "genres": classes,
                                   "confusion": confusion, "per_class": per_class}))
    server = WebServer(config, sessions, port=0, url_prefix=getattr(request, "param", ""))
    server.start()
    yield server, sessions
    server.close()


@pytest.fixture
def page(served):
    with browser_page() as page:
        yield page


def decisions(sessions) -> list[Decision]:
    with sessions() as session:
        return list(session.scalars(select(Decision).order_by(Decision.id)))


def suggestion_for(sessions, title: str) -> Suggestion:
    with sessions() as session:
        return session.scalar(select(Suggestion).join(Track).where(Track.title == title))


def test_review_in_a_real_browser(served, page):
    server, sessions = served
    page.goto(server.url)
    expect(page.locator("#total")).to_have_text("5")
    expect(page.locator("article.song").first).to_have_class("song current")
    # Thumbnails render (PNG decoded by the browser).
    page.wait_for_function("() => Array.from(document.querySelectorAll('img.spectrogram'))"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(ARTIFACTS / "review-queue.png"), full_page=True)

    # a: accept the top genre of the first (most sure) song.
    page.keyboard.press("a")
    expect(page.locator("#total")).to_have_text("4")
    expect(page.locator("#status")).to_contain_text("Accepted Electronic")
    [d1] = decisions(sessions)
    assert (d1.action, d1.genre, d1.how) == ("accept", "Electronic", "single")

    # j then 2: the second song's runner-up genre (an override).
    page.keyboard.press("j")
    expect(page.locator("article.song.current h2")).to_have_text("Fast Lane")
    page.keyboard.press("2")
    expect(page.locator("#total")).to_have_text("3")
    d2 = decisions(sessions)[-1]
    assert (d2.action, d2.genre) == ("override", "Metal")
    assert suggestion_for(sessions, "Fast Lane").status == "overridden"

    # Override with another genre from the list.
    row = page.locator("article.song", has_text="Morning")
    row.locator("select[name=genre]").select_option("Country")
    row.locator("button.set-button").click()
    expect(page.locator("#total")).to_have_text("2")
    d3 = decisions(sessions)[-1]
    assert (d3.action, d3.genre) == ("override", "Country")

    # u: undo the last decision; the song comes back.
    page.keyboard.press("u")
    expect(page.locator("article.song", has_text="Morning")).to_be_visible()
    expect(page.locator("#total")).to_have_text("3")
    assert decisions(sessions)[-2].undone and decisions(sessions)[-1].action == "undo"

    # r: reject the current song.
    page.locator("article.song", has_text="Late Set").locator("h2").click()
    expect(page.locator("article.song.current h2")).to_have_text("Late Set")
    page.keyboard.press("r")
    expect(page.locator("#total")).to_have_text("2")
    assert suggestion_for(sessions, "Late Set").status == "rejected"

    # Bulk accept: the count is shown before confirming.
    page.fill("#bulk-threshold", "90")
    page.click("#bulk-count-button")
    expect(page.locator("#bulk-count")).to_have_text("1")
    page.screenshot(path=str(ARTIFACTS / "review-bulk.png"))
    page.click("#bulk-confirm")
    expect(page.locator("#total")).to_have_text("1")
    assert suggestion_for(sessions, "Blue Porch").status == "accepted"
    assert decisions(sessions)[-1].how == "bulk"

    # History: every decision with undo buttons.
    page.click("text=History")
    expect(page.locator("table.history tbody tr")).to_have_count(6)
    page.screenshot(path=str(ARTIFACTS / "review-history.png"), full_page=True)
    page.locator(f"#d{d2.id} button.undo").click()
    expect(page.locator(f"#d{d2.id}")).to_have_class("undone")
    assert suggestion_for(sessions, "Fast Lane").status == "pending"

    # The model page: metrics and the confusion matrix in plain words.
    page.click("text=Genre model")
    expect(page.locator("table.confusion tbody tr")).to_have_count(5)
    expect(page.locator("table.models")).to_contain_text("In use")
    page.screenshot(path=str(ARTIFACTS / "review-models.png"), full_page=True)


def test_audio_preview_in_the_browser(served, page):
    server, sessions = served
    page.goto(server.url)
    track_id = page.locator("article.song").first.get_attribute("data-track")
    url = f"{server.url}tracks/{track_id}/preview.wav"
    whole = page.request.get(url)
    assert whole.status == 200 and whole.body()[:4] == b"RIFF"
    part = page.request.get(url, headers={"Range": "bytes=0-1023"})
    assert part.status == 206 and len(part.body()) == 1024
    assert part.headers["content-range"] == f"bytes 0-1023/{len(whole.body())}"
    assert part.body() == whole.body()[:1024]
    # The browser's own player loads it (by Range requests) and knows its length.
    duration = page.evaluate("""() => new Promise((resolve, reject) => {
        const audio = document.querySelector('article.song audio');
        audio.addEventListener('loadedmetadata', () => resolve(audio.duration));
        audio.addEventListener('error', () => reject(new Error('audio error')));
        audio.preload = 'metadata';
        audio.load();
    })""")
    assert 14.0 < duration < 17.0


@pytest.mark.parametrize("served", ["/radio"], indirect=True)
def test_keyboard_review_under_a_url_prefix(served, page):
    """Behind a proxy at /radio/: the script's posts (the row's form, undo-last from the
    page's data attribute) and a plain form's redirect all stay under /radio/."""
    server, sessions = served
    assert server.url.endswith("/radio/")
    # A proxy at /radio/ forwards nothing else: every request must stay under it.
    outside = []
    page.on("request", lambda r: None if r.url.startswith(server.url) else outside.append(r.url))
    page.goto(server.url)
    expect(page.locator("#total")).to_have_text("5")
    page.keyboard.press("a")
    expect(page.locator("#status")).to_contain_text("Accepted Electronic")
    expect(page.locator("#total")).to_have_text("4")
    page.keyboard.press("u")
    expect(page.locator("article.song", has_text="Night Drive")).to_be_visible()
    expect(page.locator("#total")).to_have_text("5")
    first, undo = decisions(sessions)
    assert first.undone and undo.action == "undo"
    assert outside == []
    # Without the script (a plain form post): back to the same page under the prefix.
    page.goto(server.url + "?sort=uncertain")
    with page.expect_navigation():
        page.evaluate("() => document.querySelector('article.song form.act').submit()")
    assert page.url == server.url + "?sort=uncertain"
    expect(page.locator("p.flash").first).to_contain_text("Accepted")
    expect(page.locator("#total")).to_have_text("4")
    assert outside == []


def test_sounds_like_plays_in_the_browser(served, page):
    """The sounds-like block of a suggestion: the song's name, its genre and how alike in
    words; its play link plays that song's preview in the page's player, a second click
    pauses it."""
    server, sessions = served
    night = suggestion_for(sessions, "Night Drive")
    with sessions() as session, session.begin():
        porch = session.scalar(select(Track).where(Track.title == "Blue Porch"))
        porch.confirmed_genre = "Blues"
        session.get(Suggestion, night.id).sounds_like = [
            {"track_id": porch.id, "path": porch.path, "genre": "Blues", "similarity": 0.93}]
        porch_id = porch.id
    page.goto(server.url)
    block = page.locator(f"#s{night.id} .sounds-like")
    expect(block).to_contain_text("Sounds like")
    expect(block).to_contain_text("Blue Porch by Delta Ray (Blues) close")
    link = block.locator("a.play-alike")
    link.click()
    expect(link).to_have_text("❚❚ Pause")
    page.wait_for_function("() => document.getElementById('alike-player').currentTime > 0.2",
                           timeout=15_000)
    src = page.evaluate("() => document.getElementById('alike-player').currentSrc")
    assert src.endswith(f"/tracks/{porch_id}/preview.wav")
    link.click()
    expect(link).to_have_text("▶ Play")
    assert page.evaluate("() => document.getElementById('alike-player').paused")
    page.screenshot(path=str(ARTIFACTS / "review-sounds-like.png"), full_page=True)


# ---------------------------------------------------------------- by album

ALBUM_SONGS = [  # file, title, suggested top-3
    ("Quartet Nine/Late Sets/1 Opening.mp3", "Opening", (("Jazz", 0.9), ("Blues", 0.1))),
    ("Quartet Nine/Late Sets/2 Ballad.mp3", "Ballad", (("Jazz", 0.8), ("Blues", 0.2))),
    ("Quartet Nine/Late Sets/3 Shuffle.mp3", "Shuffle", (("Blues", 0.6), ("Jazz", 0.4))),
    ("Iron Kettle/Loud/1 Start.mp3", "Start", (("Rock", 0.7), ("Metal", 0.3))),
]


def exiftool_genre(path: Path) -> str:
    return subprocess.run(["exiftool", "-s3", "-Genre", str(path)], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_accept_an_album_by_keyboard_and_undo_it_in_one_step(tmp_path, make_config,
                                                              database, make_song):
    """By album: A on the first album, the confirm step says 3 files will be written,
    Enter confirms; 3 decisions share one batch and the writer puts Jazz into the files
    (read back by exiftool); u undoes the whole action and the old tag goes back."""
    from helpers import add_album_song

    from daemon.library.albums import album_key
    from daemon.review.writeback import Writer

    library = tmp_path / "library"
    config = make_config(library)
    _, sessions = database
    keys = {"Late Sets": album_key("album", "late sets", "quartet nine"),
            "Loud": album_key("album", "loud", "iron kettle")}
    files = {}
    for rel, title, top in ALBUM_SONGS:
        album = rel.split("/")[1]
        path = make_song(Path(rel).name, genre=top[0][0], seconds=6,
                         folder=library / Path(rel).parent, title=title, album=album,
                         genre_tag="Misc")
        st = path.stat()
        files[title] = path
        add_album_song(sessions, rel, keys[album], top, album=album, title=title,
                       artist=rel.split("/")[0], album_artist=rel.split("/")[0],
                       size=st.st_size, mtime=st.st_mtime, fingerprint=fingerprint(path),
                       raw_genre="Misc")
    server = WebServer(config, sessions, port=0)
    server.start()
    try:
        with browser_page() as page:
            page.goto(server.url)
            page.click("text=By album")
            expect(page.locator("#album-total")).to_have_text("2")
            # Most in agreement first: Loud (1 of 1), then Late Sets (2 of 3).
            expect(page.locator("article.album").first).to_have_class("album current")
            expect(page.locator("article.album.current h2")).to_have_text("Loud")
            page.keyboard.press("j")
            current = page.locator("article.album.current")
            expect(current.locator("h2")).to_have_text("Late Sets")
            expect(current.locator(".agree")).to_have_text("2 of 3 agree")
            expect(current.locator("tr.disagrees")).to_have_count(1)
            expect(current.locator("tr.disagrees")).to_contain_text("Shuffle")
            page.keyboard.press("k")
            expect(page.locator("article.album.current h2")).to_have_text("Loud")
            page.keyboard.press("j")
            page.screenshot(path=str(ARTIFACTS / "review-albums.png"), full_page=True)

            page.keyboard.press("Shift+A")  # Jazz for the whole album: the confirm step
            expect(page.locator("#album-files")).to_have_text("3")
            expect(page.locator("#album-songs")).to_have_text("3")
            page.screenshot(path=str(ARTIFACTS / "review-album-confirm.png"))
            page.keyboard.press("Enter")
            expect(page.locator("p.flash").first).to_contain_text("Jazz for 3 song(s)")
            expect(page.locator("#album-total")).to_have_text("1")

            made = decisions(sessions)
            assert len(made) == 3 and len({d.batch_id for d in made}) == 1
            assert sorted((d.action, d.how, d.genre) for d in made) == [
                ("accept", "album", "Jazz"), ("accept", "album", "Jazz"),
                ("override", "album", "Jazz")]
            assert Writer(config, sessions).run_once().written == 3
            assert {exiftool_genre(files[t]) for t in ("Opening", "Ballad", "Shuffle")} == {
                "Jazz"}
            assert exiftool_genre(files["Start"]) == "Misc"

            page.keyboard.press("u")
            expect(page.locator("#album-total")).to_have_text("2")
            expect(page.locator("p.flash").first).to_contain_text("Undone (3 songs)")
            rows = decisions(sessions)
            assert all(d.undone for d in rows[:3])
            assert [d.action for d in rows[3:]] == ["undo"] * 3
            assert Writer(config, sessions).run_once().written == 3  # the old tag goes back
            assert {exiftool_genre(files[t]) for t in ("Opening", "Ballad", "Shuffle")} == {
                "Misc"}
            assert suggestion_for(sessions, "Shuffle").status == "pending"
    finally:
        server.close()


# ---------------------------------------------------------------- undo puts files back

UNDO_SONGS = [  # file, title, the genre tag in the file, top-2
    ("In/Porch.mp3", "Porch", "Blues", (("Jazz", 0.97), ("Blues", 0.03))),
    ("In/Drive.flac", "Drive", None, (("Electronic", 0.95), ("Pop", 0.05))),
    ("In/Maybe.ogg", "Maybe", None, (("Rock", 0.4), ("Pop", 0.35))),
]


def settled(page) -> None:
    """The page's thumbnails have loaded: on a busy machine they hold the server's few
    threads for a while, and an action posted meanwhile waits behind them."""
    page.wait_for_function("() => Array.from(document.querySelectorAll('img.spectrogram'))"
                           ".every(i => i.complete)", timeout=60_000)


def all_written(sessions) -> bool:
    with sessions() as session:
        return not session.scalars(select(Decision).where(
            Decision.write_status.in_(("pending", "failed")))).first()


def test_undo_after_accept_shows_the_files_real_genre_and_bulk_undoes_in_one_step(
        tmp_path, make_config, database, make_song):
    """With the real Writer putting genres into real files and taking them out again:
    after `u` the page says what the file holds, read from the file; a bulk accept is
    confirmed by name and undone in one step."""
    from helpers import wait_for

    from daemon.review.writeback import Writer
    from daemon.tags.read import read_tags
    from daemon.tags.restore import genre_fields

    library = tmp_path / "library"
    config = make_config(library)
    _, sessions = database
    paths = {}
    for rel, title, tag, top in UNDO_SONGS:
        path = make_song(Path(rel).name, seconds=4, folder=library / Path(rel).parent,
                         title=title, genre_tag=tag)
        st = path.stat()
        add_suggested_track(sessions, rel, top, fmt=rel.rsplit(".", 1)[1], title=title,
                            raw_genre=tag, size=st.st_size, mtime=st.st_mtime,
                            fingerprint=fingerprint(path))
        paths[title] = path
    before = {title: genre_fields(path) for title, path in paths.items()}
    writer = Writer(config, sessions, interval=0.2)
    writer.start()
    server = WebServer(config, sessions, port=0, decision_made=writer.decision_made)
    server.start()
    try:
        with browser_page() as page:
            page.goto(server.url)
            expect(page.locator("#total")).to_have_text("3")
            settled(page)

            # a on Porch (tagged Blues): Jazz goes into the file; u puts Blues back and
            # the page says so, from the file.
            page.keyboard.press("a")
            expect(page.locator("#status")).to_contain_text("Accepted Jazz")
            wait_for(lambda: all_written(sessions), 20, "the accept written")
            assert read_tags(paths["Porch"]).genres == ("Jazz",)
            page.keyboard.press("u")
            expect(page.locator("p.flash").first).to_contain_text(
                "The file's genre now: Blues.")
            card = page.locator("article.song", has_text="Porch")
            expect(card.locator("p.tag")).to_contain_text("Genre in the file now: Blues")
            settled(page)
            assert genre_fields(paths["Porch"]) == before["Porch"]

            # The same on Drive, which had no genre: ours is taken out again.
            page.keyboard.press("j")
            expect(page.locator("article.song.current h2")).to_have_text("Drive")
            page.keyboard.press("a")
            expect(page.locator("#status")).to_contain_text("Accepted Electronic")
            wait_for(lambda: all_written(sessions), 20, "the accept written")
            assert read_tags(paths["Drive"]).genres == ("Electronic",)
            page.keyboard.press("u")
            expect(page.locator("p.flash").first).to_contain_text("The file has no genre now.")
            card = page.locator("article.song", has_text="Drive")
            expect(card.locator("p.tag")).to_contain_text("Genre in the file now: none")
            settled(page)
            assert read_tags(paths["Drive"]).genres == ()
            assert genre_fields(paths["Drive"]) == before["Drive"]

            # Bulk: the confirm step names the songs and the files it writes.
            page.fill("#bulk-threshold", "90")
            page.click("#bulk-count-button")
            expect(page.locator("#bulk-count")).to_have_text("2")
            expect(page.locator("#bulk-files")).to_have_text("2")
            listed = page.locator("#bulk-songs li")
            expect(listed).to_have_count(2)
            expect(page.locator("#bulk-songs")).to_contain_text("Porch")
            expect(page.locator("#bulk-songs")).to_contain_text("Drive")
            page.screenshot(path=str(ARTIFACTS / "review-bulk-confirm.png"), full_page=True)
            page.click("#bulk-confirm")
            expect(page.locator("#total")).to_have_text("1")
            expect(page.locator("p.flash").first).to_contain_text("Press u to undo them all")
            settled(page)
            wait_for(lambda: all_written(sessions), 20, "the bulk accept written")
            assert read_tags(paths["Porch"]).genres == ("Jazz",)
            assert read_tags(paths["Drive"]).genres == ("Electronic",)

            # u right after: both songs back, both files as they were, in one step.
            page.keyboard.press("u")
            expect(page.locator("#total")).to_have_text("3")
            expect(page.locator("p.flash").first).to_contain_text("Undone (2 songs)")
            wait_for(lambda: all_written(sessions), 20, "the undo written")
            for title in ("Porch", "Drive", "Maybe"):
                assert genre_fields(paths[title]) == before[title], title
            with sessions() as session:
                bulk = session.scalars(select(Decision).where(Decision.how == "bulk")).all()
                assert len(bulk) == 2 and len({d.batch_id for d in bulk}) == 1
                assert all(d.undone for d in bulk)
    finally:
        server.close()
        writer.close()

