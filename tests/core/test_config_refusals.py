"""Config that cannot work is refused before anything starts: a password where its hash
belongs, a state_dir that is a file or cannot be made, non-finite and out-of-range
numbers, values of the wrong type (never coerced), short tokens. Each names its key,
and `check-config` and every other command exit 2 on it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest
from werkzeug.security import generate_password_hash

from daemon.core.config import load_config, parse_config, render_config
from daemon.core.errors import ConfigError

# (TOML lines, the section they go in, the key the error must name)
REFUSED = [
    ('password_hash = "hunter2"', "review", "review.password_hash: .*not a password hash"),
    ('password_hash = "pbkdf2:sha256:1000$salt$not-hex"', "review",
     "review.password_hash: .*not a password hash"),
    ('token = "a"', "review", "review.token: .*at least 32 characters"),
    (f'token = "{"t" * 31}"', "review", "review.token: .*at least 32 characters"),
    (f'token = "{"t" * 20} {"t" * 20}"', "review", "review.token: .*no spaces"),
    ("port = true", "review", "review.port: Input should be a valid integer"),
    ('trusted_proxy = "127.0.0.1"', "review", "review.trusted_proxy: .*password_hash"),
    (f'trusted_proxy = "proxy.lan"\ntoken = "{"t" * 32}"', "review",
     "review.trusted_proxy: the proxy's IP address"),
    ('port = "8750"', "review", "review.port: Input should be a valid integer"),
    ("port = 8750.0", "review", "review.port: Input should be a valid integer"),
    ('write_tags = "yes"', "review", "review.write_tags: Input should be a valid boolean"),
    ("weight = inf", "context", "context.weight: Input should be a finite number"),
    ("smoothing = inf", "context", "context.smoothing: Input should be a finite number"),
    ("weight = nan", "context", "context.weight: Input should be a finite number"),
    ("weight = 1e300", "context", "context.weight: Input should be less than or equal"),
    ("settle_seconds = -inf", "library", "library.settle_seconds: Input should be a finite"),
    ("reconcile_minutes = 1e300", "library", "library.reconcile_minutes: .*at most 1,000,000"),
    ("decode_timeout = 2e6", "workers", "workers.decode_timeout: .*at most 1,000,000"),
    ("epochs = 99999999999", "retrain", "retrain.epochs: .*at most 1,000,000"),
    ('poll_seconds = "30"', "library", "library.poll_seconds: Input should be a valid number"),
    ("audit = 1", "classifier", "classifier.audit: Input should be a valid boolean"),
    ("backbone = 0", "classifier", "classifier.backbone: Input should be a valid boolean"),
    ("extensions = [\".mp3\", 3]", "library", r"library.extensions.1: Input should be a valid"),
]


def write_config(tmp_path, lines: str, section: str, state_dir=None) -> tuple:
    library = tmp_path / "library"
    library.mkdir(exist_ok=True)
    state = state_dir or tmp_path / "state"
    path = tmp_path / "config.toml"
    path.write_text(f'state_dir = "{state}"\n[library]\nroot = "{library}"\n'
                    + (f"[{section}]\n" if section != "library" else "") + lines + "\n")
    return path, state


def cli(config, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli", "--config", str(config),
                           *command], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("lines,section,named", REFUSED, ids=[r[0] for r in REFUSED])
def test_the_config_file_is_refused_naming_the_key(tmp_path, lines, section, named):
    config, state = write_config(tmp_path, lines, section)
    with pytest.raises(ConfigError, match=named):
        load_config(config)
    assert not state.exists()


@pytest.mark.parametrize("lines,section", [
    ('password_hash = "hunter2"\nhost = "0.0.0.0"', "review"),
    ("port = true", "review"),
    ("weight = inf", "context"),
], ids=["hash", "coerced", "infinite"])
def test_check_config_and_every_command_exit_2_naming_the_key(tmp_path, lines, section):
    config, state = write_config(tmp_path, lines, section)
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    said = str(refused.value)  # "<file>: <key>: <why>"
    # test_config.py runs status and review list on a config error; these add the rest.
    commands = (["check-config"], ["run"], ["worker"], ["models", "list"]) \
        if "hunter2" in lines else (["check-config"],)
    for command in commands:
        done = cli(config, *command)
        assert done.returncode == 2, (command, done.returncode, done.stderr)
        assert said in done.stderr, (command, done.stderr)
        assert "Traceback" not in done.stderr and "config ok" not in done.stdout
    assert not state.exists()


def test_a_state_dir_that_is_a_file_or_cannot_be_made(tmp_path):
    a_file = tmp_path / "occupied"
    a_file.write_text("not a folder")
    for state_dir, reason in ((a_file, "is not a directory"),
                              (a_file / "state", "cannot be created: .* is not a directory")):
        config, _ = write_config(tmp_path, "", "library", state_dir=state_dir)
        # `run` used to stop with FileExistsError (exit 1) on the file.
        for command in (["check-config"], ["run"]) if state_dir == a_file else (["status"],):
            done = cli(config, *command)
            assert done.returncode == 2, (command, done.returncode, done.stderr)
            assert re.search(rf"state_dir: .*{reason}", done.stderr), done.stderr
            assert "FileExistsError" not in done.stderr and "Traceback" not in done.stderr
    assert a_file.read_text() == "not a folder"


def test_what_works_is_still_accepted(tmp_path):
    """Real hashes of both kinds, a 32-character token, whole numbers where seconds are
    asked for, and an empty password_hash/token (the template's commented lines,
    uncommented) meaning none."""
    base = {"library": {"root": str(tmp_path)}, "state_dir": str(tmp_path / "new" / "state")}
    for method in ("scrypt", "pbkdf2:sha256:1000", "pbkdf2"):
        hashed = generate_password_hash("station-secret", method=method)
        config = parse_config({**base, "review": {"password_hash": hashed}})
        assert config.review.password_hash == hashed
    config = parse_config({**base, "review": {"token": "t" * 32, "port": 8750},
                           "library": {"root": str(tmp_path), "poll_seconds": 5},
                           "context": {"weight": 2, "smoothing": 0.5}})
    assert config.review.port == 8750 and config.library.poll_seconds == 5.0
    assert config.context.weight == 2.0
    empty = parse_config({**base, "review": {"password_hash": "", "token": ""}})
    assert empty.review.password_hash is None and empty.review.token is None
    assert not (tmp_path / "new").exists()  # checked, not created
    # The config `init` writes passes as it is.
    parse_config(tomllib.loads(render_config(tmp_path, tmp_path / "s")))


def test_a_non_finite_number_is_refused_in_every_section(tmp_path):
    base = {"library": {"root": str(tmp_path)}, "state_dir": str(tmp_path / "s")}
    for section, key in (("workers", "decode_timeout"), ("retrain", "max_f1_drop"),
                         ("service", "leader_poll_seconds"), (None, "database_busy_seconds")):
        data = {**base, section: {key: float("inf")}} if section else {**base, key: float("inf")}
        named = f"{section}.{key}" if section else key
        with pytest.raises(ConfigError, match=rf"{named}: Input should be a finite number"):
            parse_config(data)


def test_paths_and_arrays_come_as_toml_gives_them_and_nothing_else(tmp_path):
    config = parse_config({"library": {"root": str(tmp_path), "extensions": ["MP3", ".flac"]},
                           "state_dir": tmp_path / "s"})
    assert config.library.root == tmp_path and config.state_dir == tmp_path / "s"
    assert config.library.extensions == (".mp3", ".flac")
    for bad, named in (({"root": 3}, "library.root"),
                       ({"root": str(tmp_path), "extensions": ".mp3"}, "library.extensions")):
        with pytest.raises(ConfigError, match=named):
            parse_config({"library": bad, "state_dir": str(tmp_path / "s")})
