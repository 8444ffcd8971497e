"""The one main loop of `genretagger run` and `genretagger worker`: exit codes, stop always
called, SIGHUP reaching the reload, SIGTERM ending the loop (real signals, this process)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from daemon.core.errors import ConfigError, SchemaBehind
from daemon.service.mainloop import MainLoop


class Recorded:
    """A process for the loop: records what the loop asked of it."""

    def __init__(self, fail: Exception | None = None, ticks: int | None = None):
        self.fail, self.ticks = fail, ticks
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")
        if self.fail is not None:
            raise self.fail

    def tick(self) -> bool:
        self.calls.append("tick")
        return self.ticks is None or self.calls.count("tick") < self.ticks

    def stop(self) -> None:
        self.calls.append("stop")


@pytest.fixture(autouse=True)
def _signals():
    handlers = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize(("fail", "code"), [
    (ConfigError("library.root: missing"), 2),
    (SchemaBehind("the database needs the service's migrations"), 2),
    (RuntimeError("boom"), 1),
])
def test_a_failed_start_exits_with_its_code_and_still_stops(fail, code):
    process = Recorded(fail)
    assert MainLoop(0.01).run(process) == code
    assert process.calls == ["start", "stop"]


def test_a_failure_the_process_words_itself_keeps_its_code():
    process = Recorded(OSError("the database file is damaged"))
    loop = MainLoop(0.01, start_failure=lambda err: 3 if "damaged" in str(err) else None)
    assert loop.run(process) == 3
    assert process.calls == ["start", "stop"]


def test_a_tick_that_says_stop_exits_1():
    """The leader lost its lock: exit 1, for systemd to restart it."""
    process = Recorded(ticks=3)
    assert MainLoop(0.01).run(process) == 1
    assert process.calls == ["start", "tick", "tick", "tick", "stop"]


def test_sighup_reloads_and_sigterm_stops_with_0():
    reloaded = threading.Event()
    loop = MainLoop(30.0, on_reload=reloaded.set)  # woken by the signals, not the beat
    process = Recorded()

    def signal_it() -> None:
        os.kill(os.getpid(), signal.SIGHUP)
        reloaded.wait(10)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Timer(0.2, signal_it).start()
    assert loop.run(process) == 0
    assert reloaded.is_set()
    assert process.calls[0] == "start" and process.calls[-1] == "stop"
    assert process.calls.count("tick") >= 1


def test_a_signal_another_thread_receives_stops_the_loop_at_once():
    """systemd's SIGTERM goes to the process and the kernel may hand it to any of the
    service's threads: the main loop still acts on it at once, not at its next beat."""
    loop = MainLoop(60.0)
    process = Recorded()

    def signal_this_thread() -> None:
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

    threading.Timer(0.2, signal_this_thread).start()
    started = time.monotonic()
    assert loop.run(process) == 0
    assert time.monotonic() - started < 30, "woken by the beat, not by the signal"
    assert process.calls[-1] == "stop"
