import os

import pytest

from daemon.core.config import load_config, parse_config
from daemon.core.errors import ConfigError


def test_defaults_need_only_the_two_paths(tmp_path):
    config = parse_config({"library": {"root": str(tmp_path)}, "state_dir": str(tmp_path / "s")})
    assert config.library.settle_seconds == 10
    assert config.library.reconcile_minutes == 15
    assert config.review.host == "127.0.0.1" and config.review.port == 8650
    assert config.db_url.endswith("genretagger.db")


def test_the_decoders_use_every_core_the_service_may_run_on(tmp_path):
    """The decoders do nearly all of a song's work (the backbone included), so by default
    there is one per core, counted from the CPU affinity systemd may narrow."""
    import subprocess
    import sys

    code = ("import os\n"
            "from daemon.core.config import parse_config\n"
            f"config = parse_config({{'library': {{'root': {str(tmp_path)!r}}}, "
            f"'state_dir': {str(tmp_path / 's')!r}}})\n"
            "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
            f"one = parse_config({{'library': {{'root': {str(tmp_path)!r}}}, "
            f"'state_dir': {str(tmp_path / 's')!r}}})\n"
            "print(config.workers.processes, one.workers.processes)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == [str(len(os.sched_getaffinity(0))), "1"]


def test_the_service_gives_the_cnn_alone_two_threads_unless_told(tmp_path):
    """Without the backbone the service runs the whole CNN itself: two onnxruntime threads
    by default; with it one; a station's own number always wins."""
    base = {"library": {"root": str(tmp_path)}, "state_dir": str(tmp_path / "s")}
    assert parse_config(base).classifier.threads == 1
    assert parse_config({**base, "classifier": {"backbone": False}}).classifier.threads == 2
    assert parse_config({**base, "classifier": {"backbone": False, "threads": 1}}
                        ).classifier.threads == 1
    assert parse_config({**base, "classifier": {"threads": 3}}).classifier.threads == 3


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"library\.setle_seconds: unknown key"):
        parse_config({"library": {"root": str(tmp_path), "setle_seconds": 3},
                      "state_dir": str(tmp_path)})


def test_bad_value_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"workers\.decode_timeout"):
        parse_config({"library": {"root": str(tmp_path)}, "state_dir": str(tmp_path),
                      "workers": {"decode_timeout": -1}})


def test_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("library = [")
    with pytest.raises(ConfigError, match="config.toml: not valid TOML"):
        load_config(path)


@pytest.mark.slow  # runs the CLI in several subprocesses; make test runs it
def test_an_open_review_page_without_a_login_is_a_config_error_for_every_command(tmp_path):
    """check-config applies the rule `run` applies (naming the key), and every command,
    `run` included, exits 2 on it as the README promises."""
    import subprocess
    import sys

    library, state = tmp_path / "library", tmp_path / "state"
    library.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{state}"\n[library]\nroot = "{library}"\n'
                      '[review]\nhost = "0.0.0.0"\nport = 1\n')
    exe = [sys.executable, "-m", "daemon.cli", "--config", str(config)]
    for command in (["check-config"], ["run"], ["status"], ["review", "list"]):
        done = subprocess.run(exe + command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (command, done.returncode, done.stderr)
        assert "review.host: '0.0.0.0' is reachable from other machines" in done.stderr
        assert "password_hash" in done.stderr and "Traceback" not in done.stderr
    assert not state.exists()  # refused before anything was created
    config.write_text(config.read_text().replace("port = 1", f'token = "{"t" * 32}"'))
    done = subprocess.run(exe + ["check-config"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("config ok"), done.stderr


def test_the_backbone_is_on_by_default_and_a_station_can_switch_it_off(tmp_path):
    import tomllib

    from daemon.core.config import render_config

    base = {"library": {"root": str(tmp_path)}, "state_dir": str(tmp_path / "s")}
    assert parse_config(base).classifier.backbone is True
    assert parse_config({**base, "classifier": {"backbone": False}}).classifier.backbone is False
    with pytest.raises(ConfigError, match=r"classifier\.backbone"):
        parse_config({**base, "classifier": {"backbone": "sometimes"}})
    # `init` writes the switch where a station sees it.
    written = tomllib.loads(render_config(tmp_path, tmp_path / "s"))
    assert written["classifier"]["backbone"] is True


def test_windows_per_song_is_a_positive_count_with_a_measured_default(tmp_path):
    base = {"library": {"root": str(tmp_path)}, "state_dir": str(tmp_path / "s")}
    assert parse_config(base).classifier.windows_per_song == 8
    assert parse_config({**base, "classifier": {"windows_per_song": 12}}
                        ).classifier.windows_per_song == 12
    for bad in (0, -3, 2.5, "eight"):
        with pytest.raises(ConfigError, match=r"classifier\.windows_per_song"):
            parse_config({**base, "classifier": {"windows_per_song": bad}})
