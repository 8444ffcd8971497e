"""The shipped Prometheus alert rules (contrib/prometheus): valid and behaving as their
own unit tests say under Prometheus's promtool (Debian's `prometheus` package), and
written against metric names and label values a real /metrics scrape really has."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import daemon.service.metrics
from daemon.core.db.engine import transaction
from daemon.core.db.models import Decision, Model, Track, TrainingRun, utcnow
from daemon.core.health import write_health
from daemon.core.states import RunStatus, RunTrigger, TrackState
from daemon.review.web import create_app
from daemon.service.metrics import StationMetrics

RULES_DIR = Path(__file__).resolve().parents[2] / "contrib" / "prometheus"
RULES = RULES_DIR / "genretagger-alerts.yml"
RULE_TESTS = RULES_DIR / "genretagger-alerts.test.yml"
# Exported by the status-on-a-full-disk work; until that is in, the only name a rule may
# use ahead of the code.
DISK_FREE = "genretagger_state_disk_free_bytes"


def promtool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: apt-get install prometheus (make test does)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120,
                          cwd=RULES_DIR)


def test_the_rules_are_valid_and_pass_their_promtool_tests():
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0 and "SUCCESS: 7 rules found" in checked.stdout, (
        checked.stdout + checked.stderr)
    tested = promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, (
        tested.stdout + tested.stderr)


def test_the_rules_use_what_metrics_really_exports(tmp_path, make_config, database):
    library = tmp_path / "library"
    library.mkdir()
    config = make_config(library)
    _, sessions = database
    now = utcnow()
    with transaction(sessions) as session:
        track = Track(path="Rock/a.mp3", size=1000, mtime=1.0, state=TrackState.TAGGED)
        session.add(track)
        session.flush()
        session.add(Decision(track_id=track.id, action="accept", how="single",
                             genre="Rock", who="md", write_status="failed"))
        session.add(Model(version=1, path="/state/models/v0001/model.onnx", sha256="ab" * 32,
                          status="active", classes=["Jazz", "Rock"], n_songs=40,
                          metrics={"accuracy": 0.9, "macro_f1": 0.86},
                          activated_at=now - timedelta(days=1)))
        session.add(TrainingRun(trigger=RunTrigger.NIGHTLY, status=RunStatus.FAILED,
                                reason="the trainer ran out of memory",
                                started_at=now - timedelta(hours=9),
                                finished_at=now - timedelta(hours=8)))
    write_health(config.health_path, {
        "pid": os.getpid(), "written_at": now.isoformat(), "healthy": False,
        "stopped_at": None, "components": {"writer": {
            "alive": True, "healthy": False, "failing": True, "last_progress_at": None,
            "last_error": "Permission denied", "last_error_at": None, "errors": 1}}})
    app = create_app(config, sessions, metrics=StationMetrics(config, sessions))
    try:
        answer = app.test_client().get("/metrics")
        assert answer.status_code == 200
        samples = [s for family in text_string_to_metric_families(answer.get_data(as_text=True))
                   for s in family.samples]
    finally:
        app.extensions["children"].close()
        app.extensions["metrics"].close()
    exported = {s.name for s in samples}

    rules = RULES.read_text()
    used = set(re.findall(r"\b(genretagger_[a-z_]+)", rules))
    assert used >= {"genretagger_component_healthy", "genretagger_metrics_db_up",
                    "genretagger_retrain_last_run_info", "genretagger_write_failures",
                    DISK_FREE}
    missing = used - exported
    if "state_disk_free_bytes" in inspect.getsource(daemon.service.metrics):
        assert not missing, missing
    else:
        assert missing <= {DISK_FREE}, missing
    # The label values the rules match on are the ones the scrape carries.
    run = next(s for s in samples if s.name == "genretagger_retrain_last_run_info")
    assert run.labels == {"trigger": "nightly", "status": "failed"}
    assert 'genretagger_retrain_last_run_info{trigger="nightly", status="failed"}' in rules
    unhealthy = next(s for s in samples if s.name == "genretagger_component_healthy")
    assert unhealthy.labels == {"component": "writer"} and unhealthy.value == 0
    assert {s.value for s in samples if s.name == "genretagger_write_failures"} == {1.0}
