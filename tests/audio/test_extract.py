"""daemon.audio.extract: extract() in-process, and ExtractPool surviving real faults in its
children (SIGKILL mid-file, a stopped child past the timeout, recycling, bad files) while
the results for every other file stay exactly right."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import wait_for

from daemon.audio.decode import read_clips
from daemon.audio.extract import ExtractPool
from daemon.audio.features import DEFAULT_SPEC, FeatureSpec, song_features
from daemon.audio.jobs import Extracted, extract
from daemon.core.errors import DecodeTimeout, FileError, TooShort, UnreadableAudio

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Three good songs, and a bad file of each common kind."""
    from daemon.cli.demo import encode, synthesize

    root = tmp_path_factory.mktemp("pool")
    good = [encode(root / f"good{i}{ext}", synthesize(genre, 8.0, 22_050, seed=i), 22_050)
            for i, (genre, ext) in enumerate([("Rock", ".mp3"), ("Jazz", ".flac"),
                                              ("Pop", ".ogg")])]
    (root / "empty.mp3").write_bytes(b"")
    (root / "random.mp3").write_bytes(np.random.default_rng(1).bytes(30_000))
    encode(root / "short.wav", synthesize("Folk", 0.4, 22_050), 22_050)
    bad = {"empty.mp3": (UnreadableAudio, "file is empty"),
           "random.mp3": (UnreadableAudio, "not an audio file"),
           "short.wav": (TooShort, "shorter than one"),
           "missing.flac": (UnreadableAudio, "file vanished")}
    return root, good, bad


@pytest.fixture(scope="module")
def expected(library):
    _, good, _ = library
    return {str(p): extract(p).features for p in good}


def _started_pool(song, **kwargs) -> ExtractPool:
    """A pool whose children are up (one song done), so tests can signal them."""
    pool = ExtractPool(**kwargs)
    pool.submit(song, "warm-up")
    tag, result = pool.get(timeout=30)
    assert tag == "warm-up" and isinstance(result, Extracted)
    return pool


def test_extract_in_process(library):
    _, good, _ = library
    result = extract(good[0])
    assert isinstance(result, Extracted)
    assert result.path == str(good[0])
    assert result.info.format == "mp3" and result.info.duration == pytest.approx(8.0, abs=0.1)
    assert result.features.shape == (5, 129, 98, 1) and result.features.dtype == np.float32
    assert np.array_equal(result.features, song_features(read_clips(good[0])))
    two = extract(good[1], FeatureSpec(clip_seconds=2.0))
    assert two.features.shape == (5, 129, 196, 1)


def test_map_gives_exact_results_and_typed_errors(library, expected):
    root, good, bad = library
    paths = [*good, *(root / name for name in bad)]
    with ExtractPool(2, timeout=30) as pool:
        results = dict(pool.map(paths))
        assert pool.pending == 0
    assert set(results) == set(paths)
    for path in good:
        assert isinstance(results[path], Extracted)
        assert np.array_equal(results[path].features, expected[str(path)])
    for name, (kind, reason) in bad.items():
        error = results[root / name]
        assert type(error) is kind and reason in error.reason
        assert error.path == str(root / name)


def test_submit_and_get_with_tags(library, expected):
    _, good, _ = library
    with ExtractPool(1, timeout=30) as pool:
        assert pool.get(timeout=0.01) is None  # nothing pending
        for i, path in enumerate(good):
            pool.submit(path, tag=("track", i))
        assert pool.pending == 3
        got = {}
        while pool.pending:
            tag, result = pool.get(timeout=30)
            got[tag] = result
        assert sorted(got) == [("track", 0), ("track", 1), ("track", 2)]
        for i, path in enumerate(good):
            assert np.array_equal(got[("track", i)].features, expected[str(path)])


def test_a_child_killed_mid_file_fails_only_that_file(library, expected):
    _, good, _ = library
    pool = _started_pool(good[0], processes=1, timeout=30)
    try:
        (child,) = pool.child_pids()
        # Stopped, the child cannot finish the song we hand it: it is killed mid-file.
        os.kill(child, signal.SIGSTOP)
        pool.submit(good[1], "victim")
        assert pool.busy_pids() == [child]
        os.kill(child, signal.SIGKILL)
        tag, error = pool.get(timeout=10)
        assert tag == "victim"
        assert type(error) is UnreadableAudio
        assert error.reason == "decoder crashed (signal 9)" and error.path == str(good[1])
        assert pool.crashes == 1
        # A fresh child takes the next songs; the pool goes on with exact results.
        for path in good:
            pool.submit(path, path)
        for _ in good:
            path, result = pool.get(timeout=30)
            assert np.array_equal(result.features, expected[str(path)])
        assert child not in pool.child_pids()
    finally:
        pool.close()


def test_a_hung_child_is_killed_after_the_timeout(library, expected):
    _, good, _ = library
    pool = _started_pool(good[0], processes=1, timeout=1.0)
    try:
        (child,) = pool.child_pids()
        os.kill(child, signal.SIGSTOP)  # a real hang: the process cannot run at all
        pool.submit(good[2], "stuck")
        assert pool.get(timeout=0.2) is None  # still waiting, not yet timed out
        started = time.monotonic()
        tag, error = pool.get(timeout=10)
        assert tag == "stuck" and type(error) is DecodeTimeout
        assert "longer than 1 s" in error.reason and error.path == str(good[2])
        assert time.monotonic() - started < 3
        assert pool.timeouts == 1
        wait_for(lambda: not os.path.exists(f"/proc/{child}"))
        pool.submit(good[2], "again")
        tag, result = pool.get(timeout=30)
        assert tag == "again" and np.array_equal(result.features, expected[str(good[2])])
    finally:
        pool.close()


def test_a_fifo_named_mp3_does_not_hang(tmp_path, library, expected):
    """A named pipe would block open() forever: it is refused as not a regular file."""
    _, good, _ = library
    fifo = tmp_path / "x.mp3"
    os.mkfifo(fifo)
    started = time.monotonic()
    with ExtractPool(2, timeout=5) as pool:
        results = dict(pool.map([fifo, good[0]]))
    assert time.monotonic() - started < 5
    assert type(results[fifo]) is UnreadableAudio
    assert "not a regular file" in results[fifo].reason
    assert np.array_equal(results[good[0]].features, expected[str(good[0])])


def test_children_are_recycled_after_max_tasks(library, expected):
    _, good, _ = library
    with ExtractPool(1, timeout=30, max_tasks_per_child=2) as pool:
        seen = set()
        for path in good * 2:
            pool.submit(path, path)
            seen.update(pool.child_pids())
            path_back, result = pool.get(timeout=30)
            assert np.array_equal(result.features, expected[str(path_back)])
        assert pool.recycled == 3 and len(seen) == 3
        assert pool.crashes == 0 and pool.timeouts == 0


def test_idle_children_are_stopped_and_come_back_on_demand(library, expected):
    _, good, _ = library
    with _started_pool(good[0], processes=1, timeout=30) as pool:
        pid, = pool.child_pids()
        assert pool.retire_idle(idle_seconds=60) == 0  # idle for less than a minute: kept
        assert pool.child_pids() == [pid]
        time.sleep(0.2)
        assert pool.retire_idle(idle_seconds=0.1) == 1
        assert pool.child_pids() == []
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
        pool.submit(good[1], "after")
        tag, result = pool.get(timeout=30)
        assert tag == "after" and np.array_equal(result.features, expected[str(good[1])])
        assert pool.child_pids() and pool.child_pids() != [pid]
        assert pool.crashes == 0


def test_children_run_niced_and_close_kills_them(library):
    _, good, _ = library
    pool = _started_pool(good[0], processes=2, nice=7)
    pool.submit(good[1])
    pool.submit(good[2])  # one song per idle child: this one starts the second child
    pids = pool.busy_pids()
    assert len(pids) == 2
    assert pool.get(timeout=30) is not None and pool.get(timeout=30) is not None
    own = os.getpriority(os.PRIO_PROCESS, 0)
    for pid in pids:
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, own + 7)
    pool.close()
    for pid in pids:
        wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}"))
    assert pool.get(timeout=0.1) is None
    with pytest.raises(RuntimeError):
        pool.submit(good[0])


def test_errors_cross_the_process_boundary_typed(library):
    root, _, _ = library
    with ExtractPool(1, spec=DEFAULT_SPEC) as pool:
        pool.submit(root / "missing.flac", "m")
        _, error = pool.get(timeout=30)
    assert isinstance(error, FileError) and type(error) is UnreadableAudio
    assert str(error) == f"{root / 'missing.flac'}: file vanished (no such file)"


def test_leaving_map_early_leaves_the_pool_usable(library, expected):
    _, good, _ = library
    with ExtractPool(1, timeout=30) as pool:
        for _ in pool.map(good * 3):
            break
        assert pool.pending == 0
        results = dict(pool.map(good[:2]))
        assert all(np.array_equal(results[p].features, expected[str(p)]) for p in good[:2])


def test_call_from_many_threads_gets_each_its_own_result(library, expected):
    """The library and the web threads share one pool through call()."""
    import threading

    root, good, bad = library
    answers: dict = {}

    def ask(i: int, path) -> None:
        try:
            answers[i] = pool.call("extract" if i % 2 else "probe", path)
        except FileError as err:
            answers[i] = err

    paths = [*good, root / "random.mp3"] * 2
    with ExtractPool(1, timeout=30, memory_mb=1024) as pool:
        threads = [threading.Thread(target=ask, args=(i, p)) for i, p in enumerate(paths)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    for i, path in enumerate(paths):
        if path.name == "random.mp3":
            assert type(answers[i]) is UnreadableAudio and answers[i].path == str(path)
        elif i % 2:
            assert np.array_equal(answers[i].features, expected[str(path)])
        else:
            assert answers[i].duration == pytest.approx(8.0, abs=0.1)


def test_children_are_named_for_what_they_do(tmp_path):
    """ps and top show "gt decoder" / "gt tag reader", so the IT volunteer (and a test
    that kills one kind) can tell the children apart."""
    song = tmp_path / "song.wav"
    sf.write(song, np.zeros(22_050 * 3, np.float32), 22_050)
    for role in ("decoder", "tag reader"):
        with ExtractPool(1, role=role) as pool:
            pool.call("probe", song)
            [child] = pool._children
            comm = Path(f"/proc/{child.process.pid}/comm").read_text().strip()
            assert comm == f"gt {role}"


def _cpu_seconds(pid: int, tid: int) -> float:
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_child_does_its_maths_on_its_own_thread(library):
    """Spare BLAS threads in a child would take the cores from the other children: all of a
    child's work runs on its one thread (the log-mel's matrix products included)."""
    from daemon.audio.features import BACKBONE, CNN

    _, good, _ = library
    pool = _started_pool(good[0], processes=1, kinds=(CNN, BACKBONE))
    try:
        for song in good * 6:
            pool.submit(song)
            (pid,) = pool.busy_pids()
            assert isinstance(pool.get(timeout=30)[1], Extracted)
        threads = {int(t): _cpu_seconds(pid, int(t)) for t in os.listdir(f"/proc/{pid}/task")}
        names = {t: Path(f"/proc/{pid}/task/{t}/comm").read_text().strip() for t in threads}
        main, others = threads.pop(pid), sum(threads.values())
        assert main > 0.2, threads
        # A thread BLAS starts spins briefly once; unlimited, they take as much as the work.
        assert others <= 0.15 * main, f"main thread {main:.2f} s, the others {threads} {names}"
    finally:
        pool.close()
