"""Song -> model input, in-process (`extract`) or in child processes (`ExtractPool`).

Decoders and tag parsers are libraries fed with whatever sits on the station's drive; a
bad file can segfault, hang or leak in them, and a 150 MB cover picture is read into
memory whole. The pool runs them in child processes so none of that reaches the daemon: a
child that crashes or hangs past the timeout is killed and replaced, and its file gets a
typed error (UnreadableAudio "decoder crashed ...", DecodeTimeout, ReadTimeout); a child
may use at most `memory_mb` of address space (RLIMIT_AS), past which its file gets
TooMuchMemory; every child is replaced after `max_tasks_per_child` files so leaks cannot
grow. Children come from the 'forkserver' context: the daemon has threads, so plain fork
is unsafe. Every pool in the daemon shares the one fork server.

A child runs JOBS: "extract" (decode + features: the worker's), "read" (fingerprint, tags
and audio header of a settled file: the library's), "probe" and "windows" (the review
page's spectrogram and preview). The worker drives its pool with submit/get; the library
and the web threads share a second one through `call`, which any thread may use.

Each child gets one task at a time over its own pipe, so the parent always knows which file
a dead or stuck child was working on. Features (~250 KB per song) travel pickled through
that pipe: one copy, far cheaper than the decode.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from daemon.audio.decode import AudioInfo, decode_clips, probe, read_window
from daemon.audio.features import DEFAULT_SPEC, FeatureSpec, song_features
from daemon.core.errors import (
    DecodeTimeout,
    FileError,
    ReadTimeout,
    TagError,
    TooMuchMemory,
    UnreadableAudio,
)


@dataclass(frozen=True)
class Extracted:
    """One song's model input and what its header said."""

    path: str
    features: np.ndarray  # (clips, n_freqs, n_frames, 1) float32
    info: AudioInfo


def extract(path: str | os.PathLike | bytes, spec: FeatureSpec = DEFAULT_SPEC) -> Extracted:
    """Path -> Extracted (decode the clip windows, compute features) in this process.

    Raises UnreadableAudio, TooShort, SilentAudio.
    """
    info, clips = decode_clips(path, spec)
    return Extracted(_path_text(path), song_features(clips, spec), info)


def _path_text(path: str | os.PathLike | bytes) -> str:
    return os.fsdecode(path)


@dataclass(frozen=True)
class SongReading:
    """A settled file, read: its fingerprint, tags and audio header, and why any of them
    could not be read (`problems`, for the worker to weigh)."""

    fingerprint: str | None
    tags: Any  # daemon.tags.tagfile.TrackTags | None
    info: AudioInfo | None
    problems: tuple[str, ...]


def read_song(path: str | os.PathLike | bytes) -> SongReading | None:
    """Path -> SongReading (fingerprint, tags, audio header); None when the file vanished.
    A file that makes a reader run out of memory raises TooMuchMemory (the pool says how
    much it may use); every other problem is data in `problems`."""
    from daemon.library.fingerprint import fingerprint
    from daemon.tags.tagfile import read_tags

    name = _path_text(path)
    problems = []
    fp = tags = info = None
    try:
        fp = fingerprint(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        problems.append(f"cannot read: {err.strerror or err}")
    try:
        tags = read_tags(path)
    except TagError as err:
        if _out_of_memory(err):
            raise TooMuchMemory(name, "reading its tags ran out of memory") from None
        problems.append(f"tags: {err.reason}")
    except MemoryError:
        raise TooMuchMemory(name, "reading its tags ran out of memory") from None
    except Exception as err:  # a reader bug on an odd file must not stall settling
        problems.append(f"tags: {type(err).__name__}: {err}")
    try:
        info = probe(path)
    except TooMuchMemory:
        raise
    except FileError as err:
        problems.append(f"audio: {err.reason}")
    except Exception as err:
        problems.append(f"audio: {type(err).__name__}: {err}")
    return SongReading(fp, tags, info, tuple(problems))


def _out_of_memory(err: BaseException) -> bool:
    """Whether a typed error was raised in place of a MemoryError (`raise ... from None`
    still keeps it as the context)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, MemoryError | TooMuchMemory):
            return True
        err, seen = err.__context__, seen + 1
    return False


# ---------------------------------------------------------------- the child side


@dataclass(frozen=True)
class _Job:
    run: Callable[..., Any]  # (path, spec, *args) -> a picklable result
    doing: str  # what the child was doing, for timeout and memory errors
    crashed: str  # what crashed, for a child that died
    timeout_error: type[FileError]


def _windows(path, spec: FeatureSpec, windows: list[tuple[float, float]],
             sr: int) -> list[np.ndarray]:
    return [read_window(path, start, seconds, sr) for start, seconds in windows]


JOBS = {
    "extract": _Job(lambda path, spec: extract(path, spec), "decoding", "decoder crashed",
                    DecodeTimeout),
    "read": _Job(lambda path, spec: read_song(path), "reading its tags and audio header",
                 "the tag reader crashed", ReadTimeout),
    "probe": _Job(lambda path, spec: probe(path), "reading its audio header",
                  "decoder crashed", DecodeTimeout),
    "windows": _Job(_windows, "decoding", "decoder crashed", DecodeTimeout),
}


def _child_main(conn: Connection, spec_json: str, nice: int, memory_mb: int | None) -> None:
    """Child loop: receive (task id, job, path, args), reply with the job's result or a
    typed error."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if nice:
        os.nice(nice)
    if memory_mb:
        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    spec = FeatureSpec.from_json(spec_json)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if message is None:
            return
        task_id, name, path, args = message
        job = JOBS[name]
        try:
            reply: tuple = (task_id, "ok", job.run(path, spec, *args))
        except (MemoryError, TooMuchMemory) as err:
            reply = (task_id, "error", TooMuchMemory, _path_text(path),
                     f"{job.doing} needed more than {memory_mb} MB" if memory_mb
                     else getattr(err, "reason", "ran out of memory"))
        except FileError as err:
            reply = (task_id, "error", type(err), err.path, err.reason)
        except Exception as err:  # never let one file end the child's loop
            reply = (task_id, "error", UnreadableAudio, _path_text(path),
                     f"{job.doing} failed ({type(err).__name__}: {err})")
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


# ---------------------------------------------------------------- the parent side


@dataclass
class _Task:
    id: int
    path: str | os.PathLike | bytes
    tag: Any
    job: str = "extract"
    args: tuple = ()
    timeout: float | None = None  # None: the pool's


class _Child:
    """One child process, its pipe, and the task it is working on."""

    def __init__(self, context, spec_json: str, nice: int, memory_mb: int | None):
        self.conn, child_conn = context.Pipe(duplex=True)
        self.process = context.Process(target=_child_main,
                                       args=(child_conn, spec_json, nice, memory_mb),
                                       name="genretagger-extract", daemon=True)
        self.process.start()
        child_conn.close()
        self.task: _Task | None = None
        self.deadline = 0.0
        self.done = 0
        self.idle_since = time.monotonic()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class ExtractPool:
    """Extract songs in `processes` child processes; a crash, hang or leak in a child
    becomes a typed error for that file and the pool goes on.

    submit(path, tag) queues a song; get(timeout) returns (tag, Extracted | FileError), or
    None on timeout; map(paths) yields (path, result) unordered. Use from one thread at a
    time (submit may come from another thread while get waits). Or, from any number of
    threads at once, call(job, path, ...) runs one job of JOBS and returns its result (a
    pool is used one way or the other, not both). Context manager; close() kills the
    children. Children start lazily, on the first submit. `memory_mb` caps each child's
    address space (None: no cap). As with any forkserver/spawn pool, a script that starts
    one needs the `if __name__ == "__main__":` guard (children re-import the main module).
    """

    def __init__(self, processes: int, spec: FeatureSpec = DEFAULT_SPEC, timeout: float = 60.0,
                 nice: int = 10, max_tasks_per_child: int = 500, memory_mb: int | None = None):
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.processes = processes
        self.spec = spec
        self.timeout = timeout
        self.nice = nice
        self.max_tasks_per_child = max_tasks_per_child
        self.memory_mb = memory_mb
        self._spec_json = spec.to_json()
        self._context = multiprocessing.get_context("forkserver")
        # Decoders, tag readers, numpy and scipy imported once in the fork server, shared
        # by every child (decoders and tag readers alike).
        self._context.set_forkserver_preload([
            "daemon.audio.extract", "scipy.signal", "daemon.tags.tagfile",
            "daemon.library.fingerprint"])
        self._children: list[_Child] = []
        self._queue: collections.deque[_Task] = collections.deque()
        self._finished: collections.deque[tuple[Any, Extracted | FileError]] = (
            collections.deque())
        self._ids = itertools.count()
        self._pending = 0
        self._lock = threading.RLock()
        self._answered = threading.Condition(self._lock)  # call(): a result came in
        self._answers: dict[object, Extracted | FileError | Any] = {}
        self._driving = False  # one call() thread at a time collects for all of them
        self._closed = False
        # Counters for status and tests.
        self.crashes = 0
        self.timeouts = 0
        self.recycled = 0

    # ------------------------------------------------------------ public

    def submit(self, path: str | os.PathLike | bytes, tag: Any = None) -> None:
        """Queue one song; its result comes back from get() with `tag`."""
        self._submit(_Task(next(self._ids), path, tag))

    def _submit(self, task: _Task) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("ExtractPool is closed")
            self._queue.append(task)
            self._pending += 1
            self._dispatch()

    def call(self, job: str, path: str | os.PathLike | bytes, *args: Any,
             timeout: float | None = None) -> Any:
        """Run JOBS[job] on `path` in a child and return its result; raises the typed
        FileError it ended with (including a crash, a timeout after `timeout` seconds --
        default: the pool's -- or too much memory), RuntimeError when the pool is closed
        meanwhile. Thread-safe."""
        token = object()
        self._submit(_Task(next(self._ids), path, token, job, args, timeout))
        while True:
            with self._answered:
                while token not in self._answers and self._driving and not self._closed:
                    self._answered.wait(0.5)
                if token in self._answers:
                    result = self._answers.pop(token)
                    break
                if self._closed:  # not the file's fault: no FileError
                    raise RuntimeError("ExtractPool closed while a call waited")
                self._driving = True
            item = None
            try:
                item = self.get(timeout=0.5)
            finally:
                with self._answered:
                    self._driving = False
                    if item is not None:
                        self._answers[item[0]] = item[1]
                    self._answered.notify_all()
        if isinstance(result, FileError):
            raise result
        return result

    def get(self, timeout: float | None = None) -> tuple[Any, Extracted | FileError] | None:
        """The next finished song as (tag, Extracted | FileError); None when nothing
        finished within `timeout` seconds (None: wait as long as work is pending)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._finished:
                    self._pending -= 1
                    return self._finished.popleft()
                if self._closed or self._pending == 0:
                    return None
                self._dispatch()
                now = time.monotonic()
                step = self.timeout
                busy = [c.deadline for c in self._children if c.task is not None]
                if busy:
                    step = min(step, max(0.0, min(busy) - now))
                if end is not None:
                    if now >= end:
                        return None
                    step = min(step, end - now)
                handles = [c.conn for c in self._children]
                handles += [c.process.sentinel for c in self._children]
            ready = wait(handles, timeout=step) if handles else (time.sleep(step) or [])
            with self._lock:
                self._collect(set(ready))

    def map(self, paths: Iterable[str | os.PathLike | bytes]
            ) -> Iterator[tuple[str | os.PathLike | bytes, Extracted | FileError]]:
        """Extract every path; yields (path, result) as songs finish (unordered). Keeps a
        few songs per child in flight, so a long iterable is consumed lazily."""
        with self._lock:
            if self._pending:
                raise RuntimeError("map() on a pool with submitted work; get() it first")
        paths = iter(paths)
        in_flight = 0
        try:
            for path in itertools.islice(paths, 2 * self.processes):
                self.submit(path, path)
                in_flight += 1
            while in_flight:
                item = self.get()
                if item is None:
                    return  # closed from elsewhere
                in_flight -= 1
                for path in itertools.islice(paths, 1):
                    self.submit(path, path)
                    in_flight += 1
                yield item
        finally:
            if in_flight and not self._closed:  # the caller stopped early: drop the rest
                with self._lock:
                    self._pending -= len(self._queue)
                    self._queue.clear()
                while self._pending and self.get() is not None:
                    pass

    @property
    def pending(self) -> int:
        """Songs submitted whose result get() has not returned yet."""
        return self._pending

    def child_pids(self) -> list[int]:
        """Pids of the live children (for status output and fault tests)."""
        with self._lock:
            return [c.process.pid for c in self._children if c.process.is_alive()]

    def busy_pids(self) -> list[int]:
        """Pids of the children working on a song right now."""
        with self._lock:
            return [c.process.pid for c in self._children if c.task is not None]

    def retire_idle(self, idle_seconds: float) -> int:
        """Stop children that have had no song for `idle_seconds` (a decoder child holds
        ~60 MB of its own); the next submit starts a fresh one from the fork server in
        well under a second. Returns how many were stopped."""
        with self._lock:
            now = time.monotonic()
            idle = [c for c in self._children
                    if c.task is None and now - c.idle_since >= idle_seconds]
            for child in idle:
                self._retire(child, polite=True)
            return len(idle)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the children (politely, then SIGKILL after `timeout`); drop queued work."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            children, self._children = self._children, []
            self._queue.clear()
        for child in children:
            try:
                if child.task is None:
                    child.conn.send(None)
                else:
                    child.process.kill()  # busy: its result is no longer wanted
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + timeout
        for child in children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            child.kill()

    def __enter__(self) -> ExtractPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _dispatch(self) -> None:
        """Hand queued songs to idle children, starting children up to `processes`."""
        while self._queue:
            child = next((c for c in self._children if c.task is None), None)
            if child is None:
                if len(self._children) >= self.processes:
                    return
                child = _Child(self._context, self._spec_json, self.nice, self.memory_mb)
                self._children.append(child)
            task = self._queue.popleft()
            try:
                child.conn.send((task.id, task.job, task.path, task.args))
            except (BrokenPipeError, OSError):
                # Died while idle: not this song's fault, so it goes to another child.
                self._queue.appendleft(task)
                self._retire(child)
                continue
            child.task = task
            child.deadline = time.monotonic() + (task.timeout or self.timeout)

    def _collect(self, ready: set) -> None:
        """Take replies, notice dead children, kill children past their deadline."""
        now = time.monotonic()
        for child in list(self._children):
            if child.conn in ready:
                try:
                    reply = child.conn.recv()
                except (EOFError, OSError):
                    reply = None  # died: handled below by its exit status
                except Exception as err:  # a garbled reply: treat the child as broken
                    self._fail(child, UnreadableAudio(
                        _path_text(child.task.path) if child.task else "?",
                        f"decoder sent a bad reply ({type(err).__name__})"))
                    continue
                if reply is not None and child.task is not None and reply[0] == child.task.id:
                    result = self._result(child.task, reply)
                    self._finished.append((child.task.tag, result))
                    child.task = None
                    child.done += 1
                    child.idle_since = now
                    if isinstance(result, TooMuchMemory):
                        # A heap that hit its cap is not worth keeping: a fresh child.
                        self._retire(child, polite=True)
                    elif child.done >= self.max_tasks_per_child:
                        self.recycled += 1
                        self._retire(child, polite=True)
                    continue
            if child.process.sentinel in ready or not child.process.is_alive():
                child.process.join(1)
                code = child.process.exitcode
                if child.task is not None:
                    self.crashes += 1
                    how = (f"signal {-code}" if code is not None and code < 0
                           else f"exit status {code}")
                    job = JOBS[child.task.job]
                    self._fail(child, UnreadableAudio(_path_text(child.task.path),
                                                      f"{job.crashed} ({how})"))
                else:
                    self._retire(child)
            elif child.task is not None and now >= child.deadline:
                self.timeouts += 1
                job, limit = JOBS[child.task.job], child.task.timeout or self.timeout
                self._fail(child, job.timeout_error(_path_text(child.task.path),
                                                    f"{job.doing} took longer than {limit:g} s"))
        self._dispatch()

    def _fail(self, child: _Child, error: FileError) -> None:
        """The child's current song gets `error`; the child is killed and replaced."""
        if child.task is not None:
            self._finished.append((child.task.tag, error))
            child.task = None
        self._retire(child)

    def _retire(self, child: _Child, polite: bool = False) -> None:
        if polite:
            try:
                child.conn.send(None)
                child.process.join(1)
            except (BrokenPipeError, OSError):
                pass
        child.kill()
        self._children.remove(child)

    def _result(self, task: _Task, reply: tuple) -> Extracted | FileError | Any:
        if reply[1] == "ok":
            return reply[2]
        cls, path, reason = reply[2], reply[3], reply[4]
        return cls(path, reason)
