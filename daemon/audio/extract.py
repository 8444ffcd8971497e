"""Song -> model input in child processes (`ExtractPool`); what a child runs is
daemon.audio.jobs.

Decoders and tag parsers are libraries fed with whatever sits on the station's drive; a
bad file can segfault, hang or leak in them, and a 150 MB cover picture is read into
memory whole. The pool runs them in child processes so none of that reaches the daemon: a
child that crashes or hangs past the timeout is killed and replaced, and its file gets a
typed error (UnreadableAudio "decoder crashed ...", DecodeTimeout, ReadTimeout); a child
may use at most `memory_mb` of address space (RLIMIT_AS), past which its file gets
TooMuchMemory; every child is replaced after `max_tasks_per_child` files so leaks cannot
grow. Children come from the 'forkserver' context: the daemon has threads, so plain fork
is unsafe. Every pool in the daemon shares the one fork server.

A child runs JOBS (daemon.audio.jobs). The worker drives its pool with submit/get; the library
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
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from daemon.audio.features import BACKBONE_SPEC, CNN, DEFAULT_SPEC, BackboneSpec, FeatureSpec
from daemon.audio.jobs import JOBS, Extracted, SongSpecs, child_main
from daemon.core.errors import FileError, TooMuchMemory, UnreadableAudio


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

    def __init__(self, context, spec_json: str, nice: int, memory_mb: int | None,
                 role: str):
        self.conn, child_conn = context.Pipe(duplex=True)
        self.process = context.Process(target=child_main,
                                       args=(child_conn, spec_json, nice, memory_mb, role),
                                       name=f"genretagger-{role}", daemon=True)
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

    submit(path, tag, kinds) queues a song (kinds: the feature kinds to extract, one decode
    pass for all; default the pool's `kinds`); get(timeout) returns (tag, Extracted |
    FileError), or None on timeout; map(paths) yields (path, result) unordered. Use from
    one thread at a time (submit may come from another thread while get waits). Or, from
    any number of threads at once, call(job, path, ...) runs one job of JOBS and returns
    its result (a pool is used one way or the other, not both). Context manager; close()
    kills the children. Children start lazily, on the first submit. `memory_mb` caps each
    child's address space (None: no cap). As with any forkserver/spawn pool, a script that starts
    one needs the `if __name__ == "__main__":` guard (children re-import the main module).
    """

    def __init__(self, processes: int, spec: FeatureSpec = DEFAULT_SPEC, timeout: float = 60.0,
                 nice: int = 10, max_tasks_per_child: int = 500, memory_mb: int | None = None,
                 role: str = "decoder", *, backbone_spec: BackboneSpec = BACKBONE_SPEC,
                 kinds: Iterable[str] = (CNN,)):
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.processes = processes
        self.spec = spec
        self.backbone_spec = backbone_spec
        self.kinds = tuple(sorted(kinds))
        self.timeout = timeout
        self.nice = nice
        self.max_tasks_per_child = max_tasks_per_child
        self.memory_mb = memory_mb
        self.role = role  # the children's process name: "gt <role>" in ps and top
        self._spec_json = SongSpecs(spec, backbone_spec).to_json()
        self._context = multiprocessing.get_context("forkserver")
        # Decoders, tag readers and numpy imported once in the fork server, shared by every
        # child (decoders and tag readers alike): daemon.audio.jobs imports all of them;
        # onnxruntime too, which a decoder running the backbone imports
        # (daemon.audio.embedding; measured with bench/daemon.py: ~60 MB less peak PSS for
        # ~10 MB more at idle); daemon.audio.preloaded last, so the children's
        # collections leave all that shared.
        self._context.set_forkserver_preload(["daemon.audio.jobs", "onnxruntime",
                                              "daemon.audio.preloaded"])
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

    def submit(self, path: str | os.PathLike | bytes, tag: Any = None,
               kinds: Iterable[str] | None = None, backbone: str | None = None) -> None:
        """Queue one song; its result (the feature kinds `kinds`, default the pool's;
        with a `backbone` graph file, the patches' embeddings by it in place of the
        patches: daemon.audio.embedding) comes back from get() with `tag`."""
        wanted = self.kinds if kinds is None else tuple(sorted(kinds))
        args = (wanted,) if backbone is None else (wanted, backbone)
        self._submit(_Task(next(self._ids), path, tag, args=args))

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
                child = _Child(self._context, self._spec_json, self.nice, self.memory_mb,
                               self.role)
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
                        os.fsdecode(child.task.path) if child.task else "?",
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
                    self._fail(child, UnreadableAudio(os.fsdecode(child.task.path),
                                                      f"{job.crashed} ({how})"))
                else:
                    self._retire(child)
            elif child.task is not None and now >= child.deadline:
                self.timeouts += 1
                job, limit = JOBS[child.task.job], child.task.timeout or self.timeout
                self._fail(child, job.timeout_error(os.fsdecode(child.task.path),
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
