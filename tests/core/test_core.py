"""daemon.core's shared facts: one errno -> reason table, one retry backoff, one Live."""

from __future__ import annotations

import errno

from daemon.core.errors import os_reason
from daemon.core.retry import backoff
from daemon.review.writeback import BACKOFF_FIRST_S, BACKOFF_MAX_S
from daemon.tags.live import Live, as_live
from daemon.tags.read import open_reason


def test_one_reason_for_an_errno_whether_reading_or_writing(tmp_path):
    missing = tmp_path / "gone.mp3"
    for code in (errno.EROFS, errno.EACCES, errno.ENOSPC, errno.ENAMETOOLONG, errno.ENOENT):
        err = OSError(code, "system words")
        assert open_reason(missing, err) == os_reason(err) != "system words"
    assert os_reason(OSError(errno.EXDEV, "Invalid cross-device link")) == \
        "Invalid cross-device link"
    assert open_reason(missing, OSError(errno.EXDEV, "x")) == "cannot open: x"


def test_one_backoff_for_the_writer_and_the_worker():
    assert [backoff(n, 60) for n in (1, 2, 3, 4)] == [60, 120, 240, 480]
    assert backoff(1, BACKOFF_FIRST_S, BACKOFF_MAX_S) == 30
    assert backoff(40, BACKOFF_FIRST_S, BACKOFF_MAX_S) == 6 * 3600


def test_live_swaps_config_and_genre_map_together(make_config, tmp_path):
    first = make_config(tmp_path)
    live = Live(first)
    shipped = live.genre_map
    assert "Rock" in shipped.canonical and as_live(live) is live
    first.genres_path.parent.mkdir(parents=True, exist_ok=True)
    first.genres_path.write_text('canonical = ["Jazz"]\n', encoding="utf-8")
    second = first.model_copy(update={"log_level": "DEBUG"})
    live.replace(second)
    assert live.config is second and live.genre_map.canonical == ("Jazz",)
    assert as_live(first).config is first  # a Config of one's own gets a Live of its own


def test_every_status_is_a_strenum_in_core_states_and_the_cli_offers_those():
    from enum import StrEnum

    from click.testing import CliRunner

    from daemon.cli import cli
    from daemon.core import states

    enums = {name for name, value in vars(states).items()
             if isinstance(value, type) and issubclass(value, StrEnum) and value is not StrEnum}
    assert enums >= {"TrackState", "SuggestionStatus", "Action", "How", "WriteStatus",
                     "ModelStatus", "RunStatus", "RunTrigger", "QueueSort"}
    assert not hasattr(states, "SETTLED")
    shown = CliRunner().invoke(cli, ["review", "list", "--help"]).output
    assert "[" + "|".join([*states.SuggestionStatus, "all"]) + "]" in shown
    assert "[" + "|".join(states.QueueSort) + "]" in shown


def test_the_scheduler_keeps_no_registry_of_components():
    """Jobs get their component passed in (add_reconcile(library), partial(nightly_job,
    retrainer)); the scheduler module holds no table of live components."""
    from daemon.service import scheduler

    assert not {"register", "unregister", "live", "_live"} & set(vars(scheduler))
    assert not hasattr(scheduler.Scheduler, "running")
