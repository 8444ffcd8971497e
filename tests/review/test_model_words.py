"""The Genre model page in the director's words: the one-line verdict (how many of the
station's genres, right on how many test songs), the counts behind each genre's figures,
the genres not tested and why, and the statistics only behind the details disclosure.
Through Flask's test client on a real migrated SQLite database."""

from __future__ import annotations

import html
import json
import re

import pytest

from daemon.core.db.models import Model, TrainingRun, utcnow
from daemon.learn.report import GenreFigures, genre_figures, right_of_tested, verdict
from daemon.review.web import create_app

STATION = ["Blues", "Classical", "Country", "Electronic", "Folk", "Hip-Hop", "Jazz", "Metal",
           "Pop", "Rock"]  # the default station genres


def metrics_for(genres: list[str], confusion: list[list[int]]) -> dict:
    """song_metrics' shape (rates from the counts) for a confusion matrix."""
    per_class = {}
    for i, genre in enumerate(genres):
        said, songs = sum(row[i] for row in confusion), sum(confusion[i])
        per_class[genre] = {"precision": confusion[i][i] / said if said else None,
                            "recall": confusion[i][i] / songs if songs else None,
                            "f1": None, "support": songs}
    right, total = sum(confusion[i][i] for i in range(len(genres))), sum(map(sum, confusion))
    return {"accuracy": right / total, "macro_f1": 0.8, "n_songs": total, "genres": genres,
            "confusion": confusion, "per_class": per_class,
            "not_tested": [g for g in genres if not per_class[g]["support"]]}


def test_the_verdict_in_one_line():
    metrics = metrics_for(["Jazz", "Rock", "Folk"], [[9, 1, 0], [2, 12, 0], [0, 0, 0]])
    assert verdict(["Jazz", "Rock", "Folk"], {}, metrics) == (
        "Suggests all 3 of your genres; right on 21 of 24 test songs by artists it never heard")
    assert verdict(["Jazz", "Rock", "Folk"], {"Metal": {"songs": 1, "needs": 2}}, metrics) == (
        "Suggests 3 of your 4 genres; right on 21 of 24 test songs by artists it never heard")
    # Without a confusion matrix the counts come from the rate and the number of songs.
    assert right_of_tested({"accuracy": 0.875, "n_songs": 48}) == (42, 48)
    assert verdict(["Jazz"], {}, {"accuracy": 1.0, "n_songs": 1}) == (
        "Suggests your one genre; right on 1 of 1 test song by artists it never heard")
    assert verdict(["Jazz", "Rock"], {}, {}) == (
        "Suggests all 2 of your genres; no test songs were recorded for this version")
    assert verdict(["Jazz", "Rock"], {}, {"family": "coldstart", "unverified": True},
                   unverified=True) == (
        "Suggests all 2 of your genres; not yet checked on your station's songs")


def test_each_genre_figure_carries_its_test_songs():
    metrics = metrics_for(["Jazz", "Rock", "Folk"], [[9, 1, 0], [2, 12, 0], [0, 0, 0]])
    assert genre_figures(metrics, {"Folk": "all its songs are by one artist"}) == [
        GenreFigures("Jazz", right=9, said=11, songs=10),
        GenreFigures("Rock", right=12, said=13, songs=14),
        GenreFigures("Folk", right=0, said=0, songs=0,
                     untested="all its songs are by one artist")]
    # No confusion matrix recorded: the same counts from the rates and supports.
    del metrics["confusion"]
    assert genre_figures(metrics)[:2] == [GenreFigures("Jazz", 9, 11, 10),
                                          GenreFigures("Rock", 12, 13, 14)]
    assert genre_figures(metrics)[2].untested == "no test song of this genre"
    assert genre_figures({}) == []


@pytest.fixture
def page_of(tmp_path, make_config, database):
    """page_of(model, run) -> the /models page (HTML, entities unescaped) with that model."""
    config = make_config(tmp_path / "library")
    _, sessions = database
    app = create_app(config, sessions)
    app.testing = True

    def render(model: Model, run: TrainingRun | None = None) -> str:
        with sessions() as session, session.begin():
            session.add(model)
            if run is not None:
                session.add(run)
        return html.unescape(app.test_client().get("/models").get_data(as_text=True))

    return render


def test_a_model_of_every_station_genre_says_so(page_of, tmp_path):
    """All 10 genres: the verdict first, "suggests every one", each figure with its count,
    the genre without a test song named with the trainer's reason, the refit on every
    label said in words; the jargon only inside the details."""
    confusion = [[0] * 10 for _ in STATION]
    for i in range(9):  # Rock (the last) has no test song
        confusion[i][i] = 4
    confusion[0][1] = 1  # one Blues song taken for Classical
    report = tmp_path / "report.json"
    report.write_text(json.dumps({
        "served": {"songs": 212, "how": "refit on every labelled song of its genres"},
        "training_set": {"not_tested": {"Rock": "every Rock song is by one artist"}}}))
    page = page_of(
        Model(version=7, path="/m/v7/model.onnx", sha256="e" * 64, status="active",
              classes=STATION, n_songs=170, activated_at=utcnow(), report_path=str(report),
              metrics=metrics_for(STATION, confusion)),
        TrainingRun(trigger="nightly", status="promoted", started_at=utcnow(),
                    reason="v0007 active; gate: no active model to compare with"))
    top = page[page.index("<main>"):page.index('id="statistics"')]
    verdict_line = re.search(r'<p class="verdict" id="verdict">(.*?)</p>', page).group(1)
    assert verdict_line == ("<strong>Suggests all 10 of your genres; right on 36 of 37 test "
                            "songs by artists it never heard</strong>.")
    assert top.index('id="verdict"') < top.index("<h2")  # the verdict comes first
    assert 'id="suggests-all"' in top and 'id="cannot-suggest"' not in top
    assert re.search(r">80%\s*<span class=\"muted\">\(4 of 5\)</span>", top)  # Blues found
    assert re.search(r">100%\s*<span class=\"muted\">\(4 of 4\)</span>", top)
    assert "not tested: every Rock song is by one artist" in top
    assert "afterwards it learned from all 212 songs with a genre" in top
    for jargon in ("McNemar", "gate", "ECE", "calibrat", "cnn", "backbone", "ensemble",
                   "F1", "interval"):
        assert jargon not in top, jargon
    details = page[page.index('id="statistics"'):]
    assert "gate: no active model to compare with" in details and "McNemar p is" in details


def test_a_model_missing_genres_lists_them_and_a_cold_start_is_unchecked(page_of):
    page = page_of(Model(version=1, path="/m/v1/model.onnx", sha256="a" * 64, status="active",
                         classes=["Jazz", "Rock"], n_songs=0, activated_at=utcnow(),
                         metrics={"family": "coldstart", "unverified": True}))
    assert ("Suggests 2 of your 10 genres; not yet checked on your station's songs"
            in page)
    listed = page[page.index('id="cannot-suggest"'):]
    assert "<strong>Metal</strong>: 0 songs so far — needs 3 more" in listed
    assert 'id="suggests-all"' not in page and "No confusion matrix" not in page
