"""The TOML config file, its precedence under env and flags, and `pkeyd config show`."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import tomllib
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import structlog

from pkeyd import cli, configfile
from pkeyd.config import Settings
from pkeyd.configfile import ConfigError, load_file
from pkeyd.domain import PKeyRange

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse errors
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pkeyd.toml"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("PKEYD_")]:
        monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """cli.main configures logging to the redirected stderr: put everything back."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


def test_every_settings_field_has_a_key_and_the_sample_sets_each() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert fields <= set(configfile.FIELDS)
    sample = tomllib.loads((DEPLOY / "pkeyd.toml").read_text())
    commented = {
        line.split("=")[0].lstrip("# ").strip()
        for line in (DEPLOY / "pkeyd.toml").read_text().splitlines()
        if line.startswith("#") and "=" in line
    }
    # Every key is in the sample, set or as a documented commented-out line.
    assert set(configfile.FIELDS) <= set(sample) | commented
    load_file(DEPLOY / "pkeyd.toml")  # and the sample is valid


def test_file_values_are_converted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'partitions_conf = "/x/partitions.conf"\nreload_command = ["systemctl", "reload", "o"]\n'
        'pkey_range = "0x0100-0x01ff"\nretry_max_s = 2\nqos = true\nlog_level = "debug"\n',
    )
    values = load_file(path)
    assert values["partitions_conf"] == Path("/x/partitions.conf")
    assert values["reload_command"] == ("systemctl", "reload", "o")
    assert values["pkey_range"] == PKeyRange(0x100, 0x1FF)
    assert values["retry_max_s"] == 2.0
    assert isinstance(values["retry_max_s"], float)
    assert values["qos"] is True
    assert values["log_level"] == "debug"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("retry_max_s = 'soon'\n", "pkeyd.toml: retry_max_s: must be a number"),
        ("listen_port = 8080.5\n", "pkeyd.toml: listen_port: must be an integer"),
        ("qos = 'yes'\n", "pkeyd.toml: qos: must be true or false"),
        ("retry_max = 3\n", "unknown key 'retry_max' (did you mean 'retry_max_s'?)"),
        ("on_external_edit = 'ignore'\n", "on_external_edit: must be one of restore, hold"),
        ("pkey_range = '1-z'\n", "pkey_range: must look like 0x0001-0x7ffe"),
        ("reload_command = []\n", "reload_command: must name a program"),
        ("[daemon]\nqos = true\n", "[daemon] is a table"),
        ("qos = \n", "not valid TOML"),
    ],
)
def test_file_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_rules_across_keys_name_the_file_when_it_alone_breaks_them(tmp_path: Path) -> None:
    path = write(tmp_path, "retry_max_s = 0.1\nreload_command = ['true']\n")
    code, _, err = run("config", "show", "--config", str(path))
    assert code == 2
    assert err.strip() == f"pkeyd: {path}: retry_min_s must not exceed retry_max_s"
    # ...and not when a flag makes them fit.
    code, out, _ = run("config", "show", "--config", str(path), "--retry-min", "0.05")
    assert code == 0
    assert "retry_min_s = 0.05" in out


def test_missing_reload_method_and_missing_file_are_clear(tmp_path: Path) -> None:
    code, _, err = run("config", "show", "--config", str(write(tmp_path, "")))
    assert code == 2
    assert "set exactly one of opensm_pid_file" in err
    code, _, err = run("config", "show", "--config", str(tmp_path / "nope.toml"))
    assert code == 2
    assert "nope.toml: cannot read the config file" in err


def test_precedence_flags_over_env_over_file_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        "reload_command = ['from-file']\nresync_interval_s = 5\nverify_interval_s = 7\n"
        "repair_max = 9\nlisten_port = 9000\n",
    )
    monkeypatch.setenv("PKEYD_VERIFY_INTERVAL", "8")
    monkeypatch.setenv("PKEYD_REPAIR_MAX", "10")
    code, out, err = run(
        "config", "show", "--config", str(path), "--repair-max", "11", "--opensm-pid-file", "/p"
    )
    assert code == 0, err
    shown = tomllib.loads(out)
    assert shown["resync_interval_s"] == 5.0  # file over default
    assert shown["verify_interval_s"] == 8.0  # env over file
    assert shown["repair_max"] == 11  # flag over env
    assert shown["listen_port"] == 9000
    assert shown["retry_max_s"] == 30.0
    # One reload method: the flag's pid file replaces the file's command.
    assert shown["opensm_pid_file"] == "/p"
    assert "reload_command" not in shown


def test_env_config_path_and_env_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PKEYD_CONFIG", str(write(tmp_path, "reload_command = 'true'\n")))
    code, out, _ = run("config", "show")
    assert code == 0
    assert 'reload_command = ["true"]' in out
    monkeypatch.setenv("PKEYD_RETRY_MAX", "later")
    code, _, err = run("config", "show")
    assert code == 2
    assert "PKEYD_RETRY_MAX='later': must be a number" in err


def test_config_show_round_trips(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "reload_command = ['systemctl', 'reload', 'opensm@0x1.service']\n"
        "db_url = 'sqlite+aiosqlite:////tmp/\"quoted\" db'\nallow_both_pkeys = true\n"
        "on_external_edit = 'hold'\npkey_range = '0x0010-0x0fff'\nlog_level = 'warning'\n",
    )
    code, out, err = run("config", "show", "--config", str(path))
    assert code == 0, err
    again = tmp_path / "shown.toml"
    again.write_text(out)
    resolved = configfile.build_settings(load_file(again))
    assert resolved == configfile.build_settings(load_file(path))
    assert load_file(again)["log_level"] == "warning"


def test_other_commands_read_the_db_from_the_file(tmp_path: Path) -> None:
    db = tmp_path / "from-file.db"
    path = write(tmp_path, f"db_url = 'sqlite+aiosqlite:///{db}'\n")
    code, _, err = run("--log-format", "json", "migrate", "--config", str(path))
    assert code == 0, err
    assert db.exists()


def test_help_states_the_precedence() -> None:
    help_text = cli.build_parser().format_help()
    assert "highest first: command-line flags, PKEYD_* environment" in help_text
    assert "/etc/pkeyd/pkeyd.toml" in help_text


def test_runtime_update_applies_only_what_loops_read_live() -> None:
    current = Settings(reload_command=("true",))
    new = dataclasses.replace(
        current, retry_max_s=5.0, on_external_edit="hold", listen_port=9999, qos=True
    )
    merged, applied, restart = configfile.runtime_update(current, new)
    assert applied == ["on_external_edit", "retry_max_s"]
    assert restart == ["listen_port", "qos"]
    assert merged.retry_max_s == 5.0
    assert merged.on_external_edit == "hold"
    assert merged.listen_port == current.listen_port
    assert merged.qos is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"resync_interval_s": 0.0}, "resync_interval_s must be greater than 0"),
        ({"retry_min_s": 0.0}, "retry_min_s must be greater than 0"),
        ({"coalesce_delay_s": 2.0}, "coalesce_delay_s must not exceed coalesce_max_s"),
        ({"mad_retries": -1}, "mad_retries must not be negative"),
        ({"max_body_bytes": 0}, "max_body_bytes must be at least 1"),
        ({"listen_host": ""}, "listen_host must not be empty"),
        ({"reload_command": ()}, "reload_command must name a program"),
    ],
)
def test_settings_validation(change: dict[str, object], message: str) -> None:
    base = {"reload_command": ("true",)}
    with pytest.raises(ValueError, match=message):
        Settings(**{**base, **change})  # type: ignore[arg-type]
