"""What a model's training report says beyond its test scores: the tournament table (every
family trained that night, judged on the same holdout songs) and the genres it left out.

The trainer writes both into report.json beside the bundle (and its metadata):

    tournament: {"holdout_songs": n, "winner": family, "why": text, "rows": [
        {"family", "accuracy", "macro_f1", "recall": {genre: f | null}, "not_tested",
         "ece", "temperature", "calibration", "train_seconds", "classes", "left_out"}]}
    left_out:   {genre: {"songs": n, "needs": k}}
    served:     {"songs": n, "per_genre": {genre: n}, "how": text}: the served model is
                the chosen family refit on every labelled song of its genres; the figures
                above are its held-out fit's (trainer.runner.Run.refit)
    training_set.not_tested: {genre: why in words}: trained on, no held-out song
    context:    {"weight": w | null, "smoothing": s | null (null: not fitted), "songs",
                 "songs_with_mates", "audio" / "with_context": {"song_accuracy",
                 "macro_f1", "log_likelihood", "n_songs"}, "with_mates": {the same two on
                 the songs with a tagged mate}}  (trainer.context)

The registry keeps the report's path; the model's stored metrics win when they carry the
same keys. A recall of null means the genre had no holdout song: "not tested", never 0%.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.core.db.models import Model
from daemon.learn.registry import read_json

NOT_TESTED = "not tested"


def _report(model: Model) -> dict[str, Any]:
    return read_json(Path(model.report_path)) if model.report_path else {}


def model_report_facts(model: Model) -> dict[str, Any]:
    """{"tournament": dict | None, "left_out": dict, "context": dict | None, "served":
    dict | None, "not_tested": {genre: why}} for a model (metrics, else report).

    "served" ({"songs", "how", ...}) is there when the served model was refit on every
    label after it was judged; "not_tested" names the genres without a test song and why."""
    metrics, report = model.metrics or {}, None
    found = {}
    for key, empty in (("tournament", None), ("left_out", {}), ("context", None),
                       ("served", None), ("training_set", {})):
        value = metrics.get(key)
        if value is None:
            report = _report(model) if report is None else report
            value = report.get(key)
        found[key] = value if isinstance(value, dict) else empty
    untested = found.pop("training_set").get("not_tested")
    found["not_tested"] = untested if isinstance(untested, dict) else {}
    return found


def recall_words(value: float | None) -> str:
    """A genre's recall as shown: a percentage, or "not tested" (no holdout song)."""
    return NOT_TESTED if value is None else f"{100 * float(value):.0f}%"


def tournament_genres(tournament: dict[str, Any]) -> list[str]:
    """Every genre any row has a recall for (or did not test), in first-seen order."""
    genres: dict[str, None] = {}
    for row in tournament.get("rows") or []:
        genres.update(dict.fromkeys(row.get("recall") or {}))
        genres.update(dict.fromkeys(row.get("not_tested") or []))
    return list(genres)


def recall_table(tournament: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(genre, each row's recall in words) for every genre: a percentage, "not tested"
    (no holdout song of it) or "not learned" (that family left the genre out)."""
    table = []
    for genre in tournament_genres(tournament):
        cells = []
        for row in tournament.get("rows") or []:
            recall = row.get("recall") or {}
            cells.append(recall_words(recall.get(genre)) if genre in recall
                         else NOT_TESTED if genre in (row.get("not_tested") or [])
                         else "not learned")
        table.append((genre, cells))
    return table


def tournament_lines(tournament: dict[str, Any] | None) -> list[str]:
    """The tournament table as plain text (for `models show`)."""
    if not tournament or not tournament.get("rows"):
        return ["tournament:    not recorded for this version"]
    lines = [f"tournament:    {tournament.get('holdout_songs', '?')} holdout songs; winner "
             f"{tournament.get('winner', '?')}"
             + (f" ({tournament['why']})" if tournament.get("why") else "")]
    lines.append(f"  {'family':<10}{'accuracy':>9}{'macro-F1':>10}{'ECE':>7}"
                 f"{'train s':>9}  calibration")
    for row in tournament["rows"]:
        lines.append(f"  {row.get('family', '?'):<10}{_pct(row.get('accuracy')):>9}"
                     f"{_pct(row.get('macro_f1')):>10}{_num(row.get('ece'), 3):>7}"
                     f"{_num(row.get('train_seconds'), 1):>9}  {row.get('calibration') or '-'}")
    table = recall_table(tournament)
    if table:
        families = [row.get("family", "?") for row in tournament["rows"]]
        lines.append(f"  {'recall':<16}  " + "  ".join(f"{f:>11}" for f in families))
        for genre, cells in table:
            lines.append(f"  {genre:<16}  " + "  ".join(f"{c:>11}" for c in cells))
    return lines


def context_lines(context: dict[str, Any] | None) -> list[str]:
    """The album/artist context's fit and its figures, audio-only and with context, apart
    (the gate judges the audio alone)."""
    if not context:
        return []
    if context.get("weight") is None:
        return [f"context: not fitted ({context.get('why', 'no figures')}); the config's "
                "[context] weight and smoothing are used"]
    lines = [f"context: weight {context['weight']:.2f}, smoothing {context['smoothing']:g} "
             f"(chosen by {context.get('chosen_by', '?')} on {context.get('songs', 0)} "
             f"held-out songs, {context.get('songs_with_mates', 0)} with a tagged mate; "
             f"{context.get('fitted_on', '?')})"]
    for label, part in (("all held-out songs", context), ("with a tagged mate",
                                                       context.get("with_mates") or {})):
        audio, both = part.get("audio") or {}, part.get("with_context") or {}
        lines.append(f"  {label + ':':<20}accuracy {_pct(audio.get('song_accuracy'))} audio "
                     f"-> {_pct(both.get('song_accuracy'))} with context; macro-F1 "
                     f"{_num(audio.get('macro_f1'), 3)} -> {_num(both.get('macro_f1'), 3)}")
    return lines


def cannot_suggest_lines(left_out: dict[str, dict[str, int]], indent: str = "  ") -> list[str]:
    """{genre: {"songs", "needs"}} as lines the IT volunteer and the director read."""
    lines = []
    for genre, need in left_out.items():
        songs, needs = need.get("songs", 0), need.get("needs", 0)
        lines.append(f"{indent}{genre}: {songs} song(s), "
                     + (f"needs {needs} more confirmed" if needs
                        else "enough now: learned at the next retrain"))
    return lines


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}%"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


# ---------------------------------------------------------------- in the director's words

@dataclass(frozen=True)
class GenreFigures:
    """One genre of a model's test: of the `said` test songs it called this genre, `right`
    were; of the `songs` test songs of this genre, it found `right`. `untested`: why it
    had no test song (None: it had some)."""

    genre: str
    right: int
    said: int
    songs: int
    untested: str | None = None


def right_of_tested(metrics: dict[str, Any]) -> tuple[int, int] | None:
    """(songs it got right, test songs) of a model's test, or None when not recorded."""
    confusion = metrics.get("confusion")
    if confusion:
        return (sum(int(row[i]) for i, row in enumerate(confusion) if i < len(row)),
                sum(int(c) for row in confusion for c in row))
    n, accuracy = metrics.get("n_songs"), metrics.get("accuracy")
    if n and accuracy is not None:
        return round(float(accuracy) * int(n)), int(n)
    return None


def genre_figures(metrics: dict[str, Any], untested: dict[str, str] | None = None
                  ) -> list[GenreFigures]:
    """Per genre, the counts behind its two figures (from the confusion matrix, else from
    the rates and supports); a genre without a test song carries the reason."""
    per_class = metrics.get("per_class") or {}
    genres = list(metrics.get("genres") or per_class)
    confusion = metrics.get("confusion")
    if not confusion or len(confusion) != len(genres):
        confusion = None
    rows = []
    for i, genre in enumerate(genres):
        if confusion is not None:
            songs, right = sum(int(c) for c in confusion[i]), int(confusion[i][i])
            said = sum(int(row[i]) for row in confusion)
        else:
            m = per_class.get(genre) or {}
            songs = int(m.get("support") or 0)
            right = round(float(m.get("recall") or 0) * songs)
            precision = m.get("precision")
            said = round(right / float(precision)) if precision else 0
        why = None if songs else ((untested or {}).get(genre) or "no test song of this genre")
        rows.append(GenreFigures(genre, right, said, songs, why))
    return rows


def verdict(classes: list[str], cannot_suggest: dict[str, Any], metrics: dict[str, Any],
            *, unverified: bool = False) -> str:
    """One line: how many of the station's genres the model suggests and how often it is
    right on test songs by artists it never heard (the test split is artist-disjoint), e.g.
    "Suggests all 10 of your genres; right on 41 of 48 test songs by artists it never
    heard"."""
    total = len(set(classes) | set(cannot_suggest))
    genres = ("Suggests your one genre" if total == 1 and not cannot_suggest
              else f"Suggests all {total} of your genres" if not cannot_suggest
              else f"Suggests {len(classes)} of your {total} genres")
    if unverified:
        return genres + "; not yet checked on your station's songs"
    counts = right_of_tested(metrics)
    if counts is None or not counts[1]:
        return genres + "; no test songs were recorded for this version"
    right, tested = counts
    return (f"{genres}; right on {right} of {tested} test song{'s' if tested != 1 else ''} "
            "by artists it never heard")


def served_lines(served: dict[str, Any] | None, not_tested: dict[str, str],
                 indent: str = "  ") -> list[str]:
    """How the served model was fitted, and the genres it learned but nobody could test."""
    lines = []
    if served:
        lines.append(f"served:        fitted on {served.get('songs', '?')} labelled songs "
                     f"({served.get('how', '?')}); the figures are its held-out fit's")
    if not_tested:
        lines.append("not tested (learned, no held-out song):")
        lines += [f"{indent}{genre}: {why}" for genre, why in not_tested.items()]
    return lines
