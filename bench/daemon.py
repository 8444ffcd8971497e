"""The daemon end to end: a cold backfill through `genretagger run`, latency, memory, idle CPU.

    .venv/bin/python bench/daemon.py [--songs 304] [--processes N] [--idle-seconds 20]
                                     [--family cnn|backbone|ensemble|seed] [--threads N]

Measured in one run, against the running daemon subprocess (real watcher, real decoder
pool, real model, real SQLite):
  backfill   >= 300 untagged 3-7 minute songs already on the drive when the daemon
             starts, fresh database and feature cache: songs/s from the first file
             settled to the last suggestion (targets on 2 cores: >= 8/s with the
             backbone, >= 30/s with the CNN alone: --family seed, trained with
             --no-backbone and served with classifier.backbone = false); the CPU the
             daemon's tree spent per song, and the compute ceiling that allows: cores /
             CPU per song (target: the backfill at >= 80% of it)
  latency    songs copied in one at a time while the daemon idles: seconds from the
             file settling (its track queued) to its suggestion (target <= 3 s), and
             from the copy finishing to the suggestion (includes settle_seconds)
  memory     RSS and PSS of the daemon plus its children, peak during the backfill and
             idle afterwards, once the worker stopped its idle decoders (target <= 300 MB;
             RSS counts pages shared between the processes once per process, PSS once),
             with each role's share: the daemon, the fork server, the decoders, other
             (multiprocessing's resource tracker)
  idle CPU   the daemon watching 15,000 known, unchanged files (native observer): share
             of one core (target < 2%)
  reconcile  one reconciliation walk over those 15,000 files (target <= 2 s), next to
             the plain os.walk + stat of the same tree
Baseline: in-process extract + classify of a sample of the same songs, one song at a
time in this process (what the daemon's pipeline adds or saves shows in the ratio).

Cached under bench/out/daemon/: the masters (a few per format, encoded by the real
encoders), the copies (same audio, each with its own title tag so each has its own
fingerprint: the backfill is cold), the tiny model. The 15,000-file tree is
bench/reconcile.py's. Figures, not pass/fail; the machine may be shared (load printed).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# This file is named daemon.py: the bench folder must not shadow the `daemon` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(BENCH.parent))

from daemon.cli.demo import encode_masters, make_library  # noqa: E402


def _tree_bench():
    """bench/reconcile.py's cached 15,000-file tree and its DB seeding."""
    spec = importlib.util.spec_from_file_location("bench_reconcile", BENCH / "reconcile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

OUT = BENCH / "out" / "daemon"
EXE = [sys.executable, "-m", "daemon.cli"]
GENRES = ("Classical", "Hip-Hop", "Metal")


# ---- cached inputs -----------------------------------------------------------------------

def masters(per_format: int) -> list[Path]:
    """3-7 minute songs, a few per format, 22,050 Hz stereo (encoded once)."""
    by_format = encode_masters(OUT / "masters", per_format, GENRES, 22_050, seed=11)
    return [path for paths in by_format.values() for path in paths]


def copies(sources: list[Path], folder: Path, n: int, prefix: str) -> list[Path]:
    """n untagged songs: copies of the masters, each with its own title (own fingerprint)."""
    from daemon.tags.write import write_tags

    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(n):
        source = sources[i % len(sources)]
        path = folder / f"{prefix} {i + 1:04d}{source.suffix}"
        if not path.exists():
            partial = folder / f".partial-{path.name}"
            shutil.copyfile(source, partial)
            write_tags(partial, title=f"{prefix} {i + 1}", artist=f"Bench Artist {i % 17}")
            partial.rename(path)
        made.append(path)
    for extra in set(folder.iterdir()) - set(made):  # a bigger earlier run's songs
        extra.unlink()
    return made


def model_bundle(family: str) -> Path:
    """A tiny 3-genre tournament trained once with `genretagger train --family all`; out:
    a run directory whose model.onnx is `family`'s bundle (ensemble: both families).
    family "seed": the CNN alone, trained with --no-backbone (a station with
    `classifier.backbone = false`)."""
    library = OUT / "model-library"
    if not library.exists():
        make_library(library, songs_per_genre=8, genres=GENRES, untagged_share=0.0,
                     seconds=(6, 10), formats=(".wav", ".flac", ".mp3"), broken=0)
    if family == "seed":
        out = OUT / "model-seed"
        if not (out / "model.onnx").exists():
            _train(library, out, "--family", "cnn", "--no-backbone")
        return out
    out = OUT / "model"
    if not all((out / f"{f}.onnx").exists() for f in ("cnn", "backbone", "ensemble")):
        shutil.rmtree(out, ignore_errors=True)  # none, or a run from before the tournament
        _train(library, out, "--family", "all")
    chosen = OUT / f"model-{family}"
    if not (chosen / "model.onnx").exists():
        shutil.rmtree(chosen, ignore_errors=True)
        shutil.copytree(out, chosen)
        shutil.copyfile(out / f"{family}.onnx", chosen / "model.onnx")
    return chosen


def _train(library: Path, out: Path, *options: str) -> None:
    print(f"  training the bench model {out.name} ...", flush=True)
    part = out.with_name(out.name + ".tmp")
    shutil.rmtree(part, ignore_errors=True)
    subprocess.run(EXE + ["train", "--library", str(library), "--out", str(part), *options,
                          "--epochs", "5", "--min-songs", "4"], check=True, capture_output=True)
    shutil.rmtree(out, ignore_errors=True)
    part.rename(out)


# ---- a daemon to measure -----------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """A fresh state dir with the model active, and `genretagger run` on `library`."""

    def __init__(self, base: Path, library: Path, bundle: Path, processes: int,
                 settle: float = 2.0, watch: str = "native", batch_songs: int = 32,
                 threads: int | None = None, backbone: bool = True):
        from daemon.core.config import load_config
        from daemon.core.db.engine import open_database
        from daemon.learn.registry import activate, register_bundle

        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        self.base, self.library = base, library
        self.config_path = base / "config.toml"
        self.config_path.write_text(f"""
state_dir = "{base / 'state'}"
[library]
root = "{library}"
watch = "{watch}"
settle_seconds = {settle}
[workers]
processes = {processes}
[classifier]
batch_songs = {batch_songs}
{'' if threads is None else f'threads = {threads}'}
backbone = {str(backbone).lower()}
[review]
port = {free_port()}
""")
        self.config = load_config(self.config_path)
        self.engine, self.sessions = open_database(self.config.db_url)
        model = register_bundle(self.sessions, self.config, bundle)
        activate(self.sessions, model.version)
        self.db = base / "state" / "genretagger.db"
        self.log = base / "daemon.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        with open(self.log, "w") as log:
            # The environment systemd/genretagger.service gives the daemon.
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "MALLOC_ARENA_MAX": "2"}
            self.proc = subprocess.Popen(EXE + ["--config", str(self.config_path), "run"],
                                         stdout=subprocess.DEVNULL, stderr=log, env=env)
        started = time.time()
        while "genretagger running" not in self.log.read_text():
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        return started

    def query(self, sql: str, *args):
        with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as conn:
            return conn.execute(sql, args).fetchall()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.engine.dispose()


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return pids


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB of `pid` and all its descendants."""
    rss = pss = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            one = memory_mb_one(p)
            rss, pss = rss + one[0], pss + one[1]
    return rss, pss


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its live descendants (and their reaped children)."""
    return sum(cpu_by_role(pid).values())


def cpu_by_role(pid: int) -> dict[str, float]:
    """CPU seconds per role (see role; the fork server's include the children it reaped)."""
    tick = os.sysconf("SC_CLK_TCK")
    roles: dict[str, float] = {}
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            name = role(p, pid, by_name=True)
            roles[name] = roles.get(name, 0.0) + sum(int(f) for f in fields[11:15]) / tick
    return roles


def role(p: int, pid: int, by_name: bool = False) -> str:
    """The daemon itself, the fork server, the decoders (by_name: the decoders and the tag
    readers apart, by their process names), other."""
    cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
    parent = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
    parent_cmd = Path(f"/proc/{parent}/cmdline").read_bytes()
    if p == pid:
        return "daemon"
    # Decoders are forked from the fork server, so they carry its command line too.
    if b"forkserver" in parent_cmd:
        if by_name and Path(f"/proc/{p}/comm").read_text().strip() == "gt tag reader":
            return "tag readers"
        return "decoders"
    return "fork server" if b"forkserver" in cmdline else "other"


def memory_by_role(pid: int) -> dict[str, tuple[float, float]]:
    """(RSS, PSS) in MB per role: the daemon itself, the fork server, the decoders, other."""
    roles: dict[str, tuple[float, float]] = {}
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            name = role(p, pid)
            rss, pss = memory_mb_one(p)
            old = roles.get(name, (0.0, 0.0))
            roles[name] = (old[0] + rss, old[1] + pss)
    return roles


def memory_mb_one(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB of one process (smaps_rollup)."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss += int(line.split()[1])
        elif line.startswith("Pss:"):
            pss += int(line.split()[1])
    return rss / 1024, pss / 1024


class PeakMemory:
    """Samples the daemon's tree every 0.25 s in a thread; own stop event. Keeps the peak
    of the whole tree and, at that moment, the share of each role."""

    def __init__(self, pid: int):
        self.pid, self.rss, self.pss = pid, 0.0, 0.0
        self.roles: dict[str, tuple[float, float]] = {}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_event.wait(0.25):
            roles = memory_by_role(self.pid)
            rss = sum(r for r, _ in roles.values())
            pss = sum(p for _, p in roles.values())
            if pss > self.pss:
                self.roles = roles
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join()


# ---- the measurements ----------------------------------------------------------------------

def baseline(sample: list[Path], bundle: Path) -> float:
    """In-process extract + classify, one song at a time, at the worker's windows per
    song and with every feature kind the bundle takes: songs/s."""
    from daemon.audio.jobs import extract
    from daemon.core.config import ClassifierConfig
    from daemon.core.threads import limit_math_threads
    from daemon.suggest.classifier import Classifier
    from daemon.suggest.inputs import WindowSpecs

    limit_math_threads(1)  # as in a decoder child
    specs = WindowSpecs.for_windows(ClassifierConfig().windows_per_song)
    classifier = Classifier.load(bundle / "model.onnx", specs.cnn, specs.backbone,
                                 windows_per_song=specs.windows)
    kinds = classifier.needs
    extract(sample[0], specs.cnn, specs.backbone, kinds)  # warm the decoders' imports
    started = time.perf_counter()
    for path in sample:
        classifier.predict([extract(path, specs.cnn, specs.backbone, kinds).by_kind()])
    return len(sample) / (time.perf_counter() - started)


def backfill(daemon: Daemon, n: int) -> dict:
    started = daemon.start()
    cpu_before = cpu_by_role(daemon.proc.pid)
    peak = PeakMemory(daemon.proc.pid)
    while True:
        done = daemon.query("SELECT count(*) FROM tracks WHERE state IN "
                            "('suggested', 'quarantined')")[0][0]
        if done >= n:
            break
        if daemon.proc.poll() is not None:
            raise SystemExit(f"daemon exited:\n{daemon.log.read_text()[-3000:]}")
        time.sleep(0.25)
    cpu = {name: seconds - cpu_before.get(name, 0.0)
           for name, seconds in cpu_by_role(daemon.proc.pid).items()}
    peak.close()
    first, = daemon.query("SELECT min(first_seen) FROM tracks")[0]
    last, = daemon.query("SELECT max(created_at) FROM suggestions")[0]
    from datetime import datetime

    first_t = datetime.fromisoformat(first).timestamp()
    last_t = datetime.fromisoformat(last).timestamp()
    quarantined = daemon.query("SELECT count(*) FROM tracks WHERE state = 'quarantined'")[0][0]
    return {"songs": n, "quarantined": quarantined, "seconds": last_t - first_t,
            "songs_per_s": n / (last_t - first_t), "since_start_s": last_t - started,
            "peak_rss": peak.rss, "peak_pss": peak.pss, "peak_roles": peak.roles,
            "cpu_per_song": sum(cpu.values()) / n,
            "cpu_roles": {name: seconds / n for name, seconds in cpu.items()}}


def latency(daemon: Daemon, sources: list[Path], n: int) -> dict:
    """Copy n new songs in one at a time; seconds settle->suggestion and copy->suggestion."""
    staging = daemon.base / "staging"
    fresh = copies(sources, staging, n, "Latency Song")
    from_copy = []
    for path in fresh:
        target = daemon.library / "incoming" / path.name
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, target)
        copied = time.time()
        rel = f"incoming/{path.name}"
        while not daemon.query("SELECT 1 FROM suggestions s JOIN tracks t ON "
                               "t.id = s.track_id WHERE t.path = ?", rel):
            time.sleep(0.05)
        from_copy.append(time.time() - copied)
    events = [json.loads(d) for (d,) in daemon.query(
        "SELECT detail FROM events WHERE kind = 'classified'")]
    settled = [e["latency"] for e in events if e["path"].startswith("incoming/")]
    return {"settle_to_suggestion": settled, "copy_to_suggestion": from_copy}


def idle_cpu(bundle: Path, processes: int, seconds: float, files: int) -> dict:
    """The daemon on the 15,000-file tree, every file known and unchanged."""
    from daemon.library.reconcile import Library
    from daemon.tags.genres import load_genre_map

    tree_bench = _tree_bench()
    root = BENCH / "out" / "reconcile" / "library"
    tree_bench.build_tree(root, files)
    daemon = Daemon(OUT / "idle", root, bundle, processes)
    library = Library(daemon.config, daemon.sessions, load_genre_map())
    known = tree_bench.seed_database(library, root)
    walks = []
    for _ in range(3):
        started = time.perf_counter()
        result = library.reconcile()
        walks.append(time.perf_counter() - started)
    started = time.perf_counter()
    tree_bench.baseline_walk(root)
    plain = time.perf_counter() - started
    daemon.start()
    time.sleep(5)  # past the start-up walk
    cpu0, wall0 = cpu_seconds(daemon.proc.pid), time.perf_counter()
    time.sleep(seconds)
    cpu = cpu_seconds(daemon.proc.pid) - cpu0
    wall = time.perf_counter() - wall0
    rss, pss = memory_mb(daemon.proc.pid)
    daemon.stop()
    return {"known": known, "walk": statistics.median(walks), "walk_unchanged":
            result.unchanged, "plain_walk": plain, "cpu_share": cpu / wall, "rss": rss,
            "pss": pss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=304)
    parser.add_argument("--masters-per-format", type=int, default=2)
    parser.add_argument("--processes", type=int, default=len(os.sched_getaffinity(0)),
                        help="decoder processes (the daemon's default: every core)")
    parser.add_argument("--threads", type=int, default=None,
                        help="[classifier] threads: onnxruntime's in the service (default: "
                             "the service's, 1 with the backbone, 2 without)")
    parser.add_argument("--latency-songs", type=int, default=8)
    parser.add_argument("--baseline-songs", type=int, default=24)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--idle-files", type=int, default=15_000)
    parser.add_argument("--family", choices=("cnn", "backbone", "ensemble", "seed"),
                        default="ensemble", help="the active bundle (ensemble: both families "
                        "loaded, the heaviest; seed: the CNN alone, backbone = false)")
    args = parser.parse_args(argv)

    print(f"bench/daemon.py: model family {args.family}, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}, {args.processes} decoder process(es), "
          f"{args.threads or 'the default'} classifier thread(s)", flush=True)
    sources = masters(args.masters_per_format)
    library = OUT / "library"
    songs = copies(sources, library / "backfill", args.songs, "Bench Song")
    bundle = model_bundle(args.family)
    for stale in (library / "incoming",):
        shutil.rmtree(stale, ignore_errors=True)

    base = baseline(songs[:: max(1, len(songs) // args.baseline_songs)][:args.baseline_songs],
                    bundle)
    daemon = Daemon(OUT / "run", library, bundle, args.processes, threads=args.threads,
                    backbone=args.family != "seed")
    try:
        fill = backfill(daemon, len(songs))
        time.sleep(3)
        lat = latency(daemon, sources, args.latency_songs)
        # Idle = the worker has stopped its decoder children (a minute without songs).
        from daemon.suggest.worker import DECODER_IDLE_SECONDS

        end = time.monotonic() + DECODER_IDLE_SECONDS + 15
        while "decoders" in memory_by_role(daemon.proc.pid) and time.monotonic() < end:
            time.sleep(1)
        idle_rss, idle_pss = memory_mb(daemon.proc.pid)
        idle_roles = memory_by_role(daemon.proc.pid)
    finally:
        daemon.stop()
        shutil.rmtree(library / "incoming", ignore_errors=True)
    idle = idle_cpu(bundle, args.processes, args.idle_seconds, args.idle_files)

    def line(name: str, value: str, target: str) -> None:
        print(f"  {name:<34} {value:<26} target {target}")

    print(f"\nload average now {os.getloadavg()[0]:.1f} (the machine may be shared)")
    line("baseline: in-process extract+classify", f"{base:.1f} songs/s", "-")
    cores = os.cpu_count() or 1
    ceiling = cores / fill["cpu_per_song"]
    line("backfill songs/s (settled -> last)", f"{fill['songs_per_s']:.1f} songs/s "
         f"({fill['songs_per_s'] / base:.2f}x baseline)",
         ">= 30/s without the backbone, >= 8/s with it, on 2 cores")
    line("CPU per song, the daemon's tree", f"{1000 * fill['cpu_per_song']:.0f} ms", "-")
    for name, seconds in sorted(fill["cpu_roles"].items(), key=lambda r: -r[1]):
        line(f"  of which: {name}", f"{1000 * seconds:.0f} ms", "-")
    line(f"compute ceiling on {cores} cores", f"{ceiling:.1f} songs/s (backfill at "
         f"{100 * fill['songs_per_s'] / ceiling:.0f}%)", ">= 80%")
    line("backfill wall incl. start-up", f"{fill['since_start_s']:.1f} s for {fill['songs']}",
         "-")
    line("quarantined in the backfill", str(fill["quarantined"]), "0")
    settled, copied = lat["settle_to_suggestion"], lat["copy_to_suggestion"]
    if settled:
        line("latency settle -> suggestion", f"median {statistics.median(settled):.2f} s, "
             f"max {max(settled):.2f} s", "<= 3 s")
    line("latency copy -> suggestion", f"median {statistics.median(copied):.2f} s "
         f"(settle {daemon.config.library.settle_seconds:g} s)", "-")
    line("memory peak (backfill) RSS / PSS", f"{fill['peak_rss']:.0f} / "
         f"{fill['peak_pss']:.0f} MB", "<= 300 MB")
    for role, (rss, pss) in sorted(fill["peak_roles"].items()):
        line(f"  at the peak: {role}", f"{rss:.0f} / {pss:.0f} MB", "-")
    line("memory idle RSS / PSS", f"{idle_rss:.0f} / {idle_pss:.0f} MB", "<= 300 MB")
    for role, (rss, pss) in sorted(idle_roles.items()):
        line(f"  idle: {role}", f"{rss:.0f} / {pss:.0f} MB", "-")
    line(f"idle CPU, {idle['known']} known files", f"{idle['cpu_share']:.2%} of one core",
         "< 2%")
    line("memory idle on 15,000 files RSS/PSS", f"{idle['rss']:.0f} / {idle['pss']:.0f} MB",
         "<= 300 MB")
    line("reconcile walk, 15,000 unchanged", f"{idle['walk']:.2f} s "
         f"({idle['walk'] / idle['plain_walk']:.1f}x plain os.walk+stat "
         f"{idle['plain_walk']:.2f} s)", "<= 2 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
