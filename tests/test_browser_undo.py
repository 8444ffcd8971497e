"""Undo in a real browser (Debian's chromium through Playwright), with the real WebServer
and the real Writer putting genres into real files and taking them out again: after `u`
the page says what the file holds, read from the file; a bulk accept is confirmed by name
and undone in one step."""

from __future__ import annotations

from pathlib import Path

from helpers import add_suggested_track, wait_for
from playwright.sync_api import expect
from sqlalchemy import select
from test_browser import ARTIFACTS, browser_page

from daemon.core.db.models import Decision
from daemon.library.fingerprint import fingerprint
from daemon.review.web import WebServer
from daemon.review.writeback import Writer
from daemon.tags.read import read_tags
from daemon.tags.restore import genre_fields

SONGS = [  # file, title, the genre tag in the file, top-2
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
    library = tmp_path / "library"
    config = make_config(library)
    _, sessions = database
    paths = {}
    for rel, title, tag, top in SONGS:
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
    server = WebServer(config, sessions, port=0, on_decision=writer.wake)
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

