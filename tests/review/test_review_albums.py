"""Album-at-a-time review and the album consistency audit on real databases (SQLite and
PostgreSQL): the album summaries, accept for the whole album / the agreeing songs, one
batch undone in one step, "use X for all"."""

from __future__ import annotations

import pytest
from helpers import add_album_song
from sqlalchemy import select

from daemon.core.db.models import Decision, Suggestion, Track
from daemon.library.albums import album_key
from daemon.review import albums
from daemon.review import decisions as review

BLUE = album_key("album", "kind of blue", "miles davis")
HITS = album_key("compilation", "road hits", "Various/Road Hits")
DONE = album_key("album", "all tagged", "someone")
MIXED = album_key("album", "mixed up", "the mixers")


def jazz(c=0.9):
    return (("Jazz", c), ("Blues", 1 - c - 0.01), ("Rock", 0.01))


def blues(c=0.8):
    return (("Blues", c), ("Jazz", 1 - c - 0.01), ("Rock", 0.01))


@pytest.fixture
def albums_to_review(station):
    """(config, sessions, {name: (track id, suggestion id)}) of a station with albums whose
    songs wait for review, a tagged album, a loose song and an album of mixed tags."""
    config, sessions = station.config, station.sessions
    blue = dict(album="Kind of Blue", album_artist="Miles Davis", artist="Miles Davis")
    ids = {}
    for i, top in enumerate((jazz(0.9), jazz(0.8), jazz(0.7), blues(0.6))):
        ids[f"blue{i}"] = add_album_song(sessions, f"Miles/Kind of Blue/{i}.mp3", BLUE, top,
                                         title=f"Blue {i}", **blue)
    for i in (4, 5):
        ids[f"blue{i}"] = add_album_song(sessions, f"Miles/Kind of Blue/{i}.flac", BLUE,
                                         tagged="Jazz", fmt="flac", title=f"Blue {i}", **blue)
    for i, (genre, artist) in enumerate((("Rock", "A"), ("Rock", "B"), ("Pop", "C"))):
        ids[f"hits{i}"] = add_album_song(
            sessions, f"Various/Road Hits/{i}.ogg", HITS, ((genre, 0.7), ("Jazz", 0.2),
                                                           ("Blues", 0.1)),
            album="Road Hits", album_artist="Various Artists", artist=artist,
            compilation=True, fmt="ogg")
    add_album_song(sessions, "Someone/All Tagged/1.mp3", DONE, tagged="Folk", album="All Tagged")
    add_album_song(sessions, "loose.mp3", None, jazz())  # on no album: not listed
    for i, genre in enumerate(("Jazz", "Blues", "Jazz")):
        ids[f"mixed{i}"] = add_album_song(sessions, f"Mixers/Mixed Up/{i}.mp3", MIXED,
                                          tagged=genre, album="Mixed Up")
    return config, sessions, ids


def track(sessions, track_id) -> Track:
    with sessions() as session:
        return session.get(Track, track_id)


def status_of(sessions, suggestion_id) -> str:
    with sessions() as session:
        return session.get(Suggestion, suggestion_id).status


def test_albums_with_songs_to_review_are_summarised(albums_to_review):
    config, sessions, ids = albums_to_review
    with sessions() as session:
        found, total = albums.list_albums(session)
        assert total == 2 and [a.key for a in found] == [BLUE, HITS]  # 3 of 4 before 2 of 3
        blue, hits = found
        assert (blue.title, blue.artist, blue.folder, blue.compilation) == (
            "Kind of Blue", "Miles Davis", "Miles/Kind of Blue", False)
        assert (len(blue.songs), len(blue.pending), blue.majority, len(blue.agreeing)) == (
            6, 4, "Jazz", 3)
        assert [s.track.title for s in blue.disagreeing] == ["Blue 3"]
        assert blue.labelled == {"Jazz": 2}
        assert (hits.title, hits.artist, hits.majority, len(hits.agreeing)) == (
            "Road Hits", "Various Artists", "Rock", 2)
        data = albums.album_json(blue, songs=True)
        assert (data["pending"], data["agreeing"], data["songs"]) == (4, 3, 6)
        assert [t["agrees"] for t in data["tracks"]] == [True, True, True, False, None, None]

        by_pending, _ = albums.list_albums(session, albums.AlbumFilter(sort="pending"))
        assert [a.key for a in by_pending] == [BLUE, HITS]
        by_name, _ = albums.list_albums(session, albums.AlbumFilter(sort="album"))
        assert [a.title for a in by_name] == ["Kind of Blue", "Road Hits"]
        rock, total = albums.list_albums(session, albums.AlbumFilter(genre="Rock"))
        assert total == 1 and [a.key for a in rock] == [HITS]
        flac, _ = albums.list_albums(session, albums.AlbumFilter(format="flac"))
        assert [a.key for a in flac] == [BLUE]
        under, _ = albums.list_albums(session, albums.AlbumFilter(folder="Various/"))
        assert [a.key for a in under] == [HITS]
        page2, total = albums.list_albums(session, limit=1, offset=1)
        assert total == 2 and [a.key for a in page2] == [HITS]
        with pytest.raises(review.ReviewError, match="sort must be"):
            albums.list_albums(session, albums.AlbumFilter(sort="loudest"))
        with pytest.raises(albums.UnknownAlbum):
            albums.get_album(session, "0" * 16)


def test_accept_the_agreeing_songs_then_undo_the_batch_in_one_step(albums_to_review):
    config, sessions, ids = albums_to_review
    made = albums.accept_album(sessions, config, BLUE, "Jazz", scope="agreeing", who="md")
    assert len(made) == 3 and len({d.batch_id for d in made}) == 1
    batch = made[0].batch_id
    assert len(batch) == 32 and int(batch, 16) >= 0
    assert {(d.action, d.how, d.genre, d.write_status) for d in made} == {
        ("accept", "album", "Jazz", "pending")}
    for i in range(3):
        assert track(sessions, ids[f"blue{i}"][0]).confirmed_genre == "Jazz"
        assert track(sessions, ids[f"blue{i}"][0]).state == "reviewed"
    assert status_of(sessions, ids["blue3"][1]) == "pending"  # the Blues song waits

    undone = review.undo_batch(sessions, config, batch, who="md")
    assert len(undone) == 3 and {d.action for d in undone} == {"undo"}
    for i in range(3):
        t = track(sessions, ids[f"blue{i}"][0])
        assert (t.confirmed_genre, t.state) == (None, "suggested")
        assert status_of(sessions, ids[f"blue{i}"][1]) == "pending"
    with sessions() as session:
        rows = session.scalars(select(Decision).where(Decision.batch_id == batch)).all()
        assert all(d.undone and d.write_status == "none" for d in rows)
    with pytest.raises(review.CannotUndo, match="already undone"):
        review.undo_batch(sessions, config, batch, who="md")
    with pytest.raises(review.UnknownBatch, match="no album or bulk action"):
        review.undo_batch(sessions, config, "f" * 32, who="md")


def test_accept_one_genre_for_the_whole_album_overrides_the_disagreeing(albums_to_review):
    config, sessions, ids = albums_to_review
    with sessions() as session:
        plan = albums.album_plan(session, config, BLUE, "jazz", scope="all")
        assert [(s.track.title, s.action) for s in plan] == [
            ("Blue 0", "accept"), ("Blue 1", "accept"), ("Blue 2", "accept"),
            ("Blue 3", "override")]
    made = albums.accept_album(sessions, config, BLUE, "jazz", scope="all", who="md")
    assert [(d.action, d.genre) for d in made][-1] == ("override", "Jazz")
    assert status_of(sessions, ids["blue3"][1]) == "overridden"
    with sessions() as session:
        assert albums.list_albums(session)[1] == 1  # only the compilation waits now
        assert session.get(Track, ids["blue4"][0]).confirmed_genre is None  # tagged: untouched
    with pytest.raises(review.NotPending, match="no song would change"):
        albums.accept_album(sessions, config, BLUE, "Jazz", scope="all", who="md")
    with pytest.raises(review.UnknownGenre):
        albums.accept_album(sessions, config, HITS, "Polka", scope="all", who="md")
    with pytest.raises(review.ReviewError, match="scope must be"):
        albums.accept_album(sessions, config, HITS, "Rock", scope="most", who="md")


def test_songs_that_arrive_after_the_confirm_step_are_not_decided_unseen(albums_to_review):
    config, sessions, ids = albums_to_review
    up_to = max(ids[f"hits{i}"][1] for i in range(3))
    late = add_album_song(sessions, "Various/Road Hits/9.ogg", HITS,
                          (("Rock", 0.9), ("Pop", 0.05), ("Jazz", 0.05)), compilation=True)
    made = albums.accept_album(sessions, config, HITS, "Rock", scope="all", who="md",
                               up_to_id=up_to)
    assert len(made) == 3 and status_of(sessions, late[1]) == "pending"


def test_a_batch_with_a_later_decision_on_one_song_is_not_undone_at_all(albums_to_review):
    config, sessions, ids = albums_to_review
    first = albums.accept_album(sessions, config, BLUE, "Jazz", scope="all", who="md")
    # "Use Blues for all": the same songs decided again, the tagged ones relabelled.
    second = albums.accept_album(sessions, config, BLUE, "Blues", scope="all", relabel=True,
                                 who="md")
    assert len(second) == 6  # 4 confirmed Jazz + 2 tagged Jazz, all now Blues
    with pytest.raises(review.CannotUndo, match="came later"):
        review.undo_batch(sessions, config, first[0].batch_id, who="md")
    assert track(sessions, ids["blue0"][0]).confirmed_genre == "Blues"
    with sessions() as session:
        assert review.last_batch(session, "md") == second[0].batch_id
    review.undo_batch(sessions, config, second[0].batch_id, who="md")
    assert track(sessions, ids["blue0"][0]).confirmed_genre == "Jazz"  # the first batch's
    assert track(sessions, ids["blue4"][0]).confirmed_genre is None
    with sessions() as session:
        assert review.last_batch(session, "md") == first[0].batch_id
    review.undo_batch(sessions, config, first[0].batch_id, who="md")
    assert status_of(sessions, ids["blue3"][1]) == "pending"


def test_consistency_audit_lists_mixed_albums_and_use_x_for_all_fixes_them(albums_to_review):
    config, sessions, ids = albums_to_review
    with sessions() as session:
        assert albums.count_mixed(session) == 1
        [mixed], total = albums.list_mixed(session)
        assert total == 1 and mixed.key == MIXED
        assert mixed.labelled == {"Jazz": 2, "Blues": 1}
        assert mixed.genres_present == ["Jazz", "Blues"]
    made = albums.accept_album(sessions, config, MIXED, "Jazz", scope="all", relabel=True,
                               who="md")
    [decision] = made  # only the Blues song changes
    assert (decision.action, decision.how, decision.genre, decision.previous_genre,
            decision.write_status, decision.suggestion_id) == (
        "override", "album", "Jazz", "Blues", "pending", None)
    t = track(sessions, ids["mixed1"][0])
    assert (t.state, t.confirmed_genre, t.confirmed_decision_id) == ("tagged", "Jazz",
                                                                     decision.id)
    with sessions() as session:
        assert albums.count_mixed(session) == 0
    review.undo_batch(sessions, config, decision.batch_id, who="md")
    t = track(sessions, ids["mixed1"][0])
    assert (t.state, t.confirmed_genre) == ("tagged", None)
    with sessions() as session:
        assert albums.count_mixed(session) == 1


def test_status_counts_the_mixed_albums(albums_to_review):
    from daemon.cli.status_text import render_status
    from daemon.service.status import collect_status

    config, sessions, ids = albums_to_review
    data = collect_status(config, sessions)
    assert data["mixed_albums"] == 1
    assert "1 album(s) whose tagged songs carry different genres" in render_status(data)
    albums.accept_album(sessions, config, MIXED, "Blues", scope="all", relabel=True, who="md")
    data = collect_status(config, sessions)
    assert data["mixed_albums"] == 0 and "albums:" not in render_status(data)


def run_album_cli(tmp_path, database_url, *args, input=None):
    import json

    from click.testing import CliRunner

    from daemon.cli import cli

    config_path = tmp_path / "config.toml"
    if not config_path.exists():
        config_path.write_text(f'state_dir = "{tmp_path / "state"}"\n'
                               f'database_url = "{database_url}"\n'
                               f'[library]\nroot = "{tmp_path / "library"}"\n')
    result = CliRunner().invoke(cli, ["--config", str(config_path), "review", "album", *args],
                                input=input)
    data = json.loads(result.stdout) if "--json" in args and result.exit_code == 0 else None
    return result, data


def test_album_commands(albums_to_review, tmp_path, database_url):
    config, sessions, ids = albums_to_review
    result, data = run_album_cli(tmp_path, database_url, "list", "--json")
    assert data["total"] == 2 and data["albums"][0]["key"] == BLUE
    assert (data["albums"][0]["majority"], data["albums"][0]["agreeing"]) == ("Jazz", 3)
    [odd] = data["albums"][0]["disagreeing"]
    assert (odd["title"], odd["genre"], odd["agrees"]) == ("Blue 3", "Blues", False)
    result, _ = run_album_cli(tmp_path, database_url, "list")
    assert "Kind of Blue — Miles Davis" in result.output and "Jazz: 3 of 4 agree" in result.output
    result, _ = run_album_cli(tmp_path, database_url, "show", BLUE)
    assert "Miles/Kind of Blue/3.mp3: suggested Blues 60%  <- disagrees" in result.output
    assert "tagged/confirmed: Jazz 2" in result.output

    # The count comes first; saying no changes nothing.
    result, _ = run_album_cli(tmp_path, database_url, "accept", BLUE, "Jazz", input="n\n")
    assert "4 song(s) get Jazz (1 of them change genre); 4 file(s) will be written" \
        in result.output and result.exit_code != 0
    assert status_of(sessions, ids["blue0"][1]) == "pending"
    result, data = run_album_cli(tmp_path, database_url, "accept", BLUE, "Jazz",
                                 "--agreeing-only", "--yes", "--json")
    assert "3 song(s) get Jazz" in result.stderr
    assert [(d["how"], d["action"]) for d in data["decisions"]] == [("album", "accept")] * 3
    batch = data["decisions"][0]["batch_id"]
    assert {d["batch_id"] for d in data["decisions"]} == {batch}
    result, data = run_album_cli(tmp_path, database_url, "undo", batch, "--json")
    assert [d["action"] for d in data["decisions"]] == ["undo"] * 3
    assert status_of(sessions, ids["blue0"][1]) == "pending"

    result, data = run_album_cli(tmp_path, database_url, "mixed", "--json")
    assert data["total"] == 1 and data["albums"][0]["labelled"] == {"Jazz": 2, "Blues": 1}
    result, _ = run_album_cli(tmp_path, database_url, "mixed")
    assert f"{MIXED}  Mixed Up: Jazz 2, Blues 1" in result.output
    result, _ = run_album_cli(tmp_path, database_url, "use", MIXED, "Jazz", "--yes")
    assert "1 song(s) get Jazz (1 of them change genre); 1 file(s) will be written" \
        in result.output and "batch " in result.output
    assert track(sessions, ids["mixed1"][0]).confirmed_genre == "Jazz"
    # Bad input: typed errors, not tracebacks.
    result, _ = run_album_cli(tmp_path, database_url, "show", "0" * 16)
    assert isinstance(result.exception, albums.UnknownAlbum)
    result, _ = run_album_cli(tmp_path, database_url, "accept", HITS, "Polka", "--yes")
    assert isinstance(result.exception, review.UnknownGenre)


# ---------------------------------------------------------------- the web page

@pytest.fixture
def client(albums_to_review):
    from daemon.review.web import create_app

    config, sessions, _ = albums_to_review
    app = create_app(config, sessions)
    app.testing = True
    return app.test_client()


def csrf_of(client) -> str:
    import re

    page = client.get("/albums").get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)


def test_by_album_page_confirm_accept_and_undo(albums_to_review, client):
    import html
    import re

    config, sessions, ids = albums_to_review
    page = client.get("/albums").get_data(as_text=True)
    assert ">By album</a>" in page and 'id="album-total">2<' in page
    assert "Kind of Blue" in page and "3 of 4 agree" in page and "Various Artists" in page
    [blue] = re.findall(rf'<article class="album" id="a{BLUE}".*?</article>', page, re.S)
    assert blue.count('class="disagrees"') == 1 and "Blue 3" in blue
    assert blue.count('class="play-alike"') == 6
    assert 'id="mixed-total">1<' in page and "use Blues for all" in page
    assert 'id="undo-batch"' not in page  # nothing to undo yet

    confirm = html.unescape(re.search(r'class="accept-agreeing" href="([^"]+)"',
                                      blue).group(1))
    page = client.get(confirm).get_data(as_text=True)
    assert 'id="album-songs">3<' in page and 'id="album-files">3<' in page
    up_to = re.search(r'name="up_to_id" value="(\d+)"', page).group(1)
    r = client.post(f"/albums/{BLUE}/accept", data={
        "csrf_token": csrf_of(client), "genre": "Jazz", "scope": "agreeing",
        "up_to_id": up_to, "next": "/albums?sort=pending"})
    assert r.status_code == 303 and r.headers["Location"].endswith("/albums?sort=pending")
    page = client.get("/albums").get_data(as_text=True)
    assert "Jazz for 3 song(s) of the album." in page and 'id="undo-batch"' in page
    assert status_of(sessions, ids["blue0"][1]) == "accepted"

    # u: the last album action undone in one step.
    r = client.post("/albums/undo-last", headers={"X-CSRFToken": csrf_of(client),
                                                  "Accept": "application/json"})
    assert r.status_code == 200 and r.json["count"] == 3
    assert status_of(sessions, ids["blue0"][1]) == "pending"
    r = client.post("/albums/undo-last", headers={"X-CSRFToken": csrf_of(client),
                                                  "Accept": "application/json"})
    assert r.status_code == 409 and "no album action" in r.json["error"]

    # The audit's "use X for all" confirm counts the tagged songs it rewrites.
    page = client.get(f"/albums/{MIXED}/confirm?genre=Blues&scope=relabel")
    assert 'id="album-files">2<' in page.get_data(as_text=True)
    assert client.get(f"/albums/{'0' * 16}/confirm?genre=Jazz").status_code == 404
    assert client.get("/albums/nothex/confirm?genre=Jazz").status_code == 404
    assert client.get(f"/albums/{BLUE}/confirm?genre=Jazz&scope=most").status_code == 400
    assert client.get(f"/albums/{BLUE}/confirm?genre=Polka").status_code == 400
    assert client.get("/albums?page=0").status_code == 400
    r = client.post(f"/batches/{'0' * 32}/undo", headers={"X-CSRFToken": csrf_of(client),
                                                          "Accept": "application/json"})
    assert r.status_code == 404 and "no album or bulk action" in r.json["error"]
    r = client.post("/batches/12/undo", headers={"X-CSRFToken": csrf_of(client)})
    assert r.status_code == 404
    r = client.post(f"/albums/{BLUE}/accept", data={"genre": "Jazz"})
    assert r.status_code == 400  # no CSRF token


def test_history_says_which_decisions_were_a_whole_album(albums_to_review, client):
    config, sessions, ids = albums_to_review
    albums.accept_album(sessions, config, BLUE, "Jazz", scope="all", who="md")
    page = client.get("/history").get_data(as_text=True)
    assert page.count("(whole album)") == 4


def test_a_song_gone_from_the_library_is_neither_shown_nor_decided(albums_to_review):
    config, sessions, ids = albums_to_review
    with sessions() as session, session.begin():
        session.get(Track, ids["blue2"][0]).state = "missing"
    with sessions() as session:
        [blue] = [a for a in albums.list_albums(session)[0] if a.key == BLUE]
        assert (len(blue.songs), len(blue.pending), len(blue.agreeing)) == (5, 3, 2)
        preview = albums.preview_action(session, config, BLUE, "Jazz", scope="all")
        assert (preview.songs, preview.files, preview.overrides) == (3, 3, 1)
    made = albums.accept_album(sessions, config, BLUE, "Jazz", scope="all", who="md")
    assert ids["blue2"][0] not in {d.track_id for d in made}
    assert status_of(sessions, ids["blue2"][1]) == "pending"


def test_a_reused_aggregate_never_outlives_a_change(albums_to_review):
    """list_albums(cache=) reuses a page's aggregate only while nothing it depends on
    moved: a decision made elsewhere (the song view, the shell), a new suggestion."""
    from daemon.review.web.common import LRU

    config, sessions, ids = albums_to_review
    cache = LRU(8)
    with sessions() as session:
        assert albums.list_albums(session, cache=cache)[1] == 2
    albums.accept_album(sessions, config, HITS, "Rock", scope="all", who="shell")
    with sessions() as session:
        found, total = albums.list_albums(session, cache=cache)
        assert total == 1 and [a.key for a in found] == [BLUE]
    add_album_song(sessions, "Various/Road Hits/9.ogg", HITS,
                   (("Pop", 0.9), ("Rock", 0.05), ("Jazz", 0.05)), compilation=True)
    with sessions() as session:
        assert albums.list_albums(session, cache=cache)[1] == 2
        assert albums.list_albums(session, cache=cache)[1] == 2  # reused: same answer


def test_use_x_for_all_on_the_page_clears_the_album_from_the_audit(albums_to_review, client):
    config, sessions, ids = albums_to_review
    assert 'id="mixed-total">1<' in client.get("/albums").get_data(as_text=True)
    r = client.post(f"/albums/{MIXED}/accept", data={
        "csrf_token": csrf_of(client), "genre": "Blues", "scope": "relabel"})
    assert r.status_code == 303
    page = client.get("/albums").get_data(as_text=True)
    assert 'id="mixed"' not in page and "Blues for 2 song(s) of the album." in page
    assert {track(sessions, ids[f"mixed{i}"][0]).confirmed_genre for i in (0, 2)} == {"Blues"}
