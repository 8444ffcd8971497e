"""The model registry on a real SQLite file: register (atomic copy, load check), activate,
rollback, and the `genretagger models` commands as real subprocesses.

Bundles here are real ONNX models built with onnx.helper (flatten -> matmul -> softmax) with
the metadata the daemon's Classifier requires: small and fast, but loaded and run by
onnxruntime exactly like a trained one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from daemon.audio.features import DEFAULT_SPEC
from daemon.core.db.engine import open_database
from daemon.core.db.models import BundleChunk, Model
from daemon.core.errors import ModelMismatch
from daemon.learn import registry
from daemon.suggest.active import active_model


def make_bundle(out: Path, classes=("Jazz", "Rock", "Pop"), seed: int = 0,
                spec_json: str | None = None, macro_f1: float = 0.8) -> Path:
    """A trainer-like --out dir: model.onnx (+metadata), report.json, split.json."""
    out.mkdir(parents=True, exist_ok=True)
    f, t, _ = DEFAULT_SPEC.input_shape
    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(
        rng.normal(0, 0.01, (f * t, len(classes))).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["clips"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=1)],
        "tiny", [helper.make_tensor_value_info("clips", TensorProto.FLOAT, ["n", f, t, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", len(classes)])],
        [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    meta = {"classes": json.dumps(list(classes)),
            "feature_spec": spec_json or DEFAULT_SPEC.to_json(),
            "temperature": "1.0", "training_set_hash": f"hash{seed}"}
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, out / "model.onnx")
    per_class = {c: {"precision": macro_f1, "recall": macro_f1, "f1": macro_f1, "support": 5}
                 for c in classes}
    report = {"test": {"accuracy": macro_f1, "macro_f1": macro_f1, "n_songs": 15,
                       "per_class": per_class},
              "training_set": {"songs": {"train": 70, "validation": 15, "test": 15}},
              "training_set_hash": f"hash{seed}"}
    (out / "report.json").write_text(json.dumps(report))
    (out / "split.json").write_text(json.dumps({"test": [], "validation": [], "train": []}))
    (out / "confusion.png").write_bytes(b"\x89PNG fake-free: just bytes to copy")
    return out


@pytest.fixture
def setup(tmp_path, make_config, database_url):
    library = tmp_path / "library"
    library.mkdir()
    config = make_config(library, database_url=database_url)
    engine, sessions = open_database(config.db_url)
    yield config, sessions
    engine.dispose()


def register(setup, tmp_path, seed, status="candidate", **kw):
    config, sessions = setup
    return registry.register_bundle(sessions, config, make_bundle(tmp_path / f"run{seed}",
                                                                  seed=seed, **kw), status)


def test_register_copies_the_bundle_and_records_its_facts(setup, tmp_path):
    config, sessions = setup
    model = register(setup, tmp_path, 1)
    folder = config.models_dir / "v0001"
    assert Path(model.path) == folder / "model.onnx"
    assert sorted(p.name for p in folder.iterdir()) == [
        "confusion.png", "model.onnx", "report.json", "split.json"]
    assert not list(config.models_dir.glob(".*"))  # no temp folder left behind
    with sessions() as session:
        row = registry.get_model(session, 1)
        assert row.status == "candidate"
        assert row.classes == ["Jazz", "Rock", "Pop"]
        assert row.n_songs == 100
        assert row.data_hash == "hash1"
        assert row.metrics["macro_f1"] == 0.8
        assert row.report_path == str(folder / "report.json")
        assert active_model(session) is None
    assert register(setup, tmp_path, 2).version == 2


@pytest.mark.parametrize("damage", ["garbage", "other spec", "missing"])
def test_register_refuses_a_bundle_that_does_not_load(setup, tmp_path, damage):
    config, sessions = setup
    out = make_bundle(tmp_path / "run", spec_json=DEFAULT_SPEC.to_json().replace(
        '"clip_seconds": 1.0', '"clip_seconds": 2.0') if damage == "other spec" else None)
    if damage == "garbage":
        (out / "model.onnx").write_bytes(b"\x00half a model" * 100)
    elif damage == "missing":
        (out / "model.onnx").unlink()
    with pytest.raises(ModelMismatch):
        registry.register_bundle(sessions, config, out, "candidate")
    assert not config.models_dir.exists() or not any(config.models_dir.iterdir())
    with sessions() as session:
        assert registry.list_models(session) == []


def test_activate_is_one_switch_and_rollback_walks_back(setup, tmp_path):
    config, sessions = setup
    for seed in (1, 2, 3):
        register(setup, tmp_path, seed)
        registry.activate(sessions, seed)
        with sessions() as session:
            assert active_model(session).version == seed
            statuses = {m.version: m.status for m in registry.list_models(session)}
        assert statuses == {v: "active" if v == seed else "retired" for v in range(1, seed + 1)}

    assert registry.rollback(sessions).version == 2
    assert registry.rollback(sessions).version == 1  # one further back, not forth to 3
    with sessions() as session:
        statuses = {m.version: m.status for m in registry.list_models(session)}
    assert statuses == {1: "active", 2: "rolled_back", 3: "rolled_back"}
    with pytest.raises(registry.RegistryError, match="nothing to roll back"):
        registry.rollback(sessions)
    # an operator may still activate a rolled-back version explicitly
    registry.activate(sessions, 3)
    assert registry.rollback(sessions).version == 1


def damage(config, sessions, model) -> None:
    """Four bytes of the model's model.onnx changed where the registry keeps it: the file
    on SQLite; on PostgreSQL the stored copy every host's own copy is made from."""
    if not config.db_url.startswith("postgresql"):
        with open(config.models_dir / f"v{model.version:04d}" / "model.onnx", "r+b") as f:
            f.seek(200)
            f.write(b"\xff\xff\xff\xff")
        return
    with sessions.begin() as session:
        chunk = session.get(BundleChunk, (model.sha256, 0))
        chunk.data = chunk.data[:200] + b"\xff\xff\xff\xff" + chunk.data[204:]


def test_activate_refuses_a_damaged_bundle(setup, tmp_path):
    config, sessions = setup
    register(setup, tmp_path, 1)
    damage(config, sessions, register(setup, tmp_path, 2))
    registry.activate(sessions, 1)
    with pytest.raises(registry.RegistryError, match="does not match its sha256"):
        registry.activate(sessions, 2)
    with pytest.raises(registry.RegistryError, match="no model version 9"):
        registry.activate(sessions, 9)
    with sessions() as session:
        assert active_model(session).version == 1


def test_leftovers_of_a_crash_never_become_a_version(setup, tmp_path):
    config, sessions = setup
    config.models_dir.mkdir(parents=True)
    (config.models_dir / "v0004").mkdir()  # a folder whose DB row never got written
    partial = config.models_dir / ".v0005.abc.tmp"
    partial.mkdir()
    (partial / "model.onnx").write_bytes(b"half")
    assert register(setup, tmp_path, 1).version == 5
    assert registry.remove_partial_bundles(config) == [partial]
    assert not partial.exists()


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(config_path),
                           *args], capture_output=True, text=True, timeout=60)


@pytest.mark.slow  # runs the CLI in several subprocesses; make test runs it
def test_models_commands(setup, tmp_path):
    config, sessions = setup
    path = tmp_path / "config.toml"
    path.write_text(f'state_dir = "{config.state_dir}"\ndatabase_url = "{config.db_url}"\n'
                    f'[library]\nroot = "{config.library.root}"\n')
    for seed in (1, 2):
        register(setup, tmp_path, seed)
        registry.activate(sessions, seed)

    listed = cli(path, "models", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["version"], r["status"]) for r in rows] == [(2, "active"), (1, "retired")]
    assert rows[0]["n_songs"] == 100 and rows[0]["macro_f1"] == 0.8

    table = cli(path, "models", "list")
    assert "active" in table.stdout and "retired" in table.stdout

    shown = json.loads(cli(path, "models", "show", "1", "--json").stdout)
    assert shown["metrics"]["per_class"]["Jazz"]["support"] == 5

    rolled = cli(path, "models", "rollback")
    assert rolled.returncode == 0 and "v0001 is active" in rolled.stdout
    again = cli(path, "models", "activate", "2")
    assert again.returncode == 0 and "v0002 is active" in again.stdout
    missing = cli(path, "models", "activate", "7")
    assert missing.returncode == 1 and "no model version 7" in missing.stderr
    with sessions() as session:
        assert active_model(session).version == 2
        assert session.get(Model, 1).status == "retired"
