"""Labelled songs -> cached clip features -> artist-disjoint splits.  (No TensorFlow here.)

Top to bottom:
  find_labelled_songs: walk the library; a file whose tag (or confirmed label) maps to a
      canonical genre is a labelled song, keyed by its content fingerprint.
  load_features: fill the feature cache for songs not in it yet, decoding in the
      ExtractPool (the daemon's own decode + feature code); unchanged songs are never
      decoded again.
  build_dataset (trainer.split): classes with enough songs, then artist-disjoint,
      genre-stratified splits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from daemon.audio.extract import ExtractPool
from daemon.audio.featurecache import FeatureCache
from daemon.audio.features import BACKBONE, CNN
from daemon.audio.fingerprint import fingerprint
from daemon.audio.song import read_song
from daemon.core.config import AUDIO_EXTENSIONS
from daemon.core.errors import FileError, GenretaggerError
from daemon.core.paths import stored_path
from daemon.learn.labels import song_label
from daemon.library.albums import AlbumTags, album_identities, artist_group
from daemon.library.walk import same_stat, walk_library

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")

class DatasetError(GenretaggerError):
    """The library cannot make a dataset (too few genres, songs or artists)."""


@dataclass(frozen=True)
class LabelledSong:
    """One song with its genre: `rel` is the POSIX path relative to the library root;
    artist_key the unit of the split (daemon.library.albums.artist_group); artist and
    album_artist its tags as read, album_key and compilation its album
    (daemon.library.albums, as the daemon stores them in tracks)."""

    path: Path
    rel: str
    genre: str
    artist_key: str
    fingerprint: str
    artist: str | None = None
    album_artist: str | None = None
    album_key: str | None = None
    compilation: bool = False


@dataclass(frozen=True)
class Dataset:
    """Classes (ordered) and the three splits of usable songs."""

    classes: tuple[str, ...]
    train: tuple[LabelledSong, ...]
    validation: tuple[LabelledSong, ...]
    test: tuple[LabelledSong, ...]
    # {genre: {"songs": n, "needs": k}}: below --min-songs (or no training artist).
    left_out: dict[str, dict[str, int]] = field(default_factory=dict)
    # genre -> labelled songs with features, every genre (classes and left out).
    song_counts: dict[str, int] = field(default_factory=dict)
    # {genre: why in plain words}: classes trained on but without a test song.
    untested: dict[str, str] = field(default_factory=dict)

    def split(self, name: str) -> tuple[LabelledSong, ...]:
        return getattr(self, name)

    def labels(self, name: str) -> np.ndarray:
        """Class indices of a split's songs, in split order."""
        index = {g: i for i, g in enumerate(self.classes)}
        return np.array([index[s.genre] for s in self.split(name)], dtype=np.int64)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/genretagger/features (or ~/.cache/...): shared by trainer runs."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "genretagger" / "features"


def _path_map(path: Path | None, what: str, value: str) -> dict[str, str]:
    """A JSON file {relative POSIX path: string} -> dict; DatasetError naming `what`
    (and the `value` it maps to) if unreadable or malformed."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"{what} file {path}: {err}") from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise DatasetError(f"{what} file {path}: expected a JSON object "
                           f"{{relative path: {value}}}")
    return data


def load_labels(path: Path | None) -> dict[str, str]:
    """--labels FILE.json -> {relative POSIX path: genre}. Raises DatasetError if malformed."""
    return _path_map(path, "labels", "genre")


def load_not_songs(path: Path | None) -> dict[str, str]:
    """--not-songs FILE.json -> {relative POSIX path: why it is not a song} (the daemon's
    not_a_song tracks: jingles, sweepers, "Not a song" marks). Raises DatasetError if
    malformed."""
    return _path_map(path, "not-songs", "reason")


def load_holdout(path: Path | None) -> set[str]:
    """--holdout FILE.json -> {relative POSIX path}: songs whose artists go to test."""
    if path is None:
        return set()
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"holdout file {path}: {err}") from None
    if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
        raise DatasetError(f"holdout file {path}: expected a JSON list of relative paths")
    return set(data)


def artist_key(artist: str | None, album: str | None, rel: str) -> str:
    """The unit of the split of a song seen alone, without its folder's other songs
    (daemon.library.albums.artist_group; find_labelled_songs sees the whole folder)."""
    tags = AlbumTags(rel, album, None, artist)
    return artist_group(tags, album_identities([tags])[0])


@dataclass(frozen=True)
class KnownFile:
    """What the daemon already read from a file (`--known`), good while its size and
    mtime are unchanged: then the trainer reads nothing from it, not even over SMB."""

    size: int
    mtime: float
    fingerprint: str
    artist: str | None = None
    album: str | None = None
    genres: tuple[str, ...] = ()
    album_artist: str | None = None


def load_known(path: Path | None) -> dict[str, KnownFile]:
    """The daemon's known.json, {relative path: {size, mtime, fingerprint, artist, album,
    genres, album_artist (optional)}}, or {} without one."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return {rel: KnownFile(int(v["size"]), float(v["mtime"]), str(v["fingerprint"]),
                               v.get("artist"), v.get("album"), tuple(v.get("genres") or ()),
                               v.get("album_artist"))
                for rel, v in data.items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise DatasetError(f"known-files list {path}: {type(err).__name__}: {err}") from None


def _read_song(rel: str, path: Path) -> tuple[AlbumTags, tuple[str, ...], str | None]:
    """(artist and album tags, raw genres, why unreadable) from the file's tags, read as
    the daemon reads them (daemon.audio.song.read_song)."""
    song = read_song(path, fingerprinted=False)
    tags = song.tags
    if tags is None:
        return AlbumTags(rel, None, None, None), (), song.tags_problem
    return AlbumTags(rel, tags.album, tags.album_artist, tags.artist), tuple(tags.genres), None


def find_labelled_songs(library: Path, genre_map, labels: Mapping[str, str] | None = None,
                        extensions: Iterable[str] = AUDIO_EXTENSIONS,
                        known: Mapping[str, KnownFile] | None = None,
                        not_songs: Mapping[str, str] | None = None,
                        ) -> tuple[list[LabelledSong], list[tuple[str, str]]]:
    """Walk `library` -> (labelled songs, [(rel, reason)] for files left out).

    The walk is the daemon's (daemon.library.walk.walk_library: same files, same skipped
    folders). Paths are in the daemon's stored form. A confirmed label in `labels`
    ({rel: genre}) overrides the file's tag. A file in `known` whose size and mtime are
    unchanged is not read at all. Files with no usable genre are left out with the reason
    "no genre" / "genre X not mapped"; files in `not_songs` ({rel: reason}) with "not a
    song: reason", whatever their label.
    """
    library = Path(library)
    labels, known, not_songs = labels or {}, known or {}, not_songs or {}
    try:
        walk = walk_library(library, extensions)
    except OSError as err:
        raise DatasetError(f"cannot list {library}: {err.strerror or err}") from None
    skipped = [(folder, "folder cannot be listed") for folder in walk.unreadable]
    reused = 0
    found: list[tuple[str, Path, AlbumTags, str, str | None]] = []
    for name in sorted(walk.files):
        rel, path = stored_path(name), library / name
        if rel in not_songs:
            skipped.append((rel, f"not a song: {not_songs[rel]}"))
            continue
        entry = known.get(rel)
        fp = None
        if entry is not None and same_stat((entry.size, entry.mtime), walk.files[name]):
            tags = AlbumTags(rel, entry.album, entry.album_artist, entry.artist)
            raw, error, fp = entry.genres, None, entry.fingerprint
            reused += 1
        else:
            tags, raw, error = _read_song(rel, path)
        # Every file takes part in its folder's album identity, labelled or not (the
        # daemon stores an unreadable one without tags); genre "" marks the unlabelled.
        found.append((rel, path, tags, "", fp))
        if error is not None and rel not in labels:
            skipped.append((rel, error))
            continue
        genre = song_label(genre_map, labels.get(rel), raw)
        if genre is None:
            skipped.append((rel, f"genre {'/'.join(raw)!r} not mapped" if raw
                            else "no genre"))
            continue
        if fp is None:
            try:
                fp = fingerprint(path)
            except OSError as err:
                skipped.append((rel, f"cannot read: {err.strerror}"))
                continue
        found[-1] = (rel, path, tags, genre, fp)
    identities = album_identities([tags for _, _, tags, _, _ in found])
    songs = [LabelledSong(path, rel, genre, artist_group(tags, identity), fp, tags.artist,
                          tags.album_artist, identity.key, identity.compilation)
             for (rel, path, tags, genre, fp), identity in zip(found, identities, strict=True)
             if genre]
    if known:
        log.info("%d of %d files known to the daemon and unchanged: not read again", reused,
                 len(walk.files))
    return songs, skipped


def load_features(songs: list[LabelledSong], cache: FeatureCache, *,
                  patches: FeatureCache | None = None, embeddings: FeatureCache | None = None,
                  processes: int | None = None, timeout: float = 60.0,
                  progress: bool = False,
                  ) -> tuple[list[LabelledSong], list[tuple[str, str]], dict[str, int]]:
    """Make sure every song's features are in the caches.

    `cache`: the CNN's features. `patches` (the backbone switched on): the backbone's
    patches too, except for a song whose embedding is already in `embeddings` (it needs
    neither its patches nor the backbone again). A song missing both kinds is decoded
    once for both (daemon.audio.decode.decode_song via ExtractPool); cached kinds are
    never decoded. Returns (songs with features, [(rel, reason)] for files that failed,
    {"cached", "decoded", "failed", "backbone_cached", "backbone_decoded"}: songs whose
    CNN features / backbone input were found or decoded). Copies of one file are decoded
    once.
    """
    wanted: dict[str, tuple[str, ...]] = {}  # fingerprint -> the kinds it lacks
    paths: dict[str, Path] = {}
    for song in songs:
        kinds = [CNN] if not cache.has(song.fingerprint) else []
        if patches is not None and not patches.has(song.fingerprint) and not (
                embeddings is not None and embeddings.has(song.fingerprint)):
            kinds.append(BACKBONE)
        if kinds:
            wanted[song.fingerprint] = tuple(kinds)
            paths.setdefault(song.fingerprint, song.path)
    failed_fps = _extract(wanted, paths, {CNN: cache, BACKBONE: patches},
                          processes=processes, timeout=timeout, progress=progress)
    failed = {s.rel: failed_fps[s.fingerprint] for s in songs if s.fingerprint in failed_fps}
    usable = [s for s in songs if s.rel not in failed]
    for rel, reason in failed.items():
        log.warning("%s: left out: %s", rel, reason)

    stats = {"failed": len(failed)}
    for kind, prefix in ((CNN, ""), *(((BACKBONE, "backbone_"),) if patches is not None
                                      else ())):
        stats[prefix + "cached"] = sum(kind not in wanted.get(s.fingerprint, ()) for s in songs)
        stats[prefix + "decoded"] = sum(kind in kinds and fp not in failed_fps
                                        for fp, kinds in wanted.items())
    return usable, sorted(failed.items()), stats


def _extract(wanted: Mapping[str, tuple[str, ...]], paths: Mapping[str, Path],
             caches: Mapping[str, FeatureCache | None], *, processes: int | None,
             timeout: float, progress: bool) -> dict[str, str]:
    """Decode each fingerprint's missing kinds in one pass and cache them by kind.
    Returns {fingerprint: why it failed}."""
    failed: dict[str, str] = {}
    if not wanted:
        return failed
    processes = min(processes or max(1, os.cpu_count() or 1), len(wanted))
    backbone = caches.get(BACKBONE)
    options = {"backbone_spec": backbone.spec} if backbone is not None else {}
    with ExtractPool(processes, caches[CNN].spec, timeout=timeout, **options) as pool, \
            tqdm(total=len(wanted), desc="decoding", unit="song", disable=not progress) as bar:
        for fp, kinds in wanted.items():
            pool.submit(paths[fp], fp, kinds)
        while (item := pool.get()) is not None:
            fp, result = item
            if isinstance(result, FileError):
                failed[fp] = result.reason
            else:
                for kind, value in result.by_kind().items():
                    caches[kind].put(fp, value)
            bar.update(1)
    return failed


def song_chunks(songs: Iterable[LabelledSong], cache: FeatureCache, size: int = 64,
                ) -> Iterator[np.ndarray]:
    """Features of `songs` in order, `size` songs at a time: (songs, clips, F, T, 1) float32."""
    chunk: list[np.ndarray] = []
    for song in songs:
        features = cache.get(song.fingerprint)
        if features is None:
            raise DatasetError(f"{song.rel}: features vanished from the cache")
        chunk.append(features)
        if len(chunk) == size:
            yield np.stack(chunk)
            chunk = []
    if chunk:
        yield np.stack(chunk)


def summary(dataset: Dataset, clips_per_song: int) -> dict:
    """The training-set summary stored in the bundle and the report."""
    return {
        "classes": list(dataset.classes),
        "songs": {name: len(dataset.split(name)) for name in SPLITS},
        "clips": {name: len(dataset.split(name)) * clips_per_song for name in SPLITS},
        "artists": {name: len({s.artist_key for s in dataset.split(name)}) for name in SPLITS},
        "per_class": {name: dict(sorted(Counter(s.genre for s in dataset.split(name)).items()))
                      for name in SPLITS},
        "left_out": dataset.left_out,
        "not_tested": dataset.untested,
    }


def training_set_hash(dataset: Dataset) -> str:
    """sha256 over the classes and the (fingerprint, genre) pairs of the training split."""
    digest = hashlib.sha256(json.dumps(list(dataset.classes)).encode())
    for fp, genre in sorted((s.fingerprint, s.genre) for s in dataset.train):
        digest.update(f"{fp}\0{genre}\n".encode())
    return digest.hexdigest()


def split_listing(dataset: Dataset) -> dict[str, list[dict[str, str]]]:
    """split.json: {split: [{"path", "genre", "fingerprint"}]} (paths relative)."""
    return {name: [{"path": s.rel, "genre": s.genre, "fingerprint": s.fingerprint}
                   for s in dataset.split(name)] for name in SPLITS}
