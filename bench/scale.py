"""Past one machine: backfill with `genretagger worker` processes on PostgreSQL, against the
single SQLite service, in one run on one generated library; claim latency with 4 workers;
a paper extrapolation to 8 hosts.

    .venv/bin/python bench/scale.py [--songs 200] [--processes 1] [--family cnn]
                                    [--claim-tracks 4000]

Measured, in this order, on the same untagged songs (bench/daemon.py's cached masters and
copies, 3-7 minute songs, each with its own fingerprint; a fresh state dir and feature
cache for every scenario, so every backfill is cold):
  sqlite service  `genretagger run` on SQLite (bench/daemon.py's Daemon + backfill): songs
                  per second from the first file settled to the last suggestion
  pg, 1 worker    a throwaway PostgreSQL server (started the way tests/pgcluster.py does,
  pg, 2 workers   Unix socket only, stopped afterwards); N `genretagger worker` processes
                  started on an empty queue, then every song queued in one transaction
                  (rows as the library's record step leaves them): songs/s from that
                  commit to the last suggestion. Each worker has `--processes` decoders.
  claims          4 processes claiming batches of 8 (the worker's claim size with the
                  test config) from 4,000 queued rows at once, each call timed: p50 / p95
                  per claim, on PostgreSQL (FOR UPDATE SKIP LOCKED) and on SQLite (BEGIN
                  IMMEDIATE, one claim at a time)
Then the paper extrapolation to 8 hosts. Figures and ratios, not pass/fail; the machine
may be shared (load printed), and on one machine 2 workers share its cores, so their
ratio is a floor for 2 hosts, not a forecast.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # pgcluster: the tests' throwaway server

OUT = BENCH / "out" / "scale"
EXE = [sys.executable, "-m", "daemon.cli"]
CLAIM_SIZE = 8
CLAIMERS = 4
HOSTS = 8


def _daemon_bench():
    """bench/daemon.py (named like the package, so loaded by path): masters, copies, the
    tiny model, the Daemon and its backfill measurement."""
    spec = importlib.util.spec_from_file_location("bench_daemon", BENCH / "daemon.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker_config(base: Path, library: Path, url: str, processes: int, port: int) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    path = base / "config.toml"
    path.write_text(f"""database_url = "{url}"
state_dir = "{base / 'state'}"
[library]
root = "{library}"
[workers]
processes = {processes}
[classifier]
batch_songs = 32
[review]
port = {port}
""")
    return path


def seed_queue(sessions, library: Path, songs: list[Path]) -> float:
    """Every song queued in one transaction, as the record step leaves a new file; returns
    the time.time() of the commit."""
    from daemon.core.db.engine import transaction
    from daemon.core.db.models import Track, utcnow
    from daemon.core.paths import stored_path
    from daemon.core.states import TrackState

    with transaction(sessions) as session:
        now = utcnow()
        for song in songs:
            st = song.stat()
            session.add(Track(path=stored_path(str(song.relative_to(library))),
                              size=st.st_size, mtime=st.st_mtime, state=TrackState.QUEUED,
                              first_seen=now, last_seen=now, state_changed_at=now))
    return time.time()


def pg_backfill(cluster, bench, library: Path, songs: list[Path], bundle: Path, n_workers: int,
                processes: int) -> dict:
    """n `genretagger worker` processes on a new PostgreSQL database: songs/s from the
    queue being filled to the last suggestion."""
    from sqlalchemy import func, select

    from daemon.core.config import load_config
    from daemon.core.db.engine import open_database
    from daemon.core.db.models import Suggestion, Track, Worker
    from daemon.learn.registry import activate, register_bundle

    url = cluster.new_database()
    base = OUT / f"pg-{n_workers}"
    shutil.rmtree(base, ignore_errors=True)
    configs = [worker_config(base / f"w{i}", library, url, processes, bench.free_port())
               for i in range(n_workers)]
    engine, sessions = open_database(url)
    model = register_bundle(sessions, load_config(configs[0]), bundle)
    activate(sessions, model.version)
    procs = []
    try:
        for i, config in enumerate(configs):
            with open(config.parent / "worker.log", "w") as log:
                procs.append(subprocess.Popen(
                    EXE + ["--config", str(config), "worker", "--name", str(i + 1)],
                    stdout=subprocess.DEVNULL, stderr=log,
                    env={**os.environ, "PYTHONUNBUFFERED": "1", "MALLOC_ARENA_MAX": "2"}))
        while True:  # registered, pool up: the model loads on the first look
            with sessions() as session:
                if session.scalar(select(func.count()).select_from(Worker)) == n_workers:
                    break
            _alive(procs, configs)
            time.sleep(0.1)
        time.sleep(3)
        queued_at = seed_queue(sessions, library, songs)
        while True:
            with sessions() as session:
                done = session.scalar(select(func.count()).select_from(Track).where(
                    Track.state.in_(("suggested", "quarantined"))))
                if done >= len(songs):
                    last = session.scalar(select(func.max(Suggestion.created_at)))
                    break
            _alive(procs, configs)
            time.sleep(0.25)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
        with sessions() as session:  # their last beat, at retiring
            by_worker = dict(session.execute(select(Worker.id, Worker.files_done)).all())
        engine.dispose()
    seconds = last.timestamp() - queued_at
    return {"workers": n_workers, "seconds": seconds, "songs_per_s": len(songs) / seconds,
            "files_done": by_worker}


def _alive(procs, configs) -> None:
    for proc, config in zip(procs, configs, strict=True):
        if proc.poll() is not None:
            raise SystemExit(f"worker exited ({proc.returncode}):\n"
                             f"{(config.parent / 'worker.log').read_text()[-3000:]}")


def _claimer(url: str, worker_id: int, start, out) -> None:
    """One claiming process: claim batches until the queue is empty, timing each call."""
    from daemon.core.db.engine import open_database
    from daemon.core.db.models import utcnow
    from daemon.suggest.queue import claim_tracks

    engine, sessions = open_database(url, upgrade=False)
    times = []
    start.wait()
    while True:
        began = time.perf_counter()
        rows = claim_tracks(sessions, CLAIM_SIZE, set(), utcnow(), worker_id=worker_id)
        times.append(time.perf_counter() - began)
        if not rows:
            break
    engine.dispose()
    out.put(times)


def claim_latency(url: str, n_tracks: int) -> dict:
    """CLAIMERS processes claiming CLAIM_SIZE at a time from n_tracks queued rows."""
    from daemon.core.db.engine import open_database, transaction
    from daemon.core.db.models import Track
    from daemon.core.states import TrackState
    from daemon.suggest.workers import register

    engine, sessions = open_database(url)
    with transaction(sessions) as session:
        session.add_all(Track(path=f"claim/{i:06d}.mp3", size=1, mtime=1.0,
                              state=TrackState.QUEUED) for i in range(n_tracks))
    ids = [register(sessions, "worker") for _ in range(CLAIMERS)]
    engine.dispose()
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(CLAIMERS), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(url, i, start, out)) for i in ids]
    for p in procs:
        p.start()
    times = [t for _ in procs for t in out.get(timeout=600)]
    for p in procs:
        p.join(30)
    times.sort()
    return {"claims": len(times), "p50_ms": statistics.median(times) * 1000,
            "p95_ms": times[int(0.95 * (len(times) - 1))] * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=200)
    parser.add_argument("--masters-per-format", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1,
                        help="decoder processes per worker and for the service")
    parser.add_argument("--family", choices=("cnn", "backbone", "ensemble"), default="cnn")
    parser.add_argument("--claim-tracks", type=int, default=4000)
    args = parser.parse_args(argv)
    bench = _daemon_bench()
    from pgcluster import Cluster

    print(f"bench/scale.py: {args.songs} songs, model family {args.family}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, {args.processes} "
          "decoder process(es) per worker / service", flush=True)
    sources = bench.masters(args.masters_per_format)
    library = bench.OUT / "library"
    songs = bench.copies(sources, library / "backfill", args.songs, "Bench Song")
    bundle = bench.model_bundle(args.family)
    shutil.rmtree(library / "incoming", ignore_errors=True)

    print("  sqlite service backfill ...", flush=True)
    daemon = bench.Daemon(OUT / "sqlite", library, bundle, args.processes)
    try:
        service = bench.backfill(daemon, len(songs))
    finally:
        daemon.stop()
    cluster = Cluster().start()
    try:
        pg = {}
        for n in (1, 2):
            print(f"  postgresql, {n} worker(s) ...", flush=True)
            pg[n] = pg_backfill(cluster, bench, library, songs, bundle, n, args.processes)
        print(f"  claim latency, {CLAIMERS} claimers ...", flush=True)
        claims_pg = claim_latency(cluster.new_database(), args.claim_tracks)
    finally:
        cluster.stop()
    sqlite_claims = OUT / "claims.db"
    sqlite_claims.unlink(missing_ok=True)
    claims_sqlite = claim_latency(f"sqlite:///{sqlite_claims}", args.claim_tracks)
    report(args, service, pg, claims_pg, claims_sqlite)
    return 0


def report(args, service: dict, pg: dict, claims_pg: dict, claims_sqlite: dict) -> None:
    def line(name: str, value: str) -> None:
        print(f"  {name:<44} {value}")

    base = service["songs_per_s"]
    print(f"\nload average now {os.getloadavg()[0]:.1f} (the machine may be shared)")
    line("sqlite service backfill (settled -> last)", f"{base:.1f} songs/s (1.00x)")
    for n, r in pg.items():
        line(f"postgresql, {n} worker process(es)", f"{r['songs_per_s']:.1f} songs/s "
             f"({r['songs_per_s'] / base:.2f}x service); files per worker "
             f"{sorted(r['files_done'].values())}")
    ratio = pg[2]["songs_per_s"] / pg[1]["songs_per_s"]
    line("2 workers / 1 worker (same machine)", f"{ratio:.2f}x")
    for name, c in (("postgresql", claims_pg), ("sqlite", claims_sqlite)):
        line(f"claim of {CLAIM_SIZE}, {CLAIMERS} claimers, {name}",
             f"p50 {c['p50_ms']:.1f} ms, p95 {c['p95_ms']:.1f} ms ({c['claims']} claims)")
    # The paper extrapolation. Assumptions: each host is decoding bound at the rate one
    # worker reached here alone (its own cores, its own decoders); hosts add up until the
    # database's claims do, and claims are charged as if they ran one at a time at the p95
    # measured under 4-way contention (SKIP LOCKED does not serialise them: a bound).
    per_host = pg[1]["songs_per_s"]
    claim_capacity = CLAIM_SIZE / (claims_pg["p95_ms"] / 1000)
    projected = min(HOSTS * per_host, claim_capacity)
    print(f"\npaper extrapolation to {HOSTS} hosts (decoding bound at {per_host:.1f} songs/s "
          f"per host, as 1 worker here with {args.processes} decoder(s); DB claims at most "
          f"{claim_capacity:.0f} songs/s = {CLAIM_SIZE} songs per p95 claim, serialised):")
    line(f"{HOSTS} hosts", f"{projected:.0f} songs/s ({projected / base:.1f}x the SQLite "
         f"service); the DB's claim share {HOSTS * per_host / claim_capacity:.0%} of its "
         "serialised capacity")
    line("200,000 songs backfill", f"{200_000 / projected / 3600:.1f} h on {HOSTS} hosts vs "
         f"{200_000 / base / 3600:.1f} h on one SQLite service")
    print("\ncommand: .venv/bin/python bench/scale.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
