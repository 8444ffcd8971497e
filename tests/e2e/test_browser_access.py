"""The review page for everyone, in a real browser (Debian's chromium through Playwright)
against the real WebServer: axe-core (npm's, installed by `make test` into the
virtualenv) finds no violation on any page or confirm step, on a desktop and on a phone;
on a phone the page opens at its top, an action's result and its undo are on screen, the
History and Genre model pages fit the screen's width and every control is big enough for
a finger. Screenshots go to test-artifacts/ (gitignored)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from chromium import ARTIFACTS, SONGS, browser_page
from helpers import add_album_song, add_suggested_track
from playwright.sync_api import expect
from sqlalchemy import select, update

from daemon.core.db.models import Decision, Model, Suggestion, Track, TrainingRun, utcnow
from daemon.library.albums import album_key
from daemon.review.web import WebServer

pytestmark = pytest.mark.slow  # a real browser

# Where `make test` installs npm's axe-core (the Makefile's AXE_CORE).
AXE = Path(sys.prefix) / "share" / "genretagger" / "node_modules" / "axe-core" / "axe.min.js"
TOKEN = "access-test-token-0123456789abcdef"
DESKTOP = {"viewport": {"width": 1366, "height": 900}}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 3,
         "is_mobile": True, "has_touch": True}
GENRES = ["Blues", "Country", "Electronic", "Folk", "Jazz", "Rock"]
CONFUSION = [[8, 1, 0, 1, 1, 0], [1, 6, 0, 2, 0, 0], [0, 0, 11, 0, 0, 1],
             [1, 1, 0, 7, 0, 1], [1, 0, 0, 0, 9, 0], [0, 0, 1, 0, 0, 0]]


@pytest.fixture
def served_station(make_station, make_song):
    """(review page server, sessions) of a signed-in station with songs to review (one with
    songs it sounds like), an album, a model with its tournament, a nightly run and a genre
    it cannot suggest yet."""
    station = make_station(review={"token": TOKEN})
    config, sessions, library = station.config, station.sessions, station.library
    for i, (rel, title, artist, top) in enumerate(SONGS):
        rel = f"Donations/Boxes from the Old Studio/Shelf {i}/{rel}"
        path = make_song(Path(rel).name, genre="Rock", seconds=3, folder=library / Path(rel).parent,
                         seed=i)
        add_suggested_track(sessions, rel, top, fmt=rel.rsplit(".", 1)[1], title=title,
                            artist=artist, size=path.stat().st_size, mtime=path.stat().st_mtime,
                            duration=3.0)
    key = album_key("album", "late sets", "quartet nine")
    for n, (title, top) in enumerate((("Opening", (("Jazz", 0.9), ("Blues", 0.1))),
                                      ("Ballad", (("Jazz", 0.8), ("Blues", 0.2))),
                                      ("Shuffle", (("Blues", 0.6), ("Jazz", 0.4))))):
        rel = f"Quartet Nine/Late Sets/{n + 1} {title}.mp3"
        path = make_song(Path(rel).name, genre="Jazz", seconds=3,
                         folder=library / Path(rel).parent, seed=n)
        add_album_song(sessions, rel, key, top, album="Late Sets", title=title,
                       artist="Quartet Nine", album_artist="Quartet Nine",
                       size=path.stat().st_size, mtime=path.stat().st_mtime)
    with sessions() as session, session.begin():
        night = session.scalar(select(Suggestion).join(Track).where(Track.title == "Night Drive"))
        night.sounds_like = [
            {"track_id": t.id, "path": t.path, "genre": g, "similarity": s}
            for t, g, s in zip(session.scalars(select(Track).where(Track.title.in_(
                ["Blue Porch", "Fast Lane", "Late Set"])).order_by(Track.id)),
                ["Blues", "Rock", "Jazz"], [0.97, 0.91, 0.8], strict=True)]
        per_class = {}
        for i, genre in enumerate(GENRES):
            said, songs = sum(r[i] for r in CONFUSION), sum(CONFUSION[i])
            per_class[genre] = {"precision": CONFUSION[i][i] / said, "f1": 0.8,
                                "recall": CONFUSION[i][i] / songs, "support": songs}
        rows = [{"family": f, "accuracy": a, "macro_f1": a - 0.03, "ece": e, "temperature": 1.0,
                 "calibration": c, "train_seconds": s, "recall": {g: 0.8 for g in GENRES}}
                for f, a, e, c, s in (("cnn", 0.79, 0.061, "fitted", 95.0),
                                      ("backbone", 0.71, 0.12, "1.0 (fit on too few songs)", 4.0),
                                      ("ensemble", 0.78, 0.05, "fitted", 99.0))]
        model = Model(version=4, path="/m/v4/model.onnx", sha256="d" * 64, status="active",
                      classes=GENRES, n_songs=312, activated_at=utcnow(),
                      metrics={"accuracy": 0.77, "macro_f1": 0.76, "n_songs": 53,
                               "genres": GENRES, "confusion": CONFUSION,
                               "per_class": per_class,
                               "tournament": {"holdout_songs": 64, "winner": "cnn", "rows": rows,
                                              "why": "best macro-F1 76.0 on the same test songs; "
                                                     "+1.0 points over ensemble (95% interval "
                                                     "-4.1 to +6.0, McNemar p = 1) (a tie goes "
                                                     "to the family cheaper to serve)"}})
        session.add(model)
        session.flush()
        session.add(TrainingRun(trigger="nightly", status="promoted", model_id=model.id,
                                reason="v0004 active; gate: no active model to compare with",
                                started_at=utcnow(), finished_at=utcnow()))
    server = WebServer(config, sessions, port=0)
    server.start()
    yield server, sessions
    server.close()


# An action may wait behind the page's spectrograms (each decodes its song in a child
# process); on a busy machine that outlasts expect's default 5 s.
ACTION_MS = 30_000


def axe_violations(page) -> list[str]:
    """axe-core's violations on the page as it is now: "rule: where (why)" lines."""
    page.add_script_tag(path=str(AXE))
    found = page.evaluate("""async () => {
        const result = await axe.run(document, { resultTypes: ["violations"] });
        return result.violations.map(v => v.id + ": " + v.nodes.map(
            n => n.target.join(" ") + " (" + n.failureSummary.replace(/\\s+/g, " ") + ")"
        ).join("; "));
    }""")
    return found


def card(page, title: str):
    """The song's card (by its heading: another card may name it under "Sounds like")."""
    return page.locator("article.song").filter(has=page.locator("h2", has_text=title))


def sign_in(page, server) -> None:
    page.goto(server.url + "login")
    page.fill("input[name=password]", TOKEN)
    with page.expect_navigation():
        page.click("form.login button[type=submit]")
    page.wait_for_function("() => window.genretagger")  # the page's script is running


@pytest.mark.parametrize("device", ["desktop", "phone"])
def test_axe_finds_nothing_on_any_page(served_station, device):
    """Every page and confirm step, with History showing each kind of file status, the
    toast after an action on the queue and the model's details open."""
    server, sessions = served_station
    assert AXE.is_file(), f"{AXE} is missing: `make test` installs npm's axe-core there"
    checked = {}
    # Playwright injects axe as an inline script; the page's CSP (checked by
    # test_browser.py) rightly forbids those, so this context lets it through.
    with browser_page(bypass_csp=True, **(PHONE if device == "phone" else DESKTOP)) as page:
        page.goto(server.url + "login")
        checked["login"] = axe_violations(page)
        sign_in(page, server)
        expect(page.locator("#total")).to_have_text("8")
        checked["queue"] = axe_violations(page)
        # What a screen reader says: the genre and how sure, each play link its song.
        night = card(page, "Night Drive")
        expect(night.locator("button.choice").first).to_have_accessible_name(
            "Accept Electronic 93% sure")
        expect(night.locator("a.play-alike")).to_have_count(3)
        for name in ("Blue Porch by Delta Ray", "Fast Lane by Iron Kettle",
                     "Late Set by Quartet Nine"):
            expect(night.get_by_role("link", name=f"Play {name}", exact=True)).to_have_count(1)
        card(page, "Fast Lane").locator("button.choice").first.click()
        expect(page.locator("#status")).to_contain_text("Accepted Rock", timeout=ACTION_MS)
        checked["queue after an action"] = axe_violations(page)
        page.screenshot(path=str(ARTIFACTS / f"access-toast-{device}.png"))
        card(page, "Late Set").locator("button.reject").click()
        expect(page.locator("#total")).to_have_text("6", timeout=ACTION_MS)
        page.goto(server.url + "albums")
        checked["albums"] = axe_violations(page)
        page.locator("article.album a.accept-all").click()
        expect(page.locator("#album-confirm")).to_be_visible()
        checked["album confirm"] = axe_violations(page)
        page.goto(server.url + "bulk?threshold=50")
        expect(page.locator("#bulk-confirm")).to_be_visible()
        checked["bulk confirm"] = axe_violations(page)
        with sessions() as session, session.begin():
            first, second = session.scalars(select(Decision).order_by(Decision.id)).all()
            session.execute(update(Decision).where(Decision.id == first.id)
                            .values(write_status="written"))
            session.execute(update(Decision).where(Decision.id == second.id)
                            .values(write_status="failed", write_error="the file is read-only"))
        page.goto(server.url + "history")
        expect(page.locator("table.history td.write.written")).to_have_count(1)
        checked["history"] = axe_violations(page)
        page.goto(server.url)
        expect(page.locator("#backlog")).to_contain_text("could not be written yet")
        checked["queue with a write backlog"] = axe_violations(page)
        page.goto(server.url + "models")
        page.locator("details.statistics summary").click()
        expect(page.locator("table.tournament")).to_be_visible()
        checked["models"] = axe_violations(page)
        page.screenshot(path=str(ARTIFACTS / f"access-models-{device}.png"), full_page=True)
    failures = [f"{name}: {line}" for name, found in checked.items() for line in found]
    assert not failures, "\n".join(failures)


def test_axe_finds_nothing_on_an_empty_station(sqlite_station):
    """Before any song or model: the empty queue, albums, history and model pages."""
    server = WebServer(sqlite_station.config, sqlite_station.sessions, port=0)
    server.start()
    try:
        with browser_page(bypass_csp=True, **DESKTOP) as page:
            checked = {}
            for path, empty in (("", "Nothing waiting for review"),
                                ("albums", "No album has songs waiting"),
                                ("history", "No decisions yet"), ("models", "No model yet")):
                page.goto(server.url + path)
                expect(page.locator("main")).to_contain_text(empty)
                checked[path or "queue"] = axe_violations(page)
    finally:
        server.close()
    failures = [f"{name}: {line}" for name, found in checked.items() for line in found]
    assert not failures, "\n".join(failures)


def test_on_a_phone(served_station):
    """390 x 844, touch: the page opens at its top; a tap's result and its Undo show on
    screen however far down the card was; the undo's result too; History and the model page
    (its verdict on the first screen) are no wider than the phone; every control is at least
    44 px tall and wide."""
    server, sessions = served_station
    with browser_page(**PHONE) as page:
        sign_in(page, server)
        expect(page.locator("#total")).to_have_text("8")
        page.wait_for_load_state("load")
        assert page.evaluate("() => window.scrollY") == 0
        expect(page.locator("h1")).to_be_in_viewport()
        expect(page.locator("article.song").first).to_have_class("song current")
        small = page.evaluate(TOO_SMALL)
        assert small == [], small
        page.screenshot(path=str(ARTIFACTS / "phone-queue-top.png"))

        last = page.locator("article.song").last
        title = last.locator("h2").inner_text()
        last.locator("button.reject").tap()  # far below the first screen
        expect(page.locator("#total")).to_have_text("7", timeout=ACTION_MS)
        assert page.evaluate("() => window.scrollY") > 844
        toast = page.locator("#status")
        expect(toast).to_contain_text("Marked as not this genre")
        expect(toast).to_be_in_viewport(ratio=1.0)
        undo = toast.locator("button.undo-last")
        expect(undo).to_be_in_viewport(ratio=1.0)
        page.screenshot(path=str(ARTIFACTS / "phone-after-action.png"))
        undo.tap()
        expect(card(page, title)).to_have_count(1, timeout=ACTION_MS)
        expect(page.locator("#total")).to_have_text("8")
        expect(toast).to_contain_text("Undone")
        expect(toast).to_be_in_viewport(ratio=1.0)
        assert page.evaluate("() => window.scrollY") == 0
        toast.locator("button.close").tap()
        expect(toast).to_be_hidden()
        with sessions() as session:
            made = session.scalars(select(Decision).order_by(Decision.id)).all()
        assert [(d.action, d.undone) for d in made] == [("reject", True), ("undo", False)]

        for path, name in (("history", "phone-history"), ("models", "phone-models"),
                           ("albums", "phone-albums"), ("bulk?threshold=50", "phone-bulk")):
            page.goto(server.url + path)
            page.wait_for_load_state("load")
            assert page.evaluate("() => window.scrollY") == 0, path  # opens at its top
            if path == "models":
                expect(page.locator("#verdict")).to_have_text(
                    "Suggests 6 of your 10 genres; right on 41 of 53 test songs by artists it "
                    "never heard.")
                expect(page.locator("#verdict")).to_be_in_viewport()
                page.locator("details.statistics summary").tap()
            width = page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= 390, (path, width)
            small = page.evaluate(TOO_SMALL)
            assert small == [], (path, small)
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# Every visible control smaller than 44 x 44 CSS pixels, as "tag.class 'text' w x h".
TOO_SMALL = """() => Array.from(document.querySelectorAll(
        "a, button, select, input:not([type=hidden]), summary, audio"))
    .filter(e => e.getClientRects().length && getComputedStyle(e).visibility !== "hidden")
    .map(e => [e, e.getBoundingClientRect()])
    .filter(([e, r]) => r.width < 44 || r.height < 44)
    .map(([e, r]) => e.tagName.toLowerCase() + "." + e.className + " '"
         + e.textContent.trim().slice(0, 30) + "' " + Math.round(r.width) + "x"
         + Math.round(r.height))"""
