"""How the review pages write numbers and times (Jinja filters)."""

from __future__ import annotations

from markupsafe import Markup, escape

from daemon.review.sureness import shown_percent


def percent(value: float | None) -> str:
    """A confidence as the whole percentage the bulk threshold compares (sureness)."""
    return "" if value is None else f"{shown_percent(value)}%"


def when(value) -> str:
    """A stored UTC time in the server's local time, as the station reads clocks."""
    return "" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M")


# Cosine similarity of two songs' mean embeddings -> words for the director. Songs of one
# genre sit at about 0.95 and above on the backbone's embedding, other genres mostly below.
LIKENESS = ((0.97, "very close"), (0.90, "close"), (0.75, "somewhat alike"))


def likeness(similarity: float | None) -> str:
    """How alike two songs sound, in words (no figures)."""
    if similarity is None:
        return ""
    for floor, words in LIKENESS:
        if similarity >= floor:
            return words
    return "only a little alike"


def context_reason(context: dict | None) -> str:
    """A suggestion's album/artist context (suggestions.context) as one line for the
    director: the reason, and what the sound alone said when the context changed the pick
    ("" when no context weighed in)."""
    if not context or not context.get("reason"):
        return ""
    line = context["reason"]
    audio = context.get("audio_top") or []
    if context.get("changed") and audio:
        line += (f"; this changed the pick: by sound alone {audio[0][0]} "
                 f"({percent(audio[0][1])})")
    return line


def path_breaks(path: str | None) -> Markup:
    """A library path that may wrap after each slash (a phone is narrower than a path)."""
    return Markup("/<wbr>").join(escape(part) for part in (path or "").split("/"))
