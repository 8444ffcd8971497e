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


def genre_bundle(out, classes: tuple[str, ...], hears: str):
    """A real ONNX bundle dir (model.onnx) whose model hears `hears` in every song.

    The graph is the real thing onnxruntime runs (clips -> mean -> MatMul + bias ->
    softmax); zero weights and a bias on one class make its answer known in advance, so a
    test can stage "this model says A, the next one B" without training.
    """
    import json
    from pathlib import Path

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from daemon.audio.features import DEFAULT_SPEC

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    freqs, frames, _ = DEFAULT_SPEC.input_shape
    bias = np.array([4.0 if c == hears else 0.0 for c in classes], np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["clips", "axes"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "w"], ["scores"]),
         helper.make_node("Add", ["scores", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        f"hears-{hears}",
        [helper.make_tensor_value_info("clips", TensorProto.FLOAT, [None, freqs, frames, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, len(classes)])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
         numpy_helper.from_array(np.zeros((freqs, len(classes)), np.float32), "w"),
         numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(model, {
        "classes": json.dumps(list(classes)), "feature_spec": DEFAULT_SPEC.to_json(),
        "temperature": "1.0", "clips_per_song": "5", "training_set_hash": f"hears-{hears}",
        "created_at": "2026-01-01T00:00:00+00:00"})
    onnx.checker.check_model(model)
    onnx.save(model, out / "model.onnx")
    return out


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


# ---- Ogg pages: what a buggy encoder leaves, written on purpose --------------------------

def _ogg_crc_table() -> list[int]:
    table = []
    for byte in range(256):
        r = byte << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return table


_OGG_CRC = _ogg_crc_table()


def ogg_crc(page: bytes) -> int:
    """Ogg's page checksum: CRC-32, polynomial 0x04C11DB7, not reflected, initial 0, over
    the page with its checksum field zeroed."""
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[((crc >> 24) ^ byte) & 0xFF]
    return crc


def ogg_pages(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of every page of an Ogg file."""
    pages, pos = [], 0
    while pos < len(data):
        if data[pos:pos + 4] != b"OggS":
            raise ValueError(f"no Ogg page at byte {pos}")
        segments = data[pos + 26]
        length = 27 + segments + sum(data[pos + 27:pos + 27 + segments])
        pages.append((pos, length))
        pos += length
    return pages


def shift_ogg_granules(data: bytes, shift: int, first_page: int = 2) -> bytes:
    """The Ogg file with `shift` taken off the granule position of every page from
    `first_page` on (2: the first audio page of a Vorbis file) and each page's checksum
    recomputed, as an encoder that counted from below zero leaves it."""
    import struct

    out = bytearray(data)
    for offset, length in ogg_pages(data)[first_page:]:
        granule = struct.unpack_from("<q", out, offset + 6)[0]
        struct.pack_into("<q", out, offset + 6, granule - shift)
        struct.pack_into("<I", out, offset + 22, 0)
        struct.pack_into("<I", out, offset + 22, ogg_crc(bytes(out[offset:offset + length])))
    return bytes(out)


def negative_granule_ogg(folder, seconds: float = 10.0, sr: int = 22_050, seed: int = 0,
                         name: str = "negative granule.ogg"):
    """A real Ogg Vorbis song (oggenc) whose audio pages all carry granule positions below
    zero (shifted past the song's length, CRCs rewritten): FFmpeg sees no audio after its
    first page, libvorbis plays it whole. Returns its path."""
    import subprocess
    from pathlib import Path

    import soundfile as sf

    from daemon.cli.demo import synthesize

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wav, ogg = folder / f".{name}.wav", folder / f".{name}.src.ogg"
    sf.write(wav, synthesize("Rock", seconds, sr, seed, 2), sr)
    subprocess.run(["oggenc", "-Q", "-o", str(ogg), str(wav)], check=True)
    target = folder / name
    target.write_bytes(shift_ogg_granules(ogg.read_bytes(), int(3 * seconds * sr)))
    wav.unlink()
    ogg.unlink()
    return target


def ogg_nobody_decodes(folder, name: str = "headers then noise.ogg"):
    """A real Ogg Vorbis file's header pages followed by noise: neither FFmpeg nor
    libsndfile decodes it. Returns its path."""
    import random
    from pathlib import Path

    source = negative_granule_ogg(folder, 4.0, name=f".{name}.whole.ogg")
    data = source.read_bytes()
    source.unlink()
    audio_start = ogg_pages(data)[2][0]
    target = Path(folder) / name
    target.write_bytes(data[:audio_start] + random.Random(3).randbytes(60_000))
    return target
