"""Helpers the test modules share (tests/ is on sys.path: `from helpers import ...`)."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 10.0, what: str | None = None, every: float = 0.05):
    """Poll `predicate` until it returns something truthy, and return that; after
    `timeout` seconds the test fails, saying what it waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")


def make_not_songs(root, outside, good_song) -> dict[str, str]:
    """Entries with songs' names that are not songs inside the library `root`: a folder,
    a FIFO, a socket, a device (made when running as root: mknod needs it), a broken
    link, a link loop, links leading outside (to a FIFO, which would block whoever opens
    it, and to `good_song`, copied outside) and a folder link leading outside. `outside`
    is a folder outside root. Returns {relative path: the reason the walk gives}."""
    import os
    import shutil
    import socket
    import stat

    root, outside = os.fspath(root), os.fspath(outside)
    os.makedirs(os.path.join(root, "Skip"), exist_ok=True)
    os.makedirs(outside, exist_ok=True)
    made = {}

    def at(rel):
        return os.path.join(root, rel)

    os.mkdir(at("Skip/folder.mp3"))
    made["Skip/folder.mp3"] = "is a directory"
    os.mkfifo(at("Skip/pipe.wav"))
    made["Skip/pipe.wav"] = "a pipe (FIFO)"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(at("Skip/s.ogg"))  # a socket file stays after close
    sock.close()
    made["Skip/s.ogg"] = "a socket"
    if os.geteuid() == 0:
        os.mknod(at("Skip/dev.flac"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
        made["Skip/dev.flac"] = "a device"
    os.symlink(at("Skip/gone-away.mp3"), at("Skip/broken.mp3"))
    made["Skip/broken.mp3"] = "broken symlink"
    os.symlink("loop.mp3", at("Skip/loop.mp3"))
    made["Skip/loop.mp3"] = "symlink loop"
    os.mkfifo(os.path.join(outside, "blocks-when-opened"))
    os.symlink(os.path.join(outside, "blocks-when-opened"), at("Skip/outside-fifo.mp3"))
    made["Skip/outside-fifo.mp3"] = "leads outside the library"
    shutil.copyfile(good_song, os.path.join(outside, "good.mp3"))
    os.symlink(os.path.join(outside, "good.mp3"), at("Skip/outside-song.mp3"))
    made["Skip/outside-song.mp3"] = "leads outside the library"
    os.makedirs(os.path.join(outside, "Other Drive"), exist_ok=True)
    shutil.copyfile(good_song, os.path.join(outside, "Other Drive", "song.mp3"))
    os.symlink(os.path.join(outside, "Other Drive"), at("Skip/Other Drive"))
    made["Skip/Other Drive"] = "leads outside the library"
    return made
