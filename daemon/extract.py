"""Song -> model input, in-process (`extract`) or in child processes (`ExtractPool`).

Decoders are C libraries fed with whatever sits on the station's drive; a bad file can
segfault, hang or leak in them. The pool runs them in child processes so none of that
reaches the daemon: a child that crashes or hangs past the timeout is killed and replaced,
and its file gets a typed error (UnreadableAudio "decoder crashed ...", DecodeTimeout);
every child is replaced after `max_tasks_per_child` files so leaks cannot grow. Children
come from the 'forkserver' context: the daemon has threads, so plain fork is unsafe.

Each child gets one task at a time over its own pipe, so the parent always knows which file
a dead or stuck child was working on. Features (~250 KB per song) travel pickled through
that pipe: one copy, far cheaper than the decode.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from daemon.audio import AudioInfo, decode_clips
from daemon.errors import DecodeTimeout, FileError, UnreadableAudio
from daemon.features import DEFAULT_SPEC, FeatureSpec, song_features


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


# ---------------------------------------------------------------- the child side


def _child_main(conn: Connection, spec_json: str, nice: int) -> None:
    """Child loop: receive (task id, path), reply with features or a typed error."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if nice:
        os.nice(nice)
    spec = FeatureSpec.from_json(spec_json)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if message is None:
            return
        task_id, path = message
        try:
            result = extract(path, spec)
            reply: tuple = (task_id, "ok", result.features, result.info)
        except FileError as err:
            reply = (task_id, "error", type(err), err.path, err.reason)
        except Exception as err:  # never let one file end the child's loop
            reply = (task_id, "error", UnreadableAudio, _path_text(path),
                     f"extraction failed ({type(err).__name__}: {err})")
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


class _Child:
    """One child process, its pipe, and the task it is working on."""

    def __init__(self, context, spec_json: str, nice: int):
        self.conn, child_conn = context.Pipe(duplex=True)
        self.process = context.Process(target=_child_main, args=(child_conn, spec_json, nice),
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
    time (submit may come from another thread while get waits). Context manager; close()
    kills the children. Children start lazily, on the first submit. As with any
    forkserver/spawn pool, a script that starts one needs the `if __name__ == "__main__":`
    guard (children re-import the main module).
    """

    def __init__(self, processes: int, spec: FeatureSpec = DEFAULT_SPEC, timeout: float = 60.0,
                 nice: int = 10, max_tasks_per_child: int = 500):
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.processes = processes
        self.spec = spec
        self.timeout = timeout
        self.nice = nice
        self.max_tasks_per_child = max_tasks_per_child
        self._spec_json = spec.to_json()
        self._context = multiprocessing.get_context("forkserver")
        # Decoders, numpy and scipy imported once in the fork server, shared by every child.
        self._context.set_forkserver_preload(["daemon.extract", "scipy.signal"])
        self._children: list[_Child] = []
        self._queue: collections.deque[_Task] = collections.deque()
        self._finished: collections.deque[tuple[Any, Extracted | FileError]] = (
            collections.deque())
        self._ids = itertools.count()
        self._pending = 0
        self._lock = threading.RLock()
        self._closed = False
        # Counters for status and tests.
        self.crashes = 0
        self.timeouts = 0
        self.recycled = 0

    # ------------------------------------------------------------ public

    def submit(self, path: str | os.PathLike | bytes, tag: Any = None) -> None:
        """Queue one song; its result comes back from get() with `tag`."""
        with self._lock:
            if self._closed:
                raise RuntimeError("ExtractPool is closed")
            self._queue.append(_Task(next(self._ids), path, tag))
            self._pending += 1
            self._dispatch()

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
                child = _Child(self._context, self._spec_json, self.nice)
                self._children.append(child)
            task = self._queue.popleft()
            try:
                child.conn.send((task.id, task.path))
            except (BrokenPipeError, OSError):
                # Died while idle: not this song's fault, so it goes to another child.
                self._queue.appendleft(task)
                self._retire(child)
                continue
            child.task = task
            child.deadline = time.monotonic() + self.timeout

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
                    self._finished.append((child.task.tag, self._result(child.task, reply)))
                    child.task = None
                    child.done += 1
                    child.idle_since = now
                    if child.done >= self.max_tasks_per_child:
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
                    self._fail(child, UnreadableAudio(_path_text(child.task.path),
                                                      f"decoder crashed ({how})"))
                else:
                    self._retire(child)
            elif child.task is not None and now >= child.deadline:
                self.timeouts += 1
                self._fail(child, DecodeTimeout(_path_text(child.task.path),
                                                f"decoding took longer than {self.timeout:g} s"))
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

    def _result(self, task: _Task, reply: tuple) -> Extracted | FileError:
        if reply[1] == "ok":
            return Extracted(_path_text(task.path), reply[2], reply[3])
        cls, path, reason = reply[2], reply[3], reply[4]
        return cls(path, reason)
