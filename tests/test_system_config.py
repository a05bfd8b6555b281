"""One configuration for the service and every operator's CLI (issue 13, finding 2): the
system-wide YAML file, its precedence, what it may not hold, and the shipped systemd unit."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crisiscomms.domain.errors import ConfigError
from crisiscomms.settings import SYSTEM_CONFIG, Settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


@pytest.fixture
def system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A system-wide config file in a temporary folder (never the real /etc)."""
    for name in list(os.environ):
        if name.startswith("CRISISCOMMS_"):
            monkeypatch.delenv(name)
    path = tmp_path / "etc" / "config.yaml"
    path.parent.mkdir()
    monkeypatch.setenv("CRISISCOMMS_SYSTEM_CONFIG", str(path))
    monkeypatch.chdir(tmp_path)
    return path


def test_the_system_file_is_read_and_relative_paths_are_beside_it(system_config: Path):
    system_config.write_text("home: /var/lib/crisiscomms\nplaybooks_dir: playbooks\n"
                             "polling:\n  interval_seconds: 90\n")
    s = Settings()
    assert s.home == Path("/var/lib/crisiscomms")
    assert s.playbooks_dir == system_config.parent / "playbooks"
    assert s.polling.interval_seconds == 90


def test_environment_and_dotenv_come_before_the_system_file(system_config: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    system_config.write_text("home: /from/yaml\nplaybooks_dir: /pb/yaml\nlog_level: error\n")
    Path(".env").write_text("CRISISCOMMS_PLAYBOOKS_DIR=/pb/dotenv\n")
    monkeypatch.setenv("CRISISCOMMS_HOME", "/from/env")
    s = Settings()
    assert s.home == Path("/from/env")
    assert s.playbooks_dir == Path("/pb/dotenv")
    assert s.log_level == "error"


def test_crisiscomms_config_takes_the_system_files_place(system_config: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    system_config.write_text("home: /from/system\nlog_level: error\n")
    other = tmp_path / "other.yaml"
    other.write_text("home: /from/other\n")
    monkeypatch.setenv("CRISISCOMMS_CONFIG", str(other))
    s = Settings()
    assert s.home == Path("/from/other")
    assert s.log_level == "info"  # the system file is not read at all


def test_a_missing_system_file_is_fine_a_missing_named_one_is_not(
        system_config: Path, monkeypatch: pytest.MonkeyPatch):
    assert Settings().playbooks_dir == Path("playbooks")
    monkeypatch.setenv("CRISISCOMMS_CONFIG", "/nonexistent/crisiscomms.yaml")
    with pytest.raises(ConfigError, match=r"CRISISCOMMS_CONFIG: /nonexistent/crisiscomms\.yaml"):
        Settings()


@pytest.mark.parametrize("key", ["audit_key", "notify_urls", "x_bearer_token"])
def test_secrets_are_refused_from_the_yaml_file(system_config: Path, key: str):
    system_config.write_text(f"home: /srv/cc\n{key}: hunter2-very-secret\n")
    with pytest.raises(ConfigError) as exc:
        Settings()
    msg = str(exc.value)
    assert str(system_config) in msg and "line 2" in msg and key in msg
    assert "secrets are not accepted" in msg and "hunter2" not in msg
    assert "\n" not in msg


def test_a_database_password_is_refused_from_the_yaml_file(system_config: Path):
    system_config.write_text("database_url: postgresql://cc:pw-in-yaml@db/cc\n")
    with pytest.raises(ConfigError, match="line 1: key database_url: a password") as exc:
        Settings()
    assert "pw-in-yaml" not in str(exc.value)
    system_config.write_text("database_url: postgresql://cc@db/cc\n")
    assert Settings().database_url == "postgresql://cc@db/cc"


def test_invalid_yaml_names_the_file_and_line(system_config: Path):
    system_config.write_text("home: /srv/cc\nplaybooks_dir: [unclosed\nlog_level: info\n")
    with pytest.raises(ConfigError) as exc:
        Settings()
    msg = str(exc.value)
    assert msg.startswith(f"{system_config}: line ") and "invalid YAML" in msg
    assert "\n" not in msg


def test_an_unknown_key_or_a_bad_value_names_the_file_key_and_line(system_config: Path):
    system_config.write_text("home: /srv/cc\nplaybook_dir: /etc/crisiscomms/playbooks\n")
    with pytest.raises(ConfigError, match=r"line 2: key playbook_dir: unknown setting") as exc:
        Settings()
    assert "playbooks_dir" in str(exc.value)  # the known keys are listed
    system_config.write_text("home: /srv/cc\npolling:\n  jitter_seconds: 1\n"
                             "  interval_seconds: 0\n")
    with pytest.raises(ConfigError, match=r"line 4: key polling.interval_seconds: "):
        Settings()
    system_config.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        Settings()


def test_an_unreadable_file_is_a_one_line_error(system_config: Path):
    system_config.mkdir()  # a folder where the file should be: cannot be read (even by root)
    with pytest.raises(ConfigError) as exc:
        Settings()
    assert str(exc.value).startswith(f"{system_config}: cannot read the configuration file")


def test_log_level_in_capitals_is_accepted_from_the_file(system_config: Path):
    system_config.write_text("log_level: DEBUG\n")
    assert Settings().log_level == "debug"


def test_the_default_path_is_etc_and_tests_never_read_it():
    assert Path("/etc/crisiscomms/config.yaml") == SYSTEM_CONFIG
    assert os.environ.get("CRISISCOMMS_SYSTEM_CONFIG")  # set for every test by conftest


def test_secrets_come_from_the_secrets_dir_named_at_run_time(system_config: Path,
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "CRISISCOMMS_NOTIFY_URLS").write_text("json://127.0.0.1:9/hook\n")
    (creds / "CRISISCOMMS_AUDIT_KEY").write_text("k" * 32)
    monkeypatch.setenv("CRISISCOMMS_SECRETS_DIR", str(creds))
    s = Settings()
    assert [u.get_secret_value() for u in s.notify_url_list()] == ["json://127.0.0.1:9/hook"]
    assert s.audit_key is not None and s.audit_key.get_secret_value() == "k" * 32
    monkeypatch.setenv("CRISISCOMMS_SECRETS_DIR", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"CRISISCOMMS_SECRETS_DIR: .* is not a directory"):
        Settings()


def test_status_and_activate_by_any_operator_use_the_system_files_database(
        cli, home: Path, playbooks_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Logged in as oneself (no CRISISCOMMS_HOME of one's own), the CLI opens the service's
    database and playbooks, as named in the system file."""
    service_home = tmp_path / "var-lib-crisiscomms"
    cfg = tmp_path / "etc" / "config.yaml"
    cfg.parent.mkdir()
    cfg.write_text(yaml.safe_dump({"home": str(service_home),
                                   "playbooks_dir": str(playbooks_dir)}))
    monkeypatch.setenv("CRISISCOMMS_SYSTEM_CONFIG", str(cfg))
    monkeypatch.delenv("CRISISCOMMS_HOME")
    monkeypatch.delenv("CRISISCOMMS_PLAYBOOKS_DIR")
    r = cli("activate", "flooding", "--reason", "drill of the shared configuration")
    assert r.code == 0, r.err
    r = cli("status")
    assert r.code == 0, r.err
    assert "crisis flag: ON" in r.out
    assert str(service_home / "crisiscomms.db") in r.out
    assert (service_home / "crisiscomms.db").is_file()
    assert not home.exists()


# -- the shipped systemd unit -----------------------------------------------------------------

def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(_joined((DEPLOY / "crisiscomms.service").read_text()))
    return parser


def _joined(text: str) -> str:
    """systemd allows repeated keys (LoadCredential=): number them for configparser."""
    out, seen = [], {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m and m.group(1) in ("LoadCredential", "ReadWritePaths", "Environment"):
            seen[m.group(1)] = seen.get(m.group(1), 0) + 1
            line = f"{m.group(1)}.{seen[m.group(1)]}={m.group(2)}"
        out.append(line)
    return "\n".join(out)


def _values(section: configparser.SectionProxy, key: str) -> list[str]:
    return [v for k, v in section.items() if k == key or k.startswith(key + ".")]


def test_the_unit_runs_watch_as_a_dedicated_user_with_credentials():
    unit = _unit()
    svc = unit["Service"]
    command = svc["ExecStart"].split()
    assert command[0].endswith("/crisiscomms") and command[1] == "watch"
    from crisiscomms.cli import app as cli_app

    names = {c.name or (c.callback.__name__ if c.callback else "") for c in
             cli_app.registered_commands}
    assert "watch" in names
    assert svc["User"] == "crisiscomms" and svc["Group"] == "crisiscomms"
    assert svc["Restart"] == "on-failure"
    assert svc.get("KillSignal", "SIGTERM") == "SIGTERM"
    envs = " ".join(_values(svc, "Environment"))
    assert "CRISISCOMMS_SECRETS_DIR=%d" in envs
    creds = [v.split(":", 1)[0] for v in _values(svc, "LoadCredential")]
    settings_secrets = {f"CRISISCOMMS_{name.upper()}" for name, f in Settings.model_fields.items()
                        if "SecretStr" in str(f.annotation)}
    assert settings_secrets <= set(creds), settings_secrets - set(creds)
    # Every channel credential the bundled playbooks name has a LoadCredential= too.
    channels = yaml.safe_load((REPO / "playbooks" / "channels.yaml").read_text())["channels"]
    named = {env for ch in channels for env in (ch.get("credentials") or {}).values()}
    assert named <= set(creds), named - set(creds)
    assert svc["ProtectSystem"] == "strict" and svc["NoNewPrivileges"] == "yes"
    assert "/var/lib/crisiscomms" in " ".join(_values(svc, "ReadWritePaths"))
    # A team's data dir (2770, made by the admin): StateDirectory= would reset its mode.
    assert "StateDirectory" not in svc and svc["UMask"] == "0007"


def test_the_unit_starts_after_the_clock_is_synchronised():
    """Audit events record the wall time: a watcher starting on an unsynchronised clock that
    then steps back writes a trail going backwards."""
    u = _unit()["Unit"]
    assert "time-sync.target" in u["After"].split()
    assert "time-sync.target" in u["Wants"].split()


def test_the_example_system_config_is_valid_and_holds_no_secrets(system_config: Path):
    text = (DEPLOY / "config.yaml").read_text()
    system_config.write_text(text)
    s = Settings()
    assert s.home == Path("/var/lib/crisiscomms")
    assert s.playbooks_dir == Path("/etc/crisiscomms/playbooks")
    data = yaml.safe_load(text)
    assert not {"audit_key", "notify_urls", "x_bearer_token"} & set(data)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_accepts_the_unit(tmp_path: Path):
    """systemd's own check of the unit (with ExecStart= pointed at this venv's command)."""
    unit = tmp_path / "crisiscomms.service"
    text = (DEPLOY / "crisiscomms.service").read_text()
    exe = Path(sys.executable).parent / "crisiscomms"
    assert exe.exists()
    unit.write_text(text.replace("/opt/crisiscomms/venv/bin/crisiscomms", str(exe)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_notify_urls_from_dotenv_split_on_commas_spaces_and_newlines(system_config: Path):
    Path(".env").write_text('CRISISCOMMS_NOTIFY_URLS="json://a.example/x, mailto://b.example\n'
                            'ntfys://c.example/topic"\n')
    s = Settings()
    assert [u.get_secret_value() for u in s.notify_url_list()] == [
        "json://a.example/x", "mailto://b.example", "ntfys://c.example/topic"]
    assert "a.example" not in repr(s)
