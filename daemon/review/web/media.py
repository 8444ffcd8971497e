"""What the review page shows and plays of a song: its spectrogram and its clip regions,
and the routes serving them (/tracks/<id>/spectrogram.png, /tracks/<id>/preview.wav; the
preview answers Range requests).

Both start from a TRACK (never a path from the request): `daemon.core.paths.library_file`
turns the track's stored relative path into a file under the library root and refuses
anything that would leave it (absolute paths, "..", symlinks pointing outside).

The song is decoded in a child process of `children` (daemon.audio.extract.ExtractPool.call),
never in the web server's: a file that crashes or hangs a decoder costs that request a
typed FileError ("decoder crashed", "decoding took longer than N s"), never the service.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import soundfile as sf
from flask import Blueprint, Response, abort, send_file
from PIL import Image

from daemon.audio.extract import ExtractPool
from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import DEFAULT_SPEC, FeatureSpec, clip_starts
from daemon.core.db.models import Track
from daemon.core.errors import FileError
from daemon.core.paths import OutsideLibrary, library_file
from daemon.review.web.common import plain, review

log = logging.getLogger(__name__)

bp = Blueprint("media", __name__)

PREVIEW_SR = 22_050
# Each clip region is played from a second before the clip to a second after it.
PREVIEW_LEAD_S = 1.0
PREVIEW_SECONDS = 3.0
PREVIEW_GAP_S = 0.25
FADE_S = 0.02

# Dark blue -> purple -> orange -> pale yellow: quiet is dark, loud is bright.
_ANCHORS = np.array([[8, 8, 32], [72, 18, 110], [180, 54, 100], [245, 130, 40],
                     [252, 240, 170]], dtype=np.float64)
_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)),
                           _ANCHORS[:, c]) for c in range(3)], axis=1).astype(np.uint8)


def song_spectrogram(path: Path, fingerprint: str | None, cache_dir: Path,
                     spec: FeatureSpec = DEFAULT_SPEC, *, children: ExtractPool,
                     timeout: float | None = None) -> np.ndarray:
    """The song's model input (clips, F, T, 1): from the feature cache when the worker
    stored it, else decoded now in one of `children` (within `timeout` seconds; default:
    the pool's) and stored for next time. Raises FileError subclasses."""
    cache = FeatureCache(cache_dir, spec)
    if fingerprint:
        features = cache.get(fingerprint)
        if features is not None:
            return features
    if children.spec != spec:
        raise ValueError("the decoder children compute another feature spec")
    features = children.call("extract", path, timeout=timeout).features
    if fingerprint:
        cache.put(fingerprint, features)
    return features


def spectrogram_image(features: np.ndarray) -> np.ndarray:
    """(clips, F, T, 1) in [0, 1] -> (H, W, 3) uint8: the clips side by side, low notes at
    the bottom, halved in both directions for a thumbnail, a dark line between clips."""
    clips = []
    for clip in features[..., 0]:
        img = clip[::-1]  # row 0 is the lowest frequency
        h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
        img = img[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        clips.append(img)
        clips.append(np.full((img.shape[0], 1), -1.0))
    strip = np.hstack(clips[:-1])
    index = np.clip(strip * 255, 0, 255).astype(np.uint8)
    rgb = _LUT[index]
    rgb[strip < 0] = (255, 255, 255)
    return rgb


def png_bytes(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG file bytes (Pillow's encoder)."""
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def preview_windows(duration: float, spec: FeatureSpec = DEFAULT_SPEC) -> list[tuple[float, float]]:
    """(start, seconds) of what the preview plays: a few seconds around each clip start."""
    windows = []
    for start in clip_starts(duration, spec):
        begin = max(0.0, start - PREVIEW_LEAD_S)
        windows.append((begin, min(PREVIEW_SECONDS, max(0.0, duration - begin))))
    return windows


def preview_wav(path: Path, duration: float | None = None,
                spec: FeatureSpec = DEFAULT_SPEC, *, children: ExtractPool,
                timeout: float | None = None) -> bytes:
    """The song's clip regions one after another, as a 16-bit mono WAV file's bytes.
    Decodes only those windows, in one of `children` (within `timeout` seconds each for
    the header and the windows; default: the pool's). Raises UnreadableAudio / TooShort /
    DecodeTimeout and the other FileErrors."""
    if duration is None or duration <= 0:
        duration = children.call("probe", path, timeout=timeout).duration
    windows = preview_windows(duration, spec)
    decoded = children.call("windows", path, windows, PREVIEW_SR, timeout=timeout)
    fade = int(FADE_S * PREVIEW_SR)
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    gap = np.zeros(int(PREVIEW_GAP_S * PREVIEW_SR), dtype=np.float32)
    pieces = []
    for window in decoded:
        window = window.astype(np.float32, copy=True)
        if len(window) > 2 * fade:  # no clicks where one region meets the next
            window[:fade] *= ramp
            window[-fade:] *= ramp[::-1]
        pieces += [window, gap]
    samples = np.concatenate(pieces[:-1]) if pieces else gap
    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), PREVIEW_SR, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def _tracked_file(track_id: int) -> tuple[Track, Path]:
    """The track and its file under the library root; 404 for anything else."""
    deps = review()
    with deps.sessions() as db:
        track = db.get(Track, track_id)
    if track is None:
        abort(404)
    try:
        return track, library_file(deps.config.library.root, track.path)
    except OutsideLibrary as err:
        log.warning("refused to serve track %d: %s", track_id, err)
        abort(404)


@bp.get("/tracks/<id:track_id>/spectrogram.png")
def spectrogram(track_id: int):
    deps = review()
    track, path = _tracked_file(track_id)
    key = (track.id, track.fingerprint, track.size, track.mtime)
    try:
        png = deps.thumbs.get_or_make(key, lambda: png_bytes(spectrogram_image(
            song_spectrogram(path, track.fingerprint, deps.config.cache_dir,
                             children=deps.children,
                             timeout=deps.config.workers.decode_timeout))))
    except FileError as err:
        return plain(422, f"This song cannot be read: {err.reason}")
    response = Response(png, mimetype="image/png")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


@bp.get("/tracks/<id:track_id>/preview.wav")
def preview(track_id: int):
    deps = review()
    track, path = _tracked_file(track_id)
    key = (track.id, track.size, track.mtime)
    try:
        wav = deps.previews.get_or_make(key, lambda: preview_wav(
            path, track.duration, children=deps.children,
            timeout=deps.config.workers.decode_timeout))
    except FileError as err:
        return plain(422, f"This song cannot be played: {err.reason}")
    response = send_file(io.BytesIO(wav), mimetype="audio/wav", conditional=True,
                         etag=f"{track.id}-{track.size}-{track.mtime}", max_age=3600,
                         download_name=f"preview-{track.id}.wav")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response
