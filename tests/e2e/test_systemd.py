"""systemd/genretagger.service: `systemd-analyze verify` passes and the hardening holds.

verify needs the ExecStart binary to exist, so it checks a copy whose ExecStart points at
this venv's `genretagger`; everything else is the shipped file.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.core.db.backup import DAMAGED_EXIT

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "genretagger.service"
SHIPPED_EXEC = "/opt/genretagger/.venv/bin/genretagger"


def directives(text: str) -> dict[str, list[str]]:
    """key -> every value it is given (systemd allows repeats), comments dropped."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture
def local_unit(tmp_path) -> Path:
    exe = Path(sys.executable).parent / "genretagger"
    assert exe.exists(), "the venv's genretagger entry point (pip install -e .)"
    text = UNIT.read_text()
    assert SHIPPED_EXEC in text
    path = tmp_path / "genretagger.service"
    path.write_text(text.replace(SHIPPED_EXEC, str(exe)))
    return path


def test_verify_passes(local_unit):
    done = subprocess.run(["systemd-analyze", "verify", str(local_unit)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # verify prints problems as warnings without failing on some of them.
    assert "genretagger.service" not in done.stderr, done.stderr


def test_service_shape_and_hardening():
    d = directives(UNIT.read_text())
    expected = {
        "Type": "notify", "NotifyAccess": "main", "Restart": "on-failure",
        "RestartPreventExitStatus": str(DAMAGED_EXIT),  # a damaged database
        "TimeoutStopSec": "30", "User": "genretagger", "ProtectSystem": "strict",
        "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes", "LockPersonality": "yes", "RestrictRealtime": "yes",
        "RestrictNamespaces": "yes", "KillMode": "mixed",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], key
    assert "@system-service" in d["SystemCallFilter"]
    assert int(d["WatchdogSec"][0]) >= 30
    assert d["MemoryMax"]
    library = d["RequiresMountsFor"][0]
    assert set(d["ReadWritePaths"][0].split()) == {"/var/lib/genretagger", library}
    assert d["ExecStart"][0].endswith("run")


def test_security_exposure_is_low(local_unit):
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", str(local_unit)],
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert match, done.stdout + done.stderr
    # 0 is a locked-down unit, 10 an unprotected one; systemd calls < 2 "OK".
    assert float(match.group(1)) < 2.0, done.stdout


WORKER_UNIT = UNIT.with_name("genretagger-worker@.service")


def test_worker_unit_verifies_and_matches_the_service_hardening(tmp_path):
    """genretagger-worker@NAME: the same user and hardening as the service, Type=notify,
    a watchdog, restart on failure; `genretagger worker --name %i`; the library read-only."""
    exe = Path(sys.executable).parent / "genretagger"
    text = WORKER_UNIT.read_text()
    assert SHIPPED_EXEC in text
    local = tmp_path / "genretagger-worker@1.service"
    local.write_text(text.replace(SHIPPED_EXEC, str(exe)))
    done = subprocess.run(["systemd-analyze", "verify", str(local)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "genretagger-worker" not in done.stderr, done.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(local)],
                              capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert match and float(match.group(1)) < 2.0, security.stdout + security.stderr

    worker, service = directives(text), directives(UNIT.read_text())
    assert worker["ExecStart"][0].endswith("worker --name %i")
    assert worker["Type"] == ["notify"] and worker["Restart"] == ["on-failure"]
    assert int(worker["WatchdogSec"][0]) >= 30
    assert worker["ReadWritePaths"] == ["/var/lib/genretagger"]  # never writes the library
    assert worker["RequiresMountsFor"] == service["RequiresMountsFor"]
    same = [key for key in service
            if key in ("User", "Group", "KillMode", "TimeoutStopSec", "NotifyAccess",
                       "SystemCallFilter", "UMask", "NoNewPrivileges")
            or key.startswith(("Protect", "Restrict", "Private", "Capability"))]
    assert len(same) > 15
    for key in same:
        assert worker.get(key) == service[key], key
